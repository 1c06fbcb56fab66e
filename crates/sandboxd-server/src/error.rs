//! Every error the daemon answers with, mapped to a status and a JSON body in one place.
//!
//! Control-plane errors are `{"code":<int>,"message":<str>}` (`api/openapi.yaml`);
//! sandbox traffic to a sandbox that is not running gets the E2B proxy's 502 body with a
//! `sandboxId` (`docs/contract.md` §1).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use sandboxd_daemon::DaemonError;
use sandboxd_runtime::RuntimeError;
use sandboxd_store::StoreError;

/// Content type of JSON error bodies (what upstream's proxy sends).
pub const JSON_UTF8: &str = "application/json; charset=utf-8";

/// A request-level error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, wrong types, out-of-range values.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong API key (control plane) or an invalid file signature.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: missing or wrong traffic access token.
    #[error("{0}")]
    Forbidden(String),
    /// 404 with a free message.
    #[error("{0}")]
    NotFound(String),
    /// 404 for a sandbox id that is well formed but unknown (E2B's exact wording).
    #[error("Sandbox \"{0}\" doesn't exist or you don't have access to it")]
    SandboxNotFound(String),
    /// 404 for an unknown template.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// 405 on a known path.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the sandbox is in the wrong state for this call.
    #[error("{0}")]
    Conflict(String),
    /// 413: a control-plane request body over the limit.
    #[error("request body too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    /// 422: an `Idempotency-Key` already used with another request body.
    #[error("Idempotency-Key '{0}' was already used with a different request body")]
    IdempotencyMismatch(String),
    /// 409: a request with this `Idempotency-Key` is still being served (retry shortly).
    #[error("a request with Idempotency-Key '{0}' is still in progress")]
    IdempotencyInProgress(String),
    /// 409: a request with this `Idempotency-Key` was cut short by a daemon restart.
    #[error(
        "a request with Idempotency-Key '{0}' was in progress when sandboxd restarted; whether it created a sandbox is unknown: list the sandboxes, or use a new key"
    )]
    IdempotencyOutcomeUnknown(String),
    /// 429: the daemon's concurrent sandbox limit is reached (passes as sandboxes end).
    #[error("{0}")]
    TooManySandboxes(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
    /// 501: this host cannot do that at all (not root, no freezer, no loop devices…); a retry
    /// cannot help (`Should-Retry: false`).
    #[error("{0}")]
    NotSupportedHere(String),
    /// 507: a copy over its size limit or a full host disk (snapshots).
    #[error("{0}")]
    InsufficientStorage(String),
    /// 503: a condition that passes (the daemon is shutting down or busy); `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// 502 for sandbox traffic to an unknown, killed, expired or paused sandbox.
    #[error("The sandbox was not found")]
    SandboxNotRunning(String),
    /// 502: the sandbox runs but nothing listens on the port (or the agent is unreachable).
    #[error("The sandbox is running but port is not open")]
    PortNotOpen { sandbox_id: String, port: u16 },
    /// 502: the sandbox runs but its agent failed to answer this request. Never says "not
    /// found": SDKs read that as "the sandbox is gone" (`docs/contract.md` §2).
    #[error("The sandbox is running but its agent failed to answer: {reason}")]
    AgentFailed { sandbox_id: String, reason: String },
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::SandboxNotFound(_) | ApiError::TemplateNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_)
            | ApiError::IdempotencyInProgress(_)
            | ApiError::IdempotencyOutcomeUnknown(_) => StatusCode::CONFLICT,
            ApiError::IdempotencyMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManySandboxes(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotSupportedHere(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::SandboxNotRunning(_) | ApiError::PortNotOpen { .. } | ApiError::AgentFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Upstream's machine-readable `error_code`, where one applies.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            ApiError::IdempotencyMismatch(_) => Some("idempotency_request_mismatch"),
            ApiError::IdempotencyInProgress(_) => Some("idempotency_in_progress"),
            ApiError::IdempotencyOutcomeUnknown(_) => Some("idempotency_outcome_unknown"),
            _ => None,
        }
    }

    /// Retry hints for the SDKs: `(Retry-After seconds, Should-Retry)`. The Python SDK retries
    /// 429/502/503/504 unless `Should-Retry: false`, and any status with `Should-Retry: true`;
    /// the JS SDK retries a 429 that has `Retry-After`.
    pub fn retry_hints(&self) -> (Option<u32>, Option<bool>) {
        match self {
            ApiError::TooManySandboxes(_) | ApiError::Unavailable(_) => (Some(1), None),
            ApiError::IdempotencyInProgress(_) => (Some(1), Some(true)),
            ApiError::NotSupportedHere(_) => (None, Some(false)),
            _ => (None, None),
        }
    }

    /// The JSON body of this error (keys in upstream's order).
    pub fn body(&self) -> String {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct NotRunning<'a> {
            sandbox_id: &'a str,
            message: String,
            code: u16,
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct PortClosed<'a> {
            sandbox_id: &'a str,
            message: String,
            port: u16,
            code: u16,
        }
        #[derive(serde::Serialize)]
        struct Plain {
            code: u16,
            message: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            error_code: Option<&'static str>,
        }
        let code = self.status().as_u16();
        let message = self.to_string();
        let encoded = match self {
            ApiError::SandboxNotRunning(id) | ApiError::AgentFailed { sandbox_id: id, .. } => {
                serde_json::to_string(&NotRunning {
                    sandbox_id: id,
                    message,
                    code,
                })
            }
            ApiError::PortNotOpen { sandbox_id, port } => serde_json::to_string(&PortClosed {
                sandbox_id,
                message,
                port: *port,
                code,
            }),
            _ => serde_json::to_string(&Plain {
                code,
                message,
                error_code: self.error_code(),
            }),
        };
        encoded.unwrap_or_else(|_| format!("{{\"code\":{code},\"message\":\"error\"}}"))
    }

    /// The full response (also usable outside axum handlers).
    pub fn to_response(&self) -> Response {
        let mut resp = Response::new(Body::from(self.body()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
        let (retry_after, should_retry) = self.retry_hints();
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(retry) = should_retry {
            h.insert(
                "should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() && self.status() != StatusCode::BAD_GATEWAY {
            tracing::error!(error = %self, "request failed");
        }
        self.to_response()
    }
}

/// The one mapping of domain errors to API errors (statuses and bodies follow from the
/// [`ApiError`] variant).
impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        match e {
            DaemonError::InvalidInput(m) => ApiError::BadRequest(m),
            DaemonError::SandboxNotFound(id) => ApiError::SandboxNotFound(id),
            DaemonError::TemplateNotFound(t) => ApiError::TemplateNotFound(t),
            DaemonError::NotFound(m) => ApiError::NotFound(m),
            DaemonError::Conflict(m) => ApiError::Conflict(m),
            DaemonError::TooManySandboxes(m) => ApiError::TooManySandboxes(m),
            DaemonError::Unavailable(m) => ApiError::Unavailable(m),
            DaemonError::NotSupportedHere(m) => ApiError::NotSupportedHere(m),
            DaemonError::InsufficientStorage(m) => ApiError::InsufficientStorage(m),
            DaemonError::IdempotencyMismatch(k) => ApiError::IdempotencyMismatch(k),
            DaemonError::IdempotencyInProgress(k) => ApiError::IdempotencyInProgress(k),
            DaemonError::IdempotencyOutcomeUnknown(k) => ApiError::IdempotencyOutcomeUnknown(k),
            DaemonError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        DaemonError::from(e).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        DaemonError::from(e).into()
    }
}

/// Errors that stop the daemon from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl ServerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServerError::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn parts(e: ApiError) -> (StatusCode, String, serde_json::Value) {
        let resp = e.to_response();
        let status = resp.status();
        let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn not_running_has_e2b_proxy_shape() {
        let (status, ct, body) = parts(ApiError::SandboxNotRunning("iabc".into())).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(ct, "application/json; charset=utf-8");
        assert_eq!(
            ApiError::SandboxNotRunning("iabc".into()).body(),
            r#"{"sandboxId":"iabc","message":"The sandbox was not found","code":502}"#
        );
        assert_eq!(
            body,
            serde_json::json!({"sandboxId":"iabc","message":"The sandbox was not found","code":502})
        );
    }

    #[tokio::test]
    async fn control_errors_have_code_and_message() {
        let (status, _, body) = parts(ApiError::SandboxNotFound("abc".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            serde_json::json!({"code":404,"message":"Sandbox \"abc\" doesn't exist or you don't have access to it"})
        );
        let (status, _, body) = parts(ApiError::TooManySandboxes("limit".into())).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["code"], 429);
        let (_, _, body) = parts(ApiError::PortNotOpen {
            sandbox_id: "x".into(),
            port: 8000,
        })
        .await;
        assert_eq!(body["port"], 8000);
        assert_eq!(body["message"], "The sandbox is running but port is not open");
    }

    /// What the newest SDKs classify: a permanent host condition is not retried, passing
    /// conditions carry `Retry-After`, idempotency errors carry upstream's `error_code`.
    #[tokio::test]
    async fn retry_hints_and_error_codes() {
        let hints = |e: ApiError| {
            let r = e.to_response();
            let get = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), get("retry-after"), get("should-retry"))
        };
        let host = ApiError::from(RuntimeError::Unsupported("sandboxd must run as root".into()));
        assert_eq!(hints(host), (501, None, Some("false".into())));
        assert_eq!(
            hints(ApiError::TooManySandboxes("limit".into())),
            (429, Some("1".into()), None)
        );
        assert_eq!(
            hints(ApiError::Unavailable("shutting down".into())),
            (503, Some("1".into()), None)
        );
        assert_eq!(
            hints(ApiError::IdempotencyInProgress("k".into())),
            (409, Some("1".into()), Some("true".into()))
        );
        assert_eq!(hints(ApiError::Internal("x".into())), (500, None, None));
        let (status, _, body) = parts(ApiError::IdempotencyMismatch("k".into())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error_code"], "idempotency_request_mismatch");
        assert_eq!(body["code"], 422);
        let (_, _, body) = parts(ApiError::IdempotencyOutcomeUnknown("k".into())).await;
        assert_eq!(body["error_code"], "idempotency_outcome_unknown");
        let (_, _, body) = parts(ApiError::BadRequest("x".into())).await;
        assert!(body.get("error_code").is_none(), "{body}");
    }

    #[test]
    fn runtime_errors_map_to_statuses() {
        assert_eq!(
            ApiError::from(RuntimeError::TemplateNotFound("x".into())).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(RuntimeError::InvalidSpec("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::from(RuntimeError::Unsupported("not root".into())).status(),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            ApiError::from(RuntimeError::NotReady(5)).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
