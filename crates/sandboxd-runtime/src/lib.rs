//! Sandbox backends. The daemon drives sandboxes only through [`SandboxBackend`]; the default
//! implementation is the Linux namespace backend ([`namespace`]). Later backends (OCI runtimes,
//! microVMs) implement the same trait and run the same agent.

pub mod backend;
pub mod error;
pub mod namespace;
pub mod volume_files;

pub use backend::{
    Adopted, AgentEndpoint, Limits, NetworkCounters, SandboxBackend, SandboxHandle, SandboxSpec,
    SandboxStats, SnapshotLimits, VolumeMount,
};
pub use error::RuntimeError;
pub use namespace::snapshot::IMAGE_LAYERS;
