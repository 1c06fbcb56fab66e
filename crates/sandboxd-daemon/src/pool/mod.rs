//! Warm pool (`docs/pool.md`): booted, idle sandboxes per template, handed to creates.
//!
//! A pooled sandbox is a normal backend sandbox booted with a random id, the template's default
//! limits and a placeholder access token nobody knows. It is in neither the registry nor the
//! live map, so no request can reach it and no listing shows it. A create whose template and
//! resolved limits match takes one ([`claim`]): the agent's config is replaced over the control
//! socket (`POST /config`: env vars, access token), the registry row is written with the
//! request's metadata, times and token, and the sandbox enters the live map. A claimed sandbox
//! never goes back; any failure destroys it (and the create falls back to a cold boot).
//!
//! A background task (`refill.rs`) keeps `target` sandboxes per template ready or booting:
//! `target` starts at `min`, grows by one (up to `max`) on each create that found the pool
//! empty, and shrinks by one (down to `min`) for each pooled sandbox idle longer than the idle
//! timeout. Idle sandboxes older than the idle timeout are destroyed and, while below
//! `target`, replaced by fresh ones. Pooled sandboxes are destroyed at shutdown; after a crash
//! the next start finds them on the host without a registry row and destroys them.

mod claim;
mod refill;
pub mod spec;
mod status;

pub use spec::{ConfigFile, DEFAULT_IDLE_SECS, PoolSpec, check_templates, merge_specs};

use crate::agent::ControlSender;
use crate::config::{DaemonLimits, TemplateDefaults};
use crate::limits::resolve_limits;
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::{Limits, RuntimeError, SandboxHandle};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the pool task looks for expired sandboxes when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);
/// First and largest pause after a failed boot (doubles per consecutive failure).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Refills wait until no claim happened for this long (a boot takes the CPU a burst of claims
/// needs), but never postpone a boot by more than `REFILL_MAX_POSTPONE`.
const REFILL_QUIET: Duration = Duration::from_millis(20);
const REFILL_MAX_POSTPONE: Duration = Duration::from_millis(250);
/// How long shutdown waits for a boot in progress.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// A booted, idle sandbox waiting in the pool.
#[derive(Debug)]
pub(crate) struct Pooled {
    pub id: String,
    /// The runtime template it was booted from (a built template's changes with each build).
    pub runtime: String,
    pub handle: SandboxHandle,
    /// The config it booted with (its placeholder token is replaced at claim).
    pub agent: AgentConfig,
    pub born: Instant,
    /// A connection to its control socket, opened at boot (saves the connect at claim).
    pub control: Mutex<Option<ControlSender>>,
}

/// The state of one template's pool. Pure bookkeeping, tested without sandboxes.
#[derive(Debug)]
struct TemplatePool {
    spec: PoolSpec,
    /// Limits of the pooled sandboxes (what a create without limits fields resolves to).
    limits: Limits,
    ready: VecDeque<Pooled>,
    booting: usize,
    target: usize,
    /// Consecutive boot failures, and no boot before this instant.
    failures_in_row: u32,
    not_before: Option<Instant>,
    /// Boots refused as unsupported by the backend: the pool stays empty.
    disabled: Option<String>,
    stats: PoolStats,
}

/// Counters of one template's pool (`GET /pool`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    /// Creates served from the pool.
    pub claimed: u64,
    /// Creates of this template that found no ready sandbox (cold boots).
    pub misses: u64,
    /// Creates of this template with other limits than the pooled ones (cold boots).
    pub limits_mismatch: u64,
    /// Pooled sandboxes booted.
    pub booted: u64,
    /// Pooled sandboxes destroyed after the idle timeout.
    pub recycled: u64,
    /// Boots that failed, and claims whose hand-over failed.
    pub failures: u64,
}

/// What [`TemplatePool::take`] decided.
#[derive(Debug)]
enum Take {
    Hit(Box<Pooled>),
    Miss,
    LimitsDiffer,
    /// Booted from an older build of the template: to be destroyed (the pool refills from
    /// the current build).
    Stale(Vec<Pooled>),
}

impl TemplatePool {
    fn new(spec: PoolSpec, limits: Limits) -> Self {
        let target = spec.min;
        Self {
            spec,
            limits,
            ready: VecDeque::new(),
            booting: 0,
            target,
            failures_in_row: 0,
            not_before: None,
            disabled: None,
            stats: PoolStats::default(),
        }
    }

    /// Takes the most recently booted sandbox of runtime template `runtime` (older ones age out
    /// first when demand drops). Sandboxes of another runtime template (an older build) are
    /// handed back as stale.
    fn take(&mut self, limits: &Limits, runtime: &str) -> Take {
        if self.ready.iter().any(|p| p.runtime != runtime) {
            let (stale, keep): (Vec<Pooled>, Vec<Pooled>) =
                self.ready.drain(..).partition(|p| p.runtime != runtime);
            self.ready = keep.into();
            self.stats.misses += 1;
            return Take::Stale(stale);
        }
        if *limits != self.limits {
            self.stats.limits_mismatch += 1;
            return Take::LimitsDiffer;
        }
        match self.ready.pop_back() {
            Some(p) => {
                self.stats.claimed += 1;
                Take::Hit(Box::new(p))
            }
            None => {
                self.stats.misses += 1;
                self.target = (self.target + 1).min(self.spec.max());
                Take::Miss
            }
        }
    }

    /// Whether a boot should start now (`room`: sandboxes the daemon-wide limit still allows).
    fn wants_boot(&self, now: Instant, room: usize) -> bool {
        let have = self.ready.len() + self.booting;
        self.disabled.is_none()
            && room > 0
            && have < self.target.min(self.spec.max())
            && self.not_before.is_none_or(|t| now >= t)
    }

    /// Removes the sandboxes idle longer than the idle timeout; each lowers `target` by one
    /// (not below `min`), so a pool that grew under demand shrinks back when demand stops.
    fn expire(&mut self, now: Instant) -> Vec<Pooled> {
        let Some(idle) = self.spec.idle_timeout() else {
            return Vec::new();
        };
        let (old, keep): (Vec<Pooled>, Vec<Pooled>) = self
            .ready
            .drain(..)
            .partition(|p| now.saturating_duration_since(p.born) >= idle);
        self.ready = keep.into();
        self.target = self.target.saturating_sub(old.len()).max(self.spec.min);
        self.stats.recycled += old.len() as u64;
        old
    }

    fn boot_started(&mut self) {
        self.booting += 1;
    }

    fn boot_done(&mut self, r: Result<Pooled, &RuntimeError>, now: Instant) -> Option<Pooled> {
        self.booting = self.booting.saturating_sub(1);
        match r {
            Ok(p) => {
                self.stats.booted += 1;
                self.failures_in_row = 0;
                self.not_before = None;
                if self.ready.len() >= self.spec.max() {
                    return Some(p); // cannot happen with one booter; never exceed max
                }
                self.ready.push_back(p);
                None
            }
            Err(e) => {
                self.stats.failures += 1;
                if let RuntimeError::Unsupported(why) = e {
                    self.disabled = Some(why.clone());
                }
                let shift = self.failures_in_row.min(8);
                self.failures_in_row += 1;
                let pause = (BACKOFF_MIN * (1u32 << shift)).min(BACKOFF_MAX);
                self.not_before = Some(now + pause);
                None
            }
        }
    }
}

/// The warm pool of a [`crate::Daemon`].
#[derive(Debug)]
pub struct Pool {
    templates: Mutex<BTreeMap<String, TemplatePool>>,
    wake: Notify,
    stop: CancellationToken,
    /// When the last claim ended (refills wait for a quiet moment).
    last_claim: Mutex<Option<Instant>>,
}

/// One template's pool in `GET /pool`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    pub template: String,
    pub min: usize,
    pub max: usize,
    pub idle_timeout_secs: u64,
    pub target: usize,
    pub ready: usize,
    pub booting: usize,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
    #[serde(flatten)]
    pub stats: PoolStats,
}

impl Pool {
    /// A pool for `specs`; pooled sandboxes get the limits a create without limits fields gets.
    pub fn new(specs: &[PoolSpec], defaults: &TemplateDefaults, max: &DaemonLimits) -> Self {
        let limits = resolve_limits(defaults, max, None, None, None).unwrap_or_default();
        let templates = specs
            .iter()
            .map(|s| (s.template.clone(), TemplatePool::new(s.clone(), limits)))
            .collect();
        Self {
            templates: Mutex::new(templates),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            last_claim: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TemplatePool>> {
        self.templates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any template is pooled.
    pub fn is_enabled(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Sandboxes ready or booting in all pools.
    pub fn len(&self) -> usize {
        self.lock().values().map(|t| t.ready.len() + t.booting).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state of every template's pool.
    pub fn views(&self) -> Vec<PoolView> {
        self.lock()
            .values()
            .map(|t| PoolView {
                template: t.spec.template.clone(),
                min: t.spec.min,
                max: t.spec.max(),
                idle_timeout_secs: t.spec.idle_timeout().map_or(0, |d| d.as_secs()),
                target: t.target,
                ready: t.ready.len(),
                booting: t.booting,
                cpu_count: t.limits.cpu_count,
                memory_mb: t.limits.memory_mb,
                disk_mb: t.limits.disk_mb,
                disabled: t.disabled.clone(),
                stats: t.stats,
            })
            .collect()
    }

    /// A ready sandbox of pool `key` booted from `runtime` with `limits`; `Err` holds stale
    /// sandboxes (of an older build) for the caller to destroy.
    fn take(&self, key: &str, limits: &Limits, runtime: &str) -> Result<Option<Pooled>, Vec<Pooled>> {
        let taken = match self.lock().get_mut(key) {
            None => return Ok(None),
            Some(t) => t.take(limits, runtime),
        };
        match taken {
            // the refiller is woken once the claim is done (a boot competes for the CPU)
            Take::Hit(p) => Ok(Some(*p)),
            // a miss may have raised the target
            Take::Miss | Take::LimitsDiffer => {
                self.wake.notify_one();
                Ok(None)
            }
            Take::Stale(old) => {
                self.wake.notify_one();
                Err(old)
            }
        }
    }

    /// Sets the limits pooled sandboxes of `key` boot with (a built template's own).
    fn set_limits(&self, key: &str, limits: Limits) {
        if let Some(t) = self.lock().get_mut(key) {
            t.limits = limits;
        }
    }

    fn count_failure(&self, template: &str) {
        if let Some(t) = self.lock().get_mut(template) {
            t.stats.failures += 1;
        }
    }
}

/// How long a due boot should still wait: until `REFILL_QUIET` after the last claim, unless it
/// has been postponed for `REFILL_MAX_POSTPONE` already (`postponed`: since when).
fn refill_delay(
    last_claim: Option<Instant>,
    now: Instant,
    postponed: &mut Option<Instant>,
) -> Option<Duration> {
    let quiet_at = last_claim? + REFILL_QUIET;
    if now >= quiet_at {
        *postponed = None;
        return None;
    }
    let since = *postponed.get_or_insert(now);
    if now.saturating_duration_since(since) >= REFILL_MAX_POSTPONE {
        *postponed = None;
        return None;
    }
    Some(quiet_at - now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandboxd_runtime::AgentEndpoint;

    fn spec(min: usize, max: usize, idle: u64) -> PoolSpec {
        PoolSpec {
            template: "base".into(),
            min,
            max: Some(max),
            idle_timeout_secs: Some(idle),
        }
    }

    fn pooled(id: &str, born: Instant) -> Pooled {
        Pooled {
            id: id.into(),
            handle: SandboxHandle {
                id: id.into(),
                agent_pid: 1,
                agent_start_time: 1,
                api: AgentEndpoint::Unix("/nonexistent/a.sock".into()),
                control: AgentEndpoint::Unix("/nonexistent/c.sock".into()),
            },
            runtime: "base".into(),
            agent: AgentConfig::new(id, "base"),
            born,
            control: Mutex::new(None),
        }
    }

    #[test]
    fn parses_flags() {
        let p: PoolSpec = "base=2:8:600".parse().unwrap();
        assert_eq!(p, spec(2, 8, 600));
        let p: PoolSpec = "base=3".parse().unwrap();
        assert_eq!(
            (p.min, p.max(), p.idle_timeout()),
            (3, 3, Some(Duration::from_secs(600)))
        );
        let p: PoolSpec = "base=0:4:0".parse().unwrap();
        assert_eq!((p.min, p.max(), p.idle_timeout()), (0, 4, None));
        for bad in [
            "base",
            "base=",
            "=2",
            "base=x",
            "base=2:1",
            "base=0",
            "base=0:0",
            "base=1:2:3:4",
            "Base=1",
            "base=-1",
            "a b=1",
            "base=1:20000",
        ] {
            assert!(bad.parse::<PoolSpec>().is_err(), "{bad:?}");
        }
        let e = "base=4:2".parse::<PoolSpec>().unwrap_err();
        assert!(e.contains("min 4 is above max 2"), "{e}");
    }

    #[test]
    fn parses_config_file_and_flags_win() {
        let c = ConfigFile::parse(
            br#"{"pool":[{"template":"base","min":1,"max":3,"idleTimeoutSecs":60},{"template":"x","min":2}]}"#,
        )
        .unwrap();
        assert_eq!(c.pool[0], spec(1, 3, 60));
        assert_eq!(c.pool[1].max(), 2);
        let merged = merge_specs(c.pool, vec!["base=5:6".parse().unwrap()]);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].template.as_str(), merged[0].min), ("base", 5));
        for bad in [
            &br#"{"pool":[{"template":"base","min":3,"max":1}]}"#[..],
            br#"{"pools":[]}"#,
            br#"{"pool":[{"template":"base"}]}"#,
            br#"{"pool":[{"template":"base","min":1,"bogus":1}]}"#,
            b"not json",
        ] {
            assert!(
                ConfigFile::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(ConfigFile::parse(b"{}").unwrap().pool.is_empty());
    }

    #[test]
    fn take_hits_misses_and_grows_target_up_to_max() {
        let l = Limits::default();
        let mut t = TemplatePool::new(spec(1, 3, 600), l);
        let now = Instant::now();
        assert!(t.wants_boot(now, 10));
        t.boot_started();
        assert!(!t.wants_boot(now, 10), "one ready or booting is the target");
        assert!(t.boot_done(Ok(pooled("a", now)), now).is_none());
        assert!(matches!(t.take(&l, "base"), Take::Hit(p) if p.id == "a"));
        // empty: a miss raises the target, at most to max
        for _ in 0..5 {
            assert!(matches!(t.take(&l, "base"), Take::Miss));
        }
        assert_eq!(t.target, 3);
        assert_eq!((t.stats.claimed, t.stats.misses), (1, 5));
        // other limits never take a pooled sandbox
        t.ready.push_back(pooled("b", now));
        let other = Limits { memory_mb: 1024, ..l };
        assert!(matches!(t.take(&other, "base"), Take::LimitsDiffer));
        assert_eq!(t.ready.len(), 1);
        assert_eq!(t.stats.limits_mismatch, 1);
        // newest first
        t.ready.push_back(pooled("c", now));
        assert!(matches!(t.take(&l, "base"), Take::Hit(p) if p.id == "c"));
        // a rebuilt template: sandboxes of the older build are handed back, never claimed
        t.ready.push_back(pooled("d", now));
        match t.take(&l, "base-build-2") {
            Take::Stale(old) => assert_eq!(old.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["b", "d"]),
            other => panic!("{other:?}"),
        }
        assert!(t.ready.is_empty());
        assert!(matches!(t.take(&l, "base-build-2"), Take::Miss));
    }

    #[test]
    fn boots_respect_max_and_room() {
        let now = Instant::now();
        let mut t = TemplatePool::new(spec(2, 2, 600), Limits::default());
        assert!(!t.wants_boot(now, 0), "no room under --max-sandboxes");
        t.boot_started();
        t.boot_started();
        assert!(!t.wants_boot(now, 10));
        t.boot_done(Ok(pooled("a", now)), now);
        t.boot_done(Ok(pooled("b", now)), now);
        // never above max, even if asked to keep one more
        t.target = 5;
        assert!(!t.wants_boot(now, 10));
        assert_eq!(t.ready.len(), 2);
        let extra = t.boot_done(Ok(pooled("c", now)), now);
        assert_eq!(extra.map(|p| p.id), Some("c".to_string()));
    }

    #[test]
    fn expiry_recycles_and_shrinks_to_min() {
        let now = Instant::now();
        let old = now - Duration::from_secs(700);
        let mut t = TemplatePool::new(spec(1, 4, 600), Limits::default());
        t.target = 4;
        for (i, born) in [old, old, old, now].into_iter().enumerate() {
            t.ready.push_back(pooled(&format!("s{i}"), born));
        }
        let gone = t.expire(now);
        assert_eq!(gone.len(), 3);
        assert_eq!(t.ready.len(), 1);
        assert_eq!(t.target, 1);
        assert_eq!(t.stats.recycled, 3);
        // at min an expired sandbox is replaced
        t.ready[0].born = old;
        assert_eq!(t.expire(now).len(), 1);
        assert_eq!(t.target, 1);
        assert!(t.wants_boot(now, 10));
        // idle timeout 0: never recycled
        let mut never = TemplatePool::new(spec(1, 1, 0), Limits::default());
        never
            .ready
            .push_back(pooled("x", old - Duration::from_secs(100_000)));
        assert!(never.expire(now).is_empty());
    }

    #[test]
    fn refills_wait_for_a_quiet_moment_but_not_forever() {
        let t0 = Instant::now();
        let mut postponed = None;
        assert_eq!(refill_delay(None, t0, &mut postponed), None);
        // a claim just ended: wait until it is quiet
        let w = refill_delay(Some(t0), t0 + Duration::from_millis(5), &mut postponed).unwrap();
        assert_eq!(w, Duration::from_millis(15));
        assert_eq!(refill_delay(Some(t0), t0 + REFILL_QUIET, &mut postponed), None);
        assert_eq!(postponed, None);
        // claims keep coming: postponed at most REFILL_MAX_POSTPONE
        let mut now = t0;
        let mut waited = Duration::ZERO;
        while let Some(w) = refill_delay(Some(now), now, &mut postponed) {
            waited += w.min(Duration::from_millis(10));
            now += Duration::from_millis(10);
            assert!(waited <= REFILL_MAX_POSTPONE + REFILL_QUIET, "{waited:?}");
        }
        assert!(now - t0 >= REFILL_MAX_POSTPONE);
    }

    #[test]
    fn failures_back_off_and_unsupported_disables() {
        let now = Instant::now();
        let mut t = TemplatePool::new(spec(1, 1, 600), Limits::default());
        t.boot_started();
        let e = RuntimeError::Step {
            step: "spawn",
            message: "x".into(),
        };
        t.boot_done(Err(&e), now);
        assert!(!t.wants_boot(now, 10), "backing off");
        assert!(t.wants_boot(now + BACKOFF_MIN, 10));
        t.boot_started();
        t.boot_done(Err(&e), now);
        assert!(!t.wants_boot(now + BACKOFF_MIN, 10), "doubled");
        assert!(t.wants_boot(now + BACKOFF_MIN * 2, 10));
        t.boot_started();
        t.boot_done(Err(&RuntimeError::Unsupported("no root".into())), now);
        assert!(!t.wants_boot(now + BACKOFF_MAX * 2, 10));
        assert_eq!(t.stats.failures, 3);
    }
}
