//! The sandbox's two user namespaces and the kernel counters charged through them
//! (`docs/security.md`, "two user namespaces", "Shared kernel limits").
//!
//! The helper clones the sandbox init into user namespace U1 (owned by host root, sandbox ids
//! mapped to the unprivileged host range). The agent runs in U1, and U1 owns the sandbox's
//! mount, pid, net, uts, ipc and cgroup namespaces. Before exec, the init creates U2, a child
//! of U1 with an identity map of all of U1's ids (so file ownership is the same in both), and
//! hands its fd to the agent, which moves every workload process into U2 before exec. Root in
//! U2 then holds no capability in U1: it cannot ptrace the (non-dumpable) agent, read its
//! memory or fds, or reconfigure the namespaces U1 owns.
//!
//! Counters the kernel keeps per (user namespace, uid) — namespaces, inotify and fanotify — are
//! charged at every level up to the host, including the owner of each user namespace: what
//! U2 creates is charged to (U1, sandbox root), which the init caps by writing U1's
//! `/proc/sys/user/max_*` (U2 cannot raise them: they belong to U1). The rlimit-style
//! counters (`RLIMIT_MSGQUEUE`, `RLIMIT_SIGPENDING`, `RLIMIT_MEMLOCK`, `RLIMIT_NPROC`) are
//! checked at each level against the limit the creator of the level below had when it made
//! its user namespace: the helper lifts its own so that U1 never checks against a host-wide
//! sum, and the init lowers them to per-sandbox values before it creates U2.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Per-sandbox caps written to U1's `/proc/sys/user/` by the init, after U2 exists (so the
/// one user namespace the sandbox may have is already counted; nested ones are also refused
/// by seccomp). Whatever U2 creates is charged against these.
pub const SANDBOX_UCOUNT_LIMITS: &[(&str, u32)] = &[
    ("max_user_namespaces", 0),
    ("max_uts_namespaces", 64),
    ("max_ipc_namespaces", 64),
    ("max_pid_namespaces", 64),
    ("max_mnt_namespaces", 64),
    ("max_cgroup_namespaces", 64),
    ("max_time_namespaces", 64),
    ("max_net_namespaces", 32),
    ("max_inotify_instances", 128),
    ("max_inotify_watches", 65_536),
    ("max_fanotify_groups", 16),
    ("max_fanotify_marks", 8_192),
];

/// Per-sandbox rlimits the init sets (soft and hard) before it creates U2; they become U2's
/// ceiling for the counters the kernel keeps per user namespace owner.
pub const SANDBOX_RLIMITS: &[(libc::__rlimit_resource_t, u64)] = &[
    (libc::RLIMIT_MSGQUEUE, 819_200),
    (libc::RLIMIT_SIGPENDING, 16_384),
    (libc::RLIMIT_MEMLOCK, 64 << 20),
];

/// Host-wide limits every sandbox's U1 is charged against as host root (their owner): raised
/// at start-up (never lowered) so that hundreds of sandboxes at their caps fit. The kernel
/// memory behind them is charged to the sandbox's memory cgroup.
pub const HOST_MINIMUMS: &[(&str, u64)] = &[
    ("/proc/sys/fs/inotify/max_user_instances", 65_536),
    ("/proc/sys/fs/inotify/max_user_watches", 1 << 22),
    ("/proc/sys/fs/fanotify/max_user_groups", 8_192),
    ("/proc/sys/fs/fanotify/max_user_marks", 1 << 22),
];

/// Raise the [`HOST_MINIMUMS`] that are below their minimum (logged; a failure is a warning:
/// sandboxes then share a smaller host-wide budget).
pub fn raise_host_limits() {
    for (path, min) in HOST_MINIMUMS {
        let cur = match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            // a kernel without fanotify: nothing to raise
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(path, "cannot read a host-wide limit shared by every sandbox: {e}");
                continue;
            }
        };
        if cur >= *min {
            continue;
        }
        match std::fs::write(path, min.to_string()) {
            Ok(()) => tracing::info!(
                path,
                old = cur,
                new = min,
                "raised a host-wide limit shared by every sandbox"
            ),
            Err(e) => tracing::warn!(
                path,
                "cannot raise a host-wide limit shared by every sandbox: {e}"
            ),
        }
    }
}

fn getrlimit(res: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    if unsafe { libc::getrlimit(res, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

fn setrlimit(res: libc::__rlimit_resource_t, cur: u64, max: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: setrlimit on our own process with a valid struct.
    if unsafe { libc::setrlimit(res, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lift the rlimits of [`SANDBOX_RLIMITS`] to infinity in the spawn helper (host root), so that
/// the user namespaces it creates never compare the host-wide sum of all sandboxes against
/// one process's limit. Needs `CAP_SYS_RESOURCE`; without it the soft limits are raised to
/// the hard ones and the error is returned (the sandboxes then share host root's limits for
/// these counters, see `docs/security.md`).
pub fn lift_helper_rlimits() -> io::Result<()> {
    let mut first_err = None;
    for (res, _) in SANDBOX_RLIMITS {
        if let Err(e) = setrlimit(*res, libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
            first_err.get_or_insert(e);
            let hard = getrlimit(*res)?.rlim_max;
            setrlimit(*res, hard, hard)?;
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// In the sandbox init (single-threaded, root in U1, after `/proc` of the sandbox is mounted at
/// `/proc`): set the per-sandbox rlimits, create U2 with an identity map of `id_count` ids,
/// then cap U1's counters. Returns U2's fd.
pub fn prepare_in_child(id_count: u32) -> Result<OwnedFd, (&'static str, io::Error)> {
    for (res, value) in SANDBOX_RLIMITS {
        let hard = getrlimit(*res).map_err(|e| ("rlimits", e))?.rlim_max;
        let v = (*value).min(hard);
        setrlimit(*res, v, v).map_err(|e| ("rlimits", e))?;
    }
    // The credential changes made the init non-dumpable, so its children's /proc files
    // would belong to host root and it could not write their id maps: dumpable while it makes
    // U2 (no sandbox process exists yet; exec decides again for the agent).
    let dumpable = |on: libc::c_ulong| {
        // SAFETY: prctl with integer arguments on our own process.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, on, 0, 0, 0) } != 0 {
            return Err(("workload user namespace", io::Error::last_os_error()));
        }
        Ok(())
    };
    dumpable(1)?;
    let map = format!("0 0 {id_count}\n");
    let fd = workload_userns(&map).map_err(|e| ("workload user namespace", e))?;
    dumpable(0)?;
    for (name, value) in SANDBOX_UCOUNT_LIMITS {
        match std::fs::write(format!("/proc/sys/user/{name}"), value.to_string()) {
            Ok(()) => {}
            // older kernels lack some (time namespaces: 5.6, fanotify: 5.13)
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(("sandbox ucount limits", e)),
        }
    }
    Ok(fd)
}

/// Stack of the short-lived child that makes U2 (it shares our memory, see below).
struct ChildStack(std::cell::UnsafeCell<[u8; 16 * 1024]>);
// SAFETY: only the child (on its own) ever touches it, and only one child uses it at a time.
unsafe impl Sync for ChildStack {}
static CHILD_STACK: ChildStack = ChildStack(std::cell::UnsafeCell::new([0; 16 * 1024]));

extern "C" fn hold_until_eof(arg: *mut libc::c_void) -> libc::c_int {
    let fds = arg as usize;
    let (r, w) = ((fds & 0xffff) as libc::c_int, (fds >> 16) as libc::c_int);
    let mut b = 0u8;
    // SAFETY: plain syscalls on inherited fds and a local buffer, then exit.
    unsafe {
        libc::close(w);
        libc::read(r, (&mut b as *mut u8).cast(), 1);
        libc::_exit(0)
    }
}

/// Make U2: a child cloned into a new user namespace with `CLONE_VM` (no copy of our page
/// tables) waits on a pipe while we write its maps and open its namespace; it exits when the
/// pipe closes and is not waited for (`SA_NOCLDWAIT`, or the agent's reaper, collects it).
fn workload_userns(map: &str) -> io::Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let arg = (r.as_raw_fd() as usize) | ((w.as_raw_fd() as usize) << 16);
    // SAFETY: the child runs `hold_until_eof` on CHILD_STACK (the stack grows down from its
    // end) and only makes syscalls; this process is single-threaded and never touches the
    // stack, which stays valid in the shared memory until the child exits (also across our
    // exec: the child keeps the old address space).
    let pid = unsafe {
        let top = CHILD_STACK.0.get().cast::<u8>().add(16 * 1024);
        libc::clone(
            hold_until_eof,
            top.cast(),
            libc::CLONE_NEWUSER | libc::CLONE_VM | libc::SIGCHLD,
            arg as *mut libc::c_void,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(r);
    let res = (|| {
        std::fs::write(format!("/proc/{pid}/uid_map"), map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), map)?;
        Ok(OwnedFd::from(std::fs::File::open(format!(
            "/proc/{pid}/ns/user"
        ))?))
    })();
    drop(w);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_cover_every_namespace_kind_and_forbid_nested_user_namespaces() {
        let names: Vec<&str> = SANDBOX_UCOUNT_LIMITS.iter().map(|(n, _)| *n).collect();
        for kind in ["uts", "ipc", "pid", "mnt", "cgroup", "time", "net", "user"] {
            assert!(
                names.contains(&format!("max_{kind}_namespaces").as_str()),
                "{kind}"
            );
        }
        assert_eq!(SANDBOX_UCOUNT_LIMITS[0], ("max_user_namespaces", 0));
        // the sandbox's caps fit many times into the raised host limits
        let cap = |n: &str| SANDBOX_UCOUNT_LIMITS.iter().find(|(k, _)| *k == n).unwrap().1 as u64;
        let host = |p: &str| HOST_MINIMUMS.iter().find(|(k, _)| k.ends_with(p)).unwrap().1;
        assert!(host("max_user_instances") / cap("max_inotify_instances") >= 512);
        assert!(host("max_user_watches") / cap("max_inotify_watches") >= 64);
        assert!(host("max_user_groups") / cap("max_fanotify_groups") >= 512);
    }
}
