//! A backend for a daemon that cannot create sandboxes on this host (for example not running
//! as root): the API is served, `base` is known, and every create fails with 501 (`Should-Retry: false`) and the
//! reason. Used by `sandboxd serve` when the real backend cannot start, so that the reason is
//! visible to clients instead of a daemon that does not come up.

use async_trait::async_trait;
use sandboxd_runtime::{RuntimeError, SandboxBackend, SandboxHandle, SandboxSpec};

/// A backend that refuses to create sandboxes, with a reason.
#[derive(Debug, Clone)]
pub struct UnavailableBackend {
    reason: String,
}

impl UnavailableBackend {
    /// `reason` is reported on every create.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

#[async_trait]
impl SandboxBackend for UnavailableBackend {
    fn name(&self) -> &'static str {
        "unavailable"
    }

    fn has_template(&self, template: &str) -> bool {
        template == "base"
    }

    fn template_missing_reason(&self, _template: &str) -> Option<String> {
        None
    }

    fn template_has_services(&self, _template: &str) -> bool {
        false
    }

    async fn create(&self, _spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        Err(RuntimeError::Unsupported(format!(
            "this daemon cannot create sandboxes: {}",
            self.reason
        )))
    }

    async fn destroy(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn is_alive(&self, _handle: &SandboxHandle) -> bool {
        false
    }

    async fn list_host_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
}
