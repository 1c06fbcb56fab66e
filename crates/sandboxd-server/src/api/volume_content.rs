//! `/volumecontent/{id}/…`: E2B's volume content API (`Volume.read_file`, `write_file`,
//! `list`, `make_dir`, `get_info`, `update_metadata`, `remove`; `docs/volumes.md`, "Content
//! API"). Authorized by the volume's token (`Authorization: Bearer`), not the API key.

use super::extract::{JsonBody, json};
use crate::error::ApiError;
use crate::ids::format_time;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use sandboxd_daemon::Daemon;
use sandboxd_daemon::volume_content::{Entry, EntryKind, Ownership};
use serde::Deserialize;
use std::sync::Arc;

/// The query parameters of the content routes (each route reads its own).
#[derive(Debug, Default, Deserialize)]
struct ContentQuery {
    path: Option<String>,
    depth: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    force: Option<bool>,
}

impl ContentQuery {
    /// Reads the query; a bad value is a JSON 400 naming it.
    fn of(uri: &Uri) -> Result<Self, ApiError> {
        Query::<Self>::try_from_uri(uri)
            .map(|Query(q)| q)
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
    }

    fn path(&self) -> Result<&str, ApiError> {
        self.path
            .as_deref()
            .ok_or_else(|| ApiError::BadRequest("the 'path' query parameter is required".into()))
    }

    fn ownership(&self) -> Ownership {
        Ownership {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
        }
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What every content route reads of its request: the volume, the query, the token.
pub(super) struct VolumeCall {
    id: String,
    query: ContentQuery,
    token: Option<String>,
}

impl VolumeCall {
    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for VolumeCall {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::BadRequest("invalid volume id".into()))?;
        Ok(Self {
            id,
            query: ContentQuery::of(&parts.uri)?,
            token: bearer(&parts.headers).map(str::to_string),
        })
    }
}

/// `VolumeEntryStat`.
fn entry_json(e: &Entry) -> serde_json::Value {
    let t = |s: std::time::SystemTime| format_time(chrono::DateTime::<chrono::Utc>::from(s));
    let mut v = serde_json::json!({
        "name": e.name,
        "type": match e.kind {
            EntryKind::File => "file",
            EntryKind::Directory => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Unknown => "unknown",
        },
        "path": e.path,
        "size": e.size,
        "mode": e.mode,
        "uid": e.uid,
        "gid": e.gid,
        "atime": t(e.atime),
        "mtime": t(e.mtime),
        "ctime": t(e.ctime),
    });
    if let Some(target) = &e.target {
        v["target"] = serde_json::Value::String(target.clone());
    }
    v
}

/// `GET /volumecontent/{id}/path?path=`: 200 `VolumeEntryStat`.
pub(super) async fn stat(State(daemon): State<Arc<Daemon>>, c: VolumeCall) -> Result<Response, ApiError> {
    let e = daemon.volume_stat(&c.id, c.token(), c.query.path()?).await?;
    Ok(json(StatusCode::OK, &entry_json(&e)))
}

/// `GET /volumecontent/{id}/dir?path=&depth=`: 200 `[VolumeEntryStat]`.
pub(super) async fn list(State(daemon): State<Arc<Daemon>>, c: VolumeCall) -> Result<Response, ApiError> {
    let entries = daemon
        .volume_list(&c.id, c.token(), c.query.path()?, c.query.depth)
        .await?;
    let out: Vec<serde_json::Value> = entries.iter().map(entry_json).collect();
    Ok(json(StatusCode::OK, &out))
}

/// `POST /volumecontent/{id}/dir?path=&uid=&gid=&mode=&force=`: 201 `VolumeEntryStat`.
pub(super) async fn make_dir(State(daemon): State<Arc<Daemon>>, c: VolumeCall) -> Result<Response, ApiError> {
    let q = &c.query;
    let e = daemon
        .volume_make_dir(
            &c.id,
            c.token(),
            q.path()?,
            q.ownership(),
            q.force.unwrap_or(false),
        )
        .await?;
    Ok(json(StatusCode::CREATED, &entry_json(&e)))
}

/// The body of `PATCH …/path`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct MetadataUpdate {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
}

/// `PATCH /volumecontent/{id}/path?path=` with `{uid?, gid?, mode?}`: 200 `VolumeEntryStat`.
pub(super) async fn update_metadata(
    State(daemon): State<Arc<Daemon>>,
    c: VolumeCall,
    JsonBody(body): JsonBody<MetadataUpdate>,
) -> Result<Response, ApiError> {
    let change = Ownership {
        uid: body.uid,
        gid: body.gid,
        mode: body.mode,
    };
    let e = daemon
        .volume_update_metadata(&c.id, c.token(), c.query.path()?, change)
        .await?;
    Ok(json(StatusCode::OK, &entry_json(&e)))
}

/// `DELETE /volumecontent/{id}/path?path=`: 204.
pub(super) async fn remove(State(daemon): State<Arc<Daemon>>, c: VolumeCall) -> Result<Response, ApiError> {
    daemon.volume_remove(&c.id, c.token(), c.query.path()?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /volumecontent/{id}/file?path=`: 200, the file's bytes, streamed.
pub(super) async fn read_file(
    State(daemon): State<Arc<Daemon>>,
    c: VolumeCall,
) -> Result<Response, ApiError> {
    let (file, size) = daemon.volume_read_file(&c.id, c.token(), c.query.path()?).await?;
    // what the file held when opened: a sandbox writing to it meanwhile cannot make the body
    // longer than its Content-Length
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(tokio::io::AsyncReadExt::take(
        file, size,
    )));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

/// `PUT /volumecontent/{id}/file?path=&uid=&gid=&mode=&force=` with the bytes (streamed):
/// 201 `VolumeEntryStat`.
pub(super) async fn write_file(
    State(daemon): State<Arc<Daemon>>,
    c: VolumeCall,
    body: Body,
) -> Result<Response, ApiError> {
    let q = &c.query;
    let body = body.into_data_stream().map_err(|e| e.to_string());
    let e = daemon
        .volume_write_file(
            &c.id,
            c.token(),
            q.path()?,
            q.ownership(),
            q.force.unwrap_or(false),
            Box::pin(body),
        )
        .await?;
    Ok(json(StatusCode::CREATED, &entry_json(&e)))
}
