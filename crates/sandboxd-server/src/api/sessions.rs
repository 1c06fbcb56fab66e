//! The session API (`/workspace/se/*`, `api/sessions.yaml`, `docs/sessions.md`): each handler
//! parses its request, calls one operation of [`sandboxd_daemon::sessions`], and writes the answer.
//! Errors carry `error_code` like every error of the daemon ([`crate::error::ApiError`]).

use super::extract::{JsonBody, json};
use crate::error::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use sandboxd_daemon::Daemon;
use sandboxd_daemon::sessions::{self, ExecCodeRequest, ExecRequest, SessionOptions};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The session API's OpenAPI document, served at `GET /workspace/se/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../../../api/sessions.yaml");

/// `GET /workspace/se/healthy`.
pub async fn healthy() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `GET /workspace/se/openapi.yaml`.
pub async fn openapi() -> Response {
    let mut r = (StatusCode::OK, OPENAPI).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateSessionBody {
    size: Option<serde_json::Value>,
    timeout: Option<i64>,
    template: Option<String>,
    env: BTreeMap<String, String>,
    #[serde(alias = "allowedCommands")]
    allowed_commands: Option<Vec<String>>,
    #[serde(alias = "maxProcesses")]
    max_processes: Option<i64>,
}

/// An optional JSON body: empty means defaults.
async fn optional_json<T: Default + serde::de::DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let bytes = Bytes::from_request(req, &())
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    super::parse_json_body(&bytes)
}

/// `POST /workspace/se/session/{session_id}`: 201 with the session, 409 if it exists.
pub async fn create_session(
    State(daemon): State<Arc<Daemon>>,
    Path(session_id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let body: CreateSessionBody = optional_json(req).await?;
    let opts = SessionOptions {
        size_mb: body.size.as_ref().map(sessions::parse_size_mb).transpose()?,
        timeout_secs: body.timeout,
        template: body.template,
        env: body.env,
        max_processes: body.max_processes,
        allowed_commands: body.allowed_commands,
    };
    let info = daemon.create_session(&session_id, opts).await?;
    Ok(json(StatusCode::CREATED, &info))
}

/// `DELETE /workspace/se/session/{session_id}`.
pub async fn delete_session(
    State(daemon): State<Arc<Daemon>>,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    daemon.delete_session(&session_id).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"session_id": session_id, "deleted": true}),
    ))
}

#[derive(Debug, Deserialize)]
pub struct CreateFileBody {
    filename: String,
    #[serde(default)]
    content: String,
    /// `utf-8` (default) or `base64`.
    #[serde(default)]
    encoding: Option<String>,
    /// Octal string (`"0755"`) or number.
    #[serde(default)]
    mode: Option<serde_json::Value>,
}

fn parse_mode(v: &serde_json::Value) -> Result<u32, ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid mode {v}: use an octal string like \"0644\""));
    let m = match v {
        serde_json::Value::String(s) => {
            u32::from_str_radix(s.trim().trim_start_matches("0o"), 8).map_err(|_| bad())?
        }
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if m > 0o7777 {
        return Err(bad());
    }
    Ok(m)
}

/// `POST /workspace/se/create/{session_id}`: writes one file from JSON.
pub async fn create_file(
    State(daemon): State<Arc<Daemon>>,
    Path(session_id): Path<String>,
    JsonBody(body): JsonBody<CreateFileBody>,
) -> Result<Response, ApiError> {
    let content = match body.encoding.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("utf-8") | Some("utf8") | Some("text") => body.content.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body.content.as_bytes())
            .map_err(|e| ApiError::BadRequest(format!("content is not valid base64: {e}")))?,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown encoding '{other}': use utf-8 or base64"
            )));
        }
    };
    let mode = body.mode.as_ref().map(parse_mode).transpose()?;
    let size = content.len();
    let path = daemon
        .create_session_file(&session_id, &body.filename, content, mode)
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({"path": path, "size": size}),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PathQuery {
    path: Option<String>,
}

/// `GET /workspace/se/files/{session_id}?path=sub/dir`.
pub async fn list_files(
    State(daemon): State<Arc<Daemon>>,
    Path(session_id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let files = daemon.list_session_files(&session_id, q.path.as_deref()).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"session_id": session_id, "path": q.path.unwrap_or_default(), "files": files}),
    ))
}

/// Most bytes of a refused upload's body read and dropped before answering, so a keep-alive
/// client's next request does not meet a closed connection; past it the connection closes.
const DRAIN_LIMIT: usize = 64 << 20;
/// Longest time spent draining a refused upload's body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A request body that multer reads and that stays reachable afterwards, for draining.
#[derive(Clone)]
struct SharedBody(Arc<std::sync::Mutex<axum::body::BodyDataStream>>);

impl futures::Stream for SharedBody {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::pin::Pin::new(&mut *inner).poll_next(cx)
    }
}

impl SharedBody {
    async fn drain(self) {
        use futures::StreamExt;
        let mut this = self;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut seen = 0usize;
            while let Some(Ok(chunk)) = this.next().await {
                seen += chunk.len();
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        })
        .await;
    }
}

/// `POST /workspace/se/upload/{session_id}?path=dir`: multipart, one part per file (field
/// `file` or `files`, the part's filename is the file's name under `path`), streamed to the
/// sandbox; all files appear or none.
pub async fn upload(
    State(daemon): State<Arc<Daemon>>,
    Path(session_id): Path<String>,
    Query(q): Query<PathQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = SharedBody(Arc::new(std::sync::Mutex::new(body.into_data_stream())));
    match upload_files(&daemon, &session_id, q, &parts.headers, body.clone()).await {
        Ok(files) => Ok(json(
            StatusCode::CREATED,
            &serde_json::json!({"session_id": session_id, "files": files}),
        )),
        Err(e) => {
            body.drain().await;
            Err(e)
        }
    }
}

async fn upload_files(
    daemon: &Arc<Daemon>,
    session_id: &str,
    q: PathQuery,
    headers: &http::HeaderMap,
    body: SharedBody,
) -> Result<Vec<String>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let boundary = multer::parse_boundary(&content_type)
        .map_err(|e| ApiError::BadRequest(format!("upload needs a multipart/form-data body: {e}")))?;
    let dir = sessions::relative_path(q.path.as_deref().unwrap_or(""))?;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        daemon.check_session_room(session_id, len).await?;
    }
    let mut batch = daemon.begin_session_files(session_id)?;
    let mut multipart = multer::Multipart::new(body, boundary);
    let result = async {
        let mut count = 0usize;
        loop {
            let mut field = match multipart.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(ApiError::BadRequest(format!("invalid multipart body: {e}"))),
            };
            if !matches!(field.name(), Some("file" | "files")) {
                continue;
            }
            let Some(name) = field.file_name().filter(|n| !n.is_empty()).map(str::to_string) else {
                return Err(ApiError::BadRequest("a file part has no filename".into()));
            };
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            // The part streams through a channel: the agent's upload reads while this loop
            // pumps, memory bounded by the channel.
            let (tx, rx) = tokio::sync::mpsc::channel::<
                Result<http_body::Frame<Bytes>, sessions::envd_calls::BoxError>,
            >(4);
            let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }))
            .boxed_unsync();
            let pump = async move {
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            if tx.send(Ok(http_body::Frame::data(chunk))).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => return Ok(()),
                        Err(e) => {
                            let msg = format!("invalid multipart body: {e}");
                            let _ = tx.send(Err(msg.clone().into())).await;
                            return Err(ApiError::BadRequest(msg));
                        }
                    }
                }
            };
            // `pump` owns the sender: the body ends when the part does
            let (pumped, added) = tokio::join!(pump, batch.add(&rel, body));
            pumped?;
            added?;
            count += 1;
        }
        if count == 0 {
            return Err(ApiError::BadRequest(
                "no file in the upload: send parts named 'file' with a filename".into(),
            ));
        }
        Ok(())
    }
    .await;
    drop(multipart);
    if let Err(e) = result {
        batch.abort().await;
        return Err(e);
    }
    Ok(batch.commit().await?)
}

/// `GET /workspace/se/download/{session_id}/{filename}` (the filename may hold `/`): streamed.
pub async fn download(
    State(daemon): State<Arc<Daemon>>,
    Path((session_id, filename)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let d = daemon.download_session_file(&session_id, &filename).await?;
    let mut r = Response::new(Body::new(d.body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(size) = d.size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    let safe: String = d
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub struct ExecuteBody {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// `POST /workspace/se/execute/{session_id}`.
pub async fn execute(
    State(daemon): State<Arc<Daemon>>,
    Path(session_id): Path<String>,
    JsonBody(b): JsonBody<ExecuteBody>,
) -> Result<Response, ApiError> {
    let r = daemon
        .execute_in_session(
            &session_id,
            ExecRequest {
                command: b.command,
                args: b.args,
                shell: b.shell,
                timeout_secs: b.timeout,
                cwd: b.cwd,
                env: b.env,
            },
        )
        .await?;
    Ok(json(StatusCode::OK, &r))
}

#[derive(Debug, Deserialize)]
pub struct ExecuteCodeBody {
    code: String,
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    script_type: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// `POST /workspace/se/execute_code/{session_id}`.
pub async fn execute_code(
    State(daemon): State<Arc<Daemon>>,
    Path(session_id): Path<String>,
    JsonBody(b): JsonBody<ExecuteCodeBody>,
) -> Result<Response, ApiError> {
    let r = daemon
        .execute_code_in_session(
            &session_id,
            ExecCodeRequest {
                code: b.code,
                filename: b.filename,
                script_type: b.script_type,
                args: b.args,
                timeout_secs: b.timeout,
                env: b.env,
            },
        )
        .await?;
    Ok(json(StatusCode::OK, &r))
}

/// `GET /workspace/se/status/{session_id}`.
pub async fn status(
    State(daemon): State<Arc<Daemon>>,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &daemon.session_status(&session_id).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CleanupBody {
    force: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CleanupQuery {
    force: Option<String>,
}

/// `POST /workspace/se/cleanup-all` (`?force=true` or `{"force": true}`).
pub async fn cleanup_all(
    State(daemon): State<Arc<Daemon>>,
    Query(q): Query<CleanupQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let body: CleanupBody = optional_json(req).await?;
    let force = match q.force.as_deref() {
        None => body.force,
        Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => body.force,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid force '{other}': use true or false"
            )));
        }
    };
    let removed = daemon.cleanup_all_sessions(force).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({"removed": removed})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode(&serde_json::json!("0755")).unwrap(), 0o755);
        assert_eq!(parse_mode(&serde_json::json!("644")).unwrap(), 0o644);
        assert_eq!(parse_mode(&serde_json::json!(420)).unwrap(), 0o644);
        for bad in [
            serde_json::json!("9"),
            serde_json::json!("77777"),
            serde_json::json!(true),
        ] {
            assert!(parse_mode(&bad).is_err(), "{bad}");
        }
    }
}
