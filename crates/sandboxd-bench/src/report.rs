//! The report: a JSON document (`--json`) and a Markdown table (stdout).

use crate::machine::{Build, Machine};
use crate::stats::{Summary, ratio};
use crate::timing::Breakdown;
use serde::{Deserialize, Serialize};

/// Version of the JSON layout.
pub const SCHEMA: u32 = 1;

/// A same-run baseline (a host operation measured next to the sandbox numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub name: String,
    pub command: String,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skip_reason: Option<String>,
    pub latency: Option<Summary>,
}

/// Host file I/O at a transfer size (page cache), the baseline of `/files` throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFile {
    pub size_bytes: u64,
    pub write: Summary,
    pub read: Summary,
}

/// All baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// `bwrap --unshare-all ... /bin/true`.
    pub bwrap: Baseline,
    /// fork + exec + wait of `/bin/true`.
    pub fork_exec: Baseline,
    /// fork + exec + wait of `/bin/bash -l -c 'echo hi'` on the host.
    pub host_bash: Baseline,
    /// `readdir` + `lstat` of a host directory with as many files as the ListDir test.
    pub host_listdir: Option<Baseline>,
    pub host_files: Vec<HostFile>,
}

/// Creates at one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Concurrent {
    pub concurrency: usize,
    pub latency: Summary,
    pub creates_per_s: f64,
    /// Host CPU time (all processes) per create during this level, ms; noisy on a shared host.
    pub host_cpu_ms_per_create: Option<f64>,
}

/// `POST /sandboxes` until the 201 response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateSection {
    pub sequential: Summary,
    /// Host CPU time (all processes) per sequential create + kill, ms.
    pub host_cpu_ms_per_create_and_kill: Option<f64>,
    /// `DELETE /sandboxes/{id}` of the sequential creates (untimed in `sequential`).
    pub kill: Summary,
    pub concurrency: Vec<Concurrent>,
    /// Per-step medians of the sequential creates (runtime timing output).
    pub breakdown: Breakdown,
    /// Client-seen p50 minus the backend's median: HTTP, JSON, registry, task hops.
    pub outside_backend_p50_ms: Option<f64>,
}

/// Create from a warm pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmPool {
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The `serve` arguments that enabled the pool.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub serve_args: Vec<String>,
    pub latency: Option<Summary>,
}

/// `Process.Start` until the `end` event, through the proxy, on one keep-alive connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecSection {
    /// `{"process":{"cmd":"/bin/true"}}`.
    pub direct_true: Summary,
    /// `{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"]},"stdin":false}`.
    pub sdk_bash_echo: Summary,
    /// `GET /health` of the control plane (no proxy): the HTTP floor of this client and server.
    pub control_health: Summary,
    /// `GET /health` with `E2b-Sandbox-Id`: one proxied round trip to the agent.
    pub envd_health: Summary,
}

/// Create + run `/bin/true` + kill, sustained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CycleSection {
    pub seconds: f64,
    pub concurrency: usize,
    pub cycles: usize,
    pub cycles_per_s: f64,
    pub latency: Summary,
}

/// Memory of idle sandboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DensitySection {
    pub sandboxes: usize,
    /// Memory charged to each sandbox's cgroup (agent + kernel objects charged to it), MiB.
    pub cgroup_charge: Summary,
    pub agent_rss: Summary,
    pub agent_pss: Summary,
    /// Growth of the daemon's RSS per sandbox, MiB.
    pub daemon_rss_per_sandbox_mib: f64,
    /// Growth of the host's used memory (MemTotal - MemAvailable) per sandbox, MiB; noisy.
    pub host_used_per_sandbox_mib: f64,
    /// Growth of unreclaimable slab per sandbox, MiB (kernel objects not charged to a cgroup).
    pub slab_unreclaimable_per_sandbox_mib: f64,
    /// cgroup charge p50 + daemon RSS growth per sandbox: the per-sandbox estimate, MiB.
    pub estimate_per_sandbox_mib: f64,
    pub budget_gib: f64,
    /// `budget / estimate`.
    pub sandboxes_in_budget: u64,
    /// `budget / host used per sandbox` (includes all noise on the host).
    pub sandboxes_in_budget_by_host: Option<u64>,
}

/// `/files` transfers of one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub size_bytes: u64,
    pub upload: Summary,
    pub download: Summary,
    /// Highest VmRSS sampled during the transfers of this size, MiB.
    pub daemon_peak_rss_mib: f64,
    pub agent_peak_rss_mib: f64,
    /// VmRSS before the transfers of this size, MiB.
    pub daemon_rss_before_mib: f64,
    pub agent_rss_before_mib: f64,
}

/// `/files` upload and download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesSection {
    pub transfers: Vec<Transfer>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

/// `Filesystem.ListDir` of a large directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListDirSection {
    pub entries: usize,
    pub latency: Summary,
    pub entries_per_s: Summary,
}

/// `Filesystem.WatchDir` event latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchSection {
    pub events: usize,
    /// Event arrival minus the completion of the upload that caused it (negative: the event
    /// arrived before the upload's response was read).
    pub after_write_done: Summary,
    /// Event arrival minus the start of the upload.
    pub after_write_start: Summary,
}

/// The daemon the bench started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub serve_args: Vec<String>,
    pub max_sandboxes: usize,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub mode: String,
    pub started_at: String,
    pub duration_s: f64,
    pub machine: Machine,
    pub build: Build,
    pub daemon: DaemonInfo,
    pub baselines: Baselines,
    pub create: Option<CreateSection>,
    pub create_warm_pool: WarmPool,
    /// Same-run baseline of the sequential creates: a daemon started with `--no-network`
    /// (sandboxes with loopback only), to show what a sandbox's network link costs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub create_no_network: Option<Summary>,
    /// Sandboxes of an image template (and its import and builds), next to `create`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub create_image_template: Option<crate::image_template::ImageTemplateSection>,
    /// Pulling an image from a registry on loopback into a template.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_pull: Option<crate::image_pull::PullSection>,
    /// Egress throughput from sandboxes (NAT and proxy paths) next to the host's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub egress: Option<crate::egress::EgressSection>,
    pub exec: Option<ExecSection>,
    pub cycle: Option<CycleSection>,
    pub density: Option<DensitySection>,
    pub files: Option<FilesSection>,
    pub listdir: Option<ListDirSection>,
    pub watch: Option<WatchSection>,
    pub notes: Vec<String>,
    /// Failures (the run fails when this is not empty).
    pub errors: Vec<String>,
}

/// A number with a precision that suits its size.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        // thousands separators for readability
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", fmt_num(bytes as f64 / (1u64 << 20) as f64))
    }
}

/// One table row.
struct Row {
    name: String,
    s: Option<Summary>,
    /// Shown instead of the percentiles when there is no summary.
    value: Option<String>,
    unit: String,
    vs: String,
    budget: String,
}

impl Row {
    fn summary(name: impl Into<String>, s: &Summary) -> Row {
        Row {
            name: name.into(),
            unit: s.unit.clone(),
            s: Some(s.clone()),
            value: None,
            vs: String::new(),
            budget: String::new(),
        }
    }
    fn value(name: impl Into<String>, value: impl Into<String>, unit: &str) -> Row {
        Row {
            name: name.into(),
            s: None,
            value: Some(value.into()),
            unit: unit.into(),
            vs: String::new(),
            budget: String::new(),
        }
    }
    fn vs(mut self, base: Option<&Baseline>, label: &str) -> Row {
        if let (Some(s), Some(b)) = (&self.s, base.and_then(|b| b.latency.as_ref()))
            && let Some(r) = ratio(s.p50, b.p50)
        {
            self.vs = format!("{}× {label}", fmt_num(r));
        }
        self
    }
    fn vs_value(mut self, value: f64, base: f64, label: &str) -> Row {
        if let Some(r) = ratio(value, base) {
            self.vs = format!("{}× {label}", fmt_num(r));
        }
        self
    }
    fn budget(mut self, b: &str) -> Row {
        self.budget = b.into();
        self
    }
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        let b = &self.baselines;
        let bwrap = b.bwrap.available.then_some(&b.bwrap);
        let mut rows = Vec::new();
        for base in [&b.bwrap, &b.fork_exec, &b.host_bash] {
            match &base.latency {
                Some(s) => rows.push(Row::summary(format!("baseline: {}", base.name), s)),
                None => rows.push(Row::value(
                    format!("baseline: {}", base.name),
                    format!(
                        "skipped: {}",
                        base.skip_reason.as_deref().unwrap_or("unavailable")
                    ),
                    "",
                )),
            }
        }
        if let Some(c) = &self.create {
            let cpu = c
                .host_cpu_ms_per_create_and_kill
                .map(|c| format!(" (host CPU {} ms per create + kill)", fmt_num(c)))
                .unwrap_or_default();
            rows.push(
                Row::summary(format!("create → ready, sequential{cpu}"), &c.sequential)
                    .vs(bwrap, "bwrap")
                    .budget("p50 10, p99 30 ms"),
            );
            if let Some(n) = &self.create_no_network {
                rows.push(
                    Row::summary("create → ready, sequential, --no-network (baseline)", n)
                        .budget("network adds at most 2 ms p50"),
                );
            }
            if let Some(i) = &self.create_image_template {
                rows.push(
                    Row::summary("create → ready, sequential, image template (2 layers)", &i.create)
                        .vs_value(i.create.p50, c.sequential.p50, "base")
                        .budget("within 2 ms of base p50"),
                );
                rows.push(Row::value(
                    "image archive import (POST /images/import)",
                    fmt_num(i.import_ms),
                    "ms",
                ));
                rows.push(Row::value(
                    "template build from the image",
                    fmt_num(i.build_ms),
                    "ms",
                ));
                rows.push(
                    Row::value(
                        "template rebuild, unchanged (all cached)",
                        fmt_num(i.rebuild_unchanged_ms),
                        "ms",
                    )
                    .budget("under 1 s"),
                );
            }
            if let Some(p) = &self.image_pull {
                rows.push(
                    Row::value(
                        format!(
                            "image pull from a loopback registry ({} MiB layer): fetch, unpack, template",
                            p.bytes >> 20
                        ),
                        fmt_num(p.mb_per_s),
                        "MB/s",
                    )
                    .budget("≥ 200 MB/s"),
                );
            }
            rows.push(Row::summary("kill (DELETE /sandboxes/{id}), sequential", &c.kill));
            for l in &c.concurrency {
                rows.push(
                    Row::summary(
                        format!(
                            "create → ready, {} concurrent ({} creates/s{})",
                            l.concurrency,
                            fmt_num(l.creates_per_s),
                            l.host_cpu_ms_per_create
                                .map(|c| format!(", host CPU {} ms/create", fmt_num(c)))
                                .unwrap_or_default()
                        ),
                        &l.latency,
                    )
                    .vs(bwrap, "bwrap"),
                );
            }
        }
        let pool = &self.create_warm_pool;
        match (&pool.latency, pool.available) {
            (Some(s), _) => rows.push(
                Row::summary("create → ready, warm pool", s)
                    .vs(bwrap, "bwrap")
                    .budget("p50 2 ms"),
            ),
            _ => rows.push(
                Row::value(
                    "create → ready, warm pool",
                    format!("n/a: {}", pool.reason.as_deref().unwrap_or("not measured")),
                    "",
                )
                .budget("p50 2 ms"),
            ),
        }
        if let Some(e) = &self.egress {
            rows.push(Row::value(
                format!("egress throughput, host → server (baseline, {} s)", e.seconds),
                fmt_num(e.host_mbps),
                "Mbit/s",
            ));
            rows.push(
                Row::value(
                    "egress throughput, sandbox, NAT path",
                    fmt_num(e.nat_mbps),
                    "Mbit/s",
                )
                .vs_value(e.nat_mbps, e.host_mbps, "host"),
            );
            rows.push(
                Row::value(
                    "egress throughput, sandbox, through the egress proxy",
                    fmt_num(e.proxy_mbps),
                    "Mbit/s",
                )
                .vs_value(e.proxy_mbps, e.host_mbps, "host"),
            );
        }
        if let Some(e) = &self.exec {
            rows.push(
                Row::summary("Process.Start `/bin/true` (direct) → end", &e.direct_true)
                    .vs(Some(&b.fork_exec), "fork+exec")
                    .budget("p50 3 ms"),
            );
            rows.push(
                Row::summary("Process.Start `bash -l -c 'echo hi'` → end", &e.sdk_bash_echo)
                    .vs(Some(&b.host_bash), "host bash"),
            );
            rows.push(Row::summary(
                "GET /health, control plane (HTTP floor)",
                &e.control_health,
            ));
            rows.push(Row::summary(
                "GET /health through the proxy to the agent",
                &e.envd_health,
            ));
        }
        if let Some(c) = &self.cycle {
            rows.push(
                Row::summary(
                    format!(
                        "create + run + kill, {} workers for {} s ({} cycles/s)",
                        c.concurrency,
                        fmt_num(c.seconds),
                        fmt_num(c.cycles_per_s)
                    ),
                    &c.latency,
                )
                .vs(bwrap, "bwrap"),
            );
        }
        if let Some(d) = &self.density {
            let n = d.sandboxes;
            rows.push(Row::summary(
                format!("idle sandbox: cgroup charge ({n} sandboxes)"),
                &d.cgroup_charge,
            ));
            rows.push(Row::summary("idle sandbox: agent RSS", &d.agent_rss));
            rows.push(Row::summary("idle sandbox: agent PSS", &d.agent_pss));
            rows.push(Row::value(
                "idle sandbox: daemon RSS growth per sandbox",
                fmt_num(d.daemon_rss_per_sandbox_mib),
                "MiB",
            ));
            rows.push(Row::value(
                "idle sandbox: uncharged kernel slab per sandbox",
                fmt_num(d.slab_unreclaimable_per_sandbox_mib),
                "MiB",
            ));
            rows.push(
                Row::value(
                    "idle sandbox: host memory (cgroup p50 + daemon share)",
                    fmt_num(d.estimate_per_sandbox_mib),
                    "MiB",
                )
                .budget("< 4 MiB"),
            );
            rows.push(Row::value(
                "idle sandbox: host used-memory growth per sandbox (noisy)",
                fmt_num(d.host_used_per_sandbox_mib),
                "MiB",
            ));
            rows.push(
                Row::value(
                    format!("idle sandboxes in {} GiB", fmt_num(d.budget_gib)),
                    match d.sandboxes_in_budget_by_host {
                        Some(h) => format!(
                            "{} (by host growth: {})",
                            fmt_num(d.sandboxes_in_budget as f64),
                            fmt_num(h as f64)
                        ),
                        None => fmt_num(d.sandboxes_in_budget as f64),
                    },
                    "sandboxes",
                )
                .budget("2,000 in 24 GiB"),
            );
        }
        if let Some(f) = &self.files {
            for t in &f.transfers {
                let host = b.host_files.iter().find(|h| h.size_bytes == t.size_bytes);
                let size = mib(t.size_bytes);
                let mut up = Row::summary(format!("/files upload {size}"), &t.upload).budget("≥ 1,000 MB/s");
                let mut down =
                    Row::summary(format!("/files download {size}"), &t.download).budget("≥ 1,000 MB/s");
                if let Some(h) = host {
                    up = up.vs_value(t.upload.p50, h.write.p50, "host write");
                    down = down.vs_value(t.download.p50, h.read.p50, "host read");
                }
                rows.push(up);
                rows.push(down);
                rows.push(
                    Row::value(
                        format!("/files {size}: peak RSS daemon / agent"),
                        format!(
                            "{} / {} (before: {} / {})",
                            fmt_num(t.daemon_peak_rss_mib),
                            fmt_num(t.agent_peak_rss_mib),
                            fmt_num(t.daemon_rss_before_mib),
                            fmt_num(t.agent_rss_before_mib)
                        ),
                        "MiB",
                    )
                    .budget("constant"),
                );
            }
        }
        if let Some(l) = &self.listdir {
            rows.push(
                Row::summary(
                    format!("ListDir of {} entries", fmt_num(l.entries as f64)),
                    &l.latency,
                )
                .vs(b.host_listdir.as_ref(), "host readdir+lstat"),
            );
            rows.push(Row::summary("ListDir throughput", &l.entries_per_s));
        }
        if let Some(w) = &self.watch {
            rows.push(Row::summary(
                "WatchDir event after the upload's response was read",
                &w.after_write_done,
            ));
            rows.push(Row::summary(
                "WatchDir event after the upload was sent",
                &w.after_write_start,
            ));
        }
        rows
    }

    /// The Markdown report.
    pub fn to_markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "## sandboxd bench ({} mode, {} build)\n\nMachine: {} CPUs ({}), {} GiB memory, kernel {}, cgroup {}, {}. Started {}, took {} s.\n\n",
            self.mode,
            self.build.profile,
            m.nproc,
            m.cpu_model,
            fmt_num(m.memory_bytes as f64 / (1u64 << 30) as f64),
            m.kernel,
            m.cgroup,
            m.os,
            self.started_at,
            fmt_num(self.duration_s),
        );
        out.push_str("| measurement | n | p50 | p90 | p99 | unit | p50 vs same-run baseline | budget |\n");
        out.push_str("|---|---:|---:|---:|---:|---|---|---|\n");
        for r in self.rows() {
            let cells = match (&r.s, &r.value) {
                (Some(s), _) => format!(
                    "{} | {} | {} | {}",
                    s.n,
                    fmt_num(s.p50),
                    fmt_num(s.p90),
                    fmt_num(s.p99)
                ),
                (None, Some(v)) => format!(" | {v} | | "),
                (None, None) => " | | | ".into(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.name, cells, r.unit, r.vs, r.budget
            ));
        }
        if let Some(c) = &self.create
            && !c.breakdown.steps.is_empty()
        {
            out.push_str(&format!(
                "\nWhere a sequential create's time goes (medians of {} creates, from the runtime's timing output):\n\n| step | p50 ms |\n|---|---:|\n",
                c.breakdown.creates
            ));
            for s in &c.breakdown.steps {
                out.push_str(&format!("| {} | {} |\n", s.step, fmt_num(s.p50_ms)));
            }
            if let Some(o) = c.outside_backend_p50_ms {
                out.push_str(&format!(
                    "| control plane: HTTP, JSON, registry writes, tasks (client p50 − backend p50) | {} |\n",
                    fmt_num(o)
                ));
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        if !self.errors.is_empty() {
            out.push_str("\nERRORS:\n");
            for e in &self.errors {
                out.push_str(&format!("- {e}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(1234.0), "1,234");
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(-2500.0), "-2,500");
        assert_eq!(fmt_num(-0.5), "-0.50");
        assert_eq!(fmt_num(f64::NAN), "—");
        assert_eq!(mib(1 << 20), "1.00 MiB");
        assert_eq!(mib(1 << 30), "1 GiB");
        assert_eq!(mib(64 << 20), "64.0 MiB");
    }

    fn s(p50: f64, unit: &str) -> Summary {
        Summary::of(&[p50 * 0.9, p50, p50 * 1.5], unit).unwrap()
    }

    fn base(name: &str, p50: Option<f64>) -> Baseline {
        Baseline {
            name: name.into(),
            command: name.into(),
            available: p50.is_some(),
            skip_reason: p50.is_none().then(|| "bwrap not found".into()),
            latency: p50.map(|v| s(v, "ms")),
        }
    }

    pub(crate) fn sample() -> Report {
        Report {
            schema: SCHEMA,
            mode: "quick".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_s: 42.0,
            machine: Machine {
                nproc: 2,
                memory_bytes: 24 << 30,
                kernel: "6.18".into(),
                cgroup: "v1 (hybrid)".into(),
                cpu_model: "cpu".into(),
                os: "Debian".into(),
            },
            build: Build {
                profile: "release".into(),
                version: "0.1.0".into(),
            },
            daemon: DaemonInfo {
                serve_args: vec![],
                max_sandboxes: 128,
            },
            baselines: Baselines {
                bwrap: base("bwrap /bin/true", Some(4.0)),
                fork_exec: base("fork+exec /bin/true", Some(0.5)),
                host_bash: base("bash -l -c 'echo hi'", Some(3.0)),
                host_listdir: None,
                host_files: vec![HostFile {
                    size_bytes: 1 << 20,
                    write: s(2000.0, "MB/s"),
                    read: s(4000.0, "MB/s"),
                }],
            },
            create: Some(CreateSection {
                sequential: s(8.0, "ms"),
                kill: s(3.0, "ms"),
                host_cpu_ms_per_create_and_kill: None,
                concurrency: vec![Concurrent {
                    concurrency: 4,
                    latency: s(20.0, "ms"),
                    creates_per_s: 180.0,
                    host_cpu_ms_per_create: Some(11.0),
                }],
                breakdown: Breakdown::default(),
                outside_backend_p50_ms: None,
            }),
            create_warm_pool: WarmPool {
                available: false,
                reason: Some("`sandboxd serve` has no pool option".into()),
                serve_args: vec![],
                latency: None,
            },
            create_no_network: Some(s(4.0, "ms")),
            create_image_template: None,
            image_pull: None,
            egress: None,
            exec: Some(ExecSection {
                direct_true: s(1.5, "ms"),
                sdk_bash_echo: s(5.0, "ms"),
                control_health: s(0.1, "ms"),
                envd_health: s(0.2, "ms"),
            }),
            cycle: None,
            density: None,
            files: Some(FilesSection {
                transfers: vec![Transfer {
                    size_bytes: 1 << 20,
                    upload: s(1000.0, "MB/s"),
                    download: s(1500.0, "MB/s"),
                    daemon_peak_rss_mib: 20.0,
                    agent_peak_rss_mib: 10.0,
                    daemon_rss_before_mib: 19.0,
                    agent_rss_before_mib: 9.0,
                }],
                note: None,
            }),
            listdir: None,
            watch: None,
            notes: vec!["a note".into()],
            errors: vec![],
        }
    }

    #[test]
    fn markdown_table() {
        let md = sample().to_markdown();
        assert!(md.contains("quick mode, release build"), "{md}");
        assert!(md.contains("2 CPUs"));
        assert!(md.contains("| create → ready, sequential | 3 | 8.00 | 12.0 | 12.0 | ms | 2.00× bwrap | p50 10, p99 30 ms |"), "{md}");
        assert!(
            md.contains("4 concurrent (180 creates/s, host CPU 11.0 ms/create)"),
            "{md}"
        );
        assert!(
            md.contains("| create → ready, warm pool |  | n/a: `sandboxd serve` has no pool option | | "),
            "{md}"
        );
        assert!(md.contains("3.00× fork+exec"), "{md}");
        assert!(md.contains("1.67× host bash"), "{md}");
        assert!(md.contains("| /files upload 1.00 MiB | 3 | 1,000 |"), "{md}");
        assert!(md.contains("0.50× host write"), "{md}");
        assert!(md.contains("0.38× host read"), "{md}");
        assert!(md.contains("- a note"));
        assert!(!md.contains("ERRORS"));
        // Every table line has the same number of cells.
        let widths: Vec<usize> = md
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| step"))
            .filter(|l| l.matches('|').count() > 3)
            .map(|l| l.matches('|').count())
            .collect();
        assert!(widths.iter().all(|w| *w == 9), "{widths:?}\n{md}");
    }

    #[test]
    fn skipped_bwrap_has_no_ratio() {
        let mut r = sample();
        r.baselines.bwrap = base("bwrap /bin/true", None);
        let md = r.to_markdown();
        assert!(md.contains("skipped: bwrap not found"), "{md}");
        assert!(!md.contains("× bwrap"), "{md}");
        r.errors.push("create failed".into());
        assert!(r.to_markdown().contains("ERRORS:\n- create failed"));
    }

    #[test]
    fn json_round_trip() {
        let r = sample();
        let j = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        for k in [
            "machine",
            "build",
            "baselines",
            "create",
            "create_warm_pool",
            "exec",
            "errors",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
