//! Small readers of `/proc` and cgroupfs: process memory (`status`, `smaps_rollup`), host memory
//! (`meminfo`), sandbox cgroups. Parsing is separate from reading so it is tested without root.

use std::path::{Path, PathBuf};

/// A `Key:   123 kB` field of `/proc/<pid>/status`, `/proc/<pid>/smaps_rollup` or
/// `/proc/meminfo`, in bytes.
pub fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let mut it = rest.split_whitespace();
        let v: u64 = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") => Some(v * 1024),
            None => Some(v),
            Some(_) => None,
        }
    })
}

/// Memory of one process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcMem {
    pub rss: u64,
    pub hwm: u64,
}

/// `VmRSS` and `VmHWM` of a process; `None` when it is gone.
pub fn proc_mem(pid: i32) -> Option<ProcMem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcMem {
        rss: kb_field(&s, "VmRSS")?,
        hwm: kb_field(&s, "VmHWM")?,
    })
}

/// `Rss` and `Pss` (bytes) from `/proc/<pid>/smaps_rollup`.
pub fn rss_pss(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((kb_field(&s, "Rss")?, kb_field(&s, "Pss")?))
}

/// A `/proc/meminfo` field in bytes.
pub fn meminfo(key: &str) -> Option<u64> {
    kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

/// Busy and total CPU time of the host in clock ticks, from the `cpu` line of `/proc/stat`
/// text (busy = everything but idle and iowait).
pub fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

/// Host CPU time spent busy since boot, in milliseconds.
pub fn host_cpu_busy_ms() -> Option<f64> {
    let (busy, _) = parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 * 1000.0 / hz as f64)
}

/// Pids listed in a `cgroup.procs` file's text.
pub fn parse_pids(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|t| t.parse().ok()).collect()
}

/// The cgroup version the host's memory controller uses: `v1` (a v1 memory hierarchy, maybe
/// next to a unified mount: hybrid) or `v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Mount points of cgroup hierarchies, from `/proc/self/mountinfo` text: `(mount, is_v2,
/// super options)`.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<(PathBuf, bool, String)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split_whitespace().nth(4)?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let _src = post.next()?;
            let opts = post.next().unwrap_or("").to_string();
            let mount = PathBuf::from(mount.replace("\\040", " "));
            match fstype {
                "cgroup" => Some((mount, false, opts)),
                "cgroup2" => Some((mount, true, opts)),
                _ => None,
            }
        })
        .collect()
}

/// Where sandbox memory is accounted: the memory hierarchy (v1) or the unified mount (v2).
#[derive(Debug, Clone)]
pub struct MemoryCgroups {
    pub version: CgroupVersion,
    /// The memory hierarchy's mount point (v1) or the unified mount (v2).
    pub mount: PathBuf,
    /// All cgroup mount points (to remove a daemon's root in every hierarchy).
    pub all_mounts: Vec<PathBuf>,
}

impl MemoryCgroups {
    /// From `/proc/self/mountinfo` text; a v1 memory hierarchy wins over cgroup2.
    pub fn from_mountinfo(text: &str) -> Option<MemoryCgroups> {
        let mounts = cgroup_mounts(text);
        let all_mounts: Vec<PathBuf> = mounts.iter().map(|m| m.0.clone()).collect();
        if let Some((m, _, _)) = mounts
            .iter()
            .find(|(_, v2, o)| !v2 && o.split(',').any(|x| x == "memory"))
        {
            return Some(MemoryCgroups {
                version: CgroupVersion::V1,
                mount: m.clone(),
                all_mounts,
            });
        }
        let (m, _, _) = mounts.iter().find(|(_, v2, _)| *v2)?;
        Some(MemoryCgroups {
            version: CgroupVersion::V2,
            mount: m.clone(),
            all_mounts,
        })
    }

    /// This host's cgroups.
    pub fn detect() -> Option<MemoryCgroups> {
        MemoryCgroups::from_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
    }

    /// `v1` / `v2`, plus `(hybrid)` when a v1 memory hierarchy sits next to a cgroup2 mount.
    pub fn describe(&self, mountinfo: &str) -> String {
        let has_v2 = cgroup_mounts(mountinfo).iter().any(|m| m.1);
        match (self.version, has_v2) {
            (CgroupVersion::V1, true) => "v1 (hybrid)".into(),
            (CgroupVersion::V1, false) => "v1".into(),
            (CgroupVersion::V2, _) => "v2".into(),
        }
    }

    /// Finds the daemon's cgroup root by looking for the directory of a sandbox it created:
    /// `<mount>/<root>/<id>`. Returns the root's name.
    pub fn find_root(&self, sandbox_id: &str) -> Option<String> {
        for e in std::fs::read_dir(&self.mount).ok()?.flatten() {
            if e.path().join(sandbox_id).is_dir() {
                return e.file_name().to_str().map(str::to_string);
            }
        }
        None
    }

    /// The memory cgroup directory of a sandbox.
    pub fn sandbox_dir(&self, root: &str, id: &str) -> PathBuf {
        self.mount.join(root).join(id)
    }

    /// Memory charged to a cgroup directory (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub fn usage(&self, dir: &Path) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        };
        std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Every pid in a cgroup directory and its descendants.
    pub fn pids_below(&self, dir: &Path) -> Vec<i32> {
        let mut out = Vec::new();
        if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(parse_pids(&t));
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.extend(self.pids_below(&e.path()));
                }
            }
        }
        out
    }

    /// Removes `<mount>/<root>` (and empty child cgroups left in it) in every hierarchy.
    /// Only `rmdir`: a cgroup that still has processes stays. Returns the directories left.
    pub fn remove_root(&self, root: &str) -> Vec<PathBuf> {
        let mut left = Vec::new();
        if root.is_empty() || root.contains('/') || root == "." || root == ".." {
            return left;
        }
        for m in &self.all_mounts {
            let d = m.join(root);
            if d.is_dir() && !rmdir_tree(&d) {
                left.push(d);
            }
        }
        left
    }
}

/// `rmdir` a cgroup directory after its child directories, deepest first.
fn rmdir_tree(dir: &Path) -> bool {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kb_fields() {
        let status = "Name:\tsandboxd\nVmHWM:\t   12345 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(kb_field(status, "VmRSS"), Some(2048 * 1024));
        assert_eq!(kb_field(status, "VmHWM"), Some(12345 * 1024));
        assert_eq!(kb_field(status, "Threads"), Some(3));
        assert_eq!(kb_field(status, "Vm"), None);
        assert_eq!(kb_field(status, "Missing"), None);
        let rollup =
            "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  3000 kB\nPss:  1200 kB\nPss_Anon: 800 kB\n";
        assert_eq!(kb_field(rollup, "Pss"), Some(1200 * 1024));
        assert_eq!(kb_field(rollup, "Rss"), Some(3000 * 1024));
    }

    #[test]
    fn cpu_ticks() {
        let stat = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_cpu_ticks(stat), Some((160, 1180)));
        assert_eq!(parse_cpu_ticks("cpu0 1 2 3 4 5\n"), None);
        assert!(host_cpu_busy_ms().unwrap() > 0.0);
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pids("12\n345\n\n"), vec![12, 345]);
        assert!(parse_pids("").is_empty());
    }

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
40 1 8:1 / / rw - ext4 /dev/vda rw
";

    #[test]
    fn hybrid_uses_v1_memory() {
        let m = MemoryCgroups::from_mountinfo(HYBRID).unwrap();
        assert_eq!(m.version, CgroupVersion::V1);
        assert_eq!(m.mount, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m.all_mounts.len(), 3);
        assert_eq!(m.describe(HYBRID), "v1 (hybrid)");
        assert_eq!(
            m.sandbox_dir("sandboxd-abc", "i1"),
            PathBuf::from("/sys/fs/cgroup/memory/sandboxd-abc/i1")
        );
    }

    #[test]
    fn pure_v2() {
        let t = "31 24 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        let m = MemoryCgroups::from_mountinfo(t).unwrap();
        assert_eq!(m.version, CgroupVersion::V2);
        assert_eq!(m.describe(t), "v2");
        assert!(MemoryCgroups::from_mountinfo("40 1 8:1 / / rw - ext4 /dev/vda rw\n").is_none());
    }

    #[test]
    fn fake_tree_usage_pids_and_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let t = format!("31 24 0:27 / {} rw - cgroup2 cgroup2 rw\n", tmp.path().display());
        let m = MemoryCgroups::from_mountinfo(&t).unwrap();
        let sbx = tmp.path().join("sandboxd-x/iabc");
        std::fs::create_dir_all(sbx.join("agent")).unwrap();
        std::fs::write(sbx.join("memory.current"), "4096\n").unwrap();
        std::fs::write(sbx.join("agent/cgroup.procs"), "77\n").unwrap();
        assert_eq!(m.find_root("iabc").as_deref(), Some("sandboxd-x"));
        assert_eq!(m.find_root("nope"), None);
        assert_eq!(m.usage(&sbx), Some(4096));
        assert_eq!(m.pids_below(&sbx), vec![77]);
        // A regular filesystem refuses rmdir of non-empty dirs: the root is reported as left.
        assert_eq!(m.remove_root("sandboxd-x"), vec![tmp.path().join("sandboxd-x")]);
        assert!(m.remove_root("../etc").is_empty());
        std::fs::remove_file(sbx.join("memory.current")).unwrap();
        std::fs::remove_file(sbx.join("agent/cgroup.procs")).unwrap();
        assert!(m.remove_root("sandboxd-x").is_empty());
        assert!(!tmp.path().join("sandboxd-x").exists());
    }
}
