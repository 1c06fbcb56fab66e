//! The client subcommands (`docs/cli.md`): `run`, `exec`, `cp`, `ls`, `kill`, talking to a running
//! daemon through `sandboxd-client` with the variables `sandboxd serve` prints.

use anyhow::Context;
use clap::Args;
use sandboxd_client::{Client, Command, Endpoint, Exit, Output, SandboxRef};
use std::io::Write;

/// Where and as whom a command runs.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Working directory inside the sandbox (default: the user's home).
    #[arg(long)]
    pub cwd: Option<String>,
    /// The user to run as (`user` or `root`).
    #[arg(long, default_value = "user")]
    pub user: String,
    /// Environment variables, `NAME=VALUE` (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub envs: Vec<String>,
    /// The program and its arguments, run directly (use `sh -c '…'` for a shell).
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub argv: Vec<String>,
}

impl ProcessArgs {
    fn command(self) -> anyhow::Result<Command> {
        let mut envs = Vec::new();
        for e in self.envs {
            let (k, v) = e
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .with_context(|| format!("--env {e:?}: expected NAME=VALUE"))?;
            envs.push((k.to_string(), v.to_string()));
        }
        Ok(Command {
            argv: self.argv,
            cwd: self.cwd,
            user: Some(self.user),
            envs,
        })
    }
}

/// Flags of `sandboxd run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The template of the new sandbox.
    #[arg(long, short = 't', default_value = "base")]
    pub template: String,
    /// Seconds the sandbox may live.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Keep the sandbox after the command (its id goes to stderr) instead of killing it.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Flags of `sandboxd exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The sandbox (as `sandboxd ls` shows it).
    pub sandbox: String,
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Flags of `sandboxd cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// `<sandbox>:<path>` or a local file (`-`: standard input).
    pub from: String,
    /// `<sandbox>:<path>` or a local file (`-`: standard output); exactly one side is in a
    /// sandbox.
    pub to: String,
    /// The user that reads or writes the sandbox's file.
    #[arg(long, default_value = "user")]
    pub user: String,
}

/// `<sandbox>:<path>` split, if `s` names a file in a sandbox (a sandbox id is letters and
/// digits; a local path with a colon can be written `./a:b`).
fn in_sandbox(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) && !path.is_empty())
        .then_some((id, path))
}

/// Flags of `sandboxd kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// The sandboxes to kill.
    #[arg(required = true)]
    pub sandboxes: Vec<String>,
}

fn client() -> anyhow::Result<Client> {
    Ok(Client::new(Endpoint::from_env()?)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `cmd` in `sandbox` with its output on ours; Ctrl-C stops waiting (exit 130).
async fn run_in(client: &Client, sandbox: &SandboxRef, cmd: &Command) -> anyhow::Result<Option<Exit>> {
    let write = |o: Output, bytes: &[u8]| {
        let _ = match o {
            Output::Stdout => std::io::stdout()
                .lock()
                .write_all(bytes)
                .and_then(|()| std::io::stdout().flush()),
            Output::Stderr => std::io::stderr().lock().write_all(bytes),
        };
    };
    tokio::select! {
        r = client.run(sandbox, cmd, write) => Ok(Some(r?)),
        _ = tokio::signal::ctrl_c() => Ok(None),
    }
}

/// The exit code `sandboxd` ends with for a process's `exit` (130 when interrupted).
fn report(exit: Option<Exit>) -> i32 {
    match exit {
        Some(e) => {
            // more than the exit status says (an OOM kill, a process limit, a command policy)
            if let Some(why) = e.error.filter(|w| !w.is_empty() && *w != e.status) {
                eprintln!("sandboxd: {why}");
            }
            e.code
        }
        None => 130,
    }
}

/// `sandboxd run`: a new sandbox, the command in it, then the sandbox killed (unless `--keep`);
/// exits with the command's exit code.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let cmd = args.process.command()?;
    let client = client()?;
    runtime()?.block_on(async {
        let sandbox = client.create(&args.template, args.timeout).await?;
        let exit = run_in(&client, &sandbox, &cmd).await;
        if args.keep {
            eprintln!("sandboxd: kept sandbox {}", sandbox.id);
        } else if let Err(e) = client.kill(&sandbox.id).await {
            eprintln!("sandboxd: killing sandbox {}: {e}", sandbox.id);
        }
        Ok(report(exit?))
    })
}

/// `sandboxd exec`: the command in an existing sandbox; exits with its exit code.
pub fn exec(args: ExecArgs) -> anyhow::Result<i32> {
    let cmd = args.process.command()?;
    let client = client()?;
    runtime()?.block_on(async {
        let sandbox = client.get(&args.sandbox).await?;
        Ok(report(run_in(&client, &sandbox, &cmd).await?))
    })
}

/// `sandboxd cp`: copies one file into or out of a sandbox, streamed.
pub fn cp(args: CpArgs) -> anyhow::Result<i32> {
    let client = client()?;
    runtime()?.block_on(async {
        match (in_sandbox(&args.from), in_sandbox(&args.to)) {
            (Some((id, path)), None) => {
                let sandbox = client.get(id).await?;
                if args.to == "-" {
                    client
                        .download(&sandbox, path, &args.user, &mut tokio::io::stdout())
                        .await?;
                } else {
                    // to a file beside the target, renamed once complete: a failed copy leaves
                    // the old file
                    let target = std::path::Path::new(&args.to);
                    let name = target.file_name().context("the local target names no file")?;
                    let tmp = target.with_file_name(format!(".{}.sandboxd-cp", name.to_string_lossy()));
                    let mut f = tokio::fs::File::create(&tmp)
                        .await
                        .with_context(|| format!("creating {}", tmp.display()))?;
                    let r = client.download(&sandbox, path, &args.user, &mut f).await;
                    drop(f);
                    if let Err(e) = r {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e.into());
                    }
                    std::fs::rename(&tmp, target).with_context(|| format!("writing {}", target.display()))?;
                }
            }
            (None, Some((id, path))) => {
                let sandbox = client.get(id).await?;
                if args.from == "-" {
                    client
                        .upload(&sandbox, path, &args.user, tokio::io::stdin())
                        .await?;
                } else {
                    let f = tokio::fs::File::open(&args.from)
                        .await
                        .with_context(|| format!("opening {}", args.from))?;
                    client.upload(&sandbox, path, &args.user, f).await?;
                }
            }
            _ => anyhow::bail!("exactly one of the two must be <sandbox>:<path>"),
        }
        Ok(0)
    })
}

/// `sandboxd ls`: the running and paused sandboxes, one per line.
pub fn ls() -> anyhow::Result<i32> {
    let client = client()?;
    let list = runtime()?.block_on(client.list())?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<22} {:<20} {:<8} {:<27} ENDS",
        "ID", "TEMPLATE", "STATE", "STARTED"
    )?;
    for s in list {
        let template = s.alias.unwrap_or(s.template_id);
        writeln!(
            out,
            "{:<22} {:<20} {:<8} {:<27} {}",
            s.sandbox_id, template, s.state, s.started_at, s.end_at
        )?;
    }
    Ok(0)
}

/// `sandboxd kill`: kills each sandbox named; exits 1 if any could not be killed.
pub fn kill(args: KillArgs) -> anyhow::Result<i32> {
    let client = client()?;
    let rt = runtime()?;
    let mut code = 0;
    for id in &args.sandboxes {
        if let Err(e) = rt.block_on(client.kill(id)) {
            eprintln!("sandboxd: {id}: {e}");
            code = 1;
        }
    }
    Ok(code)
}
