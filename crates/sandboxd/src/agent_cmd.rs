//! `sandboxd agent`: the envd-compatible agent.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Take over the inherited boot file descriptors (set by the runtime; PID 1 mode).
    #[arg(long)]
    boot: bool,
    /// Development mode: listen on this TCP address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Development mode: path to a JSON AgentConfig.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cfg = match &args.config {
        Some(p) => {
            serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                .context("parsing agent config")?
        }
        None => sandboxd_protocol::agent::AgentConfig::new("dev", "base"),
    };
    let addr = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], sandboxd_protocol::ENVD_PORT)));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let state = sandboxd_envd::AgentState::new(cfg);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, sandboxd_envd::router(state)).await?;
        Ok(())
    })
}
