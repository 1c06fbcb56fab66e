//! Shared state of the agent.

use sandboxd_protocol::agent::AgentConfig;
use std::sync::{Arc, RwLock};

/// State shared by every request handler of one agent.
pub struct AgentState {
    config: RwLock<Arc<AgentConfig>>,
    /// Running and recently exited processes (`process.Process`).
    pub processes: crate::process::ProcessTable,
    /// Polling watchers (`filesystem.Filesystem/CreateWatcher`).
    pub watchers: crate::filesystem::WatcherTable,
}

impl AgentState {
    pub fn new(config: AgentConfig) -> Arc<Self> {
        Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
            processes: crate::process::ProcessTable::default(),
            watchers: crate::filesystem::WatcherTable::default(),
        })
    }

    /// The current configuration (cheap clone of an `Arc`).
    pub fn config(&self) -> Arc<AgentConfig> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace the configuration (control socket `/init`).
    pub fn set_config(&self, config: AgentConfig) {
        match self.config.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(config),
        }
    }
}
