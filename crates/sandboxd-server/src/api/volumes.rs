//! `/volumes…`: create, list, get and delete named persistent volumes (`docs/volumes.md`).
//! Sandboxes mount them with `volumeMounts` on create.

use super::{JsonBody, json};
use crate::error::ApiError;
use crate::ids::{new_sandbox_id, new_token};
use crate::manager::Manager;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sandboxd_runtime::namespace::volumes;
use sandboxd_store::{StoreError, VolumeDeletion, VolumeRow};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Size of a volume whose create request gives none (a sparse image: costs only what is used).
pub const DEFAULT_VOLUME_MB: u64 = 1024;
/// Longest volume name.
const MAX_NAME_LEN: usize = 64;

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

/// Volume names: 1–64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid volume name {name:?}: 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )))
    }
}

/// One entry of `volumeMounts` in a create request.
#[derive(Debug, Deserialize)]
pub(crate) struct VolumeMountIn {
    name: String,
    path: String,
}

/// Check `volumeMounts`: at most [`MAX_MOUNTS`](volumes::MAX_MOUNTS) entries, valid names,
/// allowed paths (`volumes::check_mount_path`), no path twice and none inside another.
/// Returns `(name, path)` pairs; whether the volumes exist is decided at create.
pub(crate) fn check_mounts(mounts: Vec<VolumeMountIn>) -> Result<Vec<(String, String)>, ApiError> {
    if mounts.len() > volumes::MAX_MOUNTS {
        return Err(ApiError::BadRequest(format!(
            "volumeMounts: at most {} entries",
            volumes::MAX_MOUNTS
        )));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(mounts.len());
    for m in mounts {
        check_name(&m.name)?;
        volumes::check_mount_path(&m.path).map_err(ApiError::BadRequest)?;
        if let Some((_, other)) = out
            .iter()
            .find(|(_, p)| volumes::is_at_or_below(p, &m.path) || volumes::is_at_or_below(&m.path, p))
        {
            return Err(ApiError::BadRequest(format!(
                "volumeMounts: paths '{other}' and '{}' overlap",
                m.path
            )));
        }
        out.push((m.name, m.path));
    }
    Ok(out)
}

/// A volume id or name from the path (checked like a name: ids are a subset).
fn path_key(raw: &str) -> Result<(), ApiError> {
    check_name(raw).map_err(|_| ApiError::BadRequest(format!("invalid volume id {raw:?}")))
}

fn not_found(key: &str) -> ApiError {
    ApiError::NotFound(format!("volume '{key}' not found"))
}

/// `POST /volumes`: 201 with the volume and its token; 409 if the name is taken.
pub(super) async fn create(State(mgr): State<Arc<Manager>>, JsonBody(body): JsonBody<NewVolume>) -> Response {
    match create_volume(&mgr, body).await {
        Ok(v) => json(StatusCode::CREATED, &out(v, true)),
        Err(e) => e.into_response(),
    }
}

async fn create_volume(mgr: &Arc<Manager>, body: NewVolume) -> Result<VolumeRow, ApiError> {
    check_name(&body.name)?;
    let max = mgr.config().limits.max_disk_mb;
    let size_mb = match body.size_mb {
        None => DEFAULT_VOLUME_MB.min(max),
        Some(s) if s < sandboxd_runtime::namespace::quota::MIN_DISK_MB as i64 => {
            return Err(ApiError::BadRequest(format!(
                "sizeMB must be at least {}",
                sandboxd_runtime::namespace::quota::MIN_DISK_MB
            )));
        }
        Some(s) if s as u64 > max => {
            return Err(ApiError::BadRequest(format!(
                "sizeMB {s} is above this daemon's maximum of {max}"
            )));
        }
        Some(s) => s as u64,
    };
    let row = VolumeRow {
        seq: 0,
        id: new_sandbox_id(),
        name: body.name,
        size_mb,
        token: new_token(),
        created_at_us: chrono::Utc::now().timestamp_micros(),
    };
    // The row first (it decides name clashes); without storage it is removed again.
    let r = row.clone();
    let row = match mgr.db(move |s| s.insert_volume(&r)).await {
        Ok(row) => row,
        Err(StoreError::Duplicate(name)) => {
            return Err(ApiError::Conflict(format!(
                "a volume named '{name}' already exists"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = mgr.backend().create_volume(&row.id, size_mb).await {
        let id = row.id.clone();
        if let Err(de) = mgr.db(move |s| s.delete_volume(&id)).await {
            tracing::error!(volume = %row.id, "removing the row of a failed volume: {de}");
        }
        return Err(e.into());
    }
    tracing::info!(volume = %row.id, name = %row.name, size_mb, "volume created");
    Ok(row)
}

/// `GET /volumes`.
pub(super) async fn list(State(mgr): State<Arc<Manager>>) -> Response {
    match mgr.db(|s| s.list_volumes()).await {
        Ok(rows) => json(
            StatusCode::OK,
            &rows.into_iter().map(|v| out(v, false)).collect::<Vec<_>>(),
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `GET /volumes/{id}` (id or name).
pub(super) async fn get(State(mgr): State<Arc<Manager>>, Path(key): Path<String>) -> Response {
    if let Err(e) = path_key(&key) {
        return e.into_response();
    }
    let k = key.clone();
    match mgr.db(move |s| s.get_volume(&k)).await {
        Ok(Some(v)) => json(StatusCode::OK, &out(v, true)),
        Ok(None) => not_found(&key).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `DELETE /volumes/{id}` (id or name): 204; 409 while a sandbox (running or paused) mounts it.
pub(super) async fn delete(State(mgr): State<Arc<Manager>>, Path(key): Path<String>) -> Response {
    if let Err(e) = path_key(&key) {
        return e.into_response();
    }
    let k = key.clone();
    let row = match mgr.db(move |s| s.delete_volume(&k)).await {
        Ok(VolumeDeletion::Deleted(row)) => row,
        Ok(VolumeDeletion::NotFound) => return not_found(&key).into_response(),
        Ok(VolumeDeletion::InUse(ids)) => {
            return ApiError::Conflict(format!(
                "volume '{key}' is mounted by sandbox(es) {}: kill them first",
                ids.join(", ")
            ))
            .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    // The row is gone, so no new sandbox can mount it: remove its storage.
    if let Err(e) = mgr.backend().delete_volume(&row.id).await {
        tracing::error!(volume = %row.id, "removing the storage of a deleted volume: {e}");
    }
    tracing::info!(volume = %row.id, name = %row.name, "volume deleted");
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "data", "my-vol_1.2", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "ä", &"x".repeat(65), "../x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    fn mounts(v: serde_json::Value) -> Result<Vec<(String, String)>, ApiError> {
        check_mounts(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn mount_lists() {
        let ok = mounts(
            serde_json::json!([{"name": "a", "path": "/data"}, {"name": "a", "path": "/home/user/x"}]),
        );
        assert_eq!(ok.unwrap()[1], ("a".to_string(), "/home/user/x".to_string()));
        for bad in [
            serde_json::json!([{"name": "a", "path": "data"}]),
            serde_json::json!([{"name": "a", "path": "/proc"}]),
            serde_json::json!([{"name": "a", "path": "/"}]),
            serde_json::json!([{"name": "a", "path": "/x/../etc"}]),
            serde_json::json!([{"name": "a/b", "path": "/x"}]),
            serde_json::json!([{"name": "a", "path": "/x"}, {"name": "b", "path": "/x"}]),
            serde_json::json!([{"name": "a", "path": "/x"}, {"name": "b", "path": "/x/y"}]),
        ] {
            assert!(
                matches!(mounts(bad.clone()), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
        let many: Vec<_> = (0..17)
            .map(|i| serde_json::json!({"name": "a", "path": format!("/d{i}")}))
            .collect();
        assert!(mounts(serde_json::Value::Array(many)).is_err());
    }
}
