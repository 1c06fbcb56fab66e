//! `/sandboxes…` and `/v2/sandboxes…`: create, get, list, kill, timeout, connect, pause, resume.

use super::network::{NetworkConfig, NetworkUpdate, public_view};
use super::{JsonBody, SandboxId, json};
use crate::error::ApiError;
use crate::ids::{CLIENT_ID, format_time};
use crate::lifecycle::Resumed;
use crate::listing::{ListQuery, page};
use crate::manager::{CreateParams, Manager};
use crate::sandbox::{LiveSandbox, SandboxView};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sandboxd_protocol::ENVD_VERSION;
use sandboxd_store::SandboxState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest number of metadata entries or env vars in a create request.
const MAX_MAP_ENTRIES: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<i64>,
    secure: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
    auto_pause: Option<bool>,
    auto_pause_memory: Option<bool>,
    auto_resume: Option<serde_json::Value>,
    network: Option<serde_json::Value>,
    #[allow(dead_code)]
    mcp: Option<serde_json::Value>,
    volume_mounts: Option<Vec<super::volumes::VolumeMountIn>>,
    iam: Option<serde_json::Value>,
    cpu_count: Option<i64>,
    #[serde(rename = "memoryMB")]
    memory_mb: Option<i64>,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: Option<i64>,
}

fn check_map(name: &str, m: &BTreeMap<String, String>, env: bool) -> Result<(), ApiError> {
    if m.len() > MAX_MAP_ENTRIES {
        return Err(ApiError::BadRequest(format!(
            "{name}: at most {MAX_MAP_ENTRIES} entries"
        )));
    }
    for (k, v) in m {
        if env && (k.is_empty() || k.contains('=') || k.contains('\0')) {
            return Err(ApiError::BadRequest(format!(
                "{name}: invalid variable name {k:?}"
            )));
        }
        if v.contains('\0') || k.contains('\0') {
            return Err(ApiError::BadRequest(format!("{name}: {k:?} contains a NUL byte")));
        }
    }
    Ok(())
}

/// Which create route a body came to: their defaults differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CreateApi {
    /// `POST /sandboxes` (`NewSandbox`): `timeout` default 15, `secure` default false.
    V1,
    /// `POST /v2/sandboxes` (`NewSandboxV2`): `timeout` default 300, always secured (a
    /// `secure` key is ignored).
    V2,
}

/// A create body as the daemon reads it (`POST /sandboxes`, or `POST /v2/sandboxes` when `v2`):
/// the parameters handed to the manager, or the 4xx answered. Public for the fuzz targets.
pub fn parse_create_body(bytes: &[u8], v2: bool) -> Result<CreateParams, ApiError> {
    let api = if v2 { CreateApi::V2 } else { CreateApi::V1 };
    super::parse_json_body::<NewSandbox>(bytes)?.into_params(api)
}

impl NewSandbox {
    fn into_params(self, api: CreateApi) -> Result<CreateParams, ApiError> {
        let metadata = self.metadata.unwrap_or_default();
        let env_vars = self.env_vars.unwrap_or_default();
        check_map("metadata", &metadata, false)?;
        check_map("envVars", &env_vars, true)?;
        if self.auto_pause_memory.is_some() && self.auto_pause != Some(true) {
            return Err(ApiError::BadRequest("autoPauseMemory requires autoPause".into()));
        }
        let auto_resume = match &self.auto_resume {
            None | Some(serde_json::Value::Null) => false,
            Some(v) => match v.get("enabled") {
                Some(serde_json::Value::Bool(b)) => *b,
                None | Some(serde_json::Value::Null) if v.is_object() => false,
                _ => {
                    return Err(ApiError::BadRequest(
                        "autoResume must be an object {\"enabled\": bool}".into(),
                    ));
                }
            },
        };
        let lifecycle = crate::lifecycle::Lifecycle {
            auto_pause: self.auto_pause == Some(true),
            auto_pause_memory: self.auto_pause_memory.unwrap_or(true),
            auto_resume,
            ..Default::default()
        };
        let volume_mounts = super::volumes::check_mounts(self.volume_mounts.unwrap_or_default())?;
        if self
            .iam
            .as_ref()
            .is_some_and(|v| !v.is_null() && v != &serde_json::json!({}))
        {
            return Err(ApiError::BadRequest(
                "iam tokens are not supported by this server".into(),
            ));
        }
        let secure = match api {
            CreateApi::V1 => self.secure.unwrap_or(false),
            CreateApi::V2 => true,
        };
        let mut restrict_public_traffic = false;
        if let Some(net) = &self.network
            && !net.is_null()
        {
            let parsed = NetworkConfig::parse(net)?;
            if parsed.allow_public_traffic == Some(false) {
                if !secure {
                    return Err(ApiError::BadRequest(
                        "You cannot create a sandbox without public access unless you enable secure envd access via 'secure' flag.".into(),
                    ));
                }
                restrict_public_traffic = true;
            }
        }
        Ok(CreateParams {
            template: self.template_id,
            timeout_secs: self.timeout.unwrap_or(match api {
                CreateApi::V1 => 15,
                CreateApi::V2 => 300,
            }),
            secure,
            allow_internet_access: self.allow_internet_access.unwrap_or(true),
            metadata,
            env_vars,
            network: self.network.filter(|n| !n.is_null()),
            restrict_public_traffic,
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            disk_mb: self.disk_size_mb,
            lifecycle,
            volume_mounts,
        })
    }
}

/// `Sandbox` (create, connect).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxOut {
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

pub(crate) fn sandbox_out(s: &LiveSandbox, domain: &str) -> SandboxOut {
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
struct DetailOut {
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
    /// sandboxd-only: what the sandbox can reach. Egress settings (`allowInternetAccess`,
    /// `network`) are stored but not enforced yet: sandboxes have loopback only.
    network_access: &'static str,
    /// `[{name, path}]` of the volumes it mounts (`docs/volumes.md`).
    volume_mounts: Vec<VolumeMountOut>,
}

#[derive(Debug, Serialize)]
struct VolumeMountOut {
    name: String,
    path: String,
}

/// [`DetailOnly::network_access`] until egress networking lands.
const NETWORK_ACCESS: &str = "loopback-only";

fn api_state(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Paused => "paused",
        _ => "running",
    }
}

fn detail_out(v: &SandboxView, domain: Option<&str>) -> DetailOut {
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
            volume_mounts: Vec::new(),
        }),
    }
}

/// `POST /sandboxes`.
pub(super) async fn create(
    State(mgr): State<Arc<Manager>>,
    JsonBody(body): JsonBody<NewSandbox>,
) -> Response {
    match body.into_params(CreateApi::V1) {
        Ok(params) => create_with(&mgr, params).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v2/sandboxes`, with an optional `Idempotency-Key` (`idempotency.rs`).
pub(super) async fn create_v2(
    State(mgr): State<Arc<Manager>>,
    headers: axum::http::HeaderMap,
    JsonBody(raw): JsonBody<serde_json::Value>,
) -> Response {
    let key = match super::idempotency::key_of(&headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let fingerprint = key.as_ref().map(|_| super::idempotency::fingerprint(&raw));
    // a bad body is refused before a key is claimed
    let params = match serde_json::from_value::<NewSandbox>(raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
        .and_then(|b| b.into_params(CreateApi::V2))
    {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match key.zip(fingerprint) {
        Some((key, fp)) => super::idempotency::create_once(&mgr, key, fp, params).await,
        None => create_with(&mgr, params).await,
    }
}

async fn create_with(mgr: &Arc<Manager>, params: CreateParams) -> Response {
    match mgr.create(params).await {
        Ok(s) => json(StatusCode::CREATED, &sandbox_out(&s, mgr.domain())),
        Err(e) => e.into_response(),
    }
}

/// `GET /sandboxes/{id}`.
pub(super) async fn get(State(mgr): State<Arc<Manager>>, SandboxId(id): SandboxId) -> Response {
    match mgr.sandboxes.get(&id) {
        Some(s) if matches!(s.state(), SandboxState::Running | SandboxState::Paused) => {
            let view = SandboxView::of(&s);
            let mut out = detail_out(&view, Some(mgr.domain()));
            if let Some(d) = out.detail.as_mut() {
                let lc = mgr.lifecycle.get(&id);
                d.lifecycle = lc.detail_json();
                d.paused_with_memory = lc.paused_memory.filter(|_| view.state == SandboxState::Paused);
                d.pause_mode = d
                    .paused_with_memory
                    .map(|m| if m { "full" } else { "filesystem" });
                d.lifecycle_note = lc.note;
                let id2 = id.clone();
                match mgr.db(move |s| s.sandbox_volumes(&id2)).await {
                    Ok(m) => {
                        d.volume_mounts = m
                            .into_iter()
                            .map(|m| VolumeMountOut {
                                name: m.name,
                                path: m.path,
                            })
                            .collect();
                    }
                    Err(e) => return ApiError::from(e).into_response(),
                }
            }
            json(StatusCode::OK, &out)
        }
        _ => ApiError::SandboxNotFound(id).into_response(),
    }
}

/// `DELETE /sandboxes/{id}`.
pub(super) async fn kill(State(mgr): State<Arc<Manager>>, SandboxId(id): SandboxId) -> Response {
    match mgr.kill(&id, "killed by API").await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => ApiError::SandboxNotFound(id).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct TimeoutBody {
    timeout: i64,
}

/// `POST /sandboxes/{id}/timeout`.
pub(super) async fn set_timeout(
    State(mgr): State<Arc<Manager>>,
    SandboxId(id): SandboxId,
    JsonBody(body): JsonBody<TimeoutBody>,
) -> Response {
    match mgr.set_timeout(&id, body.timeout).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Body of `POST /sandboxes/{id}/refreshes`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RefreshBody {
    duration: Option<i64>,
}

/// `POST /sandboxes/{id}/refreshes` (deprecated upstream): keep the sandbox alive for
/// `duration` seconds more (0..3600, default 15).
pub(super) async fn refresh(
    State(mgr): State<Arc<Manager>>,
    SandboxId(id): SandboxId,
    body: axum::body::Bytes,
) -> Response {
    let secs = match optional_body::<RefreshBody>(&body) {
        Ok(b) => b.duration.unwrap_or(15),
        Err(e) => return e.into_response(),
    };
    if !(0..=3600).contains(&secs) {
        return ApiError::BadRequest("duration must be between 0 and 3600 seconds".into()).into_response();
    }
    match mgr.refresh(&id, secs as u64).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `PUT /sandboxes/{id}/network`: replace the egress settings (stored; not enforced yet).
pub(super) async fn update_network(
    State(mgr): State<Arc<Manager>>,
    SandboxId(id): SandboxId,
    JsonBody(raw): JsonBody<serde_json::Value>,
) -> Response {
    let parsed = serde_json::from_value::<NetworkUpdate>(raw.clone())
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")));
    let (egress, allow) = match parsed.and_then(|b| {
        let allow = b.allow_internet_access;
        b.into_egress(&raw).map(|e| (e, allow))
    }) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    match mgr.update_network(&id, egress, allow).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Body of `POST /sandboxes/{id}/connect` (`timeout` required) and of
/// `POST /v2/sandboxes/{id}/connect` (optional body, `timeout` default 300).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ConnectBody {
    timeout: Option<i64>,
    /// `false`: a paused sandbox boots afresh on its files, never restoring memory (a no-op
    /// on a running sandbox). Absent or `true`: restore what the pause kept.
    memory: Option<bool>,
}

/// Timeout of a v2 connect without one.
const V2_CONNECT_TIMEOUT_SECS: i64 = 300;

/// `POST /sandboxes/{id}/connect`.
pub(super) async fn connect(
    State(mgr): State<Arc<Manager>>,
    SandboxId(id): SandboxId,
    JsonBody(body): JsonBody<ConnectBody>,
) -> Response {
    let Some(secs) = body.timeout else {
        return ApiError::BadRequest("invalid request body: missing field `timeout`".into()).into_response();
    };
    connect_with(&mgr, &id, secs, body.memory).await
}

/// `POST /v2/sandboxes/{id}/connect` (body optional).
pub(super) async fn connect_v2(
    State(mgr): State<Arc<Manager>>,
    SandboxId(id): SandboxId,
    body: axum::body::Bytes,
) -> Response {
    let body: ConnectBody = match optional_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let secs = body.timeout.unwrap_or(V2_CONNECT_TIMEOUT_SECS);
    connect_with(&mgr, &id, secs, body.memory).await
}

async fn connect_with(mgr: &Arc<Manager>, id: &str, secs: i64, memory: Option<bool>) -> Response {
    match crate::lifecycle::connect(mgr, id, secs, memory != Some(false)).await {
        Ok(Resumed::Resumed(s)) => json(StatusCode::CREATED, &sandbox_out(&s, mgr.domain())),
        Ok(Resumed::WasRunning(s)) => json(StatusCode::OK, &sandbox_out(&s, mgr.domain())),
        Err(e) => e.into_response(),
    }
}

/// Parses an optional JSON body (missing or empty: the defaults).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct PauseBody {
    memory: bool,
}

impl Default for PauseBody {
    fn default() -> Self {
        Self { memory: true }
    }
}

/// `POST /sandboxes/{id}/pause` `{"memory": bool = true}`: 204; 409 already paused; 404.
pub(super) async fn pause(
    State(mgr): State<Arc<Manager>>,
    SandboxId(id): SandboxId,
    body: axum::body::Bytes,
) -> Response {
    let body: PauseBody = match optional_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match crate::lifecycle::pause(&mgr, &id, body.memory).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ResumeBody {
    timeout: i64,
    #[allow(dead_code)]
    auto_pause: Option<bool>,
    /// As on connect: `false` boots afresh on the kept files.
    memory: Option<bool>,
}

impl Default for ResumeBody {
    fn default() -> Self {
        Self {
            timeout: 15,
            auto_pause: None,
            memory: None,
        }
    }
}

/// `POST /sandboxes/{id}/resume` (deprecated) `{"timeout"?: 15, "memory"?: bool}`: 201; 409
/// if running; 404.
pub(super) async fn resume(
    State(mgr): State<Arc<Manager>>,
    SandboxId(id): SandboxId,
    body: axum::body::Bytes,
) -> Response {
    let body: ResumeBody = match optional_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match crate::lifecycle::resume(&mgr, &id, body.timeout, body.memory != Some(false)).await {
        Ok(s) => json(StatusCode::CREATED, &sandbox_out(&s, mgr.domain())),
        Err(e) => e.into_response(),
    }
}

fn list_response(mgr: &Manager, q: &ListQuery) -> (Vec<DetailOut>, Option<String>) {
    let template = match &q.template {
        None => None,
        Some(t) if mgr.template_exists(t) => Some(t.clone()),
        // An unknown template matches nothing (200 []).
        Some(_) => return (Vec::new(), None),
    };
    let (items, token) = page(mgr.views(), q, template.as_deref());
    (items.iter().map(|v| detail_out(v, None)).collect(), token)
}

/// `GET /v2/sandboxes`.
pub(super) async fn list_v2(State(mgr): State<Arc<Manager>>, uri: Uri) -> Response {
    let q = match ListQuery::parse_v2(uri.query()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let (items, token) = list_response(&mgr, &q);
    let mut resp = json(StatusCode::OK, &items);
    if let Some(t) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", t);
    }
    resp
}

/// `GET /sandboxes` (v1: running only).
pub(super) async fn list_v1(State(mgr): State<Arc<Manager>>, uri: Uri) -> Response {
    match ListQuery::parse_v1(uri.query()) {
        Ok(q) => json(StatusCode::OK, &list_response(&mgr, &q).0),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_as(api: CreateApi, v: serde_json::Value) -> Result<CreateParams, ApiError> {
        serde_json::from_value::<NewSandbox>(v)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?
            .into_params(api)
    }

    fn parse(v: serde_json::Value) -> Result<CreateParams, ApiError> {
        parse_as(CreateApi::V1, v)
    }

    /// The exact bodies the newest SDKs send to `POST /v2/sandboxes` (`docs/contract.md` §2).
    #[test]
    fn v2_bodies_of_the_newest_sdks() {
        // js 2.51 create()
        let p = parse_as(CreateApi::V2, serde_json::json!({"templateID":"base"})).unwrap();
        assert_eq!(p.template, "base");
        assert_eq!(p.timeout_secs, 300);
        assert!(p.secure && p.allow_internet_access && p.metadata.is_empty() && p.env_vars.is_empty());
        // py 2.63 create()
        let p = parse_as(
            CreateApi::V2,
            serde_json::json!({"templateID":"base","metadata":{},"envVars":{}}),
        )
        .unwrap();
        assert_eq!(p.timeout_secs, 300);
        assert!(p.secure);
        // py 2.63 create(timeout=120, metadata=..., envs=...)
        let p = parse_as(
            CreateApi::V2,
            serde_json::json!({"templateID":"base","timeout":120,"metadata":{"a":"b"},"envVars":{"X":"1"}}),
        )
        .unwrap();
        assert_eq!(p.timeout_secs, 120);
        assert_eq!(p.metadata["a"], "b");
        assert_eq!(p.env_vars["X"], "1");
        // `secure` is not part of v2: every v2 sandbox is secured
        let p = parse_as(
            CreateApi::V2,
            serde_json::json!({"templateID":"base","secure":false}),
        )
        .unwrap();
        assert!(p.secure);
        // so allowPublicTraffic: false needs no `secure`
        let p = parse_as(
            CreateApi::V2,
            serde_json::json!({"templateID":"base","network":{"allowPublicTraffic":false}}),
        )
        .unwrap();
        assert!(p.restrict_public_traffic);
        // allow_internet_access left out: on; sent: kept
        let p = parse_as(
            CreateApi::V2,
            serde_json::json!({"templateID":"base","allow_internet_access":false}),
        )
        .unwrap();
        assert!(!p.allow_internet_access);
        // the v1 defaults stay
        let p = parse(serde_json::json!({"templateID":"base"})).unwrap();
        assert_eq!(p.timeout_secs, 15);
        assert!(!p.secure);
    }

    /// Keys of newer API versions never fail a request (upstream ignores them too).
    #[test]
    fn unknown_keys_are_accepted_in_every_body() {
        let p = parse_as(
            CreateApi::V2,
            serde_json::json!({"templateID":"base","someNewerField":{"x":1},"secure":true}),
        )
        .unwrap();
        assert_eq!(p.template, "base");
        let extra = br#"{"someNewerField": 1}"#;
        assert!(
            optional_body::<PauseBody>(br#"{"memory":true,"requireHealthyGuest":true}"#)
                .unwrap()
                .memory
        );
        assert_eq!(optional_body::<ResumeBody>(extra).unwrap().timeout, 15);
        assert_eq!(optional_body::<RefreshBody>(extra).unwrap().duration, None);
        assert_eq!(optional_body::<ConnectBody>(extra).unwrap().timeout, None);
        let t: TimeoutBody = serde_json::from_slice(br#"{"timeout":5,"someNewerField":1}"#).unwrap();
        assert_eq!(t.timeout, 5);
    }

    /// Connect bodies: `{}` and `{"memory": false}` (newest SDKs), `{"timeout": n}` (older).
    #[test]
    fn connect_bodies() {
        let b: ConnectBody = optional_body(b"").unwrap();
        assert_eq!((b.timeout, b.memory), (None, None));
        let b: ConnectBody = optional_body(b"{}").unwrap();
        assert_eq!((b.timeout, b.memory), (None, None));
        let b: ConnectBody = optional_body(br#"{"memory": false}"#).unwrap();
        assert_eq!((b.timeout, b.memory), (None, Some(false)));
        let b: ConnectBody = optional_body(br#"{"timeout": 60, "memory": true, "later": 1}"#).unwrap();
        assert_eq!((b.timeout, b.memory), (Some(60), Some(true)));
        for bad in [&br#"{"memory": "no"}"#[..], br#"{"timeout": "x"}"#, b"[]", b"{"] {
            assert_eq!(optional_body::<ConnectBody>(bad).unwrap_err().status(), 400);
        }
        let r: ResumeBody = optional_body(br#"{"memory": false}"#).unwrap();
        assert_eq!((r.timeout, r.memory), (15, Some(false)));
    }

    #[test]
    fn sdk_default_body_parses() {
        let p = parse(serde_json::json!({"templateID":"base","timeout":60,"secure":true,
            "allow_internet_access":true,"metadata":{},"envVars":{}}))
        .unwrap();
        assert_eq!(p.template, "base");
        assert_eq!(p.timeout_secs, 60);
        assert!(p.secure && p.allow_internet_access && !p.restrict_public_traffic);
    }

    #[test]
    fn missing_timeout_defaults_to_15_and_sandboxd_fields_parse() {
        let p = parse(serde_json::json!({"templateID":"base","cpuCount":1,"memoryMB":256,"diskSizeMB":0}))
            .unwrap();
        assert_eq!(p.timeout_secs, 15);
        assert_eq!(
            (p.cpu_count, p.memory_mb, p.disk_mb),
            (Some(1), Some(256), Some(0))
        );
        assert!(!p.secure);
    }

    #[test]
    fn bad_bodies() {
        for v in [
            serde_json::json!({"timeout": 5}),
            serde_json::json!({"templateID": 5}),
            serde_json::json!({"templateID":"base","timeout":"x"}),
            serde_json::json!({"templateID":"base","metadata":{"a":1}}),
            serde_json::json!({"templateID":"base","envVars":{"A=B":"x"}}),
            serde_json::json!({"templateID":"base","autoPauseMemory":false}),
            serde_json::json!({"templateID":"base","autoResume":{"enabled":"yes"}}),
            serde_json::json!({"templateID":"base","autoResume":true}),
            serde_json::json!({"templateID":"base","network":{"allowPublicTraffic":false}}),
            serde_json::json!({"templateID":"base","network":{"allowOut":"x"}}),
            serde_json::json!({"templateID":"base","volumeMounts":[{"name":"v","path":"/proc"}]}),
        ] {
            assert_eq!(parse(v.clone()).unwrap_err().status(), 400, "{v}");
        }
        let p = parse(serde_json::json!({"templateID":"base","secure":true,
            "network":{"allowPublicTraffic":false}}))
        .unwrap();
        assert!(p.restrict_public_traffic);
    }

    #[test]
    fn lifecycle_fields_parse() {
        let p = parse(serde_json::json!({"templateID":"base"})).unwrap();
        assert!(p.lifecycle.is_default());
        let p = parse(serde_json::json!({"templateID":"base","autoPause":true,
            "autoPauseMemory":false,"autoResume":{"enabled":true}}))
        .unwrap();
        assert!(p.lifecycle.auto_pause && !p.lifecycle.auto_pause_memory && p.lifecycle.auto_resume);
        let p = parse(serde_json::json!({"templateID":"base","autoPause":true,"autoResume":{}})).unwrap();
        assert!(p.lifecycle.auto_pause && p.lifecycle.auto_pause_memory && !p.lifecycle.auto_resume);
        assert!(optional_body::<PauseBody>(b"").unwrap().memory);
        assert!(!optional_body::<PauseBody>(br#"{"memory":false}"#).unwrap().memory);
        assert!(optional_body::<PauseBody>(b"{}").unwrap().memory);
        assert_eq!(optional_body::<PauseBody>(b"{").unwrap_err().status(), 400);
        assert_eq!(
            optional_body::<PauseBody>(br#"{"memory":1}"#)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(optional_body::<ResumeBody>(b"").unwrap().timeout, 15);
    }

    #[test]
    fn detail_has_all_required_keys() {
        use chrono::TimeZone;
        let t = chrono::Utc.timestamp_micros(1_767_323_045_123_456).unwrap();
        let rec = sandboxd_store::SandboxRecord {
            seq: 1,
            id: "iabc".into(),
            template_id: "base".into(),
            alias: Some("base".into()),
            state: SandboxState::Running,
            limits: sandboxd_store::StoredLimits {
                cpu_count: 2,
                memory_mb: 512,
                disk_mb: 1024,
                pids: 1024,
            },
            metadata: BTreeMap::new(),
            env_vars: BTreeMap::new(),
            access_token: Some("tok".into()),
            traffic_token: None,
            allow_internet_access: true,
            network: None,
            started_at: t,
            end_at: t,
            agent_pid: None,
            agent_start_time: None,
        };
        let v = SandboxView {
            rec,
            state: SandboxState::Running,
            end_at: t,
        };
        let d = serde_json::to_value(detail_out(&v, Some("localhost:3000"))).unwrap();
        for k in [
            "templateID",
            "sandboxID",
            "clientID",
            "startedAt",
            "endAt",
            "envdVersion",
            "cpuCount",
            "memoryMB",
            "diskSizeMB",
            "state",
            "envdAccessToken",
            "domain",
            "metadata",
        ] {
            assert!(d.get(k).is_some(), "missing {k} in {d}");
        }
        assert_eq!(d["startedAt"], "2026-01-02T03:04:05.123456Z");
        assert_eq!(d["state"], "running");
        // the info says that egress is not enforced (sandboxes have loopback only)
        assert_eq!(d["networkAccess"], "loopback-only");
        let listed = serde_json::to_value(detail_out(&v, None)).unwrap();
        assert!(listed.get("envdAccessToken").is_none() && listed.get("domain").is_none());
        assert_eq!(listed["envdVersion"], "0.6.13");
        // newest-SDK fields: only for paused sandboxes
        assert!(d.get("envdUnresponsiveAtPause").is_none() && d.get("pauseMode").is_none());
        let paused = SandboxView {
            state: SandboxState::Paused,
            ..v
        };
        let listed = serde_json::to_value(detail_out(&paused, None)).unwrap();
        assert_eq!(listed["envdUnresponsiveAtPause"], false);
        assert_eq!(listed["state"], "paused");
    }
}
