//! Spawning a sandbox init: validate and complete the spec, take a pool slot or prepare the
//! directory, set up cgroups, CPU pinning and `/proc/meminfo`, and ask the spawn helper to
//! clone it.

use super::names::{is_valid_sandbox_id, valid_hostname, valid_template};
use super::namespace_backend::Inner;
use super::sandbox_dirs::{remove_tree, tail};
use super::spawn_client::{SpawnHelperClient, Spawned};
use super::spawn_protocol::{HelperReply, SpawnRequest};
use super::{ExecTarget, cpus, layered_template, meminfo, quota, snapshot, step, sys, volumes};
use crate::RuntimeError;
use crate::backend::{Limits, SandboxSpec};
use sandboxd_protocol::agent::boot_fds;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

impl Inner {
    pub(super) fn validate(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        if !is_valid_sandbox_id(&spec.id) {
            return Err(RuntimeError::InvalidSpec(format!(
                "bad sandbox id '{}': must match ^[a-z0-9]+$",
                spec.id
            )));
        }
        if !self.has_template(&spec.template) {
            return Err(RuntimeError::TemplateNotFound(spec.template.clone()));
        }
        let Limits {
            cpu_count,
            memory_mb,
            pids,
            ..
        } = spec.limits;
        if cpu_count == 0 || cpu_count > 1024 {
            return Err(RuntimeError::InvalidSpec(format!(
                "cpu_count {cpu_count} out of range 1..=1024"
            )));
        }
        if !(16..=(1 << 30)).contains(&memory_mb) {
            return Err(RuntimeError::InvalidSpec(format!(
                "memory_mb {memory_mb} out of range 16.."
            )));
        }
        if !(1..=4_194_304).contains(&pids) {
            return Err(RuntimeError::InvalidSpec(format!(
                "pids limit {pids} out of range 1..=4194304"
            )));
        }
        quota::validate_size(spec.limits.disk_mb)?;
        if !spec.agent.hostname.is_empty() && !valid_hostname(&spec.agent.hostname) {
            return Err(RuntimeError::InvalidSpec(format!(
                "bad hostname '{}'",
                spec.agent.hostname
            )));
        }
        Ok(())
    }

    pub(super) fn has_template(&self, name: &str) -> bool {
        // snapshot templates (snapshot.rs): layers over the template they were taken from
        if let Ok(Some(l)) = snapshot::read_layers(&self.cfg.data_dir.join("templates"), name) {
            return self.has_template(&l.base);
        }
        // layered templates (layered_template.rs): a skeleton plus installed host layers
        if let Some(t) = layered_template::resolve(name) {
            return self.has_template(t.skeleton);
        }
        valid_template(name)
            && self
                .cfg
                .data_dir
                .join("templates")
                .join(name)
                .join("rootfs")
                .is_dir()
    }

    /// Validate a spec and fill in what the agent needs that the caller left empty (hostname,
    /// ids); for a layered template add its supervised services and return its read-only binds.
    /// Shared by create and the filesystem-only resume, so both boot the same sandbox.
    pub(super) fn complete_spec(
        &self,
        spec: &mut SandboxSpec,
    ) -> Result<Vec<layered_template::ReadOnlyBind>, RuntimeError> {
        self.validate(spec)?;
        if spec.agent.hostname.is_empty() {
            spec.agent.hostname = "sandbox".into();
        }
        if spec.agent.sandbox_id.is_empty() {
            spec.agent.sandbox_id = spec.id.clone();
        }
        if spec.agent.template_id.is_empty() {
            spec.agent.template_id = spec.template.clone();
        }
        let Some(t) = layered_template::resolve(&spec.template) else {
            return Ok(Vec::new());
        };
        for s in t.services {
            if !spec.agent.services.contains(&s) {
                spec.agent.services.push(s);
            }
        }
        Ok(t.binds)
    }

    pub(super) fn spawn_blocking(
        &self,
        mut spec: SandboxSpec,
        target: ExecTarget,
    ) -> Result<Spawned, RuntimeError> {
        let binds = self.complete_spec(&mut spec)?;
        let id = spec.id.clone();
        let t0 = std::time::Instant::now();
        let (sbx, have_cgroups) = match self.claim_slot(&id, &spec.agent.hostname, &spec.limits)? {
            Some(r) => r,
            None => (
                self.prepare_dir(&id, &spec.agent.hostname, spec.limits.disk_mb)?,
                false,
            ),
        };
        let t1 = std::time::Instant::now();
        let r = self.spawn_prepared(&sbx, spec, target, have_cgroups, binds);
        tracing::debug!(sandbox = %id, dirs_us = (t1 - t0).as_micros() as u64, spawn_us = t1.elapsed().as_micros() as u64, "sandbox spawned");
        if std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some() {
            eprintln!("timing {id}: dirs {:?} spawn {:?}", t1 - t0, t1.elapsed());
        }
        if r.is_err() {
            // kill anything left, remove the cgroups (with retries) and the directory
            let _ = self.destroy(&id);
            let _ = remove_tree(&sbx, &self.cfg.data_dir.join(".trash"));
        }
        r
    }

    pub(super) fn spawn_prepared(
        &self,
        sbx: &Path,
        mut spec: SandboxSpec,
        target: ExecTarget,
        have_cgroups: bool,
        mut binds: Vec<layered_template::ReadOnlyBind>,
    ) -> Result<Spawned, RuntimeError> {
        let id = spec.id.clone();
        // snapshot template (snapshot.rs): its layers over the template it was taken from,
        // which brings its own binds and services
        let (mut root_layers, mut usr_layers, mut layers_host_ids) = (Vec::new(), Vec::new(), false);
        let mut whole_root = false;
        if let Some(l) = snapshot::read_layers(&self.cfg.data_dir.join("templates"), &spec.template)? {
            spec.template = l.base;
            (root_layers, usr_layers, layers_host_ids) = (l.root, l.usr, l.host_ids);
            whole_root = l.whole_root;
            if let Some(t) = layered_template::resolve(&spec.template) {
                binds = t.binds;
                for s in t.services {
                    if !spec.agent.services.contains(&s) {
                        spec.agent.services.push(s);
                    }
                }
            }
        }
        if spec.agent.allowed_commands.is_some() && !spec.agent.services.is_empty() {
            return Err(RuntimeError::InvalidSpec(format!(
                "allowedCommands cannot be used with template '{}': its services ({}) run code that \
                 executes programs of its own (the code interpreter's kernels)",
                spec.template,
                spec.agent.services.join(", ")
            )));
        }
        let tc = std::time::Instant::now();
        let files = if have_cgroups {
            self.cgroups.files(&id)
        } else {
            self.cgroups.create(&id, &spec.limits)?
        };
        // nproc = cpuCount (cpus.rs) and /proc/meminfo = memoryMB (meminfo.rs)
        cpus::pin(
            self.cgroups.layout(),
            &self.cfg.cgroup_root,
            &id,
            spec.limits.cpu_count,
            sbx,
        )?;
        meminfo::write(sbx, spec.limits.memory_mb)?;
        if std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some() {
            eprintln!("timing {id}: cgroups {:?}", tc.elapsed());
        }
        let open_w = |p: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(|e| step("cgroup", format!("opening {}: {e}", p.display())))
        };
        let agent_fds: Vec<OwnedFd> = files
            .agent_procs
            .iter()
            .map(|p| open_w(p))
            .collect::<Result<_, _>>()?;
        let mut work_fds: Vec<OwnedFd> = files
            .work_procs
            .iter()
            .map(|p| open_w(p))
            .collect::<Result<_, _>>()?;
        spec.agent.work_cgroup_fds = (0..work_fds.len())
            .map(|i| boot_fds::FIRST_WORK_CGROUP + i as i32)
            .collect();
        // the counter fds follow the procs fds; read-only, and a file that cannot be opened
        // only costs the agent its explanation of a failure
        let c = &files.work_counters;
        let mut counter = |p: &Option<std::path::PathBuf>| -> Option<i32> {
            let f = std::fs::File::open(p.as_ref()?)
                .map_err(|e| tracing::warn!(sandbox = %id, "cgroup counter {}: {e}", p.as_ref().map(|p| p.display().to_string()).unwrap_or_default()))
                .ok()?;
            work_fds.push(OwnedFd::from(f));
            Some(boot_fds::FIRST_WORK_CGROUP + work_fds.len() as i32 - 1)
        };
        spec.agent.work_counter_fds = sandboxd_protocol::agent::WorkCounterFds {
            pids_events: counter(&c.pids_events),
            pids_max: counter(&c.pids_max),
            memory_events: counter(&c.memory_events),
            memory_max: counter(&c.memory_max),
        };
        spec.agent.workload_userns_fd = Some(boot_fds::WORKLOAD_USERNS);
        // the command policy's fds follow the work fds (sandbox_init.rs, arrange_fds)
        let command_policy = spec.agent.allowed_commands.as_ref().map(|allowed| {
            let first = boot_fds::FIRST_WORK_CGROUP + work_fds.len() as i32;
            spec.agent.command_policy_fds = Some(sandboxd_protocol::agent::CommandPolicyFds {
                loader_guard: first,
                workload_ruleset: first + 1,
                helper_ruleset: first + 2,
            });
            super::spawn_protocol::PolicyRequest {
                allowed: allowed.clone(),
                path: spec.agent.env_vars.get("PATH").cloned().unwrap_or_else(|| {
                    super::sandbox_init::AGENT_PATH_ENV
                        .trim_start_matches("PATH=")
                        .to_string()
                }),
            }
        });
        let json = serde_json::to_vec(&spec.agent).map_err(|e| step("config", e))?;
        let config = sys::memfd_with(c"sandboxd-agent-config", &json).map_err(|e| step("config", e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(sbx.join("agent.log"))
            .map(OwnedFd::from)
            .map_err(|e| step("sandbox dirs", format!("agent.log: {e}")))?;
        let volumes = spec
            .volumes
            .iter()
            .map(|v| {
                volumes::check_mount_path(&v.path).map_err(RuntimeError::InvalidSpec)?;
                Ok(volumes::VolumeBind {
                    source: volumes::source(&self.cfg.data_dir, &v.volume_id)?,
                    target: v.path.clone(),
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let req = SpawnRequest {
            id: id.clone(),
            sandbox_dir: sbx.to_path_buf(),
            template: layered_template::resolve(&spec.template)
                .map_or_else(|| spec.template.clone(), |t| t.skeleton.to_string()),
            binds,
            volumes,
            root_layers,
            usr_layers,
            layers_host_ids,
            whole_root,
            hostname: spec.agent.hostname.clone(),
            mount_sys: self.cfg.mount_sys,
            memory_mb: spec.limits.memory_mb,
            exec: target,
            agent_procs: agent_fds.len(),
            work_procs: work_fds.len(),
            timeout_ms: 10_000,
            command_policy,
        };
        let mut fds: Vec<RawFd> = vec![config.as_raw_fd(), log.as_raw_fd()];
        fds.extend(agent_fds.iter().map(|f| f.as_raw_fd()));
        fds.extend(work_fds.iter().map(|f| f.as_raw_fd()));
        let (reply, mut got) = {
            let mut guard = self
                .helper
                .lock()
                .map_err(|_| step("spawn", "helper lock poisoned"))?;
            if guard.is_none() {
                *guard = Some(SpawnHelperClient::start(&self.cfg.exe, &self.init)?);
            }
            let Some(client) = guard.as_mut() else {
                return Err(step("spawn", "no spawn helper"));
            };
            match client.call(&req, &fds) {
                Ok(r) => r,
                Err(first) => {
                    // The helper died (a half-started init exits on its own once the helper's
                    // end of its pipe closes): start a new one and retry once.
                    tracing::warn!("spawn helper failed ({first}); restarting it");
                    *guard = None;
                    let mut client = SpawnHelperClient::start(&self.cfg.exe, &self.init)?;
                    let r = client.call(&req, &fds).map_err(|e| {
                        step(
                            "spawn",
                            format!("spawn helper: {e} (after restart; first: {first})"),
                        )
                    })?;
                    *guard = Some(client);
                    r
                }
            }
        };
        match reply {
            HelperReply::Spawned { pid, start_time } => {
                let pidfd = got.pop().ok_or_else(|| step("spawn", "helper sent no pidfd"))?;
                Ok(Spawned {
                    pid,
                    start_time,
                    pidfd,
                })
            }
            // an allowed command that is not in the template is the caller's error
            HelperReply::Failed { step: s, message } if s == "command policy" => {
                Err(RuntimeError::InvalidSpec(message))
            }
            HelperReply::Failed { step: s, message } => {
                let log = tail(&sbx.join("agent.log"), 2000);
                let message = if log.is_empty() {
                    message
                } else {
                    format!("{message}; agent log: {log}")
                };
                Err(RuntimeError::Step {
                    step: super::spawn_protocol::static_step(&s),
                    message,
                })
            }
            HelperReply::Ready => Err(step("spawn", "unexpected reply from helper")),
        }
    }
}
