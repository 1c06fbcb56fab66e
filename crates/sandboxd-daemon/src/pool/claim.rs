//! Claim: a create served from the warm pool (the module doc of `pool/mod.rs` has the rules).

use super::{Pool, Pooled};
use crate::agent::{control_request, control_send};
use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::ids::new_token;
use crate::params::CreateParams;
use crate::sandbox::LiveSandbox;
use crate::spec::new_record;
use chrono::Utc;
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::{AgentEndpoint, Limits};
use sandboxd_store::{SandboxState, StoreError, trunc_micros};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time limit of the config hand-over at claim.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

impl Daemon {
    /// Serves a create from the pool. `None`: no pooled sandbox fits (or the hand-over failed and
    /// the pooled sandbox was destroyed): the caller boots one cold.
    pub(crate) async fn claim_pooled(
        self: &Arc<Self>,
        params: &CreateParams,
        timeout: Duration,
        limits: Limits,
        template_id: &str,
        alias: &str,
    ) -> Option<Result<Arc<LiveSandbox>, DaemonError>> {
        // pooled sandboxes were booted without volumes or a command policy (which the agent
        // installs at boot); a pool is named as creates name the template (`alias`: a built
        // template's name, whose runtime template is `template_id`)
        if !params.volume_mounts.is_empty()
            || params.allowed_commands.is_some()
            || !self.pool.lock().contains_key(alias)
        {
            return None;
        }
        let t0 = Instant::now();
        let reservation = self.reserve().ok()?; // at the limit: the cold path answers 429
        let pooled = match self.pool.take(alias, &limits, template_id) {
            Ok(p) => p?,
            Err(stale) => {
                for p in stale {
                    tracing::info!(sandbox = %p.id, template = alias, "discarding a pooled sandbox of an older build");
                    self.discard(p.id);
                }
                return None;
            }
        };
        let _refill = ClaimDone(&self.pool);
        let id = pooled.id.clone();
        // the pooled sandbox's link is up already; only its policy changes (docs/network.md)
        let null = serde_json::Value::Null;
        if let Err(e) = self
            .backend()
            .set_egress(
                &id,
                params.network.as_ref().unwrap_or(&null),
                params.allow_internet_access,
            )
            .await
        {
            tracing::warn!(sandbox = %id, "egress policy of a claimed sandbox: {e}; booting a fresh one");
            self.discard(id);
            return None;
        }
        let started_at = trunc_micros(Utc::now());
        let end_at = trunc_micros(started_at + timeout);
        let access_token = params.secure.then(new_token);

        // The agent's new config (the placeholder token stops working once it is applied).
        let mut agent = pooled.agent.clone();
        agent.env_vars = params.env_vars.clone();
        agent.access_token = access_token.clone();

        // The registry row. With default lifecycle settings it is written once, as running,
        // while the agent gets its config (both before the 201): a crash before the row commits
        // leaves a host-only sandbox (destroyed at start); after it, a sandbox the client may
        // never have heard of, which expires at its timeout, like a cold create whose 201 was
        // lost. With lifecycle settings: creating, settings, running, as for a cold create.
        let with_settings = !params.lifecycle.is_default();
        let mut rec = new_record(
            id.clone(),
            template_id,
            alias,
            if with_settings {
                SandboxState::Creating
            } else {
                SandboxState::Running
            },
            &limits,
            params,
            access_token,
            params.restrict_public_traffic.then(new_token),
            started_at,
            end_at,
        );
        rec.agent_pid = Some(pooled.handle.agent_pid);
        rec.agent_start_time = Some(pooled.handle.agent_start_time);
        let insert = self.registry.call(move |s| s.insert_unsynced(&rec));
        let ((config, config_t), (row, row_t)) = tokio::join!(
            async {
                let t = Instant::now();
                (hand_over(&pooled, &agent).await, t.elapsed())
            },
            async {
                let t = Instant::now();
                (insert.await.map_err(DaemonError::from), t.elapsed())
            }
        );
        let t_config = t0.elapsed();
        let rec = match (config, row) {
            (Ok(()), Ok(rec)) => rec,
            (Err(e), row) => {
                tracing::warn!(sandbox = %id, "pool hand-over failed ({e}); destroying it and booting cold");
                self.pool.count_failure(alias);
                match row {
                    Ok(_) => self.remove_row_and_discard(id),
                    Err(_) => self.discard(id),
                }
                return None;
            }
            (Ok(()), Err(e)) => {
                self.discard(id);
                return Some(Err(e));
            }
        };
        if with_settings {
            let mut lc = params.lifecycle.clone();
            lc.timeout_secs = timeout.as_secs() as i64;
            let (pid, start) = (pooled.handle.agent_pid, pooled.handle.agent_start_time);
            let r = match self.store_settings(&id, lc).await {
                Ok(()) => {
                    let id2 = id.clone();
                    self.registry
                        .call(move |s| s.set_running(&id2, pid, start))
                        .await
                        .map_err(DaemonError::from)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                self.lifecycle.forget(&id);
                self.remove_row_and_discard(id);
                return Some(Err(e));
            }
        }
        // Live: routable from now on.
        let live = match LiveSandbox::from_handle(rec, SandboxState::Running, end_at, pooled.handle) {
            Ok(l) => l,
            Err(e) => {
                self.remove_row_and_discard(id.clone());
                return Some(Err(e));
            }
        };
        self.sandboxes.insert(live.clone());
        drop(reservation);
        tracing::info!(
            sandbox = %id,
            template = template_id,
            us = t0.elapsed().as_micros() as u64,
            handover_us = t_config.as_micros() as u64,
            config_us = config_t.as_micros() as u64,
            row_us = row_t.as_micros() as u64,
            idle_ms = pooled.born.elapsed().as_millis() as u64,
            "sandbox created from the pool"
        );
        Some(Ok(live))
    }

    /// Destroys a pooled sandbox that has no registry row, in the background.
    fn discard(self: &Arc<Self>, id: String) {
        let backend = self.backend().clone();
        tokio::spawn(async move {
            if let Err(e) = backend.destroy(&id).await {
                tracing::error!(sandbox = %id, "destroying a pooled sandbox failed (removed at the next start): {e}");
            }
        });
    }

    /// Destroys a claimed sandbox whose registry row exists, then deletes the row.
    fn remove_row_and_discard(self: &Arc<Self>, id: String) {
        let backend = self.backend().clone();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            if let Err(e) = backend.destroy(&id).await {
                tracing::error!(sandbox = %id, "destroying a claimed sandbox failed (row kept for the next start): {e}");
                return;
            }
            let id2 = id.clone();
            match registry.call(move |s| s.delete(&id2)).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => tracing::error!(sandbox = %id, "removing the row of a failed claim: {e}"),
            }
        });
    }
}

/// Notes the end of a claim (whichever way it ends) and wakes the refiller.
struct ClaimDone<'a>(&'a Pool);

impl Drop for ClaimDone<'_> {
    fn drop(&mut self) {
        *self.0.last_claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.0.wake.notify_one();
    }
}

/// `POST /config` on the agent's control socket with the full new config, over the
/// connection opened when the sandbox joined the pool (a new one if that is gone).
async fn hand_over(pooled: &Pooled, agent: &AgentConfig) -> Result<(), String> {
    let body = serde_json::to_string(agent).map_err(|e| e.to_string())?;
    let mut sender = pooled.control.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(s) = sender.as_mut()
        && s.ready().await.is_err()
    {
        sender = None;
    }
    let (status, answer) = match sender {
        Some(mut sender) => {
            control_send(&mut sender, http::Method::POST, "/config", body, HANDOVER_TIMEOUT).await?
        }
        None => {
            let AgentEndpoint::Unix(sock) = &pooled.handle.control;
            control_request(sock, http::Method::POST, "/config", body).await?
        }
    };
    if status != http::StatusCode::NO_CONTENT {
        return Err(format!(
            "the agent answered {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    Ok(())
}
