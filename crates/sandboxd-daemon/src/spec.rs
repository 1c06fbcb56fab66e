//! The registry row of a new sandbox and the backend spec to boot it, each built in one place
//! (cold create, pool claim, resume).

use crate::params::CreateParams;
use chrono::{DateTime, Utc};
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::{Limits, SandboxSpec, VolumeMount};
use sandboxd_store::{MountRow, SandboxRecord, SandboxState, StoredLimits};

/// The registry row of a new sandbox made for `params` (no agent yet unless the caller sets
/// one; `access_token`: the envd token when the sandbox is secure).
#[allow(clippy::too_many_arguments)]
pub(crate) fn new_record(
    id: String,
    template_id: &str,
    alias: &str,
    state: SandboxState,
    limits: &Limits,
    params: &CreateParams,
    access_token: Option<String>,
    traffic_token: Option<String>,
    started_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
) -> SandboxRecord {
    SandboxRecord {
        seq: 0,
        id,
        template_id: template_id.to_string(),
        alias: Some(alias.to_string()),
        state,
        limits: StoredLimits {
            cpu_count: limits.cpu_count,
            memory_mb: limits.memory_mb,
            disk_mb: limits.disk_mb,
            pids: limits.pids,
        },
        metadata: params.metadata.clone(),
        env_vars: params.env_vars.clone(),
        access_token,
        traffic_token,
        allow_internet_access: params.allow_internet_access,
        network: params.network.clone(),
        started_at,
        end_at,
        agent_pid: None,
        agent_start_time: None,
        allowed_commands: params.allowed_commands.clone(),
    }
}

/// The spec to boot a sandbox's agent for its row (same id, env vars, token, limits, template)
/// with `volumes`.
pub(crate) fn spec_of(rec: &SandboxRecord, volumes: Vec<VolumeMount>) -> SandboxSpec {
    let mut agent = AgentConfig::new(rec.id.clone(), rec.template_id.clone());
    agent.env_vars = rec.env_vars.clone();
    agent.access_token = rec.access_token.clone();
    agent.allowed_commands = rec.allowed_commands.clone();
    SandboxSpec {
        id: rec.id.clone(),
        template: rec.template_id.clone(),
        limits: Limits {
            cpu_count: rec.limits.cpu_count,
            memory_mb: rec.limits.memory_mb,
            disk_mb: rec.limits.disk_mb,
            pids: rec.limits.pids,
        },
        agent,
        volumes,
    }
}

/// The runtime's view of a sandbox's volume rows.
pub(crate) fn volume_mounts(rows: Vec<MountRow>) -> Vec<VolumeMount> {
    rows.into_iter()
        .map(|m| VolumeMount {
            volume_id: m.volume_id,
            path: m.path,
        })
        .collect()
}
