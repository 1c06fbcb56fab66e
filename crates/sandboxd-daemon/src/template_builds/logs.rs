//! Build logs: kept in memory for the most recent builds, bounded per build, and written to
//! `<data>/build-logs/<build>.jsonl` when a build ends, so they outlive the daemon (read back
//! when asked for a build no longer in memory).

use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Lines kept per build (the oldest are dropped, and a line says so).
const MAX_LINES: usize = 20_000;
/// Builds whose logs are kept.
const MAX_BUILDS: usize = 200;
/// Longest line kept.
const MAX_LINE: usize = 4096;
/// Log files kept on disk (the oldest go first).
const MAX_FILES: usize = 1000;

/// One log line of a build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// When it was written.
    pub timestamp: DateTime<Utc>,
    /// `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The text.
    pub message: String,
    /// The step it belongs to (`base`, `1`…, `finalize`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// What `GET /templates/{id}/builds/{build}/logs` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    /// Milliseconds since the epoch: forward, lines at or after it; backward, at or before it.
    pub cursor_ms: Option<i64>,
    /// Most lines answered.
    pub limit: usize,
    /// Newest first, from the cursor back.
    pub backward: bool,
    /// The lowest level answered (`debug` < `info` < `warn` < `error`).
    pub min_level: &'static str,
}

/// The order of a level (unknown levels count as `info`).
pub fn level_rank(level: &str) -> u8 {
    match level {
        "debug" => 0,
        "warn" => 2,
        "error" => 3,
        _ => 1,
    }
}

/// A line as written to disk.
#[derive(serde::Deserialize)]
struct StoredLine {
    timestamp: DateTime<Utc>,
    level: String,
    message: String,
    #[serde(default)]
    step: Option<String>,
}

impl From<StoredLine> for LogLine {
    fn from(l: StoredLine) -> Self {
        Self {
            timestamp: l.timestamp,
            level: match l.level.as_str() {
                "debug" => "debug",
                "warn" => "warn",
                "error" => "error",
                _ => "info",
            },
            message: l.message,
            step: l.step,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    lines: HashMap<String, Vec<LogLine>>,
    order: VecDeque<String>,
}

impl Inner {
    /// Makes room for one more build.
    fn admit(&mut self, build_id: &str) {
        self.order.push_back(build_id.to_string());
        while self.order.len() > MAX_BUILDS {
            if let Some(old) = self.order.pop_front() {
                self.lines.remove(&old);
            }
        }
    }
}

/// The logs of recent builds.
#[derive(Debug, Default)]
pub struct BuildLogs {
    inner: Mutex<Inner>,
    /// Where ended builds' logs are written (unset: memory only).
    dir: OnceLock<PathBuf>,
}

/// A build id usable as a file name.
fn file_name_ok(build_id: &str) -> bool {
    !build_id.is_empty()
        && build_id.len() <= 128
        && build_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl BuildLogs {
    /// Writes ended builds' logs under `dir` from now on (made 0700 if missing).
    pub fn keep_in(&self, dir: PathBuf) {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            tracing::warn!("build logs stay in memory only: {}: {e}", dir.display());
            return;
        }
        let _ = self.dir.set(dir);
    }

    fn path_of(&self, build_id: &str) -> Option<PathBuf> {
        let dir = self.dir.get()?;
        file_name_ok(build_id).then(|| dir.join(format!("{build_id}.jsonl")))
    }

    /// Writes a build's log to disk (at its end). Blocking.
    pub fn persist(&self, build_id: &str) {
        let Some(path) = self.path_of(build_id) else {
            return;
        };
        let lines = self.lock().lines.get(build_id).cloned().unwrap_or_default();
        let tmp = path.with_extension("jsonl.tmp");
        let r = (|| -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for l in &lines {
                serde_json::to_writer(&mut f, l)?;
                f.write_all(b"\n")?;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(build = %build_id, "writing the build log: {e}");
            return;
        }
        if let Some(dir) = path.parent() {
            prune(dir, MAX_FILES);
        }
    }

    /// A build's log from disk, into memory; `false` when there is none.
    fn load(&self, build_id: &str) -> bool {
        let Some(path) = self.path_of(build_id) else {
            return false;
        };
        let Ok(f) = std::fs::File::open(&path) else {
            return false;
        };
        let lines: Vec<LogLine> = std::io::BufReader::new(f)
            .lines()
            .take(MAX_LINES + 1)
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<StoredLine>(&l).ok())
            .map(LogLine::from)
            .collect();
        let mut g = self.lock();
        if !g.lines.contains_key(build_id) {
            g.admit(build_id);
            g.lines.insert(build_id.to_string(), lines);
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads a build's log from disk unless it is in memory.
    fn ensure(&self, build_id: &str) {
        let known = self.lock().lines.contains_key(build_id);
        if !known {
            self.load(build_id);
        }
    }

    /// Appends a line to a build's log.
    pub fn push(&self, build_id: &str, level: &'static str, step: Option<&str>, message: &str) {
        let mut message: String = message.chars().filter(|c| *c != '\r').collect();
        if message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let line = LogLine {
            timestamp: Utc::now(),
            level,
            message,
            step: step.map(str::to_string),
        };
        let mut g = self.lock();
        if !g.lines.contains_key(build_id) {
            g.admit(build_id);
        }
        let v = g.lines.entry(build_id.to_string()).or_default();
        if v.len() < MAX_LINES {
            v.push(line);
        } else if v.len() == MAX_LINES {
            v.push(LogLine {
                message: format!("(more than {MAX_LINES} log lines: the rest is not kept)"),
                level: "warn",
                ..line
            });
        }
    }

    /// Lines from `offset`, at most `limit`.
    pub fn page(&self, build_id: &str, offset: usize, limit: usize) -> Vec<LogLine> {
        self.ensure(build_id);
        let g = self.lock();
        g.lines
            .get(build_id)
            .map(|v| v.iter().skip(offset).take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// The lines `q` selects, in its direction.
    pub fn query(&self, build_id: &str, q: LogQuery) -> Vec<LogLine> {
        self.ensure(build_id);
        let g = self.lock();
        let Some(v) = g.lines.get(build_id) else {
            return Vec::new();
        };
        let min = level_rank(q.min_level);
        let wanted = |l: &&LogLine| {
            let ms = l.timestamp.timestamp_millis();
            level_rank(l.level) >= min
                && match (q.cursor_ms, q.backward) {
                    (None, _) => true,
                    (Some(c), false) => ms >= c,
                    (Some(c), true) => ms <= c,
                }
        };
        if q.backward {
            v.iter().rev().filter(wanted).take(q.limit).cloned().collect()
        } else {
            v.iter().filter(wanted).take(q.limit).cloned().collect()
        }
    }

    /// The last `n` lines of a step (for a failure's reason).
    pub fn tail_of_step(&self, build_id: &str, step: &str, n: usize) -> Vec<LogLine> {
        self.ensure(build_id);
        let g = self.lock();
        let Some(v) = g.lines.get(build_id) else {
            return Vec::new();
        };
        let of: Vec<&LogLine> = v.iter().filter(|l| l.step.as_deref() == Some(step)).collect();
        of[of.len().saturating_sub(n)..]
            .iter()
            .map(|l| (*l).clone())
            .collect()
    }
}

/// Removes the oldest `.jsonl` files of `dir` beyond `keep`.
fn prune(dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, p) in files.iter().take(files.len() - keep) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_bounds() {
        let l = BuildLogs::default();
        for i in 0..5 {
            l.push("b", "info", Some("1"), &format!("line {i}"));
        }
        l.push("b", "error", Some("2"), &"x".repeat(MAX_LINE + 10));
        assert_eq!(l.page("b", 3, 100).len(), 3);
        assert_eq!(l.page("b", 0, 2).len(), 2);
        assert!(l.page("nope", 0, 10).is_empty());
        assert_eq!(l.tail_of_step("b", "1", 2)[1].message, "line 4");
        assert!(l.page("b", 5, 1)[0].message.len() <= MAX_LINE + 3);
    }

    #[test]
    fn queries_by_time_direction_and_level() {
        let l = BuildLogs::default();
        l.push("b", "debug", Some("1"), "d");
        l.push("b", "info", Some("1"), "i");
        l.push("b", "error", Some("2"), "e");
        let q = |cursor_ms, limit, backward, min_level| LogQuery {
            cursor_ms,
            limit,
            backward,
            min_level,
        };
        let msgs = |v: Vec<LogLine>| v.into_iter().map(|l| l.message).collect::<Vec<_>>();
        assert_eq!(msgs(l.query("b", q(None, 100, false, "debug"))), ["d", "i", "e"]);
        assert_eq!(msgs(l.query("b", q(None, 100, true, "info"))), ["e", "i"]);
        assert_eq!(msgs(l.query("b", q(None, 1, true, "debug"))), ["e"]);
        assert_eq!(
            msgs(l.query("b", q(None, 0, false, "debug"))),
            Vec::<String>::new()
        );
        let first = l.page("b", 0, 1)[0].timestamp.timestamp_millis();
        assert_eq!(l.query("b", q(Some(first), 100, false, "debug")).len(), 3);
        assert_eq!(
            msgs(l.query("b", q(Some(first - 1), 100, true, "debug"))),
            Vec::<String>::new()
        );
        assert_eq!(l.query("b", q(Some(i64::MAX), 100, false, "debug")).len(), 0);
        assert!(l.query("nope", q(None, 10, false, "debug")).is_empty());
    }

    #[test]
    fn ended_builds_are_read_back_from_disk() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("build-logs");
        let a = BuildLogs::default();
        a.keep_in(dir.clone());
        a.push("build-1", "info", Some("1"), "first");
        a.push("build-1", "error", Some("2"), "boom");
        a.persist("build-1");
        // a later daemon: not in memory, read from the file
        let b = BuildLogs::default();
        b.keep_in(dir.clone());
        let page = b.page("build-1", 0, 10);
        assert_eq!(page.len(), 2);
        assert_eq!((page[1].level, page[1].message.as_str()), ("error", "boom"));
        assert_eq!(b.tail_of_step("build-1", "2", 5)[0].message, "boom");
        assert!(b.page("build-2", 0, 10).is_empty());
        // ids that are not file names are never used as paths
        a.push("../x", "info", None, "no");
        a.persist("../x");
        assert!(!d.path().join("x.jsonl").exists());
        // the oldest files go beyond the limit
        for i in 0..5 {
            std::fs::write(dir.join(format!("old-{i}.jsonl")), "").unwrap();
        }
        prune(&dir, 3);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    }
}
