//! Build logs: kept in memory for the most recent builds, bounded per build.

use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Lines kept per build (the oldest are dropped, and a line says so).
const MAX_LINES: usize = 20_000;
/// Builds whose logs are kept.
const MAX_BUILDS: usize = 200;
/// Longest line kept.
const MAX_LINE: usize = 4096;

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

#[derive(Debug, Default)]
struct Inner {
    lines: HashMap<String, Vec<LogLine>>,
    order: VecDeque<String>,
}

/// The logs of recent builds.
#[derive(Debug, Default)]
pub struct BuildLogs(Mutex<Inner>);

impl BuildLogs {
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
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !g.lines.contains_key(build_id) {
            g.order.push_back(build_id.to_string());
            while g.order.len() > MAX_BUILDS {
                if let Some(old) = g.order.pop_front() {
                    g.lines.remove(&old);
                }
            }
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
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.lines
            .get(build_id)
            .map(|v| v.iter().skip(offset).take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// The last `n` lines of a step (for a failure's reason).
    pub fn tail_of_step(&self, build_id: &str, step: &str, n: usize) -> Vec<LogLine> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
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
}
