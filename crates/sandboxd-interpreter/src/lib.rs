//! The code-interpreter server of sandboxd (E2B's port-49999 API, `code-interpreter.md`).
//!
//! It runs inside a sandbox as `sandboxd interpreter`, a child process the agent supervises.
//! Each context is one Jupyter kernel that this server spawns itself (as root, like upstream's
//! Jupyter server, unless configured otherwise) and
//! talks to over ZeroMQ (ipc:// where the kernel supports it, loopback TCP for Deno and IJava).

pub mod context;
pub mod envs;
pub mod error;
pub mod kernel;
pub mod language;
pub mod output;
pub mod server;
pub mod spawn;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};

pub use error::Error;

/// The IPython extension loaded into Python kernels (formatters for e2b/data, e2b/chart, JSON).
pub const IPYTHON_EXTENSION: &str = include_str!("sandboxd_ipython.py");

/// Default interpreter layer (set-up installs it; the template mounts it read-only).
pub const DEFAULT_LAYER: &str = "/opt/sandboxd/interpreter";

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (`0.0.0.0:49999` in a sandbox).
    pub listen: SocketAddr,
    /// Interpreter layer directory.
    pub layer: PathBuf,
    /// Where kernel connection files and ipc sockets go; `None` picks one.
    pub runtime_dir: Option<PathBuf>,
    /// User kernels run as when the server runs as root (`user`, or a uid).
    pub user: String,
    /// envd base URL for `GET /envs`; `None` skips global env vars.
    pub envd_url: Option<String>,
    /// envd access token used when a request carries none.
    pub access_token: Option<String>,
    /// Working directory of default contexts (`/home/user`).
    pub default_cwd: String,
    /// Extra Jupyter kernelspec directories (R, Java), searched first.
    pub kernelspec_dirs: Vec<PathBuf>,
}

/// Runs the server until `shutdown` resolves; then stops every kernel.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let is_root = nix::unistd::geteuid().is_root();
    let user = if is_root {
        Some(spawn::User::resolve(&config.user)?)
    } else {
        None
    };
    let runtime_dir = match &config.runtime_dir {
        Some(d) => d.clone(),
        None => default_runtime_dir(is_root),
    };
    prepare_runtime_dir(&runtime_dir)?;
    let ext_dir = runtime_dir.join("python");
    spawn::write_extension(&ext_dir)?;

    let mut kernelspec_dirs = config.kernelspec_dirs.clone();
    kernelspec_dirs.push(config.layer.join("kernels"));
    kernelspec_dirs.push(PathBuf::from("/usr/share/jupyter/kernels"));
    kernelspec_dirs.push(PathBuf::from("/usr/local/share/jupyter/kernels"));
    let launcher = spawn::Launcher {
        layer: config.layer.clone(),
        ext_dir,
        user: user.clone(),
        kernelspec_dirs,
    };
    let state = Arc::new(server::AppState {
        registry: context::Registry::default(),
        kernels: context::Kernels {
            launcher,
            runtime_dir: runtime_dir.clone(),
        },
        envs: envs::EnvSource::new(config.envd_url.clone(), config.access_token.clone()),
        default_cwd: config.default_cwd.clone(),
    });

    // The two default contexts exist from the start. Python's kernel starts now (in the
    // background: /health answers at once); JavaScript's on first use.
    let py = state
        .registry
        .create(language::Language::Python, config.default_cwd.clone());
    state.registry.set_default(&py).await;
    let js = state
        .registry
        .create(language::Language::Javascript, config.default_cwd.clone());
    state.registry.set_default(&js).await;
    {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = py.kernel(&state.kernels).await {
                warn!("default python kernel: {e}");
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    info!(
        listen = %config.listen,
        user = ?user.as_ref().map(|u| &u.name),
        runtime = %runtime_dir.display(),
        layer = %config.layer.display(),
        "code interpreter listening"
    );
    let app = server::router(state.clone());
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    // Each kernel removes its own directory; the rest stays for the next run (which cleans up
    // at start), so that an instance shutting down never deletes files of its successor.
    let contexts = state.registry.list();
    futures::future::join_all(contexts.iter().map(|ctx| ctx.stop())).await;
    result.map_err(Error::Io)
}

fn default_runtime_dir(is_root: bool) -> PathBuf {
    if is_root {
        let run = PathBuf::from("/run/sandboxd-interpreter");
        if std::fs::create_dir_all(&run).is_ok() {
            return run;
        }
    }
    let uid = nix::unistd::geteuid().as_raw();
    std::env::temp_dir().join(format!("sandboxd-interpreter-{uid}"))
}

fn prepare_runtime_dir(dir: &std::path::Path) -> Result<(), Error> {
    // Leftovers of an earlier run (its kernels died with it).
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    std::fs::create_dir_all(dir)?;
    // Kernels (another uid) must reach their own 0700 dirs inside.
    set_mode(dir, 0o711)?;
    Ok(())
}

pub(crate) fn set_mode(p: &std::path::Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
