//! Every error the daemon answers with, mapped to a status and a JSON body in one place.
//!
//! Control-plane and session errors are `{"code":<int>,"message":<str>,"error_code":<str>}`
//! (`api/openapi.yaml`, `api/sessions.yaml`), with `resource` beside
//! `error_code: "resource_exhausted"`; sandbox traffic to a sandbox that is not running gets the
//! E2B proxy's 502 body with a
//! `sandboxId` (`docs/contract.md` §1).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use sandboxd_daemon::DaemonError;
use sandboxd_runtime::RuntimeError;
use sandboxd_store::StoreError;

/// Content type of JSON error bodies (what upstream's proxy sends).
pub const JSON_UTF8: &str = "application/json; charset=utf-8";

/// The stable, machine-readable kind of every error (`error_code` in its body): what clients
/// branch on (`docs/sessions.md`, "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// An execution or operation ran past its time limit.
    Timeout,
    /// A limit of the sandbox or the daemon is reached ([`Resource`] says which).
    ResourceExhausted,
    /// Refused by a security rule: API key, access token, path or command policy.
    SecurityDenied,
    /// The sandbox or the daemon failed while doing what was asked.
    RuntimeError,
    /// The sandbox, session, file, template or route does not exist.
    NotFound,
    /// The request itself is wrong (body, parameters, state conflict).
    InvalidRequest,
}

impl ErrorKind {
    /// The wire name, for example `resource_exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::SecurityDenied => "security_denied",
            ErrorKind::RuntimeError => "runtime_error",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidRequest => "invalid_request",
        }
    }
}

/// Fields of every error body that details never replace.
const RESERVED_BODY_KEYS: [&str; 4] = ["code", "message", "error_code", "resource"];

/// Which resource ran out (the domain's type).
pub use sandboxd_daemon::error::Resource;

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
    /// 504: an execution ran past its time limit and was killed.
    #[error("{0}")]
    Timeout(String),
    /// A limit was reached: 507 for disk and memory, 429 for processes, 408 for time.
    #[error("{message}")]
    ResourceExhausted { resource: Resource, message: String },
    /// 403: refused by a path or command policy.
    #[error("{0}")]
    SecurityDenied(String),
    /// An error with more fields in its body (for example the output of a failed execution).
    #[error("{error}")]
    WithDetails {
        error: Box<ApiError>,
        details: serde_json::Map<String, serde_json::Value>,
    },
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
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::ResourceExhausted { resource, .. } => match resource {
                Resource::Disk | Resource::Memory => StatusCode::INSUFFICIENT_STORAGE,
                Resource::Processes | Resource::Sandboxes => StatusCode::TOO_MANY_REQUESTS,
                Resource::Time => StatusCode::REQUEST_TIMEOUT,
            },
            ApiError::SecurityDenied(_) => StatusCode::FORBIDDEN,
            ApiError::WithDetails { error, .. } => error.status(),
        }
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::BadRequest(_)
            | ApiError::MethodNotAllowed
            | ApiError::Conflict(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::IdempotencyMismatch(_)
            | ApiError::IdempotencyInProgress(_)
            | ApiError::IdempotencyOutcomeUnknown(_) => ErrorKind::InvalidRequest,
            ApiError::Unauthorized(_) | ApiError::Forbidden(_) | ApiError::SecurityDenied(_) => {
                ErrorKind::SecurityDenied
            }
            ApiError::NotFound(_)
            | ApiError::SandboxNotFound(_)
            | ApiError::TemplateNotFound(_)
            | ApiError::SandboxNotRunning(_) => ErrorKind::NotFound,
            ApiError::TooManySandboxes(_)
            | ApiError::InsufficientStorage(_)
            | ApiError::ResourceExhausted { .. } => ErrorKind::ResourceExhausted,
            ApiError::Internal(_)
            | ApiError::NotSupportedHere(_)
            | ApiError::Unavailable(_)
            | ApiError::PortNotOpen { .. }
            | ApiError::AgentFailed { .. } => ErrorKind::RuntimeError,
            ApiError::Timeout(_) => ErrorKind::Timeout,
            ApiError::WithDetails { error, .. } => error.kind(),
        }
    }

    /// The resource that ran out, for `resource_exhausted` errors.
    pub fn resource(&self) -> Option<Resource> {
        match self {
            ApiError::ResourceExhausted { resource, .. } => Some(*resource),
            ApiError::TooManySandboxes(_) => Some(Resource::Sandboxes),
            ApiError::InsufficientStorage(_) => Some(Resource::Disk),
            ApiError::WithDetails { error, .. } => error.resource(),
            _ => None,
        }
    }

    /// The `error_code` of the body: upstream's own code for the idempotency errors (which the
    /// SDKs know), else the stable [`ErrorKind`].
    pub fn error_code(&self) -> &'static str {
        match self {
            ApiError::IdempotencyMismatch(_) => "idempotency_request_mismatch",
            ApiError::IdempotencyInProgress(_) => "idempotency_in_progress",
            ApiError::IdempotencyOutcomeUnknown(_) => "idempotency_outcome_unknown",
            ApiError::WithDetails { error, .. } => error.error_code(),
            other => other.kind().as_str(),
        }
    }

    /// This error with more fields in its body (they never replace `code`, `message`,
    /// `error_code` or `resource`).
    pub fn with_details(self, details: serde_json::Map<String, serde_json::Value>) -> Self {
        ApiError::WithDetails {
            error: Box::new(self),
            details,
        }
    }

    /// Retry hints for the SDKs: `(Retry-After seconds, Should-Retry)`. The Python SDK retries
    /// 429/502/503/504 unless `Should-Retry: false`, and any status with `Should-Retry: true`;
    /// the JS SDK retries a 429 that has `Retry-After`.
    pub fn retry_hints(&self) -> (Option<u32>, Option<bool>) {
        match self {
            ApiError::WithDetails { error, .. } => error.retry_hints(),
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
            #[serde(rename = "error_code")]
            error_code: &'static str,
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct PortClosed<'a> {
            sandbox_id: &'a str,
            message: String,
            port: u16,
            code: u16,
            #[serde(rename = "error_code")]
            error_code: &'static str,
        }
        #[derive(serde::Serialize)]
        struct Plain<'a> {
            code: u16,
            message: String,
            error_code: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            resource: Option<Resource>,
            #[serde(flatten)]
            details: Option<&'a serde_json::Map<String, serde_json::Value>>,
        }
        let code = self.status().as_u16();
        let message = self.to_string();
        let encoded = match self {
            ApiError::SandboxNotRunning(id) | ApiError::AgentFailed { sandbox_id: id, .. } => {
                serde_json::to_string(&NotRunning {
                    sandbox_id: id,
                    message,
                    code,
                    error_code: self.error_code(),
                })
            }
            ApiError::PortNotOpen { sandbox_id, port } => serde_json::to_string(&PortClosed {
                sandbox_id,
                message,
                port: *port,
                code,
                error_code: self.error_code(),
            }),
            _ => {
                let details = match self {
                    ApiError::WithDetails { details, .. } => Some(
                        details
                            .iter()
                            .filter(|(k, _)| !RESERVED_BODY_KEYS.contains(&k.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    _ => None,
                };
                serde_json::to_string(&Plain {
                    code,
                    message,
                    error_code: self.error_code(),
                    resource: self.resource(),
                    details: details.as_ref(),
                })
            }
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
            DaemonError::AgentFailed { sandbox_id, reason } => ApiError::AgentFailed { sandbox_id, reason },
            DaemonError::Timeout(m) => ApiError::Timeout(m),
            DaemonError::ResourceExhausted { resource, message } => {
                ApiError::ResourceExhausted { resource, message }
            }
            DaemonError::SecurityDenied(m) => ApiError::SecurityDenied(m),
            DaemonError::Unauthorized(m) => ApiError::Unauthorized(m),
            DaemonError::WithDetails { error, details } => ApiError::from(*error).with_details(details),
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
            r#"{"sandboxId":"iabc","message":"The sandbox was not found","code":502,"error_code":"not_found"}"#
        );
        assert_eq!(
            body,
            serde_json::json!({"sandboxId":"iabc","message":"The sandbox was not found","code":502,"error_code":"not_found"})
        );
    }

    #[tokio::test]
    async fn control_errors_have_code_and_message() {
        let (status, _, body) = parts(ApiError::SandboxNotFound("abc".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            serde_json::json!({"code":404,"message":"Sandbox \"abc\" doesn't exist or you don't have access to it","error_code":"not_found"})
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
        assert_eq!(body["error_code"], "invalid_request", "{body}");
    }

    /// Every error carries a stable `error_code`, `resource` when a limit was reached, and
    /// details beside (never instead of) the standard fields.
    #[tokio::test]
    async fn typed_error_codes() {
        let cases = [
            (ApiError::Timeout("t".into()), 504, "timeout"),
            (ApiError::SecurityDenied("s".into()), 403, "security_denied"),
            (ApiError::Unauthorized("k".into()), 401, "security_denied"),
            (ApiError::Internal("i".into()), 500, "runtime_error"),
            (ApiError::NotFound("n".into()), 404, "not_found"),
            (ApiError::Conflict("c".into()), 409, "invalid_request"),
            (
                ApiError::InsufficientStorage("d".into()),
                507,
                "resource_exhausted",
            ),
        ];
        for (e, status, code) in cases {
            let (s, _, body) = parts(e).await;
            assert_eq!(
                (s.as_u16(), body["error_code"].as_str()),
                (status, Some(code)),
                "{body}"
            );
        }
        let e = ApiError::ResourceExhausted {
            resource: Resource::Processes,
            message: "process limit 5 reached".into(),
        };
        let mut details = serde_json::Map::new();
        details.insert("stdout".into(), "partial".into());
        details.insert("code".into(), 1.into());
        let (s, _, body) = parts(e.with_details(details)).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error_code"], "resource_exhausted");
        assert_eq!(body["resource"], "processes");
        assert_eq!(body["stdout"], "partial");
        assert_eq!(body["message"], "process limit 5 reached");
        let (_, _, body) = parts(ApiError::InsufficientStorage("full".into())).await;
        assert_eq!(body["resource"], "disk");
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
