//! The whole daemon in-process against a small fake backend whose "agents" are hyper servers
//! on unix sockets in a temp dir (unit tests: no root, no namespaces). The real backend is
//! exercised by the integration tests in `crates/sandboxd/tests/api_*.rs`.

use crate::config::{DaemonLimits, ServerConfig};
use crate::routing::file_signature;
use crate::server::Server;
use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sandboxd_runtime::{Adopted, AgentEndpoint, RuntimeError, SandboxBackend, SandboxHandle, SandboxSpec};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_util::sync::CancellationToken;

const KEY: &str = "e2b_0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct FakeState {
    agents: HashMap<String, (CancellationToken, SandboxSpec)>,
    destroyed: Vec<String>,
    leftovers: Vec<String>,
    /// Sandboxes whose writable layers exist (created, until destroyed).
    files: HashSet<String>,
    /// Frozen sandboxes (memory pause).
    frozen: HashSet<String>,
    /// Lifecycle calls in order, as `"<call> <id>"` (freeze, thaw, stop, boot).
    calls: Vec<String>,
    /// Lifecycle calls that fail (`"freeze"`, `"thaw"`, `"boot"`), to test rollbacks.
    failing: HashSet<&'static str>,
}

/// A backend whose sandboxes are in-process HTTP servers on unix sockets, with the lifecycle
/// of a real one (freeze/thaw, stop keeping files, boot on kept files, re-adoption) and
/// injectable failures, so pause/resume rollback and reconciliation are tested without root.
struct FakeBackend {
    dir: PathBuf,
    state: Mutex<FakeState>,
}

impl FakeBackend {
    fn new(dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            dir,
            state: Mutex::new(FakeState::default()),
        })
    }

    fn spec(&self, id: &str) -> Option<SandboxSpec> {
        self.state.lock().unwrap().agents.get(id).map(|(_, s)| s.clone())
    }

    fn handle(&self, id: &str, agent_pid: i32, agent_start_time: u64) -> SandboxHandle {
        let path = self.dir.join(format!("{id}.sock"));
        SandboxHandle {
            id: id.to_string(),
            agent_pid,
            agent_start_time,
            api: AgentEndpoint::Unix(path.clone()),
            control: AgentEndpoint::Unix(path),
        }
    }

    /// Starts the agent of `spec` (its socket path is the sandbox's).
    fn spawn_agent(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let path = self.dir.join(format!("{}.sock", spec.id));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let cancel = CancellationToken::new();
        tokio::spawn(serve_agent(listener, cancel.clone(), spec.clone()));
        let mut st = self.state.lock().unwrap();
        st.agents.insert(spec.id.clone(), (cancel, spec.clone()));
        st.files.insert(spec.id.clone());
        Ok(self.handle(&spec.id, std::process::id() as i32, 1))
    }

    /// Records a lifecycle call; an error if that call was set to fail.
    fn call(&self, what: &'static str, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("{what} {id}"));
        if st.failing.contains(what) {
            return Err(RuntimeError::Step {
                step: what,
                message: "asked to fail".into(),
            });
        }
        Ok(())
    }

    fn fail(&self, what: &'static str, on: bool) {
        let mut st = self.state.lock().unwrap();
        if on {
            st.failing.insert(what);
        } else {
            st.failing.remove(what);
        }
    }

    fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    fn is_frozen(&self, id: &str) -> bool {
        self.state.lock().unwrap().frozen.contains(id)
    }

    fn has_agent(&self, id: &str) -> bool {
        self.state.lock().unwrap().agents.contains_key(id)
    }

    /// Simulates an agent that died on its own.
    fn crash(&self, id: &str) {
        if let Some((c, _)) = self.state.lock().unwrap().agents.remove(id) {
            c.cancel();
        }
    }
}

#[async_trait]
impl SandboxBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn has_template(&self, template: &str) -> bool {
        matches!(template, "base" | "code-interpreter-v1")
    }

    fn template_missing_reason(&self, _template: &str) -> Option<String> {
        None
    }

    fn template_has_services(&self, template: &str) -> bool {
        template == "code-interpreter-v1"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        if spec.agent.env_vars.contains_key("FAIL_CREATE") {
            return Err(RuntimeError::Step {
                step: "spawn",
                message: "asked to fail".into(),
            });
        }
        self.spawn_agent(spec)
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = self.state.lock().unwrap();
        if let Some((c, _)) = st.agents.remove(id) {
            c.cancel();
        }
        st.destroyed.push(id.to_string());
        st.files.remove(id);
        st.frozen.remove(id);
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.sock")));
        Ok(())
    }

    fn is_alive(&self, handle: &SandboxHandle) -> bool {
        self.state.lock().unwrap().agents.contains_key(&handle.id)
    }

    async fn list_host_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let st = self.state.lock().unwrap();
        let mut all: Vec<String> = st.leftovers.iter().chain(&st.files).cloned().collect();
        all.sort();
        all.dedup();
        Ok(all)
    }

    async fn adopt(&self, id: &str, agent_pid: i32, agent_start_time: u64) -> Result<Adopted, RuntimeError> {
        let st = self.state.lock().unwrap();
        let same_agent = agent_pid == std::process::id() as i32 && agent_start_time == 1;
        Ok(Adopted {
            handle: self.handle(id, agent_pid, agent_start_time),
            agent_alive: same_agent && st.agents.contains_key(id),
            files: st.files.contains(id),
        })
    }

    async fn freeze(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("freeze", id)?;
        let mut st = self.state.lock().unwrap();
        if !st.agents.contains_key(id) {
            return Err(RuntimeError::Step {
                step: "freeze",
                message: format!("no processes in {id}"),
            });
        }
        st.frozen.insert(id.to_string());
        Ok(())
    }

    async fn thaw(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("thaw", id)?;
        self.state.lock().unwrap().frozen.remove(id);
        Ok(())
    }

    async fn stop_keep_files(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("stop", id)?;
        let mut st = self.state.lock().unwrap();
        if let Some((c, _)) = st.agents.remove(id) {
            c.cancel();
        }
        st.frozen.remove(id);
        Ok(())
    }

    async fn boot_existing(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        self.call("boot", &spec.id)?;
        if !self.state.lock().unwrap().files.contains(&spec.id) {
            return Err(RuntimeError::Step {
                step: "boot",
                message: format!("the files of {} are gone", spec.id),
            });
        }
        self.spawn_agent(spec)
    }
}

async fn serve_agent(listener: UnixListener, cancel: CancellationToken, spec: SandboxSpec) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => return },
            _ = cancel.cancelled() => return,
        };
        let cancel = cancel.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let spec = spec.clone();
                async move { Ok::<_, std::convert::Infallible>(agent_handler(req, &spec).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            // A killed sandbox's agent disappears with its connections.
            tokio::select! { _ = conn => {}, _ = cancel.cancelled() => {} }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r
}

async fn agent_handler(mut req: Request<Incoming>, spec: &SandboxSpec) -> Response<Body> {
    if req.method() == Method::CONNECT {
        let port = req.uri().authority().and_then(|a| a.port_u16()).unwrap_or(0);
        let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)).await else {
            let body = json!({"sandboxId": spec.id, "message": "The sandbox is running but port is not open",
                "port": port, "code": 502});
            let mut r = text(StatusCode::BAD_GATEWAY, body.to_string());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8".parse().unwrap(),
            );
            return r;
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut up = TokioIo::new(up);
                let mut upstream = upstream;
                let _ = tokio::io::copy_bidirectional(&mut up, &mut upstream).await;
            }
        });
        return text(StatusCode::OK, Body::empty());
    }
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/health") => text(StatusCode::NO_CONTENT, Body::empty()),
        ("GET", "/whoami") => text(
            StatusCode::OK,
            json!({"id": spec.id, "token": spec.agent.access_token, "env": spec.agent.env_vars,
                "cpu": spec.limits.cpu_count, "mem": spec.limits.memory_mb,
                "host": req.headers().get("host").map(|h| h.to_str().unwrap().to_string()),
                "uri": req.uri().to_string()})
            .to_string(),
        ),
        ("POST", "/echo") => text(StatusCode::OK, Body::new(req.into_body())),
        ("GET", "/files") | ("POST", "/files") => text(StatusCode::OK, format!("files of {}", spec.id)),
        ("GET", "/stream") => {
            let s = futures::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from(format!("tick {n}\n"))), n + 1))
            });
            text(StatusCode::OK, Body::from_stream(s))
        }
        ("GET", "/truncated") => {
            // Promise 1000 bytes, send 10, then fail: the agent's connection breaks mid-body.
            let s = futures::stream::unfold(0, |n| async move {
                match n {
                    0 => Some((Ok(Bytes::from_static(b"0123456789")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("agent died")), 2))
                    }
                    _ => None,
                }
            });
            let mut r = text(StatusCode::OK, Body::from_stream(s));
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, "1000".parse().unwrap());
            r
        }
        _ => text(StatusCode::NOT_FOUND, "no such agent route"),
    }
}

/// A user server "inside" the sandbox: `GET /hello`, and `Upgrade: echo` → 101 + echo.
async fn user_port_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if req.headers().get("upgrade").is_some() {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let up = on.await.unwrap();
                            let mut io = TokioIo::new(up);
                            let mut buf = [0u8; 64];
                            loop {
                                let n = io.read(&mut buf).await.unwrap_or(0);
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        });
                        let mut r = text(StatusCode::SWITCHING_PROTOCOLS, Body::empty());
                        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
                        r.headers_mut().insert("connection", "upgrade".parse().unwrap());
                        return Ok::<_, std::convert::Infallible>(r);
                    }
                    let host = req.headers().get("host").map(|h| h.to_str().unwrap().to_string());
                    Ok(text(StatusCode::OK, format!("hello from port, host={host:?}")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

struct Harness {
    addr: SocketAddr,
    backend: Arc<FakeBackend>,
    http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(limits: DaemonLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, limits, |_| {}).await
    }

    async fn start_in(dir: tempfile::TempDir, limits: DaemonLimits, seed: impl FnOnce(&FakeBackend)) -> Self {
        Self::launch(dir, |c| c.limits = limits, seed).await
    }

    /// A daemon with a config changed by `tweak`.
    async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::launch(tempfile::tempdir().unwrap(), tweak, |_| {}).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut ServerConfig),
        seed: impl FnOnce(&FakeBackend),
    ) -> Self {
        let sock_dir = dir.path().join("socks");
        std::fs::create_dir_all(&sock_dir).unwrap();
        let backend = FakeBackend::new(sock_dir);
        seed(&backend);
        Self::launch_on(dir, backend, tweak).await
    }

    /// A daemon on `dir`'s data dir over an existing backend (a restart: the host's sandboxes
    /// are still there).
    async fn launch_on(
        dir: tempfile::TempDir,
        backend: Arc<FakeBackend>,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let mut cfg = ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("data"),
            KEY.into(),
        );
        tweak(&mut cfg);
        let server = Server::bind(cfg, backend.clone()).await.unwrap();
        let addr = server.local_addr();
        assert_eq!(server.domain(), format!("localhost:{}", addr.port()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            backend,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).header("X-API-Key", KEY)
    }

    async fn create(&self, body: Value) -> (StatusCode, Value) {
        let r = self
            .api(reqwest::Method::POST, "/sandboxes")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    async fn create_ok(&self, body: Value) -> Value {
        let (s, v) = self.create(body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let r = self.api(reqwest::Method::GET, path).send().await.unwrap();
        let s = r.status();
        let body = r.bytes().await.unwrap();
        (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    /// Stops the daemon (sandboxes keep running) and returns its dir and backend for a
    /// restart.
    async fn stop_keep(mut self) -> (tempfile::TempDir, Arc<FakeBackend>) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        (self._dir, self.backend)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .api(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status();
        let body = r.bytes().await.unwrap();
        (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `GET /whoami` through the proxy: the sandbox's agent answers.
    async fn agent_answers(&self, id: &str) -> bool {
        let r = self
            .http
            .get(self.url("/whoami"))
            .header("e2b-sandbox-id", id)
            .header("e2b-sandbox-port", "49983")
            .send()
            .await
            .unwrap();
        r.status() == StatusCode::OK
    }
}

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn health_auth_and_error_bodies() {
    let h = Harness::start(DaemonLimits::default()).await;
    let r = h.http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 204);

    let r = h.http.get(h.url("/v2/sandboxes")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 401);
    assert!(v["message"].is_string());
    let r = h
        .http
        .get(h.url("/v2/sandboxes"))
        .header("X-API-Key", "e2b_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Unknown routes need the key too, and answer JSON 404 with it.
    assert_eq!(h.http.get(h.url("/nope")).send().await.unwrap().status(), 401);
    let (s, v) = h.get_json("/nope").await;
    assert_eq!((s.as_u16(), v["code"].as_i64()), (404, Some(404)));
    let r = h.api(reqwest::Method::PUT, "/sandboxes").send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 405);

    for (body, what) in [
        ("{not json", "malformed"),
        (r#"{"templateID": 5}"#, "wrong type"),
        (r#"{"templateID":"base","timeout":"x"}"#, "wrong type"),
        ("", "empty"),
    ] {
        let r = h
            .api(reqwest::Method::POST, "/sandboxes")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], 400, "{what}");
        assert!(v["message"].as_str().unwrap().len() > 5, "{what}");
    }
    let big = format!(
        r#"{{"templateID":"base","metadata":{{"a":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let r = h
        .api(reqwest::Method::POST, "/sandboxes")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"], "request body too large (limit 1048576 bytes)");

    let (s, v) = h.get_json("/sandboxes/Bad_Id").await;
    assert_eq!(
        (s.as_u16(), v["message"].as_str()),
        (400, Some("Invalid sandbox ID"))
    );
    let (s, v) = h.get_json("/sandboxes/nonexistingsandbox").await;
    assert_eq!(s, 404);
    assert_eq!(
        v["message"],
        "Sandbox \"nonexistingsandbox\" doesn't exist or you don't have access to it"
    );
    let r = h
        .api(reqwest::Method::DELETE, "/sandboxes/nonexistingsandbox")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    h.stop().await;
}

#[tokio::test]
async fn create_get_list_kill() {
    let h = Harness::start(DaemonLimits::default()).await;
    let (s, v) = h.create(json!({"templateID":"nope","timeout":60})).await;
    assert_eq!((s.as_u16(), v["code"].as_i64()), (404, Some(404)));
    let (s, v) = h.create(json!({"templateID":"base","timeout":0})).await;
    assert_eq!(
        (s.as_u16(), v["message"].as_str()),
        (400, Some("Timeout must be greater than 0"))
    );
    let (s, _) = h.create(json!({"templateID":"base","timeout":100_000_000})).await;
    assert_eq!(s, 400);
    let (s, v) = h.create(json!({"templateID":"base","cpuCount":64})).await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("cpuCount"), "{v}");

    let a = h
        .create_ok(
            json!({"templateID":"team/base:default","timeout":60,"secure":true,
            "allow_internet_access":false,"metadata":{"tag":"x","k=":"v&"},"envVars":{"FOO":"bar"},
            "cpuCount":1,"memoryMB":256}),
        )
        .await;
    let id = sid(&a);
    assert!(id.starts_with('i') && id.len() == 21);
    assert_eq!(a["templateID"], "base");
    assert_eq!(a["alias"], "base");
    assert_eq!(a["clientID"], "6532622b");
    assert_eq!(a["envdVersion"], "0.6.13");
    assert_eq!(a["domain"], format!("localhost:{}", h.addr.port()));
    let token = a["envdAccessToken"].as_str().unwrap().to_string();
    let spec = h.backend.spec(&id).unwrap();
    assert_eq!(spec.agent.access_token.as_deref(), Some(token.as_str()));
    assert_eq!(spec.agent.env_vars["FOO"], "bar");
    assert_eq!((spec.limits.cpu_count, spec.limits.memory_mb), (1, 256));

    let b = h
        .create_ok(json!({"templateID":"base","timeout":60,"secure":false}))
        .await;
    assert!(b.get("envdAccessToken").is_none());

    let (s, d) = h.get_json(&format!("/sandboxes/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(d["state"], "running");
    assert_eq!(d["metadata"], json!({"tag":"x","k=":"v&"}));
    assert_eq!(d["allowInternetAccess"], false);
    assert_eq!(
        (d["cpuCount"].as_i64(), d["memoryMB"].as_i64()),
        (Some(1), Some(256))
    );
    let started = d["startedAt"].as_str().unwrap();
    assert_eq!(started.len(), "2026-01-02T03:04:05.123456Z".len(), "{started}");
    // The client-id suffix is accepted in paths.
    let (s, _) = h.get_json(&format!("/sandboxes/{id}-6532622b")).await;
    assert_eq!(s, 200);

    let (_, all) = h.get_json("/v2/sandboxes").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let enc = "metadata=tag%3Dx%26k%25253D%3Dv%252526";
    let (_, l) = h.get_json(&format!("/v2/sandboxes?{enc}")).await;
    assert_eq!(
        l.as_array().unwrap().iter().map(sid).collect::<Vec<_>>(),
        vec![id.clone()]
    );
    let (_, l) = h.get_json("/v2/sandboxes?template=nosuch").await;
    assert_eq!(l, json!([]));
    let (_, l) = h.get_json("/sandboxes").await;
    assert_eq!(l.as_array().unwrap().len(), 2);

    let r = h
        .api(reqwest::Method::DELETE, &format!("/sandboxes/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(h.backend.state.lock().unwrap().destroyed.contains(&id));
    let (s, _) = h.get_json(&format!("/sandboxes/{id}")).await;
    assert_eq!(s, 404);
    let r = h
        .api(reqwest::Method::DELETE, &format!("/sandboxes/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, l) = h.get_json(&format!("/v2/sandboxes?{enc}")).await;
    assert_eq!(l, json!([]));

    // Sandbox traffic to the killed sandbox: the E2B 502 body.
    let r = h
        .http
        .get(h.url("/health"))
        .header("E2b-Sandbox-Id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/json; charset=utf-8");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502, "error_code": "not_found"})
    );
    // A failed create leaves no row and no sandbox.
    let (s, v) = h
        .create(json!({"templateID":"base","envVars":{"FAIL_CREATE":"1"}}))
        .await;
    assert_eq!(s, 500, "{v}");
    let (_, all) = h.get_json("/v2/sandboxes").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn paging_order_started_after() {
    let h = Harness::start(DaemonLimits::default()).await;
    let first = sid(&h
        .create_ok(json!({"templateID":"base","metadata":{"p":"1"}}))
        .await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = sid(&h
        .create_ok(json!({"templateID":"base","metadata":{"p":"1"}}))
        .await);
    let r = h
        .api(reqwest::Method::GET, "/v2/sandboxes?metadata=p%3D1&limit=1")
        .send()
        .await
        .unwrap();
    let token = r.headers()["x-next-token"].to_str().unwrap().to_string();
    let page1: Value = r.json().await.unwrap();
    assert_eq!(
        page1.as_array().unwrap().iter().map(sid).collect::<Vec<_>>(),
        vec![second.clone()]
    );
    let r = h
        .api(
            reqwest::Method::GET,
            &format!("/v2/sandboxes?metadata=p%3D1&limit=1&nextToken={token}"),
        )
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-next-token").is_none());
    let page2: Value = r.json().await.unwrap();
    assert_eq!(
        page2.as_array().unwrap().iter().map(sid).collect::<Vec<_>>(),
        vec![first.clone()]
    );
    let (_, asc) = h.get_json("/v2/sandboxes?metadata=p%3D1&order=asc").await;
    assert_eq!(
        asc.as_array().unwrap().iter().map(sid).collect::<Vec<_>>(),
        [first, second.clone()]
    );

    let (_, d) = h.get_json(&format!("/sandboxes/{second}")).await;
    let started = d["startedAt"].as_str().unwrap();
    let enc: String = url::form_urlencoded::byte_serialize(started.as_bytes()).collect();
    let (_, l) = h
        .get_json(&format!("/v2/sandboxes?metadata=p%3D1&startedAfter={enc}"))
        .await;
    assert_eq!(
        l.as_array().unwrap().iter().map(sid).collect::<Vec<_>>(),
        [second]
    );
    let (s, v) = h.get_json("/v2/sandboxes?nextToken=garbage!").await;
    assert_eq!((s.as_u16(), v["code"].as_i64()), (400, Some(400)));
    h.stop().await;
}

#[tokio::test]
async fn timeouts_connect_and_reaper() {
    let h = Harness::start(DaemonLimits::default()).await;
    let id = sid(&h.create_ok(json!({"templateID":"base","timeout":300})).await);
    let end = |v: &Value| v["endAt"].as_str().unwrap().to_string();
    let (_, d0) = h.get_json(&format!("/sandboxes/{id}")).await;

    // connect never shortens: endAt byte-identical.
    let r = h
        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/connect"))
        .json(&json!({"timeout": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sid(&r.json().await.unwrap()), id);
    let (_, d1) = h.get_json(&format!("/sandboxes/{id}")).await;
    assert_eq!(end(&d1), end(&d0));
    let r = h
        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/connect"))
        .json(&json!({"timeout": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, d2) = h.get_json(&format!("/sandboxes/{id}")).await;
    assert!(end(&d2) > end(&d0));

    // set_timeout may shorten.
    let r = h
        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/timeout"))
        .json(&json!({"timeout": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, d3) = h.get_json(&format!("/sandboxes/{id}")).await;
    assert!(end(&d3) < end(&d2));
    let r = h
        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/timeout"))
        .json(&json!({"timeout": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = h
        .api(reqwest::Method::POST, "/sandboxes/nosuch/timeout")
        .json(&json!({"timeout": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .api(reqwest::Method::POST, "/sandboxes/nosuch/connect")
        .json(&json!({"timeout": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The reaper kills at endAt (within ~1 s).
    let r = h
        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/timeout"))
        .json(&json!({"timeout": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let t0 = std::time::Instant::now();
    loop {
        let (s, _) = h.get_json(&format!("/sandboxes/{id}")).await;
        if s == 404 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "not reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(t0.elapsed() >= Duration::from_millis(700));
    // the sandbox leaves the API first; the backend's destroy follows in the kill task
    while !h.backend.state.lock().unwrap().destroyed.contains(&id) {
        assert!(t0.elapsed() < Duration::from_secs(5), "not destroyed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // timeout <= 0 expires at once.
    let id2 = sid(&h.create_ok(json!({"templateID":"base","timeout":300})).await);
    let r = h
        .api(reqwest::Method::POST, &format!("/sandboxes/{id2}/timeout"))
        .json(&json!({"timeout": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (s, _) = h.get_json(&format!("/sandboxes/{id2}")).await;
    assert_eq!(s, 404);

    // An agent that dies on its own is noticed and cleaned up.
    let id3 = sid(&h.create_ok(json!({"templateID":"base","timeout":300})).await);
    h.backend.crash(&id3);
    let t0 = std::time::Instant::now();
    while h.get_json(&format!("/sandboxes/{id3}")).await.0 != 404 {
        assert!(t0.elapsed() < Duration::from_secs(5), "dead agent not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn concurrency_limit_gives_429() {
    let h = Harness::start(DaemonLimits {
        max_sandboxes: 2,
        ..DaemonLimits::default()
    })
    .await;
    h.create_ok(json!({"templateID":"base"})).await;
    let b = sid(&h.create_ok(json!({"templateID":"base"})).await);
    let (s, v) = h.create(json!({"templateID":"base"})).await;
    assert_eq!((s.as_u16(), v["code"].as_i64()), (429, Some(429)));
    h.api(reqwest::Method::DELETE, &format!("/sandboxes/{b}"))
        .send()
        .await
        .unwrap();
    h.create_ok(json!({"templateID":"base"})).await;
    h.stop().await;
}

#[tokio::test]
async fn proxy_envd_routes_and_streams() {
    let h = Harness::start(DaemonLimits::default()).await;
    let id = sid(&h.create_ok(json!({"templateID":"base","secure":true})).await);

    let r = h
        .http
        .get(h.url("/health"))
        .header("E2b-Sandbox-Id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Host routing.
    let r = h
        .http
        .get(h.url("/whoami?x=1"))
        .header("Host", format!("49983-{id}.localhost:{}", h.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let who: Value = r.json().await.unwrap();
    assert_eq!(who["id"], id.as_str());
    assert_eq!(who["uri"], "/whoami?x=1");
    assert_eq!(who["host"], format!("49983-{id}.localhost:{}", h.addr.port()));

    // A chunked request body streams through and back.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..50).map(|i| Ok(Bytes::from(format!("chunk{i};")))).collect();
    let r = h
        .http
        .post(h.url("/echo"))
        .header("E2b-Sandbox-Id", &id)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let want: String = (0..50).map(|i| format!("chunk{i};")).collect();
    assert_eq!(r.text().await.unwrap(), want);

    // Streaming responses arrive while the upstream is still sending.
    let r = h
        .http
        .get(h.url("/stream"))
        .header("E2b-Sandbox-Id", &id)
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"tick 0"));
    drop(s);

    // Unknown / malformed ids on sandbox traffic: 502 JSON, never 404.
    for bad in ["nosuchsandbox", "Bad-Id"] {
        let r = h
            .http
            .get(h.url("/health"))
            .header("E2b-Sandbox-Id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(r.json::<Value>().await.unwrap()["sandboxId"], bad);
    }
    let r = h
        .http
        .get(h.url("/health"))
        .header("Host", "49983-nosuch.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    // Signed /files URLs without routing data find their sandbox by signature.
    let token = h.backend.spec(&id).unwrap().agent.access_token.unwrap();
    let other = sid(&h.create_ok(json!({"templateID":"base","secure":true})).await);
    let sig = file_signature("/home/user/a.txt", "read", "user", &token, Some("1900000000"));
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("path", "/home/user/a.txt")
        .append_pair("username", "user")
        .append_pair("signature", &sig)
        .append_pair("signature_expiration", "1900000000")
        .finish();
    let r = h.http.get(h.url(&format!("/files?{q}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), format!("files of {id}"));
    assert_ne!(id, other);
    let r = h
        .http
        .get(h.url("/files?path=x&signature=v1_wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 401);
    h.stop().await;
}

#[tokio::test]
async fn proxy_user_ports_tunnel_upgrade_and_traffic_token() {
    let h = Harness::start(DaemonLimits::default()).await;
    let port = user_port_server().await;
    let id = sid(&h.create_ok(json!({"templateID":"base"})).await);

    let r = h
        .http
        .get(h.url("/hello"))
        .header("Host", format!("{port}-{id}.localhost:{}", h.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.starts_with("hello from port"), "{body}");
    assert!(
        body.contains(&format!("{port}-{id}.localhost")),
        "original Host kept: {body}"
    );

    // Nothing listens: the agent's 502 is passed through.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = h
        .http
        .get(h.url("/"))
        .header("E2b-Sandbox-Id", &id)
        .header("E2b-Sandbox-Port", closed.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"], "The sandbox is running but port is not open");
    assert_eq!(v["port"], closed);

    // Upgrade: 101 then raw bytes both ways.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {port}-{id}.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // Killing the sandbox resets the upgraded connection.
    h.api(reqwest::Method::DELETE, &format!("/sandboxes/{id}"))
        .send()
        .await
        .unwrap();
    expect_reset(&mut s).await;

    // allowPublicTraffic=false: ports other than 49983 need the traffic token.
    let v = h
        .create_ok(json!({"templateID":"base","secure":true,"network":{"allowPublicTraffic":false}}))
        .await;
    let id = sid(&v);
    let tt = v["trafficAccessToken"].as_str().unwrap().to_string();
    let host = format!("{port}-{id}.localhost");
    let r = h
        .http
        .get(h.url("/hello"))
        .header("Host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 403);
    let r = h
        .http
        .get(h.url("/hello"))
        .header("Host", &host)
        .header("e2b-traffic-access-token", &tt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .http
        .get(h.url("/health"))
        .header("Host", format!("49983-{id}.localhost"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "envd port needs no traffic token");
    h.stop().await;
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "EOF in head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

async fn expect_reset(s: &mut TcpStream) {
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("connection neither reset nor closed"),
            Ok(Ok(0)) => panic!("clean EOF (FIN) instead of a reset"),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                return;
            }
        }
    }
}

#[tokio::test]
async fn kill_resets_in_flight_connections_only() {
    let h = Harness::start(DaemonLimits::default()).await;
    let a = sid(&h.create_ok(json!({"templateID":"base"})).await);
    let b = sid(&h.create_ok(json!({"templateID":"base"})).await);

    // Connection 1: a stream from sandbox a, in flight.
    let mut s1 = TcpStream::connect(h.addr).await.unwrap();
    s1.write_all(format!("GET /stream HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {a}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut buf = [0u8; 16];
    s1.read_exact(&mut buf[..4]).await.unwrap();

    // Connection 2: keep-alive, a finished request to a, then a stream from b.
    let mut s2 = TcpStream::connect(h.addr).await.unwrap();
    s2.write_all(format!("GET /health HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {a}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s2).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    s2.write_all(format!("GET /stream HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {b}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s2).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let r = h
        .api(reqwest::Method::DELETE, &format!("/sandboxes/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    expect_reset(&mut s1).await;
    // Connection 2 carries b's stream and keeps flowing.
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(2), s2.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
    }
    h.stop().await;
}

#[tokio::test]
async fn upstream_eof_mid_body_becomes_reset() {
    let h = Harness::start(DaemonLimits::default()).await;
    let id = sid(&h.create_ok(json!({"templateID":"base"})).await);
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(format!("GET /truncated HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {id}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{head}"
    );
    let mut got = [0u8; 10];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"0123456789");
    expect_reset(&mut s).await;
    // The sandbox itself is fine.
    let r = h
        .http
        .get(h.url("/health"))
        .header("E2b-Sandbox-Id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    h.stop().await;
}

#[tokio::test]
async fn h2c_requests_are_routed_too() {
    let h = Harness::start(DaemonLimits::default()).await;
    let id = sid(&h.create_ok(json!({"templateID":"base"})).await);
    let s = TcpStream::connect(h.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{}/whoami", h.addr))
        .header("e2b-sandbox-id", &id)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], id.as_str());
    let req = Request::builder()
        .uri(format!("http://{}/v2/sandboxes", h.addr))
        .header("x-api-key", KEY)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    h.stop().await;
}

#[tokio::test]
async fn leftovers_are_cleaned_at_start_and_data_dir_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = sandboxd_store::Store::open(&data).unwrap();
        let now = chrono::Utc::now();
        store
            .insert(&sandboxd_store::SandboxRecord {
                seq: 0,
                id: "ileftoverrow".into(),
                template_id: "base".into(),
                alias: None,
                state: sandboxd_store::SandboxState::Running,
                limits: sandboxd_store::StoredLimits {
                    cpu_count: 1,
                    memory_mb: 512,
                    disk_mb: 0,
                    pids: 10,
                },
                metadata: Default::default(),
                env_vars: Default::default(),
                access_token: None,
                traffic_token: None,
                allow_internet_access: true,
                network: None,
                started_at: now,
                end_at: now,
                agent_pid: Some(1),
                agent_start_time: Some(1),
                allowed_commands: None,
            })
            .unwrap();
    }
    let h = Harness::start_in(dir, DaemonLimits::default(), |b| {
        b.state.lock().unwrap().leftovers.push("ileftoverhost".into());
    })
    .await;
    let destroyed = h.backend.state.lock().unwrap().destroyed.clone();
    assert!(destroyed.contains(&"ileftoverrow".to_string()), "{destroyed:?}");
    assert!(destroyed.contains(&"ileftoverhost".to_string()), "{destroyed:?}");
    assert!(
        sandboxd_store::Store::open(&data)
            .unwrap()
            .list()
            .unwrap()
            .is_empty()
    );
    let (_, l) = h.get_json("/v2/sandboxes").await;
    assert_eq!(l, json!([]));

    // A second daemon on the same data dir is refused.
    let cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), data, KEY.into());
    let err = Server::bind(cfg, h.backend.clone()).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    h.stop().await;
}

#[tokio::test]
async fn connection_budget_and_silent_connections() {
    let h = Harness::start_with(|c| {
        c.max_connections = Some(4);
        c.first_request_timeout = Duration::from_millis(300);
    })
    .await;
    // Four idle connections take the whole budget: a fifth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(h.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut extra = TcpStream::connect(h.addr).await.unwrap();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("refused connection closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "over the budget: {:?}", String::from_utf8_lossy(&buf[..n]));
    // Connections that never send a request are closed after the first-request timeout,
    // which frees the budget for real clients.
    for s in &mut idle {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("silent connection closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    drop(idle);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = h.http.get(h.url("/health")).send().await.unwrap();
    assert!(r.status().is_success());
    // A kept-alive connection that has served a request outlives the first-request timeout.
    let mut kept = TcpStream::connect(h.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut kept).await;
    assert!(head.starts_with("HTTP/1.1 2"), "{head}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut kept).await;
    assert!(head.starts_with("HTTP/1.1 2"), "{head}");
    h.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_make_room_for_new_ones() {
    let h = Harness::start_with(|c| c.max_connections = Some(4)).await;
    // Four clients each make a request and keep their connection open: the whole budget.
    let mut kept = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 2"), "{head}");
        kept.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not idle long enough yet: a fifth is refused.
    let mut early = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), early.read(&mut buf))
        .await
        .expect("refused connection closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Once they have idled past the minimum, a new client is served in the place of the
    // connection idle the longest, which is closed cleanly.
    tokio::time::sleep(crate::conn::MIN_IDLE + Duration::from_millis(200)).await;
    let mut fresh = TcpStream::connect(h.addr).await.unwrap();
    fresh
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut fresh).await;
    assert!(head.starts_with("HTTP/1.1 2"), "{head}");
    let n = tokio::time::timeout(Duration::from_secs(5), kept[0].read(&mut buf))
        .await
        .expect("the oldest idle connection was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // the others still serve
    for s in &mut kept[1..] {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(s).await;
        assert!(head.starts_with("HTTP/1.1 2"), "{head}");
    }
    h.stop().await;
}

/// Whether an answer is the router's own "no such route" (404 `no route for …`) or "no such
/// method" (405), rather than a handler's.
async fn is_unrouted(r: reqwest::Response) -> (bool, String) {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or_default().to_string();
    let unrouted = status == StatusCode::METHOD_NOT_ALLOWED
        || (status == StatusCode::NOT_FOUND && message.starts_with("no route for"));
    (unrouted, format!("{status} {message}"))
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let h = Harness::start(DaemonLimits::default()).await;
    // The check can fail: an undocumented path and an unrouted method are told apart.
    for (method, path) in [
        (reqwest::Method::GET, "/sandboxes/abc/nope"),
        (reqwest::Method::DELETE, "/volumes"),
    ] {
        let (unrouted, what) = is_unrouted(h.api(method.clone(), path).send().await.unwrap()).await;
        assert!(unrouted, "{method} {path}: {what}");
    }
    let ops = crate::contract_tests::documented_operations();
    assert!(ops.len() > 20, "{ops:?}");
    for (method, path) in ops {
        // Every path parameter gets a well-formed id of nothing that exists.
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "inoroute0" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = h.api(m, &concrete);
        if matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            req = req.json(&json!({}));
        }
        let (unrouted, what) = is_unrouted(req.send().await.unwrap()).await;
        assert!(
            !unrouted,
            "{method} {path} ({concrete}) is documented but not routed: {what}"
        );
    }
    h.stop().await;
}

/// The `network.bandwidth` a sandbox created with `body` got.
async fn created_bandwidth(h: &Harness, body: Value) -> Value {
    let v = h.create_ok(body).await;
    let (_, got) = h.get_json(&format!("/sandboxes/{}", sid(&v))).await;
    got["network"]["bandwidth"].clone()
}

/// `(public, bandwidth)` of `template` as `GET /templates` lists it.
async fn listed_settings(h: &Harness, template: &str) -> (Value, Value) {
    let (_, list) = h.get_json("/templates").await;
    let t = list
        .as_array()
        .and_then(|l| l.iter().find(|t| t["templateID"] == template))
        .cloned()
        .unwrap_or_default();
    (t["public"].clone(), t["bandwidth"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_settings_give_its_sandboxes_their_rate_limits() {
    let h = Harness::start_with(|c| {
        c.template_defaults.egress_kbit = Some(5000);
    })
    .await;
    let patch = |path: &str, body: Value| {
        let r = h.api(reqwest::Method::PATCH, path).json(&body).send();
        async move {
            let r = r.await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // the daemon's default first
    assert_eq!(
        created_bandwidth(&h, json!({"templateID": "base"})).await,
        json!({"egressMbps": 5.0})
    );
    // the template's limits replace it; a create's own still wins; both routes work
    let (s, body) = patch(
        "/templates/base",
        json!({"bandwidth": {"ingressMbps": 2, "egressMbps": 1}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"templateID": "base", "names": ["base"], "public": null,
               "bandwidth": {"egressMbps": 1.0, "ingressMbps": 2.0}})
    );
    assert_eq!(
        created_bandwidth(&h, json!({"templateID": "base"})).await,
        json!({"egressMbps": 1.0, "ingressMbps": 2.0})
    );
    assert_eq!(
        created_bandwidth(
            &h,
            json!({"templateID": "base", "network": {"bandwidth": {"egressMbps": 3}}})
        )
        .await,
        json!({"egressMbps": 3})
    );
    // other templates keep the daemon's default
    assert_eq!(
        created_bandwidth(&h, json!({"templateID": "code-interpreter-v1"})).await,
        json!({"egressMbps": 5.0})
    );
    // `{}`: the template's sandboxes get no limits; `null` goes back to the daemon's
    let (s, _) = patch("/v2/templates/base", json!({"bandwidth": {}, "public": false})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        created_bandwidth(&h, json!({"templateID": "base"})).await,
        Value::Null
    );
    assert_eq!(listed_settings(&h, "base").await, (json!(false), json!({})));
    let (s, body) = patch("/templates/base", json!({"bandwidth": null})).await;
    assert_eq!(
        (s, body["public"].clone()),
        (StatusCode::OK, json!(false)),
        "public is kept"
    );
    assert_eq!(
        created_bandwidth(&h, json!({"templateID": "base"})).await,
        json!({"egressMbps": 5.0})
    );
    // bad updates: a clear 400 (404 for an unknown template) and nothing changes
    for (path, body, status, says) in [
        (
            "/templates/base",
            json!({"bandwidth": {"egressMbps": 0}}),
            400,
            "bandwidth.egressMbps",
        ),
        ("/templates/base", json!({"bandwidth": "fast"}), 400, "bandwidth"),
        (
            "/templates/base",
            json!({"bandwidth": {"egressMbps": 1, "burst": 9}}),
            400,
            "burst",
        ),
        ("/templates/base", json!({"public": "yes"}), 400, "public"),
        ("/templates/base", json!({"cpuCount": 4}), 400, "cpuCount"),
        ("/templates/base", json!([1]), 400, "object"),
        ("/templates/base:v2", json!({"public": true}), 400, "tag"),
        ("/templates/nope", json!({"public": true}), 404, "nope"),
        ("/templates/Bad%20Name", json!({"public": true}), 400, "template"),
    ] {
        let (s, body) = patch(path, body.clone()).await;
        assert_eq!(s.as_u16(), status, "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap_or_default().contains(says),
            "{path}: {body}"
        );
    }
    assert_eq!(listed_settings(&h, "base").await, (json!(false), Value::Null));
    h.stop().await;
}

/// The registry row of `id` in the daemon's data dir (read beside the running daemon).
fn stored_state(h: &Harness, id: &str) -> Option<sandboxd_store::SandboxState> {
    let store = sandboxd_store::Store::open(&h._dir.path().join("data")).unwrap();
    store.get(id).unwrap().map(|r| r.state)
}

async fn state_of(h: &Harness, id: &str) -> (String, Value) {
    let (s, d) = h.get_json(&format!("/sandboxes/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    (d["state"].as_str().unwrap_or_default().to_string(), d)
}

#[tokio::test]
async fn pause_failures_roll_back_and_resume_falls_back_to_the_files() {
    use sandboxd_store::SandboxState::{Paused, Running};
    let h = Harness::start(DaemonLimits::default()).await;
    let id = sid(&h.create_ok(json!({"templateID": "base"})).await);
    let pause = format!("/sandboxes/{id}/pause");
    let connect = format!("/sandboxes/{id}/connect");

    // A memory pause whose freeze fails: thawed again, running, row and traffic as before.
    h.backend.fail("freeze", true);
    let (s, v) = h.post(&pause, json!({})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert!(
        h.backend.calls().contains(&format!("thaw {id}")),
        "{:?}",
        h.backend.calls()
    );
    assert_eq!(state_of(&h, &id).await.0, "running");
    assert_eq!(stored_state(&h, &id), Some(Running));
    assert!(h.agent_answers(&id).await);
    h.backend.fail("freeze", false);

    // A memory pause that works: frozen, no traffic, the row says paused.
    let (s, _) = h.post(&pause, json!({})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(h.backend.is_frozen(&id));
    let (st, d) = state_of(&h, &id).await;
    assert_eq!((st.as_str(), d["pauseMode"].as_str()), ("paused", Some("full")));
    assert_eq!(stored_state(&h, &id), Some(Paused));
    assert!(!h.agent_answers(&id).await);

    // Its resume cannot thaw: a fresh boot on the kept files, with a note saying so.
    h.backend.fail("thaw", true);
    let (s, v) = h.post(&connect, json!({"timeout": 60})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(h.backend.calls().contains(&format!("boot {id}")));
    let (st, d) = state_of(&h, &id).await;
    assert_eq!(st, "running");
    assert!(
        d["lifecycleNote"]
            .as_str()
            .unwrap_or_default()
            .contains("memory resume failed"),
        "{d}"
    );
    assert_eq!(stored_state(&h, &id), Some(Running));
    assert!(h.agent_answers(&id).await);
    h.backend.fail("thaw", false);

    // A filesystem pause whose stop fails stays paused (a resume stops leftovers first).
    h.backend.fail("stop", true);
    let (s, _) = h.post(&pause, json!({"memory": false})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (st, d) = state_of(&h, &id).await;
    assert_eq!(
        (st.as_str(), d["pauseMode"].as_str()),
        ("paused", Some("filesystem"))
    );
    h.backend.fail("stop", false);

    // A resume whose boot fails answers the error and leaves it paused, row included.
    h.backend.fail("boot", true);
    let (s, v) = h.post(&connect, json!({"timeout": 60})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(state_of(&h, &id).await.0, "paused");
    assert_eq!(stored_state(&h, &id), Some(Paused));
    h.backend.fail("boot", false);
    let (s, _) = h.post(&connect, json!({"timeout": 60})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(h.agent_answers(&id).await);
    h.stop().await;
}

#[tokio::test]
async fn a_restart_readopts_running_and_paused_sandboxes() {
    let h = Harness::start(DaemonLimits::default()).await;
    let running = sid(&h.create_ok(json!({"templateID": "base"})).await);
    let mem = sid(&h.create_ok(json!({"templateID": "base"})).await);
    let files = sid(&h.create_ok(json!({"templateID": "base"})).await);
    let (s, _) = h.post(&format!("/sandboxes/{mem}/pause"), json!({})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .post(&format!("/sandboxes/{files}/pause"), json!({"memory": false}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (dir, backend) = h.stop_keep().await;
    // while no daemon ran, an interrupted resume thawed the memory-paused one
    backend.state.lock().unwrap().frozen.remove(&mem);

    let h = Harness::launch_on(dir, backend, |_| {}).await;
    assert_eq!(state_of(&h, &running).await.0, "running");
    assert!(h.agent_answers(&running).await);
    let (st, d) = state_of(&h, &mem).await;
    assert_eq!((st.as_str(), d["pauseMode"].as_str()), ("paused", Some("full")));
    assert!(h.backend.is_frozen(&mem), "frozen again at start");
    let (st, d) = state_of(&h, &files).await;
    assert_eq!(
        (st.as_str(), d["pauseMode"].as_str()),
        ("paused", Some("filesystem"))
    );
    assert!(h.backend.state.lock().unwrap().destroyed.is_empty());
    for id in [&mem, &files] {
        let (s, v) = h
            .post(&format!("/sandboxes/{id}/connect"), json!({"timeout": 60}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(h.agent_answers(id).await);
    }
    assert!(!h.backend.is_frozen(&mem));
    h.stop().await;
}

/// A registry row as an earlier (crashed) daemon left it.
fn crashed_row(id: &str, state: sandboxd_store::SandboxState) -> sandboxd_store::SandboxRecord {
    let now = chrono::Utc::now();
    sandboxd_store::SandboxRecord {
        seq: 0,
        id: id.into(),
        template_id: "base".into(),
        alias: Some("base".into()),
        state,
        limits: sandboxd_store::StoredLimits {
            cpu_count: 1,
            memory_mb: 512,
            disk_mb: 0,
            pids: 10,
        },
        metadata: Default::default(),
        env_vars: Default::default(),
        access_token: None,
        traffic_token: None,
        allow_internet_access: true,
        network: None,
        started_at: now,
        end_at: now + chrono::Duration::seconds(300),
        agent_pid: Some(std::process::id() as i32),
        agent_start_time: Some(1),
        allowed_commands: None,
    }
}

#[tokio::test]
async fn crash_reconciliation_follows_the_registry() {
    use sandboxd_store::SandboxState::{Creating, Killing, Paused, Running};
    let dir = tempfile::tempdir().unwrap();
    let sock_dir = dir.path().join("socks");
    std::fs::create_dir_all(&sock_dir).unwrap();
    let backend = FakeBackend::new(sock_dir);
    // What the host holds: every sandbox below was booted.
    for id in [
        "icreating",
        "ikilling",
        "irunning",
        "idead",
        "ipausedmem",
        "ihostonly",
    ] {
        let spec = SandboxSpec {
            id: id.into(),
            template: "base".into(),
            limits: Default::default(),
            agent: sandboxd_protocol::agent::AgentConfig::new(id, "base"),
            volumes: Vec::new(),
        };
        backend.create(spec).await.unwrap();
    }
    backend.crash("idead");
    backend.crash("ipausedmem"); // a memory pause whose processes a host reboot took
    backend.state.lock().unwrap().frozen.insert("irunning".into()); // an interrupted pause
    {
        let store = sandboxd_store::Store::open(&dir.path().join("data")).unwrap();
        for (id, st) in [
            ("icreating", Creating),
            ("ikilling", Killing),
            ("irunning", Running),
            ("idead", Running),
            ("ipausedmem", Paused),
        ] {
            store.insert(&crashed_row(id, st)).unwrap();
        }
        store
            .set_lifecycle("ipausedmem", &json!({"pausedMemory": true}))
            .unwrap();
    }

    let h = Harness::launch_on(dir, backend, |_| {}).await;
    let mut destroyed = h.backend.state.lock().unwrap().destroyed.clone();
    destroyed.sort();
    assert_eq!(destroyed, ["icreating", "idead", "ihostonly", "ikilling"]);
    for gone in &destroyed {
        assert_eq!(stored_state(&h, gone), None, "{gone}");
        let (s, _) = h.get_json(&format!("/sandboxes/{gone}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{gone}");
    }
    // running with a live agent: re-adopted and thawed
    assert_eq!(state_of(&h, "irunning").await.0, "running");
    assert!(!h.backend.is_frozen("irunning"));
    assert!(h.agent_answers("irunning").await);
    // paused with memory but no processes: a filesystem pause now, with a note
    let (st, d) = state_of(&h, "ipausedmem").await;
    assert_eq!(
        (st.as_str(), d["pauseMode"].as_str()),
        ("paused", Some("filesystem"))
    );
    assert!(
        d["lifecycleNote"]
            .as_str()
            .unwrap_or_default()
            .contains("memory state was lost"),
        "{d}"
    );
    assert!(!h.backend.has_agent("ipausedmem"));
    let (s, v) = h
        .post("/sandboxes/ipausedmem/connect", json!({"timeout": 60}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(h.agent_answers("ipausedmem").await);
    h.stop().await;
}
