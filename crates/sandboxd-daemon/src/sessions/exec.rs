//! Session executions: a command (without a shell unless asked) or code in a file, with the
//! ways one can end (timeout, process limit, OOM kill) as typed errors.

use super::envd_calls::{Envd, ExecSpec};
use super::{
    DEFAULT_EXEC_TIMEOUT_SECS, ExecCodeRequest, ExecRequest, ExecResult, ScriptType, WORKDIR, helper, names,
    relative_path, resolve, time_left,
};
use crate::daemon::Daemon;
use crate::error::{DaemonError, Resource};
use crate::sandbox::LiveSandbox;
use std::time::Duration;

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
    // a shell's "cannot execute" (126) under a command policy: the kernel refused a program
    if let Some(allowed) = &s.rec.allowed_commands
        && o.exit_code == 126
        && let Some(line) = denied_line(&o.stderr)
    {
        return Err(DaemonError::SecurityDenied(format!(
            "command not allowed: {line} (the session's allowed commands: {})",
            allowed.join(", ")
        ))
        .with_details(result.details()));
    }
    Ok(result)
}

/// The first `Permission denied` line of a shell's stderr (`bash: line 1: /usr/bin/id:
/// Permission denied`), trimmed.
fn denied_line(stderr: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .find(|l| l.ends_with(": Permission denied"))
        .map(|l| l.chars().take(512).collect())
}

fn process_limit_reached(limit: u64, cmd: &str) -> DaemonError {
    DaemonError::ResourceExhausted {
        resource: Resource::Processes,
        message: format!(
            "process limit {limit} reached: '{cmd}' could not start a process (the session's processes and threads together are limited to {limit})"
        ),
    }
}

impl Daemon {
    /// Executes a command in the session's directory, without a shell unless asked.
    pub async fn execute_in_session(
        &self,
        session_id: &str,
        req: ExecRequest,
    ) -> Result<ExecResult, DaemonError> {
        if req.command.is_empty() {
            return Err(DaemonError::InvalidInput("command is required".into()));
        }
        let s = self.find_session(session_id)?;
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
            self,
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
    pub async fn execute_code_in_session(
        &self,
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
        let s = self.find_session(session_id)?;
        let envd = Envd::of(&s);
        let timeout = exec_timeout(&s, req.timeout_secs)?;
        self.create_session_file(session_id, &filename, req.code.into_bytes(), None)
            .await?;
        let mut args = vec![filename];
        args.extend(req.args);
        run_checked(
            self,
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
}

#[cfg(test)]
mod tests {
    #[test]
    fn denied_lines_of_a_shell() {
        let e = b"hello\nbash: line 1: /usr/bin/id: Permission denied\nmore";
        assert_eq!(
            super::denied_line(e).as_deref(),
            Some("bash: line 1: /usr/bin/id: Permission denied")
        );
        assert_eq!(super::denied_line(b"bash: x: command not found"), None);
    }
}
