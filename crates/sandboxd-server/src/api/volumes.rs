//! `/volumes…`: create, list, get and delete named persistent volumes (`docs/volumes.md`).
//! Sandboxes mount them with `volumeMounts` on create.

use super::extract::{JsonBody, json};
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sandboxd_daemon::Daemon;
use sandboxd_daemon::volumes::check_name;
use sandboxd_runtime::namespace::volumes;
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

#[cfg(test)]
mod tests {
    use super::*;

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
