//! The template build API (`docs/templates.md`): `POST /v3/templates`, file upload links and
//! the uploads themselves (`PUT /template-files/{token}`, the only route whose credential is
//! in its URL), build start and status, tags, and the template listing.

use super::extract::{JsonBody, json};
use crate::error::ApiError;
use crate::ids::format_time;
use crate::query::first_values;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use futures::TryStreamExt;
use sandboxd_daemon::Daemon;
use sandboxd_daemon::template_builds::{BuildRequest, BuildStart, LogLine, LogQuery};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `POST /v3/templates`: 202 with the template and build ids.
pub(super) async fn request(
    State(daemon): State<Arc<Daemon>>,
    JsonBody(body): JsonBody<BuildRequest>,
) -> Result<Response, ApiError> {
    let b = daemon.request_build(body).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({
            "templateID": b.template_id,
            "buildID": b.build_id,
            "public": false,
            "names": [b.name],
            "aliases": [b.name],
            "tags": b.tags,
        }),
    ))
}

/// `GET /templates/{id}/files/{hash}`: 201 `{present, url}`; the URL is this daemon's, as
/// the client reached it (its `Host`).
pub(super) async fn upload_link(
    State(daemon): State<Arc<Daemon>>,
    Path((template_id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let link = daemon.upload_link(&template_id, &hash).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest("the request has no Host header to build the upload URL from".into())
        })?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "present": link.present,
            "url": format!("http://{host}/template-files/{}", link.token),
        }),
    ))
}

/// `PUT /template-files/{token}`: the upload of a step's files (streamed to disk).
pub(super) async fn upload(
    State(daemon): State<Arc<Daemon>>,
    Path(token): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let body = req.into_body().into_data_stream().map_err(|e| e.to_string());
    daemon.save_upload(&token, Box::pin(body)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /v2/templates/{id}/builds/{build}`: 202, the build runs in the background.
pub(super) async fn start(
    State(daemon): State<Arc<Daemon>>,
    Path((template_id, build_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<BuildStart>,
) -> Result<Response, ApiError> {
    daemon.start_build(&template_id, &build_id, body).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `BuildLogEntry`.
#[derive(Debug, Serialize)]
struct LogOut {
    timestamp: String,
    level: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
}

fn log_out(l: LogLine) -> LogOut {
    LogOut {
        timestamp: format_time(l.timestamp),
        level: l.level,
        message: l.message,
        step: l.step,
    }
}

/// Query parameter `k` as a number that `ok` accepts; absent is `None`, anything else a 400
/// saying what is wanted.
fn number_param<T: std::str::FromStr>(
    q: &std::collections::HashMap<String, String>,
    k: &str,
    ok: impl Fn(&T) -> bool,
    want: &str,
) -> Result<Option<T>, ApiError> {
    q.get(k)
        .map(|v| {
            v.parse::<T>()
                .ok()
                .filter(|n| ok(n))
                .ok_or_else(|| ApiError::BadRequest(format!("invalid {k} '{v}': {want}")))
        })
        .transpose()
}

/// `GET /templates/{id}/builds/{build}/status?logsOffset=&limit=`.
pub(super) async fn status(
    State(daemon): State<Arc<Daemon>>,
    Path((template_id, build_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = first_values(raw.as_deref());
    let offset = number_param(&q, "logsOffset", |_: &usize| true, "a non-negative integer")?.unwrap_or(0);
    let limit = number_param(&q, "limit", |_: &usize| true, "a non-negative integer")?.unwrap_or(100);
    let s = daemon
        .build_status(&template_id, &build_id, offset, limit)
        .await?;
    let logs: Vec<String> = s
        .log_entries
        .iter()
        .map(|l| format!("[{}] {}", format_time(l.timestamp), l.message))
        .collect();
    let mut out = serde_json::json!({
        "templateID": s.template_id,
        "buildID": s.build_id,
        "status": s.status,
        "logs": logs,
        "logEntries": s.log_entries.into_iter().map(log_out).collect::<Vec<_>>(),
    });
    if let Some((message, step, tail)) = s.reason {
        let mut reason = serde_json::json!({
            "message": message,
            "logEntries": tail.into_iter().map(log_out).collect::<Vec<_>>(),
        });
        if let Some(step) = step {
            reason["step"] = step.into();
        }
        out["reason"] = reason;
    }
    Ok(json(StatusCode::OK, &out))
}

/// `GET /templates/{id}/builds/{build}/logs?cursor=&limit=&direction=&level=&source=`:
/// `{logs: [BuildLogEntry]}`.
pub(super) async fn logs(
    State(daemon): State<Arc<Daemon>>,
    Path((template_id, build_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = first_values(raw.as_deref());
    let bad = |k: &str, v: &str, want: &str| ApiError::BadRequest(format!("invalid {k} '{v}': {want}"));
    let cursor_ms = number_param(&q, "cursor", |c: &i64| *c >= 0, "milliseconds since the epoch")?;
    let limit = number_param(&q, "limit", |l: &usize| *l <= 100, "0 to 100")?.unwrap_or(100);
    let backward = match q.get("direction").map(String::as_str) {
        None | Some("forward") => false,
        Some("backward") => true,
        Some(v) => return Err(bad("direction", v, "forward or backward")),
    };
    let min_level = match q.get("level").map(String::as_str) {
        None | Some("debug") => "debug",
        Some("info") => "info",
        Some("warn") => "warn",
        Some("error") => "error",
        Some(v) => return Err(bad("level", v, "debug, info, warn or error")),
    };
    // one log per build here: both sources answer the same lines
    if let Some(v) = q
        .get("source")
        .filter(|v| !matches!(v.as_str(), "temporary" | "persistent"))
    {
        return Err(bad("source", v, "temporary or persistent"));
    }
    let lines = daemon
        .build_logs(
            &template_id,
            &build_id,
            LogQuery {
                cursor_ms,
                limit,
                backward,
                min_level,
            },
        )
        .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"logs": lines.into_iter().map(log_out).collect::<Vec<_>>()}),
    ))
}

/// `AssignTemplateTagsRequest`.
#[derive(Debug, Deserialize)]
pub(super) struct AssignTags {
    target: String,
    tags: Vec<String>,
}

/// `POST /templates/tags`: 201 `{buildID, tags}`.
pub(super) async fn assign_tags(
    State(daemon): State<Arc<Daemon>>,
    JsonBody(body): JsonBody<AssignTags>,
) -> Result<Response, ApiError> {
    let (build_id, tags) = daemon.assign_template_tags(&body.target, body.tags).await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"buildID": build_id, "tags": tags}),
    ))
}

/// `DeleteTemplateTagsRequest`.
#[derive(Debug, Deserialize)]
pub(super) struct RemoveTags {
    name: String,
    tags: Vec<String>,
}

/// `DELETE /templates/tags`: 204.
pub(super) async fn remove_tags(
    State(daemon): State<Arc<Daemon>>,
    JsonBody(body): JsonBody<RemoveTags>,
) -> Result<Response, ApiError> {
    daemon.remove_template_tags(&body.name, body.tags).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /templates/{id}/tags`: `[{tag, buildID, createdAt}]`.
pub(super) async fn tags(
    State(daemon): State<Arc<Daemon>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rows = daemon.template_tags(&id).await?;
    let out: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(tag, build, at)| {
            serde_json::json!({
                "tag": tag,
                "buildID": build,
                "createdAt": format_time(DateTime::from_timestamp_micros(at).unwrap_or_default()),
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &out))
}

/// `GET /templates`: the built templates (newest first; with the size of their layers and
/// their last use) and the built-in ones.
pub(super) async fn list(State(daemon): State<Arc<Daemon>>) -> Result<Response, ApiError> {
    let built = daemon.list_built_templates().await?;
    let t = |us: i64| format_time(DateTime::from_timestamp_micros(us).unwrap_or_default());
    let mut out: Vec<serde_json::Value> = built
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "templateID": s.template_id,
                "buildID": s.latest.build_id,
                "buildStatus": s.latest.status,
                "cpuCount": s.config.cpu_count.unwrap_or(2),
                "memoryMB": s.config.memory_mb.unwrap_or(512),
                "diskSizeMB": s.config.size_bytes.unwrap_or(0).div_ceil(1 << 20),
                "sizeBytes": s.config.size_bytes,
                "public": s.settings.public.unwrap_or(false),
                "bandwidth": s.settings.bandwidth,
                "aliases": [s.name.clone()],
                "names": [s.name],
                "createdAt": t(s.latest.created_at_us),
                "updatedAt": t(s.latest.finished_at_us.unwrap_or(s.latest.created_at_us)),
                "lastSpawnedAt": s.last_spawned_at_us.map(t),
                "spawnCount": s.spawn_count,
                "buildCount": s.builds,
                "envdVersion": sandboxd_protocol::ENVD_VERSION,
            })
        })
        .collect();
    for name in ["base", "code-interpreter-v1"] {
        if daemon.template_exists(name) {
            let settings = daemon.template_settings(name).await?;
            out.push(serde_json::json!({
                "templateID": name,
                "buildID": name,
                "buildStatus": "ready",
                "public": settings.public.unwrap_or(true),
                "bandwidth": settings.bandwidth,
                "aliases": [name],
                "names": [name],
                "buildCount": 1,
                "envdVersion": sandboxd_protocol::ENVD_VERSION,
            }));
        }
    }
    Ok(json(StatusCode::OK, &out))
}
