//! `/templates…`: template lookup.

use super::extract::json;
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sandboxd_daemon::Daemon;
use std::sync::Arc;

/// `GET /templates/aliases/{alias}`: 200 when the template exists (`Template.exists`).
pub(super) async fn alias(
    State(daemon): State<Arc<Daemon>>,
    Path(alias): Path<String>,
    _h: HeaderMap,
) -> Response {
    match daemon.template_alias(&alias).await {
        Ok(Some(id)) => json(
            StatusCode::OK,
            &serde_json::json!({"templateID": id, "public": true}),
        ),
        Ok(None) => ApiError::TemplateNotFound(alias).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
