//! Configuration the daemon hands to a sandbox's agent (PID 1) at boot and on `/init`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the agent needs to know about its sandbox. Sent as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentConfig {
    /// The sandbox id (`E2B_SANDBOX_ID`).
    pub sandbox_id: String,
    /// The template id (`E2B_TEMPLATE_ID`).
    pub template_id: String,
    /// Sandbox-global environment variables from the create request (`envVars`).
    pub env_vars: BTreeMap<String, String>,
    /// envd access token of a secure sandbox; `None` means no token is enforced.
    pub access_token: Option<String>,
    /// Default user for RPCs without an `Authorization` header (normally `user`).
    pub default_user: String,
    /// Default working directory (normally the default user's home).
    pub default_workdir: Option<String>,
    /// Hostname inside the sandbox.
    pub hostname: String,
    /// Inherited file descriptors of the `cgroup.procs` files of the sandbox's `work` cgroup
    /// (one per v1 hierarchy, one on v2). Each user process writes `0` to each of them before
    /// exec, which moves it out of the agent's cgroup. Empty when cgroups are not used.
    pub work_cgroup_fds: Vec<i32>,
    /// Inherited read-only fds of the `work` cgroup's counter files, read by the agent to say
    /// why a process failed ("process limit N reached", an OOM kill with the limit). Absent
    /// outside a sandbox or where the controller is not mounted.
    #[serde(skip_serializing_if = "WorkCounterFds::is_empty")]
    pub work_counter_fds: WorkCounterFds,
    /// Inherited fd of the workload user namespace (a child of the agent's, identity-mapped):
    /// every process the agent starts joins it before exec, so root inside the sandbox has no
    /// capability over the agent (`docs/security.md`). `None` outside a sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_userns_fd: Option<i32>,
    /// Services the agent starts at boot and restarts when they exit (`interpreter`: the
    /// code-interpreter server, `sandboxd interpreter`). Set by the runtime from the template.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// The sandbox's command policy (`allowedCommands`, `docs/command-policy.md`): the programs
    /// workload processes may execute, as asked (names resolved on `PATH` by the agent at
    /// boot, or absolute paths). `None`: any program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_commands: Option<Vec<String>>,
    /// Inherited fds of the command policy, set by the runtime with `allowed_commands`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_policy_fds: Option<CommandPolicyFds>,
}

/// The fds of a command policy, prepared by the sandbox's init (`docs/command-policy.md`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CommandPolicyFds {
    /// Keeps the `binfmt_misc` instance alive whose entries refuse a direct `execve` of the
    /// ELF loader.
    pub loader_guard: i32,
    /// The Landlock ruleset of workload processes.
    pub workload_ruleset: i32,
    /// The Landlock ruleset of the daemon's helper programs.
    pub helper_ruleset: i32,
}

/// The ELF loaders a sandbox's loader guard covers (a `binfmt_misc` entry per loader present
/// in its root, `docs/command-policy.md`). A command policy whose programs name another
/// loader is refused by the agent, as that loader could be executed directly.
pub const GUARDED_LOADERS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
];

/// Where templates keep the egress proxy's CA certificate (the daemon's, for HTTPS header
/// rules; `docs/network.md`). When it exists the agent points `NODE_EXTRA_CA_CERTS` at it, as
/// Node.js reads only its own bundled roots otherwise.
pub const EGRESS_CA_PATH: &str = "/etc/sandboxd/egress-ca.pem";

/// Whether this sandbox's root has [`EGRESS_CA_PATH`] (checked once per process).
fn egress_ca_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| std::path::Path::new(EGRESS_CA_PATH).is_file())
}

impl AgentConfig {
    /// A config with the standard template defaults (`user`, `/home/user`).
    pub fn new(sandbox_id: impl Into<String>, template_id: impl Into<String>) -> Self {
        Self {
            sandbox_id: sandbox_id.into(),
            template_id: template_id.into(),
            env_vars: BTreeMap::new(),
            access_token: None,
            default_user: "user".into(),
            default_workdir: Some("/home/user".into()),
            hostname: "sandbox".into(),
            work_cgroup_fds: Vec::new(),
            work_counter_fds: WorkCounterFds::default(),
            workload_userns_fd: None,
            services: Vec::new(),
            allowed_commands: None,
            command_policy_fds: None,
        }
    }

    /// The sandbox-global variables every process sees (`docs/contract.md` §4, step 3).
    pub fn global_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("E2B_SANDBOX".to_string(), "true".to_string());
        env.insert("E2B_SANDBOX_ID".to_string(), self.sandbox_id.clone());
        env.insert("E2B_TEMPLATE_ID".to_string(), self.template_id.clone());
        if egress_ca_present() {
            env.insert("NODE_EXTRA_CA_CERTS".to_string(), EGRESS_CA_PATH.to_string());
        }
        for (k, v) in &self.env_vars {
            env.insert(k.clone(), v.clone());
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_env_user_vars_win() {
        let mut c = AgentConfig::new("abc", "base");
        c.env_vars.insert("E2B_SANDBOX".into(), "x".into());
        c.env_vars.insert("FOO".into(), "bar".into());
        let env = c.global_env();
        assert_eq!(env["E2B_SANDBOX"], "x");
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env["E2B_SANDBOX_ID"], "abc");
    }

    #[test]
    fn config_roundtrips_json() {
        let c = AgentConfig::new("abc", "base");
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"sandboxId\":\"abc\""));
        let back: AgentConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, c);
    }
}

/// Read-only fds of the `work` cgroup's counter files (`docs/limits.md`). The same key/value
/// formats on cgroup v1 and v2: `pids.events` has `max N`, both `memory.events` (v2) and
/// `memory.oom_control` (v1) have `oom_kill N`; the limits are a number or `max`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkCounterFds {
    /// `pids.events` (v1 and v2): `max` counts refused forks.
    pub pids_events: Option<i32>,
    /// `pids.max`: the task limit.
    pub pids_max: Option<i32>,
    /// `memory.events` (v2) or `memory.oom_control` (v1): `oom_kill` counts OOM kills.
    pub memory_events: Option<i32>,
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1): the memory limit in bytes.
    pub memory_max: Option<i32>,
}

impl WorkCounterFds {
    /// No counter fd at all.
    pub fn is_empty(&self) -> bool {
        self.fds().is_empty()
    }

    /// Every fd present.
    pub fn fds(&self) -> Vec<i32> {
        [
            self.pids_events,
            self.pids_max,
            self.memory_events,
            self.memory_max,
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// File descriptor numbers a sandbox's agent inherits when the runtime boots it as PID 1
/// (`sandboxd agent --boot`). The runtime places them; the agent takes them over.
pub mod boot_fds {
    /// A readable fd holding the JSON [`super::AgentConfig`] (a pipe or memfd), read to EOF.
    pub const CONFIG: i32 = 3;
    /// A listening unix socket (`run/agent.sock`): the public envd API and port tunnel.
    pub const API: i32 = 4;
    /// A listening unix socket (`run/control.sock`): internal control, never proxied.
    pub const CONTROL: i32 = 5;
    /// The workload user namespace ([`super::AgentConfig::workload_userns_fd`]).
    pub const WORKLOAD_USERNS: i32 = 6;
    /// The first `cgroup.procs` fd of the `work` cgroup; the others follow, then the
    /// `work` cgroup's counter fds ([`super::WorkCounterFds`]).
    pub const FIRST_WORK_CGROUP: i32 = 7;
}
