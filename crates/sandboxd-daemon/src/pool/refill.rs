//! The pool refiller: a background task that keeps every template's pool filled and recycles
//! idle sandboxes (the module doc of `pool/mod.rs` has the rules).

use super::{Pooled, SHUTDOWN_WAIT, TICK, refill_delay};
use crate::agent::control_connection;
use crate::daemon::Daemon;
use crate::ids::{new_sandbox_id, new_token};
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::{AgentEndpoint, Limits, RuntimeError, SandboxSpec};
use std::sync::{Arc, Mutex};
use std::time::Instant;

impl Daemon {
    /// Keeps the pools filled and recycles idle sandboxes until [`Daemon::shutdown_pool`]. Boots one sandbox
    /// at a time (the host's cores are shared with the sandboxes).
    pub async fn run_pool(self: Arc<Self>) {
        if !self.pool.is_enabled() {
            return;
        }
        self.disable_shadowed().await;
        let pool = &self.pool;
        let mut postponed = None;
        loop {
            if pool.stop.is_cancelled() {
                return;
            }
            let now = Instant::now();
            // recycle
            let expired: Vec<Pooled> = pool.lock().values_mut().flat_map(|t| t.expire(now)).collect();
            for p in expired {
                tracing::info!(sandbox = %p.id, "recycling an idle pooled sandbox");
                if let Err(e) = self.backend().destroy(&p.id).await {
                    tracing::error!(sandbox = %p.id, "destroying a pooled sandbox failed: {e}");
                }
            }
            // refill: pooled sandboxes only use room the daemon-wide limit leaves
            let room = self
                .config()
                .limits
                .max_sandboxes
                .saturating_sub(self.sandboxes.len() + pool.len());
            let due = pool.lock().values().any(|t| t.wants_boot(now, room));
            let last_claim = *pool.last_claim.lock().unwrap_or_else(|p| p.into_inner());
            if due && let Some(wait) = refill_delay(last_claim, now, &mut postponed) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = pool.stop.cancelled() => return,
                }
                continue;
            }
            let next = {
                let mut g = pool.lock();
                g.values_mut().find(|t| t.wants_boot(now, room)).map(|t| {
                    t.boot_started();
                    (t.spec.template.clone(), t.limits)
                })
            };
            if let Some((template, limits)) = next {
                self.boot_one(&template, limits).await;
                continue;
            }
            tokio::select! {
                _ = pool.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = pool.stop.cancelled() => return,
            }
        }
    }

    /// Refuses pools of names that are neither a template of the backend nor a built template
    /// (`--pool` names are checked at start-up; `check_templates` did the backend's part).
    pub async fn check_pool_templates(&self) -> Result<(), crate::error::DaemonError> {
        let names: Vec<String> = self.pool.lock().keys().cloned().collect();
        for name in names {
            if self.backend().has_template(&name) || self.resolve_built(&name).await?.is_some() {
                continue;
            }
            return Err(crate::error::DaemonError::InvalidInput(format!(
                "pool {name}: no such template"
            )));
        }
        Ok(())
    }

    /// A pooled template whose name a snapshot now shadows would never be claimed (creates
    /// resolve the name to the snapshot): disable it.
    async fn disable_shadowed(self: &Arc<Self>) {
        let names: Vec<String> = self.pool.lock().keys().cloned().collect();
        for name in names {
            let why = match self.resolve_template(&name).await {
                Ok((id, _)) if id == name => continue,
                // a built template (template_builds/): pooled from its current build
                Ok((_, alias)) if alias == name && matches!(self.resolve_built(&name).await, Ok(Some(_))) => {
                    continue;
                }
                Ok((id, _)) => format!("'{name}' resolves to the snapshot template {id}"),
                Err(e) => e.to_string(),
            };
            tracing::error!(template = %name, "pool disabled: {why}");
            if let Some(t) = self.pool.lock().get_mut(&name) {
                t.disabled = Some(why);
            }
        }
    }

    async fn boot_one(self: &Arc<Self>, template: &str, limits: Limits) {
        let id = new_sandbox_id();
        // a built template boots from its current build, with its limits and environment, and
        // its start command running and ready (template_builds/start_command.rs)
        let (runtime, built, limits) = match self.resolve_built(template).await {
            Ok(Some(b)) => {
                let mut defaults = self.config().template_defaults.for_template(&b.runtime);
                defaults.cpu_count = b.config.cpu_count.unwrap_or(defaults.cpu_count);
                defaults.memory_mb = b.config.memory_mb.unwrap_or(defaults.memory_mb);
                let limits =
                    crate::limits::resolve_limits(&defaults, &self.config().limits, None, None, None)
                        .unwrap_or(limits);
                self.pool.set_limits(template, limits);
                (b.runtime, Some(b.config), limits)
            }
            _ => (template.to_string(), None, limits),
        };
        if built.is_some() && self.backend().template_has_services(&runtime) {
            let why = format!(
                "pool {template}: its build derives from a template with services, which cannot be pooled"
            );
            tracing::error!("{why}");
            let e = RuntimeError::Unsupported(why);
            if let Some(t) = self.pool.lock().get_mut(template) {
                t.boot_done(Err(&e), Instant::now());
            }
            return;
        }
        let mut agent = AgentConfig::new(id.clone(), runtime.clone());
        // A placeholder nobody knows: the sandbox answers no request before it is claimed.
        agent.access_token = Some(new_token());
        if let Some(c) = &built {
            agent.env_vars = c.envs.clone();
        }
        let spec = SandboxSpec {
            id: id.clone(),
            template: runtime.clone(),
            limits,
            agent: agent.clone(),
            volumes: Vec::new(),
        };
        let t0 = Instant::now();
        let mut r = self.backend().create(spec).await;
        if let (Ok(handle), Some(c)) = (&r, &built)
            && c.start_cmd.is_some()
        {
            let AgentEndpoint::Unix(sock) = &handle.api;
            let started =
                match crate::sessions::envd_calls::Envd::of_handle(sock, &id, agent.access_token.clone()) {
                    Ok(envd) => self.run_start_command(envd, c).await,
                    Err(e) => Err(e),
                };
            if let Err(e) = started {
                let _ = self.backend().destroy(&id).await;
                r = Err(RuntimeError::Step {
                    step: "template start command",
                    message: e.to_string(),
                });
            }
        }
        let now = Instant::now();
        let control = match &r {
            Ok(handle) => {
                let AgentEndpoint::Unix(sock) = &handle.control;
                control_connection(sock).await
            }
            Err(_) => None,
        };
        let outcome = match &r {
            Ok(handle) => Ok(Pooled {
                id: id.clone(),
                runtime: runtime.clone(),
                handle: handle.clone(),
                agent,
                born: now,
                control: Mutex::new(control),
            }),
            Err(e) => Err(e),
        };
        let left_over = match self.pool.lock().get_mut(template) {
            Some(t) => t.boot_done(outcome, now),
            None => None,
        };
        match &r {
            Ok(_) => {
                tracing::debug!(sandbox = %id, template, ms = t0.elapsed().as_millis() as u64, "pooled sandbox ready")
            }
            Err(e) => tracing::warn!(template, "booting a pooled sandbox failed: {e}"),
        }
        let stopped = self.pool.stop.is_cancelled();
        if let Some(p) = left_over {
            let _ = self.backend().destroy(&p.id).await;
        } else if stopped && r.is_ok() {
            // shutdown raced the boot: drain() may have run already
            let taken = self.pool.lock().get_mut(template).and_then(|t| {
                let pos = t.ready.iter().position(|p| p.id == id)?;
                t.ready.remove(pos)
            });
            if let Some(p) = taken {
                let _ = self.backend().destroy(&p.id).await;
            }
        }
    }

    /// Stops the pool task and destroys every pooled sandbox (daemon shutdown). Claimed sandboxes
    /// are not affected.
    pub async fn shutdown_pool(self: &Arc<Self>, task: tokio::task::JoinHandle<()>) {
        self.pool.stop.cancel();
        if tokio::time::timeout(SHUTDOWN_WAIT, task).await.is_err() {
            tracing::warn!("the pool task did not stop in time");
        }
        let all: Vec<Pooled> = self
            .pool
            .lock()
            .values_mut()
            .flat_map(|t| t.ready.drain(..).collect::<Vec<_>>())
            .collect();
        if !all.is_empty() {
            tracing::info!(count = all.len(), "destroying pooled sandboxes");
        }
        for p in all {
            if let Err(e) = self.backend().destroy(&p.id).await {
                tracing::error!(sandbox = %p.id, "destroying a pooled sandbox failed (removed at the next start): {e}");
            }
        }
    }
}
