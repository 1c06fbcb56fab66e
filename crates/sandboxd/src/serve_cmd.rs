//! `sandboxd serve`: the daemon.
//!
//! Prints exactly four lines to stdout once it accepts work (logs go to stderr):
//! `export E2B_API_URL=http://<addr>`, `export E2B_SANDBOX_URL=http://<addr>`,
//! `export E2B_API_KEY=<key>`, `export E2B_VOLUME_API_URL=http://<addr>` (the volume content
//! API, which the SDK otherwise looks for at `https://api.<domain>`).

use anyhow::Context;
use sandboxd_runtime::SandboxBackend;
use sandboxd_server::{DaemonLimits, Server, ServerConfig, UnavailableBackend};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// File in the data dir holding the generated API key (mode 0600).
const API_KEY_FILE: &str = "api-key";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (HTTP/1.1 and h2c). Port 0 picks a free port (printed).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Data directory (default /var/lib/sandboxd as root, else $XDG_DATA_HOME/sandboxd).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Domain returned to SDKs for `get_host()` (default localhost:<port>).
    #[arg(long)]
    pub domain: Option<String>,
    /// Largest cpuCount a sandbox may get.
    #[arg(long, default_value_t = DaemonLimits::default().max_cpu)]
    pub max_cpu: u32,
    /// Largest memoryMB a sandbox may get.
    #[arg(long, default_value_t = DaemonLimits::default().max_memory_mb)]
    pub max_memory_mb: u64,
    /// Largest diskSizeMB a sandbox may get.
    #[arg(long, default_value_t = DaemonLimits::default().max_disk_mb)]
    pub max_disk_mb: u64,
    /// Longest sandbox timeout, in seconds.
    #[arg(long, default_value_t = DaemonLimits::default().max_timeout.as_secs())]
    pub max_timeout: u64,
    /// Sandboxes that may exist at once.
    #[arg(long, default_value_t = DaemonLimits::default().max_sandboxes)]
    pub max_sandboxes: usize,
    /// Largest snapshot or fork checkpoint, in MiB (0 = no limit but the sandbox's disk size
    /// and the host's free space).
    #[arg(long, default_value_t = DaemonLimits::default().max_snapshot_mb)]
    pub max_snapshot_mb: u64,
    /// Most MiB all snapshots together may take (0 = no limit but the host's free space).
    #[arg(long, default_value_t = DaemonLimits::default().max_snapshot_store_mb)]
    pub max_snapshot_store_mb: u64,
    /// Warm pool of booted, idle sandboxes of a template, TEMPLATE=MIN[:MAX[:IDLE_SECS]]
    /// (e.g. base=2:8:600; MAX defaults to MIN, IDLE_SECS to 600, 0 = never recycled).
    /// Repeatable. See docs/pool.md.
    #[arg(long = "pool", value_name = "TEMPLATE=MIN[:MAX[:IDLE_SECS]]")]
    pub pool: Vec<sandboxd_daemon::pool::PoolSpec>,
    /// Log format on stderr or in --log-file.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
    /// Log to this file instead of stderr, rotated by size (PATH.1 … PATH.N hold older logs).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Rotate --log-file once it reaches this many MiB.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_max_mb: u64,
    /// Rotated log files kept.
    #[arg(long, default_value_t = 5)]
    pub log_keep: usize,
    /// JSON config file: {"pool": [{"template": "base", "min": 2, "max": 8, "idleTimeoutSecs": 600}]}.
    /// --pool flags override its entries per template.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address range of sandboxes (each gets one address; the first is their gateway and
    /// DNS resolver). See docs/network.md.
    #[arg(long, value_name = "CIDR", default_value = sandboxd_net::plan::DEFAULT_CIDR)]
    pub sandbox_cidr: ipnet::Ipv4Net,
    /// Resolver the sandboxes' DNS queries go to (IP or IP:PORT; repeatable; default: the
    /// host's /etc/resolv.conf). A sandbox's own dnsServers take precedence.
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]", value_parser = parse_dns_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
    /// Let sandboxes reach private ranges (RFC 1918, 100.64.0.0/10, 198.18.0.0/15); never the
    /// host itself, loopback, link-local or other sandboxes.
    #[arg(long)]
    pub allow_private_egress: bool,
    /// Rate limit of what each sandbox sends, in Mbit/s, unless its create sets
    /// `network.bandwidth` (docs/network.md, "Bandwidth").
    #[arg(long, value_name = "MBPS", value_parser = parse_mbps)]
    pub default_egress_mbps: Option<f64>,
    /// Rate limit of what each sandbox receives, in Mbit/s, unless its create sets
    /// `network.bandwidth`.
    #[arg(long, value_name = "MBPS", value_parser = parse_mbps)]
    pub default_ingress_mbps: Option<f64>,
    /// Extra certificates (PEM file; repeatable) trusted, beside the host's, for the real
    /// servers of names whose HTTPS the egress proxy intercepts to apply `rules` headers.
    #[arg(long = "egress-upstream-ca", value_name = "FILE")]
    pub egress_upstream_ca: Vec<PathBuf>,
    /// Sandboxes get loopback only: no link, no egress (E2B's network settings are stored).
    #[arg(long)]
    pub no_network: bool,
    /// Serve TLS on the listener's port too (beside plain HTTP), with a certificate from a
    /// CA the daemon makes in its data dir (`sandboxd tls-ca` prints how to trust it), for
    /// `https://<port>-<id>.<domain>`. See docs/network.md, "HTTPS ingress".
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls: bool,
    /// Serve TLS with this certificate chain (PEM; a wildcard for `*.<domain>`), with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Pull images of REGISTRY from this mirror first (repeatable; like containerd's mirrors):
    /// `docker.io=http://127.0.0.1:5000`. A mirror's "not found" is final. See docs/templates.md.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL", value_parser = parse_mirror)]
    pub registry_mirror: Vec<(String, String)>,
    /// A registry (host[:port]) spoken to over plain HTTP (repeatable). Others are HTTPS only.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Docker config.json with registry credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
}

fn parse_mirror(s: &str) -> Result<(String, String), String> {
    let (registry, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected REGISTRY=URL, such as docker.io=http://127.0.0.1:5000"))?;
    if registry.is_empty() || registry.contains('/') {
        return Err(format!("{s:?}: {registry:?} is not a registry host"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{s:?}: the mirror must be an http:// or https:// URL"));
    }
    Ok((registry.to_string(), url.to_string()))
}

fn parse_mbps(s: &str) -> Result<f64, String> {
    use sandboxd_net::policy::{MAX_MBPS, MIN_MBPS};
    match s.trim().parse::<f64>() {
        Ok(v) if (MIN_MBPS..=MAX_MBPS).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: a number of Mbit/s from {MIN_MBPS} to {MAX_MBPS}")),
    }
}

fn parse_dns_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an IP address or IP:PORT"))
}

/// Where the ingress CA lives in a data dir.
pub const INGRESS_CA_DIR: &str = "ingress-ca";

/// The listener's TLS config: the user's certificate, or one for the domain (and `localhost`,
/// its subdomains and the listen address) from the data dir's ingress CA.
fn ingress_tls(args: &ServeArgs, data_dir: &Path) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    use sandboxd_net::local_ca;
    let key = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            local_ca::certified_key_from_files(cert, key).context("--tls-cert/--tls-key")?
        }
        _ if args.tls => {
            let ca = local_ca::LocalCa::load_or_create(&data_dir.join(INGRESS_CA_DIR), "ingress")
                .context("the ingress CA")?;
            let default = sandboxd_server::config::TLS_DEFAULT_DOMAIN;
            let mut names: Vec<String> = vec![
                default.into(),
                format!("*.{default}"),
                "localhost".into(),
                "*.localhost".into(),
            ];
            if let Some(d) = &args.domain {
                let host = d
                    .rsplit_once(':')
                    .map_or(d.as_str(), |(h, _)| h)
                    .to_ascii_lowercase();
                if !host.is_empty() && !names.contains(&host) && host != "localhost" {
                    names.push(format!("*.{host}"));
                    names.push(host);
                }
            }
            names.extend(["127.0.0.1".to_string(), "::1".to_string()]);
            if !args.listen.ip().is_unspecified() && !args.listen.ip().is_loopback() {
                names.push(args.listen.ip().to_string());
            }
            tracing::info!(ca = %ca.cert_path().display(), ?names, "TLS with a certificate of the ingress CA (`sandboxd tls-ca` shows how to trust it)");
            ca.mint(&names, 397)
                .context("minting the listener's certificate")?
        }
        _ => return Ok(None),
    };
    let config = local_ca::server_config(key, vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
    Ok(Some(Arc::new(config)))
}

pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/sandboxd"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("sandboxd"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_DATA_HOME nor HOME is set: pass --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/sandboxd"))
}

/// Whether a key passes the SDK's client-side check (`\Ae2b_[0-9a-f]+\Z`).
fn sdk_accepts_key(key: &str) -> bool {
    key.strip_prefix("e2b_").is_some_and(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The API key: `SANDBOXD_API_KEY`, else the one stored in the data dir, else a new one
/// (stored with mode 0600).
fn api_key(data_dir: &Path, from_env: Option<String>) -> anyhow::Result<String> {
    if let Some(k) = from_env
        && !k.trim().is_empty()
    {
        let k = k.trim().to_string();
        if !sdk_accepts_key(&k) {
            tracing::warn!(
                "SANDBOXD_API_KEY does not match e2b_<hex>: E2B SDKs reject it unless E2B_VALIDATE_API_KEY=false"
            );
        }
        return Ok(k);
    }
    let path = data_dir.join(API_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => return Ok(k.trim().to_string()),
        Ok(_) => anyhow::bail!("{} is empty: delete it to generate a new key", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let key = sandboxd_server::ids::new_api_key();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(format!("{key}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!("generated a new API key in {}", path.display());
    Ok(key)
}

/// The cgroup root of a daemon: `sandboxd` for the default data dir, else `sandboxd-<hash of
/// the data dir>`, so that daemons on different data dirs (tests, several users) never see,
/// or clean up, each other's sandboxes. The hash (FNV-1a) is stable across versions.
fn cgroup_root_for(data_dir: &Path) -> String {
    if data_dir == Path::new("/var/lib/sandboxd") {
        return "sandboxd".into();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("sandboxd-{:012x}", h & 0xffff_ffff_ffff)
}

/// The namespace backend, or (when it cannot run here, for example without root) a backend
/// that answers every create with 501 and the reason.
fn backend(data_dir: &Path, egress_ca_pem: Option<String>) -> anyhow::Result<Arc<dyn SandboxBackend>> {
    let exe = std::env::current_exe().context("locating the sandboxd executable")?;
    let mut cfg = sandboxd_runtime::namespace::NamespaceConfig::new(data_dir, exe);
    cfg.cgroup_root = cgroup_root_for(data_dir);
    cfg.egress_ca_pem = egress_ca_pem;
    match sandboxd_runtime::namespace::NamespaceBackend::new(cfg) {
        Ok(b) => Ok(Arc::new(b)),
        Err(sandboxd_runtime::RuntimeError::Unsupported(reason)) => {
            tracing::warn!("sandbox backend unavailable: {reason}; serving the API without sandboxes");
            Ok(Arc::new(UnavailableBackend::new(reason)))
        }
        Err(e) => Err(e).context("starting the namespace backend"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    crate::logging::init(&crate::logging::LogOptions {
        format: args.log_format,
        file: args.log_file.clone(),
        max_bytes: args.log_max_mb.saturating_mul(1024 * 1024),
        keep: args.log_keep,
    })?;
    let data_dir = match args.data_dir.clone() {
        Some(d) => d,
        None => default_data_dir()?,
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", data_dir.display()))?;
    // Before anything touches the data dir (the backend clears its pool slots and trash): a
    // second daemon on it, or a port in use, stops here.
    let claim = Server::claim(&data_dir, args.listen)?;
    let key = api_key(&data_dir, std::env::var("SANDBOXD_API_KEY").ok())?;
    if args.max_timeout == 0 || args.max_sandboxes == 0 || args.max_cpu == 0 {
        anyhow::bail!("--max-timeout, --max-sandboxes and --max-cpu must be greater than 0");
    }
    let mut config = ServerConfig::new(args.listen, data_dir.clone(), key.clone());
    config.tls = ingress_tls(&args, &data_dir)?;
    let kbit = |m: Option<f64>| m.map(|m| (m * 1000.0).round() as u64);
    config.template_defaults.egress_kbit = kbit(args.default_egress_mbps);
    config.template_defaults.ingress_kbit = kbit(args.default_ingress_mbps);
    config.domain = args.domain;
    config.limits = DaemonLimits {
        max_cpu: args.max_cpu,
        max_memory_mb: args.max_memory_mb,
        max_disk_mb: args.max_disk_mb,
        max_timeout: Duration::from_secs(args.max_timeout),
        max_sandboxes: args.max_sandboxes,
        max_snapshot_mb: args.max_snapshot_mb,
        max_snapshot_store_mb: args.max_snapshot_store_mb,
    };
    let file_pools = match &args.config {
        Some(path) => {
            sandboxd_daemon::pool::ConfigFile::load(path)
                .map_err(anyhow::Error::msg)?
                .pool
        }
        None => Vec::new(),
    };
    config.pool = sandboxd_daemon::pool::merge_specs(file_pools, args.pool);
    for (registry, url) in args.registry_mirror {
        config.registry.mirrors.entry(registry).or_default().push(url);
    }
    config.registry.insecure = args.insecure_registry;
    config.registry.docker_config = args.docker_config;
    if !args.listen.ip().is_loopback() && config.tls.is_none() {
        tracing::warn!(
            "listening on {} (not loopback) without TLS: the API key and sandbox traffic travel in clear text",
            args.listen
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        // the CA of HTTPS header rules: sandboxes trust it through their templates (also
        // with --no-network, so switching networking off and on keeps the same templates)
        let ca = Arc::new(
            sandboxd_net::local_ca::LocalCa::load_or_create(&data_dir.join("egress-ca"), "egress")
                .context("the egress CA")?,
        );
        let ca_pem = Some(ca.cert_pem().to_string());
        let interception = if args.no_network {
            None
        } else {
            let upstream = sandboxd_net::interception::UpstreamTls::new(&args.egress_upstream_ca)
                .context("--egress-upstream-ca")?;
            Some(sandboxd_net::interception::Interception { ca, upstream })
        };
        let dir = data_dir.clone();
        let backend = tokio::task::spawn_blocking(move || backend(&dir, ca_pem))
            .await
            .context("backend start-up task")??;
        // from here on, a failed start stops the backend's helpers and removes its prepared
        // slots (their disks are mounted) before the process exits
        let raw = backend.clone();
        let started = async {
            let mut network = None;
            let backend = if args.no_network || backend.name() != "namespace" {
                backend
            } else {
                let plan = sandboxd_net::AddressPlan::new(
                    args.sandbox_cidr,
                    &sandboxd_net::AddressPlan::tag_for(&data_dir.to_string_lossy()),
                )
                .map_err(anyhow::Error::msg)?;
                let net = sandboxd_net::Network::start(sandboxd_net::NetworkConfig {
                    plan,
                    dns_upstreams: args.dns_upstream.clone(),
                    allow_private: args.allow_private_egress,
                    state_dir: data_dir.join("network"),
                    interception,
                })
                .await
                .context(
                    "starting sandbox networking (needs nftables; --no-network for loopback-only sandboxes)",
                )?;
                network = Some(net.clone());
                Arc::new(sandboxd_net::NetworkedBackend::new(backend, net)) as Arc<dyn SandboxBackend>
            };
            tracing::info!(backend = backend.name(), data_dir = %data_dir.display(), "starting");
            sandboxd_daemon::pool::check_templates(backend.as_ref(), &config.pool)
                .map_err(anyhow::Error::msg)?;
            let server = Server::bind_claimed(config, backend.clone(), claim).await?;
            if let Some(net) = &network {
                net.set_secret_source(Arc::new(DaemonSecrets(server.daemon().clone())));
            }
            anyhow::Ok((server, backend))
        };
        let (server, backend) = match started.await {
            Ok(x) => x,
            Err(e) => {
                tokio::task::spawn_blocking(move || raw.shutdown()).await?;
                return Err(e);
            }
        };
        let addr = server.local_addr();
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "export E2B_API_URL=http://{addr}")?;
            writeln!(out, "export E2B_SANDBOX_URL=http://{addr}")?;
            writeln!(out, "export E2B_API_KEY={key}")?;
            writeln!(out, "export E2B_VOLUME_API_URL=http://{addr}")?;
            out.flush()?;
        }
        tracing::info!(%addr, domain = server.domain(), "sandboxd is serving");
        server.run(shutdown_signal()).await?;
        // Sandboxes keep running (the next start re-adopts them); only the backend's own
        // helpers and prepared slots go.
        tokio::task::spawn_blocking(move || backend.shutdown()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// The daemon's secrets, for the egress proxy's header rules.
struct DaemonSecrets(Arc<sandboxd_daemon::Daemon>);

#[async_trait::async_trait]
impl sandboxd_net::header_rules::SecretSource for DaemonSecrets {
    async fn secret(&self, name: &str) -> Option<String> {
        self.0.secret_value(name).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_roots_differ_per_data_dir() {
        assert_eq!(cgroup_root_for(Path::new("/var/lib/sandboxd")), "sandboxd");
        let a = cgroup_root_for(Path::new("/tmp/a"));
        assert_eq!(a, cgroup_root_for(Path::new("/tmp/a")));
        assert_ne!(a, cgroup_root_for(Path::new("/tmp/b")));
        assert!(
            a.starts_with("sandboxd-") && a.len() == "sandboxd-".len() + 12,
            "{a}"
        );
    }

    #[test]
    fn key_format_check() {
        assert!(sdk_accepts_key("e2b_0123abcd"));
        assert!(!sdk_accepts_key("e2b_"));
        assert!(!sdk_accepts_key("e2b_ABCD"));
        assert!(!sdk_accepts_key("key"));
    }

    #[test]
    fn generated_key_is_stored_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k1 = api_key(dir.path(), None).unwrap();
        assert!(sdk_accepts_key(&k1) && k1.len() == 44, "{k1}");
        let meta = std::fs::metadata(dir.path().join(API_KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(api_key(dir.path(), None).unwrap(), k1);
        assert_eq!(api_key(dir.path(), Some(" e2b_ab ".into())).unwrap(), "e2b_ab");
        assert_eq!(api_key(dir.path(), Some(String::new())).unwrap(), k1);
    }
}
