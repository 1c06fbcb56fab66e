//! The listener: one TCP socket, HTTP/1.1 and h2c, and TLS (HTTP/1.1 and HTTP/2 by ALPN) on the
//! same port when configured; a routing decision per request.

use crate::config::ServerConfig;
use crate::conn::{ConnCtl, ConnTable, GuardedBody, MIN_IDLE, TrackedStream};
use crate::error::{ApiError, ServerError};
use crate::fd_budget::FdBudget;
use crate::proxy::{self, SandboxStopped};
use crate::routing::{self, Route};
use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sandboxd_daemon::Daemon;
use sandboxd_runtime::SandboxBackend;
use sandboxd_store::Store;
use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// File in the data dir locked while a daemon uses it.
pub const LOCK_FILE: &str = "sandboxd.lock";
/// How long open connections may finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new connection waits for the permit of the idle connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

struct Shared {
    daemon: Arc<Daemon>,
    control: Router,
    keepalive_idle: Duration,
    first_request_timeout: Duration,
    /// Open client connections (for making room at the budget).
    conns: ConnTable,
    /// TLS on the same port (`--tls`, `--tls-cert`): connections starting with a handshake.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The data dir's lock and the bound listener ([`Server::claim`]).
#[derive(Debug)]
pub struct Claim {
    lock: nix::fcntl::Flock<File>,
    listener: std::net::TcpListener,
}

/// The daemon: bound, cleaned up, ready to [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// Permits for client connections served at once (`fd_budget.rs`).
    connections: Arc<Semaphore>,
    _lock: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Server {
    /// Takes the data dir and the listen address ([`Server::claim`]), then
    /// [`Server::bind_claimed`].
    pub async fn bind(config: ServerConfig, backend: Arc<dyn SandboxBackend>) -> Result<Self, ServerError> {
        let claim = Self::claim(&config.data_dir, config.listen)?;
        Self::bind_claimed(config, backend, claim).await
    }

    /// What a daemon takes before it touches anything: the data dir's lock (a second daemon on
    /// it stops here) and the listen address (a port in use stops it here too). `sandboxd
    /// serve` claims before its backend cleans up anything of the data dir.
    pub fn claim(data_dir: &Path, listen: SocketAddr) -> Result<Claim, ServerError> {
        // before anything else: a descriptor limit too low to serve is a start-up error
        crate::fd_budget::raise_nofile()?;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| ServerError::io(format!("creating {}", data_dir.display()), e))?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ServerError::io(format!("opening {}", lock_path.display()), e))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
            |(_, errno)| {
                ServerError::Config(format!(
                    "data dir {} is in use by another sandboxd ({errno}); stop it first, or pass another --data-dir",
                    data_dir.display()
                ))
            },
        )?;
        let listener = std::net::TcpListener::bind(listen).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                ": another program (or another sandboxd) uses that port; pick another with --listen"
            } else {
                ""
            };
            ServerError::io(format!("cannot listen on {listen}{hint}"), e)
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ServerError::io("setting the listener non-blocking", e))?;
        Ok(Claim { lock, listener })
    }

    /// Opens the registry on a claimed data dir, serves on the claimed listener and re-adopts
    /// or cleans up the sandboxes of an earlier run. The returned server accepts work once run.
    pub async fn bind_claimed(
        config: ServerConfig,
        backend: Arc<dyn SandboxBackend>,
        claim: Claim,
    ) -> Result<Self, ServerError> {
        let Claim { lock, listener } = claim;
        let dir = &config.data_dir;
        let budget = FdBudget::raise_and_compute(config.limits.max_sandboxes)?;
        let max_connections = config.max_connections.unwrap_or(budget.max_connections);
        tracing::info!(nofile = budget.nofile, max_connections, "file descriptor budget");
        let store = Arc::new(Store::open(dir)?);
        let listener = TcpListener::from_std(listener)
            .map_err(|e| ServerError::io(format!("listening on {}", config.listen), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| ServerError::io("reading the listen address", e))?;
        let domain = config.domain.clone().unwrap_or_else(|| match config.tls {
            // OpenSSL takes no wildcard of a single label (`*.localhost`); one level down
            // still resolves to loopback wherever `*.localhost` does
            Some(_) => format!("{}:{}", crate::config::TLS_DEFAULT_DOMAIN, local_addr.port()),
            None => format!("localhost:{}", local_addr.port()),
        });
        let keepalive_idle = config.keepalive_idle;
        let first_request_timeout = config.first_request_timeout;
        let daemon = Arc::new(Daemon::new(config.daemon_config(), domain, backend, store));
        daemon
            .check_pool_templates()
            .await
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let cleaned = daemon.reconcile_at_start().await?;
        if !cleaned.is_empty() {
            tracing::info!(count = cleaned.len(), "cleaned up sandboxes of an earlier run");
        }
        let control = crate::api::router(daemon.clone(), &config.api_key, config.max_body_bytes);
        Ok(Self {
            shared: Arc::new(Shared {
                daemon,
                control,
                keepalive_idle,
                first_request_timeout,
                conns: ConnTable::default(),
                tls: config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            }),
            listener,
            local_addr,
            connections: Arc::new(Semaphore::new(max_connections)),
            _lock: lock,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The domain returned to SDKs.
    pub fn domain(&self) -> &str {
        self.shared.daemon.domain()
    }

    /// The domain (tests and embedding).
    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.shared.daemon
    }

    /// Serves until `shutdown` completes, then lets open connections finish for a few
    /// seconds. Sandboxes keep running.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let reaper = tokio::spawn(self.shared.daemon.clone().run_reaper());
        let sampler = tokio::spawn(self.shared.daemon.clone().run_sampler());
        let pool = tokio::spawn(self.shared.daemon.clone().run_pool());
        let drain = CancellationToken::new();
        let tracker = TaskTracker::new();
        tokio::pin!(shutdown);
        let mut refused: u64 = 0;
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => match self.connections.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tracker.spawn(serve_connection(self.shared.clone(), stream, drain.clone(), permit));
                        }
                        Err(_) if self.shared.conns.evict_idle(MIN_IDLE) => {
                            // At the budget: an idle connection makes room, and this one takes
                            // its permit once that connection's task has ended.
                            let connections = self.connections.clone();
                            let (shared, drain) = (self.shared.clone(), drain.clone());
                            tracker.spawn(async move {
                                match tokio::time::timeout(EVICTION_WAIT, connections.acquire_owned()).await {
                                    Ok(Ok(permit)) => serve_connection(shared, stream, drain, permit).await,
                                    _ => tracing::debug!(%peer, "no room after an eviction; closing"),
                                }
                            });
                        }
                        Err(_) => {
                            // Over the connection budget with none idle: refuse rather than run
                            // out of fds.
                            refused += 1;
                            if refused.is_power_of_two() {
                                tracing::warn!(%peer, refused, "connection limit reached; closing new connections");
                            }
                            drop(stream);
                        }
                    },
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
        tracing::info!("shutting down; sandboxes keep running");
        self.shared.daemon.begin_shutdown();
        drop(self.listener);
        drain.cancel();
        tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish in time");
        }
        reaper.abort();
        sampler.abort();
        // pooled (never claimed) sandboxes are destroyed; claimed ones keep running
        self.shared.daemon.shutdown_pool(pool).await;
        Ok(())
    }
}

type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, SandboxStopped>> + Send>>;

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    drain: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let ctl = ConnCtl::new();
    shared.conns.insert(&ctl);
    let _registered = Registered(&shared.conns, ctl.id);
    let tls = match &shared.tls {
        // TLS and plain HTTP share the port: a TLS record starts with a handshake byte
        Some(acceptor) => {
            match tokio::time::timeout(shared.first_request_timeout, starts_with_tls(&stream)).await {
                Ok(true) => Some(acceptor.clone()),
                Ok(false) => None,
                Err(_) => return,
            }
        }
        None => None,
    };
    let stream = TrackedStream::new(stream, ctl.clone());
    match tls {
        Some(acceptor) => {
            match tokio::time::timeout(shared.first_request_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_http(shared.clone(), TokioIo::new(tls), ctl, drain).await,
                Ok(Err(e)) => tracing::debug!(conn = ctl.id, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(conn = ctl.id, "TLS handshake timed out"),
            }
        }
        None => serve_http(shared.clone(), TokioIo::new(stream), ctl, drain).await,
    }
}

/// Whether the client's first byte is a TLS handshake record (0x16; an HTTP request starts
/// with a method's letter, an h2c preface with `P`).
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(stream.peek(&mut b).await, Ok(1) if b[0] == 0x16)
}

/// Serves HTTP/1.1 and HTTP/2 on an accepted connection (plain or TLS).
async fn serve_http<I>(shared: Arc<Shared>, io: TokioIo<I>, ctl: Arc<ConnCtl>, drain: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_ctl = ctl.clone();
    let svc_shared = shared.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        let ctl = svc_ctl.clone();
        ctl.mark_served();
        let guard = ctl.begin_request();
        let fut: ResponseFuture = Box::pin(async move {
            let response = dispatch(&shared, &ctl, req).await?;
            Ok(response.map(|body| Body::new(GuardedBody::new(body, guard))))
        });
        fut
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // Starts when the connection waits for a request head: the keep-alive idle timeout.
        .header_read_timeout(shared.keepalive_idle);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let first_request = shared.first_request_timeout;
    let silent = async {
        tokio::time::sleep(first_request).await;
        if ctl.was_served() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        // A connection that never completes a request head holds an fd for nothing.
        _ = silent => {
            tracing::debug!(conn = ctl.id, "no request within {first_request:?}; closing");
        }
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(conn = ctl.id, "connection ended: {e}");
            }
        }
        // Aborted (sandbox killed): dropping the connection resets it.
        _ = ctl.cancelled() => {}
        // Idle and chosen to make room for a new connection: a plain close.
        _ = ctl.evicted() => {}
        _ = drain.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = ctl.cancelled() => {}
                _ = tokio::time::sleep(DRAIN_TIMEOUT) => {}
            }
        }
    }
}

/// Removes a connection from the table when its task ends.
struct Registered<'a>(&'a ConnTable, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    ctl: &Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<Body>, SandboxStopped> {
    match routing::decide(req.method(), req.uri(), req.headers()) {
        Route::Control => match shared.control.clone().oneshot(req.map(Body::new)).await {
            Ok(r) => Ok(r),
            Err(never) => match never {},
        },
        Route::Sandbox { id, port } => proxy::forward(&shared.daemon, ctl, &id, port, req).await,
        Route::SignedFiles => proxy::forward_signed(&shared.daemon, ctl, req).await,
        Route::Invalid(msg) => Ok(ApiError::BadRequest(msg).to_response()),
    }
}
