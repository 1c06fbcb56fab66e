//! Kill: the sandbox vanishes from the API at once, then the backend tears it down (row kept
//! until the teardown succeeded, so a failed one is finished at the next start).

use crate::daemon::Daemon;
use crate::error::DaemonError;
use sandboxd_store::{SandboxState, StoreError};
use std::sync::Arc;

impl Daemon {
    /// Kills a sandbox: it vanishes from the API at once, its traffic gets 502, in-flight
    /// client connections are reset, then the backend tears it down. `Ok(false)` if unknown.
    pub async fn kill(self: &Arc<Self>, id: &str, reason: &str) -> Result<bool, DaemonError> {
        // waits for a pause or resume in progress (lifecycle.rs)
        let _op = self.lifecycle.op_lock(id).await;
        let Some(s) = self.sandboxes.remove(id) else {
            return Ok(false);
        };
        self.lifecycle.forget(id);
        self.counters.killed(reason);
        let resets = s.stop(SandboxState::Killing);
        tracing::info!(sandbox = %id, reason, resets, "killing sandbox");
        let this = self.clone();
        let id = id.to_string();
        match tokio::spawn(async move { this.teardown_checked(&id).await }).await {
            Ok(r) => r.map(|_| true),
            Err(e) => Err(DaemonError::Internal(format!("kill task failed: {e}"))),
        }
    }

    async fn teardown_checked(&self, id: &str) -> Result<(), DaemonError> {
        let id2 = id.to_string();
        match self
            .registry
            .call(move |s| s.set_state(&id2, SandboxState::Killing))
            .await
        {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => tracing::error!(sandbox = %id, "marking killing: {e}"),
        }
        self.backend.destroy(id).await.map_err(|e| {
            tracing::error!(sandbox = %id, "destroy failed (row kept for the next start): {e}");
            DaemonError::from(e)
        })?;
        let id2 = id.to_string();
        self.registry.call(move |s| s.delete(&id2)).await?;
        Ok(())
    }

    pub(crate) async fn teardown(&self, id: &str) {
        if let Err(e) = self.teardown_checked(id).await {
            tracing::error!(sandbox = %id, "teardown: {e}");
        }
    }
}
