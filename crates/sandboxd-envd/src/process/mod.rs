//! `process.Process` service (`e2b-compat/envd.md` §5).

use crate::connect::UnaryError;
use crate::state::AgentState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use sandboxd_protocol::connect::ConnectError;
use std::sync::Arc;

/// Running processes by pid.
#[derive(Default)]
pub struct ProcessTable {}

/// `POST /process.Process/{method}`.
pub async fn dispatch(
    State(_state): State<Arc<AgentState>>,
    Path(method): Path<String>,
    _headers: HeaderMap,
    _body: Body,
) -> Response {
    UnaryError(ConnectError::unimplemented(format!(
        "process.Process/{method} is not implemented"
    )))
    .into_response()
}
