//! Shared helpers of the namespace-backend integration tests (`runtime_*.rs`).
#![allow(dead_code)]

use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::namespace::{NamespaceBackend, NamespaceConfig};
use sandboxd_runtime::{Limits, SandboxSpec};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// First line of a privileged runtime test: they are `#[ignore = "privileged: ..."]` (a plain
/// run reports them skipped), and run without root they fail here rather than pass.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "runtime integration tests are privileged: they need root and cannot run here"
    );
}

/// A backend over a fresh data dir, with a test-only cgroup root.
pub struct TestBackend {
    pub backend: NamespaceBackend,
    pub dir: tempfile::TempDir,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        // a failed test may leave sandboxes running: destroy whatever this backend created
        // (directories and cgroups)
        let root = self.backend.config().cgroup_root.clone();
        let mut places = vec![self.dir.path().join("sandboxes")];
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            places.extend(rd.flatten().map(|h| h.path().join(&root)));
        }
        let mut ids = std::collections::BTreeSet::new();
        for place in places {
            if let Ok(rd) = std::fs::read_dir(place) {
                for e in rd.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    if sandboxd_runtime::namespace::is_valid_sandbox_id(&id) && e.path().is_dir() {
                        ids.insert(id);
                    }
                }
            }
        }
        for id in ids {
            let _ = self.backend.destroy_blocking(&id);
        }
        self.backend.shutdown();
        // remove this backend's (empty) cgroup root in every hierarchy
        let root = self.backend.config().cgroup_root.clone();
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let _ = std::fs::remove_dir(h.path().join(&root));
            }
        }
        let _ = std::fs::remove_dir(std::path::Path::new("/sys/fs/cgroup").join(&root)); // pure v2
    }
}

pub fn backend() -> TestBackend {
    backend_with(|_| {})
}

/// A backend with the pool of prepared slots full (so creates take the pooled path).
pub fn backend_pooled() -> TestBackend {
    let tb = backend();
    let size = tb.backend.config().pool_size;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tb.backend.pool_ready() < size {
        assert!(std::time::Instant::now() < deadline, "pool did not fill");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    tb
}

pub fn backend_with(adjust: impl FnOnce(&mut NamespaceConfig)) -> TestBackend {
    let dir = tempfile::Builder::new()
        .prefix("sbxrt")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut cfg = NamespaceConfig::new(dir.path(), PathBuf::from(env!("CARGO_BIN_EXE_sandboxd")));
    // a cgroup root per backend, so tests running in parallel do not see each other
    let name = dir.path().file_name().unwrap().to_string_lossy().to_lowercase();
    cfg.cgroup_root = format!("sandboxd-test/{name}");
    adjust(&mut cfg);
    let backend = NamespaceBackend::new(cfg).expect("namespace backend starts");
    TestBackend { backend, dir }
}

static N: AtomicU32 = AtomicU32::new(0);

/// A unique sandbox id.
pub fn new_id() -> String {
    format!("t{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn spec(id: &str, limits: Limits) -> SandboxSpec {
    SandboxSpec {
        id: id.to_string(),
        template: "base".into(),
        limits,
        agent: AgentConfig::new(id, "base"),
        volumes: Vec::new(),
    }
}

/// Whether this process has CAP_SYS_RESOURCE (needed to give agents oom_score_adj -1000).
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << 24) != 0
}

/// Output of a command run through the agent's `process.Process/Start`.
#[derive(Debug, Default)]
pub struct CmdOutput {
    pub pid: Option<u32>,
    pub stdout: String,
    pub stderr: String,
    /// `exitCode` of the end event (0 when left out), `None` without an end event.
    pub exit_code: Option<i64>,
    /// Error of the end-of-stream message, if any.
    pub error: Option<String>,
}

fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Raw HTTP/1.1 request over a unix socket; returns (status, body) with chunked bodies decoded.
pub async fn http_unix(
    sock: &std::path::Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std_stream = sandboxd_runtime::namespace::connect_unix(sock).expect("connect agent socket");
    std_stream.set_nonblocking(true).unwrap();
    let mut s = tokio::net::UnixStream::from_std(std_stream).unwrap();
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
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut rest = raw[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let p = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..p]).trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + n]);
            rest = rest[p + 2 + n + 2..].to_vec();
        }
        rest = out;
    }
    (status, rest)
}

/// Run `bash -l -c <script>` in the sandbox as `user` through the agent (Connect streaming).
pub async fn run(sock: &std::path::Path, user: &str, script: &str) -> CmdOutput {
    run_with_token(sock, user, script, None).await
}

/// [`run`] in a sandbox with an envd access token.
pub async fn run_with_token(
    sock: &std::path::Path,
    user: &str,
    script: &str,
    token: Option<&str>,
) -> CmdOutput {
    let req = serde_json::json!({
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", script]},
        "stdin": false
    });
    let payload = serde_json::to_vec(&req).unwrap();
    let mut body = vec![0u8];
    body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    body.extend_from_slice(&payload);
    let auth = format!("Basic {}", b64encode(format!("{user}:").as_bytes()));
    let mut headers = vec![
        ("Content-Type", "application/connect+json"),
        ("Authorization", auth.as_str()),
    ];
    if let Some(t) = token {
        headers.push(("X-Access-Token", t));
    }
    let (status, resp) = http_unix(sock, "POST", "/process.Process/Start", &headers, &body).await;
    assert_eq!(
        status,
        200,
        "Start answered {status}: {}",
        String::from_utf8_lossy(&resp)
    );
    let mut out = CmdOutput::default();
    let mut i = 0;
    while i + 5 <= resp.len() {
        let flags = resp[i];
        let len = u32::from_be_bytes(resp[i + 1..i + 5].try_into().unwrap()) as usize;
        let msg: serde_json::Value = serde_json::from_slice(&resp[i + 5..i + 5 + len]).unwrap();
        i += 5 + len;
        if flags & 2 != 0 {
            if let Some(e) = msg.get("error") {
                out.error = Some(e.to_string());
            }
            continue;
        }
        let ev = &msg["event"];
        if let Some(p) = ev["start"]["pid"].as_u64() {
            out.pid = Some(p as u32);
        }
        if let Some(d) = ev["data"]["stdout"].as_str() {
            out.stdout.push_str(&String::from_utf8_lossy(&b64decode(d)));
        }
        if let Some(d) = ev["data"]["stderr"].as_str() {
            out.stderr.push_str(&String::from_utf8_lossy(&b64decode(d)));
        }
        if ev.get("end").is_some() {
            out.exit_code = Some(ev["end"]["exitCode"].as_i64().unwrap_or(0));
        }
    }
    out
}

fn b64encode(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
