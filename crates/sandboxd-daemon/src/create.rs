//! Create: a new sandbox from a template (or a warm-pool one), registry row first.
//!
//! The row exists before anything is spawned, so a daemon that dies at any point can
//! reconcile at its next start. The work runs in its own task: a client that disconnects
//! mid-request cannot leave a half-made sandbox behind.

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::ids::{new_sandbox_id, new_token};
use crate::limits::{resolve_limits, validate_timeout};
use crate::params::CreateParams;
use crate::sandbox::LiveSandbox;
use crate::spec::{new_record, spec_of, volume_mounts};
use chrono::Utc;
use sandboxd_runtime::{Limits, VolumeMount};
use sandboxd_store::{SandboxState, StoreError, trunc_micros};
use std::sync::Arc;
use std::time::Duration;

impl Daemon {
    /// Creates a sandbox and returns it once its agent answers.
    pub async fn create(self: &Arc<Self>, mut params: CreateParams) -> Result<Arc<LiveSandbox>, DaemonError> {
        if self.is_shutting_down() {
            return Err(DaemonError::Unavailable(
                "sandboxd is shutting down; retry once it is back".into(),
            ));
        }
        let timeout = validate_timeout(params.timeout_secs, &self.config.limits)?;
        if let Some(list) = &params.allowed_commands {
            crate::command_policy::check_allowed_commands(list)?;
            crate::command_policy::check_support(&crate::command_policy::HostKernel)?;
        }
        crate::network::check_network(params.network.as_ref(), params.allow_internet_access, true)?;
        self.check_secret_references(params.network.as_ref()).await?;
        let (template_id, alias) = self.resolve_template(&params.template).await?;
        let mut defaults = self.config.template_defaults.for_template(&template_id);
        // a built template's resources, environment and start command (template_builds/)
        let built = self.resolve_built(&params.template).await?;
        if let Some(b) = &built {
            let (id, now) = (b.template_id.clone(), chrono::Utc::now().timestamp_micros());
            if let Err(e) = self
                .registry
                .call(move |s| s.record_template_spawn(&id, now))
                .await
            {
                tracing::warn!("counting a template spawn: {e}");
            }
        }
        // the template's own rate limits replace the daemon's defaults (template_settings.rs);
        // a create's own `bandwidth` wins over both
        let settings_of = built
            .as_ref()
            .map_or(template_id.as_str(), |b| b.template_id.as_str());
        if let Some((egress, ingress)) = self.template_settings(settings_of).await?.bandwidth_kbit() {
            (defaults.egress_kbit, defaults.ingress_kbit) = (egress, ingress);
        }
        params.network = defaults.with_default_bandwidth(params.network.take());
        let built = built.map(|b| b.config);
        if let Some(c) = &built {
            defaults.cpu_count = c.cpu_count.unwrap_or(defaults.cpu_count);
            defaults.memory_mb = c.memory_mb.unwrap_or(defaults.memory_mb);
            for (k, v) in &c.envs {
                params.env_vars.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let mut limits = resolve_limits(
            &defaults,
            &self.config.limits,
            params.cpu_count,
            params.memory_mb,
            params.disk_mb,
        )?;
        if let Some(n) = params.max_processes {
            limits.pids = crate::limits::check_max_processes(n, defaults.pids)?;
        }
        let this = self.clone();
        let t0 = std::time::Instant::now();
        // Own task: a client that hangs up must not abandon a half-created sandbox.
        let r = match tokio::spawn(async move {
            // a warm-pool sandbox of this template and limits, if one is ready (pool/claim.rs)
            if let Some(r) = this
                .claim_pooled(&params, timeout, limits, &template_id, &alias)
                .await
            {
                return (r, true);
            }
            let r = this
                .create_inner(params, timeout, limits, template_id, alias)
                .await;
            (r, false)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => (
                Err(DaemonError::Internal(format!("create task failed: {e}"))),
                false,
            ),
        };
        // a pooled sandbox's start command ran before it joined the pool
        let r = match (r, built) {
            ((Ok(s), false), Some(c)) if c.start_cmd.is_some() => self.start_template_command(s, &c).await,
            ((r, _), _) => r,
        };
        self.counters.create_done(r.is_ok(), t0.elapsed());
        r
    }

    async fn create_inner(
        self: Arc<Self>,
        params: CreateParams,
        timeout: Duration,
        limits: Limits,
        template_id: String,
        alias: String,
    ) -> Result<Arc<LiveSandbox>, DaemonError> {
        let _slot = self.reserve()?;
        let started_at = trunc_micros(Utc::now());
        let end_at = trunc_micros(started_at + timeout);
        let mut rec = new_record(
            new_sandbox_id(),
            &template_id,
            &alias,
            SandboxState::Creating,
            &limits,
            &params,
            params.secure.then(new_token),
            params.restrict_public_traffic.then(new_token),
            started_at,
            end_at,
        );
        // The row exists before anything is spawned; a fresh id on the (unlikely) collision.
        let mut attempts = 0;
        rec = loop {
            let r = rec.clone();
            match self.registry.call(move |s| s.insert(&r)).await {
                Ok(inserted) => break inserted,
                Err(StoreError::Duplicate(_)) if attempts < 5 => {
                    attempts += 1;
                    rec.id = new_sandbox_id();
                }
                Err(e) => return Err(e.into()),
            }
        };
        let id = rec.id.clone();
        let mut lc = params.lifecycle;
        lc.timeout_secs = timeout.as_secs() as i64;
        if let Err(e) = self.store_settings(&id, lc).await {
            let id2 = id.clone();
            let _ = self.registry.call(move |s| s.delete(&id2)).await;
            return Err(e);
        }
        let volumes = match self.attach_volumes(&id, params.volume_mounts).await {
            Ok(v) => v,
            Err(e) => {
                let id2 = id.clone();
                let _ = self.registry.call(move |s| s.delete(&id2)).await;
                return Err(e);
            }
        };
        let t0 = std::time::Instant::now();
        // the egress policy is in place before the sandbox's first packet (docs/network.md)
        let null = serde_json::Value::Null;
        if let Err(e) = self
            .backend
            .set_egress(
                &id,
                rec.network.as_ref().unwrap_or(&null),
                rec.allow_internet_access,
            )
            .await
        {
            let id2 = id.clone();
            let _ = self.registry.call(move |s| s.delete(&id2)).await;
            return Err(e.into());
        }
        let handle = match self.backend.create(spec_of(&rec, volumes)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(sandbox = %id, "create failed: {e}");
                let id2 = id.clone();
                if let Err(de) = self.registry.call(move |s| s.delete(&id2)).await {
                    tracing::error!(sandbox = %id, "removing registry row after failed create: {de}");
                }
                return Err(e.into());
            }
        };
        let (pid, start) = (handle.agent_pid, handle.agent_start_time);
        let live = match LiveSandbox::from_handle(rec, SandboxState::Running, end_at, handle) {
            Ok(l) => l,
            Err(e) => {
                self.teardown(&id).await;
                return Err(e);
            }
        };
        let id2 = id.clone();
        if let Err(e) = self.registry.call(move |s| s.set_running(&id2, pid, start)).await {
            self.teardown(&id).await;
            return Err(e.into());
        }
        self.sandboxes.insert(live.clone());
        tracing::info!(sandbox = %id, ms = t0.elapsed().as_millis() as u64, "sandbox created");
        Ok(live)
    }

    /// Records the volumes a new sandbox (its row exists) mounts; a volume deleted meanwhile is
    /// a 404 (the registry decides: a mounted volume cannot be deleted).
    async fn attach_volumes(
        &self,
        id: &str,
        mounts: Vec<(String, String)>,
    ) -> Result<Vec<VolumeMount>, DaemonError> {
        if mounts.is_empty() {
            return Ok(Vec::new());
        }
        let id = id.to_string();
        Ok(volume_mounts(
            self.registry
                .call(move |s| s.attach_volumes(&id, &mounts))
                .await?,
        ))
    }
}
