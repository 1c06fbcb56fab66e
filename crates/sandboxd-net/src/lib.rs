//! Sandbox networking (`docs/network.md`): the egress policy model ([`policy`]), the address
//! plan ([`plan`]), veth links over rtnetlink ([`link`]), the nftables packet filter
//! ([`filter`]), the DNS forwarder ([`dns`]), the transparent egress proxy for domain rules
//! ([`proxy`]) and its header rules ([`header_rules`], on HTTPS through [`interception`]), bandwidth limits ([`shaping`]), and the
//! daemon-side manager and backend decorator ([`egress`]).

pub mod dns;
pub mod egress;
pub mod filter;
pub mod header_rules;
pub mod interception;
pub mod link;
pub mod local_ca;
pub mod plan;
pub mod policy;
pub mod proxy;
pub mod shaping;

pub use egress::{Network, NetworkConfig, NetworkedBackend};
pub use plan::AddressPlan;
pub use policy::{Destination, DomainPattern, Policy, PolicyError, Verdict};

use std::net::Ipv4Addr;
use std::sync::Arc;

/// The sandbox behind a source address on the sandbox range, and its current policy.
#[derive(Debug, Clone)]
pub struct SandboxPolicy {
    /// The sandbox's id.
    pub sandbox_id: String,
    /// Its policy at the time of the lookup.
    pub policy: Arc<Policy>,
}

/// Source address → sandbox, as the egress proxy needs it for each accepted connection.
pub trait PolicyLookup: Send + Sync {
    /// `None` when no sandbox holds this address (the connection must be refused).
    fn by_source(&self, addr: Ipv4Addr) -> Option<SandboxPolicy>;
}
