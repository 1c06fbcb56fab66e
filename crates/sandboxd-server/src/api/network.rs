//! Sandbox network settings: `network` of a create request (`SandboxNetworkConfig`) and the
//! body of `PUT /sandboxes/{id}/network` (`SandboxNetworkUpdateConfig`). The domain checks
//! them (one rule set with the enforcement, `sandboxd-net`'s `Policy`) and `sandboxd-net`
//! enforces them (`docs/network.md`). Unknown keys are accepted, as upstream does. Secrets (the
//! egress proxy's `password` and `tls.caCert`) are stored but never returned ([`public_view`]).

use super::extract::{JsonBody, SandboxId};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use sandboxd_daemon::Daemon;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// `SandboxNetworkConfig` of a create request: what the HTTP layer reads of it. Every field
/// is checked by the domain (`sandboxd_daemon::network::check_network`, the rules the packet
/// filter and egress proxy enforce); unknown keys are accepted, as upstream does.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// `null` or absent: the default (public).
    pub allow_public_traffic: Option<bool>,
}

/// `PUT /sandboxes/{id}/network`: replaces the egress settings (a field left out is cleared).
#[derive(Debug, Deserialize)]
pub struct NetworkUpdate {
    /// Also settable here (`allow_internet_access`, snake case as upstream sends it).
    pub allow_internet_access: Option<bool>,
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

impl NetworkConfig {
    /// Reads the `network` object of a create request (a 400 when it is not an object or
    /// `allowPublicTraffic` is not a boolean).
    pub fn parse(v: &Value) -> Result<Self, ApiError> {
        if !v.is_object() {
            return Err(bad("network: must be an object".into()));
        }
        serde_json::from_value(v.clone()).map_err(|e| bad(format!("invalid network: {e}")))
    }
}

/// The egress keys an update replaces (the rest of the stored settings is kept).
const EGRESS_KEYS: [&str; 5] = ["allowOut", "denyOut", "dnsServers", "egressProxy", "rules"];

impl NetworkUpdate {
    /// The egress settings of an update body as stored (`allowOut`, `denyOut`, `dnsServers`,
    /// `egressProxy`, `rules`; fields left out are absent), and sandboxd's `bandwidth` when
    /// given (`null` included). Their values are checked by the domain.
    pub fn into_egress(self, raw: &Value) -> Result<Map<String, Value>, ApiError> {
        if !raw.is_object() {
            return Err(bad("the body must be a JSON object".into()));
        }
        let mut out = Map::new();
        for key in EGRESS_KEYS {
            if let Some(v) = raw.get(key).filter(|v| !v.is_null()) {
                out.insert(key.to_string(), v.clone());
            }
        }
        // sandboxd's rate limits: kept when left out; `null` clears them
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

/// `PUT /sandboxes/{id}/network`: replace the egress settings, enforced at once (`docs/network.md`).
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
    fn shapes_the_http_layer_reads() {
        assert_eq!(
            create(json!({"allowPublicTraffic": "no"})).unwrap_err().status(),
            400
        );
        assert_eq!(create(json!([1])).unwrap_err().status(), 400);
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
