//! Reads of live sandboxes: one sandbox in detail, or all of them (for listings).

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::lifecycle::Lifecycle;
use crate::sandbox::SandboxView;
use sandboxd_store::{MountRow, SandboxState};

/// A running or paused sandbox with its lifecycle settings and volumes.
#[derive(Debug, Clone)]
pub struct SandboxDetail {
    pub view: SandboxView,
    pub lifecycle: Lifecycle,
    pub volumes: Vec<MountRow>,
}

impl Daemon {
    /// A running or paused sandbox in detail; "not found" otherwise.
    pub async fn sandbox_detail(&self, id: &str) -> Result<SandboxDetail, DaemonError> {
        let s = match self.sandboxes.get(id) {
            Some(s) if matches!(s.state(), SandboxState::Running | SandboxState::Paused) => s,
            _ => return Err(DaemonError::SandboxNotFound(id.to_string())),
        };
        let view = SandboxView::of(&s);
        let lifecycle = self.lifecycle.get(id);
        let volumes = self.sandbox_volumes(id).await?;
        Ok(SandboxDetail {
            view,
            lifecycle,
            volumes,
        })
    }

    /// Every live sandbox, or those of `template` (an unknown template matches none).
    pub fn list_sandboxes(&self, template: Option<&str>) -> Vec<SandboxView> {
        match template {
            Some(t) if !self.template_exists(t) => Vec::new(),
            _ => self.views(),
        }
    }
}
