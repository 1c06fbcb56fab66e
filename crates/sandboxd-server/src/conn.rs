//! Client connections: the per-connection control block and the stream wrapper that turns a
//! close into a TCP reset when asked (`docs/control-plane.md`, the proxy's reset rules).
//!
//! An SDK tells "the sandbox was killed" apart from other failures only when an open stream
//! fails with a transport error (connection reset). A FIN in the middle of a chunked body reads
//! as a protocol error and gives the wrong exception. So when a sandbox dies, every HTTP/1.1
//! connection whose in-flight request targets it is aborted: [`ConnCtl::abort`] sets the reset
//! flag and cancels the connection task, which drops the connection; [`TrackedStream`]'s drop
//! sets `SO_LINGER {on, 0}` on the socket it owns (no duplicated fd) before closing it, so the
//! kernel sends RST. A shutdown requested while the reset flag is set is skipped (it would
//! send FIN first).
//!
//! At the connection budget, a new connection takes the place of the one idle the longest
//! ([`ConnTable::evict_idle`]): no request in flight and none for at least [`MIN_IDLE`]. So
//! idle keep-alive connections, however many a client holds open, never lock others out.

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long a connection must have been idle before a new one may take its place.
pub const MIN_IDLE: Duration = Duration::from_secs(1);

/// Milliseconds on a monotonic clock that starts with the process.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Control block of one accepted client connection.
#[derive(Debug)]
pub struct ConnCtl {
    /// Unique id (for in-flight tracking).
    pub id: u64,
    reset: AtomicBool,
    /// Set when the first request head has been read.
    served: AtomicBool,
    cancel: CancellationToken,
    /// Requests whose response (body included) is not finished.
    in_flight: AtomicUsize,
    /// [`now_ms`] when the last request finished (or the connection was accepted).
    idle_since: AtomicU64,
    evict: CancellationToken,
}

impl ConnCtl {
    /// A fresh control block.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            reset: AtomicBool::new(false),
            served: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
            evict: CancellationToken::new(),
        })
    }

    /// Counts a request as in flight until the returned guard drops (keep it with the
    /// response body: [`GuardedBody`]).
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    /// How long the connection has had no request in flight; `None` while one is.
    fn idle_for(&self, now: u64) -> Option<u64> {
        (self.in_flight.load(Ordering::SeqCst) == 0)
            .then(|| now.saturating_sub(self.idle_since.load(Ordering::SeqCst)))
    }

    /// Completes when the connection was chosen to make room for a new one.
    pub fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.evict.cancelled()
    }

    /// Close with a reset when the stream is dropped.
    pub fn mark_reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }

    /// Whether the connection will be reset.
    pub fn is_reset(&self) -> bool {
        self.reset.load(Ordering::SeqCst)
    }

    /// Record that a request head arrived.
    pub fn mark_served(&self) {
        self.served.store(true, Ordering::Relaxed);
    }

    /// Whether any request head arrived on this connection.
    pub fn was_served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Reset the connection now: mark it and cancel its task.
    pub fn abort(&self) {
        self.mark_reset();
        self.cancel.cancel();
    }

    /// Completes when the connection was aborted.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
}

impl sandboxd_daemon::ClientConnection for ConnCtl {
    fn id(&self) -> u64 {
        self.id
    }

    fn abort(&self) {
        ConnCtl::abort(self);
    }
}

/// A request in flight on a connection ([`ConnCtl::begin_request`]).
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnCtl>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // the store of `idle_since` before the decrement: a reader that sees zero in flight
        // also sees the time
        self.0.idle_since.store(now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it ends or is dropped.
#[derive(Debug)]
pub struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl GuardedBody {
    /// Wraps `inner`; the guard drops with the body.
    pub fn new(inner: Body, guard: RequestGuard) -> Self {
        Self { inner, _guard: guard }
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The open client connections, so that an idle one can make room for a new one.
#[derive(Debug, Default)]
pub struct ConnTable {
    conns: Mutex<HashMap<u64, Weak<ConnCtl>>>,
}

impl ConnTable {
    /// Registers a connection; [`ConnTable::remove`] when it ends.
    pub fn insert(&self, ctl: &Arc<ConnCtl>) {
        self.lock().insert(ctl.id, Arc::downgrade(ctl));
    }

    /// Forgets a connection.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection idle the longest, if one has been idle for at least
    /// `min_idle`; true when one was closed.
    pub fn evict_idle(&self, min_idle: Duration) -> bool {
        let now = now_ms();
        let min = min_idle.as_millis() as u64;
        let mut conns = self.lock();
        let oldest = conns
            .iter()
            .filter_map(|(id, w)| w.upgrade().map(|c| (*id, c)))
            .filter_map(|(id, c)| {
                c.idle_for(now)
                    .filter(|idle| *idle >= min)
                    .map(|idle| (idle, id, c))
            })
            .max_by_key(|(idle, id, _)| (*idle, std::cmp::Reverse(*id)));
        match oldest {
            Some((idle, id, ctl)) => {
                conns.remove(&id);
                tracing::debug!(
                    conn = id,
                    idle_ms = idle,
                    "closing an idle connection to make room"
                );
                ctl.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<ConnCtl>>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sets `SO_LINGER {on, 0}`: the next close sends RST and drops unsent data.
pub fn set_linger_zero<F: AsFd>(fd: &F) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::Linger, &linger).map_err(io::Error::from)
}

/// A client TCP stream that resets instead of closing when its [`ConnCtl`] says so.
#[derive(Debug)]
pub struct TrackedStream {
    inner: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl TrackedStream {
    pub fn new(inner: TcpStream, ctl: Arc<ConnCtl>) -> Self {
        Self { inner, ctl }
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        if self.ctl.is_reset()
            && let Err(e) = set_linger_zero(&self.inner)
        {
            tracing::debug!("SO_LINGER on reset failed: {e}");
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ctl.is_reset() {
            // A FIN now would defeat the reset the drop sends.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    #[tokio::test]
    async fn reset_flag_turns_drop_into_rst() {
        let (mut client, server) = pair().await;
        let ctl = ConnCtl::new();
        let mut tracked = TrackedStream::new(server, ctl.clone());
        tracked.write_all(b"partial").await.unwrap();
        ctl.abort();
        // A shutdown while the reset flag is set must not send FIN.
        tracked.shutdown().await.unwrap();
        drop(tracked);
        let mut buf = [0u8; 7];
        client.read_exact(&mut buf).await.unwrap();
        let err = client.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn plain_drop_is_a_clean_close() {
        let (mut client, server) = pair().await;
        let tracked = TrackedStream::new(server, ConnCtl::new());
        drop(tracked);
        assert_eq!(client.read(&mut [0u8; 16]).await.unwrap(), 0);
    }

    #[test]
    fn the_longest_idle_connection_is_evicted_and_busy_ones_never() {
        let table = ConnTable::default();
        let (a, b, c) = (ConnCtl::new(), ConnCtl::new(), ConnCtl::new());
        for x in [&a, &b, &c] {
            table.insert(x);
        }
        // all fresh: none idle long enough
        assert!(!table.evict_idle(Duration::from_secs(3600)));
        a.idle_since.store(0, Ordering::SeqCst);
        b.idle_since.store(0, Ordering::SeqCst);
        let busy = a.begin_request();
        // `a` is older but busy; `b` goes
        assert!(table.evict_idle(Duration::ZERO));
        assert!(b.evict.is_cancelled() && !a.evict.is_cancelled());
        drop(busy);
        // a finished request restarts the idle clock
        assert!(!table.evict_idle(Duration::from_secs(3600)));
        assert!(table.evict_idle(Duration::ZERO));
        assert!(table.evict_idle(Duration::ZERO));
        assert!(a.evict.is_cancelled() && c.evict.is_cancelled());
        assert!(
            !table.evict_idle(Duration::ZERO),
            "each connection is evicted once"
        );
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(ConnCtl::new().id, ConnCtl::new().id);
    }
}
