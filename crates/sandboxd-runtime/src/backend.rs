//! The backend trait and the types that cross it.

use crate::RuntimeError;
use async_trait::async_trait;
use sandboxd_protocol::agent::AgentConfig;
use std::path::PathBuf;

/// Resource limits of one sandbox, already resolved (template defaults, request overrides,
/// daemon maxima).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPUs (cgroup CPU quota of `cpu_count` full cores).
    pub cpu_count: u32,
    /// Memory in MiB (memory + swap).
    pub memory_mb: u64,
    /// Disk in MiB (upper dir quota; enforcement belongs to the lifecycle work).
    pub disk_mb: u64,
    /// Maximum number of tasks (processes and threads) of user processes.
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 1024,
            pids: 1024,
        }
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Sandbox id, `^[a-z0-9]+$`.
    pub id: String,
    /// Template id (for example `base`).
    pub template: String,
    /// Resource limits.
    pub limits: Limits,
    /// Handed to the agent at boot.
    pub agent: AgentConfig,
    /// Volumes bound read-write into the sandbox (`docs/volumes.md`); checked by the caller.
    pub volumes: Vec<VolumeMount>,
}

/// A volume (made by [`SandboxBackend::create_volume`]) and where it appears in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// Volume id, `^[a-z0-9]+$`.
    pub volume_id: String,
    /// Absolute path inside the sandbox.
    pub path: String,
}

/// How the daemon reaches a sandbox's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// A unix socket path on the host: HTTP/1.1 to the envd API; `CONNECT 127.0.0.1:<port>`
    /// opens a tunnel to a port inside the sandbox.
    Unix(PathBuf),
}

/// A created, ready sandbox.
#[derive(Debug, Clone)]
pub struct SandboxHandle {
    /// Sandbox id.
    pub id: String,
    /// Host pid of the agent (PID 1 inside).
    pub agent_pid: i32,
    /// Start time of the agent from `/proc/<pid>/stat` (field 22), to detect pid reuse.
    pub agent_start_time: u64,
    /// The public envd API and port tunnel.
    pub api: AgentEndpoint,
    /// Internal control socket (config updates); never proxied.
    pub control: AgentEndpoint,
}

/// One reading of a sandbox's resource use (`stats`). Counters are cumulative; the daemon turns
/// them into rates. A `None` total means "unknown here": the daemon uses the sandbox's limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxStats {
    /// CPU time used by all of the sandbox's processes (agent and user processes) so far, in ns.
    pub cpu_usage_ns: u64,
    /// CPUs the sandbox may use (its quota, rounded up).
    pub cpu_count: Option<u32>,
    /// Memory in use, page cache excluded, in bytes.
    pub mem_used: u64,
    /// Memory limit in bytes.
    pub mem_total: Option<u64>,
    /// Page cache charged to the sandbox, in bytes.
    pub mem_cache: u64,
    /// Bytes the sandbox's writable layers use on disk.
    pub disk_used: u64,
    /// Disk limit in bytes (the quota's size when one is enforced).
    pub disk_total: Option<u64>,
    /// Processes the kernel's OOM killer killed in the sandbox so far (`None`: not available).
    pub oom_kills: Option<u64>,
    /// Whether the sandbox is frozen (paused): the daemon never samples or contacts it then.
    pub frozen: bool,
    /// Forks and clones of user processes refused at the task limit so far (`pids.events`
    /// `max` of the workload group; `None`: not available).
    pub pids_limit_hits: Option<u64>,
    /// Traffic of the sandbox's network link so far (`None`: no link, `docs/network.md`).
    pub network: Option<NetworkCounters>,
}

/// Cumulative traffic of a sandbox's network link, from the sandbox's point of view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    /// Bytes received by the sandbox.
    pub rx_bytes: u64,
    /// Packets received by the sandbox.
    pub rx_packets: u64,
    /// Bytes sent by the sandbox.
    pub tx_bytes: u64,
    /// Packets sent by the sandbox.
    pub tx_packets: u64,
    /// Packets the packet filter refused by the sandbox's egress policy.
    pub denied_packets: u64,
    /// Connections the egress proxy refused by the sandbox's egress policy.
    pub denied_connections: u64,
}

/// What [`SandboxBackend::adopt`] found on the host for a sandbox of an earlier daemon run.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// Endpoints of the sandbox; `agent_pid`/`agent_start_time` are the stored ones.
    pub handle: SandboxHandle,
    /// The stored agent is still alive (same pid and start time, in the sandbox's cgroup).
    pub agent_alive: bool,
    /// The sandbox's writable layers exist (a filesystem-only resume is possible).
    pub files: bool,
}

/// A sandbox backend. Implementations must be safe to call from many tasks at once.
/// Size limits of one snapshot (`docs/snapshots.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Most bytes the new snapshot may take (0: no limit of its own).
    pub max_bytes: u64,
    /// Most bytes all snapshots together may take (0: no limit).
    pub store_max_bytes: u64,
}

/// A way to run sandboxes: the daemon drives every sandbox through this trait only.
#[async_trait]
pub trait SandboxBackend: Send + Sync + 'static {
    /// Short name for logs and `/health` (for example `namespace`).
    fn name(&self) -> &'static str;

    /// Whether a template exists.
    fn has_template(&self, template: &str) -> bool;

    /// Why a template this backend knows cannot be used on this host right now (for example
    /// its host layer is not installed), for the error the daemon returns; `None` for names it
    /// does not know or that are usable.
    /// No default: a decorator must forward it.
    fn template_missing_reason(&self, template: &str) -> Option<String>;

    /// Whether sandboxes of `template` run services the agent supervises (they read env vars
    /// and the access token once at boot, so such sandboxes cannot be pooled).
    /// No default: a decorator must forward it.
    fn template_has_services(&self, template: &str) -> bool;

    /// Create and boot a sandbox; returns once its agent answers `GET /health`.
    /// On error nothing of the sandbox is left behind.
    async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError>;

    /// Stop every process of the sandbox and remove everything it had on the host
    /// (cgroups, upper dirs, sockets). Idempotent: killing an unknown id is `Ok`.
    async fn destroy(&self, id: &str) -> Result<(), RuntimeError>;

    /// Whether the sandbox's agent is still alive (pidfd, or pid and start time). `false` only
    /// on evidence that it is gone: a check that fails (no free fd, `/proc` unreadable) answers
    /// `true`, because callers destroy sandboxes on `false`.
    fn is_alive(&self, handle: &SandboxHandle) -> bool;

    /// Ids of sandboxes this backend finds on the host (dirs, cgroups, processes), for
    /// reconciliation at daemon start.
    async fn list_host_sandboxes(&self) -> Result<Vec<String>, RuntimeError>;

    /// Release what the backend holds for itself (helpers, prepared slots) when the daemon
    /// stops. Running sandboxes are not affected. Blocking.
    fn shutdown(&self) {}

    /// Current resource use of a sandbox (for metrics). Reads host-side counters only and
    /// never contacts the sandbox, so it is safe on a frozen one.
    async fn stats(&self, id: &str) -> Result<SandboxStats, RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported(format!(
            "the {} backend does not report resource usage",
            self.name()
        )))
    }

    /// Lifecycle (`docs/lifecycle.md`): re-attach to a sandbox of an earlier daemon run from its
    /// stored agent pid and start time, without contacting the agent (it may be frozen).
    async fn adopt(&self, id: &str, agent_pid: i32, agent_start_time: u64) -> Result<Adopted, RuntimeError> {
        let _ = (id, agent_pid, agent_start_time);
        Err(self.lifecycle_unsupported("re-adoption"))
    }

    /// Lifecycle: freeze every process of the sandbox (memory pause). Idempotent.
    async fn freeze(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Err(self.lifecycle_unsupported("memory pause"))
    }

    /// Lifecycle: thaw a frozen sandbox. Idempotent.
    async fn thaw(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Err(self.lifecycle_unsupported("memory resume"))
    }

    /// Lifecycle: stop every process of the sandbox but keep its writable layers (filesystem-only
    /// pause). Idempotent.
    async fn stop_keep_files(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Err(self.lifecycle_unsupported("filesystem-only pause"))
    }

    /// Lifecycle: boot a fresh agent (new boot id) on the kept writable layers of a sandbox
    /// stopped by [`SandboxBackend::stop_keep_files`]. On error the files are kept.
    async fn boot_existing(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let _ = spec;
        Err(self.lifecycle_unsupported("filesystem-only resume"))
    }

    /// Snapshots (`docs/snapshots.md`): copy the writable layers of running sandbox `id` (made
    /// from template `source_template`) into a new read-only template `name` that stacks on
    /// the source's template. The sandbox keeps running (it is frozen while its files are
    /// copied). A copy over `limits` stops with [`RuntimeError::StorageFull`] and leaves nothing.
    async fn snapshot(
        &self,
        id: &str,
        source_template: &str,
        name: &str,
        limits: SnapshotLimits,
    ) -> Result<(), RuntimeError> {
        let _ = (id, source_template, name, limits);
        Err(RuntimeError::Unsupported(format!(
            "the {} backend does not support snapshots",
            self.name()
        )))
    }

    /// Snapshots: remove a template made by [`SandboxBackend::snapshot`]. `Ok(false)` if there is
    /// no such snapshot template. Callers make sure no sandbox uses it any more.
    async fn delete_snapshot_template(&self, name: &str) -> Result<bool, RuntimeError> {
        let _ = name;
        Err(RuntimeError::Unsupported(format!(
            "the {} backend does not support snapshots",
            self.name()
        )))
    }

    /// Image templates (`docs/templates.md`): make template `name` whose root is the given
    /// unpacked image layers (paths relative to the templates directory, bottom first), with
    /// the sandbox's accounts added and nothing of the host mounted.
    async fn create_image_template(&self, name: &str, layers: &[String]) -> Result<(), RuntimeError> {
        let _ = (name, layers);
        Err(RuntimeError::Unsupported(format!(
            "the {} backend does not support image templates",
            self.name()
        )))
    }

    /// Template builds: make template `name` from `parent` plus one layer copied from `stage`
    /// (a tree laid out from `/`, sandbox ids); `ancestors` take the parent's owner and mode.
    async fn derive_template(
        &self,
        parent: &str,
        name: &str,
        stage: &std::path::Path,
        ancestors: &[String],
    ) -> Result<(), RuntimeError> {
        let _ = (parent, name, stage, ancestors);
        Err(RuntimeError::Unsupported(format!(
            "the {} backend does not support template builds",
            self.name()
        )))
    }

    /// Volumes (`docs/volumes.md`): make the storage of a new volume `id` (`^[a-z0-9]+$`) of at
    /// most `size_mb` MiB, writable by the sandboxes' `root` and `user`.
    async fn create_volume(&self, id: &str, size_mb: u64) -> Result<(), RuntimeError> {
        let _ = (id, size_mb);
        Err(RuntimeError::Unsupported(format!(
            "the {} backend does not support volumes",
            self.name()
        )))
    }

    /// Volumes: remove a volume's storage and contents. Idempotent. Callers make sure no
    /// sandbox mounts it any more.
    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported(format!(
            "the {} backend does not support volumes",
            self.name()
        )))
    }

    /// Volumes: the files of volume `id`, for the volume content API (paths resolved inside
    /// it, owners in the sandboxes' ids; `volume_files.rs`).
    async fn volume_files(&self, id: &str) -> Result<crate::volume_files::VolumeFiles, RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported(format!(
            "the {} backend does not support volumes",
            self.name()
        )))
    }

    /// Networking (`docs/network.md`): the egress policy of sandbox `id` from its stored
    /// `network` object and `allow_internet_access`, applied at once when it runs and at each
    /// boot. Backends without networking accept it (their sandboxes have loopback only).
    async fn set_egress(
        &self,
        id: &str,
        network: &serde_json::Value,
        allow_internet_access: bool,
    ) -> Result<(), RuntimeError> {
        let _ = (id, network, allow_internet_access);
        Ok(())
    }

    /// Networking: the sandbox's own address, when it has a network link.
    fn network_address(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        let _ = id;
        None
    }

    /// The error of the default lifecycle methods.
    fn lifecycle_unsupported(&self, what: &str) -> RuntimeError {
        RuntimeError::Unsupported(format!("the {} backend does not support {what}", self.name()))
    }
}
