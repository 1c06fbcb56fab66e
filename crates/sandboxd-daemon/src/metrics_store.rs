//! Per-sandbox resource metrics (`GET /sandboxes/{id}/metrics`, `docs/observability.md`): a
//! bounded in-memory history per sandbox, filled by the sampler (`sampler.rs`) and read by
//! `metrics.rs`.
//!
//! The sampler wakes every [`TICK`]. A sandbox seen for the first time gets a baseline reading
//! (CPU counters need two readings for a rate); its first sample follows one tick later, so
//! samples appear within 1–2 s of creation; after that one sample every [`SAMPLE_INTERVAL`].
//! Only running sandboxes are sampled; a paused (frozen) one is skipped, and the backend's
//! `stats` reads host-side files only, never the sandbox. History is kept for the sandbox's
//! life (bounded by [`DEFAULT_RETENTION`] samples, oldest dropped first) and dropped with it.

use crate::sandbox::LiveSandbox;
use chrono::{DateTime, Utc};
use sandboxd_runtime::SandboxStats;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the sampler wakes up.
pub const TICK: Duration = Duration::from_secs(1);
/// Time between two samples of one sandbox.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per sandbox: 24 h at 5 s (about 1 MiB for a sandbox that lives that long).
pub const DEFAULT_RETENTION: usize = 24 * 3600 / 5;

/// One metrics sample, as served (`SandboxMetric`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Sample time, Unix milliseconds.
    pub ts_ms: i64,
    pub cpu_count: u32,
    /// Percent of the sandbox's CPUs (100 = all `cpu_count` busy), 2 decimals.
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
    /// sandboxd-only: traffic of the sandbox's network link so far, when it has one.
    pub network: Option<sandboxd_runtime::NetworkCounters>,
}

/// The limits a sample falls back to when the backend does not report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    pub cpu_count: u32,
    pub mem_total: u64,
    pub disk_total: u64,
}

impl Fallback {
    pub(crate) fn of(s: &LiveSandbox) -> Self {
        let l = &s.rec.limits;
        Self {
            cpu_count: l.cpu_count,
            mem_total: l.memory_mb << 20,
            disk_total: l.disk_mb << 20,
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<Sample>,
    /// Last reading: when (monotonic) and the CPU counter then.
    last: Option<(Instant, u64)>,
    last_sample_at: Option<Instant>,
    /// OOM kills already reported to the sandbox's log.
    oom_reported: u64,
}

/// CPU use in percent of `cpu_count` CPUs between two readings, clamped to 0..=100 and
/// rounded to 2 decimals.
pub fn cpu_pct(delta_cpu_ns: u64, wall: Duration, cpu_count: u32) -> f64 {
    let wall_ns = wall.as_nanos() as f64 * cpu_count.max(1) as f64;
    if wall_ns <= 0.0 {
        return 0.0;
    }
    let pct = (delta_cpu_ns as f64 / wall_ns * 100.0).clamp(0.0, 100.0);
    (pct * 100.0).round() / 100.0
}

/// Bounded sample histories of all sandboxes.
#[derive(Debug)]
pub struct MetricsStore {
    series: Mutex<HashMap<String, Series>>,
    capacity: usize,
}

impl Default for MetricsStore {
    fn default() -> Self {
        Self::new(DEFAULT_RETENTION)
    }
}

impl MetricsStore {
    /// A store keeping at most `capacity` samples per sandbox.
    pub fn new(capacity: usize) -> Self {
        Self {
            series: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Series>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether sandbox `id` should be read now.
    pub fn due(&self, id: &str, now: Instant) -> bool {
        match self.lock().get(id) {
            None => true,
            Some(s) => match (s.last, s.last_sample_at) {
                (None, _) => true,
                // baseline taken, first sample one tick later
                (Some((at, _)), None) => now.duration_since(at) >= TICK - Duration::from_millis(100),
                (_, Some(t)) => now.duration_since(t) >= SAMPLE_INTERVAL - Duration::from_millis(100),
            },
        }
    }

    /// Record a reading taken at `now` / `wall`. The first reading of a sandbox is only a
    /// baseline; later ones become samples. Returns the new sample, if any.
    pub fn record(
        &self,
        id: &str,
        stats: &SandboxStats,
        fallback: Fallback,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Option<Sample> {
        let mut map = self.lock();
        let s = map.entry(id.to_string()).or_default();
        let prev = s.last.replace((now, stats.cpu_usage_ns));
        let (at, cpu0) = prev?;
        let cpu_count = stats.cpu_count.unwrap_or(fallback.cpu_count).max(1);
        let sample = Sample {
            ts_ms: wall.timestamp_millis(),
            cpu_count,
            cpu_used_pct: cpu_pct(
                stats.cpu_usage_ns.saturating_sub(cpu0),
                now.duration_since(at),
                cpu_count,
            ),
            mem_used: stats.mem_used,
            mem_total: stats.mem_total.unwrap_or(fallback.mem_total),
            mem_cache: stats.mem_cache,
            disk_used: stats.disk_used,
            disk_total: stats.disk_total.unwrap_or(fallback.disk_total),
            network: stats.network,
        };
        if s.samples.len() >= self.capacity {
            s.samples.pop_front();
        }
        s.samples.push_back(sample);
        s.last_sample_at = Some(now);
        Some(sample)
    }

    /// New OOM kills since the last call (the counter starts at 0 with the sandbox).
    pub fn take_oom_delta(&self, id: &str, oom_kills: Option<u64>) -> u64 {
        let Some(n) = oom_kills else { return 0 };
        let mut map = self.lock();
        let s = map.entry(id.to_string()).or_default();
        let d = n.saturating_sub(s.oom_reported);
        s.oom_reported = s.oom_reported.max(n);
        d
    }

    /// Samples with `start <= timestampUnix <= end` (Unix seconds; `None` = unbounded), oldest
    /// first.
    pub fn range(&self, id: &str, start: Option<i64>, end: Option<i64>) -> Vec<Sample> {
        let map = self.lock();
        let Some(s) = map.get(id) else { return Vec::new() };
        s.samples
            .iter()
            .filter(|x| {
                let secs = x.ts_ms.div_euclid(1000);
                start.is_none_or(|b| secs >= b) && end.is_none_or(|b| secs <= b)
            })
            .copied()
            .collect()
    }

    /// The newest sample.
    pub fn latest(&self, id: &str) -> Option<Sample> {
        self.lock().get(id).and_then(|s| s.samples.back().copied())
    }

    /// Drop the history of sandboxes for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| keep(id));
    }

    /// Number of sandboxes with a history.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(cpu_ns: u64) -> SandboxStats {
        SandboxStats {
            cpu_usage_ns: cpu_ns,
            cpu_count: Some(2),
            mem_used: 10 << 20,
            mem_total: None,
            mem_cache: 1 << 20,
            disk_used: 4096,
            disk_total: None,
            oom_kills: Some(0),
            frozen: false,
            pids_limit_hits: None,
            network: None,
        }
    }

    const FB: Fallback = Fallback {
        cpu_count: 1,
        mem_total: 512 << 20,
        disk_total: 1 << 30,
    };

    #[test]
    fn cpu_percent() {
        assert_eq!(cpu_pct(1_000_000_000, Duration::from_secs(1), 2), 50.0);
        assert_eq!(cpu_pct(333_333_333, Duration::from_secs(1), 1), 33.33);
        assert_eq!(cpu_pct(5_000_000_000, Duration::from_secs(1), 1), 100.0);
        assert_eq!(cpu_pct(5, Duration::ZERO, 1), 0.0);
    }

    #[test]
    fn baseline_then_samples_range_and_bound() {
        let st = MetricsStore::new(3);
        let t0 = Instant::now();
        let w0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert!(st.due("a", t0));
        assert!(st.record("a", &stats(0), FB, t0, w0).is_none(), "baseline only");
        assert!(!st.due("a", t0));
        assert!(st.due("a", t0 + TICK));
        let s = st
            .record(
                "a",
                &stats(1_000_000_000),
                FB,
                t0 + Duration::from_secs(1),
                w0 + Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(s.cpu_used_pct, 50.0);
        assert_eq!((s.cpu_count, s.mem_total, s.disk_total), (2, 512 << 20, 1 << 30));
        assert!(!st.due("a", t0 + Duration::from_secs(2)));
        assert!(st.due("a", t0 + Duration::from_secs(6)));
        for i in 2..6u64 {
            st.record(
                "a",
                &stats(1_000_000_000 * i),
                FB,
                t0 + Duration::from_secs(5 * i),
                w0 + Duration::from_secs(5 * i),
            );
        }
        let all = st.range("a", None, None);
        assert_eq!(all.len(), 3, "bounded");
        assert_eq!(all[0].ts_ms, (1_700_000_000 + 15) * 1000);
        assert_eq!(st.latest("a").unwrap().ts_ms, (1_700_000_000 + 25) * 1000);
        // inclusive bounds
        assert_eq!(st.range("a", Some(1_700_000_020), Some(1_700_000_025)).len(), 2);
        assert_eq!(st.range("a", Some(1_700_000_020), Some(1_700_000_020)).len(), 1);
        assert!(st.range("a", None, Some(1_600_000_000)).is_empty());
        assert!(st.range("b", None, None).is_empty());
        st.retain(|id| id != "a");
        assert!(st.is_empty());
    }

    #[test]
    fn oom_deltas() {
        let st = MetricsStore::default();
        assert_eq!(st.take_oom_delta("a", None), 0);
        assert_eq!(st.take_oom_delta("a", Some(0)), 0);
        assert_eq!(st.take_oom_delta("a", Some(2)), 2);
        assert_eq!(st.take_oom_delta("a", Some(2)), 0);
        assert_eq!(st.take_oom_delta("a", Some(3)), 1);
    }
}
