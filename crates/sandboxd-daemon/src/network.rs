//! Network settings of a running sandbox (`PUT /sandboxes/{id}/network`).

use crate::daemon::Daemon;
use crate::error::DaemonError;
use sandboxd_store::{SandboxState, StoreError};
use std::sync::Arc;

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
