//! The [`Daemon`]: owner of the backend, the registry and the live sandboxes. Its operations
//! are `impl Daemon` blocks, one file per family (`create.rs`, `kill.rs`, `pause.rs`, …);
//! background tasks are `reaper.rs`, `reconcile.rs`, `pool/refill.rs`, `sampler.rs` and the
//! snapshot clean-up in `snapshots.rs`.

use crate::config::DaemonConfig;
use crate::counters::DaemonCounters;
use crate::error::DaemonError;
use crate::ids::new_token;
use crate::lifecycle::{Lifecycle, LifecycleState};
use crate::metrics_store::MetricsStore;
use crate::pool::Pool;
use crate::sandbox::{LiveSandbox, SandboxMap, SandboxView};
use sandboxd_runtime::SandboxBackend;
use sandboxd_store::{Registry, SandboxState, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The sandbox daemon's domain: create, claim from the pool, kill, time out, pause/resume,
/// snapshot/fork, metrics, logs, volumes and network settings, over a backend and the
/// registry. Knows nothing of HTTP.
pub struct Daemon {
    pub(crate) config: DaemonConfig,
    pub(crate) domain: String,
    pub(crate) backend: Arc<dyn SandboxBackend>,
    pub(crate) registry: Registry,
    /// Live sandboxes.
    pub(crate) sandboxes: SandboxMap,
    /// Sandboxes being created (counted against the concurrency limit).
    creating: Mutex<usize>,
    pub(crate) reaper_wake: Notify,
    /// Metrics histories (`metrics.rs`, `sampler.rs`).
    pub(crate) metrics: MetricsStore,
    /// Daemon counters (`counters.rs`).
    pub(crate) counters: DaemonCounters,
    /// Lifecycle settings and per-sandbox operation locks (`lifecycle.rs`).
    pub(crate) lifecycle: LifecycleState,
    /// Warm pool of booted, idle sandboxes (`pool/`).
    pub(crate) pool: Pool,
    /// Sessions of the session API being created (`sessions/`).
    pub(crate) sessions: crate::sessions::registry::SessionRegistry,
    /// Random id of this daemon run (idempotency keys left pending by an earlier run).
    pub(crate) run_id: String,
    /// The key secrets are sealed with, read from the data dir once (`secrets.rs`).
    pub(crate) sealing_key: std::sync::OnceLock<[u8; 32]>,
    /// Template builds: logs, upload links, the image store (`template_builds/`).
    pub(crate) builds: crate::template_builds::BuildState,
    /// Set once a shutdown began: creates answer "unavailable".
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("domain", &self.domain).finish()
    }
}

/// A slot counted against the concurrency limit while a sandbox is being created.
pub(crate) struct Reservation<'a>(&'a Mutex<usize>);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *c = c.saturating_sub(1);
    }
}

impl Daemon {
    /// A daemon over an opened registry. Call [`Daemon::reconcile_at_start`] before serving.
    pub fn new(
        config: DaemonConfig,
        domain: String,
        backend: Arc<dyn SandboxBackend>,
        store: Arc<Store>,
    ) -> Self {
        let pool = Pool::new(&config.pool, &config.template_defaults, &config.limits);
        let builds = crate::template_builds::BuildState::default();
        builds.logs.keep_in(config.builds.data_dir.join("build-logs"));
        Self {
            config,
            domain,
            backend,
            registry: Registry::new(store),
            sandboxes: SandboxMap::default(),
            creating: Mutex::new(0),
            reaper_wake: Notify::new(),
            metrics: MetricsStore::default(),
            counters: DaemonCounters::default(),
            lifecycle: LifecycleState::default(),
            pool,
            sessions: Default::default(),
            run_id: new_token(),
            sealing_key: std::sync::OnceLock::new(),
            builds,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// From now on creates answer "unavailable" (the listener is closing).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The configuration.
    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// The domain returned to SDKs.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The sandbox backend.
    pub fn backend(&self) -> &Arc<dyn SandboxBackend> {
        &self.backend
    }

    /// The registry (async facade).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Daemon counters (creates, kills, proxied requests).
    pub fn counters(&self) -> &DaemonCounters {
        &self.counters
    }

    /// Takes a slot of the concurrency limit for a create.
    pub(crate) fn reserve(&self) -> Result<Reservation<'_>, DaemonError> {
        let mut c = self.creating.lock().unwrap_or_else(|p| p.into_inner());
        let max = self.config.limits.max_sandboxes;
        if self.sandboxes.len() + *c >= max {
            return Err(DaemonError::TooManySandboxes(format!(
                "the daemon's limit of {max} concurrent sandboxes is reached"
            )));
        }
        *c += 1;
        Ok(Reservation(&self.creating))
    }

    /// A live sandbox (running or paused) by id.
    pub fn sandbox(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.sandboxes.get(id)
    }

    /// Every live sandbox.
    pub fn sandboxes(&self) -> Vec<Arc<LiveSandbox>> {
        self.sandboxes.all()
    }

    /// A running sandbox by id, else "not found".
    pub(crate) fn running(&self, id: &str) -> Result<Arc<LiveSandbox>, DaemonError> {
        match self.sandboxes.get(id) {
            Some(s) if s.state() == SandboxState::Running => Ok(s),
            _ => Err(DaemonError::SandboxNotFound(id.to_string())),
        }
    }

    /// Snapshot of all live sandboxes.
    pub fn views(&self) -> Vec<SandboxView> {
        self.sandboxes.all().iter().map(|s| SandboxView::of(s)).collect()
    }

    /// The lifecycle settings of a sandbox (defaults when none are stored).
    pub fn lifecycle_of(&self, id: &str) -> Lifecycle {
        self.lifecycle.get(id)
    }
}
