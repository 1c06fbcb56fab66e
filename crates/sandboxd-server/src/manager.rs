//! Sandbox lifecycle: create, kill, timeouts, connect, the reaper and start-up clean-up.
//!
//! Every change is written to the registry before (create) or while (kill, timeouts) it takes
//! effect, so a daemon that dies at any point can reconcile at its next start. Work that must
//! not be abandoned halfway (create, kill) runs in its own task, so a client that disconnects
//! mid-request cannot leave a half-made sandbox behind.

use crate::config::{DaemonLimits, ServerConfig, TemplateDefaults};
use crate::error::ApiError;
use crate::ids::{new_sandbox_id, new_token};
use crate::sandbox::{LiveSandbox, SandboxMap, SandboxView};
use crate::upstream::AgentClient;
use chrono::{DateTime, Utc};
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::{AgentEndpoint, Limits, SandboxBackend, SandboxSpec, VolumeMount};
use sandboxd_store::{SandboxRecord, SandboxState, Store, StoreError, StoredLimits, trunc_micros};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How often the reaper looks for expired sandboxes.
const REAP_INTERVAL: Duration = Duration::from_millis(200);
/// How often the reaper checks that agents are alive.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(2);

/// A validated create request (the control plane parses the JSON into this).
#[derive(Debug, Clone, Default)]
pub struct CreateParams {
    /// Template reference as sent: id or alias, optionally `namespace/` and `:tag`.
    pub template: String,
    /// Seconds; must be in `1..=max_timeout`.
    pub timeout_secs: i64,
    pub secure: bool,
    pub allow_internet_access: bool,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub network: Option<serde_json::Value>,
    /// `network.allowPublicTraffic == false`: ports other than 49983 need a traffic token.
    pub restrict_public_traffic: bool,
    pub cpu_count: Option<i64>,
    pub memory_mb: Option<i64>,
    pub disk_mb: Option<i64>,
    /// autoPause / autoPauseMemory / autoResume (`lifecycle.rs`).
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// `volumeMounts`, checked: `(volume name, absolute path)` (`docs/volumes.md`).
    pub volume_mounts: Vec<(String, String)>,
}

/// The lifecycle owner: backend, registry and the live map.
pub struct Manager {
    config: ServerConfig,
    domain: String,
    backend: Arc<dyn SandboxBackend>,
    store: Arc<Store>,
    /// Live sandboxes.
    pub sandboxes: SandboxMap,
    /// Sandboxes being created (counted against the concurrency limit).
    creating: Mutex<usize>,
    reaper_wake: Notify,
    /// Metrics histories and daemon counters (`metrics.rs`, `prometheus.rs`).
    pub observability: crate::metrics::Observability,
    /// Lifecycle settings and per-sandbox operation locks (`lifecycle.rs`).
    pub lifecycle: crate::lifecycle::LifecycleState,
    /// Warm pool of booted, idle sandboxes (`pool.rs`).
    pub pool: crate::pool::Pool,
    /// Random id of this daemon run (idempotency keys left pending by an earlier run).
    run_id: String,
    /// Set once a shutdown began: creates answer 503.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("domain", &self.domain).finish()
    }
}

/// Checks a timeout in seconds against the daemon maximum.
pub fn validate_timeout(secs: i64, limits: &DaemonLimits) -> Result<Duration, ApiError> {
    if secs <= 0 {
        return Err(ApiError::BadRequest("Timeout must be greater than 0".into()));
    }
    let max = limits.max_timeout.as_secs();
    if secs as u64 > max {
        return Err(ApiError::BadRequest(format!(
            "Timeout cannot be greater than {max} seconds (this daemon's maximum)"
        )));
    }
    Ok(Duration::from_secs(secs as u64))
}

/// Template defaults, overridden by the request's `cpuCount`/`memoryMB`/`diskSizeMB`, capped
/// by the daemon maxima (a request above a maximum is a 400, not silently lowered).
pub fn resolve_limits(
    defaults: &TemplateDefaults,
    max: &DaemonLimits,
    cpu: Option<i64>,
    memory_mb: Option<i64>,
    disk_mb: Option<i64>,
) -> Result<Limits, ApiError> {
    fn pick(name: &str, v: Option<i64>, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        let v = match v {
            None => return Ok(default.min(max)),
            Some(v) => v,
        };
        if v < min as i64 {
            return Err(ApiError::BadRequest(format!("{name} must be at least {min}")));
        }
        if v as u64 > max {
            return Err(ApiError::BadRequest(format!(
                "{name} {v} is above this daemon's maximum of {max}"
            )));
        }
        Ok(v as u64)
    }
    Ok(Limits {
        cpu_count: pick("cpuCount", cpu, defaults.cpu_count.into(), 1, max.max_cpu.into())? as u32,
        memory_mb: pick("memoryMB", memory_mb, defaults.memory_mb, 128, max.max_memory_mb)?,
        disk_mb: pick("diskSizeMB", disk_mb, defaults.disk_mb, 0, max.max_disk_mb)?,
        pids: defaults.pids,
    })
}

/// A template reference split into its parts: `[namespace/]name[:tag]`.
pub fn parse_template_ref(raw: &str) -> Result<(String, Option<String>), ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid template reference '{raw}'"));
    let raw = raw.trim();
    let without_ns = raw.rsplit('/').next().unwrap_or_default();
    let (name, tag) = match without_ns.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (without_ns, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !name_ok || !tag_ok {
        return Err(bad());
    }
    Ok((name.to_string(), tag.map(str::to_string)))
}

/// The runtime's view of a sandbox's volume rows.
pub(crate) fn volume_mounts(rows: Vec<sandboxd_store::MountRow>) -> Vec<VolumeMount> {
    rows.into_iter()
        .map(|m| VolumeMount {
            volume_id: m.volume_id,
            path: m.path,
        })
        .collect()
}

pub(crate) struct Reservation<'a>(&'a Mutex<usize>);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *c = c.saturating_sub(1);
    }
}

impl Manager {
    /// A manager over an opened registry. Call [`Manager::cleanup_leftovers`] before serving.
    pub fn new(
        config: ServerConfig,
        domain: String,
        backend: Arc<dyn SandboxBackend>,
        store: Arc<Store>,
    ) -> Self {
        let pool = crate::pool::Pool::new(&config.pool, &config.template_defaults, &config.limits);
        Self {
            config,
            domain,
            backend,
            store,
            sandboxes: SandboxMap::default(),
            creating: Mutex::new(0),
            reaper_wake: Notify::new(),
            observability: crate::metrics::Observability::default(),
            lifecycle: crate::lifecycle::LifecycleState::default(),
            pool,
            run_id: new_token(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Random id of this daemon run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// From now on creates answer 503 "shutting down" (the listener is closing).
    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The domain returned to SDKs.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn backend(&self) -> &Arc<dyn SandboxBackend> {
        &self.backend
    }

    /// The registry.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs a registry call on the blocking pool.
    pub(crate) async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Corrupt {
                id: String::new(),
                message: format!("registry task failed: {e}"),
            }),
        }
    }

    /// Resolves a template reference to `(template id, alias)`; 404 when unknown.
    pub fn resolve_template(&self, raw: &str) -> Result<(String, String), ApiError> {
        let (name, tag) = parse_template_ref(raw)?;
        // snapshot templates (snapshots.rs): by name or template id; deleted ones are gone
        match crate::snapshots::resolve(&self.store, &name)? {
            crate::snapshots::Resolved::Found(id, alias) if tag.as_deref().is_none_or(|t| t == "default") => {
                return Ok((id, alias));
            }
            crate::snapshots::Resolved::NotSnapshot => {}
            _ => return Err(ApiError::TemplateNotFound(raw.trim().to_string())),
        }
        if tag.as_deref().is_some_and(|t| t != "default") || !self.backend.has_template(&name) {
            // a known template whose host layer is missing: say how to install it
            if let Some(why) = sandboxd_runtime::namespace::templates_extra::missing_reason(&name) {
                return Err(ApiError::NotFound(why));
            }
            return Err(ApiError::TemplateNotFound(raw.trim().to_string()));
        }
        Ok((name.clone(), name))
    }

    /// Whether a template name (no tag) exists.
    pub fn template_exists(&self, name: &str) -> bool {
        parse_template_ref(name).is_ok_and(|(n, t)| t.is_none() && self.backend.has_template(&n))
    }

    pub(crate) fn reserve(&self) -> Result<Reservation<'_>, ApiError> {
        let mut c = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        let max = self.config.limits.max_sandboxes;
        if self.sandboxes.len() + *c >= max {
            return Err(ApiError::TooManySandboxes(format!(
                "the daemon's limit of {max} concurrent sandboxes is reached"
            )));
        }
        *c += 1;
        Ok(Reservation(&self.creating))
    }

    /// Creates a sandbox and returns it once its agent answers.
    pub async fn create(self: &Arc<Self>, params: CreateParams) -> Result<Arc<LiveSandbox>, ApiError> {
        if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::Unavailable(
                "sandboxd is shutting down; retry once it is back".into(),
            ));
        }
        let timeout = validate_timeout(params.timeout_secs, &self.config.limits)?;
        let (template_id, alias) = self.resolve_template(&params.template)?;
        let limits = resolve_limits(
            &self.config.template_defaults.for_template(&template_id),
            &self.config.limits,
            params.cpu_count,
            params.memory_mb,
            params.disk_mb,
        )?;
        let this = self.clone();
        let t0 = std::time::Instant::now();
        // Own task: a client that hangs up must not abandon a half-created sandbox.
        let r = match tokio::spawn(async move {
            // a warm-pool sandbox of this template and limits, if one is ready (pool.rs)
            if let Some(r) = crate::pool::claim(&this, &params, timeout, limits, &template_id, &alias).await {
                return r;
            }
            this.create_inner(params, timeout, limits, template_id, alias)
                .await
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(ApiError::Internal(format!("create task failed: {e}"))),
        };
        self.observability.counters.create_done(r.is_ok(), t0.elapsed());
        r
    }

    async fn create_inner(
        self: Arc<Self>,
        params: CreateParams,
        timeout: Duration,
        limits: Limits,
        template_id: String,
        alias: String,
    ) -> Result<Arc<LiveSandbox>, ApiError> {
        let _slot = self.reserve()?;
        let started_at = trunc_micros(Utc::now());
        let end_at = trunc_micros(started_at + timeout);
        let access_token = params.secure.then(new_token);
        let mut rec = SandboxRecord {
            seq: 0,
            id: new_sandbox_id(),
            template_id: template_id.clone(),
            alias: Some(alias),
            state: SandboxState::Creating,
            limits: StoredLimits {
                cpu_count: limits.cpu_count,
                memory_mb: limits.memory_mb,
                disk_mb: limits.disk_mb,
                pids: limits.pids,
            },
            metadata: params.metadata,
            env_vars: params.env_vars,
            access_token,
            traffic_token: params.restrict_public_traffic.then(new_token),
            allow_internet_access: params.allow_internet_access,
            network: params.network,
            started_at,
            end_at,
            agent_pid: None,
            agent_start_time: None,
        };
        // The row exists before anything is spawned; a fresh id on the (unlikely) collision.
        let mut attempts = 0;
        rec = loop {
            let r = rec.clone();
            match self.db(move |s| s.insert(&r)).await {
                Ok(inserted) => break inserted,
                Err(StoreError::Duplicate(_)) if attempts < 5 => {
                    attempts += 1;
                    rec.id = new_sandbox_id();
                }
                Err(e) => return Err(e.into()),
            }
        };
        let id = rec.id.clone();
        let mut lc = params.lifecycle;
        lc.timeout_secs = timeout.as_secs() as i64;
        if let Err(e) = crate::lifecycle::store_settings(&self, &id, lc).await {
            let id2 = id.clone();
            let _ = self.db(move |s| s.delete(&id2)).await;
            return Err(e);
        }
        let volumes = match self.attach_volumes(&id, params.volume_mounts).await {
            Ok(v) => v,
            Err(e) => {
                let id2 = id.clone();
                let _ = self.db(move |s| s.delete(&id2)).await;
                return Err(e);
            }
        };
        let mut agent = AgentConfig::new(id.clone(), template_id.clone());
        agent.env_vars = rec.env_vars.clone();
        agent.access_token = rec.access_token.clone();
        let spec = SandboxSpec {
            id: id.clone(),
            template: template_id,
            limits,
            agent,
            volumes,
        };
        let t0 = std::time::Instant::now();
        let handle = match self.backend.create(spec).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(sandbox = %id, "create failed: {e}");
                let id2 = id.clone();
                if let Err(de) = self.db(move |s| s.delete(&id2)).await {
                    tracing::error!(sandbox = %id, "removing registry row after failed create: {de}");
                }
                return Err(e.into());
            }
        };
        let agent_client = match &handle.api {
            AgentEndpoint::Unix(path) => AgentClient::new(path),
        };
        let agent_client = match agent_client {
            Ok(c) => c,
            Err(e) => {
                self.teardown(&id).await;
                return Err(ApiError::Internal(format!("agent socket of sandbox {id}: {e}")));
            }
        };
        let (pid, start) = (handle.agent_pid, handle.agent_start_time);
        let id2 = id.clone();
        if let Err(e) = self.db(move |s| s.set_running(&id2, pid, start)).await {
            self.teardown(&id).await;
            return Err(e.into());
        }
        rec.state = SandboxState::Running;
        rec.agent_pid = Some(pid);
        rec.agent_start_time = Some(start);
        let live = LiveSandbox::new(rec, handle, agent_client);
        self.sandboxes.insert(live.clone());
        tracing::info!(sandbox = %id, ms = t0.elapsed().as_millis() as u64, "sandbox created");
        Ok(live)
    }

    /// Records the volumes a new sandbox (its row exists) mounts; a volume deleted meanwhile is
    /// a 404 (the registry decides: a mounted volume cannot be deleted).
    async fn attach_volumes(
        &self,
        id: &str,
        mounts: Vec<(String, String)>,
    ) -> Result<Vec<VolumeMount>, ApiError> {
        if mounts.is_empty() {
            return Ok(Vec::new());
        }
        let id = id.to_string();
        Ok(volume_mounts(
            self.db(move |s| s.attach_volumes(&id, &mounts)).await?,
        ))
    }

    /// Kills a sandbox: it vanishes from the API at once, its traffic gets 502, in-flight
    /// client connections are reset, then the backend tears it down. `Ok(false)` if unknown.
    pub async fn kill(self: &Arc<Self>, id: &str, reason: &str) -> Result<bool, ApiError> {
        // waits for a pause or resume in progress (lifecycle.rs)
        let _op = self.lifecycle.op_lock(id).await;
        let Some(s) = self.sandboxes.remove(id) else {
            return Ok(false);
        };
        self.lifecycle.forget(id);
        self.observability.counters.killed(reason);
        let resets = s.stop(SandboxState::Killing);
        tracing::info!(sandbox = %id, reason, resets, "killing sandbox");
        let this = self.clone();
        let id = id.to_string();
        match tokio::spawn(async move { this.teardown_checked(&id).await }).await {
            Ok(r) => r.map(|_| true),
            Err(e) => Err(ApiError::Internal(format!("kill task failed: {e}"))),
        }
    }

    async fn teardown_checked(&self, id: &str) -> Result<(), ApiError> {
        let id2 = id.to_string();
        match self.db(move |s| s.set_state(&id2, SandboxState::Killing)).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => tracing::error!(sandbox = %id, "marking killing: {e}"),
        }
        self.backend.destroy(id).await.map_err(|e| {
            tracing::error!(sandbox = %id, "destroy failed (row kept for the next start): {e}");
            ApiError::from(e)
        })?;
        let id2 = id.to_string();
        self.db(move |s| s.delete(&id2)).await?;
        Ok(())
    }

    async fn teardown(&self, id: &str) {
        if let Err(e) = self.teardown_checked(id).await {
            tracing::error!(sandbox = %id, "teardown: {e}");
        }
    }

    /// A running sandbox by id, else 404.
    fn running(&self, id: &str) -> Result<Arc<LiveSandbox>, ApiError> {
        match self.sandboxes.get(id) {
            Some(s) if s.state() == SandboxState::Running => Ok(s),
            _ => Err(ApiError::SandboxNotFound(id.to_string())),
        }
    }

    /// `POST /sandboxes/{id}/timeout`: `endAt = now + secs` (may shorten; `<= 0` expires now).
    pub async fn set_timeout(self: &Arc<Self>, id: &str, secs: i64) -> Result<(), ApiError> {
        let s = self.running(id)?;
        if secs <= 0 {
            // kill, or pause with autoPause (lifecycle.rs)
            return crate::lifecycle::expire(self, id, true).await;
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
    pub async fn refresh(self: &Arc<Self>, id: &str, secs: u64) -> Result<(), ApiError> {
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

    /// `PUT /sandboxes/{id}/network`: replace the egress settings (`allowOut`, `denyOut`,
    /// `dnsServers`, `egressProxy`, `rules`; a field left out is cleared) and
    /// `allow_internet_access`, keeping the ingress ones (`allowPublicTraffic`,
    /// `maskRequestHost`, `httpsPorts`). Stored; egress is not
    /// enforced yet (sandboxes have loopback only).
    pub async fn update_network(
        self: &Arc<Self>,
        id: &str,
        egress: serde_json::Map<String, serde_json::Value>,
        allow_internet_access: Option<bool>,
    ) -> Result<(), ApiError> {
        let s = match self.sandboxes.get(id) {
            Some(s) => s,
            None => return Err(ApiError::SandboxNotFound(id.to_string())),
        };
        let (network, allow) = {
            let mut d = s.lock();
            match d.state {
                SandboxState::Running => {}
                SandboxState::Paused => {
                    return Err(ApiError::Conflict(format!(
                        "sandbox {id} is paused: resume it before changing its network"
                    )));
                }
                _ => return Err(ApiError::SandboxNotFound(id.to_string())),
            }
            let mut net = serde_json::Map::new();
            if let Some(serde_json::Value::Object(old)) = &d.network {
                for key in ["allowPublicTraffic", "maskRequestHost", "httpsPorts"] {
                    if let Some(v) = old.get(key) {
                        net.insert(key.to_string(), v.clone());
                    }
                }
            }
            net.extend(egress);
            d.network = (!net.is_empty()).then_some(serde_json::Value::Object(net));
            if let Some(a) = allow_internet_access {
                d.allow_internet_access = a;
            }
            (d.network.clone(), d.allow_internet_access)
        };
        let id2 = id.to_string();
        match self
            .db(move |st| st.set_network(&id2, network.as_ref(), allow))
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(ApiError::SandboxNotFound(id.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// `POST /sandboxes/{id}/connect` on a running sandbox: `endAt = max(endAt, now + secs)`.
    /// Called by [`crate::lifecycle::connect`] under the sandbox's operation lock.
    pub async fn connect(self: &Arc<Self>, id: &str, secs: i64) -> Result<Arc<LiveSandbox>, ApiError> {
        let s = match self.sandboxes.get(id) {
            Some(s) => s,
            None => return Err(ApiError::SandboxNotFound(id.to_string())),
        };
        let timeout = validate_timeout(secs, &self.config.limits)?;
        let extended = {
            let mut d = s.lock();
            match d.state {
                SandboxState::Running => {}
                // lifecycle::connect resumes paused sandboxes before calling this
                SandboxState::Paused => {
                    return Err(ApiError::Conflict(format!("sandbox {id} is paused")));
                }
                _ => return Err(ApiError::SandboxNotFound(id.to_string())),
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

    async fn persist_end(&self, id: &str, end_at: DateTime<Utc>) -> Result<(), ApiError> {
        let id2 = id.to_string();
        match self.db(move |s| s.set_end_at(&id2, end_at)).await {
            Ok(()) => Ok(()),
            // Killed meanwhile: nothing to keep.
            Err(StoreError::NotFound(_)) => Err(ApiError::SandboxNotFound(id.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Snapshot of all live sandboxes.
    pub fn views(&self) -> Vec<SandboxView> {
        self.sandboxes.all().iter().map(|s| SandboxView::of(s)).collect()
    }

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
                        crate::lifecycle::expire(&this, &id, false).await
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

    /// At start: re-adopts the sandboxes of an earlier run from the registry and removes what
    /// cannot be adopted (`lifecycle.rs`). Returns the ids removed.
    pub async fn cleanup_leftovers(self: &Arc<Self>) -> Result<Vec<String>, crate::error::ServerError> {
        crate::lifecycle::reconcile_at_start(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let l = DaemonLimits::default();
        assert_eq!(validate_timeout(300, &l).unwrap(), Duration::from_secs(300));
        for bad in [0, -5] {
            let e = validate_timeout(bad, &l).unwrap_err();
            assert_eq!(e.to_string(), "Timeout must be greater than 0");
        }
        assert_eq!(validate_timeout(24 * 3600 + 1, &l).unwrap_err().status(), 400);
    }

    #[test]
    fn limits_default_override_and_cap() {
        let d = TemplateDefaults::default();
        let m = DaemonLimits::default();
        let l = resolve_limits(&d, &m, None, None, None).unwrap();
        assert_eq!((l.cpu_count, l.memory_mb, l.disk_mb), (2, 512, 1024));
        let l = resolve_limits(&d, &m, Some(1), Some(1024), Some(0)).unwrap();
        assert_eq!((l.cpu_count, l.memory_mb, l.disk_mb), (1, 1024, 0));
        let e = resolve_limits(&d, &m, Some(9), None, None).unwrap_err();
        assert!(e.to_string().contains("cpuCount 9 is above"), "{e}");
        assert_eq!(
            resolve_limits(&d, &m, None, Some(100), None)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            resolve_limits(&d, &m, Some(0), None, None).unwrap_err().status(),
            400
        );
        assert_eq!(
            resolve_limits(&d, &m, None, None, Some(-1)).unwrap_err().status(),
            400
        );
        // Defaults above a lower daemon maximum are lowered, not refused.
        let small = DaemonLimits {
            max_cpu: 1,
            max_memory_mb: 256,
            ..m
        };
        let l = resolve_limits(&d, &small, None, None, None).unwrap();
        assert_eq!((l.cpu_count, l.memory_mb), (1, 256));
    }

    #[test]
    fn template_refs() {
        assert_eq!(parse_template_ref("base").unwrap(), ("base".into(), None));
        assert_eq!(
            parse_template_ref("team/base:default").unwrap(),
            ("base".into(), Some("default".into()))
        );
        assert_eq!(
            parse_template_ref("code-interpreter-v1").unwrap(),
            ("code-interpreter-v1".into(), None)
        );
        for bad in ["", "a:", ":x", "Base", "a b", "team/", "a:b c"] {
            assert_eq!(parse_template_ref(bad).unwrap_err().status(), 400, "{bad:?}");
        }
    }
}
