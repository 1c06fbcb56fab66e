//! `GET /health`, `GET /envs` and `GET /metrics` (`docs/contract.md` §6).

use crate::state::AgentState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// `GET /health`: 204, empty, `Cache-Control: no-store`.
pub async fn health() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /envs`: the sandbox-global environment.
pub async fn envs(State(state): State<Arc<AgentState>>) -> Response {
    let mut r = Json(state.config().global_env()).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
