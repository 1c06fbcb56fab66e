//! File-descriptor budget of the daemon (`docs/control-plane.md`, "Connection and fd
//! budget"): the soft `RLIMIT_NOFILE` is raised to the hard limit at start, a share of it is
//! reserved for the daemon's own work (registry, spawn helper, pidfds, agent connections of
//! every sandbox) and the rest bounds the client connections accepted at once, so a flood of
//! idle connections is refused instead of starving sandbox work of descriptors.

use crate::error::ServerError;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Below this many descriptors the daemon refuses to start.
pub const MIN_NOFILE: u64 = 1024;
/// Descriptors kept for the daemon itself, whatever the number of sandboxes.
const RESERVED_BASE: u64 = 256;
/// Descriptors kept per sandbox (pidfd, pooled agent connections, streams in flight).
const RESERVED_PER_SANDBOX: u64 = 8;
/// A proxied connection may hold a client socket and an agent socket.
const FDS_PER_CONNECTION: u64 = 2;
/// Fewest client connections a budget allows.
const MIN_CONNECTIONS: u64 = 64;
/// Most client connections a budget allows, however high the limit.
const MAX_CONNECTIONS: u64 = 16_384;

/// The descriptor limit in force and the client connections it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` after raising it.
    pub nofile: u64,
    /// Client connections served at once; more are closed right after `accept`.
    pub max_connections: usize,
}

impl FdBudget {
    /// The budget for a limit of `nofile` descriptors and up to `max_sandboxes` sandboxes.
    pub fn for_limit(nofile: u64, max_sandboxes: usize) -> Result<Self, ServerError> {
        if nofile < MIN_NOFILE {
            return Err(ServerError::Config(format!(
                "the file descriptor limit (RLIMIT_NOFILE, hard) is {nofile}; sandboxd needs at least \
                 {MIN_NOFILE}: raise it (ulimit -Hn, LimitNOFILE= in a systemd unit)"
            )));
        }
        let reserved =
            RESERVED_BASE.saturating_add(RESERVED_PER_SANDBOX.saturating_mul(max_sandboxes as u64));
        let spare = nofile.saturating_sub(reserved) / FDS_PER_CONNECTION;
        let max_connections = spare.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
        Ok(Self {
            nofile,
            max_connections: max_connections as usize,
        })
    }

    /// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the budget for it.
    pub fn raise_and_compute(max_sandboxes: usize) -> Result<Self, ServerError> {
        Self::for_limit(raise_nofile()?, max_sandboxes)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (idempotent) and returns the limit in
/// force; a hard limit under [`MIN_NOFILE`] is an error. The first thing a daemon does.
pub fn raise_nofile() -> Result<u64, ServerError> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| ServerError::io("reading RLIMIT_NOFILE", e.into()))?;
    let mut nofile = soft;
    if hard > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => nofile = hard,
            Err(e) => tracing::warn!("raising RLIMIT_NOFILE from {soft} to {hard} failed: {e}"),
        }
    }
    FdBudget::for_limit(nofile, 0)?;
    Ok(nofile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_low_a_limit_is_a_clear_start_up_error() {
        let e = FdBudget::for_limit(256, 10).unwrap_err().to_string();
        assert!(
            e.contains("RLIMIT_NOFILE") && e.contains("256") && e.contains("1024"),
            "{e}"
        );
    }

    #[test]
    fn connections_get_what_sandboxes_leave() {
        let b = FdBudget::for_limit(1024, 10).unwrap();
        assert_eq!(b.max_connections, (1024 - 256 - 80) / 2);
        // many sandboxes on a small limit: still a floor of connections
        assert_eq!(FdBudget::for_limit(1024, 1000).unwrap().max_connections, 64);
        assert_eq!(
            FdBudget::for_limit(1 << 20, 1000).unwrap().max_connections,
            16_384
        );
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        if let Ok(b) = FdBudget::raise_and_compute(10) {
            assert!(b.nofile >= soft);
        }
    }
}
