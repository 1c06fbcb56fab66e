//! Namespace backend with the real agent, attacked from inside as root: the agent (PID 1) is
//! out of reach of the workload (it lives in the sandbox's first user namespace, every
//! workload process in a child one), and the kernel counters charged through the sandbox's
//! user namespaces stop at per-sandbox caps so that other sandboxes keep working
//! (`docs/security.md`).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod runtime_support;

use runtime_support::*;
use sandboxd_runtime::{AgentEndpoint, Limits, SandboxBackend};

fn api(h: &sandboxd_runtime::SandboxHandle) -> std::path::PathBuf {
    let AgentEndpoint::Unix(p) = &h.api;
    p.clone()
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in output:\n{out}"))
}

const TOKEN: &str = "envd-token-7c1f0e5b9a";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn agent_is_out_of_reach_of_sandbox_root() {
    require_root();
    let tb = backend();
    let id = new_id();
    let mut s = spec(&id, Limits::default());
    s.agent.access_token = Some(TOKEN.into());
    let h = tb.backend.create(s).await.expect("create");
    let script = format!(
        r#"python3 - <<'EOF'
import ctypes, glob, os
libc = ctypes.CDLL(None, use_errno=True)
def res(r):
    return "ok" if r >= 0 else os.strerror(ctypes.get_errno())
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
print("ptrace_attach=" + res(libc.ptrace(16, 1, None, None)))
print("ptrace_seize=" + res(libc.ptrace(0x4206, 1, None, None)))
pidfd = libc.syscall(434, 1, 0)
print("pidfd_open=" + res(pidfd))
print("pidfd_getfd=" + res(libc.syscall(438, pidfd, 5, 0) if pidfd >= 0 else -1))
for f in ("mem", "environ", "maps"):
    try:
        open("/proc/1/" + f, "rb").read(64)
        print(f + "=ok")
    except OSError as e:
        print(f + "=" + e.strerror)
for f in ("fd/1", "fd/5", "cwd", "root", "ns/user"):
    try:
        print(f + "=readable:" + os.readlink("/proc/1/" + f))
    except OSError as e:
        print(f + "=" + e.strerror)
found = []
for p in glob.glob("/proc/[0-9]*"):
    for f in ("environ", "cmdline"):
        try:
            if b"{reversed}"[::-1] in open(p + "/" + f, "rb").read():
                found.append(p + "/" + f)
        except OSError:
            pass
print("token_found=" + (",".join(found) or "none"))
EOF
echo sudo=$(su user -c 'sudo -n id -u' 2>&1)
echo owner=$(touch /tmp/rootfile && stat -c %u /tmp/rootfile)"#,
        // the script's own command line must not contain the token
        reversed = TOKEN.chars().rev().collect::<String>()
    );
    let out = run_with_token(&api(&h), "root", &script, Some(TOKEN)).await;
    let o = &out.stdout;
    eprintln!("{o}\n{}", out.stderr);
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    for key in ["ptrace_attach", "ptrace_seize", "pidfd_getfd"] {
        assert_eq!(line(o, key), "Operation not permitted", "{key}: {o}");
    }
    for key in ["mem", "environ", "maps"] {
        assert_eq!(line(o, key), "Permission denied", "{key}: {o}");
    }
    assert_eq!(line(o, "pidfd_open"), "ok", "pidfd_open itself is harmless");
    for key in ["fd/1", "fd/5", "cwd", "root", "ns/user"] {
        assert_eq!(line(o, key), "Permission denied", "{key}: {o}");
    }
    assert_eq!(line(o, "token_found"), "none", "the envd token is readable: {o}");
    assert_eq!(line(o, "sudo"), "0", "sudo still works: {o}");
    assert_eq!(line(o, "owner"), "0", "root inside still owns its files: {o}");
    // the agent is the only process outside the workload namespace; file ownership as seen
    // from the host is unchanged (sandbox root = the map's base)
    let agent_userns = std::fs::read_link(format!("/proc/{}/ns/user", h.agent_pid)).unwrap();
    let out = run_with_token(
        &api(&h),
        "user",
        "readlink /proc/self/ns/user; echo x > ~/f",
        Some(TOKEN),
    )
    .await;
    assert_ne!(out.stdout.trim(), agent_userns.to_string_lossy(), "{out:?}");
    let (upper, _) = tb.backend.upper_dirs(&id);
    let meta = std::fs::metadata(upper.join("home/user/f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), tb.backend.config().idmap.base + 1000);
    tb.backend.destroy(&id).await.unwrap();
}

/// Creates namespaces of each kind from inside (each held by an open fd) until the kernel
/// refuses (at most 200, so that a missing cap cannot exhaust the host), then inotify
/// instances; reports, then keeps everything alive.
const HOLD_SCRIPT: &str = r#"cat > /tmp/hold.py <<'EOF'
import ctypes, errno, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
kinds = {"uts": 0x04000000, "ipc": 0x08000000, "net": 0x40000000, "mnt": 0x00020000, "cgroup": 0x02000000}
for name, flag in kinds.items():
    held, err = [], "none"
    for _ in range(200):
        if libc.unshare(flag) != 0:
            err = errno.errorcode[ctypes.get_errno()]
            break
        held.append(os.open("/proc/self/ns/" + name, os.O_RDONLY))
    print("%s=%d:%s" % (name, len(held), err))
n = 0
while n < 100000 and libc.inotify_init1(0) >= 0:
    n += 1
print("inotify=%d:%s" % (n, errno.errorcode[ctypes.get_errno()]))
print("done=1", flush=True)
time.sleep(600)
EOF
python3 /tmp/hold.py > /tmp/hold.out 2>&1 &
for i in $(seq 300); do grep -q done= /tmp/hold.out && break; sleep 0.2; done
cat /tmp/hold.out"#;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn namespaces_and_inotify_stop_at_per_sandbox_caps() {
    require_root();
    let tb = backend();
    let a = tb
        .backend
        .create(spec(&new_id(), Limits::default()))
        .await
        .expect("create a");
    // sandbox A holds as many namespaces and inotify instances as it can, in background
    // processes that stay alive while B is created
    let out = run(&api(&a), "root", HOLD_SCRIPT).await;
    let o = &out.stdout;
    eprintln!("{o}\n{}", out.stderr);
    for (kind, cap) in [("uts", 64), ("ipc", 64), ("net", 32), ("mnt", 64), ("cgroup", 64)] {
        let (n, err) = line(o, kind).split_once(':').unwrap();
        let n: u32 = n.parse().unwrap();
        assert!(n <= cap && n >= cap - 2, "{kind}: {n} namespaces, cap {cap}: {o}");
        assert_eq!(err, "ENOSPC", "{kind}: {o}");
    }
    let (n, err) = line(o, "inotify").split_once(':').unwrap();
    assert!(n.parse::<u32>().unwrap() <= 128, "{o}");
    assert_eq!(err, "EMFILE", "{o}");

    // another sandbox is created, can unshare and watch a directory
    let b = tb
        .backend
        .create(spec(&new_id(), Limits::default()))
        .await
        .expect("create b");
    let out = run(
        &api(&b),
        "root",
        "unshare -u sh -c 'hostname inner; hostname' && python3 -c 'import ctypes; print(\"inotify_ok\" if ctypes.CDLL(None).inotify_init1(0) >= 0 else \"inotify_failed\")'",
    )
    .await;
    assert_eq!(out.stdout, "inner\ninotify_ok\n", "{out:?}");
    let auth = "Basic cm9vdDo="; // root:
    let (code, body) = http_unix(
        &api(&b),
        "POST",
        "/filesystem.Filesystem/CreateWatcher",
        &[("Content-Type", "application/json"), ("Authorization", auth)],
        br#"{"path":"/tmp","recursive":false}"#,
    )
    .await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let watcher: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let wid = watcher["watcherId"].as_str().unwrap().to_string();
    run(&api(&b), "root", "touch /tmp/seen").await;
    let (code, body) = http_unix(
        &api(&b),
        "POST",
        "/filesystem.Filesystem/GetWatcherEvents",
        &[("Content-Type", "application/json"), ("Authorization", auth)],
        format!(r#"{{"watcherId":"{wid}"}}"#).as_bytes(),
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("seen"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    tb.backend.destroy(&a.id).await.unwrap();
    tb.backend.destroy(&b.id).await.unwrap();
}
