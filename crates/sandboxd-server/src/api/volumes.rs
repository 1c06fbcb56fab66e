//! `/volumes…`: create, list, get and delete named persistent volumes (`docs/volumes.md`).
//! Sandboxes mount them with `volumeMounts` on create.

use super::extract::{JsonBody, json};
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandboxd_daemon::Daemon;
use sandboxd_store::VolumeRow;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `NewVolume`, plus the sandboxd-only `sizeMB`.
#[derive(Debug, Deserialize)]
pub(super) struct NewVolume {
    name: String,
    #[serde(rename = "sizeMB")]
    size_mb: Option<i64>,
}

/// `VolumeAndToken` (create, get) and, without the token, `Volume` (list); `sizeMB` is
/// sandboxd-only.
#[derive(Debug, Serialize)]
struct VolumeOut {
    #[serde(rename = "volumeID")]
    volume_id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(rename = "sizeMB")]
    size_mb: u64,
}

fn out(v: VolumeRow, with_token: bool) -> VolumeOut {
    VolumeOut {
        volume_id: v.id,
        name: v.name,
        token: with_token.then_some(v.token),
        size_mb: v.size_mb,
    }
}

/// One entry of `volumeMounts` in a create request.
#[derive(Debug, Deserialize)]
pub(crate) struct VolumeMountIn {
    name: String,
    path: String,
}

impl VolumeMountIn {
    /// The `(name, path)` pair the domain checks ([`sandboxd_daemon::volumes::check_mounts`]).
    pub(crate) fn into_pair(self) -> (String, String) {
        (self.name, self.path)
    }
}

/// `POST /volumes`: 201 with the volume and its token; 409 if the name is taken.
pub(super) async fn create(
    State(daemon): State<Arc<Daemon>>,
    JsonBody(body): JsonBody<NewVolume>,
) -> Result<Response, ApiError> {
    let v = daemon.create_volume(body.name, body.size_mb).await?;
    Ok(json(StatusCode::CREATED, &out(v, true)))
}

/// `GET /volumes`.
pub(super) async fn list(State(daemon): State<Arc<Daemon>>) -> Result<Response, ApiError> {
    let rows = daemon.list_volumes().await?;
    Ok(json(
        StatusCode::OK,
        &rows.into_iter().map(|v| out(v, false)).collect::<Vec<_>>(),
    ))
}

/// `GET /volumes/{id}` (id or name).
pub(super) async fn get(
    State(daemon): State<Arc<Daemon>>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let v = daemon.volume(&key).await?;
    Ok(json(StatusCode::OK, &out(v, true)))
}

/// `DELETE /volumes/{id}` (id or name): 204; 409 while a sandbox (running or paused) mounts it.
pub(super) async fn delete(
    State(daemon): State<Arc<Daemon>>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    daemon.delete_volume(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}
