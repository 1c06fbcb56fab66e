//! `rules` header transforms on the egress proxy (`docs/network.md`, "Header rules"): for a
//! connection to a name with rules, the proxy speaks HTTP/1 with both sides (hyper) instead of
//! splicing bytes, and sets each rule's headers on every request, `${e2b.secrets.<name>}`
//! placeholders replaced by the secret's current value (resolved per request through a
//! [`SecretSource`], never stored in the sandbox or logged).

use crate::policy::Transform;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where placeholders get their values (the daemon's secrets).
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The current value of the secret `name`; `None` when there is none.
    async fn secret(&self, name: &str) -> Option<String>;
}

const OPEN: &str = "${e2b.secrets.";

/// `value` with every `${e2b.secrets.<name>}` replaced; `Err(name)` for the first secret that
/// does not resolve.
pub async fn resolve(value: &str, secrets: Option<&dyn SecretSource>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        out.push_str(&rest[..i]);
        match secrets {
            Some(s) => match s.secret(&name.to_lowercase()).await {
                Some(v) => out.push_str(&v),
                None => return Err(name.to_string()),
            },
            None => return Err(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix: Bytes::from(prefix),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

fn plain(status: StatusCode, msg: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answers every request of the sandbox's HTTP/1 connection `client` with `502` and `msg`
/// (the upstream could not be reached as the rules require), until it closes.
pub async fn answer_all<C>(client: C, msg: String)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let msg = msg.clone();
        async move { Ok::<_, hyper::Error>(plain(StatusCode::BAD_GATEWAY, msg)) }
    });
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(client), service),
    )
    .await;
}

/// Serves the sandbox's HTTP/1 connection `client` (its first bytes already read into
/// `head`), forwarding each request over `upstream` with `transforms` applied. Ends when
/// either side closes.
pub async fn serve<C, U>(
    client: C,
    head: Vec<u8>,
    upstream: U,
    transforms: Vec<Transform>,
    secrets: Option<Arc<dyn SecretSource>>,
) -> Result<(), String>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|e| format!("upstream HTTP: {e}"))?;
    let upstream_task = tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let transforms = Arc::new(transforms);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let (sender, transforms, secrets) = (sender.clone(), transforms.clone(), secrets.clone());
        async move {
            for t in transforms.iter() {
                for (name, value) in &t.headers {
                    let value = match resolve(value, secrets.as_deref()).await {
                        Ok(v) => v,
                        Err(missing) => {
                            return Ok::<_, hyper::Error>(plain(
                                StatusCode::BAD_GATEWAY,
                                format!(
                                    "sandboxd: the network rules name secret '{missing}', which does not exist\n"
                                ),
                            ));
                        }
                    };
                    let (Ok(n), Ok(v)) = (
                        hyper::header::HeaderName::from_bytes(name.as_bytes()),
                        hyper::header::HeaderValue::from_str(&value),
                    ) else {
                        return Ok(plain(
                            StatusCode::BAD_GATEWAY,
                            format!("sandboxd: header rule '{name}' does not make a valid header\n"),
                        ));
                    };
                    req.headers_mut().insert(n, v);
                }
            }
            let mut sender = sender.lock().await;
            if sender.ready().await.is_err() {
                return Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    "sandboxd: upstream closed\n".into(),
                ));
            }
            match sender.send_request(req.map(|b| b.boxed())).await {
                Ok(r) => Ok(r.map(|b| b.boxed())),
                Err(e) => Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    format!("sandboxd: upstream: {e}\n"),
                )),
            }
        }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(Prefixed::new(head, client)), service)
        .await;
    upstream_task.abort();
    r.map_err(|e| format!("client HTTP: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fixed(HashMap<String, String>);

    #[async_trait]
    impl SecretSource for Fixed {
        async fn secret(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    #[tokio::test]
    async fn placeholders_resolve_or_name_the_missing_secret() {
        let s = Fixed(HashMap::from([("key".to_string(), "sk-1".to_string())]));
        assert_eq!(
            resolve("Bearer ${e2b.secrets.KEY}!", Some(&s)).await.unwrap(),
            "Bearer sk-1!"
        );
        assert_eq!(
            resolve("no placeholder", Some(&s)).await.unwrap(),
            "no placeholder"
        );
        assert_eq!(
            resolve("${e2b.secrets.key}${e2b.secrets.key}", Some(&s))
                .await
                .unwrap(),
            "sk-1sk-1"
        );
        assert_eq!(
            resolve("x ${e2b.secrets.other}", Some(&s)).await.unwrap_err(),
            "other"
        );
        assert_eq!(resolve("${e2b.secrets.key}", None).await.unwrap_err(), "key");
        assert_eq!(
            resolve("${e2b.secrets.unterminated", Some(&s)).await.unwrap(),
            "${e2b.secrets.unterminated"
        );
    }

    #[tokio::test]
    async fn requests_get_the_rule_headers_on_every_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut sandbox) = tokio::io::duplex(64 * 1024);
        let (upstream, mut server) = tokio::io::duplex(64 * 1024);
        let secrets: Arc<dyn SecretSource> =
            Arc::new(Fixed(HashMap::from([("k".to_string(), "v1".to_string())])));
        let transforms = vec![Transform {
            headers: vec![("X-Key".into(), "${e2b.secrets.k}".into())],
        }];
        let head = b"GET /a HTTP/1.1\r\nHost: web.test\r\nX-Key: forged\r\n\r\n".to_vec();
        let task = tokio::spawn(serve(client, head, upstream, transforms, Some(secrets)));
        // the upstream sees the first request with the header replaced
        let mut buf = vec![0u8; 4096];
        let n = server.read(&mut buf).await.unwrap();
        let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
        assert!(req.contains("x-key: v1") && !req.contains("forged"), "{req}");
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let n = sandbox.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("ok"));
        // a second request on the same connection gets it too
        sandbox
            .write_all(b"GET /b HTTP/1.1\r\nHost: web.test\r\n\r\n")
            .await
            .unwrap();
        let n = server.read(&mut buf).await.unwrap();
        let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
        assert!(req.starts_with("get /b") && req.contains("x-key: v1"), "{req}");
        drop(sandbox);
        drop(server);
        let _ = task.await;
    }
}
