//! Resource usage of namespace sandboxes, read from the host side only (cgroup files and the
//! upper dirs), so it never touches the sandbox's processes and is safe on a frozen sandbox.
//!
//! What is read, for a sandbox `<id>` under the cgroup root `<root>`:
//!
//! | value | cgroup v1 | cgroup v2 |
//! |---|---|---|
//! | CPU time (agent + work) | `cpuacct/<root>/<id>/cpuacct.usage` (ns) | `<root>/<id>/cpu.stat` `usage_usec` |
//! | CPU count | `cpu/<root>/<id>/work/cpu.cfs_quota_us` / `cpu.cfs_period_us` | `<id>/work/cpu.max` |
//! | memory used | `memory/<root>/<id>/memory.usage_in_bytes` − cache | `<id>/memory.current` − `file` |
//! | page cache | `memory.stat` `total_cache` of `<id>` | `memory.stat` `file` of `<id>` |
//! | memory limit | `<id>/work/memory.limit_in_bytes` | `<id>/work/memory.max` |
//! | OOM kills | `<id>/work/memory.oom_control` `oom_kill` | `<id>/work/memory.events` `oom_kill` |
//! | frozen | `freezer/<root>/<id>/freezer.state` | `<id>/cgroup.events` `frozen` |
//!
//! Disk: the bytes allocated in the sandbox's upper dirs ([`dir_usage`]), unless a disk quota
//! reports it ([`super::quota`]).

use super::NamespaceBackend;
use super::cgroup::CgroupLayout;
use super::disk_usage::{MAX_WALK_ENTRIES, dir_usage};
use super::names::is_valid_sandbox_id;
use super::quota::DISK_DIR;
use crate::RuntimeError;
use crate::backend::SandboxStats;

use std::path::{Path, PathBuf};

fn stats_err(message: String) -> RuntimeError {
    RuntimeError::Step {
        step: "stats",
        message,
    }
}

fn read(path: &Path) -> Result<String, RuntimeError> {
    std::fs::read_to_string(path).map_err(|e| stats_err(format!("reading {}: {e}", path.display())))
}

fn read_u64(path: &Path) -> Result<u64, RuntimeError> {
    let s = read(path)?;
    s.trim()
        .parse()
        .map_err(|_| stats_err(format!("{}: not a number: {:?}", path.display(), s.trim())))
}

/// The value of `key` in a flat-keyed cgroup file (`memory.stat`, `cpu.stat`, `memory.events`,
/// `memory.oom_control`: one `key value` pair per line).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

/// CPUs of a CFS quota (`quota_us` over `period_us`, rounded up); `None` when unlimited.
pub fn cpus_of_quota(quota_us: i64, period_us: u64) -> Option<u32> {
    if quota_us <= 0 || period_us == 0 {
        return None;
    }
    Some((quota_us as u64).div_ceil(period_us).max(1) as u32)
}

/// Parse v2 `cpu.max` (`"200000 100000"` or `"max 100000"`).
pub fn cpus_of_cpu_max(text: &str) -> Option<u32> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period = it.next().and_then(|p| p.parse().ok()).unwrap_or(100_000);
    if quota == "max" {
        return None;
    }
    cpus_of_quota(quota.parse().ok()?, period)
}

/// A memory limit; v1's "unlimited" is a huge page-aligned number, v2's is `max`.
fn memory_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v: u64 = t.parse().ok()?;
    // v1 reports "no limit" as PAGE_COUNTER_MAX pages (about 2^63).
    (v < (1u64 << 62)).then_some(v)
}

/// Read the cgroup part of a sandbox's stats. `root` is the cgroup root name in each
/// hierarchy (for example `sandboxd`). Disk fields are left at zero.
pub fn read_cgroup_stats(layout: &CgroupLayout, root: &str, id: &str) -> Result<SandboxStats, RuntimeError> {
    let mut st = SandboxStats::default();
    match layout {
        CgroupLayout::V1(hs) => {
            let dir = |c: &str| -> Option<PathBuf> {
                hs.iter()
                    .find(|h| h.controllers.iter().any(|x| x == c))
                    .map(|h| h.mount.join(root).join(id))
            };
            let mem = dir("memory").ok_or_else(|| stats_err("no v1 memory hierarchy".into()))?;
            // The sandbox group must exist (an unknown id is an error, not zeros).
            let usage = read_u64(&mem.join("memory.usage_in_bytes"))?;
            let stat = read(&mem.join("memory.stat")).unwrap_or_default();
            let cache = keyed(&stat, "total_cache")
                .or_else(|| keyed(&stat, "cache"))
                .unwrap_or(0);
            st.mem_cache = cache;
            st.mem_used = usage.saturating_sub(cache);
            st.mem_total = std::fs::read_to_string(mem.join("work/memory.limit_in_bytes"))
                .ok()
                .and_then(|t| memory_limit(&t));
            st.oom_kills = std::fs::read_to_string(mem.join("work/memory.oom_control"))
                .ok()
                .and_then(|t| keyed(&t, "oom_kill"));
            if let Some(d) = dir("cpuacct") {
                st.cpu_usage_ns = read_u64(&d.join("cpuacct.usage")).unwrap_or(0);
            }
            if let Some(d) = dir("cpu") {
                let quota = read(&d.join("work/cpu.cfs_quota_us"))
                    .ok()
                    .and_then(|q| q.trim().parse::<i64>().ok());
                let period = read_u64(&d.join("work/cpu.cfs_period_us")).unwrap_or(100_000);
                st.cpu_count = quota.and_then(|q| cpus_of_quota(q, period));
            }
            if let Some(d) = dir("pids") {
                st.pids_limit_hits = std::fs::read_to_string(d.join("work/pids.events"))
                    .ok()
                    .and_then(|t| keyed(&t, "max"));
            }
            if let Some(d) = dir("freezer") {
                let s = std::fs::read_to_string(d.join("freezer.state")).unwrap_or_default();
                st.frozen = matches!(s.trim(), "FROZEN" | "FREEZING");
            }
        }
        CgroupLayout::V2(mount) => {
            let sb = mount.join(root).join(id);
            let usage = read_u64(&sb.join("memory.current")).or_else(|e| {
                // Without the memory controller the group still has to exist.
                if sb.is_dir() { Ok(0) } else { Err(e) }
            })?;
            let stat = std::fs::read_to_string(sb.join("memory.stat")).unwrap_or_default();
            let cache = keyed(&stat, "file").unwrap_or(0);
            st.mem_cache = cache;
            st.mem_used = usage.saturating_sub(cache);
            st.mem_total = std::fs::read_to_string(sb.join("work/memory.max"))
                .ok()
                .and_then(|t| memory_limit(&t));
            st.oom_kills = std::fs::read_to_string(sb.join("work/memory.events"))
                .ok()
                .and_then(|t| keyed(&t, "oom_kill"));
            st.cpu_usage_ns = std::fs::read_to_string(sb.join("cpu.stat"))
                .ok()
                .and_then(|t| keyed(&t, "usage_usec"))
                .map(|us| us.saturating_mul(1000))
                .unwrap_or(0);
            st.pids_limit_hits = std::fs::read_to_string(sb.join("work/pids.events"))
                .ok()
                .and_then(|t| keyed(&t, "max"));
            st.cpu_count = std::fs::read_to_string(sb.join("work/cpu.max"))
                .ok()
                .and_then(|t| cpus_of_cpu_max(&t));
            let events = std::fs::read_to_string(sb.join("cgroup.events")).unwrap_or_default();
            st.frozen = keyed(&events, "frozen") == Some(1)
                || std::fs::read_to_string(sb.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1");
        }
    }
    Ok(st)
}

impl NamespaceBackend {
    /// Stats of sandbox `id` (blocking: file reads and a walk of its upper dirs).
    pub fn stats_blocking(&self, id: &str) -> Result<SandboxStats, RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad sandbox id '{id}'")));
        }
        let inner = &self.inner;
        let mut st = read_cgroup_stats(inner.cgroups.layout(), &inner.cfg.cgroup_root, id)?;
        // With a disk quota (docs/limits.md) the upper dirs live on their own filesystem at
        // `<sandbox>/disk`: its statvfs is exact and free; otherwise walk the upper dirs.
        let disk = self.sandbox_dir(id).join(DISK_DIR);
        if super::quota::is_mount_point(&disk)
            && let Ok(u) = super::quota::LoopImageQuota::statvfs_usage(&disk)
        {
            st.disk_used = u.used;
            st.disk_total = u.total;
        } else {
            let (root, usr) = self.upper_dirs(id);
            st.disk_used = dir_usage(&[root, usr], MAX_WALK_ENTRIES);
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::cgroup::Hierarchy;

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn parsers() {
        assert_eq!(keyed("cache 10\ntotal_cache 20\n", "total_cache"), Some(20));
        assert_eq!(keyed("cache 10\ntotal_cache 20\n", "cache"), Some(10));
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(keyed("x 1", "y"), None);
        assert_eq!(cpus_of_quota(200_000, 100_000), Some(2));
        assert_eq!(cpus_of_quota(150_000, 100_000), Some(2));
        assert_eq!(cpus_of_quota(-1, 100_000), None);
        assert_eq!(cpus_of_cpu_max("100000 100000\n"), Some(1));
        assert_eq!(cpus_of_cpu_max("max 100000\n"), None);
        assert_eq!(memory_limit("9223372036854771712\n"), None);
        assert_eq!(memory_limit("max\n"), None);
        assert_eq!(memory_limit("536870912\n"), Some(512 << 20));
    }

    #[test]
    fn v2_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        let sb = m.join("sandboxd/abc");
        write(&sb.join("memory.current"), "104857600\n");
        write(
            &sb.join("memory.stat"),
            "anon 50000000\nfile 41943040\nkernel 1000\n",
        );
        write(
            &sb.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        );
        write(&sb.join("cgroup.events"), "populated 1\nfrozen 0\n");
        write(&sb.join("work/memory.max"), "536870912\n");
        write(
            &sb.join("work/memory.events"),
            "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n",
        );
        write(&sb.join("work/cpu.max"), "200000 100000\n");
        write(&sb.join("work/pids.events"), "max 4\n");
        let layout = CgroupLayout::V2(m.to_path_buf());
        let st = read_cgroup_stats(&layout, "sandboxd", "abc").unwrap();
        assert_eq!(st.cpu_usage_ns, 2_500_000_000);
        assert_eq!(st.cpu_count, Some(2));
        assert_eq!(st.mem_used, 104857600 - 41943040);
        assert_eq!(st.mem_cache, 41943040);
        assert_eq!(st.mem_total, Some(512 << 20));
        assert_eq!(st.oom_kills, Some(1));
        assert_eq!(st.pids_limit_hits, Some(4));
        assert!(!st.frozen);

        write(&sb.join("cgroup.events"), "populated 1\nfrozen 1\n");
        write(&sb.join("work/memory.max"), "max\n");
        write(&sb.join("work/cpu.max"), "max 100000\n");
        let st = read_cgroup_stats(&layout, "sandboxd", "abc").unwrap();
        assert!(st.frozen);
        assert_eq!((st.mem_total, st.cpu_count), (None, None));

        assert!(
            read_cgroup_stats(&layout, "sandboxd", "nope").is_err(),
            "unknown sandbox"
        );
    }

    #[test]
    fn v1_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        let mut hs = Vec::new();
        for c in ["cpu", "cpuacct", "memory", "freezer"] {
            hs.push(Hierarchy {
                controllers: vec![c.to_string()],
                mount: m.join(c),
            });
        }
        let g = |c: &str, f: &str| m.join(c).join("sandboxd/s1").join(f);
        write(&g("memory", "memory.usage_in_bytes"), "300000000\n");
        write(
            &g("memory", "memory.stat"),
            "cache 1000\nrss 5\ntotal_cache 100000000\ntotal_rss 7\n",
        );
        write(&g("memory", "work/memory.limit_in_bytes"), "268435456\n");
        write(
            &g("memory", "work/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(&g("cpuacct", "cpuacct.usage"), "123456789\n");
        write(&g("cpu", "work/cpu.cfs_quota_us"), "100000\n");
        write(&g("cpu", "work/cpu.cfs_period_us"), "100000\n");
        write(&g("freezer", "freezer.state"), "THAWED\n");
        let layout = CgroupLayout::V1(hs);
        let st = read_cgroup_stats(&layout, "sandboxd", "s1").unwrap();
        assert_eq!(st.cpu_usage_ns, 123456789);
        assert_eq!(st.cpu_count, Some(1));
        assert_eq!(st.mem_used, 200000000);
        assert_eq!(st.mem_cache, 100000000);
        assert_eq!(st.mem_total, Some(256 << 20));
        assert_eq!(st.oom_kills, Some(2));
        assert!(!st.frozen);
        write(&g("freezer", "freezer.state"), "FROZEN\n");
        write(&g("cpu", "work/cpu.cfs_quota_us"), "-1\n");
        let st = read_cgroup_stats(&layout, "sandboxd", "s1").unwrap();
        assert!(st.frozen);
        assert_eq!(st.cpu_count, None);
        assert!(read_cgroup_stats(&layout, "sandboxd", "s2").is_err());
    }
}
