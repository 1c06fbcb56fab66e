//! `sandboxd`: one binary, several roles. `serve` is the daemon; `agent` runs inside sandboxes
//! as PID 1; `__spawn-helper` is the runtime's single-threaded spawn helper (never run by hand);
//! `run`, `exec`, `cp`, `ls` and `kill` are clients of a running daemon (`docs/cli.md`).

mod agent_cmd;
mod bench_cmd;
mod interpreter_cmd;
mod logging;
mod sandbox_cmds;
mod serve_cmd;
mod tls_ca_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sandboxd",
    version,
    about = "Self-hosted E2B-compatible sandbox server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: control plane, router and sandbox proxy.
    Serve(serve_cmd::ServeArgs),
    /// Run the in-sandbox agent (envd API). Started by the runtime; `--listen` for development.
    Agent(agent_cmd::AgentArgs),
    /// Benchmark a sandboxd daemon it starts itself (create, exec, files, density, baselines).
    Bench(bench_cmd::BenchArgs),
    /// Run the code-interpreter server (port 49999) inside a sandbox; supervised by the agent.
    Interpreter(interpreter_cmd::InterpreterArgs),
    /// Run a command in a new sandbox (killed afterwards), exiting with its exit code.
    Run(sandbox_cmds::RunArgs),
    /// Run a command in a running sandbox, exiting with its exit code.
    Exec(sandbox_cmds::ExecArgs),
    /// Copy a file into or out of a sandbox (`<sandbox>:<path>` on one side).
    Cp(sandbox_cmds::CpArgs),
    /// List the running and paused sandboxes.
    Ls,
    /// Kill sandboxes.
    Kill(sandbox_cmds::KillArgs),
    /// Print where the CA of `serve --tls` is and how to trust it.
    #[command(name = "tls-ca")]
    TlsCa(tls_ca_cmd::TlsCaArgs),
    /// Internal: the runtime's single-threaded spawn helper.
    #[command(name = "__spawn-helper", hide = true)]
    SpawnHelper,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve_cmd::run(args),
        Command::Agent(args) => agent_cmd::run(args),
        Command::Interpreter(args) => interpreter_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::TlsCa(args) => tls_ca_cmd::run(args),
        Command::Run(args) => exit_with(sandbox_cmds::run(args)),
        Command::Exec(args) => exit_with(sandbox_cmds::exec(args)),
        Command::Cp(args) => exit_with(sandbox_cmds::cp(args)),
        Command::Ls => exit_with(sandbox_cmds::ls()),
        Command::Kill(args) => exit_with(sandbox_cmds::kill(args)),
        Command::SpawnHelper => {
            // Owned by the runtime crate: it must stay single-threaded (no tokio here).
            sandboxd_runtime::namespace::spawn_helper::run_spawn_helper()?;
            Ok(())
        }
    }
}

/// Ends the process with a client subcommand's exit code; an error is one line on stderr and
/// exit code 1.
fn exit_with(r: anyhow::Result<i32>) -> anyhow::Result<()> {
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sandboxd: {e:#}");
            std::process::exit(1)
        }
    }
}
