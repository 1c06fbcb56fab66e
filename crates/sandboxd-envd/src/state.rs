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
    /// The state of an agent booted with `config`; takes ownership of its `work` cgroup
    /// counter fds (call once per agent).
    pub fn new(config: AgentConfig) -> Arc<Self> {
        let mut processes = crate::process::ProcessTable::default();
        if !config.work_counter_fds.is_empty() {
            processes.counters = Some(Arc::new(crate::work_counters::InheritedCounters::take(
                &config.work_counter_fds,
            )));
        }
        Arc::new(Self {
            config: RwLock::new(Arc::new(config)),
            processes,
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
