//! `/templates…`: template lookup and a template's settings.

use super::extract::{JsonBody, json};
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

/// `PATCH /templates/{id}`, `PATCH /v2/templates/{id}`: E2B's `{public}` and sandboxd's
/// `bandwidth` (`docs/templates.md`, "Template settings"); 200 with the template's names and
/// settings.
pub(super) async fn update(
    State(daemon): State<Arc<Daemon>>,
    Path(template): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let serde_json::Value::Object(update) = body else {
        return Err(ApiError::BadRequest("the body must be a JSON object".into()));
    };
    let t = daemon.update_template(&template, update).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "templateID": t.template_id,
            "names": [t.name],
            "public": t.settings.public,
            "bandwidth": t.settings.bandwidth,
        }),
    ))
}
