//! The JSON shapes of a sandbox in responses: `Sandbox` (create, connect), `SandboxDetail`
//! (get) and `ListedSandbox` (list).

use super::network::public_view;
use crate::ids::{CLIENT_ID, format_time};
use sandboxd_daemon::lifecycle::Lifecycle;
use sandboxd_daemon::{LiveSandbox, SandboxView};
use sandboxd_protocol::ENVD_VERSION;
use sandboxd_store::{MountRow, SandboxState};
use serde::Serialize;
use std::collections::BTreeMap;

/// `Sandbox` (create, connect).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxOut {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
    traffic_access_token: Option<String>,
    domain: String,
}

/// The `Sandbox` body of a live sandbox.
pub fn sandbox_out(s: &LiveSandbox, domain: &str) -> SandboxOut {
    SandboxOut {
        template_id: s.rec.template_id.clone(),
        sandbox_id: s.rec.id.clone(),
        client_id: CLIENT_ID,
        envd_version: ENVD_VERSION,
        alias: s.rec.alias.clone(),
        envd_access_token: s.rec.access_token.clone(),
        traffic_access_token: s.rec.traffic_token.clone(),
        domain: domain.to_string(),
    }
}

/// `SandboxDetail` (GET) and, without the detail-only keys, `ListedSandbox`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetailOut {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    started_at: String,
    end_at: String,
    envd_version: &'static str,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    state: &'static str,
    metadata: BTreeMap<String, String>,
    /// Paused sandboxes only: the snapshot was taken while envd did not answer. Always false
    /// here: a memory pause freezes the whole sandbox at once, envd included.
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_unresponsive_at_pause: Option<bool>,
    #[serde(flatten)]
    detail: Option<DetailOnly>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailOnly {
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
    allow_internet_access: bool,
    domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<serde_json::Value>,
    lifecycle: serde_json::Value,
    /// Paused sandboxes only: what the pause kept, `full` (memory and files) or `filesystem`
    /// (the SDK accepts no other value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pause_mode: Option<&'static str>,
    /// sandboxd-only: while paused, whether the pause kept memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    paused_with_memory: Option<bool>,
    /// sandboxd-only: a lifecycle event the user should know about (memory lost by a reboot).
    #[serde(skip_serializing_if = "Option::is_none")]
    lifecycle_note: Option<String>,
    /// sandboxd-only: `egress` when the sandbox has a network link (its policy enforced,
    /// `docs/network.md`), `loopback-only` when the daemon runs without networking.
    network_access: &'static str,
    /// sandboxd-only: the sandbox's own address on the daemon's sandbox range.
    #[serde(skip_serializing_if = "Option::is_none")]
    network_address: Option<String>,
    /// `[{name, path}]` of the volumes it mounts (`docs/volumes.md`).
    volume_mounts: Vec<VolumeMountOut>,
}

#[derive(Debug, Serialize)]
struct VolumeMountOut {
    name: String,
    path: String,
}

/// [`DetailOnly::network_access`] of a sandbox without a network link.
const NETWORK_ACCESS: &str = "loopback-only";

fn api_state(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Paused => "paused",
        _ => "running",
    }
}

/// `ListedSandbox` (no `domain`) or the base of `SandboxDetail` (with it).
pub fn detail_out(v: &SandboxView, domain: Option<&str>) -> DetailOut {
    DetailOut {
        template_id: v.rec.template_id.clone(),
        sandbox_id: v.rec.id.clone(),
        client_id: CLIENT_ID,
        alias: v.rec.alias.clone(),
        started_at: format_time(v.rec.started_at),
        end_at: format_time(v.end_at),
        envd_version: ENVD_VERSION,
        cpu_count: v.rec.limits.cpu_count,
        memory_mb: v.rec.limits.memory_mb,
        disk_size_mb: v.rec.limits.disk_mb,
        state: api_state(v.state),
        metadata: v.rec.metadata.clone(),
        envd_unresponsive_at_pause: (v.state == SandboxState::Paused).then_some(false),
        detail: domain.map(|d| DetailOnly {
            envd_access_token: v.rec.access_token.clone(),
            allow_internet_access: v.rec.allow_internet_access,
            domain: d.to_string(),
            network: v.rec.network.as_ref().map(public_view),
            lifecycle: serde_json::json!({"autoResume": false, "onTimeout": "kill"}),
            pause_mode: None,
            paused_with_memory: None,
            lifecycle_note: None,
            network_access: NETWORK_ACCESS,
            network_address: None,
            volume_mounts: Vec::new(),
        }),
    }
}

/// `SandboxDetail`: the listed shape plus the detail-only keys, the lifecycle settings and the
/// volumes it mounts, and its network address when it has a link.
pub fn sandbox_detail(
    v: &SandboxView,
    domain: &str,
    lc: &Lifecycle,
    mounts: Vec<MountRow>,
    address: Option<std::net::Ipv4Addr>,
) -> DetailOut {
    let mut out = detail_out(v, Some(domain));
    if let Some(d) = out.detail.as_mut() {
        if let Some(a) = address {
            d.network_access = "egress";
            d.network_address = Some(a.to_string());
        }
        d.lifecycle = lc.detail_json();
        d.paused_with_memory = lc.paused_memory.filter(|_| v.state == SandboxState::Paused);
        d.pause_mode = d
            .paused_with_memory
            .map(|m| if m { "full" } else { "filesystem" });
        d.lifecycle_note = lc.note.clone();
        d.volume_mounts = mounts
            .into_iter()
            .map(|m| VolumeMountOut {
                name: m.name,
                path: m.path,
            })
            .collect();
    }
    out
}
