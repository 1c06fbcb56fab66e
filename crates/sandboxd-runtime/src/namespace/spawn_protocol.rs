//! The messages between the daemon and the spawn helper ([`super::spawn_helper`]) over their
//! `SOCK_SEQPACKET` pair: JSON bodies, fds as `SCM_RIGHTS`.

use super::mounts::ReadOnlyBind;
use super::sandbox_init::ExecTarget;
use super::volumes::VolumeBind;
use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;
use std::path::PathBuf;

/// The fd number on which the helper finds its end of the socket pair.
pub const HELPER_FD: RawFd = 3;
/// Subcommand that runs the helper.
pub const HELPER_SUBCOMMAND: &str = "__spawn-helper";

/// First message from the backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperInit {
    /// The host `/usr`.
    pub usr_source: PathBuf,
    /// `<data>/templates`.
    pub templates_source: PathBuf,
    /// `<data>/.helper`: the helper mounts its staging views under `<stage_dir>/<its pid>/`.
    pub stage_dir: PathBuf,
    /// First host uid/gid of the sandbox range.
    pub uid_base: u32,
    /// Size of the range.
    pub uid_count: u32,
}

/// A request to clone one sandbox. Fds sent with it, in order: the config (memfd), the
/// agent log, `agent_procs` files that move the init into the agent group, `work_procs` fds:
/// the files that move a process into the work group (see `cgroup::SandboxCgroupFiles`), then
/// the work group's read-only counter files (`AgentConfig::work_counter_fds`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// Sandbox id (for messages).
    pub id: String,
    /// `<data>/sandboxes/<id>`, prepared.
    pub sandbox_dir: PathBuf,
    /// Template directory name under the templates directory.
    pub template: String,
    /// Extra read-only layers of the template for `/` and for `/usr`, top first, as paths
    /// relative to the templates directory (reached through its idmapped staging view).
    #[serde(default)]
    pub root_layers: Vec<String>,
    #[serde(default)]
    /// The same for `/usr`.
    pub usr_layers: Vec<String>,
    /// The layers hold host ids (current snapshots): mounted from the templates directory
    /// itself, not through the idmapped view (snapshot.rs).
    #[serde(default)]
    pub layers_host_ids: bool,
    /// The layers are a whole root file system (an image template, `image_template.rs`): no
    /// host `/usr` overlay is mounted, the image has its own.
    #[serde(default)]
    pub whole_root: bool,
    /// Read-only host directories bound into the root (layered templates, layered_template.rs).
    #[serde(default)]
    pub binds: Vec<ReadOnlyBind>,
    /// Volumes bound read-write (volumes.rs).
    #[serde(default)]
    pub volumes: Vec<VolumeBind>,
    /// The sandbox's hostname.
    pub hostname: String,
    /// Mount a read-only `/sys`.
    pub mount_sys: bool,
    /// The sandbox's `memoryMB`: `/dev/shm` gets that size (0: the kernel's default).
    #[serde(default)]
    pub memory_mb: u64,
    /// What the init execs.
    pub exec: ExecTarget,
    /// Number of agent cgroup files among the fds.
    pub agent_procs: usize,
    /// Number of work cgroup files among the fds.
    pub work_procs: usize,
    /// How long the init may take until exec.
    pub timeout_ms: u64,
    /// The command policy (`command_policy.rs`): the allowed names and the `PATH` they are
    /// resolved on. Its three fds follow the work cgroup fds (`AgentConfig::command_policy_fds`).
    #[serde(default)]
    pub command_policy: Option<PolicyRequest>,
}

/// The command policy part of a [`SpawnRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyRequest {
    /// `allowedCommands` as asked.
    pub allowed: Vec<String>,
    /// The `PATH` the names are resolved on.
    pub path: String,
}

/// The helper's answer. `Spawned` carries the init's pidfd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum HelperReply {
    /// Set up and waiting for requests.
    Ready,
    /// The init exec'd.
    Spawned {
        /// Its host pid.
        pid: i32,
        /// Its start time (`/proc/<pid>/stat`).
        start_time: u64,
    },
    /// A step failed.
    Failed {
        /// The step's name.
        step: String,
        /// What went wrong.
        message: String,
    },
}

/// Map a step name from the helper to the static names [`RuntimeError::Step`] uses.
pub fn static_step(s: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "helper init",
        "request",
        "clone",
        "uid map",
        "gid map",
        "cgroup attach",
        "oom_score_adj",
        "open sandbox dir",
        "open template",
        "open template layer",
        "mount template binds",
        "open volumes",
        "mount volumes",
        "open usr",
        "setgroups",
        "setresgid",
        "setresuid",
        "make mounts private",
        "cgroup namespace",
        "mount root overlay",
        "mount usr overlay",
        "chdir rootfs",
        "mount /dev",
        "create /dev node",
        "bind /dev node",
        "mkdir /dev/pts",
        "mount devpts",
        "link /dev/ptmx",
        "mkdir /dev/shm",
        "mount /dev/shm",
        "link /dev entries",
        "mount /proc",
        "bind boot_id",
        "remount boot_id",
        "bind meminfo",
        "pin cpus",
        "mount /sys",
        "bind agent.sock",
        "bind control.sock",
        "pivot_root",
        "detach old root",
        "chdir /",
        "sethostname",
        "workload user namespace",
        "sandbox ucount limits",
        "enter workload user namespace",
        "rlimits",
        "loader guard",
        "command policy",
        "open /dev/null",
        "arrange fds",
        "seccomp",
        "exec agent",
        "exec program",
        "spawn timeout",
    ];
    KNOWN.iter().find(|k| **k == s).copied().unwrap_or("spawn")
}

#[cfg(test)]
mod tests {
    #[test]
    fn static_steps() {
        assert_eq!(super::static_step("mount usr overlay"), "mount usr overlay");
        assert_eq!(super::static_step("???"), "spawn");
    }
}
