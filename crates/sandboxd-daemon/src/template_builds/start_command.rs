//! A built template's start command: started in each new sandbox of the template, which is
//! handed out only once the ready command passes (`docs/templates.md`).

use super::runner::shell_quote;
use super::spec::BuildConfig;
use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::sandbox::LiveSandbox;
use crate::sessions::envd_calls::{Envd, ExecSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a ready command may take to pass.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// Longest one run of the ready command.
const READY_RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the start command's output goes inside the sandbox.
pub const START_LOG: &str = "/tmp/sandboxd-start-cmd.log";

impl Daemon {
    /// Starts `config`'s start command in `s` and waits for its ready command; a sandbox whose
    /// command does not get ready is removed and the create fails saying why.
    pub(crate) async fn start_template_command(
        self: &Arc<Self>,
        s: Arc<LiveSandbox>,
        config: &BuildConfig,
    ) -> Result<Arc<LiveSandbox>, DaemonError> {
        match self.run_start_command(Envd::of(&s), config).await {
            Ok(()) => Ok(s),
            Err(e) => {
                let id = s.id().to_string();
                if let Err(k) = self.kill(&id, "template start command failed").await {
                    tracing::warn!(sandbox = %id, "removing a sandbox whose start command failed: {k}");
                }
                Err(e)
            }
        }
    }

    /// Starts `config`'s start command through `envd` and waits for its ready command (also
    /// for pooled sandboxes, before they join the pool: `pool/refill.rs`).
    pub(crate) async fn run_start_command(
        &self,
        envd: Envd,
        config: &BuildConfig,
    ) -> Result<(), DaemonError> {
        let Some(start) = &config.start_cmd else {
            return Ok(());
        };
        let user = config.user.clone().unwrap_or_else(|| "user".into());
        let envd = envd.as_user(&user);
        let base = ExecSpec {
            cmd: "/bin/sh".into(),
            args: Vec::new(),
            envs: config.envs.clone(),
            cwd: config.workdir.clone(),
            timeout: READY_RUN_TIMEOUT,
        };
        // detached: its output goes to a file, so this call returns once it is started
        let launch = ExecSpec {
            args: vec![
                "-c".into(),
                format!(
                    "exec >{START_LOG} 2>&1 </dev/null; /bin/sh -c {} &",
                    shell_quote(start)
                ),
            ],
            ..base.clone()
        };
        let r: Result<(), DaemonError> = async {
            let out = envd.run(&launch).await?;
            if out.exit_code != 0 {
                return Err(DaemonError::InvalidInput(format!(
                    "the template's start command could not be started: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let Some(ready) = &config.ready_cmd else {
                return Ok(());
            };
            let check = ExecSpec {
                args: vec!["-c".into(), ready.clone()],
                ..base.clone()
            };
            let t0 = Instant::now();
            loop {
                let out = envd.run(&check).await?;
                if out.exit_code == 0 && !out.timed_out {
                    return Ok(());
                }
                if t0.elapsed() > READY_DEADLINE {
                    let log = envd
                        .run(&ExecSpec {
                            args: vec!["-c".into(), format!("tail -n 5 {START_LOG} 2>/dev/null")],
                            ..base.clone()
                        })
                        .await
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\n', " | "))
                        .unwrap_or_default();
                    return Err(DaemonError::Timeout(format!(
                        "the template's ready command ('{ready}') did not pass within {} s; the start command's last output: {log}",
                        READY_DEADLINE.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        .await;
        r
    }
}
