//! Pause, resume, auto-pause, auto-resume and re-adoption at start (`docs/lifecycle.md`).
//!
//! Each pause or resume of a sandbox runs under that sandbox's operation lock, so concurrent
//! pause/resume/connect/kill calls on one sandbox are serialized: a caller that arrives while a
//! change is in progress waits for it and then acts on the new state.
//!
//! The registry is the truth. Every change is written before the backend acts on it (pause)
//! or right after it succeeded (resume), and [`reconcile_at_start`] brings the host in line
//! with the registry after a crash at any point:
//!
//! | row state | agent alive | action at start |
//! |---|---|---|
//! | creating, killing | any | destroyed, row deleted |
//! | running | yes | re-adopted (thawed in case a pause was interrupted); expired ones are then killed or auto-paused by the reaper |
//! | running | no | destroyed, row deleted (the agent died while no daemon watched) |
//! | paused, memory | yes | stays paused (frozen again in case a resume was interrupted) |
//! | paused, memory | no | stays paused as a filesystem-only pause, with a note (host reboot) |
//! | paused, filesystem | any | stays paused; leftover processes of an interrupted pause or resume are stopped |
//! | none (host only) | any | destroyed |
//! | running, paused | the check failed (no fd, `/proc` unreadable) | left alone (row, files, processes), retried at the next start |

use crate::error::ApiError;
use crate::manager::{Manager, validate_timeout};
use crate::sandbox::LiveSandbox;
use crate::upstream::AgentClient;
use chrono::Utc;
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::{AgentEndpoint, Limits, RuntimeError, SandboxHandle, SandboxSpec};
use sandboxd_store::{SandboxRecord, SandboxState, trunc_micros};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// Timeout of a resume whose sandbox has no stored create timeout (auto-resume).
const DEFAULT_RESUME_SECS: i64 = 300;

/// A sandbox's lifecycle settings and pause state (the registry's lifecycle document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Lifecycle {
    /// `autoPause`: at `endAt` pause instead of kill.
    pub auto_pause: bool,
    /// `autoPauseMemory`: the auto-pause keeps memory (default true).
    pub auto_pause_memory: bool,
    /// `autoResume.enabled`: sandbox traffic to the paused sandbox resumes it.
    pub auto_resume: bool,
    /// The create request's timeout, used as the timeout of an auto-resume.
    pub timeout_secs: i64,
    /// While paused: whether the pause kept memory (`false`: filesystem only).
    pub paused_memory: Option<bool>,
    /// Something the user should know (for example: memory was lost by a host reboot).
    pub note: Option<String>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            auto_pause: false,
            auto_pause_memory: true,
            auto_resume: false,
            timeout_secs: 0,
            paused_memory: None,
            note: None,
        }
    }
}

impl Lifecycle {
    /// Whether the settings differ from the default (only then a document is stored at create).
    pub fn is_default(&self) -> bool {
        *self == Lifecycle::default()
    }

    /// The `lifecycle` object of `GET /sandboxes/{id}`.
    pub fn detail_json(&self) -> serde_json::Value {
        serde_json::json!({
            "autoResume": self.auto_resume,
            "onTimeout": if self.auto_pause { "pause" } else { "kill" },
        })
    }
}

/// Per-sandbox lifecycle settings and operation locks (a field of the [`Manager`]).
#[derive(Debug, Default)]
pub struct LifecycleState {
    settings: Mutex<HashMap<String, Lifecycle>>,
    ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl LifecycleState {
    /// The settings of a sandbox (defaults when none are stored).
    pub fn get(&self, id: &str) -> Lifecycle {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces the settings of a sandbox.
    pub fn set(&self, id: &str, lc: Lifecycle) {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), lc);
    }

    /// Forgets a killed sandbox.
    pub fn forget(&self, id: &str) {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Waits for and takes the operation lock of a sandbox (pause, resume, kill).
    pub async fn op_lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let m = self
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }
}

/// Outcome of [`connect`] / [`resume`].
#[derive(Debug)]
pub enum Resumed {
    /// It was paused and now runs again (201).
    Resumed(Arc<LiveSandbox>),
    /// It was running already.
    WasRunning(Arc<LiveSandbox>),
}

fn to_json(lc: &Lifecycle) -> serde_json::Value {
    serde_json::to_value(lc).unwrap_or_default()
}

/// A live-map entry for a sandbox in `state` (a new object per pause/resume: a stopped
/// sandbox's cancellation token cannot be reused).
fn live(
    mut rec: SandboxRecord,
    state: SandboxState,
    end_at: chrono::DateTime<Utc>,
    handle: SandboxHandle,
) -> Result<Arc<LiveSandbox>, ApiError> {
    let AgentEndpoint::Unix(path) = &handle.api;
    let client = AgentClient::new(path)
        .map_err(|e| ApiError::Internal(format!("agent socket of sandbox {}: {e}", rec.id)))?;
    rec.state = state;
    rec.end_at = end_at;
    rec.agent_pid = Some(handle.agent_pid);
    rec.agent_start_time = Some(handle.agent_start_time);
    Ok(LiveSandbox::new(rec, handle, client))
}

/// The spec to boot a sandbox's agent again (same id, env vars, token, limits, template,
/// volumes).
async fn spec_of(mgr: &Manager, rec: &SandboxRecord) -> Result<SandboxSpec, ApiError> {
    let id = rec.id.clone();
    let volumes = crate::manager::volume_mounts(mgr.db(move |s| s.sandbox_volumes(&id)).await?);
    let mut agent = AgentConfig::new(rec.id.clone(), rec.template_id.clone());
    agent.env_vars = rec.env_vars.clone();
    agent.access_token = rec.access_token.clone();
    Ok(SandboxSpec {
        id: rec.id.clone(),
        template: rec.template_id.clone(),
        limits: Limits {
            cpu_count: rec.limits.cpu_count,
            memory_mb: rec.limits.memory_mb,
            disk_mb: rec.limits.disk_mb,
            pids: rec.limits.pids,
        },
        agent,
        volumes,
    })
}

/// Stores the lifecycle settings of a new sandbox (between the registry insert and the spawn;
/// only when they differ from the defaults).
pub async fn store_settings(mgr: &Manager, id: &str, lc: Lifecycle) -> Result<(), ApiError> {
    if lc.is_default() {
        return Ok(());
    }
    let (id2, doc) = (id.to_string(), to_json(&lc));
    mgr.db(move |s| s.set_lifecycle(&id2, &doc)).await?;
    mgr.lifecycle.set(id, lc);
    Ok(())
}

/// `POST /sandboxes/{id}/pause`: 404 unknown, 409 already paused.
pub async fn pause(mgr: &Arc<Manager>, id: &str, memory: bool) -> Result<(), ApiError> {
    let _op = mgr.lifecycle.op_lock(id).await;
    let s = mgr
        .sandboxes
        .get(id)
        .ok_or_else(|| ApiError::SandboxNotFound(id.to_string()))?;
    match s.state() {
        SandboxState::Running => {}
        SandboxState::Paused => {
            return Err(ApiError::Conflict(format!("Sandbox {id} is already paused")));
        }
        _ => return Err(ApiError::SandboxNotFound(id.to_string())),
    }
    pause_locked(mgr, s, memory, "requested").await
}

/// Pauses a running sandbox; the caller holds its operation lock.
async fn pause_locked(
    mgr: &Arc<Manager>,
    s: Arc<LiveSandbox>,
    memory: bool,
    reason: &str,
) -> Result<(), ApiError> {
    let id = s.id().to_string();
    let t0 = std::time::Instant::now();
    let paused_at = trunc_micros(Utc::now());
    let mut lc = mgr.lifecycle.get(&id);
    lc.paused_memory = Some(memory);
    lc.note = None;
    // registry first: a crash from here on is finished by the next start
    let (id2, doc) = (id.clone(), to_json(&lc));
    mgr.db(move |st| st.set_lifecycle_state(&id2, SandboxState::Paused, paused_at, None, &doc))
        .await?;
    // no new traffic; in-flight requests are reset (a frozen agent would never answer)
    let resets = s.stop(SandboxState::Paused);
    let acted = if memory {
        mgr.backend().freeze(&id).await
    } else {
        mgr.backend().stop_keep_files(&id).await
    };
    if let Err(e) = acted {
        tracing::error!(sandbox = %id, memory, "pause failed: {e}");
        if memory {
            // still running: put it back
            let _ = mgr.backend().thaw(&id).await;
            let mut lc = mgr.lifecycle.get(&id);
            lc.paused_memory = None;
            let end_at = s.end_at();
            let (id2, doc) = (id.clone(), to_json(&lc));
            let pid = (s.handle.agent_pid, s.handle.agent_start_time);
            mgr.db(move |st| st.set_lifecycle_state(&id2, SandboxState::Running, end_at, Some(pid), &doc))
                .await?;
            mgr.sandboxes.insert(live(
                s.current_rec(),
                SandboxState::Running,
                end_at,
                s.handle.clone(),
            )?);
            return Err(e.into());
        }
        // filesystem pause: stays paused; a resume stops leftovers first
    }
    mgr.lifecycle.set(&id, lc);
    mgr.sandboxes.insert(live(
        s.current_rec(),
        SandboxState::Paused,
        paused_at,
        s.handle.clone(),
    )?);
    tracing::info!(sandbox = %id, memory, reason, resets, ms = t0.elapsed().as_millis() as u64, "sandbox paused");
    Ok(())
}

/// `POST /sandboxes/{id}/connect`: resumes a paused sandbox (`Resumed`) or extends a running
/// one's end time (`WasRunning`). A pause or resume in progress is waited for. Without
/// `restore_memory` a paused sandbox boots afresh on its files even if its pause kept memory;
/// a running one is only extended.
pub async fn connect(
    mgr: &Arc<Manager>,
    id: &str,
    secs: i64,
    restore_memory: bool,
) -> Result<Resumed, ApiError> {
    validate_timeout(secs, &mgr.config().limits)?;
    // Held across both branches, so a pause cannot slip in between the check and the extension.
    let _op = mgr.lifecycle.op_lock(id).await;
    let s = mgr
        .sandboxes
        .get(id)
        .ok_or_else(|| ApiError::SandboxNotFound(id.to_string()))?;
    if s.state() == SandboxState::Paused {
        return resume_locked(mgr, s, secs, restore_memory, "connect")
            .await
            .map(Resumed::Resumed);
    }
    mgr.connect(id, secs).await.map(Resumed::WasRunning)
}

/// `POST /sandboxes/{id}/resume` (deprecated): 409 if running. `restore_memory` as in
/// [`connect`].
pub async fn resume(
    mgr: &Arc<Manager>,
    id: &str,
    secs: i64,
    restore_memory: bool,
) -> Result<Arc<LiveSandbox>, ApiError> {
    validate_timeout(secs, &mgr.config().limits)?;
    let _op = mgr.lifecycle.op_lock(id).await;
    let s = mgr
        .sandboxes
        .get(id)
        .ok_or_else(|| ApiError::SandboxNotFound(id.to_string()))?;
    match s.state() {
        SandboxState::Paused => resume_locked(mgr, s, secs, restore_memory, "resume").await,
        SandboxState::Running => Err(ApiError::Conflict(format!("Sandbox {id} is already running"))),
        _ => Err(ApiError::SandboxNotFound(id.to_string())),
    }
}

/// Resumes a paused sandbox; the caller holds its operation lock. Without `restore_memory` it
/// boots afresh on the kept files (the frozen processes of a memory pause are killed first).
async fn resume_locked(
    mgr: &Arc<Manager>,
    s: Arc<LiveSandbox>,
    secs: i64,
    restore_memory: bool,
    reason: &str,
) -> Result<Arc<LiveSandbox>, ApiError> {
    let id = s.id().to_string();
    let t0 = std::time::Instant::now();
    let timeout = validate_timeout(secs, &mgr.config().limits)?;
    let mut lc = mgr.lifecycle.get(&id);
    let mut memory = lc.paused_memory.unwrap_or(false) && restore_memory;
    if memory && !mgr.backend().is_alive(&s.handle) {
        memory = false;
        lc.note = Some(
            "memory state was lost (the sandbox's processes were gone); resumed with a fresh boot on the kept files"
                .into(),
        );
        tracing::warn!(sandbox = %id, "memory-paused sandbox has no agent; resuming from its files");
    }
    let handle = if memory {
        match mgr.backend().thaw(&id).await {
            Ok(()) => s.handle.clone(),
            Err(e) => {
                tracing::warn!(sandbox = %id, "thaw failed ({e}); resuming from its files");
                lc.note = Some(format!(
                    "memory resume failed ({e}); resumed with a fresh boot on the kept files"
                ));
                memory = false;
                mgr.backend().boot_existing(spec_of(mgr, &s.rec).await?).await?
            }
        }
    } else {
        mgr.backend().boot_existing(spec_of(mgr, &s.rec).await?).await?
    };
    let end_at = trunc_micros(Utc::now() + timeout);
    lc.paused_memory = None;
    let (id2, doc) = (id.clone(), to_json(&lc));
    let agent = (handle.agent_pid, handle.agent_start_time);
    mgr.db(move |st| st.set_lifecycle_state(&id2, SandboxState::Running, end_at, Some(agent), &doc))
        .await?;
    mgr.lifecycle.set(&id, lc);
    let new = live(s.current_rec(), SandboxState::Running, end_at, handle)?;
    mgr.sandboxes.insert(new.clone());
    tracing::info!(sandbox = %id, memory, reason, ms = t0.elapsed().as_millis() as u64, "sandbox resumed");
    Ok(new)
}

/// The sandbox reached its end time (reaper, or a timeout set to 0): kill it, or pause it
/// when created with `autoPause`.
pub async fn expire(mgr: &Arc<Manager>, id: &str, force: bool) -> Result<(), ApiError> {
    let lc = mgr.lifecycle.get(id);
    if lc.auto_pause {
        let op = mgr.lifecycle.op_lock(id).await;
        let Some(s) = mgr.sandboxes.get(id) else {
            return Ok(());
        };
        // a connect may have extended it meanwhile, or it is paused already
        if s.state() != SandboxState::Running || (!force && s.end_at() > Utc::now()) {
            return Ok(());
        }
        match pause_locked(mgr, s, lc.auto_pause_memory, "timeout").await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::error!(sandbox = %id, "auto-pause failed ({e}); killing it");
                drop(op);
            }
        }
    }
    mgr.kill(id, "timeout").await.map(|_| ())
}

/// Proxy hook: sandbox traffic to a paused sandbox created with `autoResume` resumes it first.
/// Anything else (or a failed resume) returns the sandbox unchanged; the proxy answers 502.
pub async fn before_proxy(mgr: &Arc<Manager>, s: Arc<LiveSandbox>) -> Arc<LiveSandbox> {
    if s.state() != SandboxState::Paused {
        return s;
    }
    let lc = mgr.lifecycle.get(s.id());
    if !lc.auto_resume {
        return s;
    }
    let secs = if lc.timeout_secs > 0 {
        lc.timeout_secs
    } else {
        DEFAULT_RESUME_SECS
    };
    let id = s.id().to_string();
    let _op = mgr.lifecycle.op_lock(&id).await;
    match mgr.sandboxes.get(&id) {
        Some(cur) if cur.state() == SandboxState::Paused => {
            match resume_locked(mgr, cur.clone(), secs, true, "auto-resume on traffic").await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(sandbox = %id, "auto-resume failed: {e}");
                    cur
                }
            }
        }
        Some(cur) => cur,
        None => s,
    }
}

/// Re-adopts the sandboxes of an earlier run and cleans up what cannot be adopted (see the
/// table at the top). Returns the ids removed.
pub async fn reconcile_at_start(mgr: &Arc<Manager>) -> Result<Vec<String>, crate::error::ServerError> {
    let rows = mgr.db(|s| s.list()).await?;
    let mut docs = mgr.db(|s| s.lifecycles()).await?;
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
            SandboxState::Running | SandboxState::Paused => match adopt_one(mgr, &rec, &mut lc).await {
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
            mgr.backend().destroy(&id).await?;
            let id2 = id.clone();
            mgr.db(move |s| s.delete(&id2)).await?;
            removed.push(id);
        }
    }
    for id in mgr.backend().list_host_sandboxes().await? {
        if !known.contains(&id) {
            tracing::info!(sandbox = %id, "removing a sandbox that is not in the registry");
            mgr.backend().destroy(&id).await?;
            removed.push(id);
        }
    }
    Ok(removed)
}

/// Re-adopts one running or paused row. `Ok(false)`: it cannot be kept.
async fn adopt_one(mgr: &Arc<Manager>, rec: &SandboxRecord, lc: &mut Lifecycle) -> Result<bool, ApiError> {
    let id = rec.id.clone();
    let (pid, start) = (rec.agent_pid.unwrap_or(0), rec.agent_start_time.unwrap_or(0));
    let adopted = match mgr.backend().adopt(&id, pid, start).await {
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
        ignore_unsupported(mgr.backend().thaw(&id).await)?;
        tracing::info!(sandbox = %id, pid, "re-adopted running sandbox");
        live(rec.clone(), SandboxState::Running, rec.end_at, adopted.handle)?
    } else {
        if !adopted.files {
            tracing::error!(sandbox = %id, "a paused sandbox's files are gone; removing it");
            return Ok(false);
        }
        let mut changed = false;
        if lc.paused_memory == Some(true) && adopted.agent_alive {
            // an interrupted resume may have thawed it
            if let Err(e) = mgr.backend().freeze(&id).await {
                tracing::warn!(sandbox = %id, "freezing again failed ({e}); keeping only its files");
                mgr.backend().stop_keep_files(&id).await?;
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
            mgr.backend().stop_keep_files(&id).await?;
        }
        if changed {
            let (id2, doc, end) = (id.clone(), to_json(lc), rec.end_at);
            mgr.db(move |s| s.set_lifecycle_state(&id2, SandboxState::Paused, end, None, &doc))
                .await?;
        }
        tracing::info!(sandbox = %id, memory = lc.paused_memory == Some(true), "re-adopted paused sandbox");
        live(rec.clone(), SandboxState::Paused, rec.end_at, adopted.handle)?
    };
    if !lc.is_default() {
        mgr.lifecycle.set(&id, lc.clone());
    }
    mgr.sandboxes.insert(entry);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_document_defaults_and_detail() {
        let d = Lifecycle::default();
        assert!(d.is_default() && d.auto_pause_memory);
        assert_eq!(
            d.detail_json(),
            serde_json::json!({"autoResume": false, "onTimeout": "kill"})
        );
        // old or partial documents fill in defaults
        let p: Lifecycle = serde_json::from_value(serde_json::json!({"autoPause": true})).unwrap();
        assert!(p.auto_pause && p.auto_pause_memory && !p.is_default());
        assert_eq!(p.detail_json()["onTimeout"], "pause");
        let back: Lifecycle = serde_json::from_value(to_json(&p)).unwrap();
        assert_eq!(back, p);
    }

    #[tokio::test]
    async fn op_lock_serializes_per_sandbox() {
        let st = Arc::new(LifecycleState::default());
        let g = st.op_lock("a").await;
        // another sandbox is not blocked
        let _b = st.op_lock("b").await;
        let st2 = st.clone();
        let waiter = tokio::spawn(async move {
            let _g = st2.op_lock("a").await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second op on the same sandbox must wait");
        drop(g);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
