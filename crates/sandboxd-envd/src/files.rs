//! `GET /files` (download) and `POST /files` (upload) (`e2b-compat/envd.md` §2.4–2.5).

use crate::auth::json_error;
use crate::state::AgentState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::Arc;

/// `GET /files`.
pub async fn download(State(_state): State<Arc<AgentState>>) -> Response {
    json_error(StatusCode::NOT_IMPLEMENTED, "not implemented")
}

/// `POST /files`.
pub async fn upload(State(_state): State<Arc<AgentState>>) -> Response {
    json_error(StatusCode::NOT_IMPLEMENTED, "not implemented")
}
