//! Namespace backend with the real agent: create returns once `GET /health` answers 204;
//! commands run through `process.Process/Start` over `run/agent.sock`.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod runtime_support;

use runtime_support::*;
use sandboxd_runtime::{AgentEndpoint, Limits, SandboxBackend};
use std::time::{Duration, Instant};

fn api(h: &sandboxd_runtime::SandboxHandle) -> std::path::PathBuf {
    let AgentEndpoint::Unix(p) = &h.api;
    p.clone()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn create_run_destroy() {
    require_root();
    let tb = backend();
    let id = new_id();
    let h = tb
        .backend
        .create(spec(&id, Limits::default()))
        .await
        .expect("create");
    assert!(tb.backend.is_alive(&h));
    let (code, _) = http_unix(&api(&h), "GET", "/health", &[], b"").await;
    assert_eq!(code, 204);
    let out = run(
        &api(&h),
        "user",
        "echo hi; id -u; cat /proc/1/cmdline | tr '\\0' ' '; echo",
    )
    .await;
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "hi\n1000\nsandboxd agent --boot \n", "{out:?}");
    assert!(tb.backend.list_host_sandboxes().await.unwrap().contains(&id));
    // the agent sits in <id>/agent of every hierarchy; its children in <id>/work
    for hier in ["memory", "pids", "cpu", "freezer"] {
        let g = std::path::Path::new("/sys/fs/cgroup")
            .join(hier)
            .join(&tb.backend.config().cgroup_root)
            .join(&id);
        if g.is_dir() {
            let procs = std::fs::read_to_string(g.join("agent/cgroup.procs")).unwrap();
            assert_eq!(procs.trim(), h.agent_pid.to_string(), "{hier}: {procs}");
        }
    }
    let out = run(
        &api(&h),
        "user",
        "cat /proc/self/cgroup | grep -E ':(memory|pids):'",
    )
    .await;
    assert!(
        out.stdout.contains("memory:/../work") || out.stdout.contains("memory:/work"),
        "{out:?}"
    );

    tb.backend.destroy(&h.id).await.unwrap();
    assert!(!tb.backend.is_alive(&h));
    assert!(!tb.backend.sandbox_dir(&id).exists());
    assert!(!tb.backend.list_host_sandboxes().await.unwrap().contains(&id));
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory/sandboxd-test")
            .join(&id)
            .exists()
    );
    tb.backend.destroy(&h.id).await.expect("destroy is idempotent");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn isolation_from_inside() {
    require_root();
    let tb = backend();
    let id = new_id();
    let h = tb
        .backend
        .create(spec(&id, Limits::default()))
        .await
        .expect("create");
    let sock = api(&h);

    // only its own processes
    let out = run(&sock, "user", "ls /proc | grep -c '^[0-9][0-9]*$'").await;
    let n: u32 = out.stdout.trim().parse().unwrap_or(999);
    assert!(n <= 6, "sees {n} processes: {out:?}");

    // a host file outside the template is not visible
    let secret = tb.dir.path().join("secret.txt");
    std::fs::write(&secret, "TOPSECRET").unwrap();
    let out = run(&sock, "root", &format!("cat {} /proc/1/root{} 2>&1; grep -r TOPSECRET / --exclude-dir=proc --exclude-dir=sys -l 2>/dev/null | head -3", secret.display(), secret.display())).await;
    assert!(!out.stdout.contains("TOPSECRET"), "{out:?}");
    assert!(out.stdout.contains("No such file"), "{out:?}");

    // root inside cannot change host files: writes land in the upper dirs
    let host_env = std::fs::read("/usr/bin/env").unwrap();
    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    let out = run(
        &sock,
        "root",
        "echo pwned > /usr/bin/env; echo pwned >> /etc/passwd; echo 1 > /proc/sys/kernel/sysrq; echo done",
    )
    .await;
    assert!(out.stdout.contains("done"), "{out:?}");
    assert_eq!(std::fs::read("/usr/bin/env").unwrap(), host_env);
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), host_passwd);
    let out = run(
        &sock,
        "root",
        "mount -t tmpfs x /mnt 2>&1; unshare -U true 2>&1; echo end",
    )
    .await;
    assert!(
        out.stdout.contains("permission denied") || out.stdout.contains("Operation not permitted"),
        "{out:?}"
    );

    // no network beyond loopback
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = run(
        &sock,
        "user",
        &format!(
            "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; \
         (echo > /dev/tcp/127.0.0.1/{port}) 2>&1 | tail -1; (echo > /dev/tcp/10.0.2.2/80) 2>&1 | tail -1; \
         (echo > /dev/tcp/198.51.100.1/53) 2>&1 | tail -1"
        ),
    )
    .await;
    assert!(out.stdout.starts_with("lo\n"), "{out:?}");
    assert!(out.stdout.contains("Connection refused"), "{out:?}");
    assert!(out.stdout.contains("Network is unreachable"), "{out:?}");
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "the host listener got a connection from the sandbox"
    );

    // sudo works for user
    let out = run(&sock, "user", "sudo -n echo ok; sudo -n id -u").await;
    assert_eq!(out.stdout, "ok\n0\n", "{out:?}");

    // /usr/local of the host is not visible
    let out = run(&sock, "user", "ls -A /usr/local/bin | wc -l; ls /usr/local").await;
    assert!(out.stdout.starts_with("0\n"), "{out:?}");

    tb.backend.destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn memory_limit_kills_only_the_offender() {
    require_root();
    // pooled slots carry default limits: this checks that claiming one applies the request's
    let tb = backend_pooled();
    let small = Limits {
        memory_mb: 64,
        ..Limits::default()
    };
    let (a, b) = (new_id(), new_id());
    let ha = tb.backend.create(spec(&a, small)).await.expect("create a");
    let hb = tb
        .backend
        .create(spec(&b, Limits::default()))
        .await
        .expect("create b");
    let out = run(
        &api(&ha),
        "user",
        "python3 -c 'x = bytearray(200 * 1024 * 1024); print(len(x))'",
    )
    .await;
    assert_ne!(
        out.exit_code,
        Some(0),
        "allocation over the limit must die: {out:?}"
    );
    assert!(!out.stdout.contains("209715200"), "{out:?}");
    // both agents keep serving
    let out = run(&api(&ha), "user", "echo alive").await;
    assert_eq!(out.stdout, "alive\n", "{out:?}");
    let out = run(
        &api(&hb),
        "user",
        "python3 -c 'x = bytearray(100 * 1024 * 1024); print(len(x))'",
    )
    .await;
    assert_eq!(out.stdout, "104857600\n", "{out:?}");
    tb.backend.destroy(&a).await.unwrap();
    tb.backend.destroy(&b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn fork_bomb_stops_at_pids_limit() {
    require_root();
    let tb = backend();
    let id = new_id();
    let limits = Limits {
        pids: 64,
        ..Limits::default()
    };
    let h = tb.backend.create(spec(&id, limits)).await.expect("create");
    let script = "python3 -c '
import os, time
n = 0
try:
    while n < 1000:
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        n += 1
except OSError as e:
    print(n, e.errno)
'";
    let out = run(&api(&h), "user", script).await;
    let mut it = out.stdout.split_whitespace();
    let n: u32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(9999);
    assert!(n < 64, "forked {n} times: {out:?}");
    assert_eq!(it.next(), Some("11"), "EAGAIN: {out:?}");
    let (code, _) = http_unix(&api(&h), "GET", "/health", &[], b"").await;
    assert_eq!(code, 204, "the agent is outside the pids limit");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = run(&api(&h), "user", "echo recovered").await;
    assert_eq!(out.stdout, "recovered\n", "{out:?}");
    tb.backend.destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn bad_specs_fail_cleanly() {
    require_root();
    let tb = backend();
    let bad_id = spec("Bad/Id", Limits::default());
    assert!(tb.backend.create(bad_id).await.is_err());
    let mut s = spec(&new_id(), Limits::default());
    s.template = "nope".into();
    assert!(matches!(
        tb.backend.create(s).await,
        Err(sandboxd_runtime::RuntimeError::TemplateNotFound(_))
    ));
    let id = new_id();
    let s = spec(
        &id,
        Limits {
            memory_mb: 1,
            ..Limits::default()
        },
    );
    assert!(tb.backend.create(s).await.is_err());
    assert!(!tb.backend.sandbox_dir(&id).exists());
    assert!(tb.backend.destroy("../etc").await.is_err());
    // a failure inside the sandbox init is reported with its step and leaves nothing behind
    let id = new_id();
    let err = tb
        .backend
        .spawn_init(
            spec(&id, Limits::default()),
            sandboxd_runtime::namespace::ExecTarget::Program {
                path: "/nonexistent".into(),
                argv: vec!["x".into()],
            },
        )
        .await
        .expect_err("exec of a missing program fails");
    assert!(
        matches!(&err, sandboxd_runtime::RuntimeError::Step { step: "exec program", message } if message.contains("No such file")),
        "{err:?}"
    );
    assert!(!tb.backend.sandbox_dir(&id).exists());
    assert!(!tb.backend.list_host_sandboxes().await.unwrap().contains(&id));
    tb.backend
        .destroy("neverexisted")
        .await
        .expect("unknown id is fine");
    // a duplicate id is refused without harming the first sandbox
    let id = new_id();
    let h = tb.backend.create(spec(&id, Limits::default())).await.unwrap();
    assert!(tb.backend.create(spec(&id, Limits::default())).await.is_err());
    assert!(tb.backend.is_alive(&h));
    let out = run(&api(&h), "user", "echo still").await;
    assert_eq!(out.stdout, "still\n");
    tb.backend.destroy(&id).await.unwrap();
    assert!(
        tb.backend.list_host_sandboxes().await.unwrap().is_empty(),
        "nothing left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn create_latency() {
    require_root();
    let tb = backend_pooled();
    // warm up (page cache, first helper request)
    let id = new_id();
    tb.backend.create(spec(&id, Limits::default())).await.unwrap();
    tb.backend.destroy(&id).await.unwrap();
    let mut times = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = new_id();
        let t = Instant::now();
        tb.backend.create(spec(&id, Limits::default())).await.unwrap();
        times.push(t.elapsed());
        ids.push(id);
    }
    // idle footprint: memory charged to each sandbox's cgroup (agent + page cache + kernel)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mem = std::path::Path::new("/sys/fs/cgroup/memory").join(&tb.backend.config().cgroup_root);
    let usage: Vec<u64> = ids
        .iter()
        .filter_map(|id| std::fs::read_to_string(mem.join(id).join("memory.usage_in_bytes")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if !usage.is_empty() {
        eprintln!(
            "idle sandbox memory (cgroup v1 usage): avg {} KiB, max {} KiB",
            usage.iter().sum::<u64>() / usage.len() as u64 / 1024,
            usage.iter().max().unwrap() / 1024
        );
    }
    let mut dtimes = Vec::new();
    for id in ids {
        let t = Instant::now();
        tb.backend.destroy(&id).await.unwrap();
        dtimes.push(t.elapsed());
    }
    times.sort();
    dtimes.sort();
    eprintln!(
        "create latency over 20: min {:?} p50 {:?} p90 {:?} max {:?}; destroy p50 {:?} max {:?}",
        times[0], times[10], times[18], times[19], dtimes[10], dtimes[19]
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn pooled_create_with_own_hostname() {
    require_root();
    let tb = backend_pooled();
    let id = new_id();
    let mut s = spec(&id, Limits::default());
    s.agent.hostname = "myhost".into();
    let h = tb.backend.create(s).await.expect("create");
    let out = run(
        &api(&h),
        "user",
        "hostname; cat /etc/hostname; grep -c myhost /etc/hosts",
    )
    .await;
    assert_eq!(out.stdout, "myhost\nmyhost\n1\n", "{out:?}");
    assert!(
        !tb.backend
            .list_host_sandboxes()
            .await
            .unwrap()
            .iter()
            .any(|i| i.starts_with('.'))
    );
    tb.backend.destroy(&id).await.unwrap();
    // the pool refills
    let deadline = Instant::now() + Duration::from_secs(10);
    while tb.backend.pool_ready() < tb.backend.config().pool_size {
        assert!(Instant::now() < deadline, "pool did not refill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn sandboxes_outlive_the_daemon_and_helper() {
    require_root();
    let tb = backend();
    let id = new_id();
    let h = tb
        .backend
        .create(spec(&id, Limits::default()))
        .await
        .expect("create");

    // the helper dies: running sandboxes keep serving, the next create restarts it
    let helper = tb.backend.helper_pid().expect("helper running") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tb.backend.is_alive(&h));
    assert_eq!(run(&api(&h), "user", "echo up").await.stdout, "up\n");
    let id2 = new_id();
    let h2 = tb
        .backend
        .create(spec(&id2, Limits::default()))
        .await
        .expect("create after helper death");
    assert_ne!(tb.backend.helper_pid(), Some(helper as u32));

    // a second backend on the same data dir (a restarted daemon) finds and destroys them
    let mut cfg = tb.backend.config().clone();
    cfg.pool_size = 0;
    let again = sandboxd_runtime::namespace::NamespaceBackend::new(cfg).expect("second backend");
    let found = again.list_host_sandboxes().await.unwrap();
    assert!(found.contains(&id) && found.contains(&id2), "{found:?}");
    assert!(again.is_alive(&h) && again.is_alive(&h2));
    again.destroy(&id).await.unwrap();
    again.destroy(&id2).await.unwrap();
    assert!(!tb.backend.is_alive(&h) && !tb.backend.is_alive(&h2));
    assert!(again.list_host_sandboxes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn concurrent_creates() {
    require_root();
    let tb = backend_pooled();
    let ids: Vec<String> = (0..8).map(|_| new_id()).collect();
    let t = Instant::now();
    let handles = futures_join_all(
        ids.iter()
            .map(|id| tb.backend.create(spec(id, Limits::default()))),
    )
    .await;
    eprintln!("8 concurrent creates: {:?}", t.elapsed());
    let handles: Vec<_> = handles.into_iter().map(|h| h.expect("create")).collect();
    for h in &handles {
        let out = run(&api(h), "user", "echo $E2B_SANDBOX_ID").await;
        assert_eq!(out.stdout.trim(), h.id, "{out:?}");
    }
    for id in &ids {
        tb.backend.destroy(id).await.unwrap();
    }
    assert!(tb.backend.list_host_sandboxes().await.unwrap().is_empty());
}

/// Await all futures concurrently (no extra dependency).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}
