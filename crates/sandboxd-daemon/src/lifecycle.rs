//! A sandbox's lifecycle settings (`autoPause`, `autoResume`, pause mode) and its operation
//! lock (`docs/lifecycle.md`).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// A sandbox's lifecycle settings and pause state (the registry's lifecycle document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Lifecycle {
    /// `autoPause`: at `endAt` pause instead of kill.
    pub auto_pause: bool,
    /// `autoPauseMemory`: the auto-pause keeps memory (default true).
    pub auto_pause_memory: bool,
    /// `autoResume.enabled`: sandbox traffic to the paused sandbox resumes it.
    pub auto_resume: bool,
    /// The create request's timeout, used as the timeout of an auto-resume.
    pub timeout_secs: i64,
    /// While paused: whether the pause kept memory (`false`: filesystem only).
    pub paused_memory: Option<bool>,
    /// Something the user should know (for example: memory was lost by a host reboot).
    pub note: Option<String>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            auto_pause: false,
            auto_pause_memory: true,
            auto_resume: false,
            timeout_secs: 0,
            paused_memory: None,
            note: None,
        }
    }
}

impl Lifecycle {
    /// Whether the settings differ from the default (only then a document is stored at create).
    pub fn is_default(&self) -> bool {
        *self == Lifecycle::default()
    }

    /// The stored document.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The `lifecycle` object of `GET /sandboxes/{id}`.
    pub fn detail_json(&self) -> serde_json::Value {
        serde_json::json!({
            "autoResume": self.auto_resume,
            "onTimeout": if self.auto_pause { "pause" } else { "kill" },
        })
    }
}

/// Per-sandbox lifecycle settings and operation locks (a field of the [`crate::Daemon`]).
#[derive(Debug, Default)]
pub struct LifecycleState {
    settings: Mutex<HashMap<String, Lifecycle>>,
    ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl LifecycleState {
    /// The settings of a sandbox (defaults when none are stored).
    pub fn get(&self, id: &str) -> Lifecycle {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces the settings of a sandbox.
    pub fn set(&self, id: &str, lc: Lifecycle) {
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), lc);
    }

    /// Forgets a killed sandbox.
    pub fn forget(&self, id: &str) {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Waits for and takes the operation lock of a sandbox (pause, resume, kill).
    pub async fn op_lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let m = self
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_document_defaults_and_detail() {
        let d = Lifecycle::default();
        assert!(d.is_default() && d.auto_pause_memory);
        assert_eq!(
            d.detail_json(),
            serde_json::json!({"autoResume": false, "onTimeout": "kill"})
        );
        // old or partial documents fill in defaults
        let p: Lifecycle = serde_json::from_value(serde_json::json!({"autoPause": true})).unwrap();
        assert!(p.auto_pause && p.auto_pause_memory && !p.is_default());
        assert_eq!(p.detail_json()["onTimeout"], "pause");
        let back: Lifecycle = serde_json::from_value(p.to_json()).unwrap();
        assert_eq!(back, p);
    }

    #[tokio::test]
    async fn op_lock_serializes_per_sandbox() {
        let st = Arc::new(LifecycleState::default());
        let g = st.op_lock("a").await;
        // another sandbox is not blocked
        let _b = st.op_lock("b").await;
        let st2 = st.clone();
        let waiter = tokio::spawn(async move {
            let _g = st2.op_lock("a").await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "second op on the same sandbox must wait");
        drop(g);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
