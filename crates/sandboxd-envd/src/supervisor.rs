//! Services the agent supervises (`AgentConfig::services`): started at boot, restarted with a
//! backoff whenever they exit. Today the only one is `interpreter`, the code-interpreter server
//! (`sandboxd interpreter`, port 49999), run from the agent's own executable.
//!
//! Children are started with [`crate::pid1::spawn`] (the reaper owns their exit status). Between
//! fork and exec a child only makes async-signal-safe syscalls: it moves itself into the
//! sandbox's `work` cgroup (so the kernels it starts are charged to the sandbox's limits, and an
//! OOM kill there never hits the agent), sets `oom_score_adj` to 100, starts a new session and
//! joins the workload user namespace ([`crate::workload`]): a service is sandbox code like any
//! other, so it gets no envd access token. Its stdout and stderr go through a pipe into the
//! agent's own (bounded) log, never to the agent's log file itself.

use crate::pid1::{self, ExitStatus};
use sandboxd_protocol::agent::AgentConfig;
use std::collections::BTreeMap;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandboxd_protocol::INTERPRETER_SERVICE as INTERPRETER;

/// First restart delay; doubled after each quick exit, up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A run at least this long resets the backoff.
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// How to run one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name for logs.
    pub name: String,
    /// Program to exec.
    pub program: String,
    /// argv, argv\[0\] included.
    pub argv: Vec<String>,
    /// The whole environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: String,
}

/// The spec of a known service for this sandbox, or `None` for an unknown name.
/// `exe` is the agent's executable (`/proc/self/exe`: inside a sandbox it refers to the file
/// the runtime exec'd by fd, even though no host path is mounted).
pub fn service_spec(name: &str, config: &AgentConfig, exe: &str) -> Option<ServiceSpec> {
    if name != INTERPRETER {
        return None;
    }
    let mut env = config.global_env();
    env.insert("PATH".into(), pid1::default_path());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("HOME".into(), "/root".into());
    if let Ok(v) = std::env::var("SANDBOXD_LOG") {
        env.insert("RUST_LOG".into(), v);
    }
    let mut argv = vec!["sandboxd".to_string(), "interpreter".to_string()];
    if let Some(cwd) = &config.default_workdir {
        argv.push("--default-cwd".into());
        argv.push(cwd.clone());
    }
    // Kernels run as root, like the Jupyter server of E2B's template (not as the sandbox's
    // default user): `create_code_context(cwd="/root")` works, files they write are root's.
    Some(ServiceSpec {
        name: name.to_string(),
        program: exe.to_string(),
        argv,
        env,
        cwd: "/".into(),
    })
}

/// Next restart delay after a run of `ran` that followed a delay of `prev`.
pub fn next_backoff(prev: Duration, ran: Duration) -> Duration {
    if ran >= STABLE_RUN {
        MIN_BACKOFF
    } else {
        (prev * 2).clamp(MIN_BACKOFF, MAX_BACKOFF)
    }
}

/// Start one supervising task per service named in `config.services` (unknown names are
/// logged and skipped). Needs a tokio runtime. `work_fds` are the `work` cgroup fds.
pub fn start(config: &AgentConfig) {
    for name in &config.services {
        match service_spec(name, config, "/proc/self/exe") {
            Some(spec) => {
                tokio::spawn(supervise(spec, config.work_cgroup_fds.clone(), None));
            }
            None => tracing::warn!(service = %name, "unknown service in the agent config; not started"),
        }
    }
}

/// Run `spec` until the process exits, then again after the backoff, forever (or `limit` runs,
/// for tests). Returns the exit statuses seen.
pub async fn supervise(spec: ServiceSpec, work_fds: Vec<RawFd>, limit: Option<usize>) -> Vec<ExitStatus> {
    let mut delay = MIN_BACKOFF;
    let mut seen = Vec::new();
    let mut runs = 0usize;
    loop {
        let started = Instant::now();
        match spawn_once(&spec, &work_fds) {
            Ok(s) => {
                tracing::info!(service = %spec.name, pid = s.pid, "service started");
                let status = s.exit.await.unwrap_or(ExitStatus::Signaled {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                });
                let ran = started.elapsed();
                delay = next_backoff(delay, ran);
                tracing::warn!(
                    service = %spec.name,
                    ?status,
                    ran_ms = ran.as_millis() as u64,
                    restart_in_ms = delay.as_millis() as u64,
                    "service exited; restarting"
                );
                seen.push(status);
            }
            Err(e) => {
                delay = next_backoff(delay, Duration::ZERO);
                tracing::error!(service = %spec.name, "cannot start service: {e}; retrying in {delay:?}");
            }
        }
        runs += 1;
        if limit.is_some_and(|l| runs >= l) {
            return seen;
        }
        tokio::time::sleep(delay).await;
    }
}

/// Largest piece of a service's output copied into the agent's log at once.
const MAX_LOG_CHUNK: usize = 4096;

/// Copy a service's output into the agent's log, line by line (a line longer than
/// [`MAX_LOG_CHUNK`] is logged in pieces).
async fn forward_output(name: String, out: OwnedFd) {
    use tokio::io::AsyncReadExt;
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(out) else {
        return;
    };
    let mut buf = vec![0u8; MAX_LOG_CHUNK];
    while let Ok(n @ 1..) = rx.read(&mut buf).await {
        for line in String::from_utf8_lossy(&buf[..n])
            .lines()
            .filter(|l| !l.is_empty())
        {
            tracing::info!(service = %name, "{line}");
        }
    }
}

fn spawn_once(spec: &ServiceSpec, work_fds: &[RawFd]) -> std::io::Result<pid1::Spawned> {
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = Command::new(&spec.program);
    if let Some(a0) = spec.argv.first() {
        cmd.arg0(a0);
    }
    cmd.args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w.try_clone()?))
        .stderr(Stdio::from(out_w));
    let fds = work_fds.to_vec();
    let userns = crate::workload::userns_fd();
    let ruleset = crate::command_policy::ruleset_fd(false);
    // SAFETY: the closure only makes async-signal-safe syscalls (write, open, close, setsid,
    // setns, seccomp) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let f = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if f >= 0 {
                libc::write(f, b"100".as_ptr().cast(), 3);
                libc::close(f);
            }
            libc::setsid();
            if let Some(fd) = userns {
                crate::workload::enter(fd, ruleset)?;
            }
            Ok(())
        });
    }
    let spawned = pid1::spawn(&mut cmd);
    // the parent's copies of the write end close with `cmd`, so the reader sees EOF
    drop(cmd);
    if spawned.is_ok() {
        tokio::spawn(forward_output(spec.name.clone(), out_r));
    }
    spawned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_resets() {
        assert_eq!(next_backoff(MIN_BACKOFF, Duration::ZERO), MIN_BACKOFF * 2);
        assert_eq!(next_backoff(Duration::from_secs(4), Duration::ZERO), MAX_BACKOFF);
        assert_eq!(next_backoff(MAX_BACKOFF, STABLE_RUN), MIN_BACKOFF);
    }

    #[test]
    fn interpreter_spec() {
        let mut c = AgentConfig::new("sbx1", "code-interpreter-v1");
        c.access_token = Some("secret-token-123".into());
        c.env_vars.insert("FOO".into(), "bar".into());
        let s = service_spec(INTERPRETER, &c, "/proc/self/exe").unwrap();
        assert_eq!(s.program, "/proc/self/exe");
        assert_eq!(
            s.argv,
            ["sandboxd", "interpreter", "--default-cwd", "/home/user",]
        );
        // sandbox code never gets the token
        assert!(!s.env.values().any(|v| v.contains("secret-token")), "{:?}", s.env);
        assert_eq!(s.env["E2B_SANDBOX_ID"], "sbx1");
        assert_eq!(s.env["FOO"], "bar");
        assert!(s.env.contains_key("PATH"));
        assert_eq!(s.cwd, "/");
        assert!(service_spec("nope", &c, "/x").is_none());
    }

    #[tokio::test]
    async fn restarts_after_exit() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let spec = ServiceSpec {
            name: "t".into(),
            program: "/bin/sh".into(),
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo run >> {}; exit 3", count.display()),
            ],
            env: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
            cwd: "/".into(),
        };
        let t0 = Instant::now();
        let seen = supervise(spec, Vec::new(), Some(3)).await;
        assert_eq!(seen, vec![ExitStatus::Exited(3); 3]);
        let runs = std::fs::read_to_string(&count).unwrap();
        assert_eq!(runs.lines().count(), 3);
        // backoff between runs: 200 ms then 400 ms
        assert!(t0.elapsed() >= Duration::from_millis(550), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn missing_program_is_retried_not_fatal() {
        let spec = ServiceSpec {
            name: "t".into(),
            program: "/nonexistent/prog".into(),
            argv: vec!["x".into()],
            env: BTreeMap::new(),
            cwd: "/".into(),
        };
        let seen = supervise(spec, Vec::new(), Some(2)).await;
        assert!(seen.is_empty());
    }
}
