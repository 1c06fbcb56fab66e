//! The agent binary over real sockets: development mode (`--listen`, `--config`) and boot mode
//! (`--boot`, PID 1 of fresh namespaces made with `unshare`, fds 3/4/5 as the runtime passes
//! them). Processes are real; the boot test needs root and util-linux `unshare`.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use sandboxd_protocol::connect::encode_envelope;
use sandboxd_protocol::pj::base64_bytes;
use serde_json::{Value, json};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sandboxd");

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One HTTP/1.1 request with `Connection: close`; returns status, head and de-chunked body.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut rest = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let p = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..p]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + n]);
            rest = rest[p + 2 + n + 2..].to_vec();
        }
        rest = out;
    }
    (status, head, rest)
}

/// The result of a `Start` stream.
#[derive(Debug, Default)]
struct Run {
    pid: u64,
    stdout: String,
    end: Value,
    end_stream: Value,
}

fn decode_stream(body: &[u8]) -> Run {
    let mut run = Run::default();
    let mut i = 0;
    while i + 5 <= body.len() {
        let flags = body[i];
        let len = u32::from_be_bytes(body[i + 1..i + 5].try_into().unwrap()) as usize;
        let msg: Value = serde_json::from_slice(&body[i + 5..i + 5 + len]).unwrap();
        i += 5 + len;
        if flags & 2 != 0 {
            run.end_stream = msg;
            continue;
        }
        let ev = &msg["event"];
        if let Some(p) = ev["start"]["pid"].as_u64() {
            run.pid = p;
        }
        if let Some(d) = ev["data"]["stdout"].as_str() {
            run.stdout
                .push_str(&String::from_utf8_lossy(&base64_bytes::decode(d).unwrap()));
        }
        if ev.get("end").is_some() {
            run.end = ev["end"].clone();
        }
    }
    run
}

async fn start<S: AsyncRead + AsyncWrite + Unpin>(s: S, script: &str) -> Run {
    let msg = json!({"process": {"cmd": "/bin/sh", "args": ["-c", script]}, "stdin": false});
    let body = encode_envelope(0, msg.to_string().as_bytes());
    let (status, head, body) = http(
        s,
        "POST",
        "/process.Process/Start",
        &[("Content-Type", "application/connect+json")],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{head}");
    decode_stream(&body)
}

fn dev_agent(config: Value) -> (Agent, u16, tempfile::NamedTempFile) {
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    cfg.write_all(config.to_string().as_bytes()).unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .args(["agent", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(cfg.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (agent, port, cfg)
}

async fn tcp(port: u16) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

fn root_config(id: &str) -> Value {
    json!({"sandboxId": id, "templateId": "base", "defaultUser": "root", "defaultWorkdir": "/"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_mode_reaper_keeps_every_exit_code() {
    if !is_root() {
        eprintln!("skipped: needs root (processes run as the configured user)");
        return;
    }
    let (_agent, port, _cfg) = dev_agent(root_config("devsbx"));
    let mut tasks = Vec::new();
    for n in 0..24u64 {
        tasks.push(tokio::spawn(async move {
            let run = start(tcp(port).await, &format!("echo $$; exit {n}")).await;
            (n, run)
        }));
    }
    for t in tasks {
        let (n, run) = t.await.unwrap();
        assert_eq!(
            run.stdout,
            format!("{}\n", run.pid),
            "start pid is the process's own pid"
        );
        assert_eq!(run.end["exitCode"].as_u64().unwrap_or(0), n, "{run:?}");
        assert_eq!(run.end["status"], format!("exit status {n}"));
        assert_eq!(run.end_stream, json!({}));
    }
    let run = start(tcp(port).await, "kill -9 $$").await;
    assert_eq!(
        run.end,
        json!({"exitCode": -1, "status": "signal: killed", "error": "signal: killed"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_connect_tunnel() {
    let (_agent, port, _cfg) = dev_agent(root_config("tunsbx"));
    // An echo server standing in for a user's server inside the sandbox.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = server.accept().await.unwrap();
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    let mut s = tcp(port).await;
    s.write_all(
        format!("CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut got = vec![0u8; 23];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping through the tunnel");

    // Nothing listening: 502 with the E2B body.
    let closed = free_port();
    let (status, head, body) = http(
        tcp(port).await,
        "CONNECT",
        &format!("127.0.0.1:{closed}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 502);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"sandboxId": "tunsbx", "message": "The sandbox is running but port is not open", "port": closed, "code": 502, "error_code": "runtime_error"})
    );
    // Only loopback targets inside the sandbox.
    let (status, _, _) = http(tcp(port).await, "CONNECT", "10.1.2.3:80", &[], b"").await;
    assert_eq!(status, 400);
}

fn unshare_available() -> bool {
    Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_mode_as_pid1_in_new_namespaces() {
    if !is_root() || !unshare_available() {
        eprintln!("skipped: needs root and unshare");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api = std::os::unix::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let control = std::os::unix::net::UnixListener::bind(dir.path().join("control.sock")).unwrap();
    // A stand-in for the work cgroup's cgroup.procs: every user process writes "0" to it.
    let procs_path = dir.path().join("cgroup.procs");
    let procs = std::fs::File::create(&procs_path).unwrap();
    let config = json!({
        "sandboxId": "bootsbx", "templateId": "base", "defaultUser": "root", "defaultWorkdir": "/",
        "envVars": {"A": "1"}, "workCgroupFds": [6]
    });
    let (cfg_r, cfg_w) = nix::unistd::pipe().unwrap();
    std::fs::File::from(cfg_w)
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let fds = [
        cfg_r.as_raw_fd(),
        api.as_raw_fd(),
        control.as_raw_fd(),
        procs.as_raw_fd(),
    ];
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--user",
        "--map-root-user",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--mount-proc",
        "--net",
        "--uts",
        "--ipc",
        BIN,
        "agent",
        "--boot",
    ])
    .stderr(Stdio::null());
    // SAFETY: only dup/dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 4];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD, 100);
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let _agent = Agent(cmd.spawn().unwrap());
    drop(cfg_r);
    let sock = dir.path().join("agent.sock");
    let csock = dir.path().join("control.sock");
    let unix = |p: &std::path::Path| {
        let p = p.to_path_buf();
        async move { tokio::net::UnixStream::connect(p).await.unwrap() }
    };

    // Readiness on the control socket.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = http(unix(&csock).await, "GET", "/health", &[], b"").await;
        if status == 204 {
            break;
        }
        assert!(Instant::now() < deadline, "agent not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // PID 1, in-sandbox pids, oom_score_adj reset, work cgroup writes.
    let run = start(
        unix(&sock).await,
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/self/oom_score_adj",
    )
    .await;
    assert_eq!(
        run.stdout,
        format!("{}\n{BIN} agent --boot \n100\n", run.pid),
        "{run:?}"
    );
    assert!(
        run.pid < 100,
        "pid {} is from the sandbox's pid namespace",
        run.pid
    );
    assert_eq!(std::fs::read_to_string(&procs_path).unwrap(), "0");

    // Orphans re-parented to PID 1 are reaped: no zombies remain.
    let run = start(unix(&sock).await, "(sleep 0.2 &); exit 0").await;
    assert_eq!(run.end["status"], "exit status 0");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let run = start(
        unix(&sock).await,
        "cat /proc/[0-9]*/stat | awk '$3 == \"Z\"' | wc -l",
    )
    .await;
    assert_eq!(run.stdout.trim(), "0", "zombies left");
    assert_eq!(std::fs::read_to_string(&procs_path).unwrap(), "000");

    // lo is up and 127.0.0.1:49983 serves the same API inside: reach it through the tunnel.
    let mut s = unix(&sock).await;
    s.write_all(b"CONNECT 127.0.0.1:49983 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let (status, _, body) = http(s, "GET", "/envs", &[], b"").await;
    assert_eq!(status, 200);
    let envs: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(envs["E2B_SANDBOX_ID"], "bootsbx");
    assert_eq!(envs["A"], "1");

    // POST /config replaces the config (a pool claim); bad JSON is refused.
    let new =
        json!({"sandboxId": "claimed", "templateId": "base", "defaultUser": "root", "accessToken": "tok"});
    let (status, _, _) = http(
        unix(&csock).await,
        "POST",
        "/config",
        &[],
        new.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, _) = http(unix(&csock).await, "POST", "/config", &[], b"{bad").await;
    assert_eq!(status, 400);
    let (status, _, _) = http(unix(&sock).await, "GET", "/envs", &[], b"").await;
    assert_eq!(status, 401, "the new access token is enforced");
    let (status, _, body) = http(
        unix(&sock).await,
        "GET",
        "/envs",
        &[("X-Access-Token", "tok")],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let envs: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(envs["E2B_SANDBOX_ID"], "claimed");
}
