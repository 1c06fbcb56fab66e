//! The sandbox proxy: forwards sandbox traffic to the sandbox's agent.
//!
//! - Port 49983 (envd): the request goes over the sandbox's pooled HTTP/1.1 client on its
//!   agent socket.
//! - Any other port: `CONNECT 127.0.0.1:<port>` on a new agent connection opens a tunnel to the
//!   port inside the sandbox; the request is then sent over it. A `101` answer splices both
//!   sides (WebSocket and other upgrades).
//!
//! Bodies stream both ways without buffering. The sandbox must be running when the request
//! starts (502 JSON otherwise). While a request is in flight it is registered with its sandbox;
//! when the sandbox stops, HTTP/1.1 client connections are reset (TCP RST) and HTTP/2 streams
//! are reset (RST_STREAM, by failing the response). An upstream that ends a body early becomes
//! a reset too, never a clean end.

use crate::conn::ConnCtl;
use crate::error::ApiError;
use crate::routing::SignedFileRequest;
use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sandboxd_daemon::agent::{AgentError, send_error};
use sandboxd_daemon::{Daemon, InflightGuard, LiveSandbox};
use sandboxd_protocol::ENVD_PORT;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Failing a request in the proxy service resets the client's stream (HTTP/2) or connection
/// (HTTP/1.1, together with [`ConnCtl::abort`]).
#[derive(Debug, thiserror::Error)]
#[error("sandbox {0} stopped while the request was in flight")]
pub struct SandboxStopped(pub String);

/// Header carrying the traffic access token (sandboxes with `allowPublicTraffic: false`).
pub const TRAFFIC_TOKEN_HEADER: &str = "e2b-traffic-access-token";

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Why a proxied response body failed (the client's stream is reset).
#[derive(Debug, thiserror::Error)]
pub enum ProxyBodyError {
    #[error("sandbox {0} stopped while the response was streaming")]
    Stopped(String),
    #[error("upstream body failed: {0}")]
    Upstream(String),
}

/// Whether the message asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (and those named in `Connection`); keeps `Upgrade` and sets
/// `Connection: upgrade` when `upgrade` is set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(upgrade && n == header::UPGRADE) {
            headers.remove(n);
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Proxies a request routed to `port` of sandbox `id`.
pub async fn forward(
    daemon: &Arc<Daemon>,
    conn: &Arc<ConnCtl>,
    id: &str,
    port: u16,
    req: Request<Incoming>,
) -> Result<Response<Body>, SandboxStopped> {
    daemon.counters().proxied();
    let Some(sandbox) = daemon.sandbox(id) else {
        return Ok(ApiError::SandboxNotRunning(id.to_string()).to_response());
    };
    // autoResume: traffic to a paused sandbox resumes it first (lifecycle.rs)
    let sandbox = daemon.resume_for_traffic(sandbox).await;
    forward_to(daemon, sandbox, conn, port, req).await
}

/// Proxies a signed `/files` request to the sandbox whose token made the signature.
pub async fn forward_signed(
    daemon: &Arc<Daemon>,
    conn: &Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<Body>, SandboxStopped> {
    daemon.counters().proxied();
    let Some(signed) = SignedFileRequest::from_request(req.method(), req.uri()) else {
        return Ok(crate::routing::no_signature_match().to_response());
    };
    let found = daemon.sandboxes().into_iter().find(|s| {
        s.rec
            .access_token
            .as_deref()
            .is_some_and(|t| signed.is_signed_with(t))
    });
    match found {
        Some(s) => forward_to(daemon, s, conn, ENVD_PORT, req).await,
        None => Ok(crate::routing::no_signature_match().to_response()),
    }
}

async fn forward_to(
    daemon: &Arc<Daemon>,
    sandbox: Arc<LiveSandbox>,
    conn: &Arc<ConnCtl>,
    port: u16,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, SandboxStopped> {
    let id = sandbox.id().to_string();
    let h1 = req.version() < Version::HTTP_2;
    let h1_conn = h1.then_some(conn);
    let Some(guard) = sandbox.begin_request(h1_conn) else {
        return Ok(ApiError::SandboxNotRunning(id).to_response());
    };
    if port != ENVD_PORT
        && let Some(token) = &sandbox.rec.traffic_token
    {
        let ok = req
            .headers()
            .get(TRAFFIC_TOKEN_HEADER)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(token.as_bytes())));
        if !ok {
            return Ok(
                ApiError::Forbidden("missing or invalid E2B-Traffic-Access-Token header".into())
                    .to_response(),
            );
        }
    }

    let upgrade = h1 && wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    if req.headers().get(header::HOST).is_none()
        && let Some(auth) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(auth.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    // `maskRequestHost`: the Host a sandbox's own servers see (`${PORT}` is the port)
    if port != ENVD_PORT
        && let Some(mask) = sandbox
            .rec
            .network
            .as_ref()
            .and_then(|n| n.get("maskRequestHost"))
            .and_then(|m| m.as_str())
        && let Ok(v) = HeaderValue::from_str(&mask.replace("${PORT}", &port.to_string()))
    {
        req.headers_mut().insert(header::HOST, v);
    }
    strip_hop_by_hop(req.headers_mut(), upgrade);
    *req.version_mut() = Version::HTTP_11;
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();

    let stopped = sandbox.stopped().clone();
    let send = async {
        if port == ENVD_PORT {
            let uri =
                Uri::try_from(format!("http://agent{pq}")).map_err(|e| AgentError::Http(e.to_string()))?;
            *req.uri_mut() = uri;
            sandbox.agent.send(req).await
        } else {
            *req.uri_mut() = Uri::try_from(pq).map_err(|e| AgentError::Http(e.to_string()))?;
            send_tunneled(&sandbox, port, req).await
        }
    };
    let result: Result<Response<Incoming>, AgentError> = tokio::select! {
        r = send => r,
        _ = stopped.cancelled() => {
            if let Some(c) = h1_conn { c.abort(); }
            return Err(SandboxStopped(id));
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(sandbox = %id, port, "upstream failed: {e}");
            // The agent vanished or broke the connection: if the sandbox is gone, answer as
            // for any stopped sandbox (for HTTP/1.1 the connection is being reset anyway).
            if sandbox.stopped().is_cancelled() {
                if let Some(c) = h1_conn {
                    c.abort();
                }
                return Err(SandboxStopped(id));
            }
            return Ok(upstream_failure(daemon, &sandbox, port, e).to_response());
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (parts, _) = resp.into_parts();
        let conn = conn.clone();
        tokio::spawn(splice_upgraded(client_upgrade, upstream_upgrade, guard, conn));
        let mut out = Response::from_parts(parts, Body::empty());
        strip_hop_by_hop(out.headers_mut(), true);
        return Ok(out);
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body = ProxyBody {
        inner: body,
        guard: Some(guard),
        stopped: Box::pin(sandbox.stopped().clone().cancelled_owned()),
        conn: h1_conn.cloned(),
    };
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The answer to a request the agent did not answer while the sandbox is still registered as
/// running: only evidence that the agent is gone says "not found" (SDKs then report the
/// sandbox as gone); a broken client body is the client's error.
fn upstream_failure(daemon: &Daemon, sandbox: &LiveSandbox, port: u16, e: AgentError) -> ApiError {
    let id = sandbox.id().to_string();
    match e {
        AgentError::ClientBody(m) => ApiError::BadRequest(format!("reading the request body failed: {m}")),
        _ if !daemon.backend().is_alive(&sandbox.handle) => ApiError::SandboxNotRunning(id),
        _ if port != ENVD_PORT => ApiError::PortNotOpen { sandbox_id: id, port },
        e => ApiError::AgentFailed {
            sandbox_id: id,
            reason: e.to_string(),
        },
    }
}

/// Opens a tunnel to `port` and sends the request over it. A refusal by the agent (502 "port
/// is not open", 400) is returned as the response, unchanged.
async fn send_tunneled(
    sandbox: &LiveSandbox,
    port: u16,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, AgentError> {
    let stream = match sandbox.agent.tunnel(port).await? {
        Ok(s) => s,
        Err(refusal) => return Ok(refusal),
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Incoming>(stream)
        .await
        .map_err(|e| AgentError::Http(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("tunneled connection ended: {e}");
        }
    });
    sender.send_request(req).await.map_err(send_error)
}

async fn splice_upgraded(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: InflightGuard,
    conn: Arc<ConnCtl>,
) {
    let (c, u) = tokio::join!(client, upstream);
    let (c, u) = match (c, u) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            tracing::debug!("upgrade failed: client {:?}, upstream {:?}", c.err(), u.err());
            return;
        }
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    let stopped = guard.sandbox().stopped().clone();
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
            if let Err(e) = r {
                tracing::debug!("upgraded connection ended: {e}");
                conn.mark_reset();
            }
        }
        _ = stopped.cancelled() => conn.abort(),
        _ = conn.cancelled() => {}
    }
    drop(guard);
}

/// A proxied response body: fails (resetting the client stream) when the sandbox stops or the
/// upstream body breaks; releases the in-flight registration when done.
struct ProxyBody {
    inner: Incoming,
    guard: Option<InflightGuard>,
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The HTTP/1.1 client connection, marked for reset on failure.
    conn: Option<Arc<ConnCtl>>,
}

impl ProxyBody {
    fn fail(&mut self, err: ProxyBodyError) -> Poll<Option<Result<Frame<Bytes>, ProxyBodyError>>> {
        if let Some(c) = &self.conn {
            c.mark_reset();
        }
        self.guard = None;
        Poll::Ready(Some(Err(err)))
    }
}

impl HttpBody for ProxyBody {
    type Data = Bytes;
    type Error = ProxyBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.guard.is_some() && this.stopped.as_mut().poll(cx).is_ready() {
            let id = this
                .guard
                .as_ref()
                .map(|g| g.sandbox().id().to_string())
                .unwrap_or_default();
            if let Some(c) = &this.conn {
                c.abort();
            }
            return this.fail(ProxyBodyError::Stopped(id));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => this.fail(ProxyBodyError::Upstream(e.to_string())),
            Poll::Ready(None) => {
                this.guard = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-type", "application/json"),
            ("x-access-token", "tok"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "x-access-token"]);
    }

    #[test]
    fn upgrade_headers_survive_for_upgrades() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }
}
