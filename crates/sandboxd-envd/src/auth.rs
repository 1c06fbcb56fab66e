//! Access token of secure sandboxes (`docs/contract.md` §6.1) and RPC user selection (§1.3).

use crate::state::AgentState;
use crate::users::{self, UserInfo};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sandboxd_protocol::connect::ConnectError;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Body of the 401 answer for a missing or wrong access token (byte-exact).
pub const UNAUTHORIZED_BODY: &str = r#"{"code":401,"message":"unauthorized access, please provide a valid access token or method signing if supported","error_code":"security_denied"}"#;

/// A JSON error response with `Content-Type: application/json; charset=utf-8`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({
        "code": status.as_u16(),
        "message": message,
        "error_code": error_code(status),
    })
    .to_string();
    json_response(status, body)
}

/// The stable `error_code` of an error status, as the daemon's API sends it
/// (`docs/sessions.md`, "Errors"); the SDKs ignore the field.
pub fn error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "security_denied",
        404 => "not_found",
        408 | 504 => "timeout",
        429 | 507 => "resource_exhausted",
        400..=499 => "invalid_request",
        _ => "runtime_error",
    }
}

/// A raw JSON response with the envd error content type.
pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Constant-time string comparison.
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Middleware: every request except `/health`, `/files` and `/init` must carry the sandbox's
/// `X-Access-Token` when one is set.
pub async fn require_token(State(state): State<Arc<AgentState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if matches!(path, "/health" | "/files" | "/init") {
        return next.run(req).await;
    }
    let config = state.config();
    if let Some(token) = config.access_token.as_deref() {
        let given = req.headers().get("x-access-token").and_then(|v| v.to_str().ok());
        if !given.is_some_and(|g| ct_eq(g, token)) {
            crate::connect::drain(req.into_body()).await;
            return json_response(StatusCode::UNAUTHORIZED, UNAUTHORIZED_BODY.to_string());
        }
    }
    next.run(req).await
}

/// The user an RPC runs as: `Authorization: Basic base64("<name>:")`, else the default user.
pub fn rpc_user(headers: &HeaderMap, state: &AgentState) -> Result<UserInfo, ConnectError> {
    let name = match headers.get(header::AUTHORIZATION) {
        Some(v) => basic_username(v.as_bytes())
            .ok_or_else(|| ConnectError::unauthenticated("invalid authorization header"))?,
        None => {
            let cfg = state.config();
            if cfg.default_user.is_empty() {
                return Err(ConnectError::unauthenticated("no user specified"));
            }
            cfg.default_user.clone()
        }
    };
    users::lookup(&name).map_err(|e| match e {
        users::UserError::NotFound(_) => ConnectError::unauthenticated(format!("invalid username: '{name}'")),
        other => ConnectError::internal(other.to_string()),
    })
}

/// The user name of a `Basic` authorization value (password ignored).
pub fn basic_username(value: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let name = decoded.split_once(':').map(|(u, _)| u).unwrap_or(&decoded);
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_user() {
        assert_eq!(basic_username(b"Basic dXNlcjo=").as_deref(), Some("user"));
        assert_eq!(basic_username(b"basic cm9vdDo=").as_deref(), Some("root"));
        assert_eq!(basic_username(b"Bearer x"), None);
        assert_eq!(basic_username(b"Basic !!!"), None);
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
    }
}
