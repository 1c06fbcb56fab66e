//! Reconciliation at start: re-adopts the sandboxes of an earlier run from the registry and
//! brings the host in line with it after a crash at any point (the table in `pause.rs`).

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::lifecycle::Lifecycle;
use crate::sandbox::LiveSandbox;
use sandboxd_runtime::RuntimeError;
use sandboxd_store::{SandboxRecord, SandboxState};
use std::sync::Arc;

impl Daemon {
    /// Re-adopts the sandboxes of an earlier run and cleans up what cannot be adopted (see the
    /// table at the top). Returns the ids removed.
    pub async fn reconcile_at_start(self: &Arc<Self>) -> Result<Vec<String>, DaemonError> {
        // template builds do not survive a restart: the ones that were running failed
        let now = chrono::Utc::now().timestamp_micros();
        let failed = self.registry.call(move |s| s.fail_unfinished_builds(now)).await?;
        if failed > 0 {
            tracing::warn!(
                count = failed,
                "template builds interrupted by the restart marked failed"
            );
        }
        let rows = self.registry.call(|s| s.list()).await?;
        let mut docs = self.registry.call(|s| s.lifecycles()).await?;
        let mut removed = Vec::new();
        let mut known = std::collections::HashSet::new();
        for rec in rows {
            let id = rec.id.clone();
            known.insert(id.clone());
            let mut lc: Lifecycle = docs
                .remove(&id)
                .and_then(|d| serde_json::from_value(d).ok())
                .unwrap_or_default();
            let keep = match rec.state {
                SandboxState::Creating | SandboxState::Killing => {
                    tracing::info!(sandbox = %id, state = rec.state.as_str(), "removing a sandbox an earlier run left half made");
                    false
                }
                SandboxState::Running | SandboxState::Paused => match self.adopt_one(&rec, &mut lc).await {
                    Ok(keep) => keep,
                    Err(e) => {
                        // A failed check is no evidence that the sandbox is gone: keep its row and
                        // files for the next start instead of destroying it.
                        tracing::error!(sandbox = %id, "re-adoption failed: {e}; keeping it for the next start");
                        continue;
                    }
                },
            };
            if !keep {
                self.backend().destroy(&id).await?;
                let id2 = id.clone();
                self.registry.call(move |s| s.delete(&id2)).await?;
                removed.push(id);
            }
        }
        for id in self.backend().list_host_sandboxes().await? {
            if !known.contains(&id) {
                tracing::info!(sandbox = %id, "removing a sandbox that is not in the registry");
                self.backend().destroy(&id).await?;
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// Re-adopts one running or paused row. `Ok(false)`: it cannot be kept.
    async fn adopt_one(
        self: &Arc<Self>,
        rec: &SandboxRecord,
        lc: &mut Lifecycle,
    ) -> Result<bool, DaemonError> {
        let id = rec.id.clone();
        let (pid, start) = (rec.agent_pid.unwrap_or(0), rec.agent_start_time.unwrap_or(0));
        let null = serde_json::Value::Null;
        if let Err(e) = self
            .backend()
            .set_egress(
                &id,
                rec.network.as_ref().unwrap_or(&null),
                rec.allow_internet_access,
            )
            .await
        {
            tracing::error!(sandbox = %id, "restoring the egress policy: {e}");
        }
        let adopted = match self.backend().adopt(&id, pid, start).await {
            Ok(a) => a,
            Err(RuntimeError::Unsupported(m)) => {
                tracing::warn!(sandbox = %id, "this backend cannot re-adopt sandboxes ({m}); removing it");
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let ignore_unsupported = |r: Result<(), RuntimeError>| match r {
            Err(RuntimeError::Unsupported(_)) => Ok(()),
            other => other,
        };
        let entry = if rec.state == SandboxState::Running {
            if !adopted.agent_alive {
                tracing::warn!(sandbox = %id, pid, "the agent of a running sandbox is gone; removing it");
                return Ok(false);
            }
            // an interrupted pause may have left it frozen
            ignore_unsupported(self.backend().thaw(&id).await)?;
            tracing::info!(sandbox = %id, pid, "re-adopted running sandbox");
            LiveSandbox::from_handle(rec.clone(), SandboxState::Running, rec.end_at, adopted.handle)?
        } else {
            if !adopted.files {
                tracing::error!(sandbox = %id, "a paused sandbox's files are gone; removing it");
                return Ok(false);
            }
            let mut changed = false;
            if lc.paused_memory == Some(true) && adopted.agent_alive {
                // an interrupted resume may have thawed it
                if let Err(e) = self.backend().freeze(&id).await {
                    tracing::warn!(sandbox = %id, "freezing again failed ({e}); keeping only its files");
                    self.backend().stop_keep_files(&id).await?;
                    lc.paused_memory = Some(false);
                    lc.note = Some(format!(
                        "memory state was lost ({e}); the next resume boots afresh on the kept files"
                    ));
                    changed = true;
                }
            } else {
                if lc.paused_memory == Some(true) {
                    tracing::warn!(sandbox = %id, "memory-paused sandbox lost its processes (host reboot?); it resumes from its files");
                    lc.paused_memory = Some(false);
                    lc.note = Some(
                        "memory state was lost while sandboxd was not running (host reboot?); the next resume boots afresh on the kept files"
                            .into(),
                    );
                    changed = true;
                } else if lc.paused_memory.is_none() {
                    lc.paused_memory = Some(false);
                    changed = true;
                }
                // leftovers of an interrupted pause or resume
                self.backend().stop_keep_files(&id).await?;
            }
            if changed {
                let (id2, doc, end) = (id.clone(), lc.to_json(), rec.end_at);
                self.registry
                    .call(move |s| s.set_lifecycle_state(&id2, SandboxState::Paused, end, None, &doc))
                    .await?;
            }
            tracing::info!(sandbox = %id, memory = lc.paused_memory == Some(true), "re-adopted paused sandbox");
            LiveSandbox::from_handle(rec.clone(), SandboxState::Paused, rec.end_at, adopted.handle)?
        };
        if !lc.is_default() {
            self.lifecycle.set(&id, lc.clone());
        }
        self.sandboxes.insert(entry);
        Ok(true)
    }
}
