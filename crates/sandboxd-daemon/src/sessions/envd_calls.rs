//! What a session asks of its sandbox's agent over the agent socket: processes
//! (`process.Process/Start`), files (`/files`) and filesystem RPCs, as the session user.
//!
//! One HTTP/1.1 connection per call (a unix-socket connect costs microseconds), so bodies of
//! any type (a streamed upload, a small JSON message) can be sent without a second pooled client.

use crate::agent::UnixConnector;
use crate::error::{DaemonError, Resource};
use crate::sandbox::LiveSandbox;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sandboxd_protocol::connect::{
    CONTENT_TYPE_STREAM_JSON, ConnectError, EndStream, EnvelopeDecoder, encode_envelope,
};
use sandboxd_protocol::filesystem::{
    EntryInfo, EntryResponse, ListDirRequest, ListDirResponse, MoveRequest, PathRequest,
};
use sandboxd_protocol::process::{DataEvent, EventResponse, ProcessConfig, ProcessEvent, StartRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Error type of the bodies sent to the agent.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A body sent to the agent.
pub type CallBody = UnsyncBoxBody<Bytes, BoxError>;

/// The user session commands and files belong to (uid 1000 in every template).
pub const SESSION_USER: &str = "user";
/// Most bytes of stdout and of stderr an execution result keeps (the rest is counted, dropped).
pub const MAX_OUTPUT_BYTES: usize = 8 << 20;
/// Largest stream message accepted from the agent.
const MAX_MESSAGE: usize = 16 << 20;
/// Largest unary response or error body read from the agent.
const MAX_UNARY_BODY: usize = 64 << 20;
/// Time the daemon grants the agent beyond an execution's own timeout before giving up.
const EXEC_GRACE: Duration = Duration::from_secs(10);

/// A body from bytes.
pub fn full_body(b: impl Into<Bytes>) -> CallBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// One command to run.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// Program (looked up on the sandbox's `PATH` when it has no `/`).
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    /// Absolute working directory inside the sandbox.
    pub cwd: Option<String>,
    pub timeout: Duration,
}

/// What an execution produced.
#[derive(Debug, Clone, Default)]
pub struct ExecOutcome {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Exit code, -1 when killed by a signal.
    pub exit_code: i32,
    /// The agent's status text (`exit status 1`, `signal: killed`).
    pub status: String,
    /// Whether the process ran past its timeout (and was killed by the agent).
    pub timed_out: bool,
    pub duration: Duration,
}

/// Calls into one sandbox's agent.
#[derive(Debug, Clone)]
pub struct Envd {
    connector: UnixConnector,
    /// The agent's control socket, where processes start under the command policy's helper
    /// ruleset instead of the workload's.
    control: std::path::PathBuf,
    /// Send calls to [`Envd::control`] ([`Envd::for_helpers`]).
    helpers: bool,
    access_token: Option<String>,
    sandbox_id: String,
    /// The user calls run as ([`SESSION_USER`] unless [`Envd::as_user`] says otherwise).
    user: String,
}

impl Envd {
    /// The agent of a live sandbox.
    pub fn of(s: &LiveSandbox) -> Self {
        Self {
            connector: s.agent.connector().clone(),
            control: match &s.handle.control {
                sandboxd_runtime::AgentEndpoint::Unix(p) => p.clone(),
            },
            helpers: false,
            access_token: s.rec.access_token.clone(),
            sandbox_id: s.rec.id.clone(),
            user: SESSION_USER.to_string(),
        }
    }

    /// The agent listening on `socket` of sandbox `id` (one not live yet: a pooled sandbox).
    pub fn of_handle(
        socket: &std::path::Path,
        id: &str,
        access_token: Option<String>,
    ) -> Result<Self, DaemonError> {
        Ok(Self {
            connector: UnixConnector::new(socket).map_err(|e| DaemonError::AgentFailed {
                sandbox_id: id.to_string(),
                reason: format!("the agent's socket: {e}"),
            })?,
            control: socket.with_file_name("control.sock"),
            helpers: false,
            access_token,
            sandbox_id: id.to_string(),
            user: SESSION_USER.to_string(),
        })
    }

    /// The same agent, with calls made as `user` (template builds run steps as root).
    pub fn as_user(mut self, user: &str) -> Self {
        self.user = user.to_string();
        self
    }

    /// The same agent, with processes started on its control socket, where a command policy
    /// lets only the daemon's own helper programs run (`realpath`, `ps`, `chmod`, `kill`;
    /// `docs/command-policy.md`). Never for a command a request names; only [`Envd::run`] may
    /// be called on it.
    pub fn for_helpers(mut self) -> Self {
        self.helpers = true;
        self
    }

    fn failed(&self, reason: impl Into<String>) -> DaemonError {
        DaemonError::AgentFailed {
            sandbox_id: self.sandbox_id.clone(),
            reason: reason.into(),
        }
    }

    fn request(&self, method: Method, path_and_query: &str) -> http::request::Builder {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:", self.user));
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://agent{path_and_query}"))
            .header(header::HOST, "agent")
            .header(header::AUTHORIZATION, format!("Basic {basic}"));
        if let Some(t) = &self.access_token {
            b = b.header("x-access-token", t);
        }
        b
    }

    async fn send(&self, req: Request<CallBody>) -> Result<Response<Incoming>, DaemonError> {
        let stream = if self.helpers {
            UnixConnector::new(&self.control)
                .map_err(|e| self.failed(format!("the agent's control socket: {e}")))?
                .connect()
                .await
        } else {
            self.connector.connect().await
        }
        .map_err(|e| self.failed(format!("cannot connect: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.failed(format!("handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("agent call connection ended: {e}");
            }
        });
        sender.send_request(req).await.map_err(|e| {
            let e = crate::agent::send_error(e);
            match e {
                crate::agent::AgentError::ClientBody(m) => {
                    DaemonError::InvalidInput(format!("reading the request body failed: {m}"))
                }
                other => self.failed(other.to_string()),
            }
        })
    }

    /// A unary Connect call (JSON codec).
    pub async fn unary<Q: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        msg: &Q,
    ) -> Result<R, DaemonError> {
        let body =
            serde_json::to_vec(msg).map_err(|e| DaemonError::Internal(format!("encoding {method}: {e}")))?;
        let req = self
            .request(Method::POST, &format!("/{method}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("connect-protocol-version", "1")
            .body(full_body(body))
            .map_err(|e| DaemonError::Internal(e.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = read_limited(resp.into_body(), MAX_UNARY_BODY)
            .await
            .map_err(|e| self.failed(format!("{method}: {e}")))?;
        if status != StatusCode::OK {
            let err: ConnectError = serde_json::from_slice(&bytes).map_err(|_| {
                self.failed(format!(
                    "{method}: status {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ))
            })?;
            return Err(self.rpc_error(err));
        }
        serde_json::from_slice(&bytes).map_err(|e| self.failed(format!("{method}: bad response: {e}")))
    }

    /// A Connect error of the agent as our error.
    fn rpc_error(&self, e: ConnectError) -> DaemonError {
        use sandboxd_protocol::connect::Code;
        match e.code {
            Code::NotFound => DaemonError::NotFound(e.message),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::AlreadyExists => {
                DaemonError::InvalidInput(e.message)
            }
            Code::PermissionDenied | Code::Unauthenticated => DaemonError::SecurityDenied(e.message),
            Code::ResourceExhausted => DaemonError::ResourceExhausted {
                resource: Resource::Disk,
                message: e.message,
            },
            Code::DeadlineExceeded => DaemonError::Timeout(e.message),
            _ => self.failed(e.message),
        }
    }

    /// `filesystem.Filesystem/ListDir`.
    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>, DaemonError> {
        let r: ListDirResponse = self
            .unary(
                "filesystem.Filesystem/ListDir",
                &ListDirRequest {
                    path: path.to_string(),
                    depth,
                },
            )
            .await?;
        Ok(r.entries)
    }

    /// `filesystem.Filesystem/Stat`.
    pub async fn stat(&self, path: &str) -> Result<EntryInfo, DaemonError> {
        let r: EntryResponse = self
            .unary("filesystem.Filesystem/Stat", &PathRequest { path: path.into() })
            .await?;
        r.entry
            .ok_or_else(|| self.failed("Stat answered without an entry"))
    }

    /// `filesystem.Filesystem/MakeDir` (parents included; an existing directory is fine).
    pub async fn make_dir(&self, path: &str) -> Result<(), DaemonError> {
        match self
            .unary::<_, EntryResponse>(
                "filesystem.Filesystem/MakeDir",
                &PathRequest { path: path.into() },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(DaemonError::InvalidInput(m)) if m.contains("exists") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `filesystem.Filesystem/Remove`.
    pub async fn remove(&self, path: &str) -> Result<(), DaemonError> {
        self.unary::<_, serde_json::Value>("filesystem.Filesystem/Remove", &PathRequest { path: path.into() })
            .await
            .map(|_| ())
    }

    /// `filesystem.Filesystem/Move` (a rename: atomic on one file system).
    pub async fn rename(&self, source: &str, destination: &str) -> Result<(), DaemonError> {
        self.unary::<_, EntryResponse>(
            "filesystem.Filesystem/Move",
            &MoveRequest {
                source: source.into(),
                destination: destination.into(),
            },
        )
        .await
        .map(|_| ())
    }

    fn files_uri(path: &str, user: &str) -> String {
        format!(
            "/files?path={}&username={}",
            utf8_percent_encode(path, NON_ALPHANUMERIC),
            utf8_percent_encode(user, NON_ALPHANUMERIC)
        )
    }

    /// Writes `body` to `path` (streamed; parents created by the agent).
    pub async fn upload(&self, path: &str, body: CallBody) -> Result<(), DaemonError> {
        let req = self
            .request(Method::POST, &Self::files_uri(path, &self.user))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .map_err(|e| DaemonError::Internal(e.to_string()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        if status == StatusCode::OK {
            // drain the small JSON answer so the connection closes cleanly
            let _ = read_limited(resp.into_body(), MAX_UNARY_BODY).await;
            return Ok(());
        }
        Err(self.files_error(status, resp).await)
    }

    /// Opens `path` for download: the agent's streaming response.
    pub async fn download(&self, path: &str) -> Result<Response<Incoming>, DaemonError> {
        let req = self
            .request(Method::GET, &Self::files_uri(path, &self.user))
            .body(full_body(Bytes::new()))
            .map_err(|e| DaemonError::Internal(e.to_string()))?;
        let resp = self.send(req).await?;
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
        let status = resp.status();
        Err(self.files_error(status, resp).await)
    }

    async fn files_error(&self, status: StatusCode, resp: Response<Incoming>) -> DaemonError {
        let bytes = read_limited(resp.into_body(), 64 << 10).await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        match status {
            StatusCode::NOT_FOUND => DaemonError::NotFound(message),
            StatusCode::BAD_REQUEST => DaemonError::InvalidInput(message),
            StatusCode::INSUFFICIENT_STORAGE => DaemonError::ResourceExhausted {
                resource: Resource::Disk,
                message,
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => DaemonError::SecurityDenied(message),
            _ => self.failed(format!("/files answered {status}: {message}")),
        }
    }

    /// Runs a process to its end (or its timeout) and collects its output, bounded.
    pub async fn run(&self, spec: &ExecSpec) -> Result<ExecOutcome, DaemonError> {
        let start = StartRequest {
            process: Some(ProcessConfig {
                cmd: spec.cmd.clone(),
                args: spec.args.clone(),
                envs: spec.envs.clone(),
                cwd: spec.cwd.clone(),
            }),
            pty: None,
            tag: None,
            stdin: Some(false),
        };
        let payload = serde_json::to_vec(&start).map_err(|e| DaemonError::Internal(e.to_string()))?;
        let timeout_ms = spec.timeout.as_millis().max(1);
        let req = self
            .request(Method::POST, "/process.Process/Start")
            .header(header::CONTENT_TYPE, CONTENT_TYPE_STREAM_JSON)
            .header("connect-protocol-version", "1")
            .header("connect-timeout-ms", timeout_ms.to_string())
            .body(full_body(encode_envelope(0, &payload)))
            .map_err(|e| DaemonError::Internal(e.to_string()))?;
        let t0 = Instant::now();
        let collect = async {
            let resp = self.send(req).await?;
            let status = resp.status();
            if status != StatusCode::OK {
                let bytes = read_limited(resp.into_body(), 64 << 10).await.unwrap_or_default();
                return Err(match serde_json::from_slice::<ConnectError>(&bytes) {
                    Ok(e) => self.start_failure(&spec.cmd, e),
                    Err(_) => self.failed(format!(
                        "process start answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    )),
                });
            }
            self.collect_events(&spec.cmd, resp.into_body(), t0).await
        };
        match tokio::time::timeout(spec.timeout + EXEC_GRACE, collect).await {
            Ok(r) => r,
            Err(_) => Err(self.failed("the agent did not end the execution after its timeout")),
        }
    }

    /// A process that could not start: a missing program is `not_found`, one that may not be
    /// executed `security_denied`, a full process table `resource_exhausted`.
    fn start_failure(&self, cmd: &str, e: ConnectError) -> DaemonError {
        let m = &e.message;
        // a command policy's refusal already says what and why (sandboxd_envd::command_policy)
        if let Some(why) = m.strip_prefix("command not allowed: ") {
            return DaemonError::SecurityDenied(format!(
                "command not allowed: {}",
                why.trim_end_matches(" (os error 13)")
            ));
        }
        if m.contains("(os error 2)") {
            DaemonError::NotFound(format!("command '{cmd}' not found in the sandbox ({m})"))
        } else if m.contains("(os error 13)") {
            DaemonError::SecurityDenied(format!("command '{cmd}' may not be executed ({m})"))
        } else if m.contains("(os error 11)") {
            DaemonError::ResourceExhausted {
                resource: Resource::Processes,
                message: format!("cannot start '{cmd}': the sandbox's process limit is reached ({m})"),
            }
        } else if e.code == sandboxd_protocol::connect::Code::Internal {
            DaemonError::Internal(format!("cannot start '{cmd}': {m}"))
        } else {
            self.rpc_error(e)
        }
    }

    async fn collect_events(
        &self,
        cmd: &str,
        mut body: Incoming,
        t0: Instant,
    ) -> Result<ExecOutcome, DaemonError> {
        let mut out = ExecOutcome::default();
        let mut decoder = EnvelopeDecoder::new(MAX_MESSAGE);
        let mut ended = false;
        loop {
            while let Some(env) = decoder
                .next_envelope()
                .map_err(|e| self.failed(format!("process stream: {e}")))?
            {
                if env.is_end_stream() {
                    let end: EndStream = serde_json::from_slice(&env.payload).unwrap_or_default();
                    out.duration = t0.elapsed();
                    return match end.error {
                        None if ended => Ok(out),
                        None => Err(self.failed("process stream ended without an end event")),
                        Some(e) if e.code == sandboxd_protocol::connect::Code::DeadlineExceeded => {
                            out.timed_out = true;
                            out.exit_code = -1;
                            Ok(out)
                        }
                        Some(e) if out.pid == 0 => Err(self.start_failure(cmd, e)),
                        Some(e) => Err(self.rpc_error(e)),
                    };
                }
                let msg: EventResponse = serde_json::from_slice(&env.payload)
                    .map_err(|e| self.failed(format!("process event: {e}")))?;
                match msg.event {
                    ProcessEvent::Start(s) => out.pid = s.pid,
                    ProcessEvent::Data(DataEvent::Stdout(b)) => {
                        append_bounded(&mut out.stdout, &b, &mut out.stdout_truncated)
                    }
                    ProcessEvent::Data(DataEvent::Stderr(b)) | ProcessEvent::Data(DataEvent::Pty(b)) => {
                        append_bounded(&mut out.stderr, &b, &mut out.stderr_truncated)
                    }
                    ProcessEvent::End(e) => {
                        ended = true;
                        out.exit_code = e.exit_code;
                        out.status = e.status;
                    }
                    ProcessEvent::Keepalive(_) => {}
                }
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        decoder.push(&data);
                    }
                }
                Some(Err(e)) => return Err(self.failed(format!("process stream: {e}"))),
                None if ended => {
                    out.duration = t0.elapsed();
                    return Ok(out);
                }
                None => return Err(self.failed("process stream ended without an end event")),
            }
        }
    }
}

fn append_bounded(buf: &mut Vec<u8>, data: &[u8], truncated: &mut bool) {
    let room = MAX_OUTPUT_BYTES.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Reads a whole body of at most `max` bytes.
async fn read_limited(mut body: Incoming, max: usize) -> Result<Bytes, String> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(format!("response larger than {max} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_bounded() {
        let mut buf = vec![0u8; MAX_OUTPUT_BYTES - 2];
        let mut t = false;
        append_bounded(&mut buf, b"abc", &mut t);
        assert!(t);
        assert_eq!(buf.len(), MAX_OUTPUT_BYTES);
        assert_eq!(&buf[buf.len() - 2..], b"ab");
    }

    #[test]
    fn file_uris_encode_the_path() {
        assert_eq!(
            Envd::files_uri("/home/user/a b&c", SESSION_USER),
            "/files?path=%2Fhome%2Fuser%2Fa%20b%26c&username=user"
        );
    }
}
