//! Sandbox networking: the egress policy model ([`policy`]) and the lookup the daemon's
//! egress proxy uses to find a connection's sandbox and policy by source address.

pub mod policy;

pub use policy::{Destination, DomainPattern, Policy, PolicyError, Verdict};

use std::net::Ipv4Addr;
use std::sync::Arc;

/// The sandbox behind a source address on the sandbox range, and its current policy.
#[derive(Debug, Clone)]
pub struct SandboxPolicy {
    pub sandbox_id: String,
    pub policy: Arc<Policy>,
}

/// Source address → sandbox, as the egress proxy needs it for each accepted connection.
pub trait PolicyLookup: Send + Sync {
    /// `None` when no sandbox holds this address (the connection must be refused).
    fn by_source(&self, addr: Ipv4Addr) -> Option<SandboxPolicy>;
}
