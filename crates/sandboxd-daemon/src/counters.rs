//! Daemon counters in the Prometheus text exposition format (`GET /metrics` on the control
//! plane, `docs/observability.md`).
//!
//! Hand-written rather than the `metrics` + `metrics-exporter-prometheus` crates: a handful of
//! atomics cover what is exported, every `Daemon` (tests run several daemons in one process)
//! keeps its own counters instead of sharing a process-global recorder, and no dependency tree
//! is added to a build that already runs on two shared cores.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the create-latency histogram buckets.
pub const CREATE_BUCKETS: &[f64] = &[0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in microseconds (exact integer adds).
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Ordering::Relaxed));
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// The daemon's counters. Cheap to update from any task.
#[derive(Debug)]
pub struct DaemonCounters {
    pub creates: AtomicU64,
    pub creates_failed: AtomicU64,
    pub create_seconds: Histogram,
    /// Kills through the API (`DELETE`, timeout set to 0).
    pub kills: AtomicU64,
    /// Sandboxes killed by the reaper at their end time.
    pub expiries: AtomicU64,
    /// Sandboxes removed because their agent died.
    pub agent_exits: AtomicU64,
    /// Requests routed to sandboxes (envd API and ports).
    pub proxy_requests: AtomicU64,
}

impl Default for DaemonCounters {
    fn default() -> Self {
        Self {
            creates: AtomicU64::new(0),
            creates_failed: AtomicU64::new(0),
            create_seconds: Histogram::new(CREATE_BUCKETS),
            kills: AtomicU64::new(0),
            expiries: AtomicU64::new(0),
            agent_exits: AtomicU64::new(0),
            proxy_requests: AtomicU64::new(0),
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl DaemonCounters {
    /// A create finished (`ok` or not) after `took`.
    pub fn create_done(&self, ok: bool, took: Duration) {
        if ok {
            inc(&self.creates);
            self.create_seconds.observe(took);
        } else {
            inc(&self.creates_failed);
        }
    }

    /// A sandbox was killed for `reason` (the manager's kill reasons: `"timeout"` is an
    /// expiry, `"agent exited"` a dead agent, anything else a kill through the API).
    pub fn killed(&self, reason: &str) {
        match reason {
            "timeout" => inc(&self.expiries),
            "agent exited" => inc(&self.agent_exits),
            _ => inc(&self.kills),
        }
    }

    /// One request was routed to a sandbox.
    pub fn proxied(&self) {
        inc(&self.proxy_requests);
    }

    /// The exposition text. `states` are `(state, count)` pairs of live sandboxes;
    /// `sampled` is the number of sandboxes with a metrics history.
    pub fn render(&self, states: &[(&str, usize)], sampled: usize) -> String {
        let mut o = String::with_capacity(2048);
        let g = |o: &mut String, name: &str, help: &str, kind: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        g(
            &mut o,
            "sandboxd_sandboxes",
            "Sandboxes known to the daemon, by state.",
            "gauge",
        );
        for (state, n) in states {
            let _ = writeln!(o, "sandboxd_sandboxes{{state=\"{state}\"}} {n}");
        }
        let counters: [(&str, &str, &AtomicU64); 6] = [
            (
                "sandboxd_sandbox_creates_total",
                "Sandboxes created successfully.",
                &self.creates,
            ),
            (
                "sandboxd_sandbox_creates_failed_total",
                "Sandbox creates that failed after validation.",
                &self.creates_failed,
            ),
            (
                "sandboxd_sandbox_kills_total",
                "Sandboxes killed through the API.",
                &self.kills,
            ),
            (
                "sandboxd_sandbox_expiries_total",
                "Sandboxes killed at the end of their timeout.",
                &self.expiries,
            ),
            (
                "sandboxd_sandbox_agent_exits_total",
                "Sandboxes removed because their agent exited.",
                &self.agent_exits,
            ),
            (
                "sandboxd_proxy_requests_total",
                "Requests routed to sandboxes (envd API and sandbox ports).",
                &self.proxy_requests,
            ),
        ];
        for (name, help, c) in counters {
            g(&mut o, name, help, "counter");
            let _ = writeln!(o, "{name} {}", c.load(Ordering::Relaxed));
        }
        g(
            &mut o,
            "sandboxd_sandbox_create_seconds",
            "Time from create request to a ready sandbox.",
            "histogram",
        );
        self.create_seconds
            .render(&mut o, "sandboxd_sandbox_create_seconds");
        g(
            &mut o,
            "sandboxd_metrics_sampled_sandboxes",
            "Sandboxes with a resource-metrics history.",
            "gauge",
        );
        let _ = writeln!(o, "sandboxd_metrics_sampled_sandboxes {sampled}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_text() {
        let m = DaemonCounters::default();
        m.create_done(true, Duration::from_millis(8));
        m.create_done(true, Duration::from_millis(30));
        m.create_done(false, Duration::from_millis(1));
        m.killed("api");
        m.killed("timeout set to 0");
        m.killed("timeout");
        m.killed("agent exited");
        m.proxied();
        let t = m.render(&[("running", 3), ("paused", 1)], 2);
        for line in [
            "sandboxd_sandboxes{state=\"running\"} 3",
            "sandboxd_sandboxes{state=\"paused\"} 1",
            "sandboxd_sandbox_creates_total 2",
            "sandboxd_sandbox_creates_failed_total 1",
            "sandboxd_sandbox_kills_total 2",
            "sandboxd_sandbox_expiries_total 1",
            "sandboxd_sandbox_agent_exits_total 1",
            "sandboxd_proxy_requests_total 1",
            "sandboxd_sandbox_create_seconds_bucket{le=\"0.005\"} 0",
            "sandboxd_sandbox_create_seconds_bucket{le=\"0.01\"} 1",
            "sandboxd_sandbox_create_seconds_bucket{le=\"0.05\"} 2",
            "sandboxd_sandbox_create_seconds_bucket{le=\"+Inf\"} 2",
            "sandboxd_sandbox_create_seconds_sum 0.038",
            "sandboxd_sandbox_create_seconds_count 2",
            "sandboxd_metrics_sampled_sandboxes 2",
            "# TYPE sandboxd_sandbox_create_seconds histogram",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in:\n{t}");
        }
        // every sample line is `name{labels} value` with a numeric value
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
