//! The control plane: the E2B REST API (`api/openapi.yaml`). [`router`] is the table from
//! URL to handler; each resource has one module whose handlers each call one
//! [`sandboxd_daemon::Daemon`] method: [`sandboxes`] (create, get, list, kill, timeout,
//! refresh, connect, pause, resume), [`network`], [`snapshots`] (snapshots, fork, template
//! delete), [`templates`], [`volumes`], [`volume_content`], [`secrets`], [`metrics`], [`logs`],
//! [`pool`].
//! The session API (`/workspace/se/…`, `api/sessions.yaml`) is [`sessions`], each handler
//! calling one operation of [`sandboxd_daemon::sessions`].
//!
//! Routes match on the raw (still percent-encoded) path, so a template id sent as one encoded
//! segment (`team%2Fsnap%3Adefault`) stays one segment. Errors become responses in one place:
//! [`crate::error::ApiError`].

pub mod extract;
pub mod idempotency;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod pool;
pub mod sandbox_view;
pub mod sandboxes;
pub mod secrets;
pub mod sessions;
pub mod snapshots;
pub mod template_builds;
pub mod templates;
pub mod volume_content;
pub mod volumes;

pub use extract::parse_json_body;

use crate::error::ApiError;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use extract::BodyLimit;
use sandboxd_daemon::Daemon;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The control-plane router: every route of the API and its handler.
pub fn router(daemon: Arc<Daemon>, api_key: &str, max_body: usize) -> Router {
    let api_key: Arc<str> = Arc::from(api_key);
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
        .route("/sandboxes/{id}/network", put(network::update))
        .route("/templates/aliases/{alias}", get(templates::alias))
        .route("/templates", get(template_builds::list))
        .route("/images/import", post(images::import))
        .route("/v3/templates", post(template_builds::request))
        .route("/templates/{id}/files/{hash}", get(template_builds::upload_link))
        .route("/template-files/{token}", put(template_builds::upload))
        .route("/v2/templates/{id}/builds/{build}", post(template_builds::start))
        .route(
            "/templates/{id}/builds/{build}/status",
            get(template_builds::status),
        )
        .route("/templates/{id}/builds/{build}/logs", get(template_builds::logs))
        .route(
            "/templates/tags",
            post(template_builds::assign_tags).delete(template_builds::remove_tags),
        )
        .route("/templates/{id}/tags", get(template_builds::tags))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route(
            "/templates/{id}",
            axum::routing::delete(snapshots::delete_template).patch(templates::update),
        )
        .route("/v2/templates/{id}", axum::routing::patch(templates::update))
        .route("/volumes", post(volumes::create).get(volumes::list))
        .route(
            "/volumecontent/{id}/path",
            get(volume_content::stat)
                .patch(volume_content::update_metadata)
                .delete(volume_content::remove),
        )
        .route(
            "/volumecontent/{id}/dir",
            get(volume_content::list).post(volume_content::make_dir),
        )
        .route(
            "/volumecontent/{id}/file",
            get(volume_content::read_file).put(volume_content::write_file),
        )
        .route("/volumes/{id}", get(volumes::get).delete(volumes::delete))
        .route("/secrets", post(secrets::create).get(secrets::list))
        .route(
            "/secrets/{id}",
            get(secrets::get).post(secrets::update).delete(secrets::delete),
        )
        .route("/pool", get(pool::status))
        .route("/metrics", get(metrics::prometheus))
        .route("/sandboxes/metrics", get(metrics::latest_many))
        .route("/sandboxes/{id}/metrics", get(metrics::history))
        .route("/sandboxes/{id}/logs", get(logs::logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(logs::logs_v2))
        .route("/workspace/se/healthy", get(sessions::healthy))
        .route("/workspace/se/openapi.yaml", get(sessions::openapi))
        .route(
            "/workspace/se/session/{session_id}",
            post(sessions::create_session).delete(sessions::delete_session),
        )
        .route("/workspace/se/create/{session_id}", post(sessions::create_file))
        .route("/workspace/se/files/{session_id}", get(sessions::list_files))
        .route("/workspace/se/upload/{session_id}", post(sessions::upload))
        .route(
            "/workspace/se/download/{session_id}/{*filename}",
            get(sessions::download),
        )
        .route("/workspace/se/execute/{session_id}", post(sessions::execute))
        .route(
            "/workspace/se/execute_code/{session_id}",
            post(sessions::execute_code),
        )
        .route("/workspace/se/status/{session_id}", get(sessions::status))
        .route("/workspace/se/cleanup-all", post(sessions::cleanup_all))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(api_key, require_api_key))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::Extension(BodyLimit(max_body)))
        .with_state(daemon)
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

/// Every control-plane and session call but the two health checks, build-file uploads and the
/// volume content API needs the API key
/// (constant-time comparison).
async fn require_api_key(State(api_key): State<Arc<str>>, req: Request, next: Next) -> Response {
    // the upload URL of a template build carries its own one-use token (template_builds.rs);
    // the volume content API is authorized by each volume's token (volume_content.rs)
    if matches!(req.uri().path(), "/health" | "/workspace/se/healthy")
        || req.uri().path().starts_with("/template-files/")
        || req.uri().path().starts_with("/volumecontent/")
    {
        return next.run(req).await;
    }
    let Some(given) = req.headers().get("x-api-key") else {
        return ApiError::Unauthorized("Missing API key: send it in the X-API-Key header".into())
            .into_response();
    };
    let want = api_key.as_bytes();
    if !bool::from(given.as_bytes().ct_eq(want)) {
        return ApiError::Unauthorized("Invalid API key".into()).into_response();
    }
    next.run(req).await
}
