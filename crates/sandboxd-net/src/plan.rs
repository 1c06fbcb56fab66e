//! The daemon's sandbox address range and names: which address and host interface belong to
//! which slot, the gateway every sandbox routes through, the per-daemon tag of the packet
//! filter table and interfaces.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// The default `--sandbox-cidr`: a private block off the common home, office and cloud LANs.
pub const DEFAULT_CIDR: &str = "10.213.0.0/16";

/// Prefix of every sandboxd host interface, whichever daemon made it (sandbox-to-sandbox
/// traffic is refused for all of them).
pub const IFACE_PREFIX: &str = "sx";
/// Prefix of the shaper devices ([`AddressPlan::shaper_iface`]).
pub const SHAPER_PREFIX: &str = "si";

/// Addresses and names of one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPlan {
    cidr: Ipv4Net,
    tag: String,
}

impl AddressPlan {
    /// `cidr` must leave room for the gateway and at least one sandbox (/30 or larger);
    /// `tag` (4 lower-case hex digits) tells this daemon's interfaces and table from others'.
    pub fn new(cidr: Ipv4Net, tag: &str) -> Result<Self, String> {
        if cidr.prefix_len() > 30 {
            return Err(format!("--sandbox-cidr {cidr}: at most /30"));
        }
        if tag.len() != 4
            || !tag
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(format!("bad network tag {tag:?}"));
        }
        Ok(Self {
            cidr: cidr.trunc(),
            tag: tag.to_string(),
        })
    }

    /// A tag derived from a string (the daemon's data dir), stable across restarts.
    pub fn tag_for(seed: &str) -> String {
        // FNV-1a: stable, no dependency; collisions only cost an address retry.
        let mut h: u32 = 0x811c_9dc5;
        for b in seed.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        format!("{:04x}", (h ^ (h >> 16)) & 0xffff)
    }

    /// The sandbox range.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// This daemon's tag (in link, table and shaper names).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The gateway (and DNS) address every sandbox routes through: the range's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// How many sandbox slots the range holds.
    pub fn slots(&self) -> u32 {
        // network, gateway and broadcast are not used
        (1u64 << (32 - self.cidr.prefix_len()))
            .saturating_sub(3)
            .min(99_999) as u32
    }

    /// The address of slot `i`.
    pub fn address(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 2 + slot)
    }

    /// The slot of an address of this range.
    pub fn slot_of(&self, addr: Ipv4Addr) -> Option<u32> {
        let off = u32::from(addr).checked_sub(u32::from(self.cidr.network()) + 2)?;
        (off < self.slots()).then_some(off)
    }

    /// Host-side interface of slot `i` (`sx<tag>_<i>`, at most 15 bytes).
    pub fn iface(&self, slot: u32) -> String {
        format!("{IFACE_PREFIX}{}_{slot}", self.tag)
    }

    /// The interface index asked for the host end of slot `i` (its lookup is then saved): a
    /// high number of this daemon's tag and the slot; the kernel refuses it only if taken.
    pub fn host_ifindex(&self, slot: u32) -> u32 {
        let tag = u32::from_str_radix(&self.tag, 16).unwrap_or(0) % 4096;
        0x4000_0000 + tag * 0x1_0000 + slot
    }

    /// The shaper (`ifb`) device of slot `i` that carries the sandbox's egress rate limit
    /// (`si<tag>_<i>`; not an `sx` name, so the filter never takes it for a sandbox link).
    pub fn shaper_iface(&self, slot: u32) -> String {
        format!("{SHAPER_PREFIX}{}_{slot}", self.tag)
    }

    /// The prefix of this daemon's shaper devices.
    pub fn shaper_prefix(&self) -> String {
        format!("{SHAPER_PREFIX}{}_", self.tag)
    }

    /// The wildcard matching this daemon's host interfaces in the packet filter.
    pub fn iface_wildcard(&self) -> String {
        format!("{IFACE_PREFIX}{}_*", self.tag)
    }

    /// The slot of one of this daemon's host interfaces.
    pub fn slot_of_iface(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(IFACE_PREFIX)?.strip_prefix(self.tag.as_str())?;
        let n = rest.strip_prefix('_')?;
        if n.is_empty() || n.len() > 5 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok().filter(|s| *s < self.slots())
    }

    /// The packet filter table of this daemon.
    pub fn table(&self) -> String {
        format!("sandboxd_{}", self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_addresses_and_names() {
        let p = AddressPlan::new("10.213.0.0/16".parse().unwrap(), "1a2b").unwrap();
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(p.address(0), Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(p.address(300), Ipv4Addr::new(10, 213, 1, 46));
        assert_eq!(p.slot_of(Ipv4Addr::new(10, 213, 1, 46)), Some(300));
        assert_eq!(p.slot_of(Ipv4Addr::new(10, 213, 0, 1)), None);
        assert_eq!(p.slot_of(Ipv4Addr::new(10, 214, 0, 9)), None);
        assert_eq!(p.slots(), 65533);
        assert_eq!(p.iface(65532), "sx1a2b_65532");
        assert!(p.iface(65532).len() <= 15);
        assert_eq!(p.slot_of_iface("sx1a2b_17"), Some(17));
        assert_eq!(p.slot_of_iface("sx1a2c_17"), None);
        assert_eq!(p.slot_of_iface("sx1a2b_"), None);
        assert_eq!(p.slot_of_iface("sx1a2b_99999"), None);
        assert_eq!(p.iface_wildcard(), "sx1a2b_*");
        assert_eq!(p.table(), "sandboxd_1a2b");
        // asked interface indices: one per slot, apart from other tags', a valid (positive) int
        assert_eq!(p.host_ifindex(1), p.host_ifindex(0) + 1);
        assert!(p.host_ifindex(65532) < i32::MAX as u32);
        let other = AddressPlan::new("10.213.0.0/16".parse().unwrap(), "1a2c").unwrap();
        assert!(other.host_ifindex(0) > p.host_ifindex(65532));
        let small = AddressPlan::new("192.0.2.0/30".parse().unwrap(), "0000").unwrap();
        assert_eq!(small.slots(), 1);
        assert!(AddressPlan::new("192.0.2.0/31".parse().unwrap(), "0000").is_err());
        assert!(AddressPlan::new("192.0.2.0/24".parse().unwrap(), "XYZ1").is_err());
        assert_eq!(AddressPlan::tag_for("/var/lib/sandboxd").len(), 4);
        assert_ne!(AddressPlan::tag_for("/a"), AddressPlan::tag_for("/b"));
    }
}
