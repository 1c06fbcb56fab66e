//! Errors of the runtime crate.

/// Everything that can go wrong while creating, inspecting or destroying a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The template does not exist.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// The request is invalid for this backend (limits out of range, bad id, ...).
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// A step of sandbox creation failed; `step` names it (cgroup, spawn, mount, ...).
    #[error("sandbox {step} failed: {message}")]
    Step {
        /// The step that failed.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The agent did not answer in time after boot.
    #[error("sandbox agent did not become ready within {0} ms")]
    NotReady(u64),
    /// The host lacks something the backend needs (privileges, kernel feature, cgroup).
    #[error("host not supported: {0}")]
    Unsupported(String),
    /// Not enough room: a copy over its size limit, or a full host disk.
    #[error("{0}")]
    StorageFull(String),
    /// An I/O error without more context.
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}
