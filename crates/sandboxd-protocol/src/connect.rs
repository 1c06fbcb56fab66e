//! Connect-RPC framing and errors, as the E2B SDKs use them (JSON codec only).
//!
//! See `docs/contract.md` §7. Unary calls carry a bare JSON body; streaming calls
//! carry envelopes: 1 flag byte, a big-endian u32 length, then the JSON payload. The last
//! envelope of a server stream has flag [`FLAG_END_STREAM`] and carries `{}` or `{"error":...}`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Envelope flag: the payload is compressed (never used by sandboxd).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;
/// Content type of unary JSON calls.
pub const CONTENT_TYPE_UNARY_JSON: &str = "application/json";
/// Content type of streaming JSON calls. Must be sent exactly like this (no charset).
pub const CONTENT_TYPE_STREAM_JSON: &str = "application/connect+json";

/// Connect error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The wire name, for example `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// HTTP status for a unary error with this code (`docs/contract.md` §7).
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown => 500,
            Code::InvalidArgument => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 400,
            Code::Aborted => 409,
            Code::OutOfRange => 400,
            Code::Unimplemented => 501,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::DataLoss => 500,
            Code::Unauthenticated => 401,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Connect error: code and message. Serializes as `{"code":"not_found","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ConnectError {
    pub code: Code,
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    /// The JSON body of a unary error response.
    pub fn to_json(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()))
    }
}

/// Payload of an end-of-stream envelope.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndStream {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<ConnectError>,
}

/// Encode one envelope.
pub fn encode_envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flags);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Encode a data envelope holding `msg` as JSON.
pub fn encode_message<T: Serialize>(msg: &T) -> Result<Bytes, serde_json::Error> {
    Ok(encode_envelope(0, &serde_json::to_vec(msg)?))
}

/// Encode the end-of-stream envelope: `{}` on success, `{"error":{...}}` on failure.
pub fn encode_end_stream(error: Option<&ConnectError>) -> Bytes {
    let body = match error {
        None => b"{}".to_vec(),
        Some(e) => serde_json::to_vec(&EndStream {
            error: Some(e.clone()),
        })
        .unwrap_or_else(|_| b"{}".to_vec()),
    };
    encode_envelope(FLAG_END_STREAM, &body)
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub flags: u8,
    pub payload: Bytes,
}

impl Envelope {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Framing errors.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("envelope of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("compressed envelopes are not supported")]
    Compressed,
}

/// Incremental envelope decoder with a size bound per message.
#[derive(Debug)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
    max_len: usize,
}

impl EnvelopeDecoder {
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_len,
        }
    }

    /// Add received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Decode the next complete envelope, if one is buffered.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge(len, self.max_len));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, payload }))
    }
}

/// Parse a `Connect-Timeout-Ms` header value: a positive decimal of at most 10 digits.
pub fn parse_timeout_ms(value: &str) -> Result<u64, ConnectError> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConnectError::invalid_argument(format!(
            "invalid Connect-Timeout-Ms: {value:?}"
        )));
    }
    value
        .parse::<u64>()
        .map_err(|_| ConnectError::invalid_argument(format!("invalid Connect-Timeout-Ms: {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_stream_bytes() {
        assert_eq!(&encode_end_stream(None)[..], b"\x02\x00\x00\x00\x02{}");
        let e = ConnectError::not_found("process with pid 9 not found");
        let b = encode_end_stream(Some(&e));
        assert_eq!(b[0], 2);
        assert_eq!(
            &b[5..],
            br#"{"error":{"code":"not_found","message":"process with pid 9 not found"}}"#
        );
    }

    #[test]
    fn decoder_splits_and_bounds() {
        let mut d = EnvelopeDecoder::new(16);
        let a = encode_envelope(0, b"{\"a\":1}");
        d.push(&a[..3]);
        assert_eq!(d.next_envelope(), Ok(None));
        d.push(&a[3..]);
        let env = d.next_envelope().unwrap().unwrap();
        assert_eq!(&env.payload[..], b"{\"a\":1}");
        d.push(&encode_envelope(0, &[b'x'; 17]));
        assert_eq!(d.next_envelope(), Err(FrameError::TooLarge(17, 16)));
        let mut d = EnvelopeDecoder::new(16);
        d.push(&encode_envelope(FLAG_COMPRESSED, b"{}"));
        assert_eq!(d.next_envelope(), Err(FrameError::Compressed));
    }

    #[test]
    fn timeout_header() {
        assert_eq!(parse_timeout_ms("60000"), Ok(60000));
        assert!(parse_timeout_ms("").is_err());
        assert!(parse_timeout_ms("12345678901").is_err());
        assert!(parse_timeout_ms("-5").is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(Code::NotFound.http_status(), 404);
        assert_eq!(Code::Unauthenticated.http_status(), 401);
        assert_eq!(
            serde_json::to_string(&Code::AlreadyExists).unwrap(),
            "\"already_exists\""
        );
    }
}
