//! The Linux namespace backend (default): see `docs/namespace-backend.md`.
//!
//! Each sandbox is a tree of processes in its own user, pid, mount, net, uts, ipc and cgroup
//! namespaces, cloned by a single-threaded spawn helper ([`helper`]), with an overlay root over
//! a read-only template and an overlay `/usr` over the host's idmapped `/usr`. The agent
//! (`sandboxd agent --boot`) is its PID 1.

pub mod adopt;
mod agent_boot;
pub mod cgroup;
pub mod command_policy;
pub mod config;
pub mod cpus;
mod derived_template;
pub mod disk_usage;
pub mod idmap;
pub mod image_template;
pub mod layered_template;
pub mod loader_guard;
pub mod meminfo;
pub mod mounts;
pub mod names;
mod namespace_backend;
pub mod pause;
pub mod quota;
mod sandbox_backend;
mod sandbox_dirs;
pub mod sandbox_init;
pub mod seccomp;
mod slot_pool;
pub mod snapshot;
mod spawn;
mod spawn_client;
pub mod spawn_helper;
pub mod spawn_protocol;
pub mod stats;
pub mod sys;
mod teardown;
pub mod template;
pub mod trust;
pub mod userns;
pub mod volumes;

use crate::RuntimeError;
pub use agent_boot::agent_health;
pub use config::NamespaceConfig;
pub use idmap::IdMap;
pub use names::is_valid_sandbox_id;
pub use namespace_backend::NamespaceBackend;
pub use sandbox_init::ExecTarget;
pub use spawn_client::Spawned;
pub use sys::connect_unix;

pub(super) fn step(step: &'static str, message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Step {
        step,
        message: message.to_string(),
    }
}
