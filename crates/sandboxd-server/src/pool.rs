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
//! A background task ([`run`]) keeps `target` sandboxes per template ready or booting:
//! `target` starts at `min`, grows by one (up to `max`) on each create that found the pool
//! empty, and shrinks by one (down to `min`) for each pooled sandbox idle longer than the idle
//! timeout. Idle sandboxes older than the idle timeout are destroyed and, while below
//! `target`, replaced by fresh ones. Pooled sandboxes are destroyed at shutdown; after a crash
//! the next start finds them on the host without a registry row and destroys them.

use crate::config::{DaemonLimits, TemplateDefaults};
use crate::error::ApiError;
use crate::ids::{new_sandbox_id, new_token};
use crate::manager::{CreateParams, Manager, resolve_limits};
use crate::sandbox::LiveSandbox;
use crate::upstream::AgentClient;
use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::{AgentEndpoint, Limits, RuntimeError, SandboxBackend, SandboxHandle, SandboxSpec};
use sandboxd_store::{SandboxRecord, SandboxState, StoreError, StoredLimits, trunc_micros};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Idle timeout when a `--pool` flag gives none.
pub const DEFAULT_IDLE_SECS: u64 = 600;
/// How often the pool task looks for expired sandboxes when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);
/// First and largest pause after a failed boot (doubles per consecutive failure).
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Refills wait until no claim happened for this long (a boot takes the CPU a burst of claims
/// needs), but never postpone a boot by more than `REFILL_MAX_POSTPONE`.
const REFILL_QUIET: Duration = Duration::from_millis(20);
const REFILL_MAX_POSTPONE: Duration = Duration::from_millis(250);
/// Time limit of the config hand-over at claim.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for a boot in progress.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// The pool settings of one template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    /// Template name (`base`). Snapshot templates and templates with services are refused.
    pub template: String,
    /// Sandboxes kept ready at all times.
    pub min: usize,
    /// Upper bound of ready plus booting sandboxes (the pool grows towards it under demand).
    #[serde(default)]
    pub max: Option<usize>,
    /// Seconds a pooled sandbox may stay idle before it is recycled; 0 = never.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
}

impl PoolSpec {
    /// `max`, defaulting to `min`.
    pub fn max(&self) -> usize {
        self.max.unwrap_or(self.min)
    }

    /// The idle timeout; `None` = never recycled.
    pub fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_timeout_secs.unwrap_or(DEFAULT_IDLE_SECS) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        }
    }

    /// Checks the numbers and the template name's shape.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.template;
        if t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!("pool: invalid template name '{t}'"));
        }
        if self.max() == 0 {
            return Err(format!("pool {t}: max must be at least 1"));
        }
        if self.min > self.max() {
            return Err(format!("pool {t}: min {} is above max {}", self.min, self.max()));
        }
        if self.max() > 10_000 {
            return Err(format!("pool {t}: max {} is above 10000", self.max()));
        }
        Ok(())
    }
}

impl FromStr for PoolSpec {
    type Err = String;

    /// `TEMPLATE=MIN[:MAX[:IDLE_SECS]]`, for example `base=2:8:600`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage =
            || format!("invalid pool '{s}': expected TEMPLATE=MIN[:MAX[:IDLE_SECS]], e.g. base=2:8:600");
        let (template, nums) = s.split_once('=').ok_or_else(usage)?;
        let parts: Vec<&str> = nums.split(':').collect();
        if parts.len() > 3 {
            return Err(usage());
        }
        let num = |p: &str| p.trim().parse::<u64>().map_err(|_| usage());
        let spec = PoolSpec {
            template: template.trim().to_string(),
            min: num(parts[0])? as usize,
            max: parts.get(1).map(|p| num(p)).transpose()?.map(|v| v as usize),
            idle_timeout_secs: parts.get(2).map(|p| num(p)).transpose()?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// The daemon config file (`--config FILE`, JSON). Only `pool` for now; unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub pool: Vec<PoolSpec>,
}

impl ConfigFile {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&data).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates JSON config text.
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let c: ConfigFile = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        for p in &c.pool {
            p.validate()?;
        }
        Ok(c)
    }
}

/// Pool specs of the config file, overridden per template by the flags.
pub fn merge_specs(file: Vec<PoolSpec>, flags: Vec<PoolSpec>) -> Vec<PoolSpec> {
    let mut by_template: BTreeMap<String, PoolSpec> = BTreeMap::new();
    for p in file.into_iter().chain(flags) {
        by_template.insert(p.template.clone(), p);
    }
    by_template.into_values().collect()
}

/// Refuses pools of unknown templates and of templates whose sandboxes run services (the
/// code interpreter reads env vars and the access token once at boot, so a claim could not
/// hand them over).
pub fn check_templates(backend: &dyn SandboxBackend, specs: &[PoolSpec]) -> Result<(), String> {
    for p in specs {
        if !backend.has_template(&p.template) {
            return Err(
                match sandboxd_runtime::namespace::templates_extra::missing_reason(&p.template) {
                    Some(why) => format!("pool {}: {why}", p.template),
                    None => format!("pool {}: no such template", p.template),
                },
            );
        }
        if sandboxd_runtime::namespace::templates_extra::resolve(&p.template)
            .is_some_and(|t| !t.services.is_empty())
        {
            return Err(format!(
                "pool {}: templates with services (the code interpreter) cannot be pooled: their \
                 services read env vars and the access token at boot",
                p.template
            ));
        }
    }
    Ok(())
}

/// A booted, idle sandbox waiting in the pool.
#[derive(Debug)]
pub(crate) struct Pooled {
    pub id: String,
    pub handle: SandboxHandle,
    /// The config it booted with (its placeholder token is replaced at claim).
    pub agent: AgentConfig,
    pub born: Instant,
    /// A connection to its control socket, opened at boot (saves the connect at claim).
    pub control: Mutex<Option<ControlSender>>,
}

type ControlSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

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

    /// Takes the most recently booted sandbox (older ones age out first when demand drops).
    fn take(&mut self, limits: &Limits) -> Take {
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

/// The warm pool of a [`Manager`].
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

    fn take(&self, template: &str, limits: &Limits) -> Option<Pooled> {
        let taken = match self.lock().get_mut(template) {
            None => return None,
            Some(t) => t.take(limits),
        };
        match taken {
            // the refiller is woken once the claim is done (a boot competes for the CPU)
            Take::Hit(p) => Some(*p),
            // a miss may have raised the target
            Take::Miss | Take::LimitsDiffer => {
                self.wake.notify_one();
                None
            }
        }
    }

    fn count_failure(&self, template: &str) {
        if let Some(t) = self.lock().get_mut(template) {
            t.stats.failures += 1;
        }
    }
}

/// `GET /pool`: the pool of every template (counts only; pooled ids are never shown).
pub async fn api_status(State(mgr): State<Arc<Manager>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "templates": mgr.pool.views() }))
}

/// Serves a create from the pool. `None`: no pooled sandbox fits (or the hand-over failed and
/// the pooled sandbox was destroyed): the caller boots one cold.
pub(crate) async fn claim(
    mgr: &Arc<Manager>,
    params: &CreateParams,
    timeout: Duration,
    limits: Limits,
    template_id: &str,
    alias: &str,
) -> Option<Result<Arc<LiveSandbox>, ApiError>> {
    // pooled sandboxes were booted without volumes
    if !params.volume_mounts.is_empty() || !mgr.pool.lock().contains_key(template_id) {
        return None;
    }
    let t0 = Instant::now();
    let reservation = mgr.reserve().ok()?; // at the limit: the cold path answers 429
    let pooled = mgr.pool.take(template_id, &limits)?;
    let _refill = ClaimDone(&mgr.pool);
    let id = pooled.id.clone();
    let started_at = trunc_micros(Utc::now());
    let end_at = trunc_micros(started_at + timeout);
    let access_token = params.secure.then(new_token);

    // The agent's new config (the placeholder token stops working once it is applied).
    let mut agent = pooled.agent.clone();
    agent.env_vars = params.env_vars.clone();
    agent.access_token = access_token.clone();

    // The registry row. With default lifecycle settings it is written once, as running,
    // while the agent gets its config (both before the 201): a crash before the row commits
    // leaves a host-only sandbox (destroyed at start); after it, a sandbox the client may
    // never have heard of, which expires at its timeout, like a cold create whose 201 was
    // lost. With lifecycle settings: creating, settings, running, as for a cold create.
    let with_settings = !params.lifecycle.is_default();
    let rec = SandboxRecord {
        seq: 0,
        id: id.clone(),
        template_id: template_id.to_string(),
        alias: Some(alias.to_string()),
        state: if with_settings {
            SandboxState::Creating
        } else {
            SandboxState::Running
        },
        limits: StoredLimits {
            cpu_count: limits.cpu_count,
            memory_mb: limits.memory_mb,
            disk_mb: limits.disk_mb,
            pids: limits.pids,
        },
        metadata: params.metadata.clone(),
        env_vars: params.env_vars.clone(),
        access_token,
        traffic_token: params.restrict_public_traffic.then(new_token),
        allow_internet_access: params.allow_internet_access,
        network: params.network.clone(),
        started_at,
        end_at,
        agent_pid: Some(pooled.handle.agent_pid),
        agent_start_time: Some(pooled.handle.agent_start_time),
    };
    let store = mgr.store().clone();
    let insert = async move {
        match tokio::task::spawn_blocking(move || store.insert_unsynced(&rec)).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(e) => Err(ApiError::Internal(format!("registry task failed: {e}"))),
        }
    };
    let ((config, config_t), (row, row_t)) = tokio::join!(
        async {
            let t = Instant::now();
            (hand_over(&pooled, &agent).await, t.elapsed())
        },
        async {
            let t = Instant::now();
            (insert.await, t.elapsed())
        }
    );
    let t_config = t0.elapsed();
    let mut rec = match (config, row) {
        (Ok(()), Ok(rec)) => rec,
        (Err(e), row) => {
            tracing::warn!(sandbox = %id, "pool hand-over failed ({e}); destroying it and booting cold");
            mgr.pool.count_failure(template_id);
            match row {
                Ok(_) => remove_row_and_discard(mgr, id),
                Err(_) => discard(mgr, id),
            }
            return None;
        }
        (Ok(()), Err(e)) => {
            discard(mgr, id);
            return Some(Err(e));
        }
    };
    if with_settings {
        let mut lc = params.lifecycle.clone();
        lc.timeout_secs = timeout.as_secs() as i64;
        let store = mgr.store().clone();
        let (pid, start) = (pooled.handle.agent_pid, pooled.handle.agent_start_time);
        let r = match crate::lifecycle::store_settings(mgr, &id, lc).await {
            Ok(()) => {
                let id2 = id.clone();
                match tokio::task::spawn_blocking(move || store.set_running(&id2, pid, start)).await {
                    Ok(r) => r.map_err(ApiError::from),
                    Err(e) => Err(ApiError::Internal(format!("registry task failed: {e}"))),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            mgr.lifecycle.forget(&id);
            remove_row_and_discard(mgr, id);
            return Some(Err(e));
        }
        rec.state = SandboxState::Running;
    }

    // 3. Live: routable from now on.
    let AgentEndpoint::Unix(api) = &pooled.handle.api;
    let client = match AgentClient::new(api) {
        Ok(c) => c,
        Err(e) => {
            remove_row_and_discard(mgr, id.clone());
            return Some(Err(ApiError::Internal(format!(
                "agent socket of sandbox {id}: {e}"
            ))));
        }
    };
    let live = LiveSandbox::new(rec, pooled.handle, client);
    mgr.sandboxes.insert(live.clone());
    drop(reservation);
    tracing::info!(
        sandbox = %id,
        template = template_id,
        us = t0.elapsed().as_micros() as u64,
        handover_us = t_config.as_micros() as u64,
        config_us = config_t.as_micros() as u64,
        row_us = row_t.as_micros() as u64,
        idle_ms = pooled.born.elapsed().as_millis() as u64,
        "sandbox created from the pool"
    );
    Some(Ok(live))
}

/// Notes the end of a claim (whichever way it ends) and wakes the refiller.
struct ClaimDone<'a>(&'a Pool);

impl Drop for ClaimDone<'_> {
    fn drop(&mut self) {
        *self.0.last_claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.0.wake.notify_one();
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

/// `POST /config` on the agent's control socket with the full new config, over the
/// connection opened when the sandbox joined the pool (a new one if that is gone).
async fn hand_over(pooled: &Pooled, agent: &AgentConfig) -> Result<(), String> {
    let body = serde_json::to_string(agent).map_err(|e| e.to_string())?;
    let mut sender = pooled.control.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(s) = sender.as_mut()
        && s.ready().await.is_err()
    {
        sender = None;
    }
    let (status, answer) = match sender {
        Some(mut sender) => {
            let req = http::Request::post("/config")
                .header(http::header::HOST, "agent")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let fut = async {
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = http_body_util::Limited::new(resp.into_body(), 64 << 10)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?
                    .to_bytes();
                Ok::<_, String>((status, body))
            };
            tokio::time::timeout(HANDOVER_TIMEOUT, fut)
                .await
                .map_err(|_| "the agent did not answer in time".to_string())??
        }
        None => {
            let AgentEndpoint::Unix(sock) = &pooled.handle.control;
            crate::api::logs::control_request(sock, http::Method::POST, "/config", body).await?
        }
    };
    if status != http::StatusCode::NO_CONTENT {
        return Err(format!(
            "the agent answered {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    Ok(())
}

/// Opens an HTTP/1.1 connection to a pooled sandbox's control socket, kept for the claim.
async fn control_connection(handle: &SandboxHandle) -> Option<ControlSender> {
    let AgentEndpoint::Unix(sock) = &handle.control;
    let stream = crate::upstream::UnixConnector::new(sock)
        .ok()?
        .connect()
        .await
        .ok()?;
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Some(sender)
}

/// Destroys a pooled sandbox that has no registry row, in the background.
fn discard(mgr: &Arc<Manager>, id: String) {
    let backend = mgr.backend().clone();
    tokio::spawn(async move {
        if let Err(e) = backend.destroy(&id).await {
            tracing::error!(sandbox = %id, "destroying a pooled sandbox failed (removed at the next start): {e}");
        }
    });
}

/// Destroys a claimed sandbox whose registry row exists, then deletes the row.
fn remove_row_and_discard(mgr: &Arc<Manager>, id: String) {
    let backend = mgr.backend().clone();
    let store = mgr.store().clone();
    tokio::spawn(async move {
        if let Err(e) = backend.destroy(&id).await {
            tracing::error!(sandbox = %id, "destroying a claimed sandbox failed (row kept for the next start): {e}");
            return;
        }
        let id2 = id.clone();
        match tokio::task::spawn_blocking(move || store.delete(&id2)).await {
            Ok(Ok(_)) | Ok(Err(StoreError::NotFound(_))) => {}
            Ok(Err(e)) => tracing::error!(sandbox = %id, "removing the row of a failed claim: {e}"),
            Err(e) => tracing::error!(sandbox = %id, "removing the row of a failed claim: {e}"),
        }
    });
}

/// Keeps the pools filled and recycles idle sandboxes until [`shutdown`]. Boots one sandbox
/// at a time (the host's cores are shared with the sandboxes).
pub async fn run(mgr: Arc<Manager>) {
    if !mgr.pool.is_enabled() {
        return;
    }
    disable_shadowed(&mgr);
    let pool = &mgr.pool;
    let mut postponed = None;
    loop {
        if pool.stop.is_cancelled() {
            return;
        }
        let now = Instant::now();
        // recycle
        let expired: Vec<Pooled> = pool.lock().values_mut().flat_map(|t| t.expire(now)).collect();
        for p in expired {
            tracing::info!(sandbox = %p.id, "recycling an idle pooled sandbox");
            if let Err(e) = mgr.backend().destroy(&p.id).await {
                tracing::error!(sandbox = %p.id, "destroying a pooled sandbox failed: {e}");
            }
        }
        // refill: pooled sandboxes only use room the daemon-wide limit leaves
        let room = mgr
            .config()
            .limits
            .max_sandboxes
            .saturating_sub(mgr.sandboxes.len() + pool.len());
        let due = pool.lock().values().any(|t| t.wants_boot(now, room));
        let last_claim = *pool.last_claim.lock().unwrap_or_else(|p| p.into_inner());
        if due && let Some(wait) = refill_delay(last_claim, now, &mut postponed) {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = pool.stop.cancelled() => return,
            }
            continue;
        }
        let next = {
            let mut g = pool.lock();
            g.values_mut().find(|t| t.wants_boot(now, room)).map(|t| {
                t.boot_started();
                (t.spec.template.clone(), t.limits)
            })
        };
        if let Some((template, limits)) = next {
            boot_one(&mgr, &template, limits).await;
            continue;
        }
        tokio::select! {
            _ = pool.wake.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = pool.stop.cancelled() => return,
        }
    }
}

/// A pooled template whose name a snapshot now shadows would never be claimed (creates
/// resolve the name to the snapshot): disable it.
fn disable_shadowed(mgr: &Arc<Manager>) {
    let names: Vec<String> = mgr.pool.lock().keys().cloned().collect();
    for name in names {
        let why = match mgr.resolve_template(&name) {
            Ok((id, _)) if id == name => continue,
            Ok((id, _)) => format!("'{name}' resolves to the snapshot template {id}"),
            Err(e) => e.to_string(),
        };
        tracing::error!(template = %name, "pool disabled: {why}");
        if let Some(t) = mgr.pool.lock().get_mut(&name) {
            t.disabled = Some(why);
        }
    }
}

async fn boot_one(mgr: &Arc<Manager>, template: &str, limits: Limits) {
    let id = new_sandbox_id();
    let mut agent = AgentConfig::new(id.clone(), template.to_string());
    // A placeholder nobody knows: the sandbox answers no request before it is claimed.
    agent.access_token = Some(new_token());
    let spec = SandboxSpec {
        id: id.clone(),
        template: template.to_string(),
        limits,
        agent: agent.clone(),
        volumes: Vec::new(),
    };
    let t0 = Instant::now();
    let r = mgr.backend().create(spec).await;
    let now = Instant::now();
    let control = match &r {
        Ok(handle) => control_connection(handle).await,
        Err(_) => None,
    };
    let outcome = match &r {
        Ok(handle) => Ok(Pooled {
            id: id.clone(),
            handle: handle.clone(),
            agent,
            born: now,
            control: Mutex::new(control),
        }),
        Err(e) => Err(e),
    };
    let left_over = match mgr.pool.lock().get_mut(template) {
        Some(t) => t.boot_done(outcome, now),
        None => None,
    };
    match &r {
        Ok(_) => {
            tracing::debug!(sandbox = %id, template, ms = t0.elapsed().as_millis() as u64, "pooled sandbox ready")
        }
        Err(e) => tracing::warn!(template, "booting a pooled sandbox failed: {e}"),
    }
    let stopped = mgr.pool.stop.is_cancelled();
    if let Some(p) = left_over {
        let _ = mgr.backend().destroy(&p.id).await;
    } else if stopped && r.is_ok() {
        // shutdown raced the boot: drain() may have run already
        let taken = mgr.pool.lock().get_mut(template).and_then(|t| {
            let pos = t.ready.iter().position(|p| p.id == id)?;
            t.ready.remove(pos)
        });
        if let Some(p) = taken {
            let _ = mgr.backend().destroy(&p.id).await;
        }
    }
}

/// Stops the pool task and destroys every pooled sandbox (daemon shutdown). Claimed sandboxes
/// are not affected.
pub async fn shutdown(mgr: &Arc<Manager>, task: tokio::task::JoinHandle<()>) {
    mgr.pool.stop.cancel();
    if tokio::time::timeout(SHUTDOWN_WAIT, task).await.is_err() {
        tracing::warn!("the pool task did not stop in time");
    }
    let all: Vec<Pooled> = mgr
        .pool
        .lock()
        .values_mut()
        .flat_map(|t| t.ready.drain(..).collect::<Vec<_>>())
        .collect();
    if !all.is_empty() {
        tracing::info!(count = all.len(), "destroying pooled sandboxes");
    }
    for p in all {
        if let Err(e) = mgr.backend().destroy(&p.id).await {
            tracing::error!(sandbox = %p.id, "destroying a pooled sandbox failed (removed at the next start): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(t.take(&l), Take::Hit(p) if p.id == "a"));
        // empty: a miss raises the target, at most to max
        for _ in 0..5 {
            assert!(matches!(t.take(&l), Take::Miss));
        }
        assert_eq!(t.target, 3);
        assert_eq!((t.stats.claimed, t.stats.misses), (1, 5));
        // other limits never take a pooled sandbox
        t.ready.push_back(pooled("b", now));
        let other = Limits { memory_mb: 1024, ..l };
        assert!(matches!(t.take(&other), Take::LimitsDiffer));
        assert_eq!(t.ready.len(), 1);
        assert_eq!(t.stats.limits_mismatch, 1);
        // newest first
        t.ready.push_back(pooled("c", now));
        assert!(matches!(t.take(&l), Take::Hit(p) if p.id == "c"));
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
