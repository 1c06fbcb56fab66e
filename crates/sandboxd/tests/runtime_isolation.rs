//! Namespace backend: isolation and mounts, checked by a shell script run as the sandbox's
//! init (no agent needed). The script writes its findings into `/tmp` inside, which the test
//! reads from the sandbox's upper dir on the host.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod runtime_support;

use runtime_support::*;
use sandboxd_runtime::Limits;
use sandboxd_runtime::namespace::{ExecTarget, sys};
use std::time::Duration;

/// Run `script` with /bin/sh as the init of a fresh sandbox; return what it wrote to /tmp/out.
async fn run_script(tb: &TestBackend, script: &str, limits: Limits) -> (String, String) {
    let id = new_id();
    let spawned = tb
        .backend
        .spawn_init(
            spec(&id, limits),
            ExecTarget::Program {
                path: "/bin/sh".into(),
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("{{\n{script}\n}} >/tmp/out 2>&1"),
                ],
            },
        )
        .await
        .expect("spawn");
    let exited = tokio::task::spawn_blocking(move || sys::pidfd_wait_exit(&spawned.pidfd, 60_000))
        .await
        .unwrap();
    assert!(exited, "script did not finish");
    let (upper, _) = tb.backend.upper_dirs(&id);
    let out = std::fs::read_to_string(upper.join("tmp/out")).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(tb.backend.sandbox_dir(&id).join("agent.log")).unwrap_or_default();
        panic!("no output ({e}); log: {log}")
    });
    (id, out)
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in output:\n{out}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn init_sees_its_own_world() {
    require_root();
    // no pool: the fresh path (dirs and cgroups made during create)
    let tb = backend_with(|c| c.pool_size = 0);
    let secret = tb.dir.path().join("host-secret.txt");
    std::fs::write(&secret, "TOPSECRET").unwrap();
    let script = format!(
        r#"
echo uid=$(id -u)
echo pid=$$
echo hostname=$(hostname)
echo procs=$(ls /proc | grep -c '^[0-9]*$')
echo bootid=$(cat /proc/sys/kernel/random/boot_id)
echo sudo_owner=$(stat -c %u:%g /usr/bin/sudo)
echo sudo_mode=$(stat -c %a /usr/bin/sudo)
echo passwd_owner=$(stat -c %u /etc/passwd)
echo home_owner=$(stat -c %u:%g /home/user)
echo usr_local=$(ls -A /usr/local | tr '\n' ' ')
echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')
echo secret=$(cat {secret} 2>&1 | head -c 200)
echo work_visible=$(test -e /work && echo yes || echo no)
echo etc_shadow=$(grep -c '^user:' /etc/shadow)
echo hosts=$(grep -c "$(hostname)" /etc/hosts)
echo write_usr=$(echo hi > /usr/share/sbx-test && cat /usr/share/sbx-test)
echo append_bashrc=$(echo '# x' >> /etc/bash.bashrc && echo ok)
echo mkdir_user=$(mkdir /home/user/d && chown 1000:1000 /home/user/d && stat -c %u /home/user/d)
echo devnull=$(echo x > /dev/null && echo ok)
echo ptmx=$(test -c /dev/pts/ptmx && echo ok)
echo mount=$(mount -t tmpfs none /mnt 2>&1 | head -c 60)
echo sys=$(test -d /sys/kernel && echo yes || echo no)
echo cgroupns=$(cat /proc/self/cgroup | head -1)
echo oom=$(cat /proc/self/oom_score_adj)
echo core=$(ulimit -c):$(ulimit -Hc)
echo hostpaths=$(grep -c -e /var/tmp -e /work/main -e sbxrt /proc/self/mountinfo)
echo syscalls=$(python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
out = []
for name, nr, args in [("keyctl", 250, (0, 0)), ("bpf", 321, (0, 0, 0)), ("io_uring_setup", 425, (1, 0)),
                       ("perf_event_open", 298, (0, 0, 0, 0, 0)), ("setns", 308, (0, 0)), ("clone3", 435, (0, 0)),
                       ("unshare_user", 272, (0x10000000,)), ("pivot_root", 155, (0, 0)), ("open_tree", 428, (0, 0, 0)),
                       ("init_module", 175, (0, 0, 0)), ("x32_getpid", 0x40000000 + 39, ())]:
    r = libc.syscall(nr, *args)
    out.append("%s:%s" % (name, os.strerror(ctypes.get_errno()) if r < 0 else "ok"))
print(" ".join(out), "getpid:%d" % libc.syscall(39))
')
"#,
        secret = secret.display()
    );
    let (id, out) = run_script(&tb, &script, Limits::default()).await;
    eprintln!("{out}");
    assert_eq!(line(&out, "uid"), "0");
    assert_eq!(line(&out, "pid"), "1", "the init is PID 1");
    assert_eq!(line(&out, "hostname"), "sandbox");
    let procs: u32 = line(&out, "procs").parse().unwrap();
    assert!(procs <= 5, "sees only its own processes, got {procs}");
    assert_eq!(line(&out, "bootid").len(), 36);
    assert_eq!(
        line(&out, "sudo_owner"),
        "0:0",
        "idmapped /usr: root-owned inside"
    );
    assert_eq!(line(&out, "sudo_mode"), "4755");
    assert_eq!(line(&out, "passwd_owner"), "0");
    assert_eq!(line(&out, "home_owner"), "1000:1000");
    assert_eq!(
        line(&out, "usr_local")
            .split_whitespace()
            .collect::<Vec<_>>()
            .len(),
        8,
        "only our empty dirs"
    );
    assert_eq!(line(&out, "ifaces").trim(), "lo");
    assert!(
        line(&out, "secret").contains("No such file"),
        "{}",
        line(&out, "secret")
    );
    assert_eq!(line(&out, "work_visible"), "no");
    assert_eq!(line(&out, "etc_shadow"), "1");
    assert_eq!(line(&out, "hosts"), "1");
    assert_eq!(line(&out, "write_usr"), "hi", "copy-up in /usr works");
    assert_eq!(line(&out, "append_bashrc"), "ok", "copy-up in /etc works");
    assert_eq!(line(&out, "mkdir_user"), "1000");
    assert_eq!(line(&out, "devnull"), "ok");
    assert_eq!(line(&out, "ptmx"), "ok");
    assert!(
        line(&out, "mount").contains("ermission denied"),
        "mount denied: {}",
        line(&out, "mount")
    );
    assert_eq!(line(&out, "sys"), "yes");
    // -1000 needs CAP_SYS_RESOURCE on the host, which some hosts (containers) drop
    assert_eq!(
        line(&out, "oom"),
        if has_cap_sys_resource() { "-1000" } else { "0" }
    );
    assert_eq!(
        line(&out, "hostpaths"),
        "0",
        "no host path in the sandbox's mount table"
    );
    let sc = line(&out, "syscalls");
    for denied in [
        "keyctl",
        "bpf",
        "io_uring_setup",
        "perf_event_open",
        "setns",
        "unshare_user",
        "pivot_root",
        "open_tree",
        "init_module",
        "x32_getpid",
    ] {
        assert!(
            sc.contains(&format!("{denied}:Operation not permitted")),
            "{denied} must be EPERM: {sc}"
        );
    }
    assert!(sc.contains("clone3:Function not implemented"), "{sc}");
    assert!(sc.contains("getpid:"), "{sc}");
    // the write went to the upper dir, not the host
    assert!(!std::path::Path::new("/usr/share/sbx-test").exists());
    let (_, upper_usr) = tb.backend.upper_dirs(&id);
    assert_eq!(
        std::fs::read_to_string(upper_usr.join("share/sbx-test")).unwrap(),
        "hi\n"
    );
    tb.backend.destroy_blocking(&id).unwrap();
    assert!(!tb.backend.sandbox_dir(&id).exists());
    tokio::time::sleep(Duration::from_millis(1)).await;
}
