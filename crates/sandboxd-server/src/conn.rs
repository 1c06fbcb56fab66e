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

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Control block of one accepted client connection.
#[derive(Debug)]
pub struct ConnCtl {
    /// Unique id (for in-flight tracking).
    pub id: u64,
    reset: AtomicBool,
    /// Set when the first request head has been read.
    served: AtomicBool,
    cancel: CancellationToken,
}

impl ConnCtl {
    /// A fresh control block.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            reset: AtomicBool::new(false),
            served: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        })
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
    fn ids_are_unique() {
        assert_ne!(ConnCtl::new().id, ConnCtl::new().id);
    }
}
