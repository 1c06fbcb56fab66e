//! Same-run baselines: host operations measured next to the sandbox numbers, so that results
//! from a noisy machine compare as ratios.

use crate::report::{Baseline, HostFile};
use crate::stats::Summary;
use std::ffi::CString;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The bubblewrap command of the baseline (arguments after `bwrap`).
pub const BWRAP_ARGS: &[&str] = &[
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "/bin/true",
];

/// Finds an executable in `PATH`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// fork + exec + waitpid of `argv` (with `env` as the whole environment when given, else the
/// bench's own); returns the wall time and whether it exited 0.
pub fn fork_exec(argv: &[CString], env: Option<&[CString]>) -> std::io::Result<(Duration, bool)> {
    if argv.is_empty() {
        return Err(std::io::Error::other("empty argv"));
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.unwrap_or(&[]).iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let with_env = env.is_some();
    let t0 = Instant::now();
    // SAFETY: the child only calls async-signal-safe functions (execv, _exit) on memory
    // prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: argv and envp are NULL-terminated arrays of valid C strings.
        unsafe {
            if with_env {
                libc::execve(ptrs[0], ptrs.as_ptr(), envp.as_ptr());
            } else {
                libc::execv(ptrs[0], ptrs.as_ptr());
            }
            libc::_exit(127);
        }
    }
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((t0.elapsed(), ok))
}

fn cstrings(argv: &[&str]) -> Vec<CString> {
    argv.iter().filter_map(|a| CString::new(*a).ok()).collect()
}

/// Runs `argv` `runs` times (after `warmup` untimed runs) and summarises.
pub fn measure_command(name: &str, argv: &[&str], warmup: usize, runs: usize) -> Baseline {
    measure_command_env(name, argv, None, warmup, runs)
}

/// [`measure_command`] with `env` as the whole environment.
pub fn measure_command_env(
    name: &str,
    argv: &[&str],
    env: Option<&[&str]>,
    warmup: usize,
    runs: usize,
) -> Baseline {
    let c = cstrings(argv);
    let env = env.map(cstrings);
    let command = argv.join(" ");
    let mut samples = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        match fork_exec(&c, env.as_deref()) {
            Ok((d, true)) => {
                if i >= warmup {
                    samples.push(d);
                }
            }
            Ok((_, false)) => {
                return Baseline {
                    name: name.into(),
                    command,
                    available: false,
                    skip_reason: Some("the command failed".into()),
                    latency: None,
                };
            }
            Err(e) => {
                return Baseline {
                    name: name.into(),
                    command,
                    available: false,
                    skip_reason: Some(format!("fork/exec: {e}")),
                    latency: None,
                };
            }
        }
    }
    Baseline {
        name: name.into(),
        command,
        available: true,
        skip_reason: None,
        latency: Summary::of_durations(&samples),
    }
}

/// The bubblewrap baseline, or a skipped one when `bwrap` is missing.
pub fn bwrap(warmup: usize, runs: usize) -> Baseline {
    let name = "bwrap --unshare-all … /bin/true";
    match which("bwrap") {
        Some(p) => {
            let p = p.to_string_lossy().to_string();
            let mut argv = vec![p.as_str()];
            argv.extend_from_slice(BWRAP_ARGS);
            measure_command(name, &argv, warmup, runs)
        }
        None => Baseline {
            name: name.into(),
            command: format!("bwrap {}", BWRAP_ARGS.join(" ")),
            available: false,
            skip_reason: Some("bwrap is not installed (apt install bubblewrap); no ratio".into()),
            latency: None,
        },
    }
}

/// `readdir` + `lstat` of every entry of a host directory holding `entries` files (made in
/// `scratch`, removed afterwards).
pub fn host_listdir(scratch: &Path, entries: usize, runs: usize) -> std::io::Result<Baseline> {
    let dir = scratch.join("host-listdir");
    std::fs::create_dir_all(&dir)?;
    for i in 0..entries {
        std::fs::File::create(dir.join(format!("f{i}")))?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs + 1 {
        let t0 = Instant::now();
        let mut n = 0usize;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let _ = std::fs::symlink_metadata(e.path())?;
            n += 1;
        }
        if n != entries {
            return Err(std::io::Error::other(format!("listed {n} of {entries} entries")));
        }
        samples.push(t0.elapsed());
    }
    samples.remove(0);
    std::fs::remove_dir_all(&dir)?;
    Ok(Baseline {
        name: format!("readdir + lstat of {entries} files"),
        command: "std::fs::read_dir + symlink_metadata".into(),
        available: true,
        skip_reason: None,
        latency: Summary::of_durations(&samples),
    })
}

/// Page-cache write (create + write, no fsync) and read of a `size`-byte host file, in MB/s.
pub fn host_file(scratch: &Path, size: u64, runs: usize) -> std::io::Result<HostFile> {
    let path = scratch.join("host-file.bin");
    let chunk = crate::pattern_chunk();
    let mut w = Vec::with_capacity(runs);
    let mut r = Vec::with_capacity(runs);
    let mut buf = vec![0u8; chunk.len()];
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut f = std::fs::File::create(&path)?;
        let mut left = size;
        while left > 0 {
            let n = (chunk.len() as u64).min(left) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        drop(f);
        w.push(mb_per_s(size, t0.elapsed()));
        let t0 = Instant::now();
        let mut f = std::fs::File::open(&path)?;
        let mut got = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        if got != size {
            return Err(std::io::Error::other("short read"));
        }
        r.push(mb_per_s(size, t0.elapsed()));
    }
    std::fs::remove_file(&path)?;
    let err = || std::io::Error::other("no samples");
    Ok(HostFile {
        size_bytes: size,
        write: Summary::of(&w, "MB/s").ok_or_else(err)?,
        read: Summary::of(&r, "MB/s").ok_or_else(err)?,
    })
}

/// Throughput in MB/s (10^6 bytes per second).
pub fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_exec_true_and_false() {
        let t = measure_command("true", &["/bin/true"], 1, 5);
        assert!(t.available);
        let s = t.latency.unwrap();
        assert_eq!(s.n, 5);
        assert!(s.p50 > 0.0 && s.p50 < 1000.0);
        let f = measure_command("false", &["/bin/false"], 0, 3);
        assert!(!f.available);
        assert!(f.skip_reason.unwrap().contains("failed"));
        let missing = measure_command("missing", &["/nonexistent/bin"], 0, 1);
        assert!(!missing.available);
        // The given environment is the whole environment.
        let env = measure_command_env(
            "env",
            &["/bin/sh", "-c", "test \"$X\" = 1 && test -z \"$HOME\""],
            Some(&["X=1"]),
            0,
            2,
        );
        assert!(env.available, "{:?}", env.skip_reason);
        let no = measure_command_env("env", &["/bin/sh", "-c", "test \"$X\" = 1"], Some(&[]), 0, 1);
        assert!(!no.available);
    }

    #[test]
    fn throughput() {
        assert_eq!(mb_per_s(2_000_000, Duration::from_secs(1)), 2.0);
        assert!(mb_per_s(1, Duration::ZERO).is_finite());
    }

    #[test]
    fn host_io_baselines() {
        let tmp = tempfile::tempdir().unwrap();
        let l = host_listdir(tmp.path(), 50, 3).unwrap();
        assert_eq!(l.latency.unwrap().n, 3);
        assert!(!tmp.path().join("host-listdir").exists());
        let f = host_file(tmp.path(), 3 << 20, 2).unwrap();
        assert_eq!(f.write.n, 2);
        assert!(f.read.p50 > 0.0);
        assert!(!tmp.path().join("host-file.bin").exists());
    }
}
