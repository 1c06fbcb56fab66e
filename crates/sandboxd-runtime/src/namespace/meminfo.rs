//! `/proc/meminfo` = `memoryMB` (`docs/limits.md`): the daemon writes `<sbx>/meminfo`, a copy
//! of the host's file with the memory figures replaced by the sandbox's limit, and the init
//! binds it read-only over `/proc/meminfo` ([`bind_in_child`]), so `free`, `top` and runtimes
//! that size themselves from `MemTotal` see the limit.
//!
//! It is a **static** view written at boot: `MemTotal` is the limit, `MemFree` and
//! `MemAvailable` are the limit too (the sandbox starts empty), caches and swap are 0. It does
//! not follow the sandbox's use; the metrics API has the live numbers. Opt out with
//! `SANDBOXD_MEMINFO=host` in the daemon's environment (sandboxes then see the host's file).

use crate::RuntimeError;
use std::io::ErrorKind;
use std::path::Path;

/// File in the sandbox dir with the generated meminfo (absent: the host's is shown).
pub const MEMINFO_FILE: &str = "meminfo";

/// Whether the generated view is disabled (`SANDBOXD_MEMINFO=host`).
pub fn disabled() -> bool {
    std::env::var("SANDBOXD_MEMINFO").as_deref() == Ok("host")
}

/// Render a meminfo text for a sandbox with `limit_kb` of memory from the host's text: the
/// totals become the limit, use and caches 0 (swap is off in sandboxes), every other `kB`
/// figure is capped at the limit; lines keep the kernel's layout (`Key:` padded to 16, value
/// right-aligned in 8).
pub fn render(host: &str, limit_kb: u64) -> String {
    let mut out = String::with_capacity(host.len());
    let mut seen_total = false;
    for line in host.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let rest = rest.trim();
        let (num, unit) = match rest.split_once(' ') {
            Some((n, u)) => (n, Some(u.trim())),
            None => (rest, None),
        };
        let Ok(v) = num.parse::<u64>() else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let v = match (key, unit) {
            ("MemTotal" | "MemFree" | "MemAvailable" | "CommitLimit", _) => limit_kb,
            (
                "Buffers" | "Cached" | "SwapCached" | "SwapTotal" | "SwapFree" | "Zswap" | "Zswapped"
                | "Dirty" | "Writeback" | "Shmem" | "ShmemHugePages" | "ShmemPmdMapped" | "Active"
                | "Inactive" | "Active(anon)" | "Inactive(anon)" | "Active(file)" | "Inactive(file)"
                | "Unevictable" | "Mlocked" | "AnonPages" | "Mapped" | "Slab" | "SReclaimable" | "SUnreclaim"
                | "KReclaimable" | "Committed_AS" | "AnonHugePages" | "FileHugePages" | "FilePmdMapped"
                | "KernelStack" | "PageTables" | "SecPageTables" | "NFS_Unstable" | "Bounce" | "WritebackTmp"
                | "Percpu",
                Some("kB"),
            ) => 0,
            (_, Some("kB")) => v.min(limit_kb),
            _ => v,
        };
        seen_total |= key == "MemTotal";
        let label = format!("{key}:");
        match unit {
            Some(u) => out.push_str(&format!("{label:<16}{v:>8} {u}\n")),
            None => out.push_str(&format!("{label:<16}{v:>8}\n")),
        }
    }
    if !seen_total {
        // not a meminfo text: the minimum `free` needs
        out = format!(
            "MemTotal:       {limit_kb:>8} kB\nMemFree:        {limit_kb:>8} kB\nMemAvailable:   {limit_kb:>8} kB\n\
             Buffers:               0 kB\nCached:                0 kB\nSwapTotal:             0 kB\n\
             SwapFree:              0 kB\n"
        );
    }
    out
}

/// Write `<sbx>/meminfo` for a limit of `memory_mb` (or remove it when disabled).
pub fn write(sbx: &Path, memory_mb: u64) -> Result<(), RuntimeError> {
    let file = sbx.join(MEMINFO_FILE);
    if disabled() {
        return match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(step(format!("removing {}: {e}", file.display()))),
        };
    }
    let host = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let text = render(&host, memory_mb.saturating_mul(1024));
    let tmp = sbx.join(".meminfo.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| step(format!("writing {}: {e}", file.display())))
}

fn step(message: String) -> RuntimeError {
    RuntimeError::Step {
        step: "meminfo",
        message,
    }
}

/// In the sandbox init, after `/proc` is mounted and with the cwd at the new root (sandbox dir
/// reached through the `O_PATH` fd `sbx`): bind `<sbx>/meminfo`, copied to a scratch tmpfs so
/// the mount table names no host path, read-only over `proc/meminfo`. No file: nothing done.
pub fn bind_in_child(sbx: std::os::fd::RawFd) -> std::io::Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let text = match std::fs::read(format!("/proc/self/fd/{sbx}/{MEMINFO_FILE}")) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        "tmp",
        Some("tmpfs"),
        flags,
        Some("size=16k,mode=755"),
    )?;
    let r = (|| -> std::io::Result<()> {
        std::fs::write("tmp/meminfo", &text[..text.len().min(12 << 10)])?;
        mount(
            Some("tmp/meminfo"),
            "proc/meminfo",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })();
    umount2("tmp", MntFlags::MNT_DETACH)?;
    r?;
    mount(
        None::<&str>,
        "proc/meminfo",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "MemTotal:        8024300 kB\nMemFree:         1234567 kB\nMemAvailable:    5000000 kB\n\
Buffers:          100000 kB\nCached:          2000000 kB\nSwapCached:            0 kB\nActive:          3000000 kB\n\
SwapTotal:       1000000 kB\nSwapFree:        1000000 kB\nVmallocTotal:   34359738367 kB\nHugePages_Total:       0\n\
Hugepagesize:       2048 kB\n";

    fn field(text: &str, key: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn totals_are_the_limit() {
        let t = render(HOST, 512 * 1024);
        assert_eq!(field(&t, "MemTotal"), Some(524288));
        assert_eq!(field(&t, "MemFree"), Some(524288));
        assert_eq!(field(&t, "MemAvailable"), Some(524288));
        assert_eq!(field(&t, "Buffers"), Some(0));
        assert_eq!(field(&t, "Cached"), Some(0));
        assert_eq!(field(&t, "SwapTotal"), Some(0));
        assert_eq!(field(&t, "SwapFree"), Some(0));
        assert_eq!(field(&t, "Active"), Some(0));
        assert_eq!(field(&t, "VmallocTotal"), Some(524288), "capped");
        assert_eq!(field(&t, "Hugepagesize"), Some(2048));
        assert_eq!(field(&t, "HugePages_Total"), Some(0));
        // the kernel's layout: `free` and procps parse it
        assert!(t.starts_with("MemTotal:         524288 kB\n"), "{t}");
        assert!(t.contains("HugePages_Total:       0\n"), "{t}");
        assert_eq!(t.lines().count(), HOST.lines().count());
    }

    #[test]
    fn garbage_host_text_still_gives_totals() {
        let t = render("nonsense", 1024);
        assert_eq!(field(&t, "MemTotal"), Some(1024));
        assert_eq!(field(&t, "MemAvailable"), Some(1024));
        assert_eq!(field(&t, "SwapTotal"), Some(0));
    }

    #[test]
    fn write_and_opt_out() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), 256).unwrap();
        let t = std::fs::read_to_string(d.path().join(MEMINFO_FILE)).unwrap();
        assert_eq!(field(&t, "MemTotal"), Some(256 * 1024));
        assert!(!d.path().join(".meminfo.tmp").exists());
    }
}
