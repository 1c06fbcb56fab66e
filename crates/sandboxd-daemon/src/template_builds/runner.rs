//! Running a build: the base (an image's runtime template or a template), then each step.
//! A step's result is the runtime template named by [`step_template_name`]; when it exists
//! already (and nothing forces a rebuild) the step is a cache hit.

use super::spec::{BuildConfig, BuildStart, StepContext, StepSpec, step_template_name};
use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::params::CreateParams;
use crate::sessions::envd_calls::{Envd, ExecSpec};
use sandboxd_store::BuildRow;
use std::sync::Arc;
use std::time::Duration;

/// Longest a `RUN` step may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Output lines of a step kept in the log.
const MAX_STEP_LINES: usize = 5000;
/// The image E2B's `from_base_image()` names; sandboxd's `base` template stands for it.
const E2B_BASE_IMAGE: &str = "docker.io/e2bdev/base";

/// A failed build: the message and the step (`base`, `1`…, `finalize`).
struct Failure(String, String);

impl Daemon {
    fn log(&self, build: &str, step: &str, level: &'static str, message: &str) {
        self.builds.logs.push(build, level, Some(step), message);
    }

    /// Writes the build's log so far to disk: at its end, and after each step, so a build
    /// interrupted by a restart keeps the log of the steps it finished.
    async fn persist_log(self: &Arc<Self>, build: &str) {
        let (this, build) = (self.clone(), build.to_string());
        let _ = tokio::task::spawn_blocking(move || this.builds.logs.persist(&build)).await;
    }

    /// Runs a started build to its end and records the outcome.
    pub(super) async fn run_build(self: Arc<Self>, row: BuildRow, config: BuildConfig, start: BuildStart) {
        let build = row.build_id.clone();
        let _slot = match self.builds.slots.acquire().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let t0 = std::time::Instant::now();
        self.log(
            &build,
            "base",
            "info",
            &format!("Building template {} (build {build})", row.name),
        );
        let mut config = config;
        let outcome = self.build_steps(&build, &mut config, &start).await;
        let now = chrono::Utc::now().timestamp_micros();
        let r = match outcome {
            Ok(runtime) => {
                let templates = self.config.builds.data_dir.join("templates");
                let rt = runtime.clone();
                config.size_bytes = tokio::task::spawn_blocking(move || {
                    sandboxd_runtime::namespace::image_template::template_layers_bytes(&templates, &rt)
                })
                .await
                .ok();
                self.log(
                    &build,
                    "finalize",
                    "info",
                    &format!(
                        "Template {} is ready ({:.1} s)",
                        row.name,
                        t0.elapsed().as_secs_f64()
                    ),
                );
                let json = serde_json::to_string(&config).unwrap_or_default();
                let (b, tags) = (build.clone(), config.tags.clone());
                self.registry
                    .call(move |s| {
                        s.update_build_config(&b, &json)?;
                        s.finish_build(&b, Ok(&runtime), &tags, now)
                    })
                    .await
            }
            Err(Failure(message, step)) => {
                self.log(&build, &step, "error", &message);
                // the steps it finished are recorded too: a template delete's clean-up keeps
                // them as cache for the next attempt
                let json = serde_json::to_string(&config).unwrap_or_default();
                let b = build.clone();
                self.registry
                    .call(move |s| {
                        s.update_build_config(&b, &json)?;
                        s.finish_build(&b, Err((&message, Some(&step))), &[], now)
                    })
                    .await
            }
        };
        if let Err(e) = r {
            tracing::error!(build = %build, "recording the end of a build: {e}");
        }
        self.persist_log(&build).await;
    }

    async fn build_steps(
        self: &Arc<Self>,
        build: &str,
        config: &mut BuildConfig,
        start: &BuildStart,
    ) -> Result<String, Failure> {
        let base = |m: String| Failure(m, "base".into());
        let mut ctx = StepContext {
            user: "user".into(),
            ..Default::default()
        };
        let mut cur = if let Some(image) = &start.from_image {
            let normalized = sandboxd_image::normalize_reference(image).map_err(|e| base(e.to_string()))?;
            if normalized.split(':').next() == Some(E2B_BASE_IMAGE) {
                self.log(
                    build,
                    "base",
                    "info",
                    "e2bdev/base: using sandboxd's base template",
                );
                "base".to_string()
            } else {
                let credentials = registry_credentials(start.from_image_registry.as_ref()).map_err(base)?;
                let me = self.clone();
                let b = build.to_string();
                let log = move |m: String| me.log(&b, "base", "info", &m);
                let (name, image_config) = self
                    .image_template(image, credentials, &log)
                    .await
                    .map_err(|e| base(format!("pulling {image}: {e}")))?;
                for kv in image_config.env {
                    if let Some((k, v)) = kv.split_once('=') {
                        ctx.envs.insert(k.to_string(), v.to_string());
                    }
                }
                ctx.workdir = image_config.working_dir;
                name
            }
        } else {
            let t = start.from_template.clone().unwrap_or_default();
            match self.resolve_built(&t).await {
                Ok(Some(parent)) => {
                    ctx.envs = parent.config.envs;
                    ctx.workdir = parent.config.workdir;
                    if let Some(u) = parent.config.user {
                        ctx.user = u;
                    }
                    parent.runtime
                }
                Ok(None) => {
                    let (id, _) = self
                        .resolve_template(&t)
                        .await
                        .map_err(|e| base(format!("template {t}: {e}")))?;
                    id
                }
                Err(e) => return Err(base(format!("template {t}: {e}"))),
            }
        };
        self.log(
            build,
            "base",
            "info",
            &format!(
                "FROM {}",
                start
                    .from_image
                    .as_deref()
                    .or(start.from_template.as_deref())
                    .unwrap_or_default()
            ),
        );
        config.runtime_templates = vec![cur.clone()];
        let mut forced = start.force;
        for (i, step) in start.steps.iter().enumerate() {
            let n = (i + 1).to_string();
            let fail = |m: String| Failure(m, n.clone());
            let shown = show_step(step);
            match step.kind.as_str() {
                "ENV" => {
                    for kv in step.args.chunks(2) {
                        ctx.envs.insert(kv[0].clone(), kv[1].clone());
                    }
                    self.log(build, &n, "info", &format!("[{n}] {shown}"));
                    continue;
                }
                "USER" => {
                    ctx.user = step.args[0].clone();
                    self.log(build, &n, "info", &format!("[{n}] {shown}"));
                    continue;
                }
                _ => {}
            }
            forced |= step.force;
            let mut name = step_template_name(&cur, step, &ctx);
            if !forced && self.backend.has_template(&name) {
                self.log(build, &n, "info", &format!("CACHED [{n}] {shown}"));
            } else {
                if self.backend.has_template(&name) {
                    // forced: a fresh name, so the cached result stays for other builds
                    name = format!("{name}{}", &crate::ids::new_token()[..6]);
                }
                self.log(build, &n, "info", &format!("[{n}] {shown}"));
                let t = std::time::Instant::now();
                match step.kind.as_str() {
                    "RUN" => {
                        let user = step.args.get(1).cloned().unwrap_or_else(|| ctx.user.clone());
                        self.run_step(build, &n, &cur, &name, &step.args[0], &user, &ctx, config)
                            .await
                            .map_err(fail)?;
                    }
                    "WORKDIR" => {
                        // a new directory belongs to the steps' user (who works in it next)
                        let dir = shell_quote(&step.args[0]);
                        let cmd = if ctx.user == "root" {
                            format!("mkdir -p -- {dir}")
                        } else {
                            format!(
                                "[ -d {dir} ] || {{ mkdir -p -- {dir} && chown -- {}: {dir}; }}",
                                shell_quote(&ctx.user)
                            )
                        };
                        self.run_step(build, &n, &cur, &name, &cmd, "root", &ctx, config)
                            .await
                            .map_err(fail)?;
                    }
                    "COPY" => {
                        self.copy_step(&cur, &name, step, &ctx).await.map_err(fail)?;
                    }
                    other => return Err(fail(format!("unknown step type '{other}'"))),
                }
                self.log(
                    build,
                    &n,
                    "debug",
                    &format!("[{n}] done in {:.2} s", t.elapsed().as_secs_f64()),
                );
                self.persist_log(build).await;
            }
            if step.kind == "WORKDIR" {
                ctx.workdir = Some(step.args[0].clone());
            }
            cur = name;
            config.runtime_templates.push(cur.clone());
        }
        config.envs = ctx.envs;
        config.workdir = ctx.workdir;
        config.user = (ctx.user != "user").then_some(ctx.user);
        Ok(cur)
    }

    /// A `RUN` step: a build sandbox of `parent`, the command as `user`, then its writable
    /// layer becomes template `name`.
    #[expect(clippy::too_many_arguments, reason = "one step's whole context")]
    async fn run_step(
        self: &Arc<Self>,
        build: &str,
        step: &str,
        parent: &str,
        name: &str,
        cmd: &str,
        user: &str,
        ctx: &StepContext,
        config: &BuildConfig,
    ) -> Result<(), String> {
        let params = CreateParams {
            template: parent.to_string(),
            timeout_secs: (RUN_TIMEOUT.as_secs() as i64 + 60)
                .min(self.config.limits.max_timeout.as_secs() as i64),
            allow_internet_access: true,
            env_vars: ctx.envs.clone(),
            cpu_count: config.cpu_count.map(i64::from),
            memory_mb: config.memory_mb.map(|m| m as i64),
            metadata: [("sandboxd.build".to_string(), build.to_string())].into(),
            ..Default::default()
        };
        let sbx = self
            .create(params)
            .await
            .map_err(|e| format!("starting the build sandbox: {e}"))?;
        let id = sbx.id().to_string();
        let r = async {
            let spec = ExecSpec {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), cmd.to_string()],
                envs: ctx.envs.clone(),
                cwd: ctx.workdir.clone(),
                timeout: RUN_TIMEOUT,
            };
            let out = Envd::of(&sbx)
                .as_user(user)
                .run(&spec)
                .await
                .map_err(|e| match e {
                    DaemonError::NotFound(m) => format!("{m}: RUN steps need /bin/sh in the image"),
                    other => other.to_string(),
                })?;
            let mut lines = 0;
            for (level, bytes) in [("info", &out.stdout), ("info", &out.stderr)] {
                for line in String::from_utf8_lossy(bytes).lines() {
                    lines += 1;
                    if lines <= MAX_STEP_LINES {
                        self.log(build, step, level, line);
                    }
                }
            }
            if out.timed_out {
                return Err(format!("the command ran longer than {} s", RUN_TIMEOUT.as_secs()));
            }
            if out.exit_code != 0 {
                let tail: Vec<String> = String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .chain(String::from_utf8_lossy(&out.stdout).lines())
                    .rev()
                    .take(5)
                    .map(str::to_string)
                    .collect();
                let tail: Vec<&str> = tail.iter().rev().map(String::as_str).collect();
                return Err(format!(
                    "step {step} failed: '{cmd}' exited with {} ({}){}",
                    out.exit_code,
                    out.status,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", tail.join(" | "))
                    }
                ));
            }
            self.backend
                .snapshot(
                    &id,
                    &sbx.rec.template_id,
                    name,
                    sandboxd_runtime::SnapshotLimits::default(),
                )
                .await
                .or_else(|e| {
                    if self.backend.has_template(name) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| format!("saving the step's files: {e}"))
        }
        .await;
        if let Err(e) = self.kill(&id, "build step done").await {
            tracing::warn!(sandbox = %id, "removing a build sandbox: {e}");
        }
        r
    }
}

/// A step as a log shows it.
fn show_step(s: &StepSpec) -> String {
    let args = match s.kind.as_str() {
        "RUN" => match s.args.get(1) {
            Some(u) => format!("{} (as {u})", s.args[0]),
            None => s.args[0].clone(),
        },
        "COPY" => format!(
            "{} {}",
            s.args[0],
            s.args.get(1).map(String::as_str).unwrap_or_default()
        ),
        "ENV" => s
            .args
            .chunks(2)
            .map(|kv| format!("{}={}", kv[0], kv.get(1).map(String::as_str).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => s.args.join(" "),
    };
    let mut out = format!("{} {args}", s.kind);
    if out.len() > 300 {
        let mut cut = 300;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Single-quotes `s` for `/bin/sh`.
pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `fromImageRegistry` of type `registry`: basic credentials (other providers are refused).
fn registry_credentials(
    v: Option<&serde_json::Value>,
) -> Result<Option<sandboxd_image::Credentials>, String> {
    let Some(v) = v else { return Ok(None) };
    match v.get("type").and_then(|t| t.as_str()) {
        Some("registry") => {
            let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            match (get("username"), get("password")) {
                (Some(username), Some(password)) => {
                    Ok(Some(sandboxd_image::Credentials { username, password }))
                }
                _ => Err("fromImageRegistry needs a username and a password".into()),
            }
        }
        Some(other) => Err(format!(
            "registry credentials of type '{other}' are not supported by sandboxd (use type 'registry' with a username and password, or a Docker config.json)"
        )),
        None => Err("fromImageRegistry has no type".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_credentials() {
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        let c = registry_credentials(Some(
            &serde_json::json!({"type": "registry", "username": "u", "password": "p"}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.username, "u");
        assert!(registry_credentials(Some(&serde_json::json!({"type": "aws"}))).is_err());
        assert_eq!(registry_credentials(None).unwrap(), None);
    }

    #[test]
    fn steps_show_briefly() {
        let s = StepSpec {
            kind: "ENV".into(),
            args: vec!["A".into(), "1".into(), "B".into(), "2".into()],
            ..Default::default()
        };
        assert_eq!(show_step(&s), "ENV A=1 B=2");
        let r = StepSpec {
            kind: "RUN".into(),
            args: vec!["x".repeat(400)],
            ..Default::default()
        };
        assert!(show_step(&r).chars().count() <= 301);
    }
}
