//! Faults never destroy what is healthy (issue 14): descriptor exhaustion of the daemon, proxy
//! errors on a running sandbox, and client mistakes on the files and filesystem APIs, over HTTP
//! against the real daemon. Needs root (skipped otherwise; fails with CI=true), except the
//! start-up check of the descriptor limit.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, require_root, wait_until};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

async fn create(d: &Daemon) -> String {
    let (s, v) = d.create(json!({"templateID": "base", "timeout": 300})).await;
    assert_eq!(s, 201, "{v}");
    sid(&v)
}

async fn upload(d: &Daemon, id: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let r = d
        .sandbox(
            reqwest::Method::POST,
            id,
            &format!("/files?path={}&username=user", common::urlencode(path)),
        )
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn download(d: &Daemon, id: &str, path: &str) -> (u16, String) {
    let r = d
        .sandbox(
            reqwest::Method::GET,
            id,
            &format!("/files?path={}&username=user", common::urlencode(path)),
        )
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A unary `filesystem.Filesystem` or `process.Process` call; status and body.
async fn unary(d: &Daemon, id: &str, method: &str, body: Value) -> (u16, Value) {
    let r = d
        .sandbox(reqwest::Method::POST, id, method)
        .header("Content-Type", "application/json")
        .header("Connect-Protocol-Version", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn health(d: &Daemon, id: &str) -> u16 {
    match d
        .sandbox(reqwest::Method::GET, id, "/health")
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

fn daemon_pid(d: &Daemon) -> i32 {
    d.child.as_ref().expect("running").id() as i32
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Sets the soft `RLIMIT_NOFILE` of `pid` (the hard one stays: raising it back would need
/// `CAP_SYS_RESOURCE`).
fn set_nofile(pid: i32, n: u64) {
    let st = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:"))
        .status()
        .expect("prlimit");
    assert!(st.success(), "prlimit failed");
}

/// The daemon's descriptors run out while a sandbox runs: the liveness check cannot open
/// `/proc/<pid>/stat`, which is no evidence that the agent exited, so the sandbox and its
/// files must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn descriptor_exhaustion_never_kills_a_sandbox() {
    require_root("descriptor_exhaustion_never_kills_a_sandbox");
    let d = Daemon::start();
    let id = create(&d).await;
    assert_eq!(
        upload(&d, &id, "/home/user/keep.txt", b"kept".to_vec()).await.0,
        200
    );
    let pid = daemon_pid(&d);
    let soft = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<u64>().ok()))
        .expect("Max open files");
    // Leave a few descriptors, then take them all with idle connections.
    set_nofile(pid, open_fds(pid) as u64 + 8);
    let mut held = Vec::new();
    for _ in 0..64 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(d.addr)).await
        {
            held.push(s);
        }
    }
    // Several liveness rounds (every 2 s) with no descriptor left.
    tokio::time::sleep(Duration::from_secs(7)).await;
    drop(held);
    set_nofile(pid, soft);
    let back = wait_until(Duration::from_secs(40), || async {
        d.get(&format!("/sandboxes/{id}")).await.0 == 200
    })
    .await;
    assert!(back, "sandbox gone after fd exhaustion; logs:\n{}", d.logs());
    assert_eq!(
        download(&d, &id, "/home/user/keep.txt").await,
        (200, "kept".to_string())
    );
    assert!(!d.logs().contains("agent exited"), "{}", d.logs());
    d.kill_all_sandboxes();
}

/// A hard descriptor limit too small to serve is a clear start-up error, not a 500 per create.
#[test]
fn tiny_descriptor_limit_is_a_start_up_error() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxd"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("SANDBOXD_API_KEY", common::test_key())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, 256)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sandboxd kept running with RLIMIT_NOFILE 256");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("RLIMIT_NOFILE") && err.contains("256"), "{err}");
}

/// Proxy errors on a running sandbox say what they are: a broken client body is a 4xx, a
/// refused request is the agent's answer, never 502 "The sandbox was not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn proxy_errors_on_a_running_sandbox_are_not_not_found() {
    require_root("proxy_errors_on_a_running_sandbox_are_not_not_found");
    let d = Daemon::start();
    let id = create(&d).await;
    // 1 MiB gzip-encoded unary body: the agent refuses the encoding.
    let r = d
        .sandbox(reqwest::Method::POST, &id, "/process.Process/List")
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .header("Connect-Protocol-Version", "1")
        .body(vec![0x1fu8; 1 << 20])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert!(!body.contains("was not found"), "{status} {body}");
    assert!((400..500).contains(&status) || status == 501, "{status} {body}");

    // A malformed chunk size in the client's body.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let head = format!(
        "POST /process.Process/List HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {id}\r\n\
         Content-Type: application/json\r\nConnect-Protocol-Version: 1\r\n\
         Transfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("was not found"), "{text}");
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");

    // The sandbox is fine.
    assert_eq!(health(&d, &id).await, 204);
    assert_eq!(d.get(&format!("/sandboxes/{id}")).await.0, 200);
    d.kill_all_sandboxes();
}

/// Client mistakes on the files and filesystem APIs are 4xx with the reason, and an empty
/// upload writes an empty file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn client_mistakes_are_4xx_and_empty_uploads_work() {
    require_root("client_mistakes_are_4xx_and_empty_uploads_work");
    let d = Daemon::start();
    let id = create(&d).await;

    let (s, b) = upload(&d, &id, "/home/user/empty.bin", Vec::new()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        download(&d, &id, "/home/user/empty.bin").await,
        (200, String::new())
    );

    let long = format!("/home/user/{}", "a".repeat(8192));
    let (s, b) = upload(&d, &id, &long, b"x".to_vec()).await;
    assert_eq!(s, 400, "{b}");
    let (s, _) = download(&d, &id, &long).await;
    assert_eq!(s, 400);

    // A write through a dangling symlink writes its target (as envd does).
    let env = common::connect_envelope(
        &json!({"process": {"cmd": "ln", "args": ["-s", "/home/user/missing.txt", "/home/user/dangling"]}}),
    );
    let r = d
        .sandbox(reqwest::Method::POST, &id, "/process.Process/Start")
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(env)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let (s, b) = upload(&d, &id, "/home/user/dangling", b"through".to_vec()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        download(&d, &id, "/home/user/missing.txt").await,
        (200, "through".to_string())
    );

    for p in [
        "/proc/sandboxd-test",
        "/proc/1/new",
        "/sys/sandboxd-test",
        "/sys/kernel/x/y",
    ] {
        let (s, b) = upload(&d, &id, p, b"x".to_vec()).await;
        assert!((400..500).contains(&s), "{p}: {s} {b}");
    }

    let (s, v) = unary(
        &d,
        &id,
        "/filesystem.Filesystem/Move",
        json!({"source": "/..", "destination": "/home/user/moved"}),
    )
    .await;
    assert!((400..500).contains(&s), "{s} {v}");
    let (s, v) = unary(
        &d,
        &id,
        "/filesystem.Filesystem/Move",
        json!({"source": "/home/user/empty.bin", "destination": "/.."}),
    )
    .await;
    assert!((400..500).contains(&s), "{s} {v}");
    let deep = format!("/home/user/{}", "d/".repeat(1200));
    let t0 = Instant::now();
    let (s, v) = unary(&d, &id, "/filesystem.Filesystem/MakeDir", json!({"path": deep})).await;
    assert_eq!(s, 400, "{v}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    d.kill_all_sandboxes();
}

/// Thirty recursive watchers and the deepest directory a request may create: the agent keeps
/// answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn deep_trees_under_many_watchers_keep_the_agent_responsive() {
    require_root("deep_trees_under_many_watchers_keep_the_agent_responsive");
    let d = Daemon::start();
    let id = create(&d).await;
    let (s, v) = unary(
        &d,
        &id,
        "/filesystem.Filesystem/MakeDir",
        json!({"path": "/home/user/w"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for _ in 0..30 {
        let (s, v) = unary(
            &d,
            &id,
            "/filesystem.Filesystem/CreateWatcher",
            json!({"path": "/home/user/w", "recursive": true}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    let deep = format!("/home/user/w/{}", "d/".repeat(120));
    let t0 = Instant::now();
    let (s, v) = unary(&d, &id, "/filesystem.Filesystem/MakeDir", json!({"path": deep})).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "MakeDir took {:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    assert_eq!(health(&d, &id).await, 204);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "/health took {:?}",
        t0.elapsed()
    );
    let (s, v) = unary(
        &d,
        &id,
        "/filesystem.Filesystem/MakeDir",
        json!({"path": format!("/home/user/w/{}", "e/".repeat(1200))}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(health(&d, &id).await, 204);

    // A process makes a tree ten times deeper than the API allows: the watchers' work happens
    // off the request path, so the agent keeps answering while they catch up.
    let env = common::connect_envelope(
        &json!({"process": {"cmd": "mkdir", "args": ["-p", format!("/home/user/w/{}", "p/".repeat(1200))]}}),
    );
    let r = d
        .sandbox(reqwest::Method::POST, &id, "/process.Process/Start")
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(env)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    for _ in 0..5 {
        let t0 = Instant::now();
        assert_eq!(health(&d, &id).await, 204);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "/health took {:?}",
            t0.elapsed()
        );
        let t0 = Instant::now();
        let (s, v) = unary(
            &d,
            &id,
            "/filesystem.Filesystem/Stat",
            json!({"path": "/home/user/w"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "Stat took {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t0 = Instant::now();
    let (s, v) = unary(
        &d,
        &id,
        "/filesystem.Filesystem/MakeDir",
        json!({"path": "/home/user/w/after"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "MakeDir took {:?}",
        t0.elapsed()
    );
    d.kill_all_sandboxes();
}
