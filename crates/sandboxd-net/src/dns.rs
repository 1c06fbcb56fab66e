//! The DNS resolver sandboxes see on their gateway: a forwarder. Every UDP and TCP query a
//! sandbox sends to port 53 (any address; the packet filter redirects it here) is checked and
//! passed as it is to the sandbox's `dnsServers`, or else to the daemon's upstreams
//! (`--dns-upstream`, default the host's resolvers); the answer goes back unchanged.
//!
//! Refused (NXDOMAIN): single-label names (the host's name, search-domain guesses), the
//! local-only zones (`localhost`, `local`, `internal`, `lan`, `localdomain`, `home.arpa`),
//! reverse names of private and loopback ranges, `ip6.arpa`. Queries from an address no
//! sandbox holds get no answer. Only the question section is read (RFC 1035 §4.1.2); the
//! message is never rewritten, so DNSSEC and EDNS pass through.

use crate::PolicyLookup;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// Queries in flight at once, all sandboxes together.
const MAX_INFLIGHT: usize = 512;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The question name of a query, lower-case without the trailing dot; `None` when the message
/// is not a single-question query.
pub fn question_name(msg: &[u8]) -> Option<String> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut name = String::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 || name.len() + len > 253 {
            return None;
        }
        let label = msg.get(i..i + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            name.push(b.to_ascii_lowercase() as char);
        }
        i += len;
    }
    // type and class must follow
    msg.get(i..i + 4)?;
    Some(name)
}

/// Whether a name must not be resolved for a sandbox.
pub fn is_refused(name: &str) -> bool {
    if !name.contains('.') {
        return true;
    }
    const LOCAL_ZONES: &[&str] = &[
        "localhost",
        "local",
        "internal",
        "lan",
        "localdomain",
        "home.arpa",
        "ip6.arpa",
    ];
    if LOCAL_ZONES
        .iter()
        .any(|z| name == *z || name.strip_suffix(z).is_some_and(|r| r.ends_with('.')))
    {
        return true;
    }
    if let Some(rev) = name.strip_suffix(".in-addr.arpa") {
        let octets: Vec<&str> = rev.split('.').rev().collect();
        let first: u8 = octets.first().and_then(|o| o.parse().ok()).unwrap_or(0);
        let second: u8 = octets.get(1).and_then(|o| o.parse().ok()).unwrap_or(0);
        return matches!(
            (first, second),
            (0 | 10 | 127, _) | (169, 254) | (192, 168) | (172, 16..=31) | (100, 64..=127)
        );
    }
    false
}

/// An NXDOMAIN answer to `query` (header and question copied).
pub fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    question_name(query)?;
    let mut i = 12;
    while query[i] != 0 {
        i += 1 + query[i] as usize;
    }
    let mut out = query[..i + 5].to_vec();
    out[2] = 0x80 | (query[2] & 0x79); // QR, keep opcode and RD
    out[3] = 0x80 | 3; // RA, NXDOMAIN
    out[6..12].fill(0);
    Some(out)
}

/// Whether the daemon may send a sandbox's queries to this resolver (`dnsServers` entries on
/// loopback, link-local, private or multicast addresses would reach the host's or the LAN's
/// services on the sandbox's behalf).
pub(crate) fn usable_upstream(ip: Ipv4Addr, allow_private: bool) -> bool {
    !(ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || (!allow_private && (ip.is_private() || (ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64))))
}

/// The forwarder's shared state.
pub struct Resolver {
    /// Where queries go when a sandbox has no `dnsServers`.
    pub upstreams: Vec<SocketAddr>,
    /// `--allow-private-egress`: private `dnsServers` may be used.
    pub allow_private: bool,
    /// Source address → sandbox and policy.
    pub lookup: Arc<dyn PolicyLookup>,
    inflight: Arc<Semaphore>,
}

impl Resolver {
    /// A forwarder over `upstreams`.
    pub fn new(upstreams: Vec<SocketAddr>, allow_private: bool, lookup: Arc<dyn PolicyLookup>) -> Self {
        Self {
            upstreams,
            allow_private,
            lookup,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
        }
    }

    /// The upstreams for a query from `src`; `None` when no sandbox holds `src`.
    fn upstreams_for(&self, src: IpAddr) -> Option<Vec<SocketAddr>> {
        let IpAddr::V4(v4) = src else { return None };
        let sp = self.lookup.by_source(v4)?;
        if sp.policy.dns_servers.is_empty() {
            return Some(self.upstreams.clone());
        }
        Some(
            sp.policy
                .dns_servers
                .iter()
                .filter(|ip| usable_upstream(**ip, self.allow_private))
                .map(|ip| SocketAddr::new(IpAddr::V4(*ip), 53))
                .collect(),
        )
    }

    /// The answer to one query from `src`, or `None` for no answer.
    async fn answer(&self, src: IpAddr, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let upstreams = self.upstreams_for(src)?;
        let name = question_name(query)?;
        if is_refused(&name) {
            return nxdomain(query);
        }
        for up in upstreams {
            let r = if tcp {
                tokio::time::timeout(UPSTREAM_TIMEOUT, ask_tcp(up, query)).await
            } else {
                tokio::time::timeout(UPSTREAM_TIMEOUT, ask_udp(up, query)).await
            };
            if let Ok(Ok(a)) = r {
                return Some(a);
            }
        }
        None
    }

    /// Serves UDP queries on `sock` until the task is dropped.
    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, src)) = sock.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                continue;
            };
            let (this, sock, query) = (self.clone(), sock.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(a) = this.answer(src.ip(), &query, false).await {
                    let _ = sock.send_to(&a, src).await;
                }
            });
        }
    }

    /// Serves TCP queries (length-prefixed, several per connection) until the task is dropped.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut conn, src)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                while let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut conn)).await {
                    let Some(a) = this.answer(src.ip(), &query, true).await else {
                        break;
                    };
                    if write_framed(&mut conn, &a).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
}

async fn read_framed(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = conn.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    conn.write_all(&out).await
}

async fn ask_udp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // the answer must carry the query's id
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect(up).await?;
    write_framed(&mut conn, query).await?;
    read_framed(&mut conn).await
}

/// The IPv4 resolvers of the host's `/etc/resolv.conf` (port 53).
pub fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<Ipv4Addr>().ok())
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn names_are_read_and_local_ones_refused() {
        assert_eq!(question_name(&query("Web.Test")).as_deref(), Some("web.test"));
        assert_eq!(question_name(&query("web.test")[..10]), None);
        let mut answer = query("a.test");
        answer[2] |= 0x80;
        assert_eq!(question_name(&answer), None);
        for n in [
            "myhost",
            "localhost",
            "a.localhost",
            "printer.local",
            "db.internal",
            "nas.home.arpa",
            "1.0.168.192.in-addr.arpa",
            "5.0.16.172.in-addr.arpa",
            "1.0.0.127.in-addr.arpa",
            "254.169.254.169.in-addr.arpa",
            "1.0.0.0.ip6.arpa",
        ] {
            assert!(is_refused(n), "{n}");
        }
        for n in [
            "pypi.org",
            "web.test",
            "10.100.51.198.in-addr.arpa",
            "local.example.com",
        ] {
            assert!(!is_refused(n), "{n}");
        }
        let nx = nxdomain(&query("myhost")).unwrap();
        assert_eq!(&nx[..2], &[0x12, 0x34]);
        assert_eq!(nx[3] & 0x0f, 3);
        assert_eq!(nx.len(), query("myhost").len());
        assert!(!usable_upstream(Ipv4Addr::new(127, 0, 0, 53), true));
        assert!(!usable_upstream(Ipv4Addr::new(192, 168, 1, 1), false));
        assert!(usable_upstream(Ipv4Addr::new(192, 168, 1, 1), true));
        assert!(usable_upstream(Ipv4Addr::new(198, 51, 100, 53), false));
    }
}
