//! `filesystem.Filesystem` service (`e2b-compat/envd.md` §4).

use crate::connect::UnaryError;
use crate::state::AgentState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use sandboxd_protocol::connect::ConnectError;
use std::sync::Arc;

/// Polling watchers by id.
#[derive(Default)]
pub struct WatcherTable {}

/// `POST /filesystem.Filesystem/{method}`.
pub async fn dispatch(
    State(_state): State<Arc<AgentState>>,
    Path(method): Path<String>,
    _headers: HeaderMap,
    _body: Body,
) -> Response {
    UnaryError(ConnectError::unimplemented(format!(
        "filesystem.Filesystem/{method} is not implemented"
    )))
    .into_response()
}
