//! The one client for every call into a sandbox's agent, over its unix sockets: a pooled
//! HTTP/1.1 client for the envd API (port 49983), `CONNECT` tunnels to any other port inside
//! the sandbox, and requests to the agent's internal control socket (config hand-over of a
//! pooled sandbox, log reads, OOM reports).

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::UnixStream;

/// `sun_path` holds 108 bytes including the NUL; longer paths are reached through an
/// `O_PATH` fd of their directory (`/proc/self/fd/<fd>/<name>`).
const MAX_SUN_PATH: usize = 107;
/// Time limit of one control-socket request.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest control-socket answer read.
const MAX_CONTROL_BODY: usize = 16 << 20;

/// Connects to one unix socket path, however long.
#[derive(Debug, Clone)]
pub struct UnixConnector {
    inner: Arc<SocketPath>,
}

#[derive(Debug)]
struct SocketPath {
    /// The path to pass to `connect(2)`.
    connect_path: PathBuf,
    /// Keeps the directory fd named in `connect_path` open (long paths only).
    _dir: Option<OwnedFd>,
}

impl UnixConnector {
    /// A connector for `path`. Fails only when a long path's directory cannot be opened.
    pub fn new(path: &Path) -> io::Result<Self> {
        let inner = if path.as_os_str().len() <= MAX_SUN_PATH {
            SocketPath {
                connect_path: path.to_path_buf(),
                _dir: None,
            }
        } else {
            let (dir, name) = match (path.parent(), path.file_name()) {
                (Some(d), Some(n)) => (d, n),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "socket path has no file name",
                    ));
                }
            };
            let fd = nix::fcntl::open(
                dir,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(io::Error::from)?;
            let connect_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
            if connect_path.as_os_str().len() > MAX_SUN_PATH {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "socket file name too long",
                ));
            }
            SocketPath {
                connect_path,
                _dir: Some(fd),
            }
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Opens a new connection.
    pub async fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.inner.connect_path).await
    }
}

impl tower::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// The pooled HTTP/1.1 client of one sandbox's agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    connector: UnixConnector,
    client: Client<UnixConnector, Incoming>,
}

/// Errors talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent connection failed: {0}")]
    Connect(#[source] io::Error),
    #[error("agent request failed: {0}")]
    Http(String),
    /// The client's request body failed (malformed chunk, connection closed mid-body).
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
}

/// Whether a client error came from the request body we were forwarding (hyper reports
/// errors of the body it sends as "user" errors).
fn is_client_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The error of a request sent on a hyper connection.
pub fn send_error(e: hyper::Error) -> AgentError {
    if is_client_body_error(&e) {
        AgentError::ClientBody(body_cause(&e))
    } else {
        AgentError::Http(e.to_string())
    }
}

/// The innermost message of an error chain (what was wrong with the body).
fn body_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl AgentClient {
    /// A client for the agent socket at `path`.
    pub fn new(path: &Path) -> io::Result<Self> {
        let connector = UnixConnector::new(path)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(32)
            .set_host(false)
            .build(connector.clone());
        Ok(Self { connector, client })
    }

    /// The agent socket's connector (for calls with bodies of the daemon's own making).
    pub fn connector(&self) -> &UnixConnector {
        &self.connector
    }

    /// Sends a request to the envd API. The URI must be absolute (`http://agent/<path>`).
    pub async fn send(&self, req: Request<Incoming>) -> Result<http::Response<Incoming>, AgentError> {
        self.client.request(req).await.map_err(|e| {
            // Unwrap the connect error so callers can tell "agent gone" from other failures.
            let msg = e.to_string();
            if e.is_connect() {
                AgentError::Connect(io::Error::new(io::ErrorKind::ConnectionRefused, msg))
            } else if is_client_body_error(&e) {
                AgentError::ClientBody(body_cause(&e))
            } else {
                AgentError::Http(format!("{msg}: {:?}", std::error::Error::source(&e)))
            }
        })
    }

    /// Opens a tunnel to `127.0.0.1:<port>` inside the sandbox: `CONNECT` on a new agent
    /// connection. `Ok(Ok(stream))` is the raw byte stream to the port; `Ok(Err(response))` is
    /// the agent's refusal (for example 502 "port is not open"), to pass through.
    pub async fn tunnel(
        &self,
        port: u16,
    ) -> Result<Result<hyper::upgrade::Upgraded, http::Response<Incoming>>, AgentError> {
        let stream = self.connector.connect().await.map_err(AgentError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| AgentError::Http(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("tunnel connection ended: {e}");
            }
        });
        let target = format!("127.0.0.1:{port}");
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(&target)
            .header(header::HOST, &target)
            .body(Empty::new())
            .map_err(|e| AgentError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| AgentError::Http(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Ok(Err(resp));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| AgentError::Http(format!("tunnel upgrade: {e}")))?;
        Ok(Ok(upgraded))
    }
}

/// An open HTTP/1.1 connection to an agent's control socket.
pub type ControlSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens an HTTP/1.1 connection to an agent's control socket (`None`: it cannot be reached).
pub async fn control_connection(sock: &Path) -> Option<ControlSender> {
    let stream = UnixConnector::new(sock).ok()?.connect().await.ok()?;
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Some(sender)
}

/// One request on an open control connection, within `limit`; returns the status and body.
pub async fn control_send(
    sender: &mut ControlSender,
    method: http::Method,
    path_and_query: &str,
    body: String,
    limit: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::HOST, "agent")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_CONTROL_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| "the agent did not answer in time".to_string())?
}

/// One request to an agent's control socket on a new connection; returns the status and body.
pub async fn control_request(
    sock: &Path,
    method: http::Method,
    path_and_query: &str,
    body: String,
) -> Result<(StatusCode, Bytes), String> {
    let fut = async {
        let conn = UnixConnector::new(sock).map_err(|e| e.to_string())?;
        let stream = conn.connect().await.map_err(|e| format!("connecting: {e}"))?;
        let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        control_send(&mut sender, method, path_and_query, body, CONTROL_TIMEOUT).await
    };
    tokio::time::timeout(CONTROL_TIMEOUT, fut)
        .await
        .map_err(|_| "the agent did not answer in time".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn long_socket_paths_connect_through_proc_fd() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("x".repeat(60)).join("y".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("agent.sock");
        assert!(sock.as_os_str().len() > MAX_SUN_PATH);
        // Bind through the same trick (bind would fail with the long path too).
        let short = UnixConnector::new(&sock).unwrap();
        let listener = tokio::net::UnixListener::bind(&short.inner.connect_path).unwrap();
        assert!(sock.exists());
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        let mut c = short.connect().await.unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = UnixConnector::new(&dir.path().join("none.sock")).unwrap();
        assert!(c.connect().await.is_err());
    }
}
