//! `sandboxd agent`: the envd-compatible agent.
//!
//! `--boot` is PID 1 of a sandbox (started by the runtime): the config comes from fd 3, the
//! public API socket is fd 4, the control socket fd 5 (`sandboxd_protocol::agent::boot_fds`),
//! and the agent also listens on `127.0.0.1:49983` inside the sandbox. Without `--boot` it is
//! the development mode: `--listen ADDR --config FILE` on the host, for local testing.

use anyhow::Context;
use axum::serve::ListenerExt;
use sandboxd_envd::pid1;
use sandboxd_protocol::agent::{AgentConfig, boot_fds};
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Take over the inherited boot file descriptors (set by the runtime; PID 1 mode).
    #[arg(long, conflicts_with_all = ["listen", "config"])]
    boot: bool,
    /// Development mode: listen on this TCP address (default 127.0.0.1:49983).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Development mode: path to a JSON AgentConfig (default: sandbox "dev", user `user`).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    // PID 1 of a sandbox: out of reach of the workload (sandboxd_envd::workload) before it
    // reads its config (which holds the envd access token).
    let writer = if args.boot {
        sandboxd_envd::workload::make_undumpable().context("PR_SET_DUMPABLE")?;
        BoxMakeWriter::new(|| pid1::BoundedStderr)
    } else {
        BoxMakeWriter::new(std::io::stderr)
    };
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SANDBOXD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Before any thread or child exists: this agent owns every child it has.
    pid1::init_reaper(pid1::ReapMode::All);
    if args.boot { boot() } else { dev(args) }
}

/// A small runtime: an idle agent should cost little memory.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .enable_all()
        .build()?)
}

fn boot() -> anyhow::Result<()> {
    let cfg = pid1::read_config_fd(boot_fds::CONFIG)?;
    if let Some(fd) = cfg.workload_userns_fd {
        sandboxd_envd::workload::init(fd).with_context(|| format!("workload user namespace fd {fd}"))?;
    }
    // before any process starts: never run one outside the policy the sandbox was made with
    match (&cfg.allowed_commands, &cfg.command_policy_fds) {
        (Some(asked), Some(fds)) => {
            sandboxd_envd::command_policy::install(asked, fds)
                .context("the command policy (allowedCommands)")?;
            tracing::info!(allowed = ?asked, "command policy in force");
        }
        (Some(_), None) => anyhow::bail!("allowedCommands without the runtime's policy fds"),
        _ => {}
    }
    for fd in cfg.work_cgroup_fds.iter().chain(&cfg.work_counter_fds.fds()) {
        pid1::set_cloexec(*fd).with_context(|| format!("work cgroup fd {fd}"))?;
    }
    let api = pid1::take_unix_listener(boot_fds::API)?;
    let control = pid1::take_unix_listener(boot_fds::CONTROL)?;
    if let Err(e) = pid1::bring_up_loopback() {
        tracing::warn!("{e}");
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let state = sandboxd_envd::AgentState::new(cfg);
        let app = sandboxd_envd::router(state.clone());
        let api = tokio::net::UnixListener::from_std(api)?;
        let control = tokio::net::UnixListener::from_std(control)?;
        tokio::spawn(sandboxd_envd::tunnel::serve(
            api,
            app.clone(),
            state.clone(),
            true,
        ));
        let local = SocketAddr::from(([127, 0, 0, 1], sandboxd_protocol::ENVD_PORT));
        match tokio::net::TcpListener::bind(local).await {
            Ok(l) => {
                tokio::spawn(sandboxd_envd::tunnel::serve(
                    l.tap_io(nodelay),
                    app,
                    state.clone(),
                    false,
                ));
            }
            Err(e) => tracing::warn!("cannot listen on {local}: {e}"),
        }
        // supervised services of the template (the code interpreter), restarted when they exit
        sandboxd_envd::supervisor::start(&state.config());
        tracing::info!(sandbox_id = %state.config().sandbox_id, "agent ready");
        let control_app = sandboxd_envd::control::router(state.clone());
        sandboxd_envd::tunnel::serve(control, control_app, state, false).await;
        Ok(())
    })
}

fn dev(args: AgentArgs) -> anyhow::Result<()> {
    let cfg: AgentConfig = match &args.config {
        Some(p) => {
            serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                .context("parsing agent config")?
        }
        None => AgentConfig::new("dev", "base"),
    };
    let addr = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], sandboxd_protocol::ENVD_PORT)));
    let rt = runtime()?;
    rt.block_on(async move {
        let state = sandboxd_envd::AgentState::new(cfg);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(%addr, "agent listening (development mode)");
        sandboxd_envd::tunnel::serve(
            listener.tap_io(nodelay),
            sandboxd_envd::router(state.clone()),
            state,
            true,
        )
        .await;
        Ok(())
    })
}

/// Stream messages are small writes: without TCP_NODELAY, Nagle plus delayed ACKs add ~40 ms.
fn nodelay(s: &mut tokio::net::TcpStream) {
    let _ = s.set_nodelay(true);
}
