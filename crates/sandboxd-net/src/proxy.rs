//! The transparent egress proxy (`docs/network.md`, "Egress proxy"): decides domain entries of
//! `allowOut` for TCP 80 and 443.
//!
//! The packet filter redirects TCP 80 and 443 of every sandbox whose policy has domain entries
//! or `rules` ([`Policy::needs_proxy`]) to this proxy's port on the gateway. For each connection
//! the proxy finds the sandbox and its current policy by the source address
//! ([`PolicyLookup::by_source`]), reads the original destination (`SO_ORIGINAL_DST`), and reads
//! the name the client asks for: the SNI of a TLS ClientHello (parsed with `tls-parser`) or
//! the `Host` header of an HTTP/1 request (parsed with `httparse`). Then ([`route`]):
//!
//! - a name an `allowOut` domain entry matches: the proxy resolves the name itself (with
//!   `hickory-resolver`, through the sandbox's `dnsServers` or the daemon's upstreams) and
//!   connects to those addresses, never to the destination the sandbox chose, so a forged SNI
//!   or `Host` reaches only the allowed name's own servers;
//! - otherwise the original destination, if the policy's address rules allow it;
//! - otherwise refused: an HTTP request gets a 403 naming the policy, a TLS connection a reset;
//!   the refusal is counted and logged with the sandbox id.
//!
//! The proxy's own connections leave from the host, so every address it connects to passes
//! the same host protections as the kernel filter ([`HostProtection`]). A live policy change
//! is re-checked on open connections every [`RECHECK`]; a connection that became denied is
//! reset. Connections are bounded per sandbox and in all.
//!
//! For an HTTP request to a name with `rules`, the proxy speaks HTTP with both sides and sets
//! the rules' headers on every request ([`crate::header_rules`]). For TLS to such a name it
//! terminates TLS with a certificate from the daemon's CA (which sandboxes trust), verifies the
//! real server's certificate on its own TLS connection, and does the same
//! ([`crate::interception`]); TLS to every other name is spliced untouched.
//!
//! A sandbox with `egressProxy` has all its TCP redirected here, and the proxy connects
//! through the given SOCKS5 proxy (`tokio-socks`) instead of directly
//! (`EgressProxy::connect_chained`), over TLS when its `tls.enabled` says so.

use crate::header_rules::Prefixed;
use crate::header_rules::SecretSource;
use crate::interception::Interception;
use crate::policy::{self, Policy, Transform, Verdict};
use crate::{PolicyLookup, SandboxPolicy};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_socks::tcp::Socks5Stream;

/// How long a client has to send the bytes that name its destination.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes read before deciding (a ClientHello with large key shares fits easily).
const MAX_HEAD: usize = 64 * 1024;
/// How long one upstream connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often open connections are checked against the sandbox's current policy.
pub const RECHECK: Duration = Duration::from_millis(200);
/// Proxied connections of one sandbox at once.
const MAX_PER_SANDBOX: usize = 256;
/// Proxied connections of all sandboxes at once (each holds two descriptors).
const MAX_TOTAL: usize = 2048;

/// The name a client's first bytes ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// More bytes are needed.
    Incomplete,
    /// A TLS ClientHello; its SNI host name, if it has one.
    Tls(Option<String>),
    /// An HTTP/1 request; its `Host`, if it has a usable one.
    Http(Option<String>),
    /// Neither: decided by address only.
    Other,
}

impl Head {
    fn name(&self) -> Option<&str> {
        match self {
            Head::Tls(n) | Head::Http(n) => n.as_deref(),
            Head::Incomplete | Head::Other => None,
        }
    }
}

/// A host name as policies compare it: lower case, no port, no trailing dot, only
/// `[a-z0-9.-_]`, at most 253 bytes; `None` for anything else (IP literals included).
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        return None;
    }
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && host.parse::<Ipv4Addr>().is_err();
    ok.then_some(host)
}

/// Reads what the first bytes of a connection ask for.
pub fn parse_head(buf: &[u8]) -> Head {
    match buf.first() {
        None => Head::Incomplete,
        Some(0x16) => parse_client_hello(buf),
        Some(b) if b.is_ascii_uppercase() => parse_http(buf),
        Some(_) => Head::Other,
    }
}

fn parse_http(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Incomplete,
        _ => return Head::Other,
    }
    let mut hosts = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = match (hosts.next(), hosts.next()) {
        // exactly one Host header: two could be read differently by the upstream
        (Some(h), None) => std::str::from_utf8(h.value).ok().and_then(normalize_host),
        _ => None,
    };
    Head::Http(host)
}

/// The handshake bytes of the TLS records at the start of `buf`, once the first handshake
/// message is complete; `Err(())` when `buf` is not a TLS handshake.
fn handshake_message(buf: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    let mut hs = Vec::new();
    let mut rest = buf;
    loop {
        if hs.len() >= 4 {
            let len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if hs.len() >= 4 + len {
                hs.truncate(4 + len);
                return Ok(Some(hs));
            }
        }
        if rest.len() < 5 {
            return Ok(None);
        }
        if rest[0] != 0x16 || rest[1] != 3 {
            return Err(());
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 16384 + 2048 {
            return Err(());
        }
        if rest.len() < 5 + len {
            return Ok(None);
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
}

fn parse_client_hello(buf: &[u8]) -> Head {
    use tls_parser::{SNIType, TlsExtension, TlsMessage, TlsMessageHandshake};
    let hs = match handshake_message(buf) {
        Err(()) => return Head::Other,
        Ok(None) if buf.len() < MAX_HEAD => return Head::Incomplete,
        Ok(None) => return Head::Other,
        Ok(Some(hs)) => hs,
    };
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        tls_parser::parse_tls_message_handshake(&hs)
    else {
        return Head::Other;
    };
    let Some(ext) = hello.ext else {
        return Head::Tls(None);
    };
    let Ok((_, exts)) = tls_parser::parse_tls_client_hello_extensions(ext) else {
        return Head::Tls(None);
    };
    let name = exts.iter().find_map(|e| match e {
        TlsExtension::SNI(names) => names
            .iter()
            .find(|(t, _)| *t == SNIType::HostName)
            .and_then(|(_, n)| std::str::from_utf8(n).ok())
            .and_then(normalize_host),
        _ => None,
    });
    Head::Tls(name)
}

/// Where a proxied connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The addresses of this allowed name (resolved by the proxy).
    Name(String),
    /// The destination the sandbox chose (allowed by the policy's address rules).
    Original,
    /// Nowhere.
    Refused,
}

/// The decision for a connection to `dst` asking for `name` (allow wins: a matching domain
/// entry allows the name whatever the address rules say). A name with header rules is only
/// ever reached at its own addresses, never at one the sandbox chose: the rules' headers (and
/// the secrets in them) go to that name's servers only.
pub fn route(policy: &Policy, name: Option<&str>, dst: Ipv4Addr) -> Route {
    if let Some(n) = name.filter(|n| policy.domain_allowed(n)) {
        return Route::Name(n.to_string());
    }
    match policy.ip_verdict(IpAddr::V4(dst)) {
        Verdict::Allow => match name.filter(|n| policy.transforms_for(n).next().is_some()) {
            Some(n) => Route::Name(n.to_string()),
            None => Route::Original,
        },
        Verdict::Deny => Route::Refused,
    }
}

/// The addresses no sandbox may reach, whatever its policy: the same sets as the packet
/// filter's forward chain, plus every address of the host itself.
#[derive(Debug, Clone)]
pub struct HostProtection {
    blocked: Vec<Ipv4Net>,
    /// Empty with `--allow-private-egress`.
    private: Vec<Ipv4Net>,
}

impl HostProtection {
    /// The protection for a daemon with sandbox range `cidr` and host networks `lan`.
    pub fn new(cidr: Ipv4Net, allow_private: bool, lan: &[Ipv4Net]) -> Self {
        let parse = |s: &&str| s.parse::<Ipv4Net>().expect("constant");
        let mut blocked: Vec<Ipv4Net> = crate::filter::BLOCKED.iter().map(parse).collect();
        blocked.push(cidr);
        let private = if allow_private {
            Vec::new()
        } else {
            crate::filter::PRIVATE
                .iter()
                .map(parse)
                .chain(lan.iter().copied())
                .collect()
        };
        Self { blocked, private }
    }

    /// Whether the proxy may connect to `ip` on a sandbox's behalf (`host` holds the host's
    /// own addresses).
    pub fn allows(&self, ip: Ipv4Addr, host: &[Ipv4Addr]) -> bool {
        ip != Ipv4Addr::BROADCAST
            && !host.contains(&ip)
            && !self.blocked.iter().chain(&self.private).any(|n| n.contains(&ip))
    }
}

/// The host's own IPv4 addresses, read at each use (addresses come and go).
fn host_addresses() -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
                .collect()
        })
        .unwrap_or_default()
}

/// A resolver over `servers` (port included).
fn resolver_for(servers: &[SocketAddr]) -> TokioResolver {
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut ns = NameServerConfig::udp_and_tcp(s.ip());
            for c in &mut ns.connections {
                c.port = s.port();
            }
            ns
        })
        .collect();
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.ip_strategy = LookupIpStrategy::Ipv4Only;
    let mut builder = TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(name_servers),
        TokioRuntimeProvider::default(),
    );
    *builder.options_mut() = opts;
    builder.build().expect("a resolver over explicit name servers")
}

/// The proxy's shared state.
pub struct EgressProxy {
    lookup: Arc<dyn PolicyLookup>,
    upstreams: Vec<SocketAddr>,
    resolver: TokioResolver,
    allow_private: bool,
    protection: HostProtection,
    open: Mutex<HashMap<String, usize>>,
    refused: Mutex<HashMap<String, u64>>,
    proxied: AtomicU64,
    /// Where `${e2b.secrets.<name>}` placeholders of header rules get their values.
    secrets: std::sync::OnceLock<Arc<dyn SecretSource>>,
    /// TLS termination for names with header rules; without it their TLS is spliced.
    interception: Option<Interception>,
}

/// A connection to where the sandbox's traffic goes: TCP, or TLS to an `egressProxy`.
pub trait UpstreamIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> UpstreamIo for T {}
type Upstream = Box<dyn UpstreamIo>;

/// Why a connection was not proxied.
#[derive(Debug)]
enum Refusal {
    /// The policy denies it (counted and logged).
    Policy(String),
    /// Anything else (bounds, timeouts, upstream failures).
    Failed(String),
}

impl EgressProxy {
    /// A proxy resolving through `upstreams` (the daemon's `--dns-upstream`) unless a sandbox
    /// has its own `dnsServers`.
    pub fn new(
        lookup: Arc<dyn PolicyLookup>,
        upstreams: Vec<SocketAddr>,
        allow_private: bool,
        protection: HostProtection,
        interception: Option<Interception>,
    ) -> Self {
        Self {
            interception,
            lookup,
            resolver: resolver_for(&upstreams),
            upstreams,
            allow_private,
            protection,
            open: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            proxied: AtomicU64::new(0),
            secrets: std::sync::OnceLock::new(),
        }
    }

    /// Sets where header rules' secret placeholders are resolved (once; later calls are
    /// ignored).
    pub fn set_secret_source(&self, source: Arc<dyn SecretSource>) {
        let _ = self.secrets.set(source);
    }

    /// A listener on a free port of all addresses (the packet filter admits only sandboxes,
    /// on the gateway address).
    pub async fn bind() -> std::io::Result<TcpListener> {
        TcpListener::bind("0.0.0.0:0").await
    }

    /// Connections of sandbox `id` the policy refused since the daemon started.
    pub fn refused_count(&self, id: &str) -> u64 {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Drops what the proxy keeps about a destroyed sandbox.
    pub fn forget(&self, id: &str) {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.handle(stream, peer).await });
                }
                Err(e) => {
                    tracing::warn!("egress proxy: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle(&self, mut client: TcpStream, peer: SocketAddr) {
        let IpAddr::V4(src) = peer.ip() else { return };
        let Some(sp) = self.lookup.by_source(src) else {
            return;
        };
        let Some(_slot) = self.admit(&sp.sandbox_id) else {
            tracing::warn!(sandbox = %sp.sandbox_id, "egress proxy: too many open connections; refusing one");
            let _ = crate::proxy::reset(&client);
            return;
        };
        match self.proxy(&mut client, src, &sp).await {
            Ok(()) => {}
            Err(Refusal::Policy(what)) => {
                let n = {
                    let mut r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                    let n = r.entry(sp.sandbox_id.clone()).or_default();
                    *n += 1;
                    *n
                };
                if n.is_power_of_two() || n < 8 {
                    tracing::info!(sandbox = %sp.sandbox_id, refused = n, "egress denied by policy: {what}");
                }
            }
            Err(Refusal::Failed(why)) => {
                tracing::debug!(sandbox = %sp.sandbox_id, "egress proxy: {why}");
            }
        }
        self.release(&sp.sandbox_id);
    }

    fn admit(&self, id: &str) -> Option<()> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let n = open.entry(id.to_string()).or_default();
        if *n >= MAX_PER_SANDBOX || total >= MAX_TOTAL {
            return None;
        }
        *n += 1;
        Some(())
    }

    fn release(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                open.remove(id);
            }
        }
    }

    async fn proxy(&self, client: &mut TcpStream, src: Ipv4Addr, sp: &SandboxPolicy) -> Result<(), Refusal> {
        let dst =
            original_destination(client).map_err(|e| Refusal::Failed(format!("SO_ORIGINAL_DST: {e}")))?;
        let mut buf = Vec::with_capacity(4096);
        // names are read on 80 and 443 only; other ports (a chained sandbox's) are decided by
        // address at once, so protocols where the server speaks first are not held up
        let head = if matches!(dst.port(), 80 | 443) {
            match tokio::time::timeout(HEAD_TIMEOUT, read_head(client, &mut buf)).await {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => return Err(Refusal::Failed(format!("reading the request: {e}"))),
                // a client that does not speak first: decided by address
                Err(_) => Head::Other,
            }
        } else {
            Head::Other
        };
        let name = head.name().map(str::to_string);
        let target = route(&sp.policy, name.as_deref(), *dst.ip());
        let what = || match &name {
            Some(n) => format!("{n} (port {})", dst.port()),
            None => format!("{dst}"),
        };
        if matches!(target, Route::Refused) {
            refuse(client, &head, &what()).await;
            return Err(Refusal::Policy(what()));
        }
        let upstream = match &sp.policy.egress_proxy {
            Some(chain) => self.connect_chained(chain, &target, dst, &sp.policy).await,
            None => self.connect_direct(&target, dst, &sp.policy).await,
        };
        let mut upstream = match upstream {
            Ok(u) => u,
            Err(Refusal::Policy(why)) => {
                refuse(client, &head, &what()).await;
                return Err(Refusal::Policy(format!("{}: {why}", what())));
            }
            Err(Refusal::Failed(why)) => {
                let _ = reset(client);
                return Err(Refusal::Failed(format!("connecting for {}: {why}", what())));
            }
        };
        self.proxied.fetch_add(1, Ordering::Relaxed);
        let still_allowed = || {
            self.lookup.by_source(src).is_some_and(|now| {
                now.sandbox_id == sp.sandbox_id && route(&now.policy, name.as_deref(), *dst.ip()) == target
            })
        };
        // HTTP and intercepted TLS to a name with header rules: spoken, not spliced
        let transforms: Vec<Transform> = match (&head, &name, &self.interception) {
            (Head::Http(_), Some(n), _) | (Head::Tls(_), Some(n), Some(_)) => {
                sp.policy.transforms_for(n).cloned().collect()
            }
            _ => Vec::new(),
        };
        let secrets = self.secrets.get().cloned();
        let cut = match (&head, &name, &self.interception) {
            _ if transforms.is_empty() => {
                upstream
                    .write_all(&buf)
                    .await
                    .map_err(|e| Refusal::Failed(format!("writing upstream: {e}")))?;
                let copy = tokio::io::copy_bidirectional(client, &mut upstream);
                until_cut(copy, still_allowed).await
            }
            (Head::Tls(_), Some(n), Some(tls)) => {
                // the real server is verified first; a failure is told to the sandbox over its
                // own TLS connection, as an HTTP error naming the cause
                let server = tls.upstream.connect(n, upstream).await;
                let sandbox = crate::interception::accept(&tls.ca, n, Prefixed::new(buf, &mut *client))
                    .await
                    .map_err(Refusal::Failed)?;
                match server {
                    Ok(server) => {
                        let serve =
                            crate::header_rules::serve(sandbox, Vec::new(), server, transforms, secrets);
                        until_cut(serve, still_allowed).await
                    }
                    Err(why) => {
                        crate::header_rules::answer_all(
                            sandbox,
                            format!("sandboxd: the egress proxy could not reach {n} securely: {why}\n"),
                        )
                        .await;
                        return Err(Refusal::Failed(why));
                    }
                }
            }
            _ => {
                let serve = crate::header_rules::serve(&mut *client, buf, upstream, transforms, secrets);
                until_cut(serve, still_allowed).await
            }
        };
        if cut {
            let _ = reset(client);
            return Err(Refusal::Policy(format!("{}: cut by a policy change", what())));
        }
        Ok(())
    }

    /// Connects to where `target` says, from the host: an allowed name's own addresses, or
    /// the original destination; only addresses the host protections allow.
    async fn connect_direct(
        &self,
        target: &Route,
        dst: SocketAddrV4,
        policy: &Policy,
    ) -> Result<Upstream, Refusal> {
        let addrs = match target {
            Route::Name(n) => self.resolve(n, policy).await,
            _ => vec![*dst.ip()],
        };
        // a name reached for its header rules (not allowed by name) keeps the address rules
        let by_address = match target {
            Route::Name(n) => !policy.domain_allowed(n),
            _ => true,
        };
        let host = host_addresses();
        let addrs: Vec<Ipv4Addr> = addrs
            .into_iter()
            .filter(|ip| self.protection.allows(*ip, &host))
            .filter(|ip| !by_address || policy.ip_verdict(IpAddr::V4(*ip)) == Verdict::Allow)
            .collect();
        if addrs.is_empty() {
            return Err(Refusal::Policy("no reachable address".into()));
        }
        let mut last = String::from("no address");
        for ip in addrs.iter().take(4) {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((*ip, dst.port()))).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(Box::new(s));
                }
                Ok(Err(e)) => last = format!("{ip}: {e}"),
                Err(_) => last = format!("{ip}: timed out"),
            }
        }
        Err(Refusal::Failed(last))
    }

    /// Connects through the sandbox's `egressProxy` (SOCKS5, optional username and password,
    /// optionally over TLS): an allowed name is handed to the proxy as a name (it resolves it),
    /// any other target as the original address. The proxy's own address and an original
    /// address must pass the host protections.
    async fn connect_chained(
        &self,
        chain: &policy::EgressProxy,
        target: &Route,
        dst: SocketAddrV4,
        policy: &Policy,
    ) -> Result<Upstream, Refusal> {
        let host = host_addresses();
        let (proxy_host, proxy_port) = chain
            .address
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((
                    h.trim_start_matches('[').trim_end_matches(']'),
                    p.parse::<u16>().ok()?,
                ))
            })
            .ok_or_else(|| Refusal::Failed(format!("egressProxy.address {:?}", chain.address)))?;
        let proxy_ips = match proxy_host.parse::<Ipv4Addr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.resolve(proxy_host, policy).await,
        };
        let proxy_addrs: Vec<SocketAddr> = proxy_ips
            .into_iter()
            .filter(|ip| self.protection.allows(*ip, &host))
            .map(|ip| SocketAddr::from((ip, proxy_port)))
            .collect();
        if proxy_addrs.is_empty() {
            return Err(Refusal::Policy(format!(
                "egressProxy {} has no address the host protections allow",
                chain.address
            )));
        }
        if matches!(target, Route::Original) && !self.protection.allows(*dst.ip(), &host) {
            return Err(Refusal::Policy("a protected address".into()));
        }
        let connect = async {
            let mut last = String::from("no address");
            let mut tcp = None;
            for a in proxy_addrs.iter().take(4) {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        tcp = Some(s);
                        break;
                    }
                    Err(e) => last = format!("{a}: {e}"),
                }
            }
            let tcp = tcp.ok_or(last)?;
            let _ = tcp.set_nodelay(true);
            match &chain.tls {
                None => socks5(tcp, chain, target, dst).await,
                Some(tls) => {
                    let name = tls.server_name.as_deref().unwrap_or(proxy_host);
                    let tls = crate::interception::proxy_tls(tls, name, tcp).await?;
                    socks5(tls, chain, target, dst).await
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Refusal::Failed(format!(
                "through egressProxy {}: {e}",
                chain.address
            ))),
            Err(_) => Err(Refusal::Failed(format!(
                "through egressProxy {}: timed out",
                chain.address
            ))),
        }
    }

    /// The IPv4 addresses of `name` (empty when it does not resolve).
    async fn resolve(&self, name: &str, policy: &Policy) -> Vec<Ipv4Addr> {
        let own: Vec<SocketAddr> = policy
            .dns_servers
            .iter()
            .filter(|ip| crate::dns::usable_upstream(**ip, self.allow_private))
            .map(|ip| SocketAddr::new(IpAddr::V4(*ip), 53))
            .collect();
        let fqdn = format!("{name}.");
        let r = if own.is_empty() || own == self.upstreams {
            self.resolver.lookup_ip(fqdn).await
        } else {
            resolver_for(&own).lookup_ip(fqdn).await
        };
        match r {
            Ok(l) => l
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            Err(e) => {
                tracing::debug!("egress proxy: resolving {name}: {e}");
                Vec::new()
            }
        }
    }
}

/// The SOCKS5 handshake over `stream` (to the proxy) for `target`.
async fn socks5<S>(
    stream: S,
    chain: &policy::EgressProxy,
    target: &Route,
    dst: SocketAddrV4,
) -> Result<Upstream, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let pw = chain.password.as_deref().unwrap_or_default();
    let r = match (target, &chain.username) {
        (Route::Name(n), Some(u)) => {
            Socks5Stream::connect_with_password_and_socket(stream, (n.as_str(), dst.port()), u, pw).await
        }
        (Route::Name(n), None) => Socks5Stream::connect_with_socket(stream, (n.as_str(), dst.port())).await,
        (_, Some(u)) => {
            Socks5Stream::connect_with_password_and_socket(stream, SocketAddr::V4(dst), u, pw).await
        }
        (_, None) => Socks5Stream::connect_with_socket(stream, SocketAddr::V4(dst)).await,
    };
    r.map(|s| Box::new(s.into_inner()) as Upstream)
        .map_err(|e| e.to_string())
}

/// Runs `work` until it ends (false) or `still_allowed` turns false at a re-check (true).
async fn until_cut<F: std::future::Future>(work: F, still_allowed: impl Fn() -> bool) -> bool {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(RECHECK);
    loop {
        tokio::select! {
            _ = &mut work => return false,
            _ = tick.tick() => {
                if !still_allowed() {
                    return true;
                }
            }
        }
    }
}

/// Reads until the head names its destination (or is known not to).
async fn read_head(client: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before naming a destination",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(buf) {
            Head::Incomplete if buf.len() < MAX_HEAD => {}
            Head::Incomplete => return Ok(Head::Other),
            h => return Ok(h),
        }
    }
}

/// Tells a refused client why: a 403 for HTTP, a reset otherwise.
async fn refuse(client: &mut TcpStream, head: &Head, what: &str) {
    if let Head::Http(_) = head {
        let body = format!("sandboxd: egress to {what} is not allowed by this sandbox's network policy\n");
        let msg = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(msg.as_bytes()).await;
        let _ = client.shutdown().await;
    } else {
        let _ = reset(client);
    }
}

/// Makes the next close of `s` a TCP reset.
fn reset(s: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &linger).map_err(std::io::Error::from)
}

/// The destination the sandbox connected to before the filter redirected it here.
fn original_destination(s: &TcpStream) -> std::io::Result<SocketAddrV4> {
    let raw = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::OriginalDst)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> Policy {
        Policy::from_network(&v, true).unwrap()
    }

    /// A ClientHello for `sni` as a real client sends it (rustls-style minimal hello).
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let mut list = vec![0u8];
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n);
            let mut sni_ext = (list.len() as u16).to_be_bytes().to_vec();
            sni_ext.extend_from_slice(&list);
            ext.extend_from_slice(&[0, 0]);
            ext.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
            ext.extend_from_slice(&sni_ext);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_is_read_from_whole_and_split_hellos() {
        let hello = client_hello(Some("Web.Test"));
        assert_eq!(parse_head(&hello), Head::Tls(Some("web.test".into())));
        for cut in [1, 5, 20, hello.len() - 1] {
            assert_eq!(parse_head(&hello[..cut]), Head::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse_head(&client_hello(None)), Head::Tls(None));
        // the handshake split over two records
        let hs = &hello[5..];
        let (a, b) = hs.split_at(30);
        let mut two = vec![0x16, 3, 1];
        two.extend_from_slice(&(a.len() as u16).to_be_bytes());
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 3, 1]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(parse_head(&two), Head::Tls(Some("web.test".into())));
        // not a handshake, garbage lengths
        assert_eq!(parse_head(&[0x16, 3, 1, 0, 0]), Head::Other);
        assert_eq!(parse_head(&[0x16, 9, 9, 9, 9, 9]), Head::Other);
        assert_eq!(parse_head(b"\x00\x01binary"), Head::Other);
    }

    #[test]
    fn host_is_read_from_http_requests() {
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: Web.Test:80\r\nAccept: */*\r\n\r\n"),
            Head::Http(Some("web.test".into()))
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: web.te"), Head::Incomplete);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Head::Http(None));
        // two Host headers: ambiguous, decided by address
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
            Head::Http(None)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: 198.51.100.10\r\n\r\n"),
            Head::Http(None)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
            Head::Http(None)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            Head::Http(None)
        );
    }

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize_host("EXAMPLE.com.").as_deref(), Some("example.com"));
        assert_eq!(normalize_host("example.com:8443").as_deref(), Some("example.com"));
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("a/b"), None);
        assert_eq!(normalize_host(&"a".repeat(300)), None);
        assert_eq!(normalize_host("10.0.0.1"), None);
    }

    #[test]
    fn routes_follow_allow_wins() {
        let p = policy(
            json!({"allowOut": ["web.test", "*.pkg.test", "203.0.113.0/24"], "denyOut": ["0.0.0.0/0"]}),
        );
        let web: Ipv4Addr = "198.51.100.10".parse().unwrap();
        let other: Ipv4Addr = "203.0.113.10".parse().unwrap();
        assert_eq!(route(&p, Some("web.test"), other), Route::Name("web.test".into()));
        assert_eq!(
            route(&p, Some("a.pkg.test"), web),
            Route::Name("a.pkg.test".into())
        );
        // a forged name does not open a denied address; an allowed address stays allowed
        assert_eq!(route(&p, Some("evil.test"), web), Route::Refused);
        assert_eq!(route(&p, None, web), Route::Refused);
        assert_eq!(route(&p, Some("evil.test"), other), Route::Original);
        // no deny: everything else goes where it was going
        let open = policy(json!({"allowOut": ["web.test"]}));
        assert_eq!(route(&open, Some("evil.test"), web), Route::Original);
        // a name with header rules goes to its own addresses, never to the one chosen
        let rules =
            policy(json!({"rules": {"api.test": [{"transform": {"headers": {"X": "${e2b.secrets.k}"}}}]}}));
        assert_eq!(
            route(&rules, Some("api.test"), other),
            Route::Name("api.test".into())
        );
        assert_eq!(route(&rules, Some("else.test"), other), Route::Original);
        let denied = policy(json!({"rules": {"api.test": []}, "denyOut": ["0.0.0.0/0"]}));
        assert_eq!(route(&denied, Some("api.test"), other), Route::Refused);
    }

    #[test]
    fn host_protection_matches_the_filter() {
        let cidr: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        let lan: Vec<Ipv4Net> = vec!["192.0.2.0/24".parse().unwrap()];
        let strict = HostProtection::new(cidr, false, &lan);
        let host: Vec<Ipv4Addr> = vec!["203.0.113.77".parse().unwrap()];
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "10.213.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "192.0.2.9",
            "224.0.0.1",
            "255.255.255.255",
            "203.0.113.77",
        ] {
            assert!(!strict.allows(ip.parse().unwrap(), &host), "{ip}");
        }
        assert!(strict.allows("198.51.100.10".parse().unwrap(), &host));
        let open = HostProtection::new(cidr, true, &lan);
        assert!(open.allows("10.1.2.3".parse().unwrap(), &host));
        assert!(open.allows("192.0.2.9".parse().unwrap(), &host));
        assert!(!open.allows("10.213.0.9".parse().unwrap(), &host));
        assert!(!open.allows("127.0.0.1".parse().unwrap(), &host));
    }
}
