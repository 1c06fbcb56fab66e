//! `process.Process` service (`api/envd/process/process.proto`, `docs/contract.md` §6.4): Start, Connect, List, SendInput,
//! StreamInput, CloseStdin, SendSignal, Update.

pub mod spawn;
pub mod status;
pub mod table;

pub use table::ProcessTable;

use crate::connect::{
    MAX_STREAM_MESSAGE, StreamSender, UnaryError, UnaryResult, deadline, decode_json, keepalive_interval,
    read_stream_request, read_unary, stream_channel, stream_error, unary_ok,
};
use crate::state::AgentState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use sandboxd_protocol::connect::{
    CONTENT_TYPE_STREAM_JSON, Code, ConnectError, EnvelopeDecoder, encode_end_stream, encode_envelope,
};
use sandboxd_protocol::process::{
    Empty, EndEvent, EventResponse, Input, ListResponse, ProcessEvent, ProcessInfo, ProcessSelector,
    SelectorRequest, SendInputRequest, SendSignalRequest, Signal, StartEvent, StartRequest,
    StreamInputRequest, UpdateRequest,
};
use std::sync::Arc;
use std::time::Duration;
use table::{Attach, InputSink, Out, Proc};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// `POST /process.Process/{method}`.
pub async fn dispatch(
    State(state): State<Arc<AgentState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let unary = |r: UnaryResult| r.unwrap_or_else(|e| e.into_response());
    match method.as_str() {
        "Start" => start(state, headers, body).await,
        "Connect" => connect(state, headers, body).await,
        "StreamInput" => stream_input(state, headers, body).await,
        "List" => unary(list(state, headers, body).await),
        "SendInput" => unary(send_input(state, headers, body).await),
        "CloseStdin" => unary(close_stdin(state, headers, body).await),
        "SendSignal" => unary(send_signal(state, headers, body).await),
        "Update" => unary(update(state, headers, body).await),
        other => UnaryError(ConnectError::unimplemented(format!(
            "process.Process/{other} is not implemented"
        )))
        .into_response(),
    }
}

fn not_found(sel: &sandboxd_protocol::process::Selector) -> ConnectError {
    match sel {
        sandboxd_protocol::process::Selector::Pid(p) => {
            ConnectError::not_found(format!("process with pid {p} not found"))
        }
        sandboxd_protocol::process::Selector::Tag(t) => {
            ConnectError::not_found(format!("process with tag {t} not found"))
        }
    }
}

fn selector(sel: Option<&ProcessSelector>) -> Result<sandboxd_protocol::process::Selector, ConnectError> {
    sel.ok_or_else(|| ConnectError::invalid_argument("process selector is required"))?
        .selector()
        .map_err(ConnectError::invalid_argument)
}

fn find_running(state: &AgentState, sel: Option<&ProcessSelector>) -> Result<Arc<Proc>, ConnectError> {
    let sel = selector(sel)?;
    state.processes.find_running(&sel).ok_or_else(|| not_found(&sel))
}

fn deadline_exceeded() -> ConnectError {
    ConnectError::new(Code::DeadlineExceeded, "deadline exceeded")
}

/// `Start` (server stream): spawn the process, send `start{pid}` at once, then output,
/// keepalives and the `end` event.
async fn start(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> Response {
    start_as(state, headers, body, false).await
}

/// `POST /process.Process/Start` on the control socket: the same, under the command policy's
/// helper ruleset (only `realpath`, `ps`, `chmod`, `kill`) instead of the workload's. Only the
/// daemon reaches that socket; the session API runs its own helper programs this way.
pub async fn start_helper(State(state): State<Arc<AgentState>>, headers: HeaderMap, body: Body) -> Response {
    start_as(state, headers, body, true).await
}

async fn start_as(state: Arc<AgentState>, headers: HeaderMap, body: Body, helper: bool) -> Response {
    let t0 = Instant::now();
    let deadline = match deadline(&headers) {
        Ok(d) => d,
        Err(e) => return stream_error(e),
    };
    let req: StartRequest = match read_stream_request(&headers, body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let (proc, rx) = match start_process(&state, &headers, req, deadline.map(|d| t0 + d), helper) {
        Ok(v) => v,
        Err(e) => return stream_error(e),
    };
    let (tx, resp) = stream_channel();
    let keepalive = keepalive_interval(&headers);
    tokio::spawn(pump(
        tx,
        proc.pid,
        Attach::Live(rx),
        keepalive,
        deadline.map(|d| t0 + d),
    ));
    resp
}

fn start_process(
    state: &Arc<AgentState>,
    headers: &HeaderMap,
    req: StartRequest,
    kill_at: Option<Instant>,
    helper: bool,
) -> Result<(Arc<Proc>, mpsc::Receiver<Out>), ConnectError> {
    let user = crate::auth::rpc_user(headers, state)?;
    let config = req
        .process
        .ok_or_else(|| ConnectError::invalid_argument("process config is required"))?;
    let cfg = state.config();
    let env = spawn::build_env(
        &crate::pid1::default_path(),
        &user,
        &cfg.global_env(),
        &config.envs,
    );
    spawn::validate(&config.cmd, &config.args, &env).map_err(ConnectError::invalid_argument)?;
    let cwd = crate::paths::resolve(
        config.cwd.as_deref().unwrap_or(""),
        &user,
        cfg.default_workdir.as_deref(),
    )
    .map_err(|e| ConnectError::invalid_argument(e.to_string()))?;
    match std::fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ConnectError::invalid_argument(format!(
                "cwd '{cwd}' is not a directory"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConnectError::invalid_argument(format!(
                "cwd '{cwd}' does not exist"
            )));
        }
        Err(e) => return Err(ConnectError::internal(format!("cwd '{cwd}': {e}"))),
    }
    let pty_size = match &req.pty {
        Some(p) => {
            let size = p.size.unwrap_or_default();
            if size.cols > u16::MAX as u32 || size.rows > u16::MAX as u32 {
                return Err(ConnectError::invalid_argument("pty size out of range"));
            }
            Some(size)
        }
        None => None,
    };
    let spec = spawn::SpawnSpec {
        program: config.cmd.clone(),
        args: config.args.clone(),
        env,
        cwd,
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
        pty: pty_size,
        stdin: req.stdin.unwrap_or(true),
        cgroup_fds: cfg.work_cgroup_fds.clone(),
        helper,
    };
    let cmdline = crate::log::command_line(&config.cmd, &config.args);
    let started = spawn::start(&spec).map_err(|e| {
        state
            .processes
            .log
            .process_start_failed(&cmdline, &user.name, &e.to_string());
        if !helper && crate::command_policy::current().is_some() {
            match e.raw_os_error() {
                Some(libc::EACCES) => {
                    return ConnectError::new(
                        Code::PermissionDenied,
                        format!("{} (os error 13)", crate::command_policy::not_allowed_message(&config.cmd)),
                    );
                }
                // the loader guard answers ENOENT for a loader run directly
                Some(libc::ENOENT) if crate::command_policy::is_guarded_loader(&config.cmd, &spec.env) => {
                    return ConnectError::new(
                        Code::PermissionDenied,
                        format!(
                            "command not allowed: '{}' is the ELF loader, which a command policy never lets run directly (os error 13)",
                            config.cmd
                        ),
                    );
                }
                _ => {}
            }
        }
        ConnectError::internal(format!("error starting process '{}': {e}", config.cmd))
    })?;
    tracing::debug!(pid = started.pid, cmd = %config.cmd, "process started");
    state.processes.log.process_started(
        started.pid,
        &cmdline,
        &user.name,
        req.tag.as_deref(),
        spec.pty.is_some(),
    );
    let info = ProcessInfo {
        config,
        pid: started.pid,
        tag: req.tag,
    };
    Ok(state.processes.register(started, info, kill_at))
}

/// Forward a process's events to one stream: `start` first, then output, keepalives when
/// idle, and the `end` event. At `deadline` the stream ends with `deadline_exceeded`. When
/// the client goes away the stream stops; the process keeps running.
async fn pump(tx: StreamSender, pid: u32, attach: Attach, keepalive: Duration, deadline: Option<Instant>) {
    let start = EventResponse {
        event: ProcessEvent::Start(StartEvent { pid }),
    };
    if !tx.send(&start).await {
        return;
    }
    let mut rx = match attach {
        Attach::Ended(end) => return send_end(tx, end, deadline).await,
        Attach::Live(rx) => rx,
    };
    let deadline_sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_sleep);
    let mut next_keepalive = Instant::now() + keepalive;
    loop {
        tokio::select! {
            biased;
            _ = &mut deadline_sleep => return tx.finish(Some(deadline_exceeded())).await,
            ev = rx.recv() => match ev {
                Some(Out::Data(d)) => {
                    let msg = EventResponse { event: ProcessEvent::Data(d) };
                    if !tx.send(&msg).await {
                        return;
                    }
                    next_keepalive = Instant::now() + keepalive;
                }
                Some(Out::End(end)) => return send_end(tx, end, deadline).await,
                None => return tx.finish(Some(ConnectError::internal("process output ended without an end event"))).await,
            },
            _ = tokio::time::sleep_until(next_keepalive) => {
                let msg = EventResponse { event: ProcessEvent::Keepalive(Empty {}) };
                if !tx.send(&msg).await {
                    return;
                }
                next_keepalive = Instant::now() + keepalive;
            }
            _ = tx.closed() => return,
        }
    }
}

async fn send_end(tx: StreamSender, end: EndEvent, deadline: Option<Instant>) {
    // A process killed at the Start deadline ends the stream with deadline_exceeded.
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return tx.finish(Some(deadline_exceeded())).await;
    }
    let msg = EventResponse {
        event: ProcessEvent::End(end),
    };
    if tx.send(&msg).await {
        tx.finish(None).await;
    }
}

/// `Connect` (server stream): attach to a process by pid or tag. Its deadline ends the
/// stream but never kills the process.
async fn connect(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> Response {
    let t0 = Instant::now();
    let deadline = match deadline(&headers) {
        Ok(d) => d,
        Err(e) => return stream_error(e),
    };
    let req: SelectorRequest = match read_stream_request(&headers, body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let sel = match selector(req.process.as_ref()) {
        Ok(s) => s,
        Err(e) => return stream_error(e),
    };
    let Some(proc) = state.processes.find(&sel) else {
        return stream_error(not_found(&sel));
    };
    let (tx, resp) = stream_channel();
    let attach = proc.attach();
    tokio::spawn(pump(
        tx,
        proc.pid,
        attach,
        keepalive_interval(&headers),
        deadline.map(|d| t0 + d),
    ));
    resp
}

/// `List`: every running process with its config as requested.
async fn list(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> UnaryResult {
    let _: Empty = read_unary(&headers, body).await?;
    unary_ok(&ListResponse {
        processes: state.processes.list(),
    })
}

async fn write_input(proc: &Proc, input: Input) -> Result<(), ConnectError> {
    let mut sink = proc.input.lock().await;
    match (&mut *sink, input) {
        (InputSink::Pipe(Some(w)), Input::Stdin(data)) => w.write_all(&data).await.map_err(|e| {
            ConnectError::internal(format!("error writing to stdin of process {}: {e}", proc.pid))
        }),
        (InputSink::Pipe(None), Input::Stdin(_)) => Err(ConnectError::internal(format!(
            "stdin of process {} is closed",
            proc.pid
        ))),
        (InputSink::Disabled, Input::Stdin(_)) => Err(ConnectError::internal(format!(
            "stdin is not enabled for process {}",
            proc.pid
        ))),
        (InputSink::Pty(m), Input::Pty(data)) => spawn::pty_write(m, &data).await.map_err(|e| {
            ConnectError::internal(format!("error writing to pty of process {}: {e}", proc.pid))
        }),
        (InputSink::Pty(_), Input::Stdin(_)) => Err(ConnectError::internal(format!(
            "process {} is a PTY process: send pty input",
            proc.pid
        ))),
        (_, Input::Pty(_)) => Err(ConnectError::internal(format!("process {} has no PTY", proc.pid))),
    }
}

/// `SendInput`: stdin bytes to the stdin pipe, pty bytes to the PTY master.
async fn send_input(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> UnaryResult {
    let t0 = Instant::now();
    let limit = deadline(&headers)?;
    let req: SendInputRequest = read_unary(&headers, body).await?;
    let proc = find_running(&state, req.process.as_ref())?;
    let input = req
        .input
        .ok_or_else(|| ConnectError::invalid_argument("input is required"))?
        .input()
        .map_err(ConnectError::invalid_argument)?;
    match limit {
        Some(d) => tokio::time::timeout_at(t0 + d, write_input(&proc, input))
            .await
            .map_err(|_| deadline_exceeded())??,
        None => write_input(&proc, input).await?,
    }
    unary_ok(&Empty {})
}

/// `CloseStdin`: close the stdin pipe (EOF). Closing twice is fine; a PTY is an error.
async fn close_stdin(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> UnaryResult {
    let req: SelectorRequest = read_unary(&headers, body).await?;
    let proc = find_running(&state, req.process.as_ref())?;
    let mut sink = proc.input.lock().await;
    match &mut *sink {
        InputSink::Pipe(w) => drop(w.take()),
        InputSink::Disabled => {}
        InputSink::Pty(_) => {
            return Err(ConnectError::new(Code::Unknown, "cannot close stdin for PTY process").into());
        }
    }
    unary_ok(&Empty {})
}

/// `SendSignal`: SIGTERM or SIGKILL to the process; other signals are `unimplemented`.
async fn send_signal(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> UnaryResult {
    let req: SendSignalRequest = read_unary(&headers, body).await?;
    let sel = selector(req.process.as_ref())?;
    let signal = match req.signal {
        Signal::SIGKILL => libc::SIGKILL,
        Signal::SIGTERM => libc::SIGTERM,
        other => {
            let name = other
                .name()
                .map(str::to_string)
                .unwrap_or_else(|| other.0.to_string());
            return Err(ConnectError::unimplemented(format!("invalid signal: {name}")).into());
        }
    };
    let proc = state
        .processes
        .find_running(&sel)
        .ok_or_else(|| not_found(&sel))?;
    state.processes.log.signal_requested(proc.pid, signal);
    match proc.signal(signal) {
        Ok(()) => {
            if signal == libc::SIGKILL {
                wait_reaped(proc.pid).await;
            }
            unary_ok(&Empty {})
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(not_found(&sel).into()),
        Err(e) => Err(ConnectError::internal(format!("error sending signal: {e}")).into()),
    }
}

/// After a SIGKILL, wait (up to 2 s) until the reaper has collected the process, so that the
/// pid is gone when `kill()` returns: the SDK's callers check `kill -0 <pid>` right after. A
/// zombie still answers `kill -0`, so "exited" is not enough.
async fn wait_reaped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut delay = Duration::from_micros(200);
    while Instant::now() < deadline {
        // SAFETY: kill(2) with signal 0 only checks that the pid exists; it sends nothing.
        let gone = unsafe { libc::kill(pid as libc::pid_t, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}

/// `Update`: resize the PTY.
async fn update(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> UnaryResult {
    let req: UpdateRequest = read_unary(&headers, body).await?;
    let proc = find_running(&state, req.process.as_ref())?;
    if let Some(pty) = req.pty {
        let size = pty.size.unwrap_or_default();
        if size.cols > u16::MAX as u32 || size.rows > u16::MAX as u32 {
            return Err(ConnectError::invalid_argument("pty size out of range").into());
        }
        let Some(master) = &proc.pty else {
            return Err(ConnectError::internal(format!("process {} is not a PTY process", proc.pid)).into());
        };
        spawn::resize(master, size)
            .map_err(|e| ConnectError::internal(format!("error resizing tty: {e}")))?;
    }
    unary_ok(&Empty {})
}

/// `StreamInput` (client stream): `start{process}` picks the process, then every
/// `data{input}` is written in order; `keepalive` is ignored. Answers `{}` at the end.
async fn stream_input(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> Response {
    match stream_input_inner(&state, &headers, body).await {
        Ok(()) => {
            let mut data = encode_envelope(0, b"{}").to_vec();
            data.extend_from_slice(&encode_end_stream(None));
            let mut resp = Response::new(Body::from(data));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_STREAM_JSON),
            );
            resp
        }
        Err(e) => stream_error(e),
    }
}

async fn stream_input_inner(state: &AgentState, headers: &HeaderMap, body: Body) -> Result<(), ConnectError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().map(str::trim) != Some(CONTENT_TYPE_STREAM_JSON) {
        return Err(ConnectError::unimplemented(format!(
            "unsupported content-type {ct:?}: only application/connect+json is supported"
        )));
    }
    let mut stream = body.into_data_stream();
    let mut dec = EnvelopeDecoder::new(MAX_STREAM_MESSAGE);
    let mut proc: Option<Arc<Proc>> = None;
    loop {
        loop {
            let env = dec
                .next_envelope()
                .map_err(|e| ConnectError::invalid_argument(e.to_string()))?;
            let Some(env) = env else { break };
            if env.is_end_stream() {
                return Ok(());
            }
            let msg: StreamInputRequest = decode_json(&env.payload)?;
            if let Some(start) = msg.start {
                if proc.is_some() {
                    return Err(ConnectError::invalid_argument("start sent twice"));
                }
                proc = Some(find_running(state, start.process.as_ref())?);
            } else if let Some(data) = msg.data {
                let p = proc
                    .as_ref()
                    .ok_or_else(|| ConnectError::invalid_argument("the first message must be start"))?;
                let input = data
                    .input
                    .ok_or_else(|| ConnectError::invalid_argument("input is required"))?
                    .input()
                    .map_err(ConnectError::invalid_argument)?;
                write_input(p, input).await?;
            } else if msg.keepalive.is_none() {
                return Err(ConnectError::invalid_argument("empty stream input message"));
            }
        }
        match stream.next().await {
            Some(Ok(chunk)) => dec.push(&chunk),
            Some(Err(e)) => return Err(ConnectError::new(Code::Canceled, format!("reading request: {e}"))),
            None => {
                if dec.pending() > 0 {
                    return Err(ConnectError::invalid_argument(
                        "truncated message at end of stream",
                    ));
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests;
