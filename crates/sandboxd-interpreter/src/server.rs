//! The HTTP API (code-interpreter.md §2–§4).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::context::{Context, Kernels, Registry};
use crate::envs::EnvSource;
use crate::error::Error;
use crate::kernel::{Exit, Kernel};
use crate::language::{self, Language};
use crate::output::{self, ExecutionState};

/// Largest request body (a 10 MB cell must fit, with JSON escaping).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// A keepalive line after this much silence (it is also how a gone client is noticed).
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// Bound on a setup cell (env vars).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared server state.
pub struct AppState {
    /// Contexts.
    pub registry: Registry,
    /// Kernel starter.
    pub kernels: Kernels,
    /// Global env vars.
    pub envs: EnvSource,
    /// Working directory of default contexts.
    pub default_cwd: String,
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/execute", post(execute))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", delete(delete_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

fn json_response(value: &Value) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn error_status(e: &Error) -> StatusCode {
    match e {
        Error::UnsupportedLanguage(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn health() -> Response {
    json_response(&Value::String("OK".into()))
}

/// `GET /ready` (sandboxd only, not part of E2B's API): waits until the default Python
/// kernel runs (starting it if it is not running), then 200 `"OK"`; 500 with the reason when it
/// cannot start. The runtime polls it before a code-interpreter sandbox counts as created.
async fn ready(State(st): State<Arc<AppState>>) -> Response {
    let ctx = match st
        .registry
        .default_for(Language::Python, &st.default_cwd, &st.kernels)
        .await
    {
        Ok(c) => c,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match ctx.kernel(&st.kernels).await {
        Ok(_) => json_response(&Value::String("OK".into())),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct CreateContext {
    language: Option<String>,
    cwd: Option<String>,
}

fn parse_language(raw: Option<&str>) -> Result<Language, Error> {
    let name = language::normalize(raw);
    Language::from_normalized(&name).ok_or(Error::UnsupportedLanguage(name))
}

async fn create_context(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let req: CreateContext = if body.iter().all(u8::is_ascii_whitespace) {
        CreateContext {
            language: None,
            cwd: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid request body: {e}")),
        }
    };
    let language = match parse_language(req.language.as_deref()) {
        Ok(l) => l,
        Err(e) => return text(error_status(&e), e.to_string()),
    };
    let cwd = req
        .cwd
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| st.default_cwd.clone());
    if let Err(e) = st.kernels.launcher.command_for(language) {
        return text(error_status(&e), e.to_string());
    }
    let ctx = st.registry.create(language, cwd);
    if let Err(e) = ctx.kernel(&st.kernels).await {
        st.registry.remove(&ctx.id).await;
        return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    info!(context = %ctx.id, %language, cwd = %ctx.cwd, "context created");
    json_response(&serde_json::to_value(ctx.info()).unwrap_or(Value::Null))
}

async fn list_contexts(State(st): State<Arc<AppState>>) -> Response {
    let list: Vec<_> = st.registry.list().iter().map(|c| c.info()).collect();
    json_response(&serde_json::to_value(list).unwrap_or(Value::Null))
}

async fn delete_context(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(ctx) = st.registry.remove(&id).await else {
        return text(StatusCode::NOT_FOUND, format!("Context {id} not found"));
    };
    ctx.stop().await;
    info!(context = %id, "context removed");
    json_response(&Value::Null)
}

async fn restart_context(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Some(ctx) = st.registry.get(&id) else {
        return text(StatusCode::NOT_FOUND, format!("Context {id} not found"));
    };
    match ctx.restart(&st.kernels).await {
        Ok(()) => {
            info!(context = %id, "context restarted");
            json_response(&Value::Null)
        }
        Err(e) => {
            warn!(context = %id, "restart failed: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Failed to restart context {id}: {e}"),
            )
        }
    }
}

#[derive(Deserialize)]
struct ExecuteRequest {
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, Value>>,
}

async fn execute(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: ExecuteRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid request body: {e}")),
    };
    drop(body);
    let context_id = req.context_id.filter(|s| !s.is_empty());
    let lang_raw = req.language.filter(|s| !s.trim().is_empty());
    if context_id.is_some() && lang_raw.is_some() {
        return text(
            StatusCode::BAD_REQUEST,
            "Only one of context_id or language can be provided",
        );
    }
    let mut env_vars = Vec::new();
    for (k, v) in req.env_vars.unwrap_or_default() {
        match v {
            Value::String(s) => env_vars.push((k, s)),
            Value::Null => {}
            other => env_vars.push((k, other.to_string())),
        }
    }
    let ctx = if let Some(id) = &context_id {
        match st.registry.get(id) {
            Some(c) => c,
            None => return text(StatusCode::NOT_FOUND, format!("Context {id} not found")),
        }
    } else {
        let language = match parse_language(lang_raw.as_deref()) {
            Ok(l) => l,
            Err(e) => return text(error_status(&e), e.to_string()),
        };
        match st
            .registry
            .default_for(language, &st.default_cwd, &st.kernels)
            .await
        {
            Ok(c) => c,
            Err(e) => return text(error_status(&e), e.to_string()),
        }
    };
    // Start the kernel now, so that a missing or broken kernel is a clear 500, not a stream.
    if let Err(e) = ctx.kernel(&st.kernels).await {
        return text(error_status(&e), e.to_string());
    }
    let token = headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(run_execution(st.clone(), ctx, req.code, env_vars, token, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "failed to build the response"))
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Where the lines of one execution go; notices when the client is gone.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    gone: bool,
}

impl Sink {
    async fn send(&mut self, v: &Value) {
        if !self.gone && self.tx.send(line(v)).await.is_err() {
            self.gone = true;
        }
    }
}

async fn run_execution(
    st: Arc<AppState>,
    ctx: Arc<Context>,
    code: String,
    env_vars: Vec<(String, String)>,
    token: Option<String>,
    tx: mpsc::Sender<Bytes>,
) {
    let mut sink = Sink { tx, gone: false };
    let _turn = ctx.exec_lock.lock().await;
    let prepared = prepare(&st, &ctx, &env_vars, token.as_deref()).await;
    let (kernel, globals) = match prepared {
        Ok(k) => k,
        Err(e) => {
            sink.send(&output::error_line("KernelError", &e.to_string(), ""))
                .await;
            sink.send(&output::end_of_execution()).await;
            return;
        }
    };
    run_cell(&st, &ctx, &kernel, code, &mut sink).await;
    if !env_vars.is_empty() && kernel.is_running() {
        let mut set = Vec::new();
        let mut del = Vec::new();
        for (k, _) in &env_vars {
            match globals.get(k) {
                Some(v) => set.push((k.clone(), v.clone())),
                None => del.push(k.clone()),
            }
        }
        if let Some(cell) = ctx.language.env_cell(&set, &del) {
            match kernel.run_silent(cell, SETUP_TIMEOUT).await {
                Ok(None) => {}
                Ok(Some(err)) => warn!(context = %ctx.id, "restoring env vars failed: {err}"),
                Err(e) => warn!(context = %ctx.id, "restoring env vars failed: {e}"),
            }
        }
    }
    sink.send(&output::end_of_execution()).await;
}

/// Makes sure the kernel runs, applies global env vars on its first execution and the
/// per-execution ones. Returns the kernel and the global vars.
async fn prepare(
    st: &AppState,
    ctx: &Context,
    env_vars: &[(String, String)],
    token: Option<&str>,
) -> Result<(Arc<Kernel>, BTreeMap<String, String>), Error> {
    let mut slot = ctx.slot.lock().await;
    let (kernel, need_globals) = ctx.kernel_locked(&mut slot, &st.kernels).await?;
    let globals = st.envs.globals(token).await;
    let mut set: Vec<(String, String)> = Vec::new();
    if need_globals {
        set.extend(globals.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    set.extend(env_vars.iter().cloned());
    if let Some(cell) = ctx.language.env_cell(&set, &[]) {
        match kernel.run_silent(cell, SETUP_TIMEOUT).await? {
            None => {}
            Some(err) => warn!(context = %ctx.id, "setting env vars failed: {err}"),
        }
    }
    slot.globals_applied = true;
    Ok((kernel, globals))
}

async fn run_cell(st: &AppState, ctx: &Context, kernel: &Arc<Kernel>, code: String, sink: &mut Sink) {
    let (ktx, mut krx) = mpsc::channel(8);
    let mut exit_rx = kernel.exit_watch();
    if let Err(e) = kernel.execute(code, false, ktx).await {
        sink.send(&output::error_line("KernelError", &e.to_string(), ""))
            .await;
        return;
    }
    let deno = matches!(ctx.language, Language::Javascript | Language::Typescript);
    let mut state = ExecutionState {
        strip_ansi: deno,
        ..ExecutionState::default()
    };
    let mut interrupted: Option<tokio::time::Instant> = None;
    let keepalive = tokio::time::sleep(KEEPALIVE);
    tokio::pin!(keepalive);
    loop {
        if sink.gone && interrupted.is_none() {
            debug!(context = %ctx.id, "client went away: interrupting");
            kernel.interrupt().await;
            interrupted = Some(tokio::time::Instant::now() + kernel.interrupt_grace());
        }
        let grace = async {
            match interrupted {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = krx.recv() => {
                let Some(m) = m else { break };
                let mapped = output::map_message(&m, &mut state);
                for l in &mapped.lines {
                    sink.send(l).await;
                }
                keepalive.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
                if mapped.end {
                    if deno {
                        linger(&mut krx, &mut state, sink).await;
                    }
                    break;
                }
            }
            _ = exit_rx.changed() => {
                let exit = exit_rx.borrow().clone();
                let traceback = match &exit {
                    Exit::Crashed(how) => format!(
                        "The {} kernel process {how} during this execution; it will be restarted on the next execution and its state is lost.\n",
                        ctx.language
                    ),
                    _ => String::new(),
                };
                sink.send(&output::error_line("ContextRestarting", "Context was restarted", &traceback)).await;
                break;
            }
            _ = &mut keepalive, if !sink.gone => {
                sink.send(&output::keepalive()).await;
                keepalive.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
            }
            _ = sink.tx.closed(), if !sink.gone => {
                sink.gone = true;
            }
            _ = grace => {
                warn!(context = %ctx.id, "kernel did not stop after an interrupt; restarting it");
                kernel.clear_route();
                if let Err(e) = ctx.restart(&st.kernels).await {
                    warn!(context = %ctx.id, "restart failed: {e}");
                }
                return;
            }
        }
    }
    kernel.clear_route();
}

/// Deno's kernel sometimes publishes `idle` just before the last outputs of a cell (seen with the
/// first cell after a start): take what arrives right after the end, until a short quiet gap.
async fn linger(
    krx: &mut mpsc::Receiver<crate::output::KernelMessage>,
    state: &mut ExecutionState,
    sink: &mut Sink,
) {
    const QUIET: Duration = Duration::from_millis(50);
    while let Ok(Some(m)) = tokio::time::timeout(QUIET, krx.recv()).await {
        let mapped = output::map_message(&m, state);
        for l in &mapped.lines {
            sink.send(l).await;
        }
    }
}
