//! Sandbox network settings: `network` of a create request (`SandboxNetworkConfig`) and the
//! body of `PUT /sandboxes/{id}/network` (`SandboxNetworkUpdateConfig`). They are validated
//! and stored here; `sandboxd-net` enforces them (`docs/network.md`). Unknown keys are
//! accepted, as upstream does. Secrets (the egress proxy's `password` and `tls.caCert`) are
//! stored but never returned ([`public_view`]).

use super::extract::{JsonBody, SandboxId};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use sandboxd_daemon::Daemon;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Largest number of entries in `allowOut`, `denyOut`, `dnsServers`, `httpsPorts`, `rules`.
const MAX_ENTRIES: usize = 1024;
/// Largest `egressProxy.tls.caCert` (PEM).
const MAX_CA_CERT: usize = 64 * 1024;
/// The envd port, which cannot be listed in `httpsPorts`.
const ENVD_PORT: i64 = 49983;

/// `SandboxNetworkConfig` of a create request.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// `null` or absent: the default (public).
    pub allow_public_traffic: Option<bool>,
    allow_out: Option<Vec<String>>,
    deny_out: Option<Vec<String>>,
    dns_servers: Option<Vec<String>>,
    egress_proxy: Option<EgressProxy>,
    mask_request_host: Option<String>,
    https_ports: Option<Vec<i64>>,
    rules: Option<Map<String, Value>>,
}

/// `PUT /sandboxes/{id}/network`: replaces the egress settings (a field left out is cleared).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkUpdate {
    allow_out: Option<Vec<String>>,
    deny_out: Option<Vec<String>>,
    dns_servers: Option<Vec<String>>,
    egress_proxy: Option<EgressProxy>,
    rules: Option<Map<String, Value>>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
}

/// `egressProxy` (SOCKS5).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EgressProxy {
    address: String,
    username: Option<String>,
    password: Option<String>,
    tls: Option<ProxyTls>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProxyTls {
    enabled: bool,
    server_name: Option<String>,
    ca_cert: Option<String>,
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

/// A DNS name, optionally with a leading `*.` wildcard: labels of 1–63 `[A-Za-z0-9-]` not
/// starting or ending with `-`, at most 253 characters.
fn is_domain(s: &str, wildcard: bool) -> bool {
    let name = match s.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => s,
    };
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // not an IP address in disguise, and at least one letter in the top label
        && name.rsplit('.').next().is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `::/0`).
fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, prefix)) => match (ip.parse::<IpAddr>(), prefix.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(p)) => p <= 32 && !prefix.starts_with('+'),
            (Ok(IpAddr::V6(_)), Ok(p)) => p <= 128 && !prefix.starts_with('+'),
            _ => false,
        },
    }
}

fn check_len<T>(key: &str, list: &[T]) -> Result<(), ApiError> {
    if list.len() > MAX_ENTRIES {
        return Err(bad(format!("{key}: at most {MAX_ENTRIES} entries")));
    }
    Ok(())
}

fn check_allow_out(list: &[String]) -> Result<(), ApiError> {
    check_len("allowOut", list)?;
    match list.iter().find(|e| !is_ip_or_cidr(e) && !is_domain(e, true)) {
        Some(e) => Err(bad(format!(
            "allowOut: {e:?} is not a CIDR block, IP address or domain name"
        ))),
        None => Ok(()),
    }
}

fn check_deny_out(list: &[String]) -> Result<(), ApiError> {
    check_len("denyOut", list)?;
    match list.iter().find(|e| !is_ip_or_cidr(e)) {
        Some(e) => Err(bad(format!(
            "denyOut: {e:?} is not a CIDR block or IP address (domain names cannot be denied)"
        ))),
        None => Ok(()),
    }
}

fn check_dns_servers(list: &[String]) -> Result<(), ApiError> {
    check_len("dnsServers", list)?;
    match list.iter().find(|e| e.parse::<Ipv4Addr>().is_err()) {
        Some(e) => Err(bad(format!("dnsServers: {e:?} is not an IPv4 address"))),
        None => Ok(()),
    }
}

fn check_https_ports(list: &[i64]) -> Result<(), ApiError> {
    check_len("httpsPorts", list)?;
    for p in list {
        if *p == ENVD_PORT {
            return Err(bad(format!(
                "httpsPorts: the envd port {ENVD_PORT} cannot be listed"
            )));
        }
        if !(1..=65535).contains(p) {
            return Err(bad(format!("httpsPorts: {p} is not a port (1-65535)")));
        }
    }
    Ok(())
}

fn check_rules(rules: &Map<String, Value>) -> Result<(), ApiError> {
    if rules.len() > MAX_ENTRIES {
        return Err(bad(format!("rules: at most {MAX_ENTRIES} domains")));
    }
    for (domain, list) in rules {
        if !is_domain(domain, true) {
            return Err(bad(format!("rules: {domain:?} is not a domain name or *.domain")));
        }
        if !list.is_array() {
            return Err(bad(format!("rules: {domain:?} must map to a list of rules")));
        }
    }
    Ok(())
}

impl EgressProxy {
    fn check(&self) -> Result<(), ApiError> {
        let port_ok = self.address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host.len() <= 255
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(bad(format!(
                "egressProxy.address: {:?} is not host:port",
                self.address
            )));
        }
        for (key, v) in [("username", &self.username), ("password", &self.password)] {
            if v.as_ref().is_some_and(|v| v.len() > 255) {
                return Err(bad(format!("egressProxy.{key}: at most 255 bytes")));
            }
        }
        if let Some(tls) = &self.tls {
            if !tls.enabled && (tls.server_name.is_some() || tls.ca_cert.is_some()) {
                return Err(bad(
                    "egressProxy.tls: serverName and caCert need enabled: true".into()
                ));
            }
            if tls
                .server_name
                .as_ref()
                .is_some_and(|n| !is_domain(n, false) && n.parse::<IpAddr>().is_err())
            {
                return Err(bad("egressProxy.tls.serverName: not a host name".into()));
            }
            if let Some(ca) = &tls.ca_cert
                && (ca.len() > MAX_CA_CERT || !ca.contains("-----BEGIN CERTIFICATE-----"))
            {
                return Err(bad(format!(
                    "egressProxy.tls.caCert: PEM certificates expected (at most {MAX_CA_CERT} bytes)"
                )));
            }
        }
        Ok(())
    }
}

impl NetworkConfig {
    /// Parses and validates the `network` object of a create request.
    pub fn parse(v: &Value) -> Result<Self, ApiError> {
        let n: NetworkConfig =
            serde_json::from_value(v.clone()).map_err(|e| bad(format!("invalid network: {e}")))?;
        if let Some(l) = &n.allow_out {
            check_allow_out(l)?;
        }
        if let Some(l) = &n.deny_out {
            check_deny_out(l)?;
        }
        if let Some(l) = &n.dns_servers {
            check_dns_servers(l)?;
        }
        if let Some(l) = &n.https_ports {
            check_https_ports(l)?;
        }
        if let Some(r) = &n.rules {
            check_rules(r)?;
        }
        if let Some(p) = &n.egress_proxy {
            p.check()?;
        }
        if n.mask_request_host.as_ref().is_some_and(|h| h.len() > 253) {
            return Err(bad("maskRequestHost: at most 253 characters".into()));
        }
        Ok(n)
    }
}

impl NetworkUpdate {
    /// The validated egress settings as stored (`allowOut`, `denyOut`, `dnsServers`,
    /// `egressProxy`, `rules`; fields left out are absent), and sandboxd's `bandwidth` when
    /// given (`null` included).
    pub fn into_egress(self, raw: &Value) -> Result<Map<String, Value>, ApiError> {
        if let Some(l) = &self.allow_out {
            check_allow_out(l)?;
        }
        if let Some(l) = &self.deny_out {
            check_deny_out(l)?;
        }
        if let Some(l) = &self.dns_servers {
            check_dns_servers(l)?;
        }
        if let Some(r) = &self.rules {
            check_rules(r)?;
        }
        if let Some(p) = &self.egress_proxy {
            p.check()?;
        }
        let mut out = Map::new();
        for key in ["allowOut", "denyOut", "dnsServers", "egressProxy", "rules"] {
            if let Some(v) = raw.get(key).filter(|v| !v.is_null()) {
                out.insert(key.to_string(), v.clone());
            }
        }
        // sandboxd's rate limits: kept when left out (checked by the domain); `null` clears them
        if let Some(v) = raw.get("bandwidth") {
            out.insert("bandwidth".to_string(), v.clone());
        }
        Ok(out)
    }
}

/// The stored network settings as any GET returns them: without the egress proxy's
/// `password` and `tls.caCert`.
pub fn public_view(network: &Value) -> Value {
    let mut v = network.clone();
    if let Some(p) = v.get_mut("egressProxy").and_then(Value::as_object_mut) {
        p.remove("password");
        if let Some(t) = p.get_mut("tls").and_then(Value::as_object_mut) {
            t.remove("caCert");
        }
    }
    v
}

/// `PUT /sandboxes/{id}/network`: replace the egress settings (stored; not enforced yet).
pub(super) async fn update(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    JsonBody(raw): JsonBody<Value>,
) -> Result<StatusCode, ApiError> {
    let body = serde_json::from_value::<NetworkUpdate>(raw.clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    let allow = body.allow_internet_access;
    let egress = body.into_egress(&raw)?;
    daemon.update_network(&id, egress, allow).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(v: Value) -> Result<NetworkConfig, ApiError> {
        NetworkConfig::parse(&v)
    }

    fn update(v: Value) -> Result<Map<String, Value>, ApiError> {
        serde_json::from_value::<NetworkUpdate>(v.clone())
            .map_err(|e| bad(e.to_string()))?
            .into_egress(&v)
    }

    #[test]
    fn newest_sdk_network_fields_are_accepted() {
        let n = create(json!({
            "allowPublicTraffic": null,
            "allowOut": ["8.8.8.8/32", "1.1.1.1", "example.com", "*.example.com", "2001:db8::/32"],
            "denyOut": ["0.0.0.0/0", "10.0.0.1", "::/0"],
            "dnsServers": ["8.8.8.8", "1.1.1.1"],
            "httpsPorts": [443, 8443],
            "egressProxy": {"address": "proxy.example.com:1080", "username": "u", "password": "p",
                            "tls": {"enabled": true, "serverName": "proxy.example.com",
                                    "caCert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}},
            "maskRequestHost": "localhost:${PORT}",
            "rules": {"api.example.com": [{"transform": {"headers": {"X": "y"}}}]},
            "somethingNewer": {"x": 1}
        }))
        .unwrap();
        assert_eq!(n.allow_public_traffic, None);
        assert_eq!(
            create(json!({"allowPublicTraffic": false}))
                .unwrap()
                .allow_public_traffic,
            Some(false)
        );
        assert!(create(json!({"dnsServers": []})).is_ok());
        assert!(create(json!({"egressProxy": null})).is_ok());
        assert!(
            create(json!({"egressProxy": {"address": "10.0.0.1:1080", "tls": {"enabled": false}}})).is_ok()
        );
        let u =
            update(json!({"dnsServers": ["9.9.9.9"], "allowOut": ["example.com"], "newerKey": 1})).unwrap();
        assert_eq!(u["dnsServers"], json!(["9.9.9.9"]));
        assert!(!u.contains_key("newerKey"));
        assert!(update(json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_values_are_400_naming_the_field() {
        for (v, field) in [
            (json!({"dnsServers": ["8.8.8"]}), "dnsServers"),
            (json!({"dnsServers": ["2001:db8::1"]}), "dnsServers"),
            (json!({"dnsServers": ["dns.google"]}), "dnsServers"),
            (json!({"dnsServers": "8.8.8.8"}), "network"),
            (json!({"allowOut": ["10.0.0.0/33"]}), "allowOut"),
            (json!({"allowOut": ["has space"]}), "allowOut"),
            (json!({"allowOut": ["*"]}), "allowOut"),
            (json!({"allowOut": ["300.1.1.1"]}), "allowOut"),
            (json!({"allowOut": ["-bad.com"]}), "allowOut"),
            (json!({"denyOut": ["example.com"]}), "denyOut"),
            (json!({"denyOut": ["1.2.3.4/x"]}), "denyOut"),
            (json!({"httpsPorts": [49983]}), "httpsPorts"),
            (json!({"httpsPorts": [0]}), "httpsPorts"),
            (json!({"httpsPorts": [70000]}), "httpsPorts"),
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
                json!({"egressProxy": {"address": "h:1", "tls": {"enabled": false, "serverName": "h"}}}),
                "egressProxy.tls",
            ),
            (
                json!({"egressProxy": {"address": "h:1", "tls": {"enabled": true, "caCert": "nope"}}}),
                "caCert",
            ),
            (json!({"egressProxy": 5}), "network"),
            (json!({"rules": {"*": []}}), "rules"),
            (json!({"rules": {"a.com": {}}}), "rules"),
        ] {
            let e = create(v.clone()).unwrap_err();
            assert_eq!(e.status(), 400, "{v}");
            assert!(e.to_string().contains(field), "{v}: {e}");
        }
        let e = update(json!({"dnsServers": ["not-an-ip"]})).unwrap_err();
        assert!(e.to_string().contains("dnsServers"), "{e}");
        assert_eq!(
            update(json!({"denyOut": ["has space"]})).unwrap_err().status(),
            400
        );
    }

    #[test]
    fn secrets_are_never_returned() {
        let stored = json!({"allowOut": ["a.com"], "egressProxy": {"address": "h:1", "username": "u",
            "password": "secret", "tls": {"enabled": true, "serverName": "h", "caCert": "-----BEGIN CERTIFICATE-----"}}});
        let v = public_view(&stored);
        assert_eq!(
            v,
            json!({"allowOut": ["a.com"], "egressProxy": {"address": "h:1", "username": "u",
                "tls": {"enabled": true, "serverName": "h"}}})
        );
        assert_eq!(
            public_view(&json!({"egressProxy": null})),
            json!({"egressProxy": null})
        );
    }
}
