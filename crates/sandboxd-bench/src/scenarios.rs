//! The measurements, and the run that ties them together with set-up and clean-up.

use crate::api::{self, Api, Sandbox, run_process, start_direct, start_sdk, unary};
use crate::baseline::{self, mb_per_s};
use crate::daemon::{self, Daemon};
use crate::http::{Conn, RepeatBody, drain, within};
use crate::machine::{Build, Machine};
use crate::procfs::{self, MemoryCgroups};
use crate::report::*;
use crate::stats::Summary;
use crate::{BenchError, Config};
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: f64 = (1u64 << 20) as f64;
/// Bound on any single request of the bench.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// The daemon under test and what the bench created in it.
pub struct Ctx {
    pub daemon: Daemon,
    pub api: Api,
    pub cgroups: Option<MemoryCgroups>,
    /// The daemon's cgroup root (found after the first create).
    pub cgroup_root: Mutex<Option<String>>,
    /// Sandboxes created and not yet killed.
    live: Mutex<HashSet<String>>,
    pub cfg: Config,
}

impl Ctx {
    fn new(daemon: Daemon, cfg: Config) -> Ctx {
        Ctx {
            api: Api {
                key: daemon.key.clone(),
            },
            daemon,
            cgroups: MemoryCgroups::detect(),
            cgroup_root: Mutex::new(None),
            live: Mutex::new(HashSet::new()),
            cfg,
        }
    }

    /// A new connection to the daemon.
    pub async fn conn(&self) -> Result<Conn, BenchError> {
        Conn::connect(self.daemon.addr).await
    }

    /// Creates a sandbox (SDK body plus `extra`); returns it with the time to the 201.
    pub async fn create(
        &self,
        conn: &mut Conn,
        extra: Option<&serde_json::Value>,
    ) -> Result<(Sandbox, Duration), BenchError> {
        let body = api::sdk_create_body(extra);
        let (s, d) = within(REQUEST_LIMIT, "create", self.api.create(conn, &body)).await?;
        if let Ok(mut l) = self.live.lock() {
            l.insert(s.id.clone());
        }
        let mut root = self.cgroup_root.lock().unwrap_or_else(|p| p.into_inner());
        if root.is_none()
            && let Some(cg) = &self.cgroups
        {
            *root = cg.find_root(&s.id);
        }
        Ok((s, d))
    }

    /// Kills a sandbox.
    pub async fn kill(&self, conn: &mut Conn, id: &str) -> Result<(), BenchError> {
        within(REQUEST_LIMIT, "kill", self.api.kill(conn, id)).await?;
        if let Ok(mut l) = self.live.lock() {
            l.remove(id);
        }
        Ok(())
    }

    fn root(&self) -> Option<String> {
        self.cgroup_root.lock().ok().and_then(|r| r.clone())
    }

    /// Pids of a sandbox's agent cgroup.
    fn agent_pids(&self, id: &str) -> Vec<i32> {
        match (&self.cgroups, self.root()) {
            (Some(cg), Some(root)) => cg.pids_below(&cg.sandbox_dir(&root, id).join("agent")),
            _ => Vec::new(),
        }
    }

    /// Kills every sandbox the bench still has, and any other the daemon lists.
    async fn kill_all(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut conn = match self.conn().await {
            Ok(c) => c,
            Err(e) => return vec![format!("clean-up: {e}")],
        };
        let ids: Vec<String> = self
            .live
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            if let Err(e) = self.kill(&mut conn, &id).await {
                errors.push(format!("clean-up: killing {id}: {e}"));
            }
        }
        for _ in 0..20 {
            match self.api.list_ids(&mut conn).await {
                Ok(ids) if ids.is_empty() => break,
                Ok(ids) => {
                    for id in ids {
                        let _ = self.kill(&mut conn, &id).await;
                    }
                }
                Err(e) => {
                    errors.push(format!("clean-up: listing sandboxes: {e}"));
                    break;
                }
            }
        }
        errors
    }
}

fn summary_ms(samples: &[Duration], what: &str) -> Result<Summary, BenchError> {
    Summary::of_durations(samples).ok_or_else(|| BenchError::Check(format!("{what}: no samples")))
}

fn summary(samples: &[f64], unit: &str, what: &str) -> Result<Summary, BenchError> {
    Summary::of(samples, unit).ok_or_else(|| BenchError::Check(format!("{what}: no samples")))
}

/// Sequential creates, then each concurrency level.
pub async fn create(ctx: &Ctx) -> Result<CreateSection, BenchError> {
    let mut conn = ctx.conn().await?;
    // Warm-up: the first create starts the spawn helper and fills caches.
    for _ in 0..3 {
        let (s, _) = ctx.create(&mut conn, None).await?;
        ctx.kill(&mut conn, &s.id).await?;
    }
    let log_from = ctx.daemon.log_len();
    let cpu0 = procfs::host_cpu_busy_ms();
    let mut seq = Vec::with_capacity(ctx.cfg.runs.create);
    let mut kills = Vec::with_capacity(ctx.cfg.runs.create);
    for _ in 0..ctx.cfg.runs.create {
        let (s, d) = ctx.create(&mut conn, None).await?;
        seq.push(d);
        let t0 = Instant::now();
        ctx.kill(&mut conn, &s.id).await?;
        kills.push(t0.elapsed());
    }
    let n = ctx.cfg.runs.create.max(1) as f64;
    let host_cpu_ms_per_create_and_kill = cpu0.zip(procfs::host_cpu_busy_ms()).map(|(a, b)| (b - a) / n);
    let log = ctx.daemon.log_slice(log_from, ctx.daemon.log_len());
    let breakdown = crate::timing::parse(&log);
    let sequential = summary_ms(&seq, "sequential create")?;
    let outside_backend_p50_ms = breakdown.backend_total_p50_ms.map(|b| sequential.p50 - b);

    let mut concurrency = Vec::new();
    for &c in &ctx.cfg.concurrency {
        if c == 0 || c > ctx.cfg.max_sandboxes {
            continue;
        }
        let rounds = ctx.cfg.runs.create_concurrent.div_ceil(c).max(1);
        let mut conns = Vec::with_capacity(c);
        for _ in 0..c {
            conns.push(ctx.conn().await?);
        }
        let mut lat = Vec::with_capacity(rounds * c);
        let mut busy = Duration::ZERO;
        let mut cpu = Some(0.0);
        for _ in 0..rounds {
            let t0 = Instant::now();
            let c0 = procfs::host_cpu_busy_ms();
            let results = futures_join(conns.drain(..).map(|mut conn| async move {
                let r = ctx.create(&mut conn, None).await;
                (conn, r)
            }))
            .await;
            busy += t0.elapsed();
            cpu = cpu
                .zip(c0.zip(procfs::host_cpu_busy_ms()))
                .map(|(acc, (a, b))| acc + b - a);
            let mut made = Vec::new();
            let mut first_err = None;
            for (conn, r) in results {
                conns.push(conn);
                match r {
                    Ok((s, d)) => {
                        lat.push(d);
                        made.push(s.id);
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            let kills = futures_join(conns.drain(..).zip(made).map(|(mut conn, id)| async move {
                let r = ctx.kill(&mut conn, &id).await;
                (conn, r)
            }))
            .await;
            for (conn, r) in kills {
                conns.push(conn);
                r?;
            }
            while conns.len() < c {
                conns.push(ctx.conn().await?);
            }
            if let Some(e) = first_err {
                return Err(BenchError::Create(format!("at concurrency {c}: {e}")));
            }
        }
        concurrency.push(Concurrent {
            concurrency: c,
            latency: summary_ms(&lat, "concurrent create")?,
            creates_per_s: lat.len() as f64 / busy.as_secs_f64().max(1e-9),
            host_cpu_ms_per_create: cpu.map(|c| c / lat.len().max(1) as f64),
        });
    }
    Ok(CreateSection {
        sequential,
        host_cpu_ms_per_create_and_kill,
        kill: summary_ms(&kills, "kill")?,
        concurrency,
        breakdown,
        outside_backend_p50_ms,
    })
}

/// Runs futures concurrently on the current task set and returns their outputs in order.
async fn futures_join<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = futs.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                out[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Exec round trips in one warm sandbox.
pub async fn exec(ctx: &Ctx, sbx: &Sandbox) -> Result<ExecSection, BenchError> {
    let mut conn = ctx.conn().await?;
    let direct = start_direct("/bin/true", &[]);
    let sdk = start_sdk("echo hi");
    let mut run =
        async |req: &serde_json::Value, n: usize, want: &[u8]| -> Result<Vec<Duration>, BenchError> {
            let mut v = Vec::with_capacity(n);
            for i in 0..n + 5 {
                let r = within(REQUEST_LIMIT, "Process.Start", run_process(&mut conn, sbx, req)).await?;
                if r.exit_code != 0 || r.stdout != want {
                    return Err(BenchError::Check(format!(
                        "{req}: exit code {}, stdout {:?}",
                        r.exit_code,
                        String::from_utf8_lossy(&r.stdout)
                    )));
                }
                if i >= 5 {
                    v.push(r.until_end);
                }
            }
            Ok(v)
        };
    let t = run(&direct, ctx.cfg.runs.exec, b"").await?;
    let b = run(&sdk, ctx.cfg.runs.exec, b"hi\n").await?;
    let mut health = async |proxied: bool| -> Result<Vec<Duration>, BenchError> {
        let mut v = Vec::new();
        for i in 0..ctx.cfg.runs.exec + 5 {
            let req = if proxied {
                api::envd(Method::GET, "/health", sbx)
            } else {
                crate::http::request(Method::GET, "/health")
            }
            .body(crate::http::empty())
            .map_err(|e| BenchError::Http(e.to_string()))?;
            let t0 = Instant::now();
            let (status, _) = within(REQUEST_LIMIT, "GET /health", conn.call(req)).await?;
            let took = t0.elapsed();
            if !status.is_success() {
                return Err(BenchError::Check(format!(
                    "GET /health (proxied: {proxied}) answered {status}"
                )));
            }
            if i >= 5 {
                v.push(took);
            }
        }
        Ok(v)
    };
    let control = health(false).await?;
    let envd = health(true).await?;
    Ok(ExecSection {
        direct_true: summary_ms(&t, "exec /bin/true")?,
        sdk_bash_echo: summary_ms(&b, "exec bash")?,
        control_health: summary_ms(&control, "control /health")?,
        envd_health: summary_ms(&envd, "envd /health")?,
    })
}

/// `ListDir` of a directory with `listdir_entries` files.
pub async fn listdir(ctx: &Ctx, sbx: &Sandbox) -> Result<ListDirSection, BenchError> {
    let mut conn = ctx.conn().await?;
    let n = ctx.cfg.listdir_entries;
    let dir = "/home/user/bench-listdir";
    let make = start_direct(
        "/bin/bash",
        &["-c", &format!("mkdir -p {dir} && cd {dir} && touch f{{1..{n}}}")],
    );
    let r = within(REQUEST_LIMIT, "making files", run_process(&mut conn, sbx, &make)).await?;
    if r.exit_code != 0 {
        return Err(BenchError::Check(format!(
            "making {n} files exited {}",
            r.exit_code
        )));
    }
    let req = serde_json::json!({"path": dir, "depth": 1});
    let mut lat = Vec::new();
    let mut eps = Vec::new();
    for i in 0..ctx.cfg.runs.listdir + 1 {
        let t0 = Instant::now();
        let v = within(
            REQUEST_LIMIT,
            "ListDir",
            unary(&mut conn, sbx, "filesystem.Filesystem/ListDir", &req),
        )
        .await?;
        let took = t0.elapsed();
        let got = v
            .get("entries")
            .and_then(|e| e.as_array())
            .map(|a| a.len())
            .unwrap_or(0);
        if got != n {
            return Err(BenchError::Check(format!(
                "ListDir returned {got} of {n} entries"
            )));
        }
        if i > 0 {
            lat.push(took);
            eps.push(n as f64 / took.as_secs_f64().max(1e-9));
        }
    }
    let rm = start_direct("/bin/rm", &["-rf", dir]);
    let _ = within(REQUEST_LIMIT, "removing files", run_process(&mut conn, sbx, &rm)).await?;
    Ok(ListDirSection {
        entries: n,
        latency: summary_ms(&lat, "ListDir")?,
        entries_per_s: summary(&eps, "entries/s", "ListDir")?,
    })
}

/// Uploads `len` bytes to `path` (streamed octet-stream body).
async fn upload(conn: &mut Conn, sbx: &Sandbox, path: &str, len: u64) -> Result<(), BenchError> {
    let req = api::envd(Method::POST, &format!("/files?path={path}"), sbx)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(RepeatBody::new(crate::pattern_chunk(), len).boxed())
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let (status, body) = conn.call(req).await?;
    if status != StatusCode::OK {
        return Err(BenchError::Http(format!(
            "upload of {len} bytes answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(())
}

/// Downloads `path`; returns the byte count.
async fn download(conn: &mut Conn, sbx: &Sandbox, path: &str) -> Result<u64, BenchError> {
    let req = api::envd(Method::GET, &format!("/files?path={path}"), sbx)
        .header(header::ACCEPT_ENCODING, "identity")
        .body(crate::http::empty())
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let resp = conn.send(req).await?;
    let status = resp.status();
    let n = drain(resp.into_body()).await?;
    if status != StatusCode::OK {
        return Err(BenchError::Http(format!("download answered {status}")));
    }
    Ok(n)
}

/// `WatchDir` event latency after uploads into the watched directory.
pub async fn watch(ctx: &Ctx, sbx: &Sandbox) -> Result<WatchSection, BenchError> {
    let mut conn = ctx.conn().await?;
    let dir = "/home/user/bench-watch";
    unary(
        &mut conn,
        sbx,
        "filesystem.Filesystem/MakeDir",
        &serde_json::json!({"path": dir}),
    )
    .await?;
    let mut wconn = ctx.conn().await?;
    let mut stream = api::open_stream(
        &mut wconn,
        sbx,
        "filesystem.Filesystem/WatchDir",
        &serde_json::json!({"path": dir}),
    )
    .await?;
    match within(Duration::from_secs(10), "WatchDir start", stream.next()).await? {
        Some((m, _)) if m.get("start").is_some() => {}
        other => return Err(BenchError::Check(format!("WatchDir sent {other:?} first"))),
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        // Keeps the connection alive while the stream is read.
        let _wconn = wconn;
        while let Ok(Some((m, at))) = stream.next().await {
            if let Some(fs) = m.get("filesystem") {
                let name = fs.get("name").and_then(|x| x.as_str()).unwrap_or("").to_string();
                let ty = fs.get("type").and_then(|x| x.as_str()).unwrap_or("").to_string();
                if tx.send((name, ty, at)).is_err() {
                    break;
                }
            }
        }
    });
    let mut done = Vec::new();
    let mut start = Vec::new();
    let result = async {
        for i in 0..ctx.cfg.runs.watch {
            let name = format!("f{i}");
            let t0 = Instant::now();
            upload(&mut conn, sbx, &format!("{dir}/{name}"), 16).await?;
            let t1 = Instant::now();
            let at = within(Duration::from_secs(10), "watch event", async {
                while let Some((n, ty, at)) = rx.recv().await {
                    if n == name && ty == "EVENT_TYPE_WRITE" {
                        return Ok(at);
                    }
                }
                Err(BenchError::Check("the watch stream ended".into()))
            })
            .await?;
            let signed_ms = |a: Instant, b: Instant| {
                if a >= b {
                    (a - b).as_secs_f64() * 1000.0
                } else {
                    -((b - a).as_secs_f64() * 1000.0)
                }
            };
            done.push(signed_ms(at, t1));
            start.push(signed_ms(at, t0));
        }
        Ok::<(), BenchError>(())
    }
    .await;
    reader.abort();
    result?;
    Ok(WatchSection {
        events: done.len(),
        after_write_done: summary(&done, "ms", "watch")?,
        after_write_start: summary(&start, "ms", "watch")?,
    })
}

/// Samples the highest VmRSS of the daemon and of the given pids until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    daemon_max: Arc<AtomicU64>,
    agent_max: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(daemon: i32, agents: Vec<i32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let daemon_max = Arc::new(AtomicU64::new(0));
        let agent_max = Arc::new(AtomicU64::new(0));
        let (s, d, a) = (stop.clone(), daemon_max.clone(), agent_max.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(m) = procfs::proc_mem(daemon) {
                    d.fetch_max(m.rss, Ordering::Relaxed);
                }
                let sum: u64 = agents
                    .iter()
                    .filter_map(|p| procfs::proc_mem(*p))
                    .map(|m| m.rss)
                    .sum();
                a.fetch_max(sum, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        RssSampler {
            stop,
            daemon_max,
            agent_max,
            task,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.daemon_max.load(Ordering::Relaxed),
            self.agent_max.load(Ordering::Relaxed),
        )
    }
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; c is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

/// `/files` upload and download of a small and a big file, in a fresh sandbox.
pub async fn files(ctx: &Ctx, sizes: &[(u64, usize)]) -> Result<FilesSection, BenchError> {
    let mut conn = ctx.conn().await?;
    let biggest = sizes.iter().map(|s| s.0).max().unwrap_or(0);
    let disk_mb = (biggest >> 20) * 2 + 1024;
    let (sbx, _) = ctx
        .create(&mut conn, Some(&serde_json::json!({"diskSizeMB": disk_mb})))
        .await?;
    let r = files_in(ctx, &mut conn, &sbx, sizes).await;
    ctx.kill(&mut conn, &sbx.id).await?;
    r
}

async fn files_in(
    ctx: &Ctx,
    conn: &mut Conn,
    sbx: &Sandbox,
    sizes: &[(u64, usize)],
) -> Result<FilesSection, BenchError> {
    let agents = ctx.agent_pids(&sbx.id);
    let rss = |p: &[i32]| {
        p.iter()
            .filter_map(|p| procfs::proc_mem(*p))
            .map(|m| m.rss)
            .sum::<u64>()
    };
    let mut transfers = Vec::new();
    for &(size, runs) in sizes {
        let path = format!("/home/user/bench-{size}.bin");
        // Warm-up (and the file for the first download).
        upload(conn, sbx, &path, size).await?;
        let daemon_before = rss(&[ctx.daemon.pid]);
        let agent_before = rss(&agents);
        let sampler = RssSampler::start(ctx.daemon.pid, agents.clone());
        let mut up = Vec::new();
        let mut down = Vec::new();
        let r = async {
            for _ in 0..runs {
                let t0 = Instant::now();
                within(REQUEST_LIMIT, "upload", upload(conn, sbx, &path, size)).await?;
                up.push(mb_per_s(size, t0.elapsed()));
                let t0 = Instant::now();
                let n = within(REQUEST_LIMIT, "download", download(conn, sbx, &path)).await?;
                down.push(mb_per_s(size, t0.elapsed()));
                if n != size {
                    return Err(BenchError::Check(format!("downloaded {n} of {size} bytes")));
                }
            }
            Ok(())
        }
        .await;
        let (daemon_peak, agent_peak) = sampler.finish().await;
        r?;
        unary(
            conn,
            sbx,
            "filesystem.Filesystem/Remove",
            &serde_json::json!({"path": path}),
        )
        .await?;
        transfers.push(Transfer {
            size_bytes: size,
            upload: summary(&up, "MB/s", "upload")?,
            download: summary(&down, "MB/s", "download")?,
            daemon_peak_rss_mib: daemon_peak as f64 / MIB,
            agent_peak_rss_mib: agent_peak as f64 / MIB,
            daemon_rss_before_mib: daemon_before as f64 / MIB,
            agent_rss_before_mib: agent_before as f64 / MIB,
        });
    }
    Ok(FilesSection {
        transfers,
        note: None,
    })
}

/// Create + `/bin/true` + kill, by several workers, for `cycle_seconds`.
pub async fn cycle(ctx: &Ctx) -> Result<CycleSection, BenchError> {
    let workers = ctx.cfg.cycle_concurrency.clamp(1, ctx.cfg.max_sandboxes);
    let deadline = Instant::now() + Duration::from_secs_f64(ctx.cfg.cycle_seconds);
    let t0 = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..workers {
        conns.push(ctx.conn().await?);
    }
    let truth = start_direct("/bin/true", &[]);
    let results = futures_join(conns.into_iter().map(|mut conn| {
        let truth = &truth;
        async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let c0 = Instant::now();
                let (s, _) = ctx.create(&mut conn, None).await?;
                let r = within(REQUEST_LIMIT, "Process.Start", run_process(&mut conn, &s, truth)).await;
                ctx.kill(&mut conn, &s.id).await?;
                let r = r?;
                if r.exit_code != 0 {
                    return Err(BenchError::Check(format!("/bin/true exited {}", r.exit_code)));
                }
                lat.push(c0.elapsed());
            }
            Ok::<_, BenchError>(lat)
        }
    }))
    .await;
    let elapsed = t0.elapsed();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok(CycleSection {
        seconds: elapsed.as_secs_f64(),
        concurrency: workers,
        cycles: all.len(),
        cycles_per_s: all.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: summary_ms(&all, "cycle")?,
    })
}

fn host_used() -> Option<u64> {
    Some(procfs::meminfo("MemTotal")?.saturating_sub(procfs::meminfo("MemAvailable")?))
}

/// Memory of `density` idle sandboxes.
pub async fn density(ctx: &Ctx) -> Result<DensitySection, BenchError> {
    let n = ctx.cfg.density.min(ctx.cfg.max_sandboxes).max(1);
    let mut conn = ctx.conn().await?;
    // One create first so the daemon's per-sandbox structures and the helper exist.
    let (w, _) = ctx.create(&mut conn, None).await?;
    ctx.kill(&mut conn, &w.id).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let daemon_before = procfs::proc_mem(ctx.daemon.pid).map(|m| m.rss).unwrap_or(0);
    let used_before = host_used().unwrap_or(0);
    let slab_before = procfs::meminfo("SUnreclaim").unwrap_or(0);
    let mut ids = Vec::with_capacity(n);
    let r = async {
        for _ in 0..n {
            let (s, _) = ctx.create(&mut conn, None).await?;
            ids.push(s.id);
        }
        tokio::time::sleep(Duration::from_secs(if ctx.cfg.quick { 1 } else { 3 })).await;
        measure_density(ctx, &ids, n, daemon_before, used_before, slab_before)
    }
    .await;
    for id in &ids {
        ctx.kill(&mut conn, id).await?;
    }
    r
}

fn measure_density(
    ctx: &Ctx,
    ids: &[String],
    n: usize,
    daemon_before: u64,
    used_before: u64,
    slab_before: u64,
) -> Result<DensitySection, BenchError> {
    let daemon_after = procfs::proc_mem(ctx.daemon.pid).map(|m| m.rss).unwrap_or(0);
    let used_after = host_used().unwrap_or(0);
    let slab_after = procfs::meminfo("SUnreclaim").unwrap_or(0);
    let (Some(cg), Some(root)) = (&ctx.cgroups, ctx.root()) else {
        return Err(BenchError::Check(
            "the daemon's sandbox cgroups were not found under the memory hierarchy".into(),
        ));
    };
    let mut charge = Vec::new();
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for id in ids {
        let dir = cg.sandbox_dir(&root, id);
        let usage = cg
            .usage(&dir)
            .ok_or_else(|| BenchError::Check(format!("no memory usage file in {}", dir.display())))?;
        charge.push(usage as f64 / MIB);
        let pids = cg.pids_below(&dir);
        if pids.is_empty() {
            return Err(BenchError::Check(format!("no processes in {}", dir.display())));
        }
        let (r, p) = pids
            .iter()
            .filter_map(|p| procfs::rss_pss(*p))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        rss.push(r as f64 / MIB);
        pss.push(p as f64 / MIB);
    }
    let per = |after: u64, before: u64| (after as f64 - before as f64) / MIB / n as f64;
    let cgroup_charge = summary(&charge, "MiB", "cgroup charge")?;
    let daemon_per = per(daemon_after, daemon_before);
    let host_per = per(used_after, used_before);
    let estimate = cgroup_charge.p50 + daemon_per.max(0.0);
    let budget = ctx.cfg.budget_gib * 1024.0;
    Ok(DensitySection {
        sandboxes: n,
        cgroup_charge,
        agent_rss: summary(&rss, "MiB", "agent RSS")?,
        agent_pss: summary(&pss, "MiB", "agent PSS")?,
        daemon_rss_per_sandbox_mib: daemon_per,
        host_used_per_sandbox_mib: host_per,
        slab_unreclaimable_per_sandbox_mib: per(slab_after, slab_before),
        estimate_per_sandbox_mib: estimate,
        budget_gib: ctx.cfg.budget_gib,
        sandboxes_in_budget: (budget / estimate.max(1e-6)) as u64,
        sandboxes_in_budget_by_host: (host_per > 0.0).then(|| (budget / host_per) as u64),
    })
}

/// The `serve` arguments that enable a warm pool: given ones, else a `--…pool…` flag found in
/// `serve --help` (with `pool_size` as its value when it takes one).
pub fn pool_args_from_help(help: &str, pool_size: usize) -> Option<Vec<String>> {
    for line in help.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let flag = w.trim_end_matches(',');
            let flag = flag.split('=').next().unwrap_or(flag);
            if flag.starts_with("--") && flag.contains("pool") {
                let value = words
                    .get(i + 1)
                    .filter(|n| n.starts_with('<'))
                    .map(|n| n.to_string())
                    .or_else(|| w.split_once('=').map(|(_, v)| v.to_string()));
                return Some(match value {
                    // `--pool <TEMPLATE=MIN[:MAX[:IDLE_SECS]]>`: the base template, min = max.
                    Some(v) if v.contains("TEMPLATE=") => {
                        vec![flag.to_string(), format!("base={pool_size}:{pool_size}")]
                    }
                    Some(_) => vec![flag.to_string(), pool_size.to_string()],
                    None => vec![flag.to_string()],
                });
            }
        }
    }
    None
}

/// Creates from a warm pool, on a second daemon started with the pool enabled.
pub async fn warm_pool(cfg: &Config, scratch: &Path) -> Result<WarmPool, BenchError> {
    let args = match &cfg.pool_args {
        Some(a) => a.clone(),
        None => {
            let help = daemon::serve_help(&cfg.exe).await;
            match pool_args_from_help(&help, cfg.pool_size) {
                Some(a) => a,
                None => {
                    return Ok(WarmPool {
                        available: false,
                        reason: Some("`sandboxd serve --help` shows no pool option yet".into()),
                        serve_args: vec![],
                        latency: None,
                    });
                }
            }
        }
    };
    let mut serve = args.clone();
    serve.extend(["--max-sandboxes".to_string(), cfg.max_sandboxes.to_string()]);
    let d = Daemon::start(&cfg.exe, scratch, "data-pool", &serve).await?;
    let ctx = Ctx::new(d, cfg.clone());
    let r = async {
        let mut conn = ctx.conn().await?;
        let batch = cfg.pool_size.max(1);
        let mut lat = Vec::new();
        // Let the pool fill, then take at most a pool's worth per round.
        tokio::time::sleep(Duration::from_secs(2)).await;
        while lat.len() < cfg.runs.pool {
            for _ in 0..batch.min(cfg.runs.pool - lat.len()) {
                let (s, d) = ctx.create(&mut conn, None).await?;
                lat.push(d);
                ctx.kill(&mut conn, &s.id).await?;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        summary_ms(&lat, "warm pool create")
    }
    .await;
    let cleanup = finish_daemon(ctx, cfg.keep).await;
    let latency = r?;
    if let Some(e) = cleanup.first() {
        return Err(BenchError::Daemon(e.clone()));
    }
    Ok(WarmPool {
        available: true,
        reason: None,
        serve_args: args,
        latency: Some(latency),
    })
}

/// Sequential creates (each killed before the next) on a daemon started with `--no-network`:
/// the same-run baseline of what a sandbox's network link costs (`docs/network.md`).
pub async fn no_network_creates(cfg: &Config, scratch: &Path) -> Result<Summary, BenchError> {
    let serve = vec![
        "--no-network".to_string(),
        "--max-sandboxes".to_string(),
        cfg.max_sandboxes.to_string(),
    ];
    let d = Daemon::start(&cfg.exe, scratch, "data-no-network", &serve).await?;
    let ctx = Ctx::new(d, cfg.clone());
    let r = async {
        let mut conn = ctx.conn().await?;
        let mut lat = Vec::with_capacity(cfg.runs.create);
        for _ in 0..cfg.runs.create.max(1) {
            let (s, d) = ctx.create(&mut conn, None).await?;
            lat.push(d);
            ctx.kill(&mut conn, &s.id).await?;
        }
        summary_ms(&lat, "create without network")
    }
    .await;
    let cleanup = finish_daemon(ctx, cfg.keep).await;
    let s = r?;
    if let Some(e) = cleanup.first() {
        return Err(BenchError::Daemon(e.clone()));
    }
    Ok(s)
}

/// Image pull throughput (`image_pull.rs`): a daemon of its own whose `docker.io` mirror is a
/// registry on loopback. `None` when `docker-registry` is not installed.
pub async fn image_pull(
    cfg: &Config,
    scratch: &Path,
) -> Result<Option<crate::image_pull::PullSection>, BenchError> {
    let dir = scratch.join("registry");
    let Some(registry) = crate::image_pull::LocalRegistry::start(&dir)? else {
        return Ok(None);
    };
    let serve = vec![
        "--registry-mirror".to_string(),
        format!("docker.io=http://{}", registry.addr),
        "--max-sandboxes".to_string(),
        cfg.max_sandboxes.to_string(),
    ];
    let d = Daemon::start(&cfg.exe, scratch, "data-pull", &serve).await?;
    let ctx = Ctx::new(d, cfg.clone());
    let r = crate::image_pull::pull(&ctx, registry.addr).await;
    let cleanup = finish_daemon(ctx, cfg.keep).await;
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
    let p = r?;
    if let Some(e) = cleanup.first() {
        return Err(BenchError::Daemon(e.clone()));
    }
    Ok(Some(p))
}

/// Kills the sandboxes, stops the daemon, removes its cgroup root and (unless `keep`) its data
/// dir. Returns what went wrong.
async fn finish_daemon(ctx: Ctx, keep: bool) -> Vec<String> {
    let mut errors = ctx.kill_all().await;
    let root = ctx.root();
    let cgroups = ctx.cgroups.clone();
    let data_dir = ctx.daemon.data_dir.clone();
    if let Err(e) = ctx.daemon.stop().await {
        errors.push(e.to_string());
    }
    if let (Some(cg), Some(root)) = (cgroups, root) {
        // A killed agent can keep its group busy for a moment under load: retry for 5 s.
        let mut left = cg.remove_root(&root);
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = cg.remove_root(&root);
        }
        for l in left {
            errors.push(format!("clean-up: cgroup {} could not be removed", l.display()));
        }
    }
    if !keep && let Err(e) = remove_data_dir(&data_dir) {
        errors.push(format!("clean-up: removing {}: {e}", data_dir.display()));
    }
    errors
}

fn remove_data_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn make_scratch(parent: &Path) -> Result<PathBuf, BenchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = parent.join(format!("sandboxd-bench-{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the whole bench; never panics on a failed measurement: failures go to `errors`.
pub async fn run(cfg: Config) -> Report {
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    let scratch = match make_scratch(&cfg.work_dir) {
        Ok(s) => s,
        Err(e) => {
            errors.push(format!("scratch dir: {e}"));
            cfg.work_dir.join("sandboxd-bench-unavailable")
        }
    };

    // The big file must fit on the scratch disk three times over (upload, upper dir, host).
    let mut cfg = cfg;
    if let Some(free) = free_bytes(&scratch)
        && free < cfg.big_file * 3 + (1 << 30)
    {
        let fit = ((free.saturating_sub(1 << 30)) / 3) & !((1 << 20) - 1);
        notes.push(format!(
            "only {} MiB free on {}: the big /files transfer shrinks from {} to {} MiB",
            free >> 20,
            scratch.display(),
            cfg.big_file >> 20,
            fit >> 20
        ));
        cfg.big_file = fit.max(1 << 20);
    }
    let sizes = [
        (1u64 << 20, cfg.runs.files_small),
        (cfg.big_file, cfg.runs.files_big),
    ];

    // Process baselines first; host I/O baselines last, so that their page-cache writeback
    // never overlaps the sandbox measurements.
    let b = cfg.runs.baseline;
    let scr = scratch.clone();
    let baselines = tokio::task::spawn_blocking(move || {
        let bwrap = baseline::bwrap(3, b);
        let fork_exec = baseline::measure_command("fork+exec /bin/true", &["/bin/true"], 3, b);
        // A clean login environment like a sandbox user's (an empty home, no host dotfiles).
        let home = scr.join("host-home");
        let _ = std::fs::create_dir_all(&home);
        let home_env = format!("HOME={}", home.display());
        let host_bash = baseline::measure_command_env(
            "host bash -l -c 'echo hi' (fork+exec, empty HOME)",
            &["/bin/bash", "-l", "-c", "echo hi >/dev/null"],
            Some(&[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                &home_env,
                "USER=user",
                "LOGNAME=user",
            ]),
            3,
            b,
        );
        Baselines {
            bwrap,
            fork_exec,
            host_bash,
            host_listdir: None,
            host_files: Vec::new(),
        }
    })
    .await;
    let baselines = match baselines {
        Ok(b) => b,
        Err(e) => {
            errors.push(format!("baselines: {e}"));
            let none = |n: &str| Baseline {
                name: n.into(),
                command: String::new(),
                available: false,
                skip_reason: Some("failed".into()),
                latency: None,
            };
            Baselines {
                bwrap: none("bwrap"),
                fork_exec: none("fork+exec"),
                host_bash: none("host bash"),
                host_listdir: None,
                host_files: vec![],
            }
        }
    };
    if !baselines.bwrap.available {
        notes.push(format!(
            "bwrap baseline skipped: {}",
            baselines.bwrap.skip_reason.as_deref().unwrap_or("unavailable")
        ));
    }

    let serve_args = vec!["--max-sandboxes".to_string(), cfg.max_sandboxes.to_string()];
    let mut report = Report {
        schema: SCHEMA,
        mode: if cfg.quick { "quick" } else { "full" }.into(),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_s: 0.0,
        machine: Machine::detect(),
        build: Build::current(),
        daemon: DaemonInfo {
            serve_args: serve_args.clone(),
            max_sandboxes: cfg.max_sandboxes,
        },
        baselines,
        create: None,
        create_warm_pool: WarmPool {
            available: false,
            reason: Some("not measured".into()),
            serve_args: vec![],
            latency: None,
        },
        create_no_network: None,
        create_image_template: None,
        image_pull: None,
        egress: None,
        exec: None,
        cycle: None,
        density: None,
        files: None,
        listdir: None,
        watch: None,
        notes,
        errors,
    };

    match Daemon::start(&cfg.exe, &scratch, "data", &serve_args).await {
        Err(e) => report.errors.push(e.to_string()),
        Ok(d) => {
            let ctx = Ctx::new(d, cfg.clone());
            let body = measure_all(&ctx, &sizes, &mut report);
            tokio::select! {
                _ = body => {}
                _ = tokio::signal::ctrl_c() => report.errors.push("interrupted".into()),
            }
            let cleanup = finish_daemon(ctx, cfg.keep).await;
            report.errors.extend(cleanup);
            if cfg.wants("create") {
                match no_network_creates(&cfg, &scratch).await {
                    Ok(s) => report.create_no_network = Some(s),
                    Err(e) => report.errors.push(format!("create without network: {e}")),
                }
                match image_pull(&cfg, &scratch).await {
                    Ok(Some(p)) => report.image_pull = Some(p),
                    Ok(None) => report
                        .notes
                        .push("image pull not measured: docker-registry is not installed".into()),
                    Err(e) => report.errors.push(format!("image pull: {e}")),
                }
            }
            if cfg.wants("pool") {
                match warm_pool(&cfg, &scratch).await {
                    Ok(p) => report.create_warm_pool = p,
                    Err(e) => {
                        report.create_warm_pool.reason = Some(format!("failed: {e}"));
                        report.errors.push(format!("warm pool: {e}"));
                    }
                }
            }
        }
    }
    let (scr, ld, big) = (scratch.clone(), cfg.listdir_entries, cfg.big_file);
    let (want_ld, want_files) = (cfg.wants("listdir"), cfg.wants("files"));
    let host_io = tokio::task::spawn_blocking(move || {
        let host_listdir = want_ld
            .then(|| baseline::host_listdir(&scr, ld, 5).ok())
            .flatten();
        let mut host_files = Vec::new();
        for (size, runs) in [(1u64 << 20, 10usize), (big, 2)] {
            if want_files && let Ok(h) = baseline::host_file(&scr, size, runs) {
                host_files.push(h);
            }
        }
        // SAFETY: sync has no arguments and no memory effects.
        unsafe { libc::sync() };
        (host_listdir, host_files)
    })
    .await;
    match host_io {
        Ok((l, f)) => {
            report.baselines.host_listdir = l;
            report.baselines.host_files = f;
        }
        Err(e) => report.errors.push(format!("host I/O baselines: {e}")),
    }
    if cfg.keep {
        report.notes.push(format!("kept {}", scratch.display()));
    } else if let Err(e) = remove_data_dir(&scratch) {
        report
            .errors
            .push(format!("clean-up: removing {}: {e}", scratch.display()));
    }
    report.duration_s = t0.elapsed().as_secs_f64();
    report
}

async fn measure_all(ctx: &Ctx, sizes: &[(u64, usize)], report: &mut Report) {
    let want = |s: &str| ctx.cfg.wants(s);
    if want("create") {
        match create(ctx).await {
            Ok(c) => report.create = Some(c),
            Err(e) => report.errors.push(format!("create: {e}")),
        }
        match crate::image_template::image_template(ctx).await {
            Ok(c) => report.create_image_template = Some(c),
            Err(e) => report.errors.push(format!("image template: {e}")),
        }
    }
    if want("egress") {
        match crate::egress::egress(ctx).await {
            Ok(Some(e)) => report.egress = Some(e),
            Ok(None) => report
                .notes
                .push("egress throughput not measured: iperf3 or ip is not installed".into()),
            Err(e) => report.errors.push(format!("egress throughput: {e}")),
        }
    }
    if want("exec") || want("listdir") || want("watch") {
        let warm = async {
            let mut conn = ctx.conn().await?;
            Ok::<_, BenchError>(ctx.create(&mut conn, None).await?.0)
        }
        .await;
        match warm {
            Ok(sbx) => {
                if want("exec") {
                    match exec(ctx, &sbx).await {
                        Ok(e) => report.exec = Some(e),
                        Err(e) => report.errors.push(format!("exec: {e}")),
                    }
                }
                if want("listdir") {
                    match listdir(ctx, &sbx).await {
                        Ok(l) => report.listdir = Some(l),
                        Err(e) => report.errors.push(format!("listdir: {e}")),
                    }
                }
                if want("watch") {
                    match watch(ctx, &sbx).await {
                        Ok(w) => report.watch = Some(w),
                        Err(e) => report.errors.push(format!("watch: {e}")),
                    }
                }
                if let Ok(mut conn) = ctx.conn().await
                    && let Err(e) = ctx.kill(&mut conn, &sbx.id).await
                {
                    report.errors.push(format!("kill: {e}"));
                }
            }
            Err(e) => report.errors.push(format!("create of the warm sandbox: {e}")),
        }
    }
    if want("files") {
        match files(ctx, sizes).await {
            Ok(f) => report.files = Some(f),
            Err(e) => report.errors.push(format!("files: {e}")),
        }
        // Write back what the transfers left dirty before the next measurements.
        let _ = tokio::task::spawn_blocking(|| {
            // SAFETY: sync has no arguments and no memory effects.
            unsafe { libc::sync() }
        })
        .await;
    }
    if want("cycle") {
        match cycle(ctx).await {
            Ok(c) => report.cycle = Some(c),
            Err(e) => report.errors.push(format!("cycle: {e}")),
        }
    }
    if want("density") {
        match density(ctx).await {
            Ok(d) => report.density = Some(d),
            Err(e) => report.errors.push(format!("density: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_flag_from_help() {
        let help = "Options:\n      --listen <LISTEN>   Address\n      --max-sandboxes <N>  Max\n";
        assert_eq!(pool_args_from_help(help, 8), None);
        let with = "      --warm-pool <WARM_POOL>  Sandboxes kept booted per template [default: 0]\n";
        assert_eq!(
            pool_args_from_help(with, 8),
            Some(vec!["--warm-pool".to_string(), "8".to_string()])
        );
        let real =
            "      --pool <TEMPLATE=MIN[:MAX[:IDLE_SECS]]>\n          Warm pool of booted, idle sandboxes\n";
        assert_eq!(
            pool_args_from_help(real, 8),
            Some(vec!["--pool".to_string(), "base=8:8".to_string()])
        );
        let switch = "      --pool   Keep a warm pool\n";
        assert_eq!(pool_args_from_help(switch, 8), Some(vec!["--pool".to_string()]));
        let eq = "      --pool-size=<N>   size\n";
        assert_eq!(
            pool_args_from_help(eq, 3),
            Some(vec!["--pool-size".to_string(), "3".to_string()])
        );
    }

    #[tokio::test]
    async fn join_keeps_order() {
        let v = futures_join((0..5u64).map(|i| async move {
            tokio::time::sleep(Duration::from_millis(10 * (5 - i))).await;
            i
        }))
        .await;
        assert_eq!(v, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn scratch_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = make_scratch(tmp.path()).unwrap();
        assert!(d.is_dir());
        assert!(
            d.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("sandboxd-bench-")
        );
        remove_data_dir(&d).unwrap();
        remove_data_dir(&d).unwrap();
        assert!(free_bytes(tmp.path()).unwrap() > 0);
    }
}
