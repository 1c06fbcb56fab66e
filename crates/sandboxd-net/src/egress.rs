//! One daemon's sandbox networking ([`Network`]) and the backend decorator that gives every
//! sandbox the backend boots its link ([`NetworkedBackend`]).
//!
//! A sandbox is connected right after its agent exists (create, filesystem-only resume), so a
//! warm-pool sandbox is connected while it waits in the pool, off the create path. Its policy
//! is set by the daemon ([`SandboxBackend::set_egress`]) before the create returns, at a pool
//! claim, on `PUT /sandboxes/{id}/network` and at re-adoption; a policy that is not wide open
//! rewrites the packet filter table at once. The host link goes away with the sandbox's network
//! namespace (the kernel's namespace clean-up, batched and off the create path); its slot is
//! reused only once the link is gone.

use crate::filter::{self, Enforced, Ruleset};
use crate::link::{self, AttachError, Traffic};
use crate::plan::AddressPlan;
use crate::proxy::{EgressProxy, HostProtection};
use crate::{Policy, PolicyLookup, SandboxPolicy};
use async_trait::async_trait;
use sandboxd_runtime::{
    Adopted, RuntimeError, SandboxBackend, SandboxHandle, SandboxSpec, SandboxStats, SnapshotLimits,
};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Settings of [`Network::start`].
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The sandboxes' addresses and link names.
    pub plan: AddressPlan,
    /// Where queries go when a sandbox has no `dnsServers` (empty: the host's resolvers).
    pub dns_upstreams: Vec<SocketAddr>,
    /// `--allow-private-egress`: RFC 1918 and CGNAT destinations become reachable.
    pub allow_private: bool,
    /// One small file per connected sandbox (its slot), for re-adoption after a restart.
    pub state_dir: PathBuf,
    /// TLS termination for HTTPS header rules (`None`: such TLS is spliced, rules unapplied).
    pub interception: Option<crate::interception::Interception>,
}

struct Entry {
    slot: Option<u32>,
    policy: Arc<Policy>,
    /// What the policy was made from (`network`, `allow_internet_access`), kept with the slot
    /// in `<state_dir>/<id>` so a restarted daemon enforces it from its first table write.
    source: (serde_json::Value, bool),
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            slot: None,
            policy: Arc::new(Policy::default()),
            source: (serde_json::Value::Null, true),
        }
    }
}

/// `<state_dir>/<id>`: a connected sandbox's slot and policy source.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Persisted {
    slot: u32,
    network: serde_json::Value,
    allow_internet_access: bool,
}

#[derive(Default)]
struct State {
    by_id: HashMap<String, Entry>,
    by_slot: BTreeMap<u32, String>,
    /// Slots of stopped sandboxes whose host link the kernel has not removed yet.
    draining: BTreeMap<u32, std::time::Instant>,
}

/// Whether the host has a network device called `name`.
fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// How long a stopped sandbox's host link may outlive it before it is deleted explicitly
/// (something still holds the namespace).
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

impl State {
    /// Frees the draining slots whose host link and shaper device are gone (`sysfs` lookups:
    /// no netlink, no `rtnl` lock).
    fn release_drained(&mut self, plan: &AddressPlan) {
        self.draining
            .retain(|slot, _| link_exists(&plan.iface(*slot)) || link_exists(&plan.shaper_iface(*slot)));
    }

    /// The lowest slot that no sandbox holds, no link still occupies and `skip` leaves out.
    fn free_slot(&self, plan: &AddressPlan, skip: &std::collections::BTreeSet<u32>) -> Option<u32> {
        (0..plan.slots())
            .find(|s| !self.by_slot.contains_key(s) && !self.draining.contains_key(s) && !skip.contains(s))
    }
}

/// The sandbox networking of one daemon.
pub struct Network {
    cfg: NetworkConfig,
    host: rtnetlink::Handle,
    dns_port: u16,
    /// The host's on-link networks at start-up (refused unless `allow_private`).
    lan: Vec<ipnet::Ipv4Net>,
    state: Mutex<State>,
    /// The egress proxy's listening port (all addresses).
    proxy_port: u16,
    /// The egress proxy (set once at start).
    proxy: std::sync::OnceLock<Arc<EgressProxy>>,
    /// Serialises packet filter writes (each write renders the whole table from `state`);
    /// holds whether the current table has per-sandbox counters.
    filter: tokio::sync::Mutex<bool>,
    /// Denied-packet counts by slot, read from the table at most once a second.
    denied: Mutex<(Option<std::time::Instant>, HashMap<u32, u64>)>,
}

fn io_step(step: &'static str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Step {
        step,
        message: e.to_string(),
    }
}

impl Network {
    /// Turns on IPv4 forwarding, starts the DNS resolver and writes the packet filter table
    /// (replacing what an earlier run of this daemon left).
    pub async fn start(mut cfg: NetworkConfig) -> Result<Arc<Self>, RuntimeError> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| io_step("ip_forward", e))?;
        if cfg.dns_upstreams.is_empty() {
            cfg.dns_upstreams = crate::dns::host_resolvers();
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| io_step("network state dir", e))?;
        let host = link::host_handle().map_err(|e| io_step("netlink", e))?;
        let (udp, tcp) = bind_dns().await.map_err(|e| io_step("dns listener", e))?;
        let dns_port = udp.local_addr().map_err(|e| io_step("dns listener", e))?.port();
        let lan = link::on_link_networks(&std::fs::read_to_string("/proc/net/route").unwrap_or_default());
        let proxy_listener = EgressProxy::bind()
            .await
            .map_err(|e| io_step("egress proxy listener", e))?;
        let proxy_port = proxy_listener
            .local_addr()
            .map_err(|e| io_step("egress proxy listener", e))?
            .port();
        let net = Arc::new(Self {
            cfg,
            host,
            dns_port,
            lan,
            proxy_port,
            proxy: std::sync::OnceLock::new(),
            state: Mutex::new(State::default()),
            filter: tokio::sync::Mutex::new(false),
            denied: Mutex::new((None, HashMap::new())),
        });
        let lookup: Arc<dyn PolicyLookup> = Arc::new(Lookup(Arc::downgrade(&net)));
        let proxy = Arc::new(EgressProxy::new(
            lookup.clone(),
            net.cfg.dns_upstreams.clone(),
            net.cfg.allow_private,
            HostProtection::new(net.cfg.plan.cidr(), net.cfg.allow_private, &net.lan),
            net.cfg.interception.clone(),
        ));
        let _ = net.proxy.set(proxy.clone());
        tokio::spawn(proxy.serve(proxy_listener));
        let resolver = Arc::new(crate::dns::Resolver::new(
            net.cfg.dns_upstreams.clone(),
            net.cfg.allow_private,
            lookup,
        ));
        tokio::spawn(resolver.clone().serve_udp(udp));
        tokio::spawn(resolver.serve_tcp(tcp));
        net.load_state().await;
        net.sweep_stale_shapers().await;
        net.write_filter().await?;
        net.sweep_stale_tables().await;
        tracing::info!(
            cidr = %net.cfg.plan.cidr(),
            gateway = %net.cfg.plan.gateway(),
            dns_port,
            proxy_port,
            upstreams = ?net.cfg.dns_upstreams,
            lan = ?net.lan,
            "sandbox networking ready"
        );
        Ok(net)
    }

    /// Removes the shaper devices of slots no sandbox holds (left by a crash).
    async fn sweep_stale_shapers(&self) {
        let prefix = self.cfg.plan.shaper_prefix();
        let names = link::names_with_prefix(&self.host, &prefix)
            .await
            .unwrap_or_default();
        for name in names {
            let slot = name.strip_prefix(&prefix).and_then(|n| n.parse::<u32>().ok());
            let held = slot.is_some_and(|s| self.lock().by_slot.contains_key(&s));
            if !held {
                crate::shaping::remove_shaper(&name).await;
            }
        }
    }

    /// Removes the tables of daemons that are gone and left no sandbox behind.
    async fn sweep_stale_tables(&self) {
        let links = link::names_with_prefix(&self.host, crate::plan::IFACE_PREFIX)
            .await
            .unwrap_or_default();
        let own = self.cfg.plan.table();
        for t in filter::stale_tables(&links).await.unwrap_or_default() {
            if t != own {
                let script = format!("delete table inet {t}\n");
                match filter::apply(&script).await {
                    Ok(()) => {
                        tracing::info!(table = %t, "removed the packet filter table of a stopped daemon")
                    }
                    Err(e) => tracing::warn!(table = %t, "removing a stale table: {e}"),
                }
            }
        }
    }

    /// The address plan (range, gateway, slots, names).
    pub fn plan(&self) -> &AddressPlan {
        &self.cfg.plan
    }

    /// The resolver's port on the gateway address.
    pub fn dns_port(&self) -> u16 {
        self.dns_port
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renders and writes the whole table.
    async fn write_filter(&self) -> Result<(), RuntimeError> {
        let mut has_counters = self.filter.lock().await;
        // the rewrite replaces the counters: carry their counts over
        let denied_so_far: HashMap<u32, u64> = if *has_counters {
            filter::denied_counts(&self.cfg.plan)
                .await
                .map(|v| v.into_iter().collect())
                .unwrap_or_default()
        } else {
            HashMap::new()
        };
        let script = {
            let st = self.lock();
            let mut enforced: Vec<(u32, String, Arc<Policy>)> = st
                .by_id
                .iter()
                .filter_map(|(id, e)| Some((e.slot?, id.clone(), e.policy.clone())))
                .filter(|(_, _, p)| !p.is_open())
                .collect();
            enforced.sort_by_key(|e| e.0);
            Ruleset {
                plan: &self.cfg.plan,
                dns_port: self.dns_port,
                proxy_port: Some(self.proxy_port),
                allow_private: self.cfg.allow_private,
                lan: &self.lan,
                enforced: enforced
                    .iter()
                    .map(|(slot, id, p)| Enforced {
                        sandbox_id: id,
                        slot: *slot,
                        address: self.cfg.plan.address(*slot),
                        policy: p,
                    })
                    .collect(),
                denied_so_far: &denied_so_far,
            }
            .render()
        };
        *has_counters = script.contains("counter denied_");
        filter::apply(&script)
            .await
            .map_err(|e| io_step("packet filter", e))
    }

    /// Reads the slots and policies of the sandboxes an earlier run connected whose links still
    /// exist (the others' files are removed), so the first table write enforces them all.
    async fn load_state(&self) {
        let Ok(dir) = std::fs::read_dir(&self.cfg.state_dir) else {
            return;
        };
        for f in dir.flatten() {
            let id = f.file_name().to_string_lossy().into_owned();
            let saved = std::fs::read(f.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Persisted>(&b).ok())
                .filter(|p| p.slot < self.cfg.plan.slots());
            let policy = saved
                .as_ref()
                .and_then(|p| Policy::from_network(&p.network, p.allow_internet_access).ok());
            let link_up = match &saved {
                Some(p) => link::index_of(&self.host, &self.cfg.plan.iface(p.slot))
                    .await
                    .ok()
                    .flatten()
                    .is_some(),
                None => false,
            };
            match (saved, policy, link_up) {
                (Some(p), Some(policy), true) => {
                    let mut st = self.lock();
                    st.by_slot.insert(p.slot, id.clone());
                    st.by_id.insert(
                        id,
                        Entry {
                            slot: Some(p.slot),
                            policy: Arc::new(policy),
                            source: (p.network, p.allow_internet_access),
                        },
                    );
                }
                _ => {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }

    /// Writes `<state_dir>/<id>` for a connected sandbox (atomically).
    fn persist(&self, id: &str) {
        let saved = {
            let st = self.lock();
            let Some(e) = st.by_id.get(id) else { return };
            let Some(slot) = e.slot else { return };
            Persisted {
                slot,
                network: e.source.0.clone(),
                allow_internet_access: e.source.1,
            }
        };
        let path = self.cfg.state_dir.join(id);
        let tmp = self.cfg.state_dir.join(format!(".{id}.tmp"));
        let r = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::warn!(sandbox = %id, "saving the network state: {e}");
        }
    }

    /// Sets a sandbox's policy from its `network` object and `allow_internet_access`; writes
    /// the filter when the sandbox is connected and the change matters to the kernel.
    pub async fn set_policy(
        &self,
        id: &str,
        network: &serde_json::Value,
        allow: bool,
    ) -> Result<(), RuntimeError> {
        let policy = Arc::new(
            Policy::from_network(network, allow).map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?,
        );
        let (rewrite, slot, reshape) = {
            let mut st = self.lock();
            let e = st.by_id.entry(id.to_string()).or_default();
            let rewrite = e.slot.is_some() && !(e.policy.is_open() && policy.is_open());
            let reshape = e.policy.bandwidth != policy.bandwidth;
            let bandwidth = policy.bandwidth;
            e.policy = policy;
            e.source = (network.clone(), allow);
            (rewrite, e.slot, reshape.then_some(bandwidth))
        };
        if slot.is_some() {
            self.persist(id);
        }
        if rewrite {
            self.write_filter().await?;
        }
        if let (Some(slot), Some(bw)) = (slot, reshape) {
            self.shape(id, slot, &bw).await?;
        }
        Ok(())
    }

    /// Sets the rate limits of slot `slot`'s link.
    async fn shape(&self, id: &str, slot: u32, bw: &crate::policy::Bandwidth) -> Result<(), RuntimeError> {
        let (link, shaper) = (self.cfg.plan.iface(slot), self.cfg.plan.shaper_iface(slot));
        crate::shaping::apply(&link, &shaper, bw).await.map_err(|e| {
            tracing::error!(sandbox = %id, "bandwidth limits: {e}");
            io_step("bandwidth limits", e)
        })
    }

    /// Connects sandbox `id` (agent `pid`) on the lowest free slot.
    pub async fn attach(&self, id: &str, pid: i32) -> Result<(), RuntimeError> {
        let mut skip = std::collections::BTreeSet::new();
        loop {
            let slot = {
                let mut st = self.lock();
                if !st.draining.is_empty() {
                    st.release_drained(&self.cfg.plan);
                }
                let slot = st
                    .free_slot(&self.cfg.plan, &skip)
                    .ok_or_else(|| io_step("network", "no free address in --sandbox-cidr"))?;
                st.by_slot.insert(slot, id.to_string());
                slot
            };
            match link::attach(&self.host, &self.cfg.plan, slot, pid).await {
                Ok(()) => return self.attached(id, slot).await,
                Err(e) => {
                    self.lock().by_slot.remove(&slot);
                    match e {
                        AttachError::AddressTaken if skip.len() < 64 => {
                            skip.insert(slot);
                        }
                        AttachError::AddressTaken => return Err(io_step("network", "no free address")),
                        AttachError::Io(e) => return Err(io_step("network", e)),
                    }
                }
            }
        }
    }

    async fn attached(&self, id: &str, slot: u32) -> Result<(), RuntimeError> {
        let (enforce, bandwidth) = {
            let mut st = self.lock();
            let e = st.by_id.entry(id.to_string()).or_default();
            e.slot = Some(slot);
            (!e.policy.is_open(), e.policy.bandwidth)
        };
        self.persist(id);
        if enforce {
            self.write_filter().await?;
        }
        if bandwidth.is_limited() {
            self.shape(id, slot, &bandwidth).await?;
        }
        Ok(())
    }

    /// Re-attaches to the link of a sandbox of an earlier daemon run (found at start-up, see
    /// `load_state`), or connects it anew.
    pub async fn adopt(&self, id: &str, pid: i32) -> Result<(), RuntimeError> {
        let known = self.lock().by_id.get(id).and_then(|e| e.slot).is_some();
        if known {
            self.persist(id);
            return Ok(());
        }
        self.attach(id, pid).await
    }

    /// Disconnects a sandbox whose processes are gone; `forget` also drops its policy (destroy),
    /// else it is kept for the next boot (filesystem-only pause).
    ///
    /// The host link is left to the kernel, which removes it with the sandbox's network
    /// namespace. Deleting it here would cost the next create: unregistering a veth pair holds
    /// the `rtnl` lock for milliseconds, and the namespace clean-up does the same work once more
    /// for the namespace's own devices (batched over namespaces, in a kernel worker). The slot
    /// is reused only once its link is gone; a link still there after [`DRAIN_DEADLINE`] is
    /// deleted explicitly.
    pub async fn detach(self: &Arc<Self>, id: &str, forget: bool) {
        let since = std::time::Instant::now();
        let (slot, enforced, shaped) = {
            let mut st = self.lock();
            let (slot, enforced, shaped) = match st.by_id.get_mut(id) {
                Some(e) => (
                    e.slot.take(),
                    !e.policy.is_open(),
                    e.policy.bandwidth.egress_kbit.is_some(),
                ),
                None => (None, false, false),
            };
            if forget {
                st.by_id.remove(id);
                if let Some(p) = self.proxy.get() {
                    p.forget(id);
                }
            }
            if let Some(slot) = slot
                && st.by_slot.get(&slot).map(String::as_str) == Some(id)
            {
                st.by_slot.remove(&slot);
                st.draining.insert(slot, since);
            }
            (slot, enforced, shaped)
        };
        let _ = std::fs::remove_file(self.cfg.state_dir.join(id));
        let Some(slot) = slot else { return };
        if enforced && let Err(e) = self.write_filter().await {
            tracing::error!(sandbox = %id, "packet filter after detach: {e}");
        }
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            if shaped {
                crate::shaping::remove_shaper(&this.cfg.plan.shaper_iface(slot)).await;
            }
            tokio::time::sleep(DRAIN_DEADLINE).await;
            let name = this.cfg.plan.iface(slot);
            // still this detach's entry (not released and taken by another sandbox since)
            if this.lock().draining.get(&slot) != Some(&since) {
                return;
            }
            if link_exists(&name) {
                tracing::warn!(sandbox = %id, link = %name, "the host link outlived its sandbox; deleting it");
                if let Err(e) = link::delete(&this.host, &name).await {
                    tracing::warn!(sandbox = %id, "removing host link: {e}");
                    return;
                }
            }
            let mut st = this.lock();
            if st.draining.get(&slot) == Some(&since) {
                st.draining.remove(&slot);
            }
        });
    }

    /// At daemon stop: with no sandbox connected, the packet filter table goes too (a stopped
    /// daemon with running sandboxes keeps it, they still need it). Blocking.
    pub fn shutdown(&self) {
        if !self.lock().by_slot.is_empty() {
            return;
        }
        let script = filter::delete_script(&self.cfg.plan);
        let r = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("piped").write_all(script.as_bytes())?;
                c.wait()
            });
        if !r.is_ok_and(|s| s.success()) {
            tracing::warn!("removing the packet filter table failed");
        }
    }

    /// The address of a connected sandbox.
    pub fn address_of(&self, id: &str) -> Option<Ipv4Addr> {
        let slot = self.lock().by_id.get(id)?.slot?;
        Some(self.cfg.plan.address(slot))
    }

    /// Traffic counters of a connected sandbox.
    /// Sets where header rules' `${e2b.secrets.<name>}` placeholders get their values (the
    /// daemon's secrets; set once, after the daemon exists).
    pub fn set_secret_source(&self, source: Arc<dyn crate::header_rules::SecretSource>) {
        if let Some(p) = self.proxy.get() {
            p.set_secret_source(source);
        }
    }

    /// Egress refused by sandbox `id`'s policy so far: packets refused by the packet filter
    /// (its table's counters, read at most once a second for all sandboxes) and connections
    /// refused by the egress proxy.
    pub async fn denied(&self, id: &str) -> (u64, u64) {
        let slot = self.lock().by_id.get(id).and_then(|e| e.slot);
        let fresh = {
            let d = self.denied.lock().unwrap_or_else(|p| p.into_inner());
            d.0.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        };
        if !fresh {
            let counts = filter::denied_counts(&self.cfg.plan).await.unwrap_or_default();
            *self.denied.lock().unwrap_or_else(|p| p.into_inner()) =
                (Some(std::time::Instant::now()), counts.into_iter().collect());
        }
        let packets = slot
            .and_then(|s| {
                self.denied
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .1
                    .get(&s)
                    .copied()
            })
            .unwrap_or(0);
        let connections = self.proxy.get().map(|p| p.refused_count(id)).unwrap_or(0);
        (packets, connections)
    }

    /// The traffic counters of sandbox `id`'s link (`None` without a link).
    pub fn traffic(&self, id: &str) -> Option<Traffic> {
        let slot = self.lock().by_id.get(id)?.slot?;
        link::traffic(&self.cfg.plan.iface(slot)).ok()
    }
}

/// [`PolicyLookup`] over a [`Network`] (weak: the resolver must not keep it alive).
struct Lookup(std::sync::Weak<Network>);

impl PolicyLookup for Lookup {
    fn by_source(&self, addr: Ipv4Addr) -> Option<SandboxPolicy> {
        self.0.upgrade()?.by_source(addr)
    }
}

impl PolicyLookup for Network {
    fn by_source(&self, addr: Ipv4Addr) -> Option<SandboxPolicy> {
        let slot = self.cfg.plan.slot_of(addr)?;
        let st = self.lock();
        let id = st.by_slot.get(&slot)?;
        let e = st.by_id.get(id)?;
        (e.slot == Some(slot)).then(|| SandboxPolicy {
            sandbox_id: id.clone(),
            policy: e.policy.clone(),
        })
    }
}

/// A UDP socket and a TCP listener on the same free port of all addresses (the packet filter
/// admits only sandboxes, on the gateway address).
async fn bind_dns() -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        let port = udp.local_addr()?.port();
        match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// A backend whose sandboxes get [`Network`] links.
pub struct NetworkedBackend {
    inner: Arc<dyn SandboxBackend>,
    net: Arc<Network>,
}

impl NetworkedBackend {
    /// Networking for the sandboxes of `inner`.
    pub fn new(inner: Arc<dyn SandboxBackend>, net: Arc<Network>) -> Self {
        Self { inner, net }
    }

    async fn connect(&self, handle: SandboxHandle) -> Result<SandboxHandle, RuntimeError> {
        let t0 = std::time::Instant::now();
        let r = self.net.attach(&handle.id, handle.agent_pid).await;
        tracing::debug!(sandbox = %handle.id, us = t0.elapsed().as_micros() as u64, "network attached");
        if let Err(e) = r {
            let _ = self.inner.destroy(&handle.id).await;
            self.net.detach(&handle.id, true).await;
            return Err(e);
        }
        Ok(handle)
    }
}

#[async_trait]
impl SandboxBackend for NetworkedBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn has_template(&self, template: &str) -> bool {
        self.inner.has_template(template)
    }
    fn template_missing_reason(&self, template: &str) -> Option<String> {
        self.inner.template_missing_reason(template)
    }
    fn template_has_services(&self, template: &str) -> bool {
        self.inner.template_has_services(template)
    }
    async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let h = self.inner.create(spec).await?;
        self.connect(h).await
    }
    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let r = self.inner.destroy(id).await;
        if r.is_ok() {
            self.net.detach(id, true).await;
        }
        r
    }
    fn is_alive(&self, handle: &SandboxHandle) -> bool {
        self.inner.is_alive(handle)
    }
    async fn list_host_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        self.inner.list_host_sandboxes().await
    }
    fn shutdown(&self) {
        self.inner.shutdown();
        self.net.shutdown();
    }
    async fn stats(&self, id: &str) -> Result<SandboxStats, RuntimeError> {
        let mut st = self.inner.stats(id).await?;
        if let Some(t) = self.net.traffic(id) {
            let (denied_packets, denied_connections) = self.net.denied(id).await;
            st.network = Some(sandboxd_runtime::NetworkCounters {
                rx_bytes: t.rx_bytes,
                rx_packets: t.rx_packets,
                tx_bytes: t.tx_bytes,
                tx_packets: t.tx_packets,
                denied_packets,
                denied_connections,
            });
        }
        Ok(st)
    }
    async fn adopt(&self, id: &str, agent_pid: i32, agent_start_time: u64) -> Result<Adopted, RuntimeError> {
        let a = self.inner.adopt(id, agent_pid, agent_start_time).await?;
        if a.agent_alive
            && let Err(e) = self.net.adopt(id, agent_pid).await
        {
            tracing::error!(sandbox = %id, "re-adopting the sandbox's network: {e}");
        }
        Ok(a)
    }
    async fn freeze(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.freeze(id).await
    }
    async fn thaw(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.thaw(id).await
    }
    async fn stop_keep_files(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.stop_keep_files(id).await?;
        self.net.detach(id, false).await;
        Ok(())
    }
    async fn boot_existing(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let h = self.inner.boot_existing(spec).await?;
        if let Err(e) = self.net.attach(&h.id, h.agent_pid).await {
            let _ = self.inner.stop_keep_files(&h.id).await;
            return Err(e);
        }
        Ok(h)
    }
    async fn snapshot(
        &self,
        id: &str,
        source_template: &str,
        name: &str,
        limits: SnapshotLimits,
    ) -> Result<(), RuntimeError> {
        self.inner.snapshot(id, source_template, name, limits).await
    }
    async fn delete_snapshot_template(&self, name: &str) -> Result<bool, RuntimeError> {
        self.inner.delete_snapshot_template(name).await
    }
    async fn create_image_template(&self, name: &str, layers: &[String]) -> Result<(), RuntimeError> {
        self.inner.create_image_template(name, layers).await
    }
    async fn derive_template(
        &self,
        parent: &str,
        name: &str,
        stage: &std::path::Path,
        ancestors: &[String],
    ) -> Result<(), RuntimeError> {
        self.inner.derive_template(parent, name, stage, ancestors).await
    }
    async fn create_volume(&self, id: &str, size_mb: u64) -> Result<(), RuntimeError> {
        self.inner.create_volume(id, size_mb).await
    }
    async fn delete_volume(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.delete_volume(id).await
    }
    async fn volume_files(
        &self,
        id: &str,
    ) -> Result<sandboxd_runtime::volume_files::VolumeFiles, RuntimeError> {
        self.inner.volume_files(id).await
    }
    async fn set_egress(
        &self,
        id: &str,
        network: &serde_json::Value,
        allow_internet_access: bool,
    ) -> Result<(), RuntimeError> {
        self.net.set_policy(id, network, allow_internet_access).await
    }
    fn network_address(&self, id: &str) -> Option<Ipv4Addr> {
        self.net.address_of(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_slots_are_skipped_until_their_link_is_gone() {
        // a tag no daemon here uses: every draining link counts as gone
        let plan = AddressPlan::new("10.250.0.0/29".parse().unwrap(), "fe0d").unwrap();
        let mut st = State::default();
        let none = std::collections::BTreeSet::new();
        st.by_slot.insert(0, "a".into());
        st.draining.insert(1, std::time::Instant::now());
        assert_eq!(st.free_slot(&plan, &none), Some(2));
        assert_eq!(st.free_slot(&plan, &[2].into()), Some(3));
        st.by_slot
            .extend([(2, "b".into()), (3, "c".into()), (4, "d".into())]);
        assert_eq!(
            st.free_slot(&plan, &none),
            None,
            "5 slots in a /29, all taken or draining"
        );
        st.release_drained(&plan);
        assert!(st.draining.is_empty());
        assert_eq!(st.free_slot(&plan, &none), Some(1));
    }
}
