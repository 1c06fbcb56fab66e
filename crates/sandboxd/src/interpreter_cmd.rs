//! `sandboxd interpreter`: the code-interpreter server (port 49999), run inside a sandbox of a
//! code-interpreter template as a child of the agent, which restarts it when it exits.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InterpreterArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:49999", env = "SANDBOXD_INTERPRETER_LISTEN")]
    pub listen: SocketAddr,
    /// Interpreter layer: kernels' Python packages (python/), deno (bin/deno), kernelspecs (kernels/).
    #[arg(long, default_value = sandboxd_interpreter::DEFAULT_LAYER, env = "SANDBOXD_INTERPRETER_DIR")]
    pub layer: PathBuf,
    /// Kernel connection files and ipc sockets (default /run/sandboxd-interpreter as root).
    #[arg(long, env = "SANDBOXD_INTERPRETER_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// User the kernels run as when this server runs as root (a name or a uid). Root by
    /// default, like the Jupyter server of E2B's code-interpreter template.
    #[arg(long, default_value = "root", env = "SANDBOXD_INTERPRETER_USER")]
    pub user: String,
    /// envd base URL for the sandbox-global env vars (GET /envs).
    #[arg(
        long,
        default_value = "http://localhost:49983",
        env = "SANDBOXD_INTERPRETER_ENVD_URL"
    )]
    pub envd_url: String,
    /// Do not fetch global env vars from envd (development on the host).
    #[arg(long, env = "SANDBOXD_INTERPRETER_NO_ENVD")]
    pub no_envd: bool,
    /// envd access token for /envs when a request brings none.
    #[arg(long, env = "SANDBOXD_ENVD_ACCESS_TOKEN", hide_env_values = true)]
    pub access_token: Option<String>,
    /// Working directory of contexts that do not name one.
    #[arg(long, default_value = "/home/user")]
    pub default_cwd: String,
    /// Extra Jupyter kernelspec directory (searched first for R and Java kernels).
    #[arg(long)]
    pub kernelspec_dir: Vec<PathBuf>,
}

pub fn run(args: InterpreterArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zeromq=error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let config = sandboxd_interpreter::Config {
        listen: args.listen,
        layer: args.layer,
        runtime_dir: args.runtime_dir,
        user: args.user,
        envd_url: if args.no_envd { None } else { Some(args.envd_url) },
        access_token: args.access_token,
        default_cwd: args.default_cwd,
        kernelspec_dirs: args.kernelspec_dir,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        sandboxd_interpreter::serve(config, shutdown).await
    })?;
    Ok(())
}
