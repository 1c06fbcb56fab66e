//! `/secrets…`: the Secrets API of the newest SDKs (`docs/secrets.md`) — create, list, get,
//! update, delete. Values are write-only: no response carries one.

use super::extract::{JsonBody, json};
use crate::error::ApiError;
use crate::ids::format_time;
use crate::query::first_values;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use chrono::DateTime;
use sandboxd_daemon::Daemon;
use sandboxd_daemon::secrets::SecretInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// `NewSecret`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSecret {
    name: String,
    value: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// `SecretUpdate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SecretUpdate {
    value: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// `Secret`: metadata only, never the value.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretOut {
    #[serde(rename = "secretID")]
    secret_id: String,
    name: String,
    current_version: i64,
    metadata: BTreeMap<String, String>,
    created_at: String,
    updated_at: String,
}

fn out(s: SecretInfo) -> SecretOut {
    let t = |ms| format_time(DateTime::from_timestamp_millis(ms).unwrap_or_default());
    SecretOut {
        secret_id: s.id,
        name: s.name,
        current_version: s.version,
        metadata: s.metadata,
        created_at: t(s.created_at_ms),
        updated_at: t(s.updated_at_ms),
    }
}

/// `POST /secrets`: 201 with the secret; 409 if the name is taken.
pub(super) async fn create(
    State(daemon): State<Arc<Daemon>>,
    JsonBody(body): JsonBody<NewSecret>,
) -> Result<Response, ApiError> {
    let s = daemon
        .create_secret(&body.name, &body.value, body.metadata.unwrap_or_default())
        .await?;
    Ok(json(StatusCode::CREATED, &out(s)))
}

/// `GET /secrets?limit=&nextToken=`: oldest first; `x-next-token` names the next page.
pub(super) async fn list(
    State(daemon): State<Arc<Daemon>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = first_values(raw.as_deref());
    let limit = q
        .get("limit")
        .map(|l| {
            l.parse::<usize>()
                .map_err(|_| ApiError::BadRequest("limit must be an integer from 1 to 100".into()))
        })
        .transpose()?;
    let token = q.get("nextToken").filter(|t| !t.is_empty());
    let (items, next) = daemon.secrets(limit, token.map(String::as_str)).await?;
    let items: Vec<SecretOut> = items.into_iter().map(out).collect();
    let mut r = json(StatusCode::OK, &items);
    if let Some(n) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        r.headers_mut().insert("x-next-token", n);
    }
    Ok(r)
}

/// `GET /secrets/{secretID}` (id or name).
pub(super) async fn get(
    State(daemon): State<Arc<Daemon>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &out(daemon.secret(&key).await?)))
}

/// `POST /secrets/{secretID}` (id or name): the value becomes the secret's new version.
pub(super) async fn update(
    State(daemon): State<Arc<Daemon>>,
    Path(key): Path<String>,
    JsonBody(body): JsonBody<SecretUpdate>,
) -> Result<Response, ApiError> {
    let s = daemon.update_secret(&key, &body.value, body.metadata).await?;
    Ok(json(StatusCode::OK, &out(s)))
}

/// `DELETE /secrets/{secretID}` (id or name): 204.
pub(super) async fn delete(
    State(daemon): State<Arc<Daemon>>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    daemon.delete_secret(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}
