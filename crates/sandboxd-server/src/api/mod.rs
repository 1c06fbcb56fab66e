//! The control plane: the E2B REST API (`api/openapi.yaml`), one module per resource:
//! [`sandboxes`] (`/sandboxes…`, `/v2/sandboxes…`) and [`templates`] (`/templates…`).
//!
//! Routes match on the raw (still percent-encoded) path, so a template id sent as one encoded
//! segment (`team%2Fsnap%3Adefault`) stays one segment. Errors become responses in one place:
//! [`crate::error::ApiError`].

pub mod idempotency;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod sandboxes;
pub mod snapshots;
pub mod templates;
pub mod volumes;

use crate::error::ApiError;
use crate::ids::parse_path_sandbox_id;
use crate::manager::Manager;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The control-plane router.
pub fn router(mgr: Arc<Manager>) -> Router {
    let max_body = mgr.config().max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list_v1))
        .route(
            "/v2/sandboxes",
            get(sandboxes::list_v2).post(sandboxes::create_v2),
        )
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect_v2))
        .route("/sandboxes/{id}", get(sandboxes::get).delete(sandboxes::kill))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/network", put(sandboxes::update_network))
        .route("/templates/aliases/{alias}", get(templates::alias))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route(
            "/templates/{id}",
            axum::routing::delete(snapshots::delete_template),
        )
        .route("/volumes", post(volumes::create).get(volumes::list))
        .route("/volumes/{id}", get(volumes::get).delete(volumes::delete))
        .route("/pool", get(crate::pool::api_status))
        .route("/metrics", get(metrics::prometheus))
        .route("/sandboxes/metrics", get(metrics::latest_many))
        .route("/sandboxes/{id}/metrics", get(metrics::history))
        .route("/sandboxes/{id}/logs", get(logs::logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(logs::logs_v2))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(mgr.clone(), require_api_key))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::Extension(BodyLimit(max_body)))
        .with_state(mgr)
}

async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Every control-plane call but `GET /health` needs the API key (constant-time comparison).
async fn require_api_key(State(mgr): State<Arc<Manager>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let Some(given) = req.headers().get("x-api-key") else {
        return ApiError::Unauthorized("Missing API key: send it in the X-API-Key header".into())
            .into_response();
    };
    let want = mgr.config().api_key.as_bytes();
    if !bool::from(given.as_bytes().ct_eq(want)) {
        return ApiError::Unauthorized("Invalid API key".into()).into_response();
    }
    next.run(req).await
}

/// The control plane's body limit, for the 413 message.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

/// A JSON body parsed with our errors (400 `{"code","message"}`, 413 over the limit).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(ref inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::PayloadTooLarge(limit)
            }
            other => ApiError::BadRequest(format!("cannot read request body: {other}")),
        })?;
        parse_json_body(&bytes).map(JsonBody)
    }
}

/// Decode a JSON request body once it is read: what [`JsonBody`] answers (400 for an empty or
/// invalid body). Public for the fuzz targets.
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("request body is required".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// A sandbox id from the path (`-<clientID>` stripped, validated).
pub struct SandboxId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for SandboxId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("Invalid sandbox ID".into()))?;
        parse_path_sandbox_id(&raw).map(SandboxId)
    }
}

/// A JSON response with `Content-Type: application/json`.
pub(crate) fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => {
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => ApiError::Internal(format!("encoding response: {e}")).into_response(),
    }
}
