//! `Idempotency-Key` on `POST /v2/sandboxes`: the SDKs (e2b ≥ 2.51) retry a create with the
//! same key, and a retry must never create a second sandbox.
//!
//! The key is claimed in the registry (`sandboxd_store::IdempotencyClaim`) before the create,
//! together with a fingerprint of the request body. Same key and body → the first attempt's
//! response (201, same body); another body → 422 `idempotency_request_mismatch`; still being
//! created → 409 `idempotency_in_progress` (with `Should-Retry: true`, `Retry-After: 1`); cut
//! short by a daemon restart → 409 `idempotency_outcome_unknown`. A failed create frees the key.
//! Keys are remembered for [`sandboxd_daemon::idempotency::KEY_TTL`].

use super::sandbox_view::sandbox_out;
use crate::error::ApiError;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sandboxd_daemon::idempotency::Idempotent;
use sandboxd_daemon::{CreateParams, Daemon, LiveSandbox};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The request header.
const HEADER: &str = "idempotency-key";

/// The `Idempotency-Key` of a request, if any: 1–255 characters `[a-z0-9-]` (the SDKs' own
/// check), else 400.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    let ok = |k: &[u8]| {
        (1..=255).contains(&k.len())
            && k.iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    };
    if !ok(v.as_bytes()) {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 characters of lowercase letters, digits and hyphens".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(v.as_bytes()).into_owned()))
}

/// A hash of the request body that ignores key order and whitespace.
pub fn fingerprint(body: &serde_json::Value) -> String {
    fn canonical(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(&m[k], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    canonical(body, &mut s);
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Creates the sandbox at most once per key; the response of the first attempt is replayed.
pub async fn create_once(
    daemon: &Arc<Daemon>,
    key: String,
    fingerprint: String,
    params: CreateParams,
) -> Response {
    let answer = |s: &LiveSandbox, domain: &str| {
        serde_json::to_string(&sandbox_out(s, domain)).map_err(|e| e.to_string())
    };
    match daemon.create_once(key, fingerprint, params, answer).await {
        Err(e) => ApiError::from(e).into_response(),
        Ok(Idempotent::Replayed { status, answer }) => {
            let mut r = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED),
                answer,
            )
                .into_response();
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("idempotent-replayed", HeaderValue::from_static("true"));
            r
        }
        Ok(Idempotent::Created { answer, .. }) => {
            let mut r = (StatusCode::CREATED, answer).into_response();
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let h = |v: &[u8]| {
            let mut m = HeaderMap::new();
            m.insert(HEADER, HeaderValue::from_bytes(v).unwrap());
            key_of(&m)
        };
        assert_eq!(key_of(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            h(b"0b6f6c1e-4c7a-4d5e-9d3e-5f1c2a3b4c5d").unwrap().as_deref(),
            Some("0b6f6c1e-4c7a-4d5e-9d3e-5f1c2a3b4c5d")
        );
        assert_eq!(h("a".repeat(255).as_bytes()).unwrap().unwrap().len(), 255);
        for bad in [
            &b""[..],
            b"ABC",
            b"a_b",
            b"a b",
            b"a/b",
            "a".repeat(256).as_bytes(),
            b"\xc3\xa9",
        ] {
            let e = h(bad).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains("Idempotency-Key"), "{e}");
        }
    }

    #[test]
    fn fingerprints_ignore_key_order_not_values() {
        let a = serde_json::json!({"templateID":"base","metadata":{"a":"1","b":"2"},"timeout":60});
        let b: serde_json::Value =
            serde_json::from_str(r#"{ "timeout": 60, "metadata": {"b":"2","a":"1"}, "templateID": "base" }"#)
                .unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = serde_json::json!({"templateID":"base","metadata":{"a":"1","b":"2"},"timeout":61});
        assert_ne!(fingerprint(&a), fingerprint(&c));
        // a value that contains what looks like key syntax stays distinct
        let d = serde_json::json!({"a":"b,\"c\":1"});
        let e = serde_json::json!({"a":"b","c":1});
        assert_ne!(fingerprint(&d), fingerprint(&e));
    }
}
