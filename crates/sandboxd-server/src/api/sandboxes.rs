//! `/sandboxes…` and `/v2/sandboxes…`: create, get, list, kill, timeout, connect, pause, resume.

use super::extract::{JsonBody, SandboxId, json, optional_body};
use super::network::NetworkConfig;
use super::sandbox_view::{DetailOut, detail_out, sandbox_detail, sandbox_out};
use crate::error::ApiError;
use crate::listing::{ListQuery, page};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sandboxd_daemon::lifecycle::Lifecycle;
use sandboxd_daemon::{CreateParams, Daemon, Resumed};
use serde::Deserialize;
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
    /// sandboxd-only: the workload's task limit (`docs/limits.md`).
    max_processes: Option<i64>,
    /// sandboxd-only: the command policy (`docs/command-policy.md`).
    allowed_commands: Option<Vec<String>>,
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
    super::extract::parse_json_body::<NewSandbox>(bytes)?.into_params(api)
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
        let lifecycle = Lifecycle {
            auto_pause: self.auto_pause == Some(true),
            auto_pause_memory: self.auto_pause_memory.unwrap_or(true),
            auto_resume,
            ..Default::default()
        };
        let volume_mounts = sandboxd_daemon::volumes::check_mounts(
            self.volume_mounts
                .unwrap_or_default()
                .into_iter()
                .map(super::volumes::VolumeMountIn::into_pair)
                .collect(),
        )?;
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
            max_processes: self.max_processes,
            allowed_commands: self.allowed_commands,
            lifecycle,
            volume_mounts,
        })
    }
}

/// `POST /sandboxes`.
pub(super) async fn create(
    State(daemon): State<Arc<Daemon>>,
    JsonBody(body): JsonBody<NewSandbox>,
) -> Response {
    match body.into_params(CreateApi::V1) {
        Ok(params) => create_with(&daemon, params).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v2/sandboxes`, with an optional `Idempotency-Key` (`idempotency.rs`).
pub(super) async fn create_v2(
    State(daemon): State<Arc<Daemon>>,
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
        Some((key, fp)) => super::idempotency::create_once(&daemon, key, fp, params).await,
        None => create_with(&daemon, params).await,
    }
}

async fn create_with(daemon: &Arc<Daemon>, params: CreateParams) -> Response {
    match daemon.create(params).await {
        Ok(s) => json(StatusCode::CREATED, &sandbox_out(&s, daemon.domain())),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `GET /sandboxes/{id}`.
pub(super) async fn get(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
) -> Result<Response, ApiError> {
    let d = daemon.sandbox_detail(&id).await?;
    Ok(json(
        StatusCode::OK,
        &sandbox_detail(
            &d.view,
            daemon.domain(),
            &d.lifecycle,
            d.volumes,
            daemon.backend().network_address(&id),
        ),
    ))
}

/// `DELETE /sandboxes/{id}`.
pub(super) async fn kill(State(daemon): State<Arc<Daemon>>, SandboxId(id): SandboxId) -> Response {
    match daemon.kill(&id, "killed by API").await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => ApiError::SandboxNotFound(id).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct TimeoutBody {
    timeout: i64,
}

/// `POST /sandboxes/{id}/timeout`.
pub(super) async fn set_timeout(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    JsonBody(body): JsonBody<TimeoutBody>,
) -> Response {
    match daemon.set_timeout(&id, body.timeout).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::from(e).into_response(),
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
    State(daemon): State<Arc<Daemon>>,
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
    match daemon.refresh(&id, secs as u64).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::from(e).into_response(),
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
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    JsonBody(body): JsonBody<ConnectBody>,
) -> Response {
    let Some(secs) = body.timeout else {
        return ApiError::BadRequest("invalid request body: missing field `timeout`".into()).into_response();
    };
    connect_with(&daemon, &id, secs, body.memory).await
}

/// `POST /v2/sandboxes/{id}/connect` (body optional).
pub(super) async fn connect_v2(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    body: axum::body::Bytes,
) -> Response {
    let body: ConnectBody = match optional_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let secs = body.timeout.unwrap_or(V2_CONNECT_TIMEOUT_SECS);
    connect_with(&daemon, &id, secs, body.memory).await
}

async fn connect_with(daemon: &Arc<Daemon>, id: &str, secs: i64, memory: Option<bool>) -> Response {
    match daemon.connect(id, secs, memory != Some(false)).await {
        Ok(Resumed::Resumed(s)) => json(StatusCode::CREATED, &sandbox_out(&s, daemon.domain())),
        Ok(Resumed::WasRunning(s)) => json(StatusCode::OK, &sandbox_out(&s, daemon.domain())),
        Err(e) => ApiError::from(e).into_response(),
    }
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
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    body: axum::body::Bytes,
) -> Response {
    let body: PauseBody = match optional_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match daemon.pause(&id, body.memory).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::from(e).into_response(),
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
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    body: axum::body::Bytes,
) -> Response {
    let body: ResumeBody = match optional_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match daemon.resume(&id, body.timeout, body.memory != Some(false)).await {
        Ok(s) => json(StatusCode::CREATED, &sandbox_out(&s, daemon.domain())),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn list_response(daemon: &Daemon, q: &ListQuery) -> (Vec<DetailOut>, Option<String>) {
    let views = daemon.list_sandboxes(q.template.as_deref());
    let (items, token) = page(views, q, q.template.as_deref());
    (items.iter().map(|v| detail_out(v, None)).collect(), token)
}

/// `GET /v2/sandboxes`.
pub(super) async fn list_v2(State(daemon): State<Arc<Daemon>>, uri: Uri) -> Response {
    let q = match ListQuery::parse_v2(uri.query()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let (items, token) = list_response(&daemon, &q);
    let mut resp = json(StatusCode::OK, &items);
    if let Some(t) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", t);
    }
    resp
}

/// `GET /sandboxes` (v1: running only).
pub(super) async fn list_v1(State(daemon): State<Arc<Daemon>>, uri: Uri) -> Response {
    match ListQuery::parse_v1(uri.query()) {
        Ok(q) => json(StatusCode::OK, &list_response(&daemon, &q).0),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandboxd_daemon::SandboxView;
    use sandboxd_store::SandboxState;

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
            // network values are the domain's to check (sandboxd_daemon::network::check_network)
            serde_json::json!({"templateID":"base","network":[1]}),
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
            allowed_commands: None,
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
