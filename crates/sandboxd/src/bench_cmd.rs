//! `sandboxd bench`: starts its own daemon (this executable's `serve`) on a free loopback port
//! with a throwaway data dir, measures, cleans up, prints a Markdown table and optionally
//! writes JSON. Fails only when something is broken (a create or request failed), never on
//! absolute numbers.

use anyhow::Context;
use sandboxd_bench::Config;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Short run for CI (under a minute): fewer runs, 64 MiB instead of 1 GiB files, 4 s cycle.
    #[arg(long)]
    pub quick: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Directory for the throwaway data dir (default: $TMPDIR or /tmp).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// `--max-sandboxes` of the daemon under test; caps the concurrency levels.
    #[arg(long)]
    pub max_sandboxes: Option<usize>,
    /// Concurrency levels of the create test (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,
    /// Seconds of the sustained create + run + kill cycle.
    #[arg(long)]
    pub cycle_seconds: Option<f64>,
    /// Concurrent workers of the cycle test.
    #[arg(long)]
    pub cycle_workers: Option<usize>,
    /// Idle sandboxes of the density test.
    #[arg(long)]
    pub density: Option<usize>,
    /// Host memory budget for the derived density figure, GiB.
    #[arg(long)]
    pub budget_gib: Option<f64>,
    /// Size of the big /files transfer, MiB.
    #[arg(long)]
    pub big_file_mib: Option<u64>,
    /// Files in the ListDir directory.
    #[arg(long)]
    pub listdir_entries: Option<usize>,
    /// Extra `serve` arguments that enable a warm pool (one string, split on spaces); by
    /// default a `--…pool…` option is looked up in `sandboxd serve --help`.
    #[arg(long)]
    pub pool_args: Option<String>,
    /// Size of the warm pool asked for when the option takes a value.
    #[arg(long, default_value_t = 8)]
    pub pool_size: usize,
    /// Keep the throwaway directory (daemon log) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Measure only these sections (comma-separated): create, exec, listdir, watch, files,
    /// cycle, density, pool. Baselines always run.
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let exe = std::env::current_exe().context("locating the sandboxd executable")?;
    let mut cfg = if args.quick {
        Config::quick(exe)
    } else {
        Config::full(exe)
    };
    if let Some(d) = args.work_dir {
        cfg.work_dir = d;
    }
    if let Some(m) = args.max_sandboxes {
        anyhow::ensure!(m > 0, "--max-sandboxes must be greater than 0");
        cfg.max_sandboxes = m;
    }
    if let Some(c) = args.concurrency {
        cfg.concurrency = c;
    }
    if let Some(s) = args.cycle_seconds {
        anyhow::ensure!(s.is_finite() && s > 0.0, "--cycle-seconds must be positive");
        cfg.cycle_seconds = s;
    }
    if let Some(w) = args.cycle_workers {
        cfg.cycle_concurrency = w.max(1);
    }
    if let Some(d) = args.density {
        anyhow::ensure!(d > 0, "--density must be greater than 0");
        cfg.density = d;
    }
    if let Some(b) = args.budget_gib {
        anyhow::ensure!(b.is_finite() && b > 0.0, "--budget-gib must be positive");
        cfg.budget_gib = b;
    }
    if let Some(m) = args.big_file_mib {
        anyhow::ensure!(m > 0, "--big-file-mib must be greater than 0");
        cfg.big_file = m << 20;
    }
    if let Some(n) = args.listdir_entries {
        anyhow::ensure!(n > 0, "--listdir-entries must be greater than 0");
        cfg.listdir_entries = n;
    }
    cfg.pool_args = args
        .pool_args
        .map(|s| s.split_whitespace().map(str::to_string).collect());
    cfg.pool_size = args.pool_size.max(1);
    cfg.keep = args.keep;
    if let Some(only) = &args.only {
        for s in only {
            anyhow::ensure!(
                sandboxd_bench::SECTIONS.contains(&s.as_str()),
                "--only: unknown section {s:?} (known: {})",
                sandboxd_bench::SECTIONS.join(", ")
            );
        }
    }
    cfg.only = args.only;
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "sandboxd bench starts namespace sandboxes and reads their cgroups: run it as root"
    );

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(sandboxd_bench::run(cfg));
    print!("{}", report.to_markdown());
    if let Some(path) = args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.errors.is_empty() {
        anyhow::bail!("the bench failed: {}", report.errors.join("; "));
    }
    Ok(())
}
