//! Timeouts: set, refresh and the extension of a running sandbox on connect.

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::limits::validate_timeout;
use crate::sandbox::LiveSandbox;
use chrono::{DateTime, Utc};
use sandboxd_store::{SandboxState, StoreError, trunc_micros};
use std::sync::Arc;
use std::time::Duration;

impl Daemon {
    /// `POST /sandboxes/{id}/timeout`: `endAt = now + secs` (may shorten; `<= 0` expires now).
    pub async fn set_timeout(self: &Arc<Self>, id: &str, secs: i64) -> Result<(), DaemonError> {
        let s = self.running(id)?;
        if secs <= 0 {
            // kill, or pause with autoPause (lifecycle.rs)
            return self.expire(id, true).await;
        }
        let timeout = validate_timeout(secs, &self.config.limits)?;
        let end_at = trunc_micros(Utc::now() + timeout);
        s.lock().end_at = end_at;
        self.persist_end(id, end_at).await?;
        self.reaper_wake.notify_one();
        Ok(())
    }

    /// `POST /sandboxes/{id}/refreshes`: keep a running sandbox alive for at least `secs` more
    /// (`endAt = max(endAt, now + secs)`).
    pub async fn refresh(self: &Arc<Self>, id: &str, secs: u64) -> Result<(), DaemonError> {
        let s = self.running(id)?;
        let candidate = trunc_micros(Utc::now() + Duration::from_secs(secs));
        let extended = {
            let mut d = s.lock();
            (candidate > d.end_at).then(|| {
                d.end_at = candidate;
                candidate
            })
        };
        if let Some(end_at) = extended {
            self.persist_end(id, end_at).await?;
        }
        Ok(())
    }

    /// A connect to a running sandbox: `endAt = max(endAt, now + secs)`. Called by
    /// [`Daemon::connect`] under the sandbox's operation lock.
    pub(crate) async fn extend_running(
        self: &Arc<Self>,
        id: &str,
        secs: i64,
    ) -> Result<Arc<LiveSandbox>, DaemonError> {
        let s = match self.sandboxes.get(id) {
            Some(s) => s,
            None => return Err(DaemonError::SandboxNotFound(id.to_string())),
        };
        let timeout = validate_timeout(secs, &self.config.limits)?;
        let extended = {
            let mut d = s.lock();
            match d.state {
                SandboxState::Running => {}
                // Daemon::connect resumes paused sandboxes before calling this
                SandboxState::Paused => {
                    return Err(DaemonError::Conflict(format!("sandbox {id} is paused")));
                }
                _ => return Err(DaemonError::SandboxNotFound(id.to_string())),
            }
            let candidate = trunc_micros(Utc::now() + timeout);
            if candidate > d.end_at {
                d.end_at = candidate;
                Some(candidate)
            } else {
                None
            }
        };
        if let Some(end_at) = extended {
            self.persist_end(id, end_at).await?;
        }
        Ok(s)
    }

    async fn persist_end(&self, id: &str, end_at: DateTime<Utc>) -> Result<(), DaemonError> {
        let id2 = id.to_string();
        match self.registry.call(move |s| s.set_end_at(&id2, end_at)).await {
            Ok(()) => Ok(()),
            // Killed meanwhile: nothing to keep.
            Err(StoreError::NotFound(_)) => Err(DaemonError::SandboxNotFound(id.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}
