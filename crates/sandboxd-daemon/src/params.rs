//! The input of a create: a validated request (the HTTP layer parses the JSON into this).

use crate::lifecycle::Lifecycle;
use std::collections::BTreeMap;

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
    /// `maxProcesses`: the workload's task limit (processes and threads; the agent is not
    /// counted), at most the template's default.
    pub max_processes: Option<i64>,
    /// `allowedCommands`, checked (`command_policy.rs`): the only programs workload processes
    /// may execute (`docs/command-policy.md`).
    pub allowed_commands: Option<Vec<String>>,
    /// autoPause / autoPauseMemory / autoResume (`lifecycle.rs`).
    pub lifecycle: Lifecycle,
    /// `volumeMounts`, checked: `(volume name, absolute path)` (`docs/volumes.md`).
    pub volume_mounts: Vec<(String, String)>,
}
