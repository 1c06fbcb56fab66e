//! The [`SandboxBackend`] implementation of [`NamespaceBackend`]: each trait method delegates
//! to the module that does the work (spawn, agent boot, teardown, stats, snapshots, volumes,
//! adoption, pause).

use super::names::is_valid_sandbox_id;
use super::namespace_backend::AgentRecord;
use super::{ExecTarget, NamespaceBackend, layered_template, step, sys, template, volumes};
use crate::RuntimeError;
use crate::backend::{AgentEndpoint, SandboxBackend, SandboxHandle, SandboxSpec};
use async_trait::async_trait;
use std::sync::Arc;

#[async_trait]
impl SandboxBackend for NamespaceBackend {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn shutdown(&self) {
        NamespaceBackend::shutdown(self)
    }

    fn has_template(&self, template: &str) -> bool {
        self.inner.has_template(template)
    }

    fn template_missing_reason(&self, template: &str) -> Option<String> {
        layered_template::missing_reason(template)
    }

    fn template_has_services(&self, template: &str) -> bool {
        layered_template::resolve(template).is_some_and(|t| !t.services.is_empty())
    }

    async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let id = spec.id.clone();
        let t0 = std::time::Instant::now();
        let service_ready = layered_template::resolve(&spec.template).and_then(|t| t.ready);
        let spawned = self.spawn_init(spec, ExecTarget::Agent).await?;
        let t1 = std::time::Instant::now();
        let sbx = self.sandbox_dir(&id);
        let api = sbx.join("run/agent.sock");
        let pidfd = Arc::new(spawned.pidfd);
        let outcome = self.wait_booted(&sbx, &pidfd, service_ready.as_ref()).await;
        if let Ok(mut m) = self.inner.agents.lock() {
            m.insert(id.clone(), AgentRecord { pidfd: pidfd.clone() });
        }
        if let Err(e) = outcome {
            let _ = self.destroy(&id).await;
            return Err(e);
        }
        tracing::debug!(sandbox = %id, spawn_us = (t1 - t0).as_micros() as u64, ready_us = t1.elapsed().as_micros() as u64, "sandbox ready");
        if std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some() {
            eprintln!("timing {id}: total spawn {:?} ready {:?}", t1 - t0, t1.elapsed());
        }
        Ok(SandboxHandle {
            id,
            agent_pid: spawned.pid,
            agent_start_time: spawned.start_time,
            api: AgentEndpoint::Unix(api),
            control: AgentEndpoint::Unix(sbx.join("run/control.sock")),
        })
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let inner = self.inner.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || inner.destroy(&id))
            .await
            .map_err(|e| step("destroy", e))?
    }

    fn is_alive(&self, handle: &SandboxHandle) -> bool {
        // The pidfd we hold pins the agent: it answers without opening anything.
        let pidfd = self
            .inner
            .agents
            .lock()
            .ok()
            .and_then(|m| m.get(&handle.id).map(|r| r.pidfd.clone()));
        let answer = match pidfd {
            Some(fd) => sys::Liveness::of_pidfd(&fd),
            None => sys::liveness(handle.agent_pid, handle.agent_start_time),
        };
        match answer {
            sys::Liveness::Alive => true,
            sys::Liveness::Gone => false,
            sys::Liveness::Unknown(e) => {
                tracing::warn!(sandbox = %handle.id, "liveness check failed ({e}); assuming the agent is alive");
                true
            }
        }
    }

    async fn stats(&self, id: &str) -> Result<crate::SandboxStats, RuntimeError> {
        let me = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || me.stats_blocking(&id))
            .await
            .map_err(|e| step("stats", e))?
    }

    async fn snapshot(
        &self,
        id: &str,
        source_template: &str,
        name: &str,
        limits: crate::SnapshotLimits,
    ) -> Result<(), RuntimeError> {
        let me = self.clone();
        let (id, src, name) = (id.to_string(), source_template.to_string(), name.to_string());
        tokio::task::spawn_blocking(move || me.snapshot_blocking(&id, &src, &name, limits))
            .await
            .map_err(|e| step("snapshot", e))?
    }

    async fn create_image_template(&self, name: &str, layers: &[String]) -> Result<(), RuntimeError> {
        let me = self.clone();
        let (name, layers) = (name.to_string(), layers.to_vec());
        tokio::task::spawn_blocking(move || me.create_image_template_blocking(&name, &layers))
            .await
            .map_err(|e| step("image template", e))?
    }

    async fn derive_template(
        &self,
        parent: &str,
        name: &str,
        stage: &std::path::Path,
        ancestors: &[String],
    ) -> Result<(), RuntimeError> {
        let me = self.clone();
        let (parent, name, stage, ancestors) = (
            parent.to_string(),
            name.to_string(),
            stage.to_path_buf(),
            ancestors.to_vec(),
        );
        tokio::task::spawn_blocking(move || me.derive_template_blocking(&parent, &name, &stage, &ancestors))
            .await
            .map_err(|e| step("template layer", e))?
    }

    async fn create_volume(&self, id: &str, size_mb: u64) -> Result<(), RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad volume id '{id}'")));
        }
        let me = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let owner = me.inner.init.uid_base + template::USER_ID;
            volumes::create(&*me.inner.quota, &me.inner.cfg.data_dir, &id, size_mb, owner)
        })
        .await
        .map_err(|e| step("volume", e))?
    }

    async fn volume_files(&self, id: &str) -> Result<crate::volume_files::VolumeFiles, RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad volume id '{id}'")));
        }
        let me = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || {
            let dir = volumes::source(&me.inner.cfg.data_dir, &id)?;
            let ids = crate::volume_files::IdRange {
                base: me.inner.init.uid_base,
                count: me.inner.init.uid_count,
                default_owner: template::USER_ID,
            };
            crate::volume_files::VolumeFiles::open(&dir, ids).map_err(|e| step("volume", e))
        })
        .await
        .map_err(|e| step("volume", e))?
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad volume id '{id}'")));
        }
        let me = self.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || volumes::delete(&me.inner.cfg.data_dir, &id))
            .await
            .map_err(|e| step("volume", e))
    }

    async fn delete_snapshot_template(&self, name: &str) -> Result<bool, RuntimeError> {
        let me = self.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || me.delete_template_blocking(&name))
            .await
            .map_err(|e| step("snapshot", e))?
    }

    async fn adopt(
        &self,
        id: &str,
        agent_pid: i32,
        agent_start_time: u64,
    ) -> Result<crate::Adopted, RuntimeError> {
        self.adopt_impl(id, agent_pid, agent_start_time).await
    }

    async fn freeze(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking("pause", move |i| i.freeze(&id)).await
    }

    async fn thaw(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking("resume", move |i| i.thaw_checked(&id)).await
    }

    async fn stop_keep_files(&self, id: &str) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking("pause", move |i| i.stop_keep_files(&id)).await
    }

    async fn boot_existing(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        self.boot_existing_impl(spec).await
    }

    async fn list_host_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut ids: std::collections::BTreeSet<String> = inner.cgroups.list().into_iter().collect();
            let dir = inner.cfg.data_dir.join("sandboxes");
            for e in std::fs::read_dir(&dir)?.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    ids.insert(n.to_string());
                }
            }
            Ok(ids.into_iter().filter(|i| is_valid_sandbox_id(i)).collect())
        })
        .await
        .map_err(|e| step("list", e))?
    }
}
