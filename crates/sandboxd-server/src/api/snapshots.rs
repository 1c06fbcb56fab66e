//! `/sandboxes/{id}/snapshots`, `/snapshots`, `/sandboxes/{id}/fork` and snapshot deletion
//! (`DELETE /templates/{id}`); the logic is in `sandboxd-daemon` `snapshots.rs`.

use super::extract::{JsonBody, SandboxId, json};
use super::sandbox_view::sandbox_out;
use crate::error::ApiError;
use crate::query::first_values;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sandboxd_daemon::Daemon;
use sandboxd_daemon::snapshots::SnapshotQuery;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Body of `POST /sandboxes/{id}/snapshots` (unknown keys are accepted, as upstream does).
#[derive(Debug, Deserialize)]
pub(super) struct NewSnapshot {
    #[serde(default)]
    name: Option<String>,
    /// `create_snapshot(mode=...)`: `false` keeps the filesystem only — what every snapshot
    /// here keeps; an explicit `true` (memory) cannot be honoured.
    #[serde(default)]
    memory: Option<bool>,
}

/// `POST /sandboxes/{id}/snapshots`: 201 `SnapshotInfo`.
pub(super) async fn create(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    JsonBody(body): JsonBody<NewSnapshot>,
) -> Response {
    if body.memory == Some(true) {
        return ApiError::NotSupportedHere(
            "memory snapshots are not supported by this server: a snapshot keeps the filesystem \
             only, and sandboxes made from it boot fresh (use mode=\"filesystem\")"
                .into(),
        )
        .into_response();
    }
    match daemon.create_snapshot(&id, body.name).await {
        Ok(info) => json(StatusCode::CREATED, &info),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `GET /snapshots?sandboxID=&name=&limit=&nextToken=`.
pub(super) async fn list(State(daemon): State<Arc<Daemon>>, RawQuery(raw): RawQuery) -> Response {
    let q: HashMap<String, String> = first_values(raw.as_deref());
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => {
            return ApiError::BadRequest("limit must be an integer from 1 to 100".into()).into_response();
        }
    };
    let after_seq = match q.get("nextToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match t.parse::<i64>() {
            Ok(v) if v > 0 => Some(v),
            _ => return ApiError::BadRequest("invalid nextToken".into()).into_response(),
        },
    };
    let query = SnapshotQuery {
        sandbox_id: q.get("sandboxID").filter(|s| !s.is_empty()).cloned(),
        name: q.get("name").filter(|s| !s.is_empty()).cloned(),
        limit,
        after_seq,
    };
    match daemon.list_snapshots(query).await {
        Ok((items, next)) => {
            let mut r = json(StatusCode::OK, &items);
            if let Some(n) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
                r.headers_mut().insert("x-next-token", n);
            }
            r
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `DELETE /templates/{templateID}` (the segment is matched raw and decoded by the extractor):
/// 204, or 404 when unknown or already deleted.
pub(super) async fn delete_template(State(daemon): State<Arc<Daemon>>, Path(raw): Path<String>) -> Response {
    match daemon.delete_template(&raw).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => ApiError::TemplateNotFound(raw).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Body of `POST /sandboxes/{id}/fork`.
#[derive(Debug, Deserialize)]
pub(super) struct ForkBody {
    #[serde(default = "default_fork_timeout")]
    timeout: i64,
    #[serde(default = "default_count")]
    count: i64,
}

fn default_fork_timeout() -> i64 {
    15
}

fn default_count() -> i64 {
    1
}

/// `POST /sandboxes/{id}/fork`: 201 with one `{"sandbox"}` or `{"error"}` entry per fork.
pub(super) async fn fork(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    body: axum::body::Bytes,
) -> Response {
    // the body is optional
    let (timeout, count) = if body.iter().all(u8::is_ascii_whitespace) {
        (default_fork_timeout(), default_count())
    } else {
        match serde_json::from_slice::<ForkBody>(&body) {
            Ok(b) => (b.timeout, b.count),
            Err(e) => return ApiError::BadRequest(format!("invalid request body: {e}")).into_response(),
        }
    };
    match daemon.fork(&id, timeout, count).await {
        Ok(results) => {
            let items: Vec<serde_json::Value> = results
                .into_iter()
                .map(|r| match r {
                    Ok(s) => serde_json::json!({"sandbox": sandbox_out(&s, daemon.domain())}),
                    Err(e) => {
                        let e = ApiError::from(e);
                        serde_json::json!({"error": {"code": e.status().as_u16(), "message": e.to_string()}})
                    }
                })
                .collect();
            json(StatusCode::CREATED, &items)
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
