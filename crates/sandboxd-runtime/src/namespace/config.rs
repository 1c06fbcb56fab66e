//! How to build a [`NamespaceBackend`](super::NamespaceBackend): data dir, executable, id map,
//! cgroup root, host paths, timeouts and the slot pool size.

use super::IdMap;
use std::path::PathBuf;
use std::time::Duration;

/// How to build a [`NamespaceBackend`].
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// Data directory (`<data>/sandboxes`, `<data>/templates`, ...). Must be on a filesystem
    /// with user xattrs (ext4, xfs), since overlay upper dirs live there.
    pub data_dir: PathBuf,
    /// The sandboxd executable: runs the spawn helper and, inside sandboxes, the agent.
    pub exe: PathBuf,
    /// Host uid/gid range of sandboxes (default: 0..65535 inside = 100000..165535 on the host).
    pub idmap: IdMap,
    /// Name of sandboxd's cgroup in each hierarchy (default `sandboxd`).
    pub cgroup_root: String,
    /// The host `/usr` exposed (idmapped, read-only, under an overlay) as the sandbox's `/usr`.
    pub host_usr: PathBuf,
    /// The host root whose `/etc` seeds the generated `base` template.
    pub host_root: PathBuf,
    /// How long `create` waits for the agent to answer `GET /health`.
    pub ready_timeout: Duration,
    /// Mount a read-only `/sys`.
    pub mount_sys: bool,
    /// Sandbox directories (and, on cgroup v1, cgroups) prepared ahead of time by a
    /// background thread, so `create` only renames them. 0 disables the pool.
    pub pool_size: usize,
    /// The egress proxy's CA certificate (PEM), added to every template's trust store
    /// (`/etc/sandboxd/egress-ca.pem` and the system bundles), so sandboxes trust the
    /// certificates of HTTPS the proxy intercepts for header rules.
    pub egress_ca_pem: Option<String>,
}

impl NamespaceConfig {
    /// Defaults for everything but the data dir and the executable.
    pub fn new(data_dir: impl Into<PathBuf>, exe: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            exe: exe.into(),
            idmap: IdMap::default(),
            cgroup_root: "sandboxd".into(),
            host_usr: PathBuf::from("/usr"),
            host_root: PathBuf::from("/"),
            ready_timeout: Duration::from_secs(10),
            mount_sys: true,
            pool_size: 4,
            egress_ca_pem: None,
        }
    }
}
