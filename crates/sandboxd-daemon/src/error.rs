//! The domain's errors. The HTTP layer maps each variant to a status and body in one place
//! (`sandboxd-server` `error.rs`); messages here are the ones clients read.

use sandboxd_runtime::RuntimeError;
use sandboxd_store::StoreError;

/// Which resource ran out (`resource` beside `error_code: "resource_exhausted"` in bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Memory,
    Disk,
    Processes,
    Time,
    /// The daemon's concurrent sandbox limit.
    Sandboxes,
}

/// Why a daemon operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The caller sent a value out of range or malformed (a timeout, a limit, a name…).
    #[error("{0}")]
    InvalidInput(String),
    /// A well-formed sandbox id that names no sandbox (E2B's exact wording).
    #[error("Sandbox \"{0}\" doesn't exist or you don't have access to it")]
    SandboxNotFound(String),
    /// An unknown template.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// Something else that does not exist (a volume, a template whose host layer is missing).
    #[error("{0}")]
    NotFound(String),
    /// The sandbox is in the wrong state for this call.
    #[error("{0}")]
    Conflict(String),
    /// The daemon's concurrent sandbox limit is reached (passes as sandboxes end).
    #[error("{0}")]
    TooManySandboxes(String),
    /// A condition that passes (shutting down, busy).
    #[error("{0}")]
    Unavailable(String),
    /// This host cannot do that at all (not root, no freezer…); a retry cannot help.
    #[error("{0}")]
    NotSupportedHere(String),
    /// A copy over its size limit or a full host disk.
    #[error("{0}")]
    InsufficientStorage(String),
    /// An `Idempotency-Key` already used with another request body.
    #[error("Idempotency-Key '{0}' was already used with a different request body")]
    IdempotencyMismatch(String),
    /// A request with this `Idempotency-Key` is still being served.
    #[error("a request with Idempotency-Key '{0}' is still in progress")]
    IdempotencyInProgress(String),
    /// A request with this `Idempotency-Key` was cut short by a daemon restart.
    #[error(
        "a request with Idempotency-Key '{0}' was in progress when sandboxd restarted; whether it created a sandbox is unknown: list the sandboxes, or use a new key"
    )]
    IdempotencyOutcomeUnknown(String),
    /// A failure of the daemon or the host.
    #[error("{0}")]
    Internal(String),
    /// The sandbox runs but its agent failed to answer a call of the daemon.
    #[error("The sandbox is running but its agent failed to answer: {reason}")]
    AgentFailed { sandbox_id: String, reason: String },
    /// An execution ran past its time limit and was killed.
    #[error("{0}")]
    Timeout(String),
    /// A limit of the sandbox was reached (disk full, OOM kill, process table, time).
    #[error("{message}")]
    ResourceExhausted { resource: Resource, message: String },
    /// Refused by a path or command rule.
    #[error("{0}")]
    SecurityDenied(String),
    /// A credential of its own (a volume's token) is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// An error with more fields for the client (for example a failed execution's output).
    #[error("{error}")]
    WithDetails {
        error: Box<DaemonError>,
        details: serde_json::Map<String, serde_json::Value>,
    },
}

impl DaemonError {
    /// This error with more fields in its body.
    pub fn with_details(self, details: serde_json::Map<String, serde_json::Value>) -> Self {
        DaemonError::WithDetails {
            error: Box::new(self),
            details,
        }
    }
}

impl From<RuntimeError> for DaemonError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::TemplateNotFound(t) => DaemonError::TemplateNotFound(t),
            RuntimeError::InvalidSpec(m) => DaemonError::InvalidInput(m),
            RuntimeError::Unsupported(m) => DaemonError::NotSupportedHere(m),
            RuntimeError::StorageFull(m) => DaemonError::InsufficientStorage(m),
            other => DaemonError::Internal(format!("sandbox backend: {other}")),
        }
    }
}

impl From<StoreError> for DaemonError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VolumeNotFound(_) => DaemonError::NotFound(e.to_string()),
            _ => DaemonError::Internal(e.to_string()),
        }
    }
}
