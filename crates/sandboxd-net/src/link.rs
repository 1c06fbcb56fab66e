//! Links, addresses and routes over rtnetlink (the `rtnetlink` crate: in-process netlink, no
//! `ip` process per step, which keeps a sandbox's network inside the create budget).
//!
//! Shape (per sandbox, slot `i`): a veth pair `sx<tag>_<i>` (host) ↔ `eth0` (sandbox). The
//! host end carries the gateway address `G/32` (the same on every host end; each is its own
//! link, so sandboxes share no layer 2) and a route `X/32` to the sandbox; the sandbox has `X/32`
//! with `G` as its peer (so a route to `G`) and a default route via `G`.

use crate::plan::AddressPlan;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// The sandbox-side interface name.
pub const SANDBOX_IFACE: &str = "eth0";

fn nl(what: &str, e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let io = m.to_io();
            io::Error::new(io.kind(), format!("{what}: {io}"))
        }
        e => io::Error::other(format!("{what}: {e}")),
    }
}

/// The errno of a netlink error answer.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn is_exists(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists
}

/// A netlink connection in the host's network namespace (the daemon's).
pub fn host_handle() -> io::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink connection in the network namespace of process `pid` (a sandbox's agent). The
/// socket is opened by a short-lived thread that entered that namespace; it keeps talking to
/// that namespace after the thread is gone.
pub fn netns_handle(pid: i32) -> io::Result<Handle> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let rt = tokio::runtime::Handle::current();
    let conn = std::thread::spawn(move || -> io::Result<_> {
        let _guard = rt.enter();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        rtnetlink::new_connection()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))??;
    let (conn, handle, _) = conn;
    tokio::spawn(conn);
    Ok(handle)
}

/// Index of the link called `name`, if there is one.
pub async fn index_of(h: &Handle, name: &str) -> io::Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl("link get", e)),
    }
}

/// Deletes a link by name; `Ok` if it is already gone.
pub async fn delete(h: &Handle, name: &str) -> io::Result<()> {
    match index_of(h, name).await? {
        Some(i) => match h.link().del(i).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(nl("link del", e)),
        },
        None => Ok(()),
    }
}

/// The names of the host links whose name starts with `prefix`.
pub async fn names_with_prefix(h: &Handle, prefix: &str) -> io::Result<Vec<String>> {
    let mut links = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(m) = links.try_next().await.map_err(|e| nl("link dump", e))? {
        for a in &m.attributes {
            if let LinkAttribute::IfName(n) = a
                && n.starts_with(prefix)
            {
                out.push(n.clone());
            }
        }
    }
    Ok(out)
}

/// Why [`attach`] failed.
#[derive(Debug)]
pub enum AttachError {
    /// Another sandbox (of this or another daemon) holds the slot's address: try another slot.
    AddressTaken,
    /// Any other failure.
    Io(io::Error),
}

impl From<io::Error> for AttachError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The interface index asked for the sandbox end (a new network namespace has only `lo`, 1).
const SANDBOX_IFINDEX: u32 = 2;

/// Connects the network namespace of process `pid` to the host as slot `slot`. On error the
/// host link is removed again.
///
/// Few netlink round trips, since each waits for the kernel's `rtnl` lock, which a booting
/// sandbox needs too: the pair is made with both ends' indices asked for (no lookups), and the
/// sandbox's address names the gateway as its peer (the kernel adds the route to it): veth,
/// host route, gateway address, sandbox address, link up, default route. If the asked indices
/// are taken, the kernel's are looked up instead.
pub async fn attach(h: &Handle, plan: &AddressPlan, slot: u32, pid: i32) -> Result<(), AttachError> {
    let name = plan.iface(slot);
    let veth = |indices: bool| {
        // (not up yet: a veth end cannot open before its pair is complete)
        let peer = LinkUnspec::new_with_name(SANDBOX_IFACE).setns_by_pid(pid as u32);
        let peer = if indices {
            peer.index(SANDBOX_IFINDEX)
        } else {
            peer
        };
        let msg = LinkVeth::new(&name, SANDBOX_IFACE)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .up();
        if indices {
            msg.index(plan.host_ifindex(slot)).build()
        } else {
            msg.build()
        }
    };
    let mut indices = true;
    if let Err(e) = h.link().add(veth(true)).execute().await {
        let busy = errno(&e) == Some(libc::EBUSY);
        let e = nl("veth add", e);
        if busy {
            indices = false;
        } else if is_exists(&e) {
            // a leftover of an earlier run of this daemon: replace it
            delete(h, &name).await?;
        } else {
            return Err(e.into());
        }
        if let Err(e) = h.link().add(veth(indices)).execute().await {
            if errno(&e) != Some(libc::EBUSY) {
                return Err(nl("veth add", e).into());
            }
            indices = false;
            h.link()
                .add(veth(false))
                .execute()
                .await
                .map_err(|e| nl("veth add", e))?;
        }
    }
    let known = indices.then(|| (plan.host_ifindex(slot), SANDBOX_IFINDEX));
    let r = configure(h, plan, slot, pid, &name, known).await;
    if r.is_err() {
        let _ = delete(h, &name).await;
    }
    r
}

/// Addresses and routes of slot `slot`'s link `name` (`known`: the host and sandbox ends'
/// indices, when the pair got the ones asked for).
async fn configure(
    h: &Handle,
    plan: &AddressPlan,
    slot: u32,
    pid: i32,
    name: &str,
    known: Option<(u32, u32)>,
) -> Result<(), AttachError> {
    let (gw, addr) = (plan.gateway(), plan.address(slot));
    // the two ends are configured at once: each end's steps wait on the kernel in turn, but the
    // round trips of one overlap those of the other
    let host_end = async {
        let idx = match known {
            Some((i, _)) => i,
            None => index_of(h, name)
                .await?
                .ok_or_else(|| io::Error::other(format!("{name} vanished")))?,
        };
        // the /32 route to the sandbox is the address's lock across daemons
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .output_interface(idx)
            .scope(RouteScope::Link)
            .build();
        if let Err(e) = h.route().add(route).execute().await {
            let e = nl("route add", e);
            return Err(if is_exists(&e) {
                AttachError::AddressTaken
            } else {
                e.into()
            });
        }
        if let Err(e) = h.address().add(idx, IpAddr::V4(gw), 32).execute().await {
            let e = nl("gateway address", e);
            if !is_exists(&e) {
                return Err(e.into());
            }
        }
        Ok(())
    };
    let sandbox_end = async {
        let inner = netns_handle(pid)?;
        let sidx = match known {
            Some((_, i)) => i,
            None => index_of(&inner, SANDBOX_IFACE)
                .await?
                .ok_or_else(|| io::Error::other("eth0 missing in the sandbox"))?,
        };
        // `addr/32 peer gw`: the kernel adds the route to the gateway
        let mut add = inner.address().add(sidx, IpAddr::V4(addr), 32);
        for a in &mut add.message_mut().attributes {
            if let AddressAttribute::Address(x) = a {
                *x = IpAddr::V4(gw);
            }
        }
        add.execute().await.map_err(|e| nl("sandbox address", e))?;
        inner
            .link()
            .set(LinkUnspec::new_with_index(sidx).up().build())
            .execute()
            .await
            .map_err(|e| nl("sandbox link up", e))?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(sidx)
            .build();
        inner
            .route()
            .add(default)
            .execute()
            .await
            .map_err(|e| nl("sandbox default route", e))?;
        Ok::<(), AttachError>(())
    };
    let (host, sandbox) = tokio::join!(host_end, sandbox_end);
    host?;
    sandbox
}

/// Traffic counters of a host link, from the sandbox's point of view (the host end receives
/// what the sandbox sends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes the sandbox received.
    pub rx_bytes: u64,
    /// Packets the sandbox received.
    pub rx_packets: u64,
    /// Bytes the sandbox sent.
    pub tx_bytes: u64,
    /// Packets the sandbox sent.
    pub tx_packets: u64,
}

/// Reads [`Traffic`] of host link `name` from sysfs.
pub fn traffic(name: &str) -> io::Result<Traffic> {
    let read = |f: &str| -> io::Result<u64> {
        let s = std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/{f}"))?;
        s.trim().parse().map_err(io::Error::other)
    };
    Ok(Traffic {
        rx_bytes: read("tx_bytes")?,
        rx_packets: read("tx_packets")?,
        tx_bytes: read("rx_bytes")?,
        tx_packets: read("rx_packets")?,
    })
}

/// The host's on-link IPv4 networks (its LANs) from a `/proc/net/route` table: routes without
/// a gateway on interfaces other than loopback and sandboxd's, default route excluded.
pub fn on_link_networks(route_table: &str) -> Vec<ipnet::Ipv4Net> {
    let mut out = Vec::new();
    for line in route_table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] == "lo" || f[0].starts_with(crate::plan::IFACE_PREFIX) {
            continue;
        }
        // the kernel prints each big-endian address as a native integer
        let hex = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
        };
        let (Some(dest), Some(gw), Some(mask)) = (hex(f[1]), hex(f[2]), hex(f[7])) else {
            continue;
        };
        let prefix = u32::from(mask).leading_ones() as u8;
        if gw.is_unspecified()
            && prefix > 0
            && let Ok(n) = ipnet::Ipv4Net::new(dest, prefix)
        {
            out.push(n.trunc());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_networks_of_a_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            wlan0\t0000A8C0\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
            sx1a2b_3\t0500D50A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
            eth0\t00003364\t020200C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let nets: Vec<String> = on_link_networks(table).iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["192.0.2.0/24", "192.168.0.0/16"]);
    }
}
