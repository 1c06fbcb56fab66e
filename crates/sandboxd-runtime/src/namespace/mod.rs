//! The Linux namespace backend (default): see `docs/namespace-backend.md`.
//!
//! Each sandbox is a tree of processes in its own user, pid, mount, net, uts, ipc and cgroup
//! namespaces, cloned by a single-threaded spawn helper ([`helper`]), with an overlay root over
//! a read-only template and an overlay `/usr` over the host's idmapped `/usr`. The agent
//! (`sandboxd agent --boot`) is its PID 1.

pub mod adopt;
pub mod cgroup;
pub mod child;
pub mod cpus;
pub mod helper;
pub mod idmap;
pub mod meminfo;
pub mod pause;
pub mod quota;
pub mod seccomp;
pub mod snapshot;
pub mod stats;
pub mod sys;
pub mod template;
pub mod templates_extra;
pub mod userns;
pub mod volumes;

use crate::RuntimeError;
use crate::backend::{AgentEndpoint, Limits, SandboxBackend, SandboxHandle, SandboxSpec};
use async_trait::async_trait;
use cgroup::{CgroupLayout, Cgroups};
pub use child::ExecTarget;
use helper::{HelperInit, HelperReply, SpawnRequest};
pub use idmap::IdMap;
use sandboxd_protocol::agent::boot_fds;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;
pub use sys::connect_unix;

/// How to build a [`NamespaceBackend`].
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// Data directory (`<data>/sandboxes`, `<data>/templates`, ...). Must be on a filesystem
    /// with user xattrs (ext4, xfs), since overlay upper dirs live there.
    pub data_dir: PathBuf,
    /// The sandboxd executable: runs the spawn helper and, inside sandboxes, the agent.
    pub exe: PathBuf,
    /// Host uid/gid range of sandboxes (default: 0..65535 inside = 100000..165535 on the host).
    pub idmap: IdMap,
    /// Name of sandboxd's cgroup in each hierarchy (default `sandboxd`).
    pub cgroup_root: String,
    /// The host `/usr` exposed (idmapped, read-only, under an overlay) as the sandbox's `/usr`.
    pub host_usr: PathBuf,
    /// The host root whose `/etc` seeds the generated `base` template.
    pub host_root: PathBuf,
    /// How long `create` waits for the agent to answer `GET /health`.
    pub ready_timeout: Duration,
    /// Mount a read-only `/sys`.
    pub mount_sys: bool,
    /// Sandbox directories (and, on cgroup v1, cgroups) prepared ahead of time by a
    /// background thread, so `create` only renames them. 0 disables the pool.
    pub pool_size: usize,
}

impl NamespaceConfig {
    /// Defaults for everything but the data dir and the executable.
    pub fn new(data_dir: impl Into<PathBuf>, exe: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            exe: exe.into(),
            idmap: IdMap::default(),
            cgroup_root: "sandboxd".into(),
            host_usr: PathBuf::from("/usr"),
            host_root: PathBuf::from("/"),
            ready_timeout: Duration::from_secs(10),
            mount_sys: true,
            pool_size: 4,
        }
    }
}

/// Whether `id` is a valid sandbox id (`^[a-z0-9]+$`, at most 64 characters).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn valid_template(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with('-')
}

fn step(step: &'static str, message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Step {
        step,
        message: message.to_string(),
    }
}

/// A spawned sandbox init (the agent, or a debug program).
#[derive(Debug)]
pub struct Spawned {
    /// Host pid.
    pub pid: i32,
    /// Start time from `/proc/<pid>/stat`.
    pub start_time: u64,
    /// pidfd of the init: readable once it exited.
    pub pidfd: OwnedFd,
}

struct AgentRecord {
    pidfd: Arc<OwnedFd>,
}

struct HelperClient {
    child: std::process::Child,
    sock: OwnedFd,
}

impl HelperClient {
    fn start(exe: &Path, init: &HelperInit) -> Result<Self, RuntimeError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| step("helper start", format!("socketpair: {e}")))?;
        let theirs_raw = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(helper::HELPER_SUBCOMMAND)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SAFETY: dup2 is async-signal-safe; it only places the helper's socket at fd 3
        // (clearing close-on-exec) in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(theirs_raw, helper::HELPER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            step(
                "helper start",
                format!("running {} {}: {e}", exe.display(), helper::HELPER_SUBCOMMAND),
            )
        })?;
        drop(theirs);
        let mut me = Self { child, sock: ours };
        let data = serde_json::to_vec(init).map_err(|e| step("helper start", e))?;
        sys::send_msg(me.sock.as_raw_fd(), &data, &[]).map_err(|e| step("helper start", e))?;
        match me.recv().map_err(|e| step("helper start", e))? {
            (HelperReply::Ready, _) => Ok(me),
            (HelperReply::Failed { step: s, message }, _) => {
                Err(step("helper start", format!("{s}: {message}")))
            }
            (other, _) => Err(step("helper start", format!("unexpected reply {other:?}"))),
        }
    }

    fn recv(&mut self) -> std::io::Result<(HelperReply, Vec<OwnedFd>)> {
        let (data, fds) = sys::recv_msg(self.sock.as_raw_fd())?
            .ok_or_else(|| std::io::Error::new(ErrorKind::UnexpectedEof, "spawn helper exited"))?;
        let r = serde_json::from_slice(&data).map_err(std::io::Error::other)?;
        Ok((r, fds))
    }

    fn call(&mut self, req: &SpawnRequest, fds: &[RawFd]) -> std::io::Result<(HelperReply, Vec<OwnedFd>)> {
        let data = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        sys::send_msg(self.sock.as_raw_fd(), &data, fds)?;
        self.recv()
    }
}

impl Drop for HelperClient {
    fn drop(&mut self) {
        // Closing our end makes the helper exit; sandboxes are unaffected.
        // SAFETY: shutting down a socket we own.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Inner {
    cfg: NamespaceConfig,
    cgroups: Cgroups,
    init: HelperInit,
    helper: Mutex<Option<HelperClient>>,
    agents: Mutex<HashMap<String, AgentRecord>>,
    pool: Mutex<PoolState>,
    pool_cv: Condvar,
    trash_tx: Mutex<Option<std::sync::mpsc::Sender<PathBuf>>>,
    /// Disk quota of the sandboxes' writable layers (quota.rs, chosen at start).
    quota: Box<dyn quota::DiskQuota>,
}

/// Prepared sandbox slots (`<data>/sandboxes/.pool-*`, plus same-named cgroups on v1).
#[derive(Default)]
struct PoolState {
    slots: Vec<String>,
    next: u64,
    stopped: bool,
    /// The filler is making a slot (its disk quota is mounted): `drain_pool` waits for it.
    making: bool,
}

/// Name prefix of prepared slots; never a valid sandbox id.
const POOL_PREFIX: &str = ".pool-";
/// Hostname the pooled slots' `/etc` files are written for.
const DEFAULT_HOSTNAME: &str = "sandbox";

/// The namespace backend. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct NamespaceBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NamespaceBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceBackend")
            .field("data_dir", &self.inner.cfg.data_dir)
            .finish()
    }
}

fn mkdir_owned(p: &Path, mode: u32, owner: Option<u32>) -> Result<(), RuntimeError> {
    match std::fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(step("sandbox dirs", format!("creating {}: {e}", p.display()))),
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| step("sandbox dirs", format!("chmod {}: {e}", p.display())))?;
    if let Some(id) = owner {
        std::os::unix::fs::lchown(p, Some(id), Some(id))
            .map_err(|e| step("sandbox dirs", format!("chown {}: {e}", p.display())))?;
    }
    Ok(())
}

fn write_owned(p: &Path, content: &str, mode: u32, owner: Option<u32>) -> Result<(), RuntimeError> {
    std::fs::write(p, content).map_err(|e| step("sandbox dirs", format!("writing {}: {e}", p.display())))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| step("sandbox dirs", format!("chmod {}: {e}", p.display())))?;
    if let Some(id) = owner {
        std::os::unix::fs::lchown(p, Some(id), Some(id))
            .map_err(|e| step("sandbox dirs", format!("chown {}: {e}", p.display())))?;
    }
    Ok(())
}

fn set_opaque(p: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| step("sandbox dirs", e))?;
    // SAFETY: valid C strings and a 1-byte value buffer.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(step(
            "sandbox dirs",
            format!(
                "setting user.overlay.opaque on {}: {} (the data dir needs a filesystem with user xattrs)",
                p.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

/// Last `max` bytes of a file, for error messages.
fn tail(p: &Path, max: usize) -> String {
    match std::fs::read(p) {
        Ok(b) => {
            let s = &b[b.len().saturating_sub(max)..];
            String::from_utf8_lossy(s).trim().to_string()
        }
        Err(_) => String::new(),
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
            },
        )?;
        templates_extra::log_availability();
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
        let helper = HelperClient::start(&cfg.exe, &init)?;
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

    /// cgroup version in use (`v1` or `v2`).
    pub fn cgroup_version(&self) -> &'static str {
        self.inner.cgroups.layout().version()
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

impl Inner {
    fn validate(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        if !valid_id(&spec.id) {
            return Err(RuntimeError::InvalidSpec(format!(
                "bad sandbox id '{}': must match ^[a-z0-9]+$",
                spec.id
            )));
        }
        if !self.has_template(&spec.template) {
            return Err(RuntimeError::TemplateNotFound(spec.template.clone()));
        }
        let Limits {
            cpu_count,
            memory_mb,
            pids,
            ..
        } = spec.limits;
        if cpu_count == 0 || cpu_count > 1024 {
            return Err(RuntimeError::InvalidSpec(format!(
                "cpu_count {cpu_count} out of range 1..=1024"
            )));
        }
        if !(16..=(1 << 30)).contains(&memory_mb) {
            return Err(RuntimeError::InvalidSpec(format!(
                "memory_mb {memory_mb} out of range 16.."
            )));
        }
        if !(16..=4_194_304).contains(&pids) {
            return Err(RuntimeError::InvalidSpec(format!(
                "pids limit {pids} out of range 16..=4194304"
            )));
        }
        quota::validate_size(spec.limits.disk_mb)?;
        if !spec.agent.hostname.is_empty() && !valid_hostname(&spec.agent.hostname) {
            return Err(RuntimeError::InvalidSpec(format!(
                "bad hostname '{}'",
                spec.agent.hostname
            )));
        }
        Ok(())
    }

    fn has_template(&self, name: &str) -> bool {
        // snapshot templates (snapshot.rs): layers over the template they were taken from
        if let Ok(Some(l)) = snapshot::read_layers(&self.cfg.data_dir.join("templates"), name) {
            return self.has_template(&l.base);
        }
        // layered templates (templates_extra.rs): a skeleton plus installed host layers
        if let Some(t) = templates_extra::resolve(name) {
            return self.has_template(t.skeleton);
        }
        valid_template(name)
            && self
                .cfg
                .data_dir
                .join("templates")
                .join(name)
                .join("rootfs")
                .is_dir()
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    /// Step 1: the sandbox's directories and generated files (`id` may be a pool slot name).
    fn prepare_dir(&self, id: &str, hostname: &str, disk_mb: u64) -> Result<PathBuf, RuntimeError> {
        let sbx = self.sandbox_dir(id);
        match std::fs::create_dir(&sbx) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(RuntimeError::InvalidSpec(format!(
                    "sandbox {id} already exists on this host"
                )));
            }
            Err(e) => return Err(step("sandbox dirs", format!("creating {}: {e}", sbx.display()))),
        }
        let root = Some(self.cfg.idmap.root());
        // Only host root and the sandbox's root (group) may enter: the upper dirs hold files
        // the sandbox made set-id for its host range, which no other host user may run.
        mkdir_owned(&sbx, 0o710, None)?;
        std::os::unix::fs::lchown(&sbx, None, root)
            .map_err(|e| step("sandbox dirs", format!("chown {}: {e}", sbx.display())))?;
        // upper/ and work/ become symlinks into the disk quota filesystem (quota.rs)
        quota::prepare_layout(&*self.quota, &sbx, disk_mb)?;
        mkdir_owned(&sbx.join("upper"), 0o711, None)?;
        mkdir_owned(&sbx.join("work"), 0o711, None)?;
        for d in ["upper/root", "upper/usr", "work/root", "work/usr"] {
            mkdir_owned(&sbx.join(d), 0o755, root)?;
        }
        mkdir_owned(&sbx.join("run"), 0o700, root)?;
        mkdir_owned(&sbx.join("rootfs"), 0o755, None)?;
        // /usr/local: an opaque (empty, writable) directory hides the host's.
        let local = sbx.join("upper/usr/local");
        mkdir_owned(&local, 0o755, root)?;
        set_opaque(&local)?;
        for d in ["bin", "etc", "games", "include", "lib", "sbin", "share", "src"] {
            mkdir_owned(&local.join(d), 0o755, root)?;
        }
        let etc = sbx.join("upper/root/etc");
        mkdir_owned(&etc, 0o755, root)?;
        self.write_host_files(&sbx, hostname)?;
        write_owned(&etc.join("resolv.conf"), template::RESOLV_CONF, 0o644, root)?;
        write_owned(
            &sbx.join("boot_id"),
            &format!("{}\n", sys::random_uuid()),
            0o444,
            None,
        )?;
        Ok(sbx)
    }

    fn write_host_files(&self, sbx: &Path, hostname: &str) -> Result<(), RuntimeError> {
        let root = Some(self.cfg.idmap.root());
        let etc = sbx.join("upper/root/etc");
        write_owned(&etc.join("hostname"), &format!("{hostname}\n"), 0o644, root)?;
        write_owned(&etc.join("hosts"), &template::hosts_file(hostname), 0o644, root)
    }

    /// Make one pool slot: directories and (v1) cgroups with default limits.
    fn make_slot(&self) -> Result<String, RuntimeError> {
        let name = {
            let mut p = self.pool.lock().map_err(|_| step("pool", "lock poisoned"))?;
            p.next += 1;
            format!("{POOL_PREFIX}{}-{}", std::process::id(), p.next)
        };
        let sbx = self.prepare_dir(&name, DEFAULT_HOSTNAME, Limits::default().disk_mb)?;
        if self.cgroups.supports_rename()
            && let Err(e) = self.cgroups.create(&name, &Limits::default())
        {
            let _ = remove_tree(&sbx, &self.cfg.data_dir.join(".trash"));
            return Err(e);
        }
        Ok(name)
    }

    /// Take a prepared slot for sandbox `id`: rename its directory (and cgroups), write the
    /// limits and hostname. `Ok(None)` when no slot is ready.
    fn claim_slot(
        &self,
        id: &str,
        hostname: &str,
        limits: &Limits,
    ) -> Result<Option<(PathBuf, bool)>, RuntimeError> {
        // slots carry a disk quota of the default size (quota.rs)
        if !quota::slot_fits(&*self.quota, Limits::default().disk_mb, limits.disk_mb) {
            return Ok(None);
        }
        let slot = match self.pool.lock() {
            Ok(mut p) => p.slots.pop(),
            Err(_) => None,
        };
        let Some(slot) = slot else { return Ok(None) };
        self.pool_cv.notify_one();
        let sbx = self.sandbox_dir(id);
        let from = self.sandbox_dir(&slot);
        let give_back = |slot: String| {
            if let Ok(mut p) = self.pool.lock() {
                p.slots.push(slot);
            }
        };
        if let Err(e) = rename_noreplace(&from, &sbx) {
            give_back(slot);
            return Err(
                if e.kind() == ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ENOTEMPTY) {
                    RuntimeError::InvalidSpec(format!("sandbox {id} already exists on this host"))
                } else {
                    step(
                        "sandbox dirs",
                        format!("renaming {} to {}: {e}", from.display(), sbx.display()),
                    )
                },
            );
        }
        let pooled_cgroups = self.cgroups.supports_rename();
        if pooled_cgroups && let Err(e) = self.cgroups.rename(&slot, id) {
            if rename_noreplace(&sbx, &from).is_ok() {
                give_back(slot);
            }
            return Err(e);
        }
        let finish = || -> Result<(), RuntimeError> {
            if pooled_cgroups {
                self.cgroups.apply_limits(id, limits)?;
            }
            if hostname != DEFAULT_HOSTNAME {
                self.write_host_files(&sbx, hostname)?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = self.cgroups.remove(id);
            let _ = remove_tree(&sbx, &self.cfg.data_dir.join(".trash"));
            return Err(e);
        }
        Ok(Some((sbx, pooled_cgroups)))
    }

    /// Delete a trashed directory on the background deleter thread (started on first use).
    fn delete_later(&self, path: PathBuf) {
        let Ok(mut tx) = self.trash_tx.lock() else {
            let _ = std::fs::remove_dir_all(&path);
            return;
        };
        if tx.is_none() {
            let (s, r) = std::sync::mpsc::channel::<PathBuf>();
            let spawned = std::thread::Builder::new()
                .name("sandboxd-trash".into())
                .spawn(move || {
                    for p in r {
                        if let Err(e) = std::fs::remove_dir_all(&p) {
                            tracing::warn!("removing {}: {e}", p.display());
                        }
                    }
                });
            if spawned.is_ok() {
                *tx = Some(s);
            }
        }
        match tx.as_ref() {
            Some(s) => {
                if let Err(e) = s.send(path) {
                    let _ = std::fs::remove_dir_all(e.0);
                }
            }
            None => {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }

    fn drain_pool(&self) {
        let slots = match self.pool.lock() {
            Ok(mut p) => {
                p.stopped = true;
                // a slot being made has its disk quota mounted; the filler removes it itself
                // once it sees `stopped`: wait for that (a process exit would leak the mount)
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while p.making && std::time::Instant::now() < deadline {
                    p = match self.pool_cv.wait_timeout(p, Duration::from_millis(50)) {
                        Ok((g, _)) => g,
                        Err(_) => return,
                    };
                }
                std::mem::take(&mut p.slots)
            }
            Err(_) => return,
        };
        self.pool_cv.notify_all();
        for s in slots {
            let _ = self.cgroups.remove(&s);
            let _ = remove_tree(&self.sandbox_dir(&s), &self.cfg.data_dir.join(".trash"));
        }
    }

    /// Validate a spec and fill in what the agent needs that the caller left empty (hostname,
    /// ids); for a layered template add its supervised services and return its read-only binds.
    /// Shared by create and the filesystem-only resume, so both boot the same sandbox.
    pub(super) fn complete_spec(
        &self,
        spec: &mut SandboxSpec,
    ) -> Result<Vec<templates_extra::ReadOnlyBind>, RuntimeError> {
        self.validate(spec)?;
        if spec.agent.hostname.is_empty() {
            spec.agent.hostname = "sandbox".into();
        }
        if spec.agent.sandbox_id.is_empty() {
            spec.agent.sandbox_id = spec.id.clone();
        }
        if spec.agent.template_id.is_empty() {
            spec.agent.template_id = spec.template.clone();
        }
        let Some(t) = templates_extra::resolve(&spec.template) else {
            return Ok(Vec::new());
        };
        for s in t.services {
            if !spec.agent.services.contains(&s) {
                spec.agent.services.push(s);
            }
        }
        Ok(t.binds)
    }

    fn spawn_blocking(&self, mut spec: SandboxSpec, target: ExecTarget) -> Result<Spawned, RuntimeError> {
        let binds = self.complete_spec(&mut spec)?;
        let id = spec.id.clone();
        let t0 = std::time::Instant::now();
        let (sbx, have_cgroups) = match self.claim_slot(&id, &spec.agent.hostname, &spec.limits)? {
            Some(r) => r,
            None => (
                self.prepare_dir(&id, &spec.agent.hostname, spec.limits.disk_mb)?,
                false,
            ),
        };
        let t1 = std::time::Instant::now();
        let r = self.spawn_prepared(&sbx, spec, target, have_cgroups, binds);
        tracing::debug!(sandbox = %id, dirs_us = (t1 - t0).as_micros() as u64, spawn_us = t1.elapsed().as_micros() as u64, "sandbox spawned");
        if std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some() {
            eprintln!("timing {id}: dirs {:?} spawn {:?}", t1 - t0, t1.elapsed());
        }
        if r.is_err() {
            // kill anything left, remove the cgroups (with retries) and the directory
            let _ = self.destroy(&id);
            let _ = remove_tree(&sbx, &self.cfg.data_dir.join(".trash"));
        }
        r
    }

    fn spawn_prepared(
        &self,
        sbx: &Path,
        mut spec: SandboxSpec,
        target: ExecTarget,
        have_cgroups: bool,
        mut binds: Vec<templates_extra::ReadOnlyBind>,
    ) -> Result<Spawned, RuntimeError> {
        let id = spec.id.clone();
        // snapshot template (snapshot.rs): its layers over the template it was taken from,
        // which brings its own binds and services
        let (mut root_layers, mut usr_layers, mut layers_host_ids) = (Vec::new(), Vec::new(), false);
        if let Some(l) = snapshot::read_layers(&self.cfg.data_dir.join("templates"), &spec.template)? {
            spec.template = l.base;
            (root_layers, usr_layers, layers_host_ids) = (l.root, l.usr, l.host_ids);
            if let Some(t) = templates_extra::resolve(&spec.template) {
                binds = t.binds;
                for s in t.services {
                    if !spec.agent.services.contains(&s) {
                        spec.agent.services.push(s);
                    }
                }
            }
        }
        let tc = std::time::Instant::now();
        let files = if have_cgroups {
            self.cgroups.files(&id)
        } else {
            self.cgroups.create(&id, &spec.limits)?
        };
        // nproc = cpuCount (cpus.rs) and /proc/meminfo = memoryMB (meminfo.rs)
        cpus::pin(
            self.cgroups.layout(),
            &self.cfg.cgroup_root,
            &id,
            spec.limits.cpu_count,
            sbx,
        )?;
        meminfo::write(sbx, spec.limits.memory_mb)?;
        if std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some() {
            eprintln!("timing {id}: cgroups {:?}", tc.elapsed());
        }
        let open_w = |p: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(|e| step("cgroup", format!("opening {}: {e}", p.display())))
        };
        let agent_fds: Vec<OwnedFd> = files
            .agent_procs
            .iter()
            .map(|p| open_w(p))
            .collect::<Result<_, _>>()?;
        let work_fds: Vec<OwnedFd> = files
            .work_procs
            .iter()
            .map(|p| open_w(p))
            .collect::<Result<_, _>>()?;
        spec.agent.work_cgroup_fds = (0..work_fds.len())
            .map(|i| boot_fds::FIRST_WORK_CGROUP + i as i32)
            .collect();
        spec.agent.workload_userns_fd = Some(boot_fds::WORKLOAD_USERNS);
        let json = serde_json::to_vec(&spec.agent).map_err(|e| step("config", e))?;
        let config = sys::memfd_with(c"sandboxd-agent-config", &json).map_err(|e| step("config", e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(sbx.join("agent.log"))
            .map(OwnedFd::from)
            .map_err(|e| step("sandbox dirs", format!("agent.log: {e}")))?;
        let volumes = spec
            .volumes
            .iter()
            .map(|v| {
                volumes::check_mount_path(&v.path).map_err(RuntimeError::InvalidSpec)?;
                Ok(volumes::VolumeBind {
                    source: volumes::source(&self.cfg.data_dir, &v.volume_id)?,
                    target: v.path.clone(),
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let req = SpawnRequest {
            id: id.clone(),
            sandbox_dir: sbx.to_path_buf(),
            template: templates_extra::resolve(&spec.template)
                .map_or_else(|| spec.template.clone(), |t| t.skeleton.to_string()),
            binds,
            volumes,
            root_layers,
            usr_layers,
            layers_host_ids,
            hostname: spec.agent.hostname.clone(),
            mount_sys: self.cfg.mount_sys,
            memory_mb: spec.limits.memory_mb,
            exec: target,
            agent_procs: agent_fds.len(),
            work_procs: work_fds.len(),
            timeout_ms: 10_000,
        };
        let mut fds: Vec<RawFd> = vec![config.as_raw_fd(), log.as_raw_fd()];
        fds.extend(agent_fds.iter().map(|f| f.as_raw_fd()));
        fds.extend(work_fds.iter().map(|f| f.as_raw_fd()));
        let (reply, mut got) = {
            let mut guard = self
                .helper
                .lock()
                .map_err(|_| step("spawn", "helper lock poisoned"))?;
            if guard.is_none() {
                *guard = Some(HelperClient::start(&self.cfg.exe, &self.init)?);
            }
            let Some(client) = guard.as_mut() else {
                return Err(step("spawn", "no spawn helper"));
            };
            match client.call(&req, &fds) {
                Ok(r) => r,
                Err(first) => {
                    // The helper died (a half-started init exits on its own once the helper's
                    // end of its pipe closes): start a new one and retry once.
                    tracing::warn!("spawn helper failed ({first}); restarting it");
                    *guard = None;
                    let mut client = HelperClient::start(&self.cfg.exe, &self.init)?;
                    let r = client.call(&req, &fds).map_err(|e| {
                        step(
                            "spawn",
                            format!("spawn helper: {e} (after restart; first: {first})"),
                        )
                    })?;
                    *guard = Some(client);
                    r
                }
            }
        };
        match reply {
            HelperReply::Spawned { pid, start_time } => {
                let pidfd = got.pop().ok_or_else(|| step("spawn", "helper sent no pidfd"))?;
                Ok(Spawned {
                    pid,
                    start_time,
                    pidfd,
                })
            }
            HelperReply::Failed { step: s, message } => {
                let log = tail(&sbx.join("agent.log"), 2000);
                let message = if log.is_empty() {
                    message
                } else {
                    format!("{message}; agent log: {log}")
                };
                Err(RuntimeError::Step {
                    step: helper::static_step(&s),
                    message,
                })
            }
            HelperReply::Ready => Err(step("spawn", "unexpected reply from helper")),
        }
    }

    /// Kill everything of sandbox `id` and remove its cgroups and directory.
    fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        if !valid_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad sandbox id '{id}'")));
        }
        let t0 = std::time::Instant::now();
        let timing = std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some();
        let rec = self.agents.lock().ok().and_then(|mut m| m.remove(id));
        self.kill_processes(id, rec.as_ref(), 40);
        if timing {
            eprintln!("timing destroy {id}: processes gone at {:?}", t0.elapsed());
        }
        // A killed task keeps its cgroup busy until it has fully exited (mount and network
        // namespace teardown can take a while on a busy host): retry for up to ~5 s.
        let mut cg = self.cgroups.remove(id);
        let mut delay = 5;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cg.is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(delay));
            delay = (delay * 2).min(200);
            cg = self.cgroups.remove(id);
        }
        if timing {
            eprintln!("timing destroy {id}: cgroups removed at {:?}", t0.elapsed());
        }
        // The id is free once the directory is in the trash; deleting the files (large upper
        // dirs take a while) happens on a background thread.
        let dir = move_to_trash(&self.sandbox_dir(id), &self.cfg.data_dir.join(".trash")).map(|t| {
            if let Some(t) = t {
                self.delete_later(t);
            }
        });
        if timing {
            eprintln!("timing destroy {id}: dir removed at {:?}", t0.elapsed());
        }
        cg?;
        dir
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.drain_pool();
        // an empty cgroup root is removed (it stays while sandboxes run)
        self.cgroups.remove_root_if_empty();
    }
}

/// Keep `size` prepared slots; exits once the backend is gone or the pool is drained.
fn pool_filler(weak: Weak<Inner>, size: usize) {
    // Background work: yield the CPU to creates in progress (nice applies per thread).
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let need = match inner.pool.lock() {
            Ok(p) if p.stopped => return,
            Ok(p) if p.slots.len() >= size => {
                let _ = inner.pool_cv.wait_timeout(p, Duration::from_millis(500));
                false
            }
            Ok(mut p) => {
                p.making = true;
                true
            }
            Err(_) => return,
        };
        if !need {
            continue;
        }
        let done_making = || {
            if let Ok(mut p) = inner.pool.lock() {
                p.making = false;
            }
            inner.pool_cv.notify_all();
        };
        match inner.make_slot() {
            Ok(name) => {
                let mut keep = Some(name);
                if let Ok(mut p) = inner.pool.lock()
                    && !p.stopped
                {
                    p.slots.extend(keep.take());
                }
                if let Some(name) = keep {
                    // drained meanwhile
                    let _ = inner.cgroups.remove(&name);
                    let _ = remove_tree(&inner.sandbox_dir(&name), &inner.cfg.data_dir.join(".trash"));
                    done_making();
                    return;
                }
                done_making();
            }
            Err(e) => {
                done_making();
                tracing::warn!("preparing a sandbox slot failed: {e}");
                drop(inner);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// `renameat2(RENAME_NOREPLACE)`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let inval = |_| std::io::Error::from(ErrorKind::InvalidInput);
    let f = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(inval)?;
    let t = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(inval)?;
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Rename a sandbox directory into the trash, so its id is free at once. Returns the new
/// path, or `None` if there was nothing to move.
fn move_to_trash(dir: &Path, trash: &Path) -> Result<Option<PathBuf>, RuntimeError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let t = trash.join(format!("{name}-{nanos}"));
    quota::release(dir);
    match std::fs::rename(dir, &t) {
        Ok(()) => Ok(Some(t)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(step(
            "cleanup",
            format!("moving {} to the trash: {e}", dir.display()),
        )),
    }
}

/// Remove a sandbox directory now (through the trash).
fn remove_tree(dir: &Path, trash: &Path) -> Result<(), RuntimeError> {
    match move_to_trash(dir, trash)? {
        Some(t) => {
            std::fs::remove_dir_all(&t).map_err(|e| step("cleanup", format!("removing {}: {e}", t.display())))
        }
        None => Ok(()),
    }
}

/// Send `GET /health` over a unix socket and return the HTTP status code.
pub async fn agent_health(sock: &Path) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std_stream = connect_unix(sock)?;
    std_stream.set_nonblocking(true)?;
    let mut s = tokio::net::UnixStream::from_std(std_stream)?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(2).any(|w| w == b"\r\n") || buf.len() > 4096 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidData, format!("bad HTTP answer: {:.80}", line))
        })?;
    Ok(code)
}

/// Wait until the pidfd is readable (the process exited).
async fn wait_exit(pidfd: Arc<OwnedFd>) {
    let Ok(dup) = pidfd.try_clone() else {
        return std::future::pending().await;
    };
    // SAFETY: `dup` is an OwnedFd moved into the AsyncFd, so it stays open and refers to the
    // same pidfd for as long as the registration exists.
    match unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => std::future::pending().await,
    }
}

impl Inner {
    /// SIGKILL the sandbox's agent (the pid namespace goes with it), then any task still in its
    /// cgroups (a sandbox of an earlier daemon, or a half-dead one), thawing after each signal
    /// because a killed frozen task only dies once thawed. Gives up after `rounds` tries with
    /// backoff; returns whether no task is left.
    pub(super) fn kill_processes(&self, id: &str, agent: Option<&AgentRecord>, rounds: u32) -> bool {
        if let Some(rec) = agent {
            let _ = sys::pidfd_send_signal(&rec.pidfd, libc::SIGKILL);
            self.cgroups.thaw(id);
            sys::pidfd_wait_exit(&rec.pidfd, 5000);
        }
        let mut delay = 2;
        for _ in 0..rounds {
            let pids = self.cgroups.pids(id);
            if pids.is_empty() {
                return true;
            }
            if !self.cgroups.kill_v2(id) {
                for p in pids {
                    if let Ok(fd) = sys::pidfd_open(p) {
                        let _ = sys::pidfd_send_signal(&fd, libc::SIGKILL);
                    }
                }
            }
            self.cgroups.thaw(id);
            std::thread::sleep(Duration::from_millis(delay));
            delay = (delay * 2).min(100);
        }
        self.cgroups.pids(id).is_empty()
    }
}

impl NamespaceBackend {
    /// Wait until a freshly booted agent answers `GET /health` on its `agent.sock` and, for
    /// layered templates, until their service is ready (the code interpreter's kernel), or
    /// fail when the agent exits or the ready timeout passes (30 s at least with a service).
    async fn wait_booted(
        &self,
        sbx: &Path,
        pidfd: &Arc<OwnedFd>,
        service_ready: Option<&templates_extra::ReadyCheck>,
    ) -> Result<(), RuntimeError> {
        let api = sbx.join("run/agent.sock");
        let mut timeout = self.inner.cfg.ready_timeout;
        if service_ready.is_some() {
            // a Python kernel start takes seconds on a busy host
            timeout = timeout.max(Duration::from_secs(30));
        }
        let ready = async {
            let mut delay = Duration::from_millis(1);
            loop {
                match agent_health(&api).await {
                    Ok(204) => break,
                    Ok(code) => return Err(format!("GET /health answered {code}")),
                    // the agent closed the connection before answering; retry shortly
                    Err(_) => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(50));
                    }
                }
            }
            match service_ready {
                Some(check) => templates_extra::wait_ready(&api, check).await,
                None => Ok(()),
            }
        };
        tokio::select! {
            r = ready => r.map_err(|m| step("agent health", m)),
            _ = wait_exit(pidfd.clone()) => Err(step(
                "agent",
                format!("agent exited during boot; log: {}", tail(&sbx.join("agent.log"), 2000)),
            )),
            _ = tokio::time::sleep(timeout) => Err(if service_ready.is_some() {
                step("service ready", format!(
                    "the template's service did not become ready within {} ms; agent log: {}",
                    timeout.as_millis(),
                    tail(&sbx.join("agent.log"), 2000)
                ))
            } else {
                RuntimeError::NotReady(timeout.as_millis() as u64)
            }),
        }
    }
}

#[async_trait]
impl SandboxBackend for NamespaceBackend {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn shutdown(&self) {
        NamespaceBackend::shutdown(self)
    }

    fn has_template(&self, template: &str) -> bool {
        self.inner.has_template(template)
    }

    async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let id = spec.id.clone();
        let t0 = std::time::Instant::now();
        let service_ready = templates_extra::resolve(&spec.template).and_then(|t| t.ready);
        let spawned = self.spawn_init(spec, ExecTarget::Agent).await?;
        let t1 = std::time::Instant::now();
        let sbx = self.sandbox_dir(&id);
        let api = sbx.join("run/agent.sock");
        let pidfd = Arc::new(spawned.pidfd);
        let outcome = self.wait_booted(&sbx, &pidfd, service_ready.as_ref()).await;
        if let Ok(mut m) = self.inner.agents.lock() {
            m.insert(id.clone(), AgentRecord { pidfd: pidfd.clone() });
        }
        if let Err(e) = outcome {
            let _ = self.destroy(&id).await;
            return Err(e);
        }
        tracing::debug!(sandbox = %id, spawn_us = (t1 - t0).as_micros() as u64, ready_us = t1.elapsed().as_micros() as u64, "sandbox ready");
        if std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some() {
            eprintln!("timing {id}: total spawn {:?} ready {:?}", t1 - t0, t1.elapsed());
        }
        Ok(SandboxHandle {
            id,
            agent_pid: spawned.pid,
            agent_start_time: spawned.start_time,
            api: AgentEndpoint::Unix(api),
            control: AgentEndpoint::Unix(sbx.join("run/control.sock")),
        })
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let inner = self.inner.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || inner.destroy(&id))
            .await
            .map_err(|e| step("destroy", e))?
    }

    fn is_alive(&self, handle: &SandboxHandle) -> bool {
        // The pidfd we hold pins the agent: it answers without opening anything.
        let pidfd = self
            .inner
            .agents
            .lock()
            .ok()
            .and_then(|m| m.get(&handle.id).map(|r| r.pidfd.clone()));
        let answer = match pidfd {
            Some(fd) => sys::Liveness::of_pidfd(&fd),
            None => sys::liveness(handle.agent_pid, handle.agent_start_time),
        };
        match answer {
            sys::Liveness::Alive => true,
            sys::Liveness::Gone => false,
            sys::Liveness::Unknown(e) => {
                tracing::warn!(sandbox = %handle.id, "liveness check failed ({e}); assuming the agent is alive");
                true
            }
        }
    }

    async fn stats(&self, id: &str) -> Result<crate::SandboxStats, RuntimeError> {
        let me = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || me.stats_blocking(&id))
            .await
            .map_err(|e| step("stats", e))?
    }

    async fn snapshot(
        &self,
        id: &str,
        source_template: &str,
        name: &str,
        limits: crate::SnapshotLimits,
    ) -> Result<(), RuntimeError> {
        let me = self.clone();
        let (id, src, name) = (id.to_string(), source_template.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || me.snapshot_blocking(&id, &src, &name, limits))
            .await
            .map_err(|e| step("snapshot", e))?
    }

    async fn create_volume(&self, id: &str, size_mb: u64) -> Result<(), RuntimeError> {
        if !valid_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad volume id '{id}'")));
        }
        let me = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let owner = me.inner.init.uid_base + template::USER_ID;
            volumes::create(&*me.inner.quota, &me.inner.cfg.data_dir, &id, size_mb, owner)
        })
        .await
        .map_err(|e| step("volume", e))?
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        if !valid_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad volume id '{id}'")));
        }
        let me = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || volumes::delete(&me.inner.cfg.data_dir, &id))
            .await
            .map_err(|e| step("volume", e))
    }

    async fn delete_snapshot_template(&self, name: &str) -> Result<bool, RuntimeError> {
        let me = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || me.delete_template_blocking(&name))
            .await
            .map_err(|e| step("snapshot", e))?
    }

    async fn adopt(
        &self,
        id: &str,
        agent_pid: i32,
        agent_start_time: u64,
    ) -> Result<crate::Adopted, RuntimeError> {
        self.adopt_impl(id, agent_pid, agent_start_time).await
    }

    async fn freeze(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking("pause", move |i| i.freeze(&id)).await
    }

    async fn thaw(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking("resume", move |i| i.thaw_checked(&id)).await
    }

    async fn stop_keep_files(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking("pause", move |i| i.stop_keep_files(&id)).await
    }

    async fn boot_existing(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        self.boot_existing_impl(spec).await
    }

    async fn list_host_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut ids: std::collections::BTreeSet<String> = inner.cgroups.list().into_iter().collect();
            let dir = inner.cfg.data_dir.join("sandboxes");
            for e in std::fs::read_dir(&dir)?.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    ids.insert(n.to_string());
                }
            }
            Ok(ids.into_iter().filter(|i| valid_id(i)).collect())
        })
        .await
        .map_err(|e| step("list", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert!(valid_id("abc123"));
        assert!(!valid_id(""));
        assert!(!valid_id("ABC"));
        assert!(!valid_id("a-b"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(valid_template("base"));
        assert!(valid_template("code-interpreter-v1"));
        assert!(!valid_template(".stale-base-1"));
        assert!(!valid_template("a/b"));
        assert!(valid_hostname("sandbox"));
        assert!(!valid_hostname("-x"));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname(&"h".repeat(64)));
    }

    #[test]
    fn static_steps() {
        assert_eq!(helper::static_step("mount usr overlay"), "mount usr overlay");
        assert_eq!(helper::static_step("???"), "spawn");
    }
}
