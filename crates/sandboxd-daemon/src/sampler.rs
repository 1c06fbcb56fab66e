//! The sampler: a background task that reads every running sandbox's resource use into its
//! metrics history ([`crate::metrics`]) and reports new OOM kills to the sandbox's log.

use crate::agent::control_request;
use crate::daemon::Daemon;
use crate::metrics_store::{Fallback, TICK};
use crate::sandbox::LiveSandbox;
use chrono::Utc;
use futures::StreamExt;
use sandboxd_runtime::{AgentEndpoint, SandboxStats};
use sandboxd_store::SandboxState;
use std::sync::Arc;
use std::time::Instant;

/// Sandboxes read at the same time by one sampler pass.
const PARALLEL_READS: usize = 8;

impl Daemon {
    /// Read one sandbox, record the sample and report new OOM kills to its log.
    async fn sample_one(&self, s: &Arc<LiveSandbox>) {
        let id = s.id();
        let stats = match self.backend().stats(id).await {
            Ok(st) => st,
            Err(e) => {
                tracing::debug!(sandbox = %id, "stats failed: {e}");
                return;
            }
        };
        // Paused meanwhile, or frozen under our feet: no sample, no contact.
        if stats.frozen || s.state() != SandboxState::Running {
            return;
        }
        self.metrics
            .record(id, &stats, Fallback::of(s), Instant::now(), Utc::now());
        self.report_oom(s, &stats).await;
    }

    /// If the sandbox's OOM-kill counter grew, tell its agent (`POST /logs/oom` on the control
    /// socket), which logs which processes the memory limit killed.
    pub(crate) async fn report_oom(&self, s: &Arc<LiveSandbox>, stats: &SandboxStats) {
        let delta = self.metrics.take_oom_delta(s.id(), stats.oom_kills);
        if delta == 0 {
            return;
        }
        let limit = stats.mem_total.unwrap_or(s.rec.limits.memory_mb << 20);
        let body = serde_json::json!({"count": delta, "memoryLimitBytes": limit}).to_string();
        let AgentEndpoint::Unix(path) = &s.handle.control;
        if let Err(e) = control_request(path, http::Method::POST, "/logs/oom", body).await {
            tracing::warn!(sandbox = %s.id(), "reporting {delta} OOM kill(s) to the agent: {e}");
        }
    }

    /// Samples every running sandbox; runs until the process ends.
    pub async fn run_sampler(self: Arc<Self>) {
        loop {
            tokio::time::sleep(TICK).await;
            let now = Instant::now();
            let all = self.sandboxes.all();
            let store = &self.metrics;
            store.retain(|id| self.sandboxes.get(id).is_some());
            let due: Vec<_> = all
                .into_iter()
                .filter(|s| s.state() == SandboxState::Running && store.due(s.id(), now))
                .collect();
            futures::stream::iter(due)
                .for_each_concurrent(PARALLEL_READS, |s| {
                    let d = self.clone();
                    async move { d.sample_one(&s).await }
                })
                .await;
        }
    }
}
