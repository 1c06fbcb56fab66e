//! A lean HTTP/1.1 client for the benchmark: one keep-alive TCP connection per [`Conn`]
//! (`TCP_NODELAY`, no pool, no TLS), requests sent one at a time on it, bodies streamed.

use crate::BenchError;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sandboxd_protocol::connect::EnvelopeDecoder;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Request body type of every request the bench sends.
pub type ReqBody = BoxBody<Bytes, std::io::Error>;

/// A body from bytes held in memory (small requests).
pub fn full(b: impl Into<Bytes>) -> ReqBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> ReqBody {
    full(Bytes::new())
}

/// A body of `len` bytes made by repeating one chunk: streams any size in constant memory.
#[derive(Debug)]
pub struct RepeatBody {
    chunk: Bytes,
    remaining: u64,
}

impl RepeatBody {
    /// `len` bytes, sent as slices of `chunk` (which must not be empty unless `len` is 0).
    pub fn new(chunk: Bytes, len: u64) -> Self {
        Self {
            chunk,
            remaining: len,
        }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.chunk.is_empty() {
            return Poll::Ready(Some(Err(std::io::Error::other(
                "empty chunk for a non-empty body",
            ))));
        }
        let n = (self.chunk.len() as u64).min(self.remaining) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// One keep-alive HTTP/1.1 connection to the daemon. Reconnects when the server closed it.
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<ReqBody>>,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, BenchError> {
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| BenchError::Http(e.to_string()))?;
        let mut c = Conn {
            addr,
            host,
            sender: None,
        };
        c.reconnect().await?;
        Ok(c)
    }

    async fn reconnect(&mut self) -> Result<(), BenchError> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| BenchError::Http(format!("connecting to {}: {e}", self.addr)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| BenchError::Http(format!("TCP_NODELAY: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| BenchError::Http(format!("HTTP/1.1 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("bench connection ended: {e}");
            }
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends a request (origin-form URI, for example `/sandboxes`); returns once the response
    /// head arrived. The body is left to the caller.
    pub async fn send(&mut self, mut req: Request<ReqBody>) -> Result<Response<Incoming>, BenchError> {
        req.headers_mut().insert(header::HOST, self.host.clone());
        let usable = match self.sender.as_mut() {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.reconnect().await?;
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| BenchError::Http("no connection".into()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| BenchError::Http(format!("request failed: {e}")))
    }

    /// Sends a request and reads the whole (small) response body.
    pub async fn call(&mut self, req: Request<ReqBody>) -> Result<(StatusCode, Bytes), BenchError> {
        let resp = self.send(req).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| BenchError::Http(format!("reading response body: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
}

/// Reads a body to its end, counting bytes; returns the count.
pub async fn drain(mut body: Incoming) -> Result<u64, BenchError> {
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| BenchError::Http(format!("reading body: {e}")))?;
        if let Some(d) = f.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

/// A request builder with the daemon's address conventions.
pub fn request(method: Method, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

/// Connect stream messages as they arrive: yields each data envelope's JSON with its arrival
/// time; fails on an end-of-stream error.
pub struct ConnectStream {
    body: Incoming,
    decoder: EnvelopeDecoder,
    done: bool,
}

impl ConnectStream {
    /// Wraps a streaming response (status 200 and `application/connect+json` checked).
    pub fn new(resp: Response<Incoming>) -> Result<ConnectStream, BenchError> {
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if resp.status() != StatusCode::OK || ct != sandboxd_protocol::connect::CONTENT_TYPE_STREAM_JSON {
            return Err(BenchError::Http(format!(
                "stream answered {} with content type {ct:?}",
                resp.status()
            )));
        }
        Ok(ConnectStream {
            body: resp.into_body(),
            decoder: EnvelopeDecoder::new(64 << 20),
            done: false,
        })
    }

    /// The next message, or `None` after a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<(serde_json::Value, Instant)>, BenchError> {
        loop {
            if self.done {
                return Ok(None);
            }
            match self.decoder.next_envelope() {
                Ok(Some(env)) => {
                    let at = Instant::now();
                    let v: serde_json::Value = serde_json::from_slice(&env.payload)
                        .map_err(|e| BenchError::Http(format!("bad stream message: {e}")))?;
                    if env.is_end_stream() {
                        self.done = true;
                        if let Some(err) = v.get("error") {
                            return Err(BenchError::Http(format!("stream ended with error {err}")));
                        }
                        continue;
                    }
                    return Ok(Some((v, at)));
                }
                Ok(None) => {}
                Err(e) => return Err(BenchError::Http(format!("stream framing: {e}"))),
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        self.decoder.push(d);
                    }
                }
                Some(Err(e)) => return Err(BenchError::Http(format!("stream read: {e}"))),
                None => {
                    if self.decoder.pending() > 0 {
                        return Err(BenchError::Http("stream ended inside a message".into()));
                    }
                    self.done = true;
                }
            }
        }
    }

    /// Reads to the end (so the connection can be reused).
    pub async fn finish(mut self) -> Result<(), BenchError> {
        while self.next().await?.is_some() {}
        Ok(())
    }
}

/// Wraps a JSON message in a Connect envelope.
pub fn envelope(msg: &serde_json::Value) -> Bytes {
    sandboxd_protocol::connect::encode_envelope(0, msg.to_string().as_bytes())
}

/// A deadline helper: `what` failed to finish within `limit`.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(BenchError::Http(format!("{what}: no answer within {limit:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repeat_body_streams_exact_length() {
        let body = RepeatBody::new(Bytes::from(vec![7u8; 1000]), 2500);
        assert_eq!(body.size_hint().exact(), Some(2500));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 2500);
        assert!(bytes.iter().all(|b| *b == 7));
        let empty = RepeatBody::new(Bytes::new(), 0);
        assert!(empty.is_end_stream());
        assert!(RepeatBody::new(Bytes::new(), 5).collect().await.is_err());
    }

    #[test]
    fn envelope_has_header() {
        let e = envelope(&serde_json::json!({"a":1}));
        assert_eq!(e[0], 0);
        assert_eq!(u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize, e.len() - 5);
    }
}
