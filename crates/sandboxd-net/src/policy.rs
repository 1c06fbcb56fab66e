//! The egress policy of one sandbox, E2B's model: `allow_internet_access`, `allowOut`,
//! `denyOut`, `dnsServers`, `rules`, `egressProxy`, parsed from the stored `network` object and
//! validated here, in one place.
//!
//! Decisions:
//! - An IP destination is allowed unless a `denyOut` block contains it, and an `allowOut` block
//!   containing it wins over any deny ([`Policy::ip_verdict`]).
//! - `allow_internet_access: false` is `denyOut: ["0.0.0.0/0"]`.
//! - Domain entries (`example.com`, `*.example.com`) apply to TCP 80 (HTTP `Host`) and 443
//!   (TLS SNI) only, on the egress proxy: a connection whose name matches
//!   ([`Policy::domain_allowed`]) is allowed whatever its IP verdict. `*.example.com` matches
//!   every name below `example.com`, not `example.com` itself. Names compare ASCII
//!   case-insensitively, a trailing dot ignored.
//! - The host's protections (loopback, metadata, other sandboxes, private ranges) are not part
//!   of a policy: they apply whatever it says.

use ipnet::IpNet;
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr};

/// Largest number of entries in `allowOut`, `denyOut`, `dnsServers`, `httpsPorts`, `rules`.
pub const MAX_ENTRIES: usize = 1024;
/// Whether `pem` holds PEM certificates, every one of them well formed.
fn has_certificates(pem: &str) -> bool {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        match c {
            Ok(c) if !c.is_empty() => n += 1,
            _ => return false,
        }
    }
    n > 0
}

/// Largest `egressProxy.tls.caCert` (PEM).
pub const MAX_CA_CERT: usize = 64 * 1024;
/// Largest number of headers in one rule's transform, and of bytes in one header value.
pub const MAX_HEADERS: usize = 64;
const MAX_HEADER_VALUE: usize = 8 * 1024;

/// A policy that cannot be enforced; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct PolicyError {
    /// The offending field (`allowOut`, `egressProxy.tls`, …).
    pub field: String,
    /// What is wrong with it.
    pub msg: String,
}

fn err(field: &str, msg: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.to_string(),
        msg: msg.into(),
    }
}

/// A domain name or `*.domain`, lower-case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    /// This name only.
    Exact(String),
    /// Every name below this one (`*.example.com` holds `example.com`).
    Subdomains(String),
}

impl DomainPattern {
    /// Parses `example.com` or `*.example.com`; `None` when it is not a DNS name.
    pub fn parse(s: &str) -> Option<Self> {
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if !is_dns_name(name) {
            return None;
        }
        let name = name.to_ascii_lowercase();
        Some(if wild {
            Self::Subdomains(name)
        } else {
            Self::Exact(name)
        })
    }

    /// Whether `host` (a name from SNI or `Host`, port already removed) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            Self::Exact(n) => host.eq_ignore_ascii_case(n),
            Self::Subdomains(n) => {
                host.len() > n.len() + 1
                    && host.as_bytes()[host.len() - n.len() - 1] == b'.'
                    && host[host.len() - n.len()..].eq_ignore_ascii_case(n)
            }
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(n) => f.write_str(n),
            Self::Subdomains(n) => write!(f, "*.{n}"),
        }
    }
}

/// Labels of 1–63 `[A-Za-z0-9-]` not starting or ending with `-`, at most 253 characters, and a
/// letter in the top label (so `1.2.3.4` is not a name).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// An IP address (as a host block) or a CIDR block; host bits must be zero.
pub fn parse_net(s: &str) -> Option<IpNet> {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().ok().map(IpNet::from),
        Some((_, prefix)) if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) => None,
        Some(_) => s.parse::<IpNet>().ok().map(|n| n.trunc()),
    }
}

/// One `allowOut` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An IP address or CIDR block.
    Net(IpNet),
    /// A domain name or `*.domain` (HTTP and TLS on the egress proxy only).
    Domain(DomainPattern),
}

/// One entry of a domain's `rules` list: the headers to set on each matching request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transform {
    /// Header name → value (values may hold `${e2b.secrets.<name>}` placeholders).
    pub headers: Vec<(String, String)>,
}

/// `egressProxy`: a SOCKS5 upstream for all of the sandbox's egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProxy {
    /// `host:port`.
    pub address: String,
    /// SOCKS5 user name, if the proxy wants one.
    pub username: Option<String>,
    /// SOCKS5 password (never returned by the API).
    pub password: Option<String>,
    /// `Some` when `tls.enabled`.
    pub tls: Option<ProxyTls>,
}

/// `egressProxy.tls` when enabled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyTls {
    /// The name to verify the proxy's certificate against.
    pub server_name: Option<String>,
    /// PEM certificates to trust instead of the system's.
    pub ca_cert: Option<String>,
}

/// `bandwidth` (a sandboxd addition to the `network` object): rate limits in kbit/s, each
/// direction seen from the sandbox; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bandwidth {
    /// What the sandbox sends (`egressMbps`).
    pub egress_kbit: Option<u64>,
    /// What the sandbox receives (`ingressMbps`).
    pub ingress_kbit: Option<u64>,
}

impl Bandwidth {
    /// Whether either direction is limited.
    pub fn is_limited(&self) -> bool {
        self.egress_kbit.is_some() || self.ingress_kbit.is_some()
    }
}

/// Highest rate limit accepted, in Mbit/s (100 Gbit/s: above any link a sandbox has).
pub const MAX_MBPS: f64 = 100_000.0;
/// Lowest rate limit accepted, in Mbit/s (64 kbit/s: below it TCP barely works).
pub const MIN_MBPS: f64 = 0.064;

/// The egress policy of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Allowed destinations; these win over `deny_out`.
    pub allow_out: Vec<Destination>,
    /// Denied blocks (`allow_internet_access: false` adds `0.0.0.0/0`).
    pub deny_out: Vec<IpNet>,
    /// Resolvers the daemon's DNS forwards this sandbox's queries to (empty: the daemon's).
    pub dns_servers: Vec<Ipv4Addr>,
    /// Domain → header transforms, in the order given.
    pub rules: Vec<(DomainPattern, Vec<Transform>)>,
    /// `egressProxy`: a SOCKS5 proxy all of the sandbox's TCP goes through.
    pub egress_proxy: Option<EgressProxy>,
    /// Rate limits of the sandbox's link (kept by the traffic shaper, not the filter).
    pub bandwidth: Bandwidth,
}

/// What the policy says about a destination address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reachable.
    Allow,
    /// Refused.
    Deny,
}

impl Policy {
    /// The policy of a sandbox from its stored `network` object (create's
    /// `SandboxNetworkConfig` or the last `PUT .../network` body; `null` for none) and its
    /// `allow_internet_access`. Ingress fields (`allowPublicTraffic`, `maskRequestHost`,
    /// `httpsPorts`) are checked by [`check_ingress`], not kept here; unknown keys are ignored.
    pub fn from_network(network: &Value, allow_internet_access: bool) -> Result<Self, PolicyError> {
        let obj = match network {
            Value::Null => &Map::new(),
            Value::Object(m) => m,
            _ => return Err(err("network", "must be an object")),
        };
        let mut p = Policy {
            allow_out: parse_allow_out(obj.get("allowOut"))?,
            deny_out: parse_deny_out(obj.get("denyOut"))?,
            dns_servers: parse_dns_servers(obj.get("dnsServers"))?,
            rules: parse_rules(obj.get("rules"))?,
            egress_proxy: parse_egress_proxy(obj.get("egressProxy"))?,
            bandwidth: parse_bandwidth(obj.get("bandwidth"))?,
        };
        if !allow_internet_access {
            let all = IpNet::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let all = IpNet::new(all.addr(), 0).expect("prefix 0 is valid");
            if !p.deny_out.contains(&all) {
                p.deny_out.push(all);
            }
        }
        Ok(p)
    }

    /// Allow wins: an address in an `allowOut` block is allowed, else one in a `denyOut`
    /// block is denied, else allowed.
    pub fn ip_verdict(&self, ip: IpAddr) -> Verdict {
        let allowed = self.allow_nets().any(|n| n.contains(&ip));
        if !allowed && self.deny_out.iter().any(|n| n.contains(&ip)) {
            Verdict::Deny
        } else {
            Verdict::Allow
        }
    }

    /// Whether an `allowOut` domain entry matches `host` (SNI or `Host`, without port).
    pub fn domain_allowed(&self, host: &str) -> bool {
        self.allow_domains().any(|d| d.matches(host))
    }

    /// The transforms of every `rules` entry matching `host`, in the order given.
    pub fn transforms_for<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Transform> + 'a {
        self.rules
            .iter()
            .filter(move |(d, _)| d.matches(host))
            .flat_map(|(_, t)| t.iter())
    }

    /// The `allowOut` IP and CIDR entries.
    pub fn allow_nets(&self) -> impl Iterator<Item = &IpNet> {
        self.allow_out.iter().filter_map(|d| match d {
            Destination::Net(n) => Some(n),
            Destination::Domain(_) => None,
        })
    }

    /// The `allowOut` domain entries.
    pub fn allow_domains(&self) -> impl Iterator<Item = &DomainPattern> {
        self.allow_out.iter().filter_map(|d| match d {
            Destination::Domain(p) => Some(p),
            Destination::Net(_) => None,
        })
    }

    /// Whether TCP 80 and 443 must go through the egress proxy: domain entries in `allowOut`,
    /// or any `rules`.
    pub fn needs_proxy(&self) -> bool {
        self.allow_domains().next().is_some() || !self.rules.is_empty()
    }

    /// Whether the kernel filter has nothing to do for this sandbox: no deny, no proxy.
    pub fn is_open(&self) -> bool {
        self.deny_out.is_empty() && !self.needs_proxy() && self.egress_proxy.is_none()
    }
}

fn string_list<'a>(field: &str, v: Option<&'a Value>) -> Result<Vec<&'a str>, PolicyError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err(field, "must be a list of strings")),
    };
    if list.len() > MAX_ENTRIES {
        return Err(err(field, format!("at most {MAX_ENTRIES} entries")));
    }
    list.iter()
        .map(|e| e.as_str().ok_or_else(|| err(field, "must be a list of strings")))
        .collect()
}

fn parse_allow_out(v: Option<&Value>) -> Result<Vec<Destination>, PolicyError> {
    string_list("allowOut", v)?
        .into_iter()
        .map(|e| {
            parse_net(e)
                .map(Destination::Net)
                .or_else(|| DomainPattern::parse(e).map(Destination::Domain))
                .ok_or_else(|| {
                    err(
                        "allowOut",
                        format!("{e:?} is not a CIDR block, IP address or domain name"),
                    )
                })
        })
        .collect()
}

fn parse_deny_out(v: Option<&Value>) -> Result<Vec<IpNet>, PolicyError> {
    string_list("denyOut", v)?
        .into_iter()
        .map(|e| {
            parse_net(e).ok_or_else(|| {
                err(
                    "denyOut",
                    format!("{e:?} is not a CIDR block or IP address (domain names cannot be denied)"),
                )
            })
        })
        .collect()
}

fn parse_dns_servers(v: Option<&Value>) -> Result<Vec<Ipv4Addr>, PolicyError> {
    string_list("dnsServers", v)?
        .into_iter()
        .map(|e| {
            e.parse::<Ipv4Addr>()
                .map_err(|_| err("dnsServers", format!("{e:?} is not an IPv4 address")))
        })
        .collect()
}

fn parse_rules(v: Option<&Value>) -> Result<Vec<(DomainPattern, Vec<Transform>)>, PolicyError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(err("rules", "must be an object of domain -> list of rules")),
    };
    if map.len() > MAX_ENTRIES {
        return Err(err("rules", format!("at most {MAX_ENTRIES} domains")));
    }
    let mut out = Vec::with_capacity(map.len());
    for (domain, list) in map {
        let pattern = DomainPattern::parse(domain)
            .ok_or_else(|| err("rules", format!("{domain:?} is not a domain name or *.domain")))?;
        let Value::Array(list) = list else {
            return Err(err("rules", format!("{domain:?} must map to a list of rules")));
        };
        if list.len() > MAX_ENTRIES {
            return Err(err("rules", format!("{domain:?}: at most {MAX_ENTRIES} rules")));
        }
        let transforms = list
            .iter()
            .map(|r| parse_transform(domain, r))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((pattern, transforms));
    }
    Ok(out)
}

fn parse_transform(domain: &str, rule: &Value) -> Result<Transform, PolicyError> {
    let field = format!("rules.{domain}");
    let Some(rule) = rule.as_object() else {
        return Err(err(&field, "each rule must be an object"));
    };
    let headers = match rule.get("transform").and_then(|t| t.get("headers")) {
        None | Some(Value::Null) => return Ok(Transform::default()),
        Some(Value::Object(h)) => h,
        Some(_) => return Err(err(&field, "transform.headers must be an object")),
    };
    if headers.len() > MAX_HEADERS {
        return Err(err(&field, format!("at most {MAX_HEADERS} headers per rule")));
    }
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let valid_name = !name.is_empty()
            && name.len() <= 256
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(err(&field, format!("{name:?} is not a header name")));
        }
        let Some(value) = value.as_str() else {
            return Err(err(
                &field,
                format!("header {name:?}: the value must be a string"),
            ));
        };
        if value.len() > MAX_HEADER_VALUE || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(err(
                &field,
                format!("header {name:?}: at most {MAX_HEADER_VALUE} bytes, no CR, LF or NUL"),
            ));
        }
        out.push((name.clone(), value.to_string()));
    }
    Ok(Transform { headers: out })
}

/// Reads `bandwidth` (`{egressMbps, ingressMbps}`; absent or `null`: no limits).
pub fn parse_bandwidth(v: Option<&Value>) -> Result<Bandwidth, PolicyError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(Bandwidth::default()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(err("bandwidth", "must be an object {egressMbps, ingressMbps}")),
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "egressMbps" | "ingressMbps"))
    {
        return Err(err(
            "bandwidth",
            format!("unknown field {k:?} (egressMbps, ingressMbps)"),
        ));
    }
    let rate = |key: &str| -> Result<Option<u64>, PolicyError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(m) if (MIN_MBPS..=MAX_MBPS).contains(&m) => Ok(Some((m * 1000.0).round() as u64)),
                _ => Err(err(
                    &format!("bandwidth.{key}"),
                    format!("must be a number of Mbit/s from {MIN_MBPS} to {MAX_MBPS}"),
                )),
            },
        }
    };
    Ok(Bandwidth {
        egress_kbit: rate("egressMbps")?,
        ingress_kbit: rate("ingressMbps")?,
    })
}

fn parse_egress_proxy(v: Option<&Value>) -> Result<Option<EgressProxy>, PolicyError> {
    let p = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(err("egressProxy", "must be an object")),
    };
    let opt_str = |key: &str| -> Result<Option<String>, PolicyError> {
        match p.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 255 => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(err(&format!("egressProxy.{key}"), "at most 255 bytes")),
            Some(_) => Err(err(&format!("egressProxy.{key}"), "must be a string")),
        }
    };
    let address = p.get("address").and_then(Value::as_str).unwrap_or_default();
    let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && host.len() <= 255
            && !host.contains(char::is_whitespace)
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !valid {
        return Err(err(
            "egressProxy.address",
            format!("{address:?} is not host:port"),
        ));
    }
    let tls = match p.get("tls") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) => {
            let enabled = t.get("enabled").and_then(Value::as_bool).unwrap_or(false);
            let server_name = t.get("serverName").and_then(Value::as_str).map(str::to_string);
            let ca_cert = t.get("caCert").and_then(Value::as_str).map(str::to_string);
            if !enabled && (server_name.is_some() || ca_cert.is_some()) {
                return Err(err("egressProxy.tls", "serverName and caCert need enabled: true"));
            }
            if server_name
                .as_ref()
                .is_some_and(|n| !is_dns_name(n) && n.parse::<IpAddr>().is_err())
            {
                return Err(err("egressProxy.tls.serverName", "not a host name"));
            }
            if ca_cert
                .as_ref()
                .is_some_and(|ca| ca.len() > MAX_CA_CERT || !has_certificates(ca))
            {
                return Err(err(
                    "egressProxy.tls.caCert",
                    format!("PEM certificates expected (at most {MAX_CA_CERT} bytes)"),
                ));
            }
            enabled.then_some(ProxyTls { server_name, ca_cert })
        }
        Some(_) => return Err(err("egressProxy.tls", "must be an object")),
    };
    Ok(Some(EgressProxy {
        address: address.to_string(),
        username: opt_str("username")?,
        password: opt_str("password")?,
        tls,
    }))
}

/// Checks the ingress fields of a create's `network` (`httpsPorts`, `maskRequestHost`).
pub fn check_ingress(network: &Value) -> Result<(), PolicyError> {
    const ENVD_PORT: i64 = 49983;
    if let Some(ports) = network.get("httpsPorts").filter(|v| !v.is_null()) {
        let Some(ports) = ports.as_array() else {
            return Err(err("httpsPorts", "must be a list of ports"));
        };
        if ports.len() > MAX_ENTRIES {
            return Err(err("httpsPorts", format!("at most {MAX_ENTRIES} entries")));
        }
        for p in ports {
            match p.as_i64() {
                Some(ENVD_PORT) => {
                    return Err(err(
                        "httpsPorts",
                        format!("the envd port {ENVD_PORT} cannot be listed"),
                    ));
                }
                Some(p) if (1..=65535).contains(&p) => {}
                _ => return Err(err("httpsPorts", format!("{p} is not a port (1-65535)"))),
            }
        }
    }
    match network.get("maskRequestHost") {
        None | Some(Value::Null) => {}
        Some(Value::String(h)) if h.len() <= 253 => {}
        Some(Value::String(_)) => return Err(err("maskRequestHost", "at most 253 characters")),
        Some(_) => return Err(err("maskRequestHost", "must be a string")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(v: Value) -> Policy {
        Policy::from_network(&v, true).unwrap()
    }

    #[test]
    fn default_is_open_and_internet_off_denies_all_ipv4() {
        let p = Policy::from_network(&Value::Null, true).unwrap();
        assert!(p.is_open());
        assert_eq!(p.ip_verdict(ip("203.0.113.7")), Verdict::Allow);
        let off = Policy::from_network(&Value::Null, false).unwrap();
        assert_eq!(off.ip_verdict(ip("203.0.113.7")), Verdict::Deny);
        assert_eq!(off.deny_out.len(), 1);
        assert!(!off.is_open());
        // given twice, kept once
        let off = Policy::from_network(&json!({"denyOut": ["0.0.0.0/0"]}), false).unwrap();
        assert_eq!(off.deny_out.len(), 1);
    }

    #[test]
    fn allow_wins_over_deny() {
        let p = policy(json!({"denyOut": ["0.0.0.0/0"], "allowOut": ["198.51.100.10", "203.0.113.0/28"]}));
        assert_eq!(p.ip_verdict(ip("198.51.100.10")), Verdict::Allow);
        assert_eq!(p.ip_verdict(ip("198.51.100.11")), Verdict::Deny);
        assert_eq!(p.ip_verdict(ip("203.0.113.15")), Verdict::Allow);
        assert_eq!(p.ip_verdict(ip("203.0.113.16")), Verdict::Deny);
        let p = policy(json!({"denyOut": ["198.51.100.10"], "allowOut": ["198.51.100.0/24"]}));
        assert_eq!(p.ip_verdict(ip("198.51.100.10")), Verdict::Allow);
        let p = policy(json!({"denyOut": ["198.51.100.10"]}));
        assert_eq!(p.ip_verdict(ip("198.51.100.10")), Verdict::Deny);
        assert_eq!(p.ip_verdict(ip("198.51.100.9")), Verdict::Allow);
    }

    #[test]
    fn cidr_host_bits_are_dropped() {
        let p = policy(json!({"denyOut": ["198.51.100.77/24"]}));
        assert_eq!(p.deny_out[0].to_string(), "198.51.100.0/24");
    }

    #[test]
    fn domains_and_wildcards() {
        let p = policy(json!({"allowOut": ["Example.COM.", "*.pkg.test", "198.51.100.1"]}));
        assert!(p.needs_proxy());
        assert!(p.domain_allowed("example.com"));
        assert!(p.domain_allowed("EXAMPLE.com."));
        assert!(!p.domain_allowed("www.example.com"));
        assert!(!p.domain_allowed("badexample.com"));
        assert!(p.domain_allowed("a.pkg.test"));
        assert!(p.domain_allowed("a.b.PKG.test"));
        assert!(!p.domain_allowed("pkg.test"));
        assert!(!p.domain_allowed("xpkg.test"));
        assert!(!p.domain_allowed(""));
        assert_eq!(p.allow_nets().count(), 1);
        assert_eq!(
            DomainPattern::parse("*.pkg.test").unwrap().to_string(),
            "*.pkg.test"
        );
        assert!(!policy(json!({"allowOut": ["198.51.100.1"]})).needs_proxy());
    }

    #[test]
    fn rules_are_kept_in_order() {
        let p = policy(json!({"rules": {
            "api.example.com": [{"transform": {"headers": {"Authorization": "Bearer ${e2b.secrets.k}"}}}],
            "*.example.com": [{"transform": {"headers": {"X-A": "1"}}}, {}]
        }}));
        assert!(p.needs_proxy());
        let t: Vec<_> = p.transforms_for("api.example.com").collect();
        assert_eq!(t.len(), 3);
        let names: Vec<_> = t
            .iter()
            .flat_map(|t| t.headers.iter().map(|h| h.0.as_str()))
            .collect();
        assert!(names.contains(&"Authorization") && names.contains(&"X-A"));
        assert_eq!(p.transforms_for("example.com").count(), 0);
    }

    #[test]
    fn egress_proxy_and_dns_servers() {
        let p = policy(
            json!({"dnsServers": ["198.51.100.53"], "egressProxy": {"address": "proxy.test:1080",
            "username": "u", "password": "p", "tls": {"enabled": true, "serverName": "proxy.test"}}}),
        );
        assert_eq!(p.dns_servers, vec![Ipv4Addr::new(198, 51, 100, 53)]);
        let e = p.egress_proxy.unwrap();
        assert_eq!(e.address, "proxy.test:1080");
        assert_eq!(e.tls.unwrap().server_name.as_deref(), Some("proxy.test"));
        let p = policy(json!({"egressProxy": {"address": "10.0.0.1:1080", "tls": {"enabled": false}}}));
        assert!(p.egress_proxy.unwrap().tls.is_none());
    }

    #[test]
    fn bad_policies_name_the_field() {
        let many: Vec<String> = (0..10_000)
            .map(|i| format!("198.51.{}.{}", i / 256, i % 256))
            .collect();
        for (v, field) in [
            (json!({"allowOut": many}), "allowOut"),
            (json!({"allowOut": ["10.0.0.0/33"]}), "allowOut"),
            (json!({"allowOut": ["10.0.0.0/"]}), "allowOut"),
            (json!({"allowOut": ["10.0.0.0/+8"]}), "allowOut"),
            (json!({"allowOut": ["has space"]}), "allowOut"),
            (json!({"allowOut": ["*"]}), "allowOut"),
            (json!({"allowOut": ["300.1.1.1"]}), "allowOut"),
            (json!({"allowOut": [5]}), "allowOut"),
            (json!({"allowOut": "1.1.1.1"}), "allowOut"),
            (json!({"denyOut": ["example.com"]}), "denyOut"),
            (json!({"denyOut": ["1.2.3.4/x"]}), "denyOut"),
            (json!({"dnsServers": ["2001:db8::1"]}), "dnsServers"),
            (json!({"dnsServers": ["dns.test"]}), "dnsServers"),
            (json!({"rules": {"*": []}}), "rules"),
            (json!({"rules": {"a.test": {}}}), "rules"),
            (
                json!({"rules": {"a.test": [{"transform": {"headers": {"X": "a\r\nB: c"}}}]}}),
                "rules.a.test",
            ),
            (
                json!({"rules": {"a.test": [{"transform": {"headers": {"Bad Name": "v"}}}]}}),
                "rules.a.test",
            ),
            (
                json!({"rules": {"a.test": [{"transform": {"headers": {"X": 1}}}]}}),
                "rules.a.test",
            ),
            (
                json!({"egressProxy": {"address": "nohostport"}}),
                "egressProxy.address",
            ),
            (json!({"egressProxy": {"address": "h:0"}}), "egressProxy.address"),
            (
                json!({"egressProxy": {"address": "h:1", "password": "x".repeat(256)}}),
                "egressProxy.password",
            ),
            (
                json!({"egressProxy": {"address": "h:1", "tls": {"enabled": false, "serverName": "h.test"}}}),
                "egressProxy.tls",
            ),
            (
                json!({"egressProxy": {"address": "h:1", "tls": {"enabled": true, "caCert": "nope"}}}),
                "egressProxy.tls.caCert",
            ),
            (
                json!({"egressProxy": {"address": "h:1", "tls": {"enabled": true,
                    "caCert": "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n"}}}),
                "egressProxy.tls.caCert",
            ),
            (json!({"egressProxy": 5}), "egressProxy"),
            (json!([1]), "network"),
        ] {
            let e = Policy::from_network(&v, true).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
        for (v, field) in [
            (json!({"httpsPorts": [49983]}), "httpsPorts"),
            (json!({"httpsPorts": [0]}), "httpsPorts"),
            (json!({"httpsPorts": [70000]}), "httpsPorts"),
            (json!({"maskRequestHost": "x".repeat(254)}), "maskRequestHost"),
        ] {
            assert_eq!(check_ingress(&v).unwrap_err().field, field, "{v}");
        }
        assert!(
            check_ingress(&json!({"httpsPorts": [443, 8443], "maskRequestHost": "localhost:${PORT}"}))
                .is_ok()
        );
    }

    #[test]
    fn ipv6_entries_are_kept() {
        let p = policy(json!({"denyOut": ["::/0"], "allowOut": ["2001:db8::/32"]}));
        assert_eq!(p.ip_verdict(ip("2001:db8::1")), Verdict::Allow);
        assert_eq!(p.ip_verdict(ip("2001:db9::1")), Verdict::Deny);
        assert_eq!(p.ip_verdict(ip("198.51.100.1")), Verdict::Allow);
    }
}
