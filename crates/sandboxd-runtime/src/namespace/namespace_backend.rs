//! The [`NamespaceBackend`] type: its shared state, construction (data dir, cgroups, base
//! template, spawn helper, slot pool) and shutdown, and the inherent methods tests and the
//! daemon use beyond [`SandboxBackend`](crate::SandboxBackend).

use super::cgroup::{CgroupLayout, Cgroups};
use super::config::NamespaceConfig;
use super::sandbox_dirs::{mkdir_owned, remove_tree};
use super::slot_pool::{POOL_PREFIX, PoolState, pool_filler};
use super::spawn_client::{SpawnHelperClient, Spawned};
use super::spawn_protocol::HelperInit;
use super::{ExecTarget, image_template, layered_template, quota, snapshot, step, template, userns, volumes};
use crate::RuntimeError;
use crate::backend::SandboxSpec;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

/// The pidfd of a sandbox's agent, held while the sandbox runs.
pub(super) struct AgentRecord {
    pub(super) pidfd: Arc<OwnedFd>,
}

/// State shared by every clone of a [`NamespaceBackend`].
pub(super) struct Inner {
    pub(super) cfg: NamespaceConfig,
    pub(super) cgroups: Cgroups,
    pub(super) init: HelperInit,
    pub(super) helper: Mutex<Option<SpawnHelperClient>>,
    pub(super) agents: Mutex<HashMap<String, AgentRecord>>,
    pub(super) pool: Mutex<PoolState>,
    pub(super) pool_cv: Condvar,
    pub(super) trash_tx: Mutex<Option<std::sync::mpsc::Sender<PathBuf>>>,
    /// Disk quota of the sandboxes' writable layers (quota.rs, chosen at start).
    pub(super) quota: Box<dyn quota::DiskQuota>,
}

/// The namespace backend. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct NamespaceBackend {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for NamespaceBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceBackend")
            .field("data_dir", &self.inner.cfg.data_dir)
            .finish()
    }
}

impl NamespaceBackend {
    /// Prepare the data dir, generate the `base` template if needed, set up cgroups and
    /// start the spawn helper. Blocking (tens of milliseconds; the first template generation
    /// longer); must run as root on the host.
    pub fn new(cfg: NamespaceConfig) -> Result<Self, RuntimeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(RuntimeError::Unsupported(
                "the namespace backend must run as root".into(),
            ));
        }
        let cgroups = Cgroups::init(CgroupLayout::detect()?, &cfg.cgroup_root)?;
        Self::with_cgroups(cfg, cgroups)
    }

    /// Like [`new`](Self::new) with an explicit cgroup setup.
    pub fn with_cgroups(mut cfg: NamespaceConfig, cgroups: Cgroups) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| step("data dir", format!("creating {}: {e}", cfg.data_dir.display())))?;
        cfg.data_dir = std::fs::canonicalize(&cfg.data_dir)
            .map_err(|e| step("data dir", format!("resolving {}: {e}", cfg.data_dir.display())))?;
        cfg.exe = std::fs::canonicalize(&cfg.exe).map_err(|e| {
            step(
                "helper start",
                format!("resolving the executable {}: {e}", cfg.exe.display()),
            )
        })?;
        let d = &cfg.data_dir;
        for (sub, mode) in [
            ("sandboxes", 0o711),
            ("templates", 0o755),
            (".helper", 0o711),
            (".trash", 0o700),
            (volumes::VOLUMES_DIR, 0o711),
        ] {
            mkdir_owned(&d.join(sub), mode, None)?;
        }
        // leftovers of interrupted destroys and quota probes
        quota::sweep_trash(&d.join(".trash"));
        snapshot::secure_store(&d.join("templates"));
        let disk_quota = quota::choose(&d.join(".trash"));
        tracing::info!(kind = disk_quota.kind(), "disk quota for sandbox writable layers");
        template::ensure_base(
            &d.join("templates"),
            &template::SkeletonSource {
                host_root: cfg.host_root.clone(),
                chown: true,
                egress_ca_pem: cfg.egress_ca_pem.clone(),
            },
        )?;
        image_template::ensure_scratch(&d.join("templates"))?;
        layered_template::log_availability();
        // every sandbox's user namespace is owned by host root: its counters are shared
        userns::raise_host_limits();
        let init = HelperInit {
            usr_source: cfg.host_usr.clone(),
            templates_source: d.join("templates"),
            stage_dir: d.join(".helper"),
            uid_base: cfg.idmap.base,
            uid_count: cfg.idmap.count,
        };
        // slots of an earlier run are discarded (they may be half made)
        if let Ok(rd) = std::fs::read_dir(d.join("sandboxes")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(POOL_PREFIX) {
                    let _ = cgroups.remove(&name);
                    let _ = remove_tree(&e.path(), &d.join(".trash"));
                }
            }
        }
        for name in cgroups.list().into_iter().filter(|n| n.starts_with(POOL_PREFIX)) {
            let _ = cgroups.remove(&name);
        }
        let helper = SpawnHelperClient::start(&cfg.exe, &init)?;
        let pool_size = cfg.pool_size;
        let inner = Arc::new(Inner {
            cfg,
            cgroups,
            init,
            helper: Mutex::new(Some(helper)),
            agents: Mutex::new(HashMap::new()),
            pool: Mutex::new(PoolState::default()),
            pool_cv: Condvar::new(),
            trash_tx: Mutex::new(None),
            quota: disk_quota,
        });
        if pool_size > 0 {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("sandboxd-pool".into())
                .spawn(move || pool_filler(weak, pool_size))
                .map_err(|e| step("pool", e))?;
        }
        Ok(Self { inner })
    }

    /// Stop refilling the pool of prepared slots and remove the prepared ones (for a clean
    /// shutdown or tests; `create` keeps working without the pool).
    pub fn drain_pool(&self) {
        self.inner.drain_pool();
    }

    /// Stop the spawn helper (it unmounts its staging views), drain the slot pool and remove
    /// the cgroup root if no sandbox uses it. Running sandboxes are not affected; a later
    /// `create` starts a new helper. Call it when the daemon stops.
    pub fn shutdown(&self) {
        self.inner.drain_pool();
        let helper = self.inner.helper.lock().ok().and_then(|mut h| h.take());
        drop(helper);
        self.inner.cgroups.remove_root_if_empty();
    }

    /// Pid of the spawn helper process, if running.
    pub fn helper_pid(&self) -> Option<u32> {
        self.inner.helper.lock().ok()?.as_ref().map(|h| h.child.id())
    }

    /// Number of prepared slots ready right now.
    pub fn pool_ready(&self) -> usize {
        self.inner.pool.lock().map(|p| p.slots.len()).unwrap_or(0)
    }

    /// The backend's configuration.
    pub fn config(&self) -> &NamespaceConfig {
        &self.inner.cfg
    }

    /// `<data>/sandboxes/<id>`.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.data_dir.join("sandboxes").join(id)
    }

    /// The upper dir of the sandbox's root overlay (`/` inside, including `/home/user` and
    /// `/tmp`) and of its `/usr` overlay.
    pub fn upper_dirs(&self, id: &str) -> (PathBuf, PathBuf) {
        let s = self.sandbox_dir(id);
        (s.join("upper/root"), s.join("upper/usr"))
    }

    /// Create a sandbox like [`SandboxBackend::create`] but exec `target` as its init and do
    /// not wait for readiness. For tests and debugging (for example a shell script that
    /// writes results into its upper dir). The caller destroys the sandbox.
    pub async fn spawn_init(&self, spec: SandboxSpec, target: ExecTarget) -> Result<Spawned, RuntimeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.spawn_blocking(spec, target))
            .await
            .map_err(|e| step("spawn", e))?
    }

    /// Kill a sandbox's processes and remove it (blocking version of `destroy`).
    pub fn destroy_blocking(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.destroy(id)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.drain_pool();
        // an empty cgroup root is removed (it stays while sandboxes run)
        self.cgroups.remove_root_if_empty();
    }
}
