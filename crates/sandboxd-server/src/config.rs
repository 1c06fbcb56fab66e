//! The server's configuration (listener, API key, connection limits) and the domain's.

pub use sandboxd_daemon::{DaemonConfig, DaemonLimits, TemplateDefaults};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The default domain with TLS (no `--domain`): its wildcard has two labels, which every TLS
/// client accepts, and its names resolve to loopback wherever `*.localhost` does.
pub const TLS_DEFAULT_DOMAIN: &str = "sandbox.localhost";

/// Everything the [`crate::Server`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the one listener (HTTP/1.1 and h2c, and TLS when [`Self::tls`] is set).
    pub listen: SocketAddr,
    /// Data directory: registry, API key, sandbox dirs.
    pub data_dir: PathBuf,
    /// The API key every control-plane call must carry in `X-API-Key`.
    pub api_key: String,
    /// Domain returned to SDKs (`sandbox.get_host(port)` is `<port>-<id>.<domain>`);
    /// `None` means `localhost:<bound port>`, or [`TLS_DEFAULT_DOMAIN`]`:<bound port>` with TLS.
    pub domain: Option<String>,
    pub limits: DaemonLimits,
    pub template_defaults: TemplateDefaults,
    /// Idle timeout of client keep-alive connections (longer than the SDK's 300 s pool).
    pub keepalive_idle: Duration,
    /// How long a new connection may take to send its first complete request head.
    pub first_request_timeout: Duration,
    /// Client connections served at once (`None`: derived from `RLIMIT_NOFILE`, `fd_budget.rs`).
    pub max_connections: Option<usize>,
    /// Largest control-plane request body.
    pub max_body_bytes: usize,
    /// Warm pools of booted, idle sandboxes per template (`sandboxd-daemon` `pool/`, `docs/pool.md`).
    pub pool: Vec<sandboxd_daemon::PoolSpec>,
    /// Where image pulls go: mirrors, plain-HTTP registries, credentials (`docs/templates.md`).
    pub registry: sandboxd_image::RegistryConfig,
    /// TLS on the listener's port beside plain HTTP (`docs/network.md`, "HTTPS ingress").
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl ServerConfig {
    /// A config with defaults for everything but the listen address, data dir and API key.
    pub fn new(listen: SocketAddr, data_dir: PathBuf, api_key: String) -> Self {
        Self {
            listen,
            data_dir,
            api_key,
            domain: None,
            limits: DaemonLimits::default(),
            template_defaults: TemplateDefaults::default(),
            keepalive_idle: Duration::from_secs(640),
            first_request_timeout: Duration::from_secs(30),
            max_connections: None,
            max_body_bytes: 1 << 20,
            pool: Vec::new(),
            registry: sandboxd_image::RegistryConfig::default(),
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The part of the configuration the domain ([`sandboxd_daemon::Daemon`]) uses.
    pub fn daemon_config(&self) -> DaemonConfig {
        DaemonConfig {
            limits: self.limits.clone(),
            template_defaults: self.template_defaults,
            pool: self.pool.clone(),
            builds: sandboxd_daemon::BuildsConfig {
                data_dir: self.data_dir.clone(),
                registry: self.registry.clone(),
            },
        }
    }
}
