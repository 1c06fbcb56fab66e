//! The kernel packet filter of one daemon: one nftables table (`inet sandboxd_<tag>`) written
//! whole and swapped atomically by `nft -f -` on every change ([`Ruleset::render`]).
//!
//! Why the `nft` tool and text: one atomic transaction per change (the table is deleted and
//! re-made in the same transaction, so no packet ever sees a half-written filter), the syntax
//! the kernel documentation uses, and no extra crate. Every value written into the text is a
//! typed address, prefix, port, number or a sandbox id (`^[a-z0-9]+$`), never user text.
//!
//! What the table does, for traffic from this daemon's sandbox interfaces:
//! - forward: IPv4 only; the source must be the interface's own address (reverse-path check);
//!   never to another sandbox (any sandboxd interface), the sandbox range, loopback, link-local
//!   (cloud metadata), multicast, broadcast or reserved blocks; never to private ranges
//!   (RFC 1918, CGNAT, benchmarking) and the host's own on-link networks (its LANs) unless the
//!   daemon allows them; then the sandbox's policy
//!   chain if it has one (allow list, then deny list with a counter, a rate-limited log line
//!   naming the sandbox, and a TCP reset or ICMP error).
//! - input (the host itself): only the daemon's DNS port and the egress proxy's port on the
//!   gateway address; everything else is dropped, so no host service is reachable.
//! - prerouting: DNS (UDP and TCP 53, to any address) goes to the daemon's resolver; TCP 80 and
//!   443 of sandboxes with domain rules go to the egress proxy.
//! - postrouting: masquerade out through the host's own routing table.
//! - nothing on the network, and no process of the host, may open a connection into a sandbox
//!   (ingress goes through the daemon's proxy, which checks tokens).

use crate::plan::{AddressPlan, IFACE_PREFIX};
use crate::policy::Policy;
use ipnet::{IpNet, Ipv4Net};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// Never reachable from a sandbox, whatever its policy.
pub(crate) const BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "192.0.0.0/24",
    "224.0.0.0/3",
];
/// Private ranges, reachable only with `--allow-private-egress`.
pub(crate) const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
];

/// One sandbox with a policy the kernel must enforce.
#[derive(Debug, Clone)]
pub struct Enforced<'a> {
    /// The sandbox (for its log prefix).
    pub sandbox_id: &'a str,
    /// Its slot (names its chains and counter).
    pub slot: u32,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its policy.
    pub policy: &'a Policy,
}

/// Everything the table is made from.
#[derive(Debug, Clone)]
pub struct Ruleset<'a> {
    /// The daemon's address plan.
    pub plan: &'a AddressPlan,
    /// The daemon's DNS resolver port (on the gateway address).
    pub dns_port: u16,
    /// The egress proxy's port (on the gateway address), if one runs.
    pub proxy_port: Option<u16>,
    /// `--allow-private-egress`.
    pub allow_private: bool,
    /// The host's on-link networks (LANs), refused like private ranges.
    pub lan: &'a [Ipv4Net],
    /// Sandboxes whose policy is not wide open, in slot order.
    pub enforced: Vec<Enforced<'a>>,
    /// Denied-packet counts to carry over from the table being replaced, by slot (a rewrite
    /// would otherwise reset them).
    pub denied_so_far: &'a std::collections::HashMap<u32, u64>,
}

fn set_of(nets: impl IntoIterator<Item = Ipv4Net>) -> Option<String> {
    let nets = Ipv4Net::aggregate(&nets.into_iter().collect::<Vec<_>>());
    if nets.is_empty() {
        return None;
    }
    let items: Vec<String> = nets.iter().map(ToString::to_string).collect();
    Some(format!("{{ {} }}", items.join(", ")))
}

fn v4(nets: &[IpNet]) -> impl Iterator<Item = Ipv4Net> + '_ {
    nets.iter().filter_map(|n| match n {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    })
}

impl Ruleset<'_> {
    /// The `nft -f` script: make sure the table exists, delete it and write it anew, in one
    /// transaction.
    pub fn render(&self) -> String {
        let t = self.plan.table();
        let w = self.plan.iface_wildcard();
        let gw = self.plan.gateway();
        let cidr = self.plan.cidr();
        let dns = self.dns_port;
        let mut s = String::new();
        let _ = writeln!(s, "table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{");
        let _ = writeln!(s, "  comment \"{OWNER_COMMENT}{}\"", std::process::id());
        let blocked =
            set_of(BLOCKED.iter().map(|n| n.parse().expect("constant")).chain([cidr])).expect("not empty");
        let _ = writeln!(
            s,
            "  set blocked {{ type ipv4_addr; flags interval; elements = {blocked} }}"
        );
        if !self.allow_private {
            let private = set_of(
                PRIVATE
                    .iter()
                    .map(|n| n.parse().expect("constant"))
                    .chain(self.lan.iter().copied()),
            )
            .expect("not empty");
            let _ = writeln!(
                s,
                "  set private {{ type ipv4_addr; flags interval; elements = {private} }}"
            );
        }
        let proxied: Vec<_> = self
            .enforced
            .iter()
            .filter(|e| self.proxy_port.is_some() && e.policy.needs_proxy())
            .map(|e| e.address.to_string())
            .collect();
        // sandboxes whose egress is chained through their `egressProxy`: all their TCP
        let chained: Vec<_> = self
            .enforced
            .iter()
            .filter(|e| self.proxy_port.is_some() && e.policy.egress_proxy.is_some())
            .map(|e| e.address.to_string())
            .collect();
        if !chained.is_empty() {
            let _ = writeln!(
                s,
                "  set chained {{ type ipv4_addr; elements = {{ {} }} }}",
                chained.join(", ")
            );
        }
        if !proxied.is_empty() {
            let _ = writeln!(
                s,
                "  set proxied {{ type ipv4_addr; elements = {{ {} }} }}",
                proxied.join(", ")
            );
        }
        let vmap: Vec<_> = self
            .enforced
            .iter()
            .map(|e| format!("{} : jump p_{}", e.address, e.slot))
            .collect();
        if !vmap.is_empty() {
            let _ = writeln!(
                s,
                "  map policies {{ type ipv4_addr : verdict; elements = {{ {} }} }}",
                vmap.join(", ")
            );
        }
        // forward
        let _ = writeln!(
            s,
            "  chain forward {{\n    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(s, "    iifname \"{w}\" jump egress");
        let _ = writeln!(s, "    oifname \"{w}\" ct state established,related accept");
        let _ = writeln!(s, "    oifname \"{w}\" drop\n  }}");
        let _ = writeln!(s, "  chain egress {{");
        let _ = writeln!(s, "    meta nfproto != ipv4 drop");
        let _ = writeln!(s, "    fib saddr . iif oif missing drop");
        let _ = writeln!(s, "    oifname \"{IFACE_PREFIX}*\" drop");
        let _ = writeln!(s, "    ip daddr @blocked drop");
        if !self.allow_private {
            let _ = writeln!(s, "    ip daddr @private jump refuse");
        }
        if !vmap.is_empty() {
            let _ = writeln!(s, "    ip saddr vmap @policies");
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(
            s,
            "  chain refuse {{\n    meta l4proto tcp reject with tcp reset\n    reject with icmpx type admin-prohibited\n  }}"
        );
        for e in &self.enforced {
            let _ = writeln!(s, "  chain p_{} {{", e.slot);
            if let Some(allow) = set_of(v4(&e.policy.allow_nets().copied().collect::<Vec<_>>())) {
                let _ = writeln!(s, "    ip daddr {allow} accept");
            }
            if let Some(deny) = set_of(v4(&e.policy.deny_out)) {
                let _ = writeln!(s, "    ip daddr {deny} jump d_{}", e.slot);
            }
            let _ = writeln!(s, "  }}");
            let _ = writeln!(
                s,
                "  chain d_{slot} {{\n    counter name denied_{slot}\n    limit rate 5/second burst 10 packets log prefix \"sandboxd egress denied {id}: \" level info\n    jump refuse\n  }}",
                slot = e.slot,
                id = e.sandbox_id
            );
            let so_far = self.denied_so_far.get(&e.slot).copied().unwrap_or(0);
            let _ = writeln!(s, "  counter denied_{} {{ packets {so_far} bytes 0 }}", e.slot);
        }
        // input
        let _ = writeln!(
            s,
            "  chain input {{\n    type filter hook input priority filter; policy accept;"
        );
        let _ = writeln!(s, "    iifname \"{w}\" jump to_host");
        let _ = writeln!(s, "    meta l4proto {{ tcp, udp }} th dport {dns} drop\n  }}");
        let _ = writeln!(s, "  chain to_host {{");
        let _ = writeln!(s, "    meta nfproto != ipv4 drop");
        let _ = writeln!(s, "    fib saddr . iif oif missing drop");
        let _ = writeln!(
            s,
            "    ip daddr {gw} meta l4proto {{ tcp, udp }} th dport {dns} accept"
        );
        if let Some(p) = self.proxy_port {
            let _ = writeln!(s, "    ip daddr {gw} tcp dport {p} accept");
        }
        let _ = writeln!(s, "    drop\n  }}");
        // the host's own processes: only replies, resets and ICMP errors reach sandboxes (a host
        // user must not bypass the daemon's tokens by connecting to a sandbox's address)
        let _ = writeln!(
            s,
            "  chain output {{\n    type filter hook output priority filter; policy accept;"
        );
        let _ = writeln!(s, "    oifname \"{w}\" jump from_host\n  }}");
        let _ = writeln!(s, "  chain from_host {{");
        let _ = writeln!(s, "    ct state established,related accept");
        let _ = writeln!(s, "    meta l4proto tcp tcp flags & rst == rst accept");
        let _ = writeln!(
            s,
            "    meta l4proto icmp icmp type destination-unreachable accept"
        );
        let _ = writeln!(s, "    drop\n  }}");
        // nat
        let _ = writeln!(
            s,
            "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;"
        );
        let _ = writeln!(
            s,
            "    iifname \"{w}\" meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns}"
        );
        if let (Some(p), false) = (self.proxy_port, proxied.is_empty()) {
            let _ = writeln!(
                s,
                "    iifname \"{w}\" ip saddr @proxied tcp dport {{ 80, 443 }} redirect to :{p}"
            );
        }
        if let (Some(p), false) = (self.proxy_port, chained.is_empty()) {
            let _ = writeln!(
                s,
                "    iifname \"{w}\" ip saddr @chained meta l4proto tcp redirect to :{p}"
            );
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(
            s,
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;"
        );
        let _ = writeln!(
            s,
            "    ip saddr {cidr} oifname != \"{IFACE_PREFIX}*\" masquerade\n  }}"
        );
        let _ = writeln!(s, "}}");
        s
    }
}

/// The table comment naming the daemon process that owns it.
const OWNER_COMMENT: &str = "sandboxd pid=";

/// Tables of daemons that are gone: `sandboxd_<tag>` tables whose owner process does not exist
/// and that no host link of theirs (`sx<tag>_*`) uses any more. `links`: names of the host's
/// `sx*` links.
pub async fn stale_tables(links: &[String]) -> std::io::Result<Vec<String>> {
    let out = tokio::process::Command::new("nft")
        .args(["-j", "list", "tables"])
        .output()
        .await?;
    if !out.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(std::io::Error::other)?;
    let mut stale = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let t = &item["table"];
        let (Some(name), Some("inet")) = (t["name"].as_str(), t["family"].as_str()) else {
            continue;
        };
        let Some(tag) = name.strip_prefix("sandboxd_") else {
            continue;
        };
        // `nft -j` (1.0.6) leaves table comments out: read the text form
        let text = tokio::process::Command::new("nft")
            .args(["list", "table", "inet", name])
            .output()
            .await?;
        let text = String::from_utf8_lossy(&text.stdout);
        let Some(pid) = owner_of(&text) else {
            continue;
        };
        let owner_alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        let prefix = format!("{IFACE_PREFIX}{tag}_");
        if !owner_alive && !links.iter().any(|l| l.starts_with(&prefix)) {
            stale.push(name.to_string());
        }
    }
    Ok(stale)
}

/// The owner pid in the text form of a table (`comment "sandboxd pid=N"` near the top).
fn owner_of(table_text: &str) -> Option<u32> {
    table_text
        .lines()
        .take(3)
        .find_map(|l| l.trim().strip_prefix("comment \""))
        .and_then(|c| c.strip_prefix(OWNER_COMMENT))
        .and_then(|c| c.trim_end_matches('"').parse().ok())
}

/// Script that removes the table (daemon start-up with networking off, tests).
pub fn delete_script(plan: &AddressPlan) -> String {
    let t = plan.table();
    format!("table inet {t} {{}}\ndelete table inet {t}\n")
}

/// Runs `nft -f -` with `script`.
pub async fn apply(script: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(script.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Packets refused by each enforced sandbox's deny list so far: `(slot, packets)`.
pub async fn denied_counts(plan: &AddressPlan) -> std::io::Result<Vec<(u32, u64)>> {
    let out = tokio::process::Command::new("nft")
        .args(["-j", "list", "counters", "table", "inet", &plan.table()])
        .output()
        .await?;
    if !out.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(std::io::Error::other)?;
    let mut res = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        if let (Some(name), Some(p)) = (c["name"].as_str(), c["packets"].as_u64())
            && let Some(slot) = name.strip_prefix("denied_").and_then(|n| n.parse().ok())
        {
            res.push((slot, p));
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan() -> AddressPlan {
        AddressPlan::new("10.213.0.0/16".parse().unwrap(), "00ab").unwrap()
    }

    #[test]
    fn open_sandboxes_need_no_rules_of_their_own() {
        let p = plan();
        let r = Ruleset {
            plan: &p,
            dns_port: 5353,
            proxy_port: None,
            denied_so_far: &Default::default(),
            allow_private: false,
            lan: &["192.0.2.0/24".parse().unwrap(), "10.1.0.0/16".parse().unwrap()],
            enforced: vec![],
        }
        .render();
        assert!(
            r.contains("10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.0.2.0/24, 192.168.0.0/16"),
            "{r}"
        );
        assert!(r.starts_with("table inet sandboxd_00ab {}\ndelete table inet sandboxd_00ab\n"));
        assert!(r.contains("iifname \"sx00ab_*\" jump egress"));
        assert!(r.contains("10.213.0.0/16"));
        assert!(r.contains("169.254.0.0/16"));
        assert!(r.contains("set private"));
        assert!(r.contains("ip daddr 10.213.0.1 meta l4proto { tcp, udp } th dport 5353 accept"));
        assert!(r.contains("th dport 53 redirect to :5353"));
        assert!(!r.contains("vmap"));
        assert!(!r.contains("proxied"));
        let open = Ruleset {
            plan: &p,
            dns_port: 5353,
            proxy_port: None,
            denied_so_far: &Default::default(),
            allow_private: true,
            lan: &[],
            enforced: vec![],
        }
        .render();
        assert!(!open.contains("@private"));
        assert_eq!(
            owner_of("table inet sandboxd_00ab {\n\tcomment \"sandboxd pid=42\"\n"),
            Some(42)
        );
        assert_eq!(owner_of("table inet x {\n\tset a {"), None);
        check_with_nft(&open);
    }

    #[test]
    fn policies_become_chains_with_merged_sets() {
        let p = plan();
        let pol = Policy::from_network(
            &json!({"denyOut": ["0.0.0.0/0", "::/0"], "allowOut": ["198.51.100.0/24", "198.51.100.10", "203.0.113.9", "web.test"]}),
            true,
        )
        .unwrap();
        let off = Policy::from_network(&serde_json::Value::Null, false).unwrap();
        let r = Ruleset {
            plan: &p,
            dns_port: 5353,
            proxy_port: Some(8080),
            denied_so_far: &Default::default(),
            allow_private: false,
            lan: &[],
            enforced: vec![
                Enforced {
                    sandbox_id: "abc",
                    slot: 3,
                    address: p.address(3),
                    policy: &pol,
                },
                Enforced {
                    sandbox_id: "def",
                    slot: 4,
                    address: p.address(4),
                    policy: &off,
                },
            ],
        }
        .render();
        assert!(r.contains("10.213.0.5 : jump p_3, 10.213.0.6 : jump p_4"), "{r}");
        assert!(
            r.contains("ip daddr { 198.51.100.0/24, 203.0.113.9/32 } accept"),
            "{r}"
        );
        assert!(r.contains("ip daddr { 0.0.0.0/0 } jump d_3"), "{r}");
        assert!(r.contains("log prefix \"sandboxd egress denied abc: \""), "{r}");
        assert!(
            r.contains("set proxied { type ipv4_addr; elements = { 10.213.0.5 } }"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr @proxied tcp dport { 80, 443 } redirect to :8080"),
            "{r}"
        );
        assert!(r.contains("ip daddr 10.213.0.1 tcp dport 8080 accept"), "{r}");
        // the internet-off sandbox: no allow rule, deny all
        let p4 = r
            .split("chain p_4 {")
            .nth(1)
            .unwrap()
            .split("\n  }")
            .next()
            .unwrap();
        assert!(!p4.contains("accept") && p4.contains("jump d_4"), "{p4}");
        assert!(!r.contains("chained"), "{r}");
        check_with_nft(&r);
        // counts carried over a rewrite; a chained sandbox has all its TCP redirected
        let chained = Policy::from_network(
            &serde_json::json!({"egressProxy": {"address": "203.0.113.10:1080"}}),
            true,
        )
        .unwrap();
        let so_far = std::collections::HashMap::from([(3, 42)]);
        let r = Ruleset {
            plan: &p,
            dns_port: 5353,
            proxy_port: Some(8080),
            denied_so_far: &so_far,
            allow_private: false,
            lan: &[],
            enforced: vec![
                Enforced {
                    sandbox_id: "abc",
                    slot: 3,
                    address: p.address(3),
                    policy: &pol,
                },
                Enforced {
                    sandbox_id: "ghi",
                    slot: 5,
                    address: p.address(5),
                    policy: &chained,
                },
            ],
        }
        .render();
        assert!(r.contains("counter denied_3 { packets 42 bytes 0 }"), "{r}");
        assert!(
            r.contains("set chained { type ipv4_addr; elements = { 10.213.0.7 } }"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr @chained meta l4proto tcp redirect to :8080"),
            "{r}"
        );
        check_with_nft(&r);
    }

    /// `nft -c` (check only, nothing changes) accepts the script, where nft and root exist.
    fn check_with_nft(script: &str) {
        use std::io::Write;
        let child = std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("SKIPPED: nft not installed");
            return;
        };
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: nft -c needs root");
            return;
        }
        assert!(out.status.success(), "{err}\n{script}");
    }
}
