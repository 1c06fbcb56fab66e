//! Network settings of a running sandbox (`PUT /sandboxes/{id}/network`).

use crate::daemon::Daemon;
use crate::error::DaemonError;
use sandboxd_store::{SandboxState, StoreError};
use serde_json::Value;
use std::sync::Arc;

/// Checks a `network` object with the one rule set the packet filter and the egress proxy
/// enforce (`sandboxd_net::Policy`; with `ingress`, also `httpsPorts` and `maskRequestHost`):
/// "invalid input" naming the field. Run on every create and update, whatever the backend.
pub fn check_network(
    network: Option<&Value>,
    allow_internet_access: bool,
    ingress: bool,
) -> Result<(), DaemonError> {
    let null = Value::Null;
    let network = network.unwrap_or(&null);
    let invalid = |e: sandboxd_net::PolicyError| DaemonError::InvalidInput(format!("network.{e}"));
    sandboxd_net::Policy::from_network(network, allow_internet_access).map_err(invalid)?;
    if ingress {
        sandboxd_net::policy::check_ingress(network).map_err(invalid)?;
    }
    Ok(())
}

impl Daemon {
    /// `PUT /sandboxes/{id}/network`: replace the egress settings (`allowOut`, `denyOut`,
    /// `dnsServers`, `egressProxy`, `rules`; a field left out is cleared) and
    /// `allow_internet_access`, keeping the ingress ones (`allowPublicTraffic`,
    /// `maskRequestHost`, `httpsPorts`) and sandboxd's `bandwidth` unless given (`null`
    /// clears it). Enforced at once by the backend's networking (`docs/network.md`), then
    /// stored; a policy the backend refuses changes nothing.
    pub async fn update_network(
        self: &Arc<Self>,
        id: &str,
        egress: serde_json::Map<String, serde_json::Value>,
        allow_internet_access: Option<bool>,
    ) -> Result<(), DaemonError> {
        let s = match self.sandboxes.get(id) {
            Some(s) => s,
            None => return Err(DaemonError::SandboxNotFound(id.to_string())),
        };
        let (network, allow) = {
            let d = s.lock();
            match d.state {
                SandboxState::Running => {}
                SandboxState::Paused => {
                    return Err(DaemonError::Conflict(format!(
                        "sandbox {id} is paused: resume it before changing its network"
                    )));
                }
                _ => return Err(DaemonError::SandboxNotFound(id.to_string())),
            }
            let mut net = serde_json::Map::new();
            if let Some(serde_json::Value::Object(old)) = &d.network {
                // ingress settings, and sandboxd's rate limits unless the update sets them
                for key in ["allowPublicTraffic", "maskRequestHost", "httpsPorts", "bandwidth"] {
                    if let Some(v) = old.get(key) {
                        net.insert(key.to_string(), v.clone());
                    }
                }
            }
            net.extend(egress);
            net.retain(|_, v| !v.is_null());
            let network = (!net.is_empty()).then_some(serde_json::Value::Object(net));
            (network, allow_internet_access.unwrap_or(d.allow_internet_access))
        };
        check_network(network.as_ref(), allow, false)?;
        self.check_secret_references(network.as_ref()).await?;
        // checked and applied by the packet filter at once (connections to now-denied places
        // are cut); stored only once accepted
        let null = serde_json::Value::Null;
        self.backend()
            .set_egress(id, network.as_ref().unwrap_or(&null), allow)
            .await?;
        {
            let mut d = s.lock();
            d.network = network.clone();
            d.allow_internet_access = allow;
        }
        let id2 = id.to_string();
        match self
            .registry
            .call(move |st| st.set_network(&id2, network.as_ref(), allow))
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(DaemonError::SandboxNotFound(id.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        for (v, field) in [
            (json!({"dnsServers": ["8.8.8"]}), "dnsServers"),
            (json!({"dnsServers": ["2001:db8::1"]}), "dnsServers"),
            (json!({"dnsServers": ["dns.google"]}), "dnsServers"),
            (json!({"dnsServers": "8.8.8.8"}), "dnsServers"),
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
            (json!({"maskRequestHost": 5}), "maskRequestHost"),
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
            (json!({"egressProxy": 5}), "egressProxy"),
            (json!({"rules": {"*": []}}), "rules"),
            (json!({"rules": {"a.com": {}}}), "rules"),
            (json!({"bandwidth": {"egressMbps": 0}}), "bandwidth"),
            (json!([1, 2]), "network"),
        ] {
            let e = check_network(Some(&v), true, true).unwrap_err();
            assert!(matches!(e, DaemonError::InvalidInput(_)), "{v}");
            assert!(e.to_string().contains(field), "{v}: {e}");
        }
        let ok = json!({
            "allowPublicTraffic": null,
            "allowOut": ["8.8.8.8/32", "1.1.1.1", "example.com", "*.example.com", "2001:db8::/32"],
            "denyOut": ["0.0.0.0/0", "10.0.0.1", "::/0"],
            "dnsServers": ["8.8.8.8"],
            "httpsPorts": [443, 8443],
            "maskRequestHost": "localhost:${PORT}",
            "rules": {"api.example.com": [{"transform": {"headers": {"X": "y"}}}]},
            "somethingNewer": {"x": 1}
        });
        assert!(check_network(Some(&ok), false, true).is_ok());
        assert!(check_network(None, true, true).is_ok());
    }
}
