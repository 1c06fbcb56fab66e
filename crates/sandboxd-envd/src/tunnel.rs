//! Serving the agent's listeners, and the port tunnel on `agent.sock`.
//!
//! [`serve`] runs one listener with hyper-util's automatic HTTP/1.1 + h2c server (with
//! upgrades). When the tunnel is enabled, an HTTP/1.1 `CONNECT 127.0.0.1:<port>` request is
//! not routed: the agent connects to `127.0.0.1:<port>` (then `[::1]:<port>`) inside the
//! sandbox, answers 200 and splices both directions. The daemon uses this for every sandbox
//! port other than 49983. Nothing listening gives 502 with the E2B "port is not open" body.

use crate::state::AgentState;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tower::ServiceExt;

/// How long connecting to a port inside the sandbox may take (loopback: normally instant).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve `app` on `listener` until the task is dropped. With `tunnel` set, `CONNECT` requests
/// open the port tunnel instead of being routed.
pub async fn serve<L: Listener>(mut listener: L, app: Router, state: Arc<AgentState>, tunnel: bool) {
    loop {
        let (io, _addr) = listener.accept().await;
        let app = app.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                let state = state.clone();
                async move {
                    if tunnel && req.method() == Method::CONNECT {
                        return Ok::<_, Infallible>(connect(req, &state).await);
                    }
                    app.oneshot(req.map(Body::new)).await
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .await
            {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// The port of a `CONNECT` target, when the target is a loopback address of the sandbox.
pub fn parse_target(authority: &str) -> Result<u16, String> {
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("CONNECT target {authority:?} has no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
        return Err(format!(
            "CONNECT target {authority:?}: only 127.0.0.1 inside the sandbox can be reached"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("CONNECT target {authority:?} has an invalid port")),
    }
}

/// The 502 body of a port nothing listens on (`docs/contract.md` §1).
pub fn port_closed_body(sandbox_id: &str, port: u16) -> String {
    serde_json::json!({
        "sandboxId": sandbox_id,
        "message": "The sandbox is running but port is not open",
        "port": port,
        "code": 502,
        "error_code": "runtime_error",
    })
    .to_string()
}

async fn dial(port: u16) -> Option<TcpStream> {
    for addr in [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ] {
        if let Ok(Ok(s)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            return Some(s);
        }
    }
    None
}

/// Handle one `CONNECT` request: dial the port, answer 200 and splice, or 502 / 400.
pub async fn connect(req: Request<Incoming>, state: &AgentState) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let port = match parse_target(&authority) {
        Ok(p) => p,
        Err(msg) => return crate::auth::json_error(StatusCode::BAD_REQUEST, &msg),
    };
    let Some(upstream) = dial(port).await else {
        let body = port_closed_body(&state.config().sandbox_id, port);
        return crate::auth::json_response(StatusCode::BAD_GATEWAY, body);
    };
    let _ = upstream.set_nodelay(true);
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let mut upstream = upstream;
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(port, "tunnel ended: {e}");
                }
            }
            Err(e) => tracing::debug!(port, "tunnel upgrade failed: {e}"),
        }
    });
    Response::new(Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("127.0.0.1:8000"), Ok(8000));
        assert_eq!(parse_target("localhost:1"), Ok(1));
        assert_eq!(parse_target("[::1]:65535"), Ok(65535));
        assert!(parse_target("127.0.0.1:0").is_err());
        assert!(parse_target("127.0.0.1:65536").is_err());
        assert!(parse_target("127.0.0.1").is_err());
        assert!(parse_target("10.0.0.1:80").is_err());
        assert!(parse_target("example.com:80").is_err());
    }

    #[test]
    fn closed_port_body() {
        let v: serde_json::Value = serde_json::from_str(&port_closed_body("abc", 8000)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sandboxId":"abc","message":"The sandbox is running but port is not open","port":8000,"code":502,"error_code":"runtime_error"})
        );
    }
}
