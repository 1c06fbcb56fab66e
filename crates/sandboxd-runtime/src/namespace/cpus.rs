//! `nproc` = `cpuCount` (`docs/limits.md`): a sandbox whose `cpu_count` is below the CPUs
//! the daemon may use is pinned to that many CPUs, chosen round robin so sandboxes spread
//! over the host.
//!
//! - cgroup v1: `cpuset.cpus` of `<root>/<id>/agent` and `<root>/<id>/work` (enforced: a
//!   process moving into `work` gets the group's CPUs as its affinity and cannot widen it).
//! - cgroup v2: the same files where the `cpuset` controller is enabled for the subtree.
//! - always: the CPU list is written to `<sbx>/cpus` and the init pins itself to it with
//!   `sched_setaffinity` before exec ([`apply_in_child`]); children inherit it. Without a
//!   cpuset this is what `nproc` sees (a process may widen its own mask again; the CFS quota
//!   still limits CPU time).
//!
//! With `cpu_count` ≥ the CPUs available nothing is pinned.

use super::cgroup::CgroupLayout;
use crate::RuntimeError;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// File in the sandbox dir with the CPU list the init pins itself to (absent: no pinning).
pub const CPUS_FILE: &str = "cpus";

/// Round-robin position of the next sandbox's first CPU.
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn err(message: String) -> RuntimeError {
    RuntimeError::Step {
        step: "cpuset",
        message,
    }
}

/// Parse a kernel CPU list (`0-3,6,8-9`). Bad parts are skipped.
pub fn parse_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>())
                    && a <= b
                    && b < 65536
                {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse::<usize>() {
                    out.push(a);
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Format CPUs (sorted, deduplicated) as a kernel CPU list with ranges.
pub fn format_list(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// `n` CPUs of `allowed` starting at position `start` (wrapping); `None` when `n` covers
/// them all (no pinning).
pub fn choose(allowed: &[usize], n: usize, start: usize) -> Option<Vec<usize>> {
    if n == 0 || allowed.is_empty() || n >= allowed.len() {
        return None;
    }
    let mut v: Vec<usize> = (0..n).map(|k| allowed[(start + k) % allowed.len()]).collect();
    v.sort_unstable();
    Some(v)
}

/// The CPUs sandboxes may use: the v1 cpuset of sandboxd's root group, else the daemon's own
/// affinity.
fn allowed_cpus(layout: &CgroupLayout, root: &str) -> Vec<usize> {
    if let CgroupLayout::V1(hs) = layout
        && let Some(h) = hs.iter().find(|h| h.controllers.iter().any(|c| c == "cpuset"))
        && let Ok(s) = std::fs::read_to_string(h.mount.join(root).join("cpuset.cpus"))
    {
        let v = parse_list(&s);
        if !v.is_empty() {
            return v;
        }
    }
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The `cpuset.cpus` files to write for sandbox `id`: v1 always (when the hierarchy exists),
/// v2 only where the controller is enabled (the file exists).
fn cpuset_files(layout: &CgroupLayout, root: &str, id: &str) -> Vec<std::path::PathBuf> {
    match layout {
        CgroupLayout::V1(hs) => hs
            .iter()
            .filter(|h| h.controllers.iter().any(|c| c == "cpuset"))
            .flat_map(|h| ["agent", "work"].map(|g| h.mount.join(root).join(id).join(g).join("cpuset.cpus")))
            .collect(),
        CgroupLayout::V2(m) => ["agent", "work"]
            .map(|g| m.join(root).join(id).join(g).join("cpuset.cpus"))
            .into_iter()
            .filter(|p| p.exists())
            .collect(),
    }
}

/// Pin sandbox `id` (its cgroups exist, its init is not started yet) to `cpu_count` CPUs:
/// write the cpusets and `<sbx>/cpus`. Nothing is pinned (and a stale `cpus` file removed)
/// when `cpu_count` covers every available CPU.
pub fn pin(
    layout: &CgroupLayout,
    root: &str,
    id: &str,
    cpu_count: u32,
    sbx: &Path,
) -> Result<(), RuntimeError> {
    let allowed = allowed_cpus(layout, root);
    let start = NEXT.fetch_add(cpu_count as usize, Ordering::Relaxed);
    let file = sbx.join(CPUS_FILE);
    let Some(chosen) = choose(&allowed, cpu_count as usize, start) else {
        return match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(format!("removing {}: {e}", file.display()))),
        };
    };
    let list = format_list(&chosen);
    for f in cpuset_files(layout, root, id) {
        std::fs::write(&f, &list).map_err(|e| err(format!("writing {list} to {}: {e}", f.display())))?;
    }
    std::fs::write(&file, format!("{list}\n"))
        .map_err(|e| err(format!("writing {}: {e}", file.display())))?;
    tracing::debug!(sandbox = id, cpus = %list, "pinned to CPUs");
    Ok(())
}

/// In the sandbox init, before exec (sandbox dir reached through the `O_PATH` fd `sbx`): pin
/// the process to the CPUs in `<sbx>/cpus`, if that file exists.
pub fn apply_in_child(sbx: std::os::fd::RawFd) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(format!("/proc/self/fd/{sbx}/{CPUS_FILE}")) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut set = nix::sched::CpuSet::new();
    for c in parse_list(&text) {
        set.set(c).map_err(std::io::Error::from)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::cgroup::Hierarchy;

    #[test]
    fn lists_round_trip() {
        assert_eq!(parse_list("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_list(""), Vec::<usize>::new());
        assert_eq!(parse_list("3-1,x,2"), vec![2]);
        assert_eq!(format_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_list(&[5]), "5");
        assert_eq!(format_list(&[2, 1, 1]), "1-2");
    }

    #[test]
    fn choose_spreads_and_skips_full() {
        let all = [0, 1, 2, 3];
        assert_eq!(choose(&all, 1, 0), Some(vec![0]));
        assert_eq!(choose(&all, 1, 1), Some(vec![1]));
        assert_eq!(choose(&all, 2, 3), Some(vec![0, 3]));
        assert_eq!(choose(&all, 4, 0), None, "all CPUs: nothing pinned");
        assert_eq!(choose(&all, 8, 0), None);
        assert_eq!(choose(&[], 1, 0), None);
        assert_eq!(choose(&[2, 5], 1, 7), Some(vec![5]));
    }

    #[test]
    fn v1_pin_writes_cpusets_and_file() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("cpuset");
        for g in ["agent", "work"] {
            std::fs::create_dir_all(m.join("sandboxd/abc").join(g)).unwrap();
        }
        std::fs::write(m.join("sandboxd/cpuset.cpus"), "0-3\n").unwrap();
        let layout = CgroupLayout::V1(vec![Hierarchy {
            controllers: vec!["cpuset".into()],
            mount: m.clone(),
        }]);
        let sbx = t.path().join("sbx");
        std::fs::create_dir(&sbx).unwrap();
        pin(&layout, "sandboxd", "abc", 2, &sbx).unwrap();
        let list = std::fs::read_to_string(sbx.join(CPUS_FILE)).unwrap();
        let cpus = parse_list(&list);
        assert_eq!(cpus.len(), 2, "{list}");
        assert!(cpus.iter().all(|c| *c < 4));
        for g in ["agent", "work"] {
            let f = std::fs::read_to_string(m.join("sandboxd/abc").join(g).join("cpuset.cpus")).unwrap();
            assert_eq!(parse_list(&f), cpus);
        }
        // as many CPUs as available: nothing pinned, the stale file goes
        pin(&layout, "sandboxd", "abc", 4, &sbx).unwrap();
        assert!(!sbx.join(CPUS_FILE).exists());
        // a missing group is an error, not silence
        std::fs::remove_dir_all(m.join("sandboxd/abc")).unwrap();
        assert!(pin(&layout, "sandboxd", "abc", 1, &sbx).is_err());
    }

    #[test]
    fn v2_only_where_enabled() {
        let t = tempfile::tempdir().unwrap();
        let layout = CgroupLayout::V2(t.path().to_path_buf());
        for g in ["agent", "work"] {
            std::fs::create_dir_all(t.path().join("sandboxd/x").join(g)).unwrap();
        }
        assert!(cpuset_files(&layout, "sandboxd", "x").is_empty());
        std::fs::write(t.path().join("sandboxd/x/work/cpuset.cpus"), "").unwrap();
        assert_eq!(
            cpuset_files(&layout, "sandboxd", "x"),
            vec![t.path().join("sandboxd/x/work/cpuset.cpus")]
        );
    }
}
