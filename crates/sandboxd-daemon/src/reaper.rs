//! The reaper: a background task that expires sandboxes past their end time and kills those
//! whose agent died.

use crate::daemon::Daemon;
use chrono::Utc;
use sandboxd_store::SandboxState;
use std::sync::Arc;
use std::time::Duration;

/// How often the reaper looks for expired sandboxes.
const REAP_INTERVAL: Duration = Duration::from_millis(200);
/// How often the reaper checks that agents are alive.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(2);

impl Daemon {
    /// Kills sandboxes whose end time has passed or whose agent died. Runs until the process
    /// ends.
    pub async fn run_reaper(self: Arc<Self>) {
        let mut last_liveness = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REAP_INTERVAL) => {}
                _ = self.reaper_wake.notified() => {}
            }
            let now = Utc::now();
            let check_alive = last_liveness.elapsed() >= LIVENESS_INTERVAL;
            if check_alive {
                last_liveness = std::time::Instant::now();
            }
            for s in self.sandboxes.all() {
                let (state, end_at) = {
                    let d = s.lock();
                    (d.state, d.end_at)
                };
                let reason = if state == SandboxState::Running && end_at <= now {
                    "timeout"
                } else if check_alive && state == SandboxState::Running && !self.backend.is_alive(&s.handle) {
                    "agent exited"
                } else {
                    continue;
                };
                let this = self.clone();
                let id = s.id().to_string();
                tokio::spawn(async move {
                    let r = if reason == "timeout" {
                        // kill, or pause with autoPause (lifecycle.rs)
                        this.expire(&id, false).await
                    } else {
                        this.kill(&id, reason).await.map(|_| ())
                    };
                    if let Err(e) = r {
                        tracing::error!(sandbox = %id, "reaper kill failed: {e}");
                    }
                });
            }
        }
    }
}
