//! The machine a run was made on, stated in every report.

use crate::procfs;
use serde::{Deserialize, Serialize};

/// Host facts that decide how numbers compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    pub cgroup: String,
    pub cpu_model: String,
    pub os: String,
}

/// The build a run was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// `release` or `debug` (from `debug_assertions` of the bench itself, which is the same
    /// executable as the daemon it measures).
    pub profile: String,
    pub version: String,
}

impl Build {
    /// This executable's build.
    pub fn current() -> Build {
        Build {
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

fn first_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// `PRETTY_NAME` of an os-release text.
fn os_pretty_name(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix("PRETTY_NAME=")
            .map(|v| v.trim_matches('"').to_string())
    })
}

impl Machine {
    /// This host.
    pub fn detect() -> Machine {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroup = procfs::MemoryCgroups::from_mountinfo(&mountinfo)
            .map(|m| m.describe(&mountinfo))
            .unwrap_or_else(|| "none".into());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_bytes: procfs::meminfo("MemTotal").unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            cgroup,
            cpu_model: first_value(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            os: std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|t| os_pretty_name(&t))
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_helpers() {
        let cpu = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n";
        assert_eq!(first_value(cpu, "model name").as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(first_value(cpu, "nothing"), None);
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn detect_is_sane() {
        let m = Machine::detect();
        assert!(m.nproc >= 1);
        assert!(m.memory_bytes > 0);
        assert!(!m.kernel.is_empty());
    }
}
