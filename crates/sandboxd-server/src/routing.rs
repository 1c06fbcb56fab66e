//! Per-request routing (`docs/contract.md` §1) and the signed-URL check (§6.2).

use crate::error::ApiError;
use crate::ids::is_valid_sandbox_id;
use crate::query::param;
use http::{HeaderMap, Method, Uri, header};
use sandboxd_protocol::ENVD_PORT;
use subtle::ConstantTimeEq;

/// Header naming the target sandbox.
pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
/// Header naming the target port inside the sandbox (default 49983).
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Sandbox traffic for `port` inside sandbox `id` (`id` may be unknown or malformed: the
    /// proxy answers 502 for those).
    Sandbox { id: String, port: u16 },
    /// `GET`/`POST /files?signature=…` without routing data: find the sandbox by signature.
    SignedFiles,
    /// The E2B REST API.
    Control,
    /// Routing data present but unusable (a bad port header).
    Invalid(String),
}

/// Decides the route of a request from its method, URI and headers.
pub fn decide(method: &Method, uri: &Uri, headers: &HeaderMap) -> Route {
    if let Some(v) = headers.get(SANDBOX_ID_HEADER) {
        let id = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
        let port = match headers.get(SANDBOX_PORT_HEADER) {
            None => ENVD_PORT,
            Some(p) => match p.to_str().ok().and_then(|p| p.trim().parse::<u16>().ok()) {
                Some(p) if p > 0 => p,
                _ => return Route::Invalid("invalid E2b-Sandbox-Port header".into()),
            },
        };
        return Route::Sandbox { id, port };
    }
    let host = uri.host().map(str::to_string).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(strip_port)
    });
    if let Some((port, id)) = host.as_deref().and_then(parse_sandbox_host) {
        return Route::Sandbox { id, port };
    }
    if uri.path() == "/files"
        && (method == Method::GET || method == Method::POST)
        && param(uri.query(), "signature").is_some()
    {
        return Route::SignedFiles;
    }
    Route::Control
}

fn strip_port(host: &str) -> String {
    if host.starts_with('[') {
        return host.split(']').next().unwrap_or(host).to_string() + "]";
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h).to_string()
}

/// Parses a Host of the form `<port>-<sandboxId>.<domain>` (first label split on `-`: part 0 is
/// the port, part 1 the id; a further `-<clientID>` part is ignored as upstream does).
pub fn parse_sandbox_host(host: &str) -> Option<(u16, String)> {
    let label = host.split('.').next()?;
    let mut parts = label.split('-');
    let port = parts.next()?;
    let id = parts.next()?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let id = id.to_ascii_lowercase();
    is_valid_sandbox_id(&id).then_some((port, id))
}

pub use sandboxd_protocol::signing::file_signature;

/// The signature-relevant parts of a signed `/files` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFileRequest {
    pub path: String,
    pub op: &'static str,
    pub username: String,
    pub signature: String,
    pub expiration: Option<String>,
}

impl SignedFileRequest {
    /// Extracts them from a request (`None` if it is not a signed `/files` request).
    pub fn from_request(method: &Method, uri: &Uri) -> Option<Self> {
        let op = match *method {
            Method::GET => "read",
            Method::POST => "write",
            _ => return None,
        };
        let q = uri.query();
        Some(Self {
            path: param(q, "path").unwrap_or_default(),
            op,
            username: param(q, "username").unwrap_or_default(),
            signature: param(q, "signature")?,
            expiration: param(q, "signature_expiration"),
        })
    }

    /// Whether the signature was made with `token` (constant-time comparison).
    pub fn is_signed_with(&self, token: &str) -> bool {
        let want = file_signature(
            &self.path,
            self.op,
            &self.username,
            token,
            self.expiration.as_deref(),
        );
        want.as_bytes().ct_eq(self.signature.as_bytes()).into()
    }
}

/// The error for a signed URL that matches no running secure sandbox.
pub fn no_signature_match() -> ApiError {
    ApiError::Unauthorized("invalid signature".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn route(method: Method, uri: &str, headers: &[(&str, &str)]) -> Route {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        decide(&method, &uri, &h)
    }

    #[test]
    fn header_routing_wins_and_defaults_to_envd_port() {
        assert_eq!(
            route(
                Method::GET,
                "/health",
                &[("E2b-Sandbox-Id", "iabc"), ("host", "localhost:3000")]
            ),
            Route::Sandbox {
                id: "iabc".into(),
                port: 49983
            }
        );
        assert_eq!(
            route(
                Method::POST,
                "/execute",
                &[("e2b-sandbox-id", "iabc"), ("e2b-sandbox-port", "49999")]
            ),
            Route::Sandbox {
                id: "iabc".into(),
                port: 49999
            }
        );
        // Header routing beats a signed /files URL and a sandbox Host.
        assert_eq!(
            route(
                Method::GET,
                "/files?signature=v1_x",
                &[("E2b-Sandbox-Id", "iabc"), ("host", "8000-other.localhost:3000")]
            ),
            Route::Sandbox {
                id: "iabc".into(),
                port: 49983
            }
        );
        assert!(matches!(
            route(
                Method::GET,
                "/",
                &[("E2b-Sandbox-Id", "iabc"), ("E2b-Sandbox-Port", "x")]
            ),
            Route::Invalid(_)
        ));
        assert!(matches!(
            route(
                Method::GET,
                "/",
                &[("E2b-Sandbox-Id", "iabc"), ("E2b-Sandbox-Port", "0")]
            ),
            Route::Invalid(_)
        ));
        // A malformed id is still sandbox traffic (answered with 502 by the proxy).
        assert_eq!(
            route(Method::GET, "/health", &[("E2b-Sandbox-Id", "Bad-Id")]),
            Route::Sandbox {
                id: "Bad-Id".into(),
                port: 49983
            }
        );
    }

    #[test]
    fn host_routing() {
        assert_eq!(
            route(Method::GET, "/x", &[("host", "8000-iabc123.localhost:3000")]),
            Route::Sandbox {
                id: "iabc123".into(),
                port: 8000
            }
        );
        assert_eq!(
            route(Method::GET, "http://49999-iabc.example.com/x", &[]),
            Route::Sandbox {
                id: "iabc".into(),
                port: 49999
            }
        );
        assert_eq!(
            route(Method::GET, "/x", &[("host", "8000-iabc-6532622b.localhost")]),
            Route::Sandbox {
                id: "iabc".into(),
                port: 8000
            }
        );
        for host in [
            "localhost:3000",
            "127.0.0.1:3000",
            "api-server.example.com",
            "my-host",
            "70000-iabc.localhost",
            "0-iabc.localhost",
            "8000-.localhost",
            "8000-a_b.localhost",
            "[::1]:3000",
        ] {
            assert_eq!(
                route(Method::GET, "/sandboxes", &[("host", host)]),
                Route::Control,
                "{host}"
            );
        }
    }

    #[test]
    fn signed_files_only_exact_path_and_methods() {
        let h = [("host", "127.0.0.1:3000")];
        assert_eq!(
            route(Method::GET, "/files?path=a&signature=v1_x", &h),
            Route::SignedFiles
        );
        assert_eq!(
            route(Method::POST, "/files?signature=v1_x", &h),
            Route::SignedFiles
        );
        assert_eq!(route(Method::GET, "/files?path=a", &h), Route::Control);
        assert_eq!(route(Method::DELETE, "/files?signature=v1_x", &h), Route::Control);
        assert_eq!(route(Method::GET, "/files/x?signature=v1_x", &h), Route::Control);
        assert_eq!(
            route(Method::POST, "/filesystem.Filesystem/Stat?signature=v1_x", &h),
            Route::Control
        );
    }

    #[test]
    fn signed_request_validates_against_the_right_token() {
        let sig = file_signature("dir/a b.txt", "read", "root", "secret", Some("1900000000"));
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("path", "dir/a b.txt")
            .append_pair("username", "root")
            .append_pair("signature", &sig)
            .append_pair("signature_expiration", "1900000000")
            .finish();
        let uri: Uri = format!("/files?{q}").parse().unwrap();
        let req = SignedFileRequest::from_request(&Method::GET, &uri).unwrap();
        assert!(req.is_signed_with("secret"));
        assert!(!req.is_signed_with("other"));
        // The same URL used for an upload has a different op, so it does not validate.
        let up = SignedFileRequest::from_request(&Method::POST, &uri).unwrap();
        assert!(!up.is_signed_with("secret"));
        assert!(SignedFileRequest::from_request(&Method::PUT, &uri).is_none());
    }
}
