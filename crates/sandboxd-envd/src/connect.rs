//! Connect-RPC server glue for axum handlers (JSON codec; `docs/contract.md` §7).
//!
//! Unary handlers: [`read_unary`] the request, answer with [`unary_ok`] or a [`ConnectError`]
//! (which implements `IntoResponse` as a unary error). Server-streaming handlers:
//! [`read_stream_request`], then [`stream_channel`] gives a [`StreamSender`] and the response.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use sandboxd_protocol::connect::{
    CONTENT_TYPE_STREAM_JSON, CONTENT_TYPE_UNARY_JSON, ConnectError, EnvelopeDecoder, encode_end_stream,
    encode_message, parse_timeout_ms,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest unary request body accepted (SendInput can carry stdin data).
pub const MAX_UNARY_BODY: usize = 16 << 20;
/// Largest single envelope accepted on a streaming request.
pub const MAX_STREAM_MESSAGE: usize = 16 << 20;
/// Keepalive interval when the client sends no `Keepalive-Ping-Interval`.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// A unary error response: HTTP status from the code, JSON body `{"code","message"}`.
pub struct UnaryError(pub ConnectError);

impl From<ConnectError> for UnaryError {
    fn from(e: ConnectError) -> Self {
        Self(e)
    }
}

impl IntoResponse for UnaryError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(Body::from(self.0.to_json()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_UNARY_JSON),
        );
        resp
    }
}

/// Result type of unary handlers.
pub type UnaryResult = Result<Response, UnaryError>;

fn check_protocol_version(headers: &HeaderMap) -> Result<(), ConnectError> {
    match headers.get("connect-protocol-version") {
        None => Ok(()),
        Some(v) if v.as_bytes() == b"1" => Ok(()),
        Some(v) => Err(ConnectError::invalid_argument(format!(
            "connect-protocol-version must be \"1\": got {:?}",
            String::from_utf8_lossy(v.as_bytes())
        ))),
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim())
        .unwrap_or("")
}

/// The SDKs never compress Connect messages (`docs/contract.md` §7): only identity is accepted.
fn check_encoding(headers: &HeaderMap, name: &str) -> Result<(), ConnectError> {
    match headers.get(name).map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(()),
        Some(other) => Err(ConnectError::unimplemented(format!(
            "unsupported {name}: {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// Read a body up to `limit` bytes; a larger body is `resource_exhausted`.
pub async fn read_body_limited(body: Body, limit: usize) -> Result<Bytes, ConnectError> {
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ConnectError::new(
                sandboxd_protocol::connect::Code::Canceled,
                format!("reading request: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(ConnectError::new(
                sandboxd_protocol::connect::Code::ResourceExhausted,
                format!("request body exceeds {limit} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads and drops a request body we refuse, then returns `err` (see [`drain`]).
pub async fn drain_then(body: Body, err: ConnectError) -> ConnectError {
    drain(body).await;
    err
}

/// Reads and drops a request body we refuse (up to [`MAX_UNARY_BODY`], for a few seconds), so
/// the refusal reaches the client instead of a connection closed under its upload or under its
/// next keep-alive request.
pub async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let read_all = async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > MAX_UNARY_BODY {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read_all).await;
}

/// Decode a JSON message; errors are `invalid_argument` with the serde message.
pub fn decode_json<T: DeserializeOwned>(data: &[u8]) -> Result<T, ConnectError> {
    let data = if data.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}" as &[u8]
    } else {
        data
    };
    serde_json::from_slice(data)
        .map_err(|e| ConnectError::invalid_argument(format!("invalid request message: {e}")))
}

/// Read and decode a unary request (content type `application/json`).
pub async fn read_unary<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ConnectError> {
    let checked = check_protocol_version(headers).and_then(|()| {
        let ct = content_type(headers);
        if ct != CONTENT_TYPE_UNARY_JSON {
            return Err(ConnectError::unimplemented(format!(
                "unsupported content-type {ct:?}: only application/json is supported"
            )));
        }
        check_encoding(headers, "content-encoding")
    });
    if let Err(e) = checked {
        return Err(drain_then(body, e).await);
    }
    let data = read_body_limited(body, MAX_UNARY_BODY).await?;
    decode_json(&data)
}

/// Read the single enveloped request message of a server-streaming call.
pub async fn read_stream_request<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ConnectError> {
    let checked = check_protocol_version(headers).and_then(|()| {
        let ct = content_type(headers);
        if ct != CONTENT_TYPE_STREAM_JSON {
            return Err(ConnectError::unimplemented(format!(
                "unsupported content-type {ct:?}: only application/connect+json is supported"
            )));
        }
        check_encoding(headers, "connect-content-encoding")
    });
    if let Err(e) = checked {
        return Err(drain_then(body, e).await);
    }
    let data = read_body_limited(body, MAX_STREAM_MESSAGE + 5).await?;
    let mut dec = EnvelopeDecoder::new(MAX_STREAM_MESSAGE);
    dec.push(&data);
    match dec.next_envelope() {
        Ok(Some(env)) => decode_json(&env.payload),
        Ok(None) => Err(ConnectError::invalid_argument("missing request message")),
        Err(e) => Err(ConnectError::invalid_argument(e.to_string())),
    }
}

/// A unary success response: 200, `application/json`, the message as JSON.
pub fn unary_ok<T: Serialize>(msg: &T) -> UnaryResult {
    let body =
        serde_json::to_vec(msg).map_err(|e| ConnectError::internal(format!("encoding response: {e}")))?;
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_UNARY_JSON),
    );
    Ok(resp)
}

/// The `Connect-Timeout-Ms` deadline, if any (0 or absent means none).
pub fn deadline(headers: &HeaderMap) -> Result<Option<Duration>, ConnectError> {
    match headers.get("connect-timeout-ms") {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ConnectError::invalid_argument("invalid Connect-Timeout-Ms"))?;
            let ms = parse_timeout_ms(s)?;
            Ok((ms > 0).then(|| Duration::from_millis(ms)))
        }
    }
}

/// The keepalive interval from `Keepalive-Ping-Interval` (seconds), default 90 s.
pub fn keepalive_interval(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_KEEPALIVE)
}

/// Sends the messages of one server stream. Dropping it without [`StreamSender::finish`]
/// ends the stream with an `internal` error, so a stream always has its end-of-stream message.
pub struct StreamSender {
    tx: Option<mpsc::Sender<Bytes>>,
}

impl StreamSender {
    /// Send one message. Returns `false` when the client has gone away.
    pub async fn send<T: Serialize>(&self, msg: &T) -> bool {
        let Some(tx) = &self.tx else { return false };
        match encode_message(msg) {
            Ok(b) => tx.send(b).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Whether the client has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(|t| t.is_closed())
    }

    /// Resolves when the client goes away.
    pub async fn closed(&self) {
        if let Some(t) = &self.tx {
            t.closed().await
        }
    }

    /// Send the end-of-stream message (success or error) and close the stream.
    pub async fn finish(mut self, error: Option<ConnectError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(encode_end_stream(error.as_ref())).await;
        }
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(encode_end_stream(Some(&ConnectError::internal(
                "stream ended unexpectedly",
            ))));
        }
    }
}

/// A streaming response (200, `application/connect+json`) and the sender that feeds it.
/// Each message is written as its own chunk, so it is flushed at once.
pub fn stream_channel() -> (StreamSender, Response) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_STREAM_JSON),
    );
    (StreamSender { tx: Some(tx) }, resp)
}

/// A streaming response that consists of only an end-of-stream error (status 200).
pub fn stream_error(error: ConnectError) -> Response {
    let mut resp = Response::new(Body::from(encode_end_stream(Some(&error))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_STREAM_JSON),
    );
    resp
}
