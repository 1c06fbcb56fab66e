//! Why a process failed, from the sandbox's `work` cgroup counters (`docs/limits.md`).
//!
//! The runtime hands the agent read-only fds of the `work` group's `pids.events`, `pids.max`,
//! `memory.events` (v2) or `memory.oom_control` (v1) and `memory.max` (v2) or
//! `memory.limit_in_bytes` (v1) ([`WorkCounterFds`]). The agent reads the two event counters
//! when a process starts and when it ends: a refused fork during its run makes its end
//! event's `error` "process limit N reached", an OOM kill "out of memory: killed at the
//! sandbox's memory limit of N MiB". The counters are per sandbox, so with several processes
//! running at once each failed one that ran while the counter grew is named.

use crate::pid1::ExitStatus;
use sandboxd_protocol::agent::WorkCounterFds;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

/// Where the counters are read from: the inherited fds in a sandbox, fakes in tests.
pub trait CounterSource: Send + Sync {
    /// The current text of `file`, `None` when the sandbox does not have it.
    fn read(&self, file: CounterFile) -> Option<String>;
}

/// One of the counter files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterFile {
    /// `pids.events`.
    PidsEvents,
    /// `pids.max`.
    PidsMax,
    /// `memory.events` / `memory.oom_control`.
    MemoryEvents,
    /// `memory.max` / `memory.limit_in_bytes`.
    MemoryMax,
}

/// The inherited counter fds of the sandbox's `work` group.
#[derive(Debug, Default)]
pub struct InheritedCounters {
    pids_events: Option<File>,
    pids_max: Option<File>,
    memory_events: Option<File>,
    memory_max: Option<File>,
}

impl InheritedCounters {
    /// Take ownership of the fds named in the agent's boot config (call once, at boot).
    pub fn take(fds: &WorkCounterFds) -> Self {
        // SAFETY: the runtime placed these fds for the agent and nothing else owns them;
        // `boot` made them close-on-exec.
        let own = |fd: Option<i32>| fd.map(|fd| unsafe { File::from_raw_fd(fd) });
        Self {
            pids_events: own(fds.pids_events),
            pids_max: own(fds.pids_max),
            memory_events: own(fds.memory_events),
            memory_max: own(fds.memory_max),
        }
    }
}

impl CounterSource for InheritedCounters {
    fn read(&self, file: CounterFile) -> Option<String> {
        let f = match file {
            CounterFile::PidsEvents => &self.pids_events,
            CounterFile::PidsMax => &self.pids_max,
            CounterFile::MemoryEvents => &self.memory_events,
            CounterFile::MemoryMax => &self.memory_max,
        }
        .as_ref()?;
        // cgroup files regenerate their text on a read at offset 0
        let mut buf = [0u8; 512];
        let n = f.read_at(&mut buf, 0).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// The event counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Refused forks (`pids.events` `max`).
    pub fork_refusals: Option<u64>,
    /// OOM kills (`oom_kill`).
    pub oom_kills: Option<u64>,
}

/// The value of `key` in a `key value` per line file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A limit file: a number, or `max` / a v1 "unlimited" value (`None`).
fn limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    // v1 writes "unlimited" as PAGE_COUNTER_MAX pages (about 2^63)
    (v < (1 << 62)).then_some(v)
}

/// Take a snapshot of the event counters.
pub fn snapshot(src: &dyn CounterSource) -> CounterSnapshot {
    CounterSnapshot {
        fork_refusals: src.read(CounterFile::PidsEvents).and_then(|t| keyed(&t, "max")),
        oom_kills: src
            .read(CounterFile::MemoryEvents)
            .and_then(|t| keyed(&t, "oom_kill")),
    }
}

fn grew(a: Option<u64>, b: Option<u64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if b > a)
}

/// The explanation of a failed process that ran between `before` and now, or `None` when it
/// succeeded or the counters do not explain the failure. An OOM kill needs a signal death
/// (the kernel kills with SIGKILL); a refused fork any failure (the shell or program that met
/// it decides how to exit).
pub fn explain(src: &dyn CounterSource, before: CounterSnapshot, status: ExitStatus) -> Option<String> {
    if matches!(status, ExitStatus::Exited(0)) {
        return None;
    }
    let after = snapshot(src);
    if matches!(status, ExitStatus::Signaled { .. }) && grew(before.oom_kills, after.oom_kills) {
        let limit = src.read(CounterFile::MemoryMax).and_then(|t| limit(&t));
        return Some(match limit {
            Some(b) => format!(
                "out of memory: killed by the kernel at the sandbox's memory limit of {} MiB",
                b >> 20
            ),
            None => "out of memory: killed by the kernel".to_string(),
        });
    }
    if grew(before.fork_refusals, after.fork_refusals) {
        let limit = src.read(CounterFile::PidsMax).and_then(|t| limit(&t));
        return Some(match limit {
            Some(n) => format!(
                "process limit {n} reached: a new process or thread was refused (the sandbox's processes and threads together are limited to {n})"
            ),
            None => "process limit reached: a new process or thread was refused".to_string(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        pids_events: Mutex<Option<String>>,
        memory_events: Mutex<Option<String>>,
        pids_max: Option<String>,
        memory_max: Option<String>,
    }

    impl CounterSource for Fake {
        fn read(&self, file: CounterFile) -> Option<String> {
            match file {
                CounterFile::PidsEvents => self.pids_events.lock().unwrap().clone(),
                CounterFile::MemoryEvents => self.memory_events.lock().unwrap().clone(),
                CounterFile::PidsMax => self.pids_max.clone(),
                CounterFile::MemoryMax => self.memory_max.clone(),
            }
        }
    }

    const KILLED: ExitStatus = ExitStatus::Signaled {
        signal: 9,
        core_dumped: false,
    };

    fn fake_v2() -> Fake {
        Fake {
            pids_events: Mutex::new(Some("max 0\n".into())),
            memory_events: Mutex::new(Some(
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n".into(),
            )),
            pids_max: Some("5\n".into()),
            memory_max: Some("268435456\n".into()),
        }
    }

    #[test]
    fn fork_refused_during_the_run_names_the_limit() {
        let f = fake_v2();
        let before = snapshot(&f);
        assert_eq!(before.fork_refusals, Some(0));
        assert_eq!(
            explain(&f, before, ExitStatus::Exited(1)),
            None,
            "counter unchanged"
        );
        *f.pids_events.lock().unwrap() = Some("max 3\n".into());
        let m = explain(&f, before, ExitStatus::Exited(254)).unwrap();
        assert!(m.starts_with("process limit 5 reached"), "{m}");
        assert_eq!(
            explain(&f, before, ExitStatus::Exited(0)),
            None,
            "success is not explained"
        );
    }

    #[test]
    fn oom_kill_names_the_memory_limit_on_v2_and_v1() {
        let f = fake_v2();
        let before = snapshot(&f);
        *f.memory_events.lock().unwrap() = Some("oom 1\noom_kill 1\n".into());
        assert_eq!(
            explain(&f, before, ExitStatus::Exited(1)),
            None,
            "not killed by a signal"
        );
        let m = explain(&f, before, KILLED).unwrap();
        assert_eq!(
            m,
            "out of memory: killed by the kernel at the sandbox's memory limit of 256 MiB"
        );

        // v1: memory.oom_control and an unlimited memory.limit_in_bytes
        let v1 = Fake {
            memory_events: Mutex::new(Some("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n".into())),
            memory_max: Some("9223372036854771712\n".into()),
            ..Fake::default()
        };
        let before = snapshot(&v1);
        assert_eq!(before.oom_kills, Some(2));
        *v1.memory_events.lock().unwrap() = Some("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n".into());
        assert_eq!(
            explain(&v1, before, KILLED).unwrap(),
            "out of memory: killed by the kernel"
        );
    }

    #[test]
    fn missing_counters_explain_nothing() {
        let f = Fake::default();
        let before = snapshot(&f);
        assert_eq!(before, CounterSnapshot::default());
        assert_eq!(explain(&f, before, KILLED), None);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("42\n"), Some(42));
    }

    #[test]
    fn inherited_counters_read_from_offset_zero_each_time() {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut t, b"max 7\n").unwrap();
        let c = InheritedCounters {
            pids_events: Some(File::open(t.path()).unwrap()),
            ..InheritedCounters::default()
        };
        assert_eq!(snapshot(&c).fork_refusals, Some(7));
        assert_eq!(snapshot(&c).fork_refusals, Some(7));
        assert_eq!(c.read(CounterFile::PidsMax), None);
    }
}
