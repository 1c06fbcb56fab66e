//! Session lifecycle: create, find, delete, status and cleanup of every session.

use super::envd_calls::Envd;
use super::{
    DEFAULT_SIZE_MB, DEFAULT_TIMEOUT_SECS, SESSION_METADATA_KEY, SessionInfo, SessionOptions, SessionStatus,
    info, lookup, not_found, processes, time_left, validate_session_id,
};
use crate::daemon::Daemon;
use crate::error::{DaemonError, Resource};
use crate::params::CreateParams;
use crate::sandbox::LiveSandbox;
use crate::sessions::SessionRegistry;
use sandboxd_store::SandboxState;
use std::collections::BTreeMap;
use std::sync::Arc;

struct Creating<'a> {
    registry: &'a SessionRegistry,
    id: String,
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        let mut c = self.registry.creating.lock().unwrap_or_else(|p| p.into_inner());
        c.remove(&self.id);
    }
}

impl Daemon {
    /// Every session sandbox with its session id.
    pub fn sessions(&self) -> Vec<(String, Arc<LiveSandbox>)> {
        let mut v: Vec<_> = self
            .sandboxes
            .all()
            .into_iter()
            .filter_map(|s| {
                let sid = s.rec.metadata.get(SESSION_METADATA_KEY)?.clone();
                Some((sid, s))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The running sandbox of a session.
    pub fn find_session(&self, session_id: &str) -> Result<Arc<LiveSandbox>, DaemonError> {
        validate_session_id(session_id)?;
        let s = lookup(self, session_id).ok_or_else(|| not_found(session_id))?;
        match s.state() {
            SandboxState::Running => Ok(s),
            SandboxState::Paused => Err(DaemonError::Conflict(format!(
                "session '{session_id}' is paused (its sandbox {} was paused through the E2B API); resume it first",
                s.id()
            ))),
            _ => Err(not_found(session_id)),
        }
    }

    /// Info of an existing session.
    pub fn session(&self, session_id: &str) -> Result<SessionInfo, DaemonError> {
        let s = self.find_session(session_id)?;
        Ok(info(session_id, &s))
    }

    /// Creates a session: a sandbox of `template` (default `base`) with a disk quota of `size_mb`
    /// (default 50) that lives `timeout_secs` (default 3600). 409 if the session exists.
    pub async fn create_session(
        self: &Arc<Self>,
        session_id: &str,
        opts: SessionOptions,
    ) -> Result<SessionInfo, DaemonError> {
        validate_session_id(session_id)?;
        let exists = || DaemonError::Conflict(format!("session '{session_id}' already exists"));
        let _creating = {
            let mut c = self.sessions.creating.lock().unwrap_or_else(|p| p.into_inner());
            if lookup(self, session_id).is_some() || !c.insert(session_id.to_string()) {
                return Err(exists());
            }
            Creating {
                registry: &self.sessions,
                id: session_id.to_string(),
            }
        };
        let size_mb = opts.size_mb.unwrap_or(DEFAULT_SIZE_MB);
        let params = CreateParams {
            template: opts.template.unwrap_or_else(|| "base".into()),
            timeout_secs: opts.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
            secure: true,
            allow_internet_access: true,
            metadata: BTreeMap::from([(SESSION_METADATA_KEY.to_string(), session_id.to_string())]),
            env_vars: opts.env,
            disk_mb: Some(size_mb as i64),
            max_processes: opts.max_processes,
            allowed_commands: opts.allowed_commands,
            ..Default::default()
        };
        let s = self.create(params).await?;
        tracing::info!(session = %session_id, sandbox = %s.id(), size_mb, "session created");
        Ok(info(session_id, &s))
    }

    /// Ends a session and removes its files.
    pub async fn delete_session(self: &Arc<Self>, session_id: &str) -> Result<(), DaemonError> {
        validate_session_id(session_id)?;
        let s = lookup(self, session_id).ok_or_else(|| not_found(session_id))?;
        if !self.kill(s.id(), "session deleted").await? {
            return Err(not_found(session_id));
        }
        Ok(())
    }

    /// State, disk use of the session's size, time left and processes.
    pub async fn session_status(&self, session_id: &str) -> Result<SessionStatus, DaemonError> {
        let s = self.find_session(session_id)?;
        let envd = Envd::of(&s);
        let stats = self.backend().stats(s.id()).await?;
        let processes = processes(&envd).await?;
        Ok(SessionStatus {
            session_id: session_id.to_string(),
            sandbox_id: s.id().to_string(),
            state: s.state().as_str(),
            template: s.rec.template_id.clone(),
            disk_used_bytes: stats.disk_used,
            disk_size_bytes: stats.disk_total.unwrap_or(s.rec.limits.disk_mb << 20),
            started_at: s.rec.started_at,
            end_at: s.end_at(),
            time_left_secs: time_left(&s).as_secs() as i64,
            processes,
        })
    }

    /// Removes every session. Without `force`, refuses (409, listing them) while any session has
    /// processes running.
    pub async fn cleanup_all_sessions(self: &Arc<Self>, force: bool) -> Result<Vec<String>, DaemonError> {
        let sessions = self.sessions();
        if !force {
            let mut busy = serde_json::Map::new();
            for (sid, s) in &sessions {
                if s.state() != SandboxState::Running {
                    continue;
                }
                match processes(&Envd::of(s)).await {
                    Ok(ps) if ps.is_empty() => {}
                    Ok(ps) => {
                        busy.insert(sid.clone(), serde_json::to_value(&ps).unwrap_or_default());
                    }
                    // a full process table cannot even list itself: certainly busy
                    Err(DaemonError::ResourceExhausted {
                        resource: Resource::Processes,
                        message,
                    }) => {
                        busy.insert(sid.clone(), serde_json::Value::String(message));
                    }
                    Err(e) => return Err(e),
                }
            }
            if !busy.is_empty() {
                let names: Vec<_> = busy.keys().cloned().collect();
                let mut details = serde_json::Map::new();
                details.insert("processes".into(), serde_json::Value::Object(busy));
                return Err(DaemonError::Conflict(format!(
                    "processes are running in session(s) {}; stop them or pass force=true",
                    names.join(", ")
                ))
                .with_details(details));
            }
        }
        let mut removed = Vec::new();
        for (sid, s) in sessions {
            self.kill(s.id(), "session cleanup").await?;
            removed.push(sid);
        }
        Ok(removed)
    }
}
