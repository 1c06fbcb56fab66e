//! Sessions (`docs/sessions.md`): the shared-environment API's named workspaces. A session is
//! one sandbox of the same core (isolation, limits, disk quota, pool, metrics, logs, re-adoption
//! after a restart), found by the session id stored in its metadata under [`SESSION_METADATA_KEY`].
//! Its files live under [`WORKDIR`]; every path a client names is checked to stay there.
//!
//! Nothing here knows HTTP requests: the handlers in `api/sessions.rs` parse, call one `Daemon`
//! method, and write the answer. The methods are in one file per operation family:
//! `lifecycle.rs` (create, find, delete, status, cleanup), `files.rs`, `exec.rs`.

pub mod envd_calls;
mod exec;
mod files;
mod lifecycle;
pub mod names;
pub mod registry;

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::sandbox::LiveSandbox;
use chrono::{DateTime, Utc};
use envd_calls::{Envd, ExecOutcome, ExecSpec};
pub use files::{Download, FileBatch};
pub use names::{ScriptType, parse_size_mb, relative_path, validate_session_id};
pub use registry::SessionRegistry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Metadata key holding a session sandbox's session id.
pub const SESSION_METADATA_KEY: &str = "sandboxd.session";
/// A session's directory: files are named relative to it, commands start in it.
pub const WORKDIR: &str = "/home/user";
/// Default size (disk quota) of a session, MiB.
pub const DEFAULT_SIZE_MB: u64 = 50;
/// Default lifetime of a session, seconds.
pub const DEFAULT_TIMEOUT_SECS: i64 = 3600;
/// Default time limit of one execution, seconds (capped by the session's time left).
pub const DEFAULT_EXEC_TIMEOUT_SECS: u64 = 300;
/// Time limit of the daemon's own helper commands (path checks, process listing).
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `POST /workspace/se/session/{id}`, already parsed.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub size_mb: Option<u64>,
    pub timeout_secs: Option<i64>,
    pub template: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The workload's task limit (`maxProcesses`).
    pub max_processes: Option<i64>,
    /// The command policy (`docs/command-policy.md`).
    pub allowed_commands: Option<Vec<String>>,
}

/// What a session is, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub sandbox_id: String,
    pub template: String,
    /// Disk quota, MiB.
    pub size_mb: u64,
    pub workdir: &'static str,
    pub started_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
}

/// One entry of a file listing.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub name: String,
    /// Relative to the session's directory.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: i64,
    /// Permission bits in octal, for example `0644`.
    pub mode: String,
    pub modified: DateTime<Utc>,
}

/// A process running in a session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionProcess {
    pub pid: u32,
    pub user: String,
    /// Seconds since it started.
    pub elapsed_secs: u64,
    pub command: String,
}

/// `GET /workspace/se/status/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    pub session_id: String,
    pub sandbox_id: String,
    pub state: &'static str,
    pub template: String,
    pub disk_used_bytes: u64,
    pub disk_size_bytes: u64,
    pub started_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub time_left_secs: i64,
    pub processes: Vec<SessionProcess>,
}

/// A command to execute.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub command: String,
    pub args: Vec<String>,
    /// Run `command` through `bash -c` (with `args` as `$1…`).
    pub shell: bool,
    pub timeout_secs: Option<u64>,
    /// Relative to the session's directory.
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// Code to write to a file and run with an interpreter.
#[derive(Debug, Clone, Default)]
pub struct ExecCodeRequest {
    pub code: String,
    pub filename: Option<String>,
    pub script_type: Option<String>,
    pub args: Vec<String>,
    pub timeout_secs: Option<u64>,
    pub env: BTreeMap<String, String>,
}

/// The result of an execution that ran to its end.
#[derive(Debug, Clone, Serialize)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    /// Seconds.
    pub duration: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stdout_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stderr_truncated: bool,
}

impl ExecResult {
    pub(super) fn of(o: &ExecOutcome) -> Self {
        Self {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            exit_code: o.exit_code,
            duration: o.duration.as_secs_f64(),
            stdout_truncated: o.stdout_truncated,
            stderr_truncated: o.stderr_truncated,
        }
    }

    pub(super) fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }
}

pub(super) fn not_found(session_id: &str) -> DaemonError {
    DaemonError::NotFound(format!("session '{session_id}' does not exist"))
}

pub(super) fn lookup(daemon: &Daemon, session_id: &str) -> Option<Arc<LiveSandbox>> {
    daemon
        .sandboxes()
        .into_iter()
        .find(|s| s.rec.metadata.get(SESSION_METADATA_KEY).map(String::as_str) == Some(session_id))
}

pub(super) fn info(session_id: &str, s: &LiveSandbox) -> SessionInfo {
    SessionInfo {
        session_id: session_id.to_string(),
        sandbox_id: s.id().to_string(),
        template: s.rec.template_id.clone(),
        size_mb: s.rec.limits.disk_mb,
        workdir: WORKDIR,
        started_at: s.rec.started_at,
        end_at: s.end_at(),
    }
}

/// Runs one of the daemon's helper commands in a session (path checks, process listing).
pub(super) async fn helper(envd: &Envd, cmd: &str, args: &[&str]) -> Result<ExecOutcome, DaemonError> {
    // the daemon's programs, not the session's: a command policy lets them run
    let o = envd
        .clone()
        .for_helpers()
        .run(&ExecSpec {
            cmd: cmd.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: Some(WORKDIR.into()),
            timeout: HELPER_TIMEOUT,
            ..Default::default()
        })
        .await?;
    if o.timed_out || o.exit_code != 0 {
        return Err(DaemonError::Internal(format!(
            "helper command {cmd} failed in the session ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(o)
}

/// The absolute path of `rel` inside the session, refused when a symbolic link on the way leads
/// out of the session's directory (resolved inside the sandbox with `realpath -m`).
pub(super) async fn resolve(envd: &Envd, rel: &str) -> Result<String, DaemonError> {
    let joined = if rel.is_empty() {
        WORKDIR.to_string()
    } else {
        format!("{WORKDIR}/{rel}")
    };
    let o = helper(envd, "realpath", &["-m", "--", &joined]).await?;
    let real = String::from_utf8_lossy(&o.stdout)
        .trim_end_matches('\n')
        .to_string();
    if real != WORKDIR && !real.starts_with(&format!("{WORKDIR}/")) {
        return Err(DaemonError::InvalidInput(format!(
            "path '{rel}' leads out of the session's directory (through a symbolic link to {real})"
        )));
    }
    Ok(joined)
}

pub(super) fn time_left(s: &LiveSandbox) -> Duration {
    (s.end_at() - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

/// The processes running in a session: everything but its agent (PID 1), the daemon's own
/// programs (`sandboxd …`) and this listing.
pub(super) async fn processes(envd: &Envd) -> Result<Vec<SessionProcess>, DaemonError> {
    let o = helper(envd, "ps", &["-e", "-o", "pid=,user:32=,etimes=,args="]).await?;
    Ok(names::parse_ps(&String::from_utf8_lossy(&o.stdout), o.pid))
}
