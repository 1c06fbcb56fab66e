//! The sandbox's structured log (`docs/observability.md`): a bounded, in-memory list of what
//! happened to the sandbox's processes, kept by the agent and served on the internal control
//! socket (`GET /logs`); the daemon serves it as `GET /sandboxes/{id}/logs` and
//! `GET /v2/sandboxes/{id}/logs`.
//!
//! Recorded: process started (pid, command, user), exited (exit code or signal, runtime, and
//! why a SIGKILL came: the Start deadline, a client's `SendSignal`, or unexplained), start
//! failures, and out-of-memory kills. The agent cannot open its cgroup's files from inside
//! (its counter fds only explain a process's own end, `work_counters.rs`); the daemon reads the
//! OOM counter on the host and reports increases (`POST /logs/oom`), and the report names the
//! unexplained SIGKILL exits it accounts for.
//!
//! Timestamps are Unix milliseconds and strictly increasing (a burst of events in one
//! millisecond gets consecutive values), so a cursor of `last timestamp ± 1` pages exactly.

use crate::pid1::ExitStatus;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Entries kept (oldest dropped first).
pub const MAX_ENTRIES: usize = 10_000;
/// Longest message or field value kept, in bytes.
pub const MAX_TEXT: usize = 1024;
/// Largest page a query returns.
pub const MAX_LIMIT: usize = 1000;
/// Unexplained SIGKILL exits older than this are not attributed to a later OOM report.
const OOM_MATCH_WINDOW_MS: i64 = 60_000;

/// Severity, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// Parse `debug|info|warn|error` (also `warning`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Some(Self::Debug),
            "info" => Some(Self::Info),
            "warn" | "warning" => Some(Self::Warn),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix milliseconds.
    pub timestamp: i64,
    pub level: Level,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

/// Query order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first, from `cursor` on.
    #[default]
    Forward,
    /// Newest first, from `cursor` back.
    Backward,
}

/// What to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Inclusive bound in ms: forward returns `ts >= cursor`, backward `ts <= cursor`.
    pub cursor: Option<i64>,
    pub limit: usize,
    pub direction: Direction,
    /// Minimum level.
    pub level: Option<Level>,
    /// Case-insensitive substring of the message.
    pub search: Option<String>,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            cursor: None,
            limit: MAX_LIMIT,
            direction: Direction::Forward,
            level: None,
            search: None,
        }
    }
}

impl Query {
    /// Parse `cursor`, `limit`, `direction`, `level`, `search` from a query string (already
    /// split into decoded pairs). Unknown keys are ignored; bad values are an error.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut q = Query::default();
        for (k, v) in pairs {
            match k {
                "cursor" => q.cursor = Some(v.parse().map_err(|_| format!("invalid cursor '{v}'"))?),
                "limit" => {
                    let n: usize = v.parse().map_err(|_| format!("invalid limit '{v}'"))?;
                    if n > MAX_LIMIT {
                        return Err(format!("limit {n} is above the maximum of {MAX_LIMIT}"));
                    }
                    q.limit = n;
                }
                "direction" => {
                    q.direction = match v {
                        "forward" => Direction::Forward,
                        "backward" => Direction::Backward,
                        _ => return Err(format!("invalid direction '{v}': forward or backward")),
                    }
                }
                "level" => {
                    q.level = Some(
                        Level::parse(v)
                            .ok_or_else(|| format!("invalid level '{v}': debug, info, warn or error"))?,
                    )
                }
                "search" if !v.is_empty() => q.search = Some(v.to_string()),
                _ => {}
            }
        }
        Ok(q)
    }
}

#[derive(Debug)]
struct Inner {
    entries: VecDeque<Entry>,
    last_ts: i64,
    cap: usize,
    /// Pids a client sent SIGKILL/SIGTERM to (so their exit is not "unexplained").
    signaled: HashSet<u32>,
    /// Unexplained SIGKILL exits not yet attributed: (ts, pid, command).
    unexplained: VecDeque<(i64, u32, String)>,
}

/// The log of one sandbox. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct SandboxLog {
    inner: Arc<Mutex<Inner>>,
}

impl Default for SandboxLog {
    fn default() -> Self {
        Self::with_capacity(MAX_ENTRIES)
    }
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// `cmd arg1 arg2`, arguments with spaces or quotes single-quoted, clipped.
pub fn command_line(cmd: &str, args: &[String]) -> String {
    let mut s = String::from(cmd);
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push('\'');
            s.push_str(&a.replace('\'', r"'\''"));
            s.push('\'');
        } else {
            s.push_str(a);
        }
        if s.len() > MAX_TEXT {
            break;
        }
    }
    clip(s)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn fields<const N: usize>(kv: [(&str, String); N]) -> BTreeMap<String, String> {
    kv.into_iter().map(|(k, v)| (k.to_string(), clip(v))).collect()
}

impl SandboxLog {
    /// A log keeping at most `cap` entries.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: VecDeque::new(),
                last_ts: 0,
                cap: cap.max(1),
                signaled: HashSet::new(),
                unexplained: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_locked(g: &mut Inner, level: Level, message: String, fields: BTreeMap<String, String>) -> i64 {
        let ts = now_ms().max(g.last_ts + 1);
        g.last_ts = ts;
        if g.entries.len() >= g.cap {
            g.entries.pop_front();
        }
        g.entries.push_back(Entry {
            timestamp: ts,
            level,
            message: clip(message),
            fields,
        });
        ts
    }

    /// Append an entry.
    pub fn push(&self, level: Level, message: impl Into<String>, fields: BTreeMap<String, String>) {
        let mut g = self.lock();
        Self::push_locked(&mut g, level, message.into(), fields);
    }

    /// A process was started.
    pub fn process_started(&self, pid: u32, cmdline: &str, user: &str, tag: Option<&str>, pty: bool) {
        let mut f = fields([
            ("pid", pid.to_string()),
            ("cmd", cmdline.to_string()),
            ("user", user.to_string()),
            ("pty", pty.to_string()),
        ]);
        if let Some(t) = tag {
            f.insert("tag".into(), clip(t.to_string()));
        }
        self.lock().signaled.remove(&pid);
        self.push(Level::Info, format!("process {pid} started: {cmdline}"), f);
    }

    /// Starting a process failed.
    pub fn process_start_failed(&self, cmdline: &str, user: &str, error: &str) {
        self.push(
            Level::Error,
            format!("process start failed: {cmdline}: {error}"),
            fields([
                ("cmd", cmdline.to_string()),
                ("user", user.to_string()),
                ("error", error.to_string()),
            ]),
        );
    }

    /// A client asked to signal a process (its exit by that signal is then not unexplained).
    pub fn signal_requested(&self, pid: u32, signal: i32) {
        self.lock().signaled.insert(pid);
        self.push(
            Level::Debug,
            format!("signal {signal} sent to process {pid} on request"),
            fields([("pid", pid.to_string()), ("signal", signal.to_string())]),
        );
    }

    /// A process ended. `deadline` is true when the agent killed it at its Start deadline.
    pub fn process_exited(&self, pid: u32, cmdline: &str, status: ExitStatus, deadline: bool, ran: Duration) {
        let mut g = self.lock();
        let requested = g.signaled.remove(&pid);
        let mut f = fields([
            ("pid", pid.to_string()),
            ("cmd", cmdline.to_string()),
            ("durationMs", ran.as_millis().to_string()),
        ]);
        let (level, message, reason) = match status {
            ExitStatus::Exited(code) => {
                f.insert("exitCode".into(), code.to_string());
                let level = if code == 0 { Level::Info } else { Level::Warn };
                (
                    level,
                    format!("process {pid} exited with code {code}: {cmdline}"),
                    "exit",
                )
            }
            ExitStatus::Signaled { signal, .. } => {
                f.insert("exitCode".into(), "-1".into());
                f.insert("signal".into(), signal.to_string());
                let name = crate::process::status::signal_name(signal);
                if signal == libc::SIGKILL && deadline {
                    (
                        Level::Warn,
                        format!("process {pid} killed at its deadline: {cmdline}"),
                        "deadline",
                    )
                } else if requested {
                    (
                        Level::Info,
                        format!("process {pid} ended by signal {signal} ({name}) on request: {cmdline}"),
                        "signal",
                    )
                } else if signal == libc::SIGKILL {
                    (
                        Level::Warn,
                        format!(
                            "process {pid} was killed (SIGKILL) by a limit or another process: {cmdline}"
                        ),
                        "sigkill",
                    )
                } else {
                    (
                        Level::Warn,
                        format!("process {pid} ended by signal {signal} ({name}): {cmdline}"),
                        "signal",
                    )
                }
            }
        };
        f.insert("reason".into(), reason.into());
        let ts = Self::push_locked(&mut g, level, message, f);
        if reason == "sigkill" {
            g.unexplained.push_back((ts, pid, cmdline.to_string()));
            while g.unexplained.len() > 64 {
                g.unexplained.pop_front();
            }
        }
    }

    /// The host saw `count` new OOM kills in the sandbox's cgroup.
    pub fn oom_reported(&self, count: u64, memory_limit: u64) {
        let mut g = self.lock();
        let cutoff = now_ms() - OOM_MATCH_WINDOW_MS;
        g.unexplained.retain(|(ts, _, _)| *ts >= cutoff);
        let take = (count as usize).min(g.unexplained.len());
        let start = g.unexplained.len() - take;
        let matched: Vec<_> = g.unexplained.drain(start..).collect();
        let mut f = fields([
            ("reason", "oom".to_string()),
            ("oomKills", count.to_string()),
            ("memoryLimitBytes", memory_limit.to_string()),
        ]);
        if !matched.is_empty() {
            let pids: Vec<String> = matched.iter().map(|(_, p, _)| p.to_string()).collect();
            f.insert("pids".into(), pids.join(","));
            let cmds: Vec<&str> = matched.iter().map(|(_, _, c)| c.as_str()).collect();
            f.insert("cmds".into(), clip(cmds.join("; ")));
        }
        let who = if matched.is_empty() {
            String::new()
        } else {
            let pids: Vec<String> = matched.iter().map(|(_, p, _)| p.to_string()).collect();
            format!(" (process {})", pids.join(", "))
        };
        let msg = format!(
            "out of memory: the kernel killed {count} process(es) at the sandbox's memory limit of {} MiB{who}",
            memory_limit >> 20
        );
        Self::push_locked(&mut g, Level::Error, msg, f);
    }

    /// Entries matching `q`, in the query's direction.
    pub fn query(&self, q: &Query) -> Vec<Entry> {
        let g = self.lock();
        let needle = q.search.as_ref().map(|s| s.to_lowercase());
        let keep = |e: &&Entry| {
            q.level.is_none_or(|l| e.level >= l)
                && needle
                    .as_ref()
                    .is_none_or(|n| e.message.to_lowercase().contains(n.as_str()))
        };
        let limit = q.limit.min(MAX_LIMIT);
        match q.direction {
            Direction::Forward => {
                let from = q.cursor.unwrap_or(i64::MIN);
                let start = g.entries.partition_point(|e| e.timestamp < from);
                g.entries
                    .range(start..)
                    .filter(keep)
                    .take(limit)
                    .cloned()
                    .collect()
            }
            Direction::Backward => {
                let to = q.cursor.unwrap_or(i64::MAX);
                let end = g.entries.partition_point(|e| e.timestamp <= to);
                g.entries
                    .range(..end)
                    .rev()
                    .filter(keep)
                    .take(limit)
                    .cloned()
                    .collect()
            }
        }
    }

    /// Number of entries kept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `GET /logs?cursor=&limit=&direction=&level=&search=` on the control socket:
/// `{"entries":[{"timestamp":<ms>,"level","message","fields"}]}`; 400 on bad parameters.
pub async fn get_logs(
    axum::extract::State(state): axum::extract::State<Arc<crate::state::AgentState>>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let raw = uri.query().unwrap_or("");
    let pairs: Vec<(String, String)> = url_pairs(raw);
    let q = match Query::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(q) => q,
        Err(m) => return crate::auth::json_error(axum::http::StatusCode::BAD_REQUEST, &m),
    };
    let entries = state.processes.log.query(&q);
    axum::Json(serde_json::json!({ "entries": entries })).into_response()
}

/// `POST /logs/oom` on the control socket: `{"count": n, "memoryLimitBytes": b}` from the
/// daemon when the sandbox's OOM-kill counter grew.
pub async fn post_oom(
    axum::extract::State(state): axum::extract::State<Arc<crate::state::AgentState>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Oom {
        count: u64,
        memory_limit_bytes: u64,
    }
    match serde_json::from_slice::<Oom>(&body) {
        Ok(o) if o.count > 0 => {
            state.processes.log.oom_reported(o.count, o.memory_limit_bytes);
            axum::http::StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => crate::auth::json_error(axum::http::StatusCode::BAD_REQUEST, "count must be positive"),
        Err(e) => crate::auth::json_error(axum::http::StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    }
}

/// Decode `a=b&c=d` (percent and `+` decoding).
fn url_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Query {
        Query::default()
    }

    #[test]
    fn records_process_lifecycle_and_reasons() {
        let log = SandboxLog::default();
        log.process_started(10, "sleep 100", "user", Some("t1"), false);
        log.process_exited(
            10,
            "sleep 100",
            ExitStatus::Exited(0),
            false,
            Duration::from_millis(5),
        );
        log.process_exited(11, "false", ExitStatus::Exited(1), false, Duration::ZERO);
        let killed = ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        };
        log.process_exited(12, "sleep 9", killed, true, Duration::from_secs(1));
        log.signal_requested(13, 9);
        log.process_exited(13, "yes", killed, false, Duration::ZERO);
        log.process_exited(14, "python3 -c hog", killed, false, Duration::ZERO);
        log.process_start_failed("nope", "user", "No such file or directory");
        let all = log.query(&q());
        let reasons: Vec<_> = all
            .iter()
            .filter_map(|e| e.fields.get("reason").cloned())
            .collect();
        assert_eq!(reasons, ["exit", "exit", "deadline", "signal", "sigkill"]);
        assert_eq!(all[0].fields["pid"], "10");
        assert_eq!(all[0].fields["user"], "user");
        assert_eq!(all[0].fields["tag"], "t1");
        assert_eq!(all[1].fields["exitCode"], "0");
        assert_eq!(all[2].level, Level::Warn);
        assert_eq!(all.last().unwrap().level, Level::Error);
        // strictly increasing timestamps
        assert!(all.windows(2).all(|w| w[0].timestamp < w[1].timestamp));

        log.oom_reported(1, 256 << 20);
        let oom = log.query(&Query {
            direction: Direction::Backward,
            limit: 1,
            ..q()
        });
        assert_eq!(oom[0].fields["reason"], "oom");
        assert_eq!(oom[0].fields["pids"], "14");
        assert!(oom[0].message.contains("256 MiB"), "{}", oom[0].message);
        // the kill is accounted for: a second report names no process
        log.oom_reported(1, 256 << 20);
        let last = &log.query(&Query {
            direction: Direction::Backward,
            limit: 1,
            ..q()
        })[0];
        assert!(!last.fields.contains_key("pids"));
    }

    #[test]
    fn paging_filters_and_bounds() {
        let log = SandboxLog::with_capacity(5);
        for i in 0..8u32 {
            log.process_exited(
                i,
                &format!("cmd{i}"),
                ExitStatus::Exited(i as i32 % 2),
                false,
                Duration::ZERO,
            );
        }
        let all = log.query(&q());
        assert_eq!(all.len(), 5, "bounded");
        assert_eq!(all[0].fields["pid"], "3");
        // forward paging with cursor = last + 1 visits each entry once
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = log.query(&Query {
                cursor,
                limit: 2,
                ..q()
            });
            if page.is_empty() {
                break;
            }
            cursor = Some(page.last().unwrap().timestamp + 1);
            seen.extend(page.into_iter().map(|e| e.fields["pid"].clone()));
        }
        assert_eq!(seen, ["3", "4", "5", "6", "7"]);
        // backward: newest first, cursor inclusive
        let back = log.query(&Query {
            cursor: Some(all[3].timestamp),
            limit: 2,
            direction: Direction::Backward,
            ..q()
        });
        let pids: Vec<_> = back.iter().map(|e| e.fields["pid"].as_str()).collect();
        assert_eq!(pids, ["6", "5"]);
        // level and search
        let warn = log.query(&Query {
            level: Some(Level::Warn),
            ..q()
        });
        assert!(warn.iter().all(|e| e.fields["exitCode"] == "1"), "{warn:?}");
        assert_eq!(warn.len(), 3);
        let s = log.query(&Query {
            search: Some("CMD5".into()),
            ..q()
        });
        assert_eq!(s.len(), 1);
        assert_eq!(log.query(&Query { limit: 0, ..q() }).len(), 0);
    }

    #[test]
    fn query_parsing() {
        let p = |s: &str| {
            let v = url_pairs(s);
            Query::from_pairs(v.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        };
        let qq = p("cursor=123&limit=10&direction=backward&level=WARN&search=a+b%21&x=y").unwrap();
        assert_eq!(qq.cursor, Some(123));
        assert_eq!(qq.limit, 10);
        assert_eq!(qq.direction, Direction::Backward);
        assert_eq!(qq.level, Some(Level::Warn));
        assert_eq!(qq.search.as_deref(), Some("a b!"));
        assert_eq!(p("").unwrap(), Query::default());
        for bad in ["cursor=x", "limit=1001", "limit=-1", "direction=up", "level=loud"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_text_is_clipped() {
        let args = vec!["x".repeat(5000), "it's".into()];
        let c = command_line("echo", &args);
        assert!(c.len() <= MAX_TEXT + 4, "{}", c.len());
        assert_eq!(
            command_line("sh", &["-c".into(), "echo 'hi'".into()]),
            r"sh -c 'echo '\''hi'\'''"
        );
    }

    #[tokio::test]
    async fn control_routes() {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let state = crate::state::AgentState::new(sandboxd_protocol::agent::AgentConfig::new("s1", "base"));
        state
            .processes
            .log
            .process_started(5, "sleep 1", "user", None, false);
        state.processes.log.process_exited(
            5,
            "sleep 1",
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            },
            false,
            Duration::ZERO,
        );
        let app = crate::control::router(state.clone());
        let call = |req: Request<Body>| {
            let app = app.clone();
            async move {
                let r = app.oneshot(req).await.unwrap();
                let status = r.status();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            }
        };
        let (st, _) = call(
            Request::post("/logs/oom")
                .body(Body::from(r#"{"count":1,"memoryLimitBytes":134217728}"#))
                .unwrap(),
        )
        .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, body) = call(
            Request::get("/logs?level=error&direction=backward")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let e = &v["entries"][0];
        assert_eq!(e["level"], "error");
        assert_eq!(e["fields"]["reason"], "oom");
        assert_eq!(e["fields"]["pids"], "5");
        assert!(e["timestamp"].is_i64());
        let (st, _) = call(Request::get("/logs?limit=5000").body(Body::empty()).unwrap()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let (st, _) = call(Request::post("/logs/oom").body(Body::from("{}")).unwrap()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
    }
}
