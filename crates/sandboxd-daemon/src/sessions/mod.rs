//! Sessions (`docs/sessions.md`): the shared-environment API's named workspaces. A session is
//! one sandbox of the same core (isolation, limits, disk quota, pool, metrics, logs, re-adoption
//! after a restart), found by the session id stored in its metadata under [`SESSION_METADATA_KEY`].
//! Its files live under [`WORKDIR`]; every path a client names is checked to stay there.
//!
//! Nothing here knows HTTP requests: the handlers in `api/sessions.rs` parse, call one of these
//! operations, and write the answer.

pub mod envd_calls;
pub mod names;
pub mod registry;

use crate::daemon::Daemon;
use crate::error::{DaemonError, Resource};
use crate::params::CreateParams;
use crate::sandbox::LiveSandbox;
use chrono::{DateTime, Utc};
use envd_calls::{CallBody, Envd, ExecOutcome, ExecSpec, full_body};
pub use names::{ScriptType, parse_size_mb, relative_path, validate_session_id};
pub use registry::SessionRegistry;
use sandboxd_store::SandboxState;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
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
    fn of(o: &ExecOutcome) -> Self {
        Self {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            exit_code: o.exit_code,
            duration: o.duration.as_secs_f64(),
            stdout_truncated: o.stdout_truncated,
            stderr_truncated: o.stderr_truncated,
        }
    }

    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }
}

fn not_found(session_id: &str) -> DaemonError {
    DaemonError::NotFound(format!("session '{session_id}' does not exist"))
}

/// Every session sandbox with its session id.
pub fn all(daemon: &Daemon) -> Vec<(String, Arc<LiveSandbox>)> {
    let mut v: Vec<_> = daemon
        .sandboxes
        .all()
        .into_iter()
        .filter_map(|s| {
            let sid = s.rec.metadata.get(SESSION_METADATA_KEY)?.clone();
            Some((sid, s))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn lookup(daemon: &Daemon, session_id: &str) -> Option<Arc<LiveSandbox>> {
    daemon
        .sandboxes()
        .into_iter()
        .find(|s| s.rec.metadata.get(SESSION_METADATA_KEY).map(String::as_str) == Some(session_id))
}

/// The running sandbox of a session.
pub fn find(daemon: &Daemon, session_id: &str) -> Result<Arc<LiveSandbox>, DaemonError> {
    validate_session_id(session_id)?;
    let s = lookup(daemon, session_id).ok_or_else(|| not_found(session_id))?;
    match s.state() {
        SandboxState::Running => Ok(s),
        SandboxState::Paused => Err(DaemonError::Conflict(format!(
            "session '{session_id}' is paused (its sandbox {} was paused through the E2B API); resume it first",
            s.id()
        ))),
        _ => Err(not_found(session_id)),
    }
}

fn info(session_id: &str, s: &LiveSandbox) -> SessionInfo {
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

struct Creating<'a> {
    registry: &'a SessionRegistry,
    id: String,
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        let mut c = self.registry.creating.lock().unwrap_or_else(|p| p.into_inner());
        c.remove(&self.id);
    }
}

/// Creates a session: a sandbox of `template` (default `base`) with a disk quota of `size_mb`
/// (default 50) that lives `timeout_secs` (default 3600). 409 if the session exists.
pub async fn create(
    daemon: &Arc<Daemon>,
    session_id: &str,
    opts: SessionOptions,
) -> Result<SessionInfo, DaemonError> {
    validate_session_id(session_id)?;
    let exists = || DaemonError::Conflict(format!("session '{session_id}' already exists"));
    let _creating = {
        let mut c = daemon.sessions.creating.lock().unwrap_or_else(|p| p.into_inner());
        if lookup(daemon, session_id).is_some() || !c.insert(session_id.to_string()) {
            return Err(exists());
        }
        Creating {
            registry: &daemon.sessions,
            id: session_id.to_string(),
        }
    };
    let size_mb = opts.size_mb.unwrap_or(DEFAULT_SIZE_MB);
    let params = CreateParams {
        template: opts.template.unwrap_or_else(|| "base".into()),
        timeout_secs: opts.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
        secure: true,
        allow_internet_access: true,
        metadata: BTreeMap::from([(SESSION_METADATA_KEY.to_string(), session_id.to_string())]),
        env_vars: opts.env,
        disk_mb: Some(size_mb as i64),
        max_processes: opts.max_processes,
        ..Default::default()
    };
    let s = daemon.create(params).await?;
    tracing::info!(session = %session_id, sandbox = %s.id(), size_mb, "session created");
    Ok(info(session_id, &s))
}

/// Ends a session and removes its files.
pub async fn delete(daemon: &Arc<Daemon>, session_id: &str) -> Result<(), DaemonError> {
    validate_session_id(session_id)?;
    let s = lookup(daemon, session_id).ok_or_else(|| not_found(session_id))?;
    if !daemon.kill(s.id(), "session deleted").await? {
        return Err(not_found(session_id));
    }
    Ok(())
}

/// Runs one of the daemon's helper commands in a session (path checks, process listing).
async fn helper(envd: &Envd, cmd: &str, args: &[&str]) -> Result<ExecOutcome, DaemonError> {
    let o = envd
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
async fn resolve(envd: &Envd, rel: &str) -> Result<String, DaemonError> {
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

/// A set of files written to temporary names and renamed into place only once all of them are
/// complete, so a failed or refused upload leaves nothing half-written.
pub struct FileBatch {
    envd: Envd,
    session_id: String,
    /// `(temporary path, final path)`.
    staged: Vec<(String, String)>,
    seen: HashSet<String>,
}

/// A batch of file writes into a session.
pub fn begin_files(daemon: &Daemon, session_id: &str) -> Result<FileBatch, DaemonError> {
    let s = find(daemon, session_id)?;
    Ok(FileBatch {
        envd: Envd::of(&s),
        session_id: session_id.to_string(),
        staged: Vec::new(),
        seen: HashSet::new(),
    })
}

/// Refuses an upload whose declared length cannot fit the session's free disk space.
pub async fn check_room(daemon: &Daemon, session_id: &str, declared_bytes: u64) -> Result<(), DaemonError> {
    let s = find(daemon, session_id)?;
    let stats = daemon.backend().stats(s.id()).await?;
    let Some(total) = stats.disk_total else {
        return Ok(());
    };
    let free = total.saturating_sub(stats.disk_used);
    if declared_bytes > free {
        return Err(DaemonError::ResourceExhausted {
            resource: Resource::Disk,
            message: format!(
                "upload of {declared_bytes} bytes does not fit session '{session_id}': {free} of its {} MiB are free",
                total >> 20
            ),
        });
    }
    Ok(())
}

impl FileBatch {
    /// Streams `body` to a temporary file next to `rel`'s final place.
    pub async fn add(&mut self, rel: &str, body: CallBody) -> Result<(), DaemonError> {
        let rel = relative_path(rel)?;
        if rel.is_empty() {
            return Err(DaemonError::InvalidInput("a file name is required".into()));
        }
        if !self.seen.insert(rel.clone()) {
            return Err(DaemonError::InvalidInput(format!(
                "file '{rel}' appears more than once"
            )));
        }
        let dest = resolve(&self.envd, &rel).await?;
        let (dir, name) = dest.rsplit_once('/').unwrap_or((WORKDIR, &dest));
        let tmp = format!("{dir}/.{name}.sandboxd-upload-{}", crate::ids::new_token());
        let r = self.envd.upload(&tmp, body).await;
        self.staged.push((tmp, dest));
        r.map_err(|e| match e {
            DaemonError::ResourceExhausted { resource, message } => DaemonError::ResourceExhausted {
                resource,
                message: format!(
                    "session '{}' is full writing '{rel}' (its size is a disk quota): {message}",
                    self.session_id
                ),
            },
            other => other,
        })
    }

    /// Renames every staged file into place.
    pub async fn commit(mut self) -> Result<Vec<String>, DaemonError> {
        let staged = std::mem::take(&mut self.staged);
        let mut done = Vec::new();
        for (i, (tmp, dest)) in staged.iter().enumerate() {
            if let Err(e) = self.envd.rename(tmp, dest).await {
                let rest = staged[i..].to_vec();
                discard(&self.envd, rest).await;
                return Err(e);
            }
            done.push(
                dest.strip_prefix(&format!("{WORKDIR}/"))
                    .unwrap_or(dest)
                    .to_string(),
            );
        }
        Ok(done)
    }

    /// Removes every staged file.
    pub async fn abort(mut self) {
        let staged = std::mem::take(&mut self.staged);
        discard(&self.envd, staged).await;
    }
}

async fn discard(envd: &Envd, staged: Vec<(String, String)>) {
    for (tmp, _) in staged {
        if let Err(e) = envd.remove(&tmp).await
            && !matches!(e, DaemonError::NotFound(_))
        {
            tracing::warn!(path = %tmp, "removing a partial upload: {e}");
        }
    }
}

/// Writes one file from bytes, then sets its permission bits when `mode` is given.
pub async fn create_file(
    daemon: &Daemon,
    session_id: &str,
    rel: &str,
    content: Vec<u8>,
    mode: Option<u32>,
) -> Result<String, DaemonError> {
    let mut batch = begin_files(daemon, session_id)?;
    let envd = batch.envd.clone();
    if let Err(e) = batch.add(rel, full_body(content)).await {
        batch.abort().await;
        return Err(e);
    }
    let written = batch.commit().await?;
    let path = written.into_iter().next().unwrap_or_default();
    if let Some(mode) = mode {
        let abs = format!("{WORKDIR}/{path}");
        helper(&envd, "chmod", &[&format!("{mode:o}"), "--", &abs]).await?;
    }
    Ok(path)
}

/// Lists a directory of the session (its top by default).
pub async fn list_files(
    daemon: &Daemon,
    session_id: &str,
    sub: Option<&str>,
) -> Result<Vec<FileEntry>, DaemonError> {
    let s = find(daemon, session_id)?;
    let envd = Envd::of(&s);
    let rel = relative_path(sub.unwrap_or(""))?;
    let abs = resolve(&envd, &rel).await?;
    let entries = envd.list_dir(&abs, 1).await?;
    let prefix = format!("{WORKDIR}/");
    let mut out: Vec<FileEntry> = entries
        .into_iter()
        .map(|e| {
            use sandboxd_protocol::filesystem::FileType;
            let kind = if e.is_symlink {
                "symlink"
            } else {
                match e.file_type {
                    FileType::Directory => "dir",
                    _ => "file",
                }
            };
            FileEntry {
                path: e.path.strip_prefix(&prefix).unwrap_or(&e.path).to_string(),
                name: e.name,
                kind,
                size: e.size,
                mode: format!("{:04o}", e.mode & 0o7777),
                modified: e.modified_time,
            }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A file's contents as the agent streams them.
pub struct Download {
    pub name: String,
    pub size: Option<u64>,
    pub body: hyper::body::Incoming,
}

/// Opens a file of the session for download.
pub async fn download(daemon: &Daemon, session_id: &str, rel: &str) -> Result<Download, DaemonError> {
    let s = find(daemon, session_id)?;
    let envd = Envd::of(&s);
    let rel = relative_path(rel)?;
    if rel.is_empty() {
        return Err(DaemonError::InvalidInput("a file name is required".into()));
    }
    let abs = resolve(&envd, &rel).await?;
    let resp = envd.download(&abs).await.map_err(|e| match e {
        DaemonError::NotFound(_) => {
            DaemonError::NotFound(format!("file '{rel}' does not exist in session '{session_id}'"))
        }
        other => other,
    })?;
    let size = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok(Download {
        name: rel.rsplit('/').next().unwrap_or(&rel).to_string(),
        size,
        body: resp.into_body(),
    })
}

fn time_left(s: &LiveSandbox) -> Duration {
    (s.end_at() - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

fn exec_timeout(s: &LiveSandbox, asked: Option<u64>) -> Result<Duration, DaemonError> {
    let left = time_left(s);
    if left.is_zero() {
        return Err(DaemonError::ResourceExhausted {
            resource: Resource::Time,
            message: "the session's time is up".into(),
        });
    }
    match asked {
        Some(0) => Err(DaemonError::InvalidInput(
            "timeout must be at least 1 second".into(),
        )),
        Some(t) => Ok(Duration::from_secs(t).min(left)),
        None => Ok(Duration::from_secs(DEFAULT_EXEC_TIMEOUT_SECS).min(left)),
    }
}

/// Runs `spec` and turns how it ended into the result or a typed error: a timeout (the
/// process group killed), the task limit met during the run, an OOM kill.
async fn run_checked(
    daemon: &Daemon,
    s: &LiveSandbox,
    envd: &Envd,
    spec: ExecSpec,
) -> Result<ExecResult, DaemonError> {
    let before = daemon.backend().stats(s.id()).await.ok();
    let limit = s.rec.limits.pids;
    let o = envd.run(&spec).await.map_err(|e| match e {
        DaemonError::ResourceExhausted {
            resource: Resource::Processes,
            ..
        } => process_limit_reached(limit, &spec.cmd),
        other => other,
    })?;
    let result = ExecResult::of(&o);
    if o.timed_out {
        // the agent killed the process; what it started lives on in its process group
        // (every process starts in its own session)
        if o.pid > 0
            && let Err(e) = helper(envd, "kill", &["-KILL", "--", &format!("-{}", o.pid)]).await
        {
            tracing::debug!(sandbox = %s.id(), "killing the timed-out group: {e}");
        }
        return Err(DaemonError::Timeout(format!(
            "execution timed out after {} s and was killed",
            spec.timeout.as_secs_f64()
        ))
        .with_details(result.details()));
    }
    if o.exit_code == 0 {
        return Ok(result);
    }
    let after = daemon.backend().stats(s.id()).await.ok();
    let grew = |f: fn(&sandboxd_runtime::SandboxStats) -> Option<u64>| {
        matches!(
            (before.as_ref().and_then(f), after.as_ref().and_then(f)),
            (Some(a), Some(b)) if b > a
        )
    };
    // a fork refused during the run: the command (or a shell in it) met the task limit
    if grew(|st| st.pids_limit_hits) {
        return Err(process_limit_reached(limit, &spec.cmd).with_details(result.details()));
    }
    if (o.exit_code < 0 || o.status.contains("signal")) && grew(|st| st.oom_kills) {
        return Err(DaemonError::ResourceExhausted {
            resource: Resource::Memory,
            message: format!(
                "execution was killed: out of memory (the session's limit is {} MiB)",
                s.rec.limits.memory_mb
            ),
        }
        .with_details(result.details()));
    }
    Ok(result)
}

fn process_limit_reached(limit: u64, cmd: &str) -> DaemonError {
    DaemonError::ResourceExhausted {
        resource: Resource::Processes,
        message: format!(
            "process limit {limit} reached: '{cmd}' could not start a process (the session's processes and threads together are limited to {limit})"
        ),
    }
}

/// Executes a command in the session's directory, without a shell unless asked.
pub async fn execute(daemon: &Daemon, session_id: &str, req: ExecRequest) -> Result<ExecResult, DaemonError> {
    if req.command.is_empty() {
        return Err(DaemonError::InvalidInput("command is required".into()));
    }
    let s = find(daemon, session_id)?;
    let envd = Envd::of(&s);
    let timeout = exec_timeout(&s, req.timeout_secs)?;
    let cwd = match req.cwd.as_deref() {
        None => WORKDIR.to_string(),
        Some(c) => resolve(&envd, &relative_path(c)?).await?,
    };
    names::validate_env(&req.env)?;
    let (cmd, args) = if req.shell {
        let mut args = vec!["-c".to_string(), req.command, "bash".to_string()];
        args.extend(req.args);
        ("/bin/bash".to_string(), args)
    } else {
        (req.command, req.args)
    };
    run_checked(
        daemon,
        &s,
        &envd,
        ExecSpec {
            cmd,
            args,
            envs: req.env,
            cwd: Some(cwd),
            timeout,
        },
    )
    .await
}

/// Writes code to a file of the session and runs it with the script type's interpreter.
pub async fn execute_code(
    daemon: &Daemon,
    session_id: &str,
    req: ExecCodeRequest,
) -> Result<ExecResult, DaemonError> {
    let script = match (&req.script_type, &req.filename) {
        (Some(t), _) => ScriptType::from_name(t)?,
        (None, Some(f)) => ScriptType::from_filename(f).unwrap_or(ScriptType::Python),
        (None, None) => ScriptType::Python,
    };
    let filename = match &req.filename {
        Some(f) => relative_path(f)?,
        None => format!("main.{}", script.extension()),
    };
    if filename.is_empty() {
        return Err(DaemonError::InvalidInput("filename must name a file".into()));
    }
    names::validate_env(&req.env)?;
    let s = find(daemon, session_id)?;
    let envd = Envd::of(&s);
    let timeout = exec_timeout(&s, req.timeout_secs)?;
    create_file(daemon, session_id, &filename, req.code.into_bytes(), None).await?;
    let mut args = vec![filename];
    args.extend(req.args);
    run_checked(
        daemon,
        &s,
        &envd,
        ExecSpec {
            cmd: script.program().into(),
            args,
            envs: req.env,
            cwd: Some(WORKDIR.into()),
            timeout,
        },
    )
    .await
}

/// The processes running in a session: everything but its agent (PID 1), the daemon's own
/// programs (`sandboxd …`) and this listing.
async fn processes(envd: &Envd) -> Result<Vec<SessionProcess>, DaemonError> {
    let o = helper(envd, "ps", &["-e", "-o", "pid=,user:32=,etimes=,args="]).await?;
    Ok(names::parse_ps(&String::from_utf8_lossy(&o.stdout), o.pid))
}

/// State, disk use of the session's size, time left and processes.
pub async fn status(daemon: &Daemon, session_id: &str) -> Result<SessionStatus, DaemonError> {
    let s = find(daemon, session_id)?;
    let envd = Envd::of(&s);
    let stats = daemon.backend().stats(s.id()).await?;
    let processes = processes(&envd).await?;
    Ok(SessionStatus {
        session_id: session_id.to_string(),
        sandbox_id: s.id().to_string(),
        state: s.state().as_str(),
        template: s.rec.template_id.clone(),
        disk_used_bytes: stats.disk_used,
        disk_size_bytes: stats.disk_total.unwrap_or(s.rec.limits.disk_mb << 20),
        started_at: s.rec.started_at,
        end_at: s.end_at(),
        time_left_secs: time_left(&s).as_secs() as i64,
        processes,
    })
}

/// Removes every session. Without `force`, refuses (409, listing them) while any session has
/// processes running.
pub async fn cleanup_all(daemon: &Arc<Daemon>, force: bool) -> Result<Vec<String>, DaemonError> {
    let sessions = all(daemon);
    if !force {
        let mut busy = serde_json::Map::new();
        for (sid, s) in &sessions {
            if s.state() != SandboxState::Running {
                continue;
            }
            match processes(&Envd::of(s)).await {
                Ok(ps) if ps.is_empty() => {}
                Ok(ps) => {
                    busy.insert(sid.clone(), serde_json::to_value(&ps).unwrap_or_default());
                }
                // a full process table cannot even list itself: certainly busy
                Err(DaemonError::ResourceExhausted {
                    resource: Resource::Processes,
                    message,
                }) => {
                    busy.insert(sid.clone(), serde_json::Value::String(message));
                }
                Err(e) => return Err(e),
            }
        }
        if !busy.is_empty() {
            let names: Vec<_> = busy.keys().cloned().collect();
            let mut details = serde_json::Map::new();
            details.insert("processes".into(), serde_json::Value::Object(busy));
            return Err(DaemonError::Conflict(format!(
                "processes are running in session(s) {}; stop them or pass force=true",
                names.join(", ")
            ))
            .with_details(details));
        }
    }
    let mut removed = Vec::new();
    for (sid, s) in sessions {
        daemon.kill(s.id(), "session cleanup").await?;
        removed.push(sid);
    }
    Ok(removed)
}

/// Info of an existing session.
pub fn get(daemon: &Daemon, session_id: &str) -> Result<SessionInfo, DaemonError> {
    let s = find(daemon, session_id)?;
    Ok(info(session_id, &s))
}
