//! Pause, resume, connect, auto-pause and auto-resume (`docs/lifecycle.md`); the re-adoption
//! at start is `reconcile.rs`.
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

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::lifecycle::Lifecycle;
use crate::limits::validate_timeout;
use crate::sandbox::LiveSandbox;
use crate::spec::{spec_of, volume_mounts};
use chrono::Utc;
use sandboxd_runtime::SandboxSpec;
use sandboxd_store::{SandboxRecord, SandboxState, trunc_micros};
use std::sync::Arc;

/// Timeout of a resume whose sandbox has no stored create timeout (auto-resume).
const DEFAULT_RESUME_SECS: i64 = 300;

/// Outcome of [`Daemon::connect`] / [`Daemon::resume`].
#[derive(Debug)]
pub enum Resumed {
    /// It was paused and now runs again (201).
    Resumed(Arc<LiveSandbox>),
    /// It was running already.
    WasRunning(Arc<LiveSandbox>),
}

impl Daemon {
    /// The spec to boot a sandbox's agent again, with its volumes.
    async fn boot_spec(&self, rec: &SandboxRecord) -> Result<SandboxSpec, DaemonError> {
        let id = rec.id.clone();
        let volumes = volume_mounts(self.registry.call(move |s| s.sandbox_volumes(&id)).await?);
        Ok(spec_of(rec, volumes))
    }

    /// Stores the lifecycle settings of a new sandbox (between the registry insert and the spawn;
    /// only when they differ from the defaults).
    pub async fn store_settings(&self, id: &str, lc: Lifecycle) -> Result<(), DaemonError> {
        if lc.is_default() {
            return Ok(());
        }
        let (id2, doc) = (id.to_string(), lc.to_json());
        self.registry.call(move |s| s.set_lifecycle(&id2, &doc)).await?;
        self.lifecycle.set(id, lc);
        Ok(())
    }

    /// `POST /sandboxes/{id}/pause`: 404 unknown, 409 already paused.
    pub async fn pause(self: &Arc<Self>, id: &str, memory: bool) -> Result<(), DaemonError> {
        let _op = self.lifecycle.op_lock(id).await;
        let s = self
            .sandboxes
            .get(id)
            .ok_or_else(|| DaemonError::SandboxNotFound(id.to_string()))?;
        match s.state() {
            SandboxState::Running => {}
            SandboxState::Paused => {
                return Err(DaemonError::Conflict(format!("Sandbox {id} is already paused")));
            }
            _ => return Err(DaemonError::SandboxNotFound(id.to_string())),
        }
        self.pause_locked(s, memory, "requested").await
    }

    /// Pauses a running sandbox; the caller holds its operation lock.
    async fn pause_locked(
        self: &Arc<Self>,
        s: Arc<LiveSandbox>,
        memory: bool,
        reason: &str,
    ) -> Result<(), DaemonError> {
        let id = s.id().to_string();
        let t0 = std::time::Instant::now();
        let paused_at = trunc_micros(Utc::now());
        let mut lc = self.lifecycle.get(&id);
        lc.paused_memory = Some(memory);
        lc.note = None;
        // registry first: a crash from here on is finished by the next start
        let (id2, doc) = (id.clone(), lc.to_json());
        self.registry
            .call(move |st| st.set_lifecycle_state(&id2, SandboxState::Paused, paused_at, None, &doc))
            .await?;
        // no new traffic; in-flight requests are reset (a frozen agent would never answer)
        let resets = s.stop(SandboxState::Paused);
        let acted = if memory {
            self.backend().freeze(&id).await
        } else {
            self.backend().stop_keep_files(&id).await
        };
        if let Err(e) = acted {
            tracing::error!(sandbox = %id, memory, "pause failed: {e}");
            if memory {
                // still running: put it back
                let _ = self.backend().thaw(&id).await;
                let mut lc = self.lifecycle.get(&id);
                lc.paused_memory = None;
                let end_at = s.end_at();
                let (id2, doc) = (id.clone(), lc.to_json());
                let pid = (s.handle.agent_pid, s.handle.agent_start_time);
                self.registry
                    .call(move |st| {
                        st.set_lifecycle_state(&id2, SandboxState::Running, end_at, Some(pid), &doc)
                    })
                    .await?;
                self.sandboxes.insert(LiveSandbox::from_handle(
                    s.current_rec(),
                    SandboxState::Running,
                    end_at,
                    s.handle.clone(),
                )?);
                return Err(e.into());
            }
            // filesystem pause: stays paused; a resume stops leftovers first
        }
        self.lifecycle.set(&id, lc);
        self.sandboxes.insert(LiveSandbox::from_handle(
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
        self: &Arc<Self>,
        id: &str,
        secs: i64,
        restore_memory: bool,
    ) -> Result<Resumed, DaemonError> {
        validate_timeout(secs, &self.config().limits)?;
        // Held across both branches, so a pause cannot slip in between the check and the extension.
        let _op = self.lifecycle.op_lock(id).await;
        let s = self
            .sandboxes
            .get(id)
            .ok_or_else(|| DaemonError::SandboxNotFound(id.to_string()))?;
        if s.state() == SandboxState::Paused {
            return self
                .resume_locked(s, secs, restore_memory, "connect")
                .await
                .map(Resumed::Resumed);
        }
        self.extend_running(id, secs).await.map(Resumed::WasRunning)
    }

    /// `POST /sandboxes/{id}/resume` (deprecated): 409 if running. `restore_memory` as in
    /// [`connect`].
    pub async fn resume(
        self: &Arc<Self>,
        id: &str,
        secs: i64,
        restore_memory: bool,
    ) -> Result<Arc<LiveSandbox>, DaemonError> {
        validate_timeout(secs, &self.config().limits)?;
        let _op = self.lifecycle.op_lock(id).await;
        let s = self
            .sandboxes
            .get(id)
            .ok_or_else(|| DaemonError::SandboxNotFound(id.to_string()))?;
        match s.state() {
            SandboxState::Paused => self.resume_locked(s, secs, restore_memory, "resume").await,
            SandboxState::Running => Err(DaemonError::Conflict(format!("Sandbox {id} is already running"))),
            _ => Err(DaemonError::SandboxNotFound(id.to_string())),
        }
    }

    /// Resumes a paused sandbox; the caller holds its operation lock. Without `restore_memory` it
    /// boots afresh on the kept files (the frozen processes of a memory pause are killed first).
    async fn resume_locked(
        self: &Arc<Self>,
        s: Arc<LiveSandbox>,
        secs: i64,
        restore_memory: bool,
        reason: &str,
    ) -> Result<Arc<LiveSandbox>, DaemonError> {
        let id = s.id().to_string();
        let t0 = std::time::Instant::now();
        let timeout = validate_timeout(secs, &self.config().limits)?;
        let mut lc = self.lifecycle.get(&id);
        let mut memory = lc.paused_memory.unwrap_or(false) && restore_memory;
        if memory && !self.backend().is_alive(&s.handle) {
            memory = false;
            lc.note = Some(
                "memory state was lost (the sandbox's processes were gone); resumed with a fresh boot on the kept files"
                    .into(),
            );
            tracing::warn!(sandbox = %id, "memory-paused sandbox has no agent; resuming from its files");
        }
        let handle = if memory {
            match self.backend().thaw(&id).await {
                Ok(()) => s.handle.clone(),
                Err(e) => {
                    tracing::warn!(sandbox = %id, "thaw failed ({e}); resuming from its files");
                    lc.note = Some(format!(
                        "memory resume failed ({e}); resumed with a fresh boot on the kept files"
                    ));
                    memory = false;
                    self.backend()
                        .boot_existing(self.boot_spec(&s.rec).await?)
                        .await?
                }
            }
        } else {
            self.backend()
                .boot_existing(self.boot_spec(&s.rec).await?)
                .await?
        };
        let end_at = trunc_micros(Utc::now() + timeout);
        lc.paused_memory = None;
        let (id2, doc) = (id.clone(), lc.to_json());
        let agent = (handle.agent_pid, handle.agent_start_time);
        self.registry
            .call(move |st| st.set_lifecycle_state(&id2, SandboxState::Running, end_at, Some(agent), &doc))
            .await?;
        self.lifecycle.set(&id, lc);
        let new = LiveSandbox::from_handle(s.current_rec(), SandboxState::Running, end_at, handle)?;
        self.sandboxes.insert(new.clone());
        tracing::info!(sandbox = %id, memory, reason, ms = t0.elapsed().as_millis() as u64, "sandbox resumed");
        Ok(new)
    }

    /// The sandbox reached its end time (reaper, or a timeout set to 0): kill it, or pause it
    /// when created with `autoPause`.
    pub async fn expire(self: &Arc<Self>, id: &str, force: bool) -> Result<(), DaemonError> {
        let lc = self.lifecycle.get(id);
        if lc.auto_pause {
            let op = self.lifecycle.op_lock(id).await;
            let Some(s) = self.sandboxes.get(id) else {
                return Ok(());
            };
            // a connect may have extended it meanwhile, or it is paused already
            if s.state() != SandboxState::Running || (!force && s.end_at() > Utc::now()) {
                return Ok(());
            }
            match self.pause_locked(s, lc.auto_pause_memory, "timeout").await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::error!(sandbox = %id, "auto-pause failed ({e}); killing it");
                    drop(op);
                }
            }
        }
        self.kill(id, "timeout").await.map(|_| ())
    }

    /// Proxy hook: sandbox traffic to a paused sandbox created with `autoResume` resumes it first.
    /// Anything else (or a failed resume) returns the sandbox unchanged; the proxy answers 502.
    pub async fn resume_for_traffic(self: &Arc<Self>, s: Arc<LiveSandbox>) -> Arc<LiveSandbox> {
        if s.state() != SandboxState::Paused {
            return s;
        }
        let lc = self.lifecycle.get(s.id());
        if !lc.auto_resume {
            return s;
        }
        let secs = if lc.timeout_secs > 0 {
            lc.timeout_secs
        } else {
            DEFAULT_RESUME_SECS
        };
        let id = s.id().to_string();
        let _op = self.lifecycle.op_lock(&id).await;
        match self.sandboxes.get(&id) {
            Some(cur) if cur.state() == SandboxState::Paused => {
                match self
                    .resume_locked(cur.clone(), secs, true, "auto-resume on traffic")
                    .await
                {
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
}
