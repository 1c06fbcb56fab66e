//! Shared helpers of the `api_*` integration tests: start the real `sandboxd serve` binary on a
//! free loopback port with a throwaway data dir, talk to it, and tear everything down.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// First line of a privileged test (namespace sandboxes need root). Such tests are marked
/// `#[ignore = "privileged: ..."]`, so a plain `cargo nextest run` reports them as skipped,
/// never as passed; `--run-ignored all` (scripts/test.sh, as root) runs them, and without root
/// they fail here instead of passing without having run.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} is privileged: it needs root and cannot run here"
    );
}

/// A running daemon.
pub struct Daemon {
    pub child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub addr: std::net::SocketAddr,
    pub key: String,
    /// The four lines printed on stdout.
    pub exports: Vec<String>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stderr_log: PathBuf,
}

/// Options for [`Daemon::start_with`].
#[derive(Default, Clone)]
pub struct Opts {
    /// `SANDBOXD_API_KEY` (None: let the daemon generate or reuse one).
    pub key: Option<String>,
    pub args: Vec<String>,
}

impl Daemon {
    /// Starts a daemon with a generated key in a new temp data dir.
    pub fn start() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("sandboxd-api-test-")
            .tempdir()
            .unwrap();
        let data = tmp.path().join("data");
        let mut d = Self::start_in(
            &data,
            Opts {
                key: Some(test_key()),
                ..Opts::default()
            },
        )
        .expect("daemon did not start");
        d._tmp = Some(tmp);
        d
    }

    /// Like [`Daemon::start`], with extra `serve` flags (for example `--pool base=2:4`).
    pub fn start_with_args(args: &[&str]) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("sandboxd-api-test-")
            .tempdir()
            .unwrap();
        let data = tmp.path().join("data");
        let opts = Opts {
            key: Some(test_key()),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        let mut d = Self::start_in(&data, opts).expect("daemon did not start");
        d._tmp = Some(tmp);
        d
    }

    /// Starts a daemon on `data_dir`; `Err(stderr)` if it exits before printing its exports.
    pub fn start_in(data_dir: &Path, opts: Opts) -> Result<Self, String> {
        let log = data_dir.with_extension("stderr.log");
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandboxd"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(&opts.args)
            .env("RUST_LOG", "info")
            .env_remove("SANDBOXD_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(k) = &opts.key {
            cmd.env("SANDBOXD_API_KEY", k);
        }
        let mut child = cmd.spawn().expect("spawning sandboxd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            for _ in 0..4 {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    break;
                }
                lines.push(l.trim_end().to_string());
            }
            let _ = tx.send(lines);
            // Keep draining so the daemon never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let exports = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.len() == 4 => l,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        let url = exports[0]
            .strip_prefix("export E2B_API_URL=")
            .expect("first line")
            .to_string();
        let key = exports[2]
            .strip_prefix("export E2B_API_KEY=")
            .expect("third line")
            .to_string();
        let addr = url.strip_prefix("http://").unwrap().parse().unwrap();
        Ok(Self {
            child: Some(child),
            url,
            addr,
            key,
            exports,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            stderr_log: log,
        })
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client()
            .request(method, format!("{}{path}", self.url))
            .header("X-API-Key", &self.key)
    }

    /// A sandbox-traffic request (routing header).
    pub fn sandbox(&self, method: reqwest::Method, id: &str, path: &str) -> reqwest::RequestBuilder {
        self.client()
            .request(method, format!("{}{path}", self.url))
            .header("E2b-Sandbox-Id", id)
    }

    /// `POST /sandboxes`; returns status and body.
    pub async fn create(&self, body: Value) -> (u16, Value) {
        self.post("/sandboxes", body).await
    }

    /// A control-plane `POST` with a JSON body; returns status and body (`null` if not JSON).
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .api(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// The sandbox's `Process.List` answer (JSON text) through the proxy, with its envd token.
    pub async fn process_list(&self, id: &str, token: &str) -> String {
        let r = self
            .sandbox(reqwest::Method::POST, id, "/process.Process/List")
            .header("X-Access-Token", token)
            .header("Content-Type", "application/json")
            .header("Connect-Protocol-Version", "1")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.api(reqwest::Method::GET, path).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.api(reqwest::Method::DELETE, path)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The daemon's stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// SIGTERM, then wait (SIGKILL after 15 s). Returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills every sandbox through the API (best effort).
    pub fn kill_all_sandboxes(&self) {
        // Its own runtime on its own thread: this runs from Drop, maybe inside a test runtime.
        std::thread::scope(|s| {
            s.spawn(|| {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                rt.block_on(async {
                    let (status, list) = self.get("/v2/sandboxes").await;
                    if status != 200 {
                        return;
                    }
                    for s in list.as_array().cloned().unwrap_or_default() {
                        if let Some(id) = s["sandboxID"].as_str() {
                            self.delete(&format!("/sandboxes/{id}")).await;
                        }
                    }
                })
            });
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill_all_sandboxes();
            self.terminate();
        }
        if std::thread::panicking() {
            eprintln!("--- sandboxd stderr ---\n{}", self.logs());
        }
    }
}

/// A fresh key in the SDK's format.
pub fn test_key() -> String {
    let mut b = [0u8; 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    format!("e2b_{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// A Connect streaming request envelope (flags 0) around a JSON message.
pub fn connect_envelope(json: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(json).unwrap();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads an HTTP/1.1 response head from a raw stream.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut b))
            .await
            .expect("timed out reading a response head")
            .unwrap();
        assert_eq!(n, 1, "EOF in head: {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads until the peer resets the connection; fails on a clean EOF (FIN) or a timeout.
pub async fn expect_reset(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("connection neither reset nor closed"),
            Ok(Ok(0)) => panic!("clean EOF (FIN) instead of a TCP reset"),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                return;
            }
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Percent-encodes everything but unreserved characters (for query values).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `tbf` rates (bytes/s, as `tc -j` reports them) on the host's links.
pub fn host_tbf_rates() -> Vec<u64> {
    let out = std::process::Command::new("tc")
        .args(["-j", "qdisc", "show"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|l| {
            l.iter()
                .filter(|q| q["kind"] == "tbf")
                .filter_map(|q| q["options"]["rate"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}
