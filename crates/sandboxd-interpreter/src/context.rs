//! Contexts: one kernel each, created in order, with a per-context execution lock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use serde::Serialize;
use tokio::sync::Mutex;
use tracing::info;

use crate::error::Error;
use crate::kernel::Kernel;
use crate::language::Language;
use crate::spawn::Launcher;

/// What the API shows of a context.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContextInfo {
    /// Context id (a UUID).
    pub id: String,
    /// Normalised language.
    pub language: String,
    /// Working directory the kernel started in.
    pub cwd: String,
}

/// The kernel of a context and what has been set up in it.
#[derive(Default)]
pub struct Slot {
    /// The running kernel, if started.
    pub kernel: Option<Arc<Kernel>>,
    /// Sandbox-global env vars were applied to this kernel.
    pub globals_applied: bool,
}

/// One context.
pub struct Context {
    /// Id.
    pub id: String,
    /// Language.
    pub language: Language,
    /// Working directory.
    pub cwd: String,
    /// Held for the whole of an execution: executions run one at a time.
    pub exec_lock: Mutex<()>,
    /// The kernel; held while starting or stopping it.
    pub slot: Mutex<Slot>,
    generation: AtomicU64,
}

impl Context {
    fn new(language: Language, cwd: String) -> Context {
        Context {
            id: uuid::Uuid::new_v4().to_string(),
            language,
            cwd,
            exec_lock: Mutex::new(()),
            slot: Mutex::new(Slot::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// What the API shows.
    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            language: self.language.to_string(),
            cwd: self.cwd.clone(),
        }
    }

    /// The running kernel; starts one if there is none or the last one died.
    pub async fn kernel(&self, kernels: &Kernels) -> Result<(Arc<Kernel>, bool), Error> {
        let mut slot = self.slot.lock().await;
        self.kernel_locked(&mut slot, kernels).await
    }

    /// Like [`Context::kernel`] with the slot already locked. Returns whether the global env
    /// vars still have to be applied.
    pub async fn kernel_locked(
        &self,
        slot: &mut Slot,
        kernels: &Kernels,
    ) -> Result<(Arc<Kernel>, bool), Error> {
        if let Some(k) = &slot.kernel
            && k.is_running()
        {
            return Ok((k.clone(), !slot.globals_applied));
        }
        if let Some(old) = slot.kernel.take() {
            info!(context = %self.id, "kernel died; starting a new one");
            old.stop().await;
        }
        let kernel = Arc::new(kernels.start(self).await?);
        slot.kernel = Some(kernel.clone());
        slot.globals_applied = false;
        Ok((kernel, true))
    }

    /// Restarts the kernel: state is lost, the id stays.
    pub async fn restart(&self, kernels: &Kernels) -> Result<(), Error> {
        let mut slot = self.slot.lock().await;
        if let Some(old) = slot.kernel.take() {
            old.stop().await;
        }
        slot.globals_applied = false;
        let kernel = Arc::new(kernels.start(self).await?);
        slot.kernel = Some(kernel);
        Ok(())
    }

    /// Stops the kernel, if any.
    pub async fn stop(&self) {
        let mut slot = self.slot.lock().await;
        if let Some(old) = slot.kernel.take() {
            old.stop().await;
        }
    }
}

/// Starts kernels for contexts.
pub struct Kernels {
    /// Command lines.
    pub launcher: Launcher,
    /// Per-kernel directories go here.
    pub runtime_dir: PathBuf,
}

impl Kernels {
    async fn start(&self, ctx: &Context) -> Result<Kernel, Error> {
        let cmd = self.launcher.command_for(ctx.language)?;
        let generation = ctx.generation.fetch_add(1, Ordering::SeqCst);
        let short: String = ctx.id.chars().filter(|c| *c != '-').take(12).collect();
        let dir = self.runtime_dir.join(format!("{short}-{generation}"));
        let user = self.launcher.user.as_ref().map(|u| u.ids);
        Kernel::start(ctx.language, cmd, dir, &ctx.cwd, user).await
    }
}

/// All contexts, in creation order, and the default context of each language.
#[derive(Default)]
pub struct Registry {
    contexts: StdMutex<Vec<Arc<Context>>>,
    /// language → id of its default context; the lock also serialises lazy creation.
    defaults: Mutex<HashMap<Language, String>>,
}

impl Registry {
    /// Adds a context (its kernel is started separately).
    pub fn create(&self, language: Language, cwd: String) -> Arc<Context> {
        let ctx = Arc::new(Context::new(language, cwd));
        if let Ok(mut list) = self.contexts.lock() {
            list.push(ctx.clone());
        }
        ctx
    }

    /// Looks a context up by id.
    pub fn get(&self, id: &str) -> Option<Arc<Context>> {
        self.contexts.lock().ok()?.iter().find(|c| c.id == id).cloned()
    }

    /// Removes a context from the registry (and from the defaults).
    pub async fn remove(&self, id: &str) -> Option<Arc<Context>> {
        let ctx = {
            let mut list = self.contexts.lock().ok()?;
            let pos = list.iter().position(|c| c.id == id)?;
            list.remove(pos)
        };
        self.defaults.lock().await.retain(|_, v| v != id);
        Some(ctx)
    }

    /// All contexts in creation order.
    pub fn list(&self) -> Vec<Arc<Context>> {
        self.contexts.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Marks `ctx` as the default context of its language.
    pub async fn set_default(&self, ctx: &Context) {
        self.defaults.lock().await.insert(ctx.language, ctx.id.clone());
    }

    /// The default context of `language`, created (with its kernel started) when missing.
    pub async fn default_for(
        &self,
        language: Language,
        cwd: &str,
        kernels: &Kernels,
    ) -> Result<Arc<Context>, Error> {
        let mut defaults = self.defaults.lock().await;
        if let Some(id) = defaults.get(&language)
            && let Some(ctx) = self.get(id)
        {
            return Ok(ctx);
        }
        // Check the kernel exists before a context is listed for it.
        kernels.launcher.command_for(language)?;
        let ctx = Arc::new(Context::new(language, cwd.to_string()));
        ctx.kernel(kernels).await?;
        if let Ok(mut list) = self.contexts.lock() {
            list.push(ctx.clone());
        }
        defaults.insert(language, ctx.id.clone());
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registry_keeps_creation_order_and_removes() {
        let r = Registry::default();
        let a = r.create(Language::Python, "/a".into());
        let b = r.create(Language::Javascript, "/b".into());
        let c = r.create(Language::Python, "/c".into());
        r.set_default(&a).await;
        let ids: Vec<_> = r.list().iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, vec![a.id.clone(), b.id.clone(), c.id.clone()]);
        assert_eq!(r.get(&b.id).unwrap().info().language, "javascript");
        assert!(r.remove(&a.id).await.is_some());
        assert!(r.remove(&a.id).await.is_none());
        assert!(r.get(&a.id).is_none());
        assert!(r.defaults.lock().await.is_empty());
        assert_eq!(r.list().len(), 2);
    }

    #[tokio::test]
    async fn default_for_a_missing_kernel_fails_without_listing_a_context() {
        let dir = tempfile::tempdir().unwrap();
        let kernels = Kernels {
            launcher: Launcher {
                layer: dir.path().to_path_buf(),
                ext_dir: dir.path().to_path_buf(),
                user: None,
                kernelspec_dirs: vec![dir.path().to_path_buf()],
            },
            runtime_dir: dir.path().to_path_buf(),
        };
        let r = Registry::default();
        let err = r.default_for(Language::R, "/", &kernels).await.err().unwrap();
        assert!(matches!(err, Error::NotInstalled { .. }));
        assert!(r.list().is_empty());
    }
}
