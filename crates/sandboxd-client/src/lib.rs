//! A client of a sandboxd daemon for the command line (`docs/cli.md`): the control plane
//! (create, list, look up, kill sandboxes; the API key) and envd's `process.Process/Start`
//! through the daemon's sandbox proxy (the sandbox's access token), its events streamed.
//!
//! It reads the same variables as the E2B SDKs: `E2B_API_URL`, `E2B_SANDBOX_URL` and
//! `E2B_API_KEY`, the lines `sandboxd serve` prints.

use base64::Engine;
use futures::StreamExt;
use sandboxd_protocol::connect::{EnvelopeDecoder, encode_envelope};
use serde::Deserialize;

/// Largest envelope accepted from the agent (its output chunks are far smaller).
const MAX_ENVELOPE: usize = 16 << 20;

/// What went wrong, worded for a person at a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A variable is missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The daemon could not be reached.
    #[error("cannot reach sandboxd at {url}: {message}")]
    Unreachable {
        /// The address tried.
        url: String,
        /// Why.
        message: String,
    },
    /// The daemon answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The answer's `message`.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from sandboxd: {0}")]
    Protocol(String),
    /// The agent could not run the process (no such program, a refused command…).
    #[error("{0}")]
    Process(String),
}

type Result<T> = std::result::Result<T, ClientError>;

/// Where the daemon is and the key to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The control plane (`E2B_API_URL`).
    pub api_url: String,
    /// The sandbox proxy (`E2B_SANDBOX_URL`, else the control plane's address).
    pub sandbox_url: String,
    /// The API key (`E2B_API_KEY`).
    pub api_key: String,
}

impl Endpoint {
    /// From the environment: `E2B_API_KEY` is required; the URLs default to
    /// `http://127.0.0.1:3000` (what `sandboxd serve` listens on by default).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From `var` (the environment, or a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let api_key = var("E2B_API_KEY").filter(|k| !k.is_empty()).ok_or_else(|| {
            ClientError::Config(
                "E2B_API_KEY is not set: paste the export lines `sandboxd serve` printed".into(),
            )
        })?;
        let url = |k: &str| -> Result<Option<String>> {
            match var(k).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if v.starts_with("http://") || v.starts_with("https://") => {
                    Ok(Some(v.trim_end_matches('/').to_string()))
                }
                Some(v) => Err(ClientError::Config(format!(
                    "{k}={v:?}: not an http:// or https:// URL"
                ))),
            }
        };
        let api_url = url("E2B_API_URL")?.unwrap_or_else(|| "http://127.0.0.1:3000".into());
        let sandbox_url = url("E2B_SANDBOX_URL")?.unwrap_or_else(|| api_url.clone());
        Ok(Self {
            api_url,
            sandbox_url,
            api_key,
        })
    }
}

/// A sandbox as `GET /v2/sandboxes` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// Its id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Its template.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The template's name, if it has one.
    pub alias: Option<String>,
    /// `running` or `paused`.
    pub state: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ends (RFC 3339).
    pub end_at: String,
}

/// A sandbox to run processes in: its id and access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRef {
    /// Its id.
    pub id: String,
    /// Its envd access token (none for an unsecured sandbox).
    pub token: Option<String>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A process to start in a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// The program and its arguments (run directly, no shell).
    pub argv: Vec<String>,
    /// Working directory (the user's home if `None`).
    pub cwd: Option<String>,
    /// The user (`user` if `None`).
    pub user: Option<String>,
    /// Environment variables.
    pub envs: Vec<(String, String)>,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code (128 + the signal when a signal ended it, as shells report it).
    pub code: i32,
    /// What the agent said about it (`exit status 3`, `signal: killed`, …).
    pub status: String,
    /// Why it failed, when the agent says (an OOM kill, a process limit, a command policy).
    pub error: Option<String>,
}

/// A connection to one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: Endpoint,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

impl Client {
    /// A client of `endpoint`.
    pub fn new(endpoint: Endpoint) -> Result<Self> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Self { http, endpoint })
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.endpoint.api_url.clone(),
            message: e.to_string(),
        }
    }

    /// Sends a control-plane request; the answer's body on success, its message otherwise.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<bytes::Bytes> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.endpoint.api_url))
            .header("X-API-Key", &self.endpoint.api_key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send_ok(req)
            .await?
            .bytes()
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// Creates a sandbox of `template` that lives `timeout_secs` unless killed.
    pub async fn create(&self, template: &str, timeout_secs: u64) -> Result<SandboxRef> {
        let body = serde_json::json!({"templateID": template, "timeout": timeout_secs, "secure": true});
        let out = self.call(reqwest::Method::POST, "/sandboxes", Some(body)).await?;
        sandbox_ref(&out)
    }

    /// The running and paused sandboxes.
    pub async fn list(&self) -> Result<Vec<Listed>> {
        let out = self.call(reqwest::Method::GET, "/v2/sandboxes", None).await?;
        serde_json::from_slice(&out).map_err(|e| ClientError::Protocol(format!("sandbox list: {e}")))
    }

    /// Sandbox `id` with its access token.
    pub async fn get(&self, id: &str) -> Result<SandboxRef> {
        check_id(id)?;
        let out = self
            .call(reqwest::Method::GET, &format!("/sandboxes/{id}"), None)
            .await?;
        sandbox_ref(&out)
    }

    /// Kills sandbox `id`.
    pub async fn kill(&self, id: &str) -> Result<()> {
        check_id(id)?;
        self.call(reqwest::Method::DELETE, &format!("/sandboxes/{id}"), None)
            .await
            .map(drop)
    }

    /// A request to envd's HTTP API of `sandbox` through the daemon's proxy, as `user`.
    fn envd(
        &self,
        method: reqwest::Method,
        sandbox: &SandboxRef,
        path_and_query: &str,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.endpoint.sandbox_url))
            .header("E2b-Sandbox-Id", &sandbox.id)
            .header("E2b-Sandbox-Port", "49983");
        if let Some(t) = &sandbox.token {
            req = req.header("X-Access-Token", t);
        }
        req
    }

    /// Sends `req`; its response if the status is a success, its error otherwise.
    async fn send_ok(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(api_error(status, &resp.bytes().await.unwrap_or_default()));
        }
        Ok(resp)
    }

    /// Streams file `path` of `sandbox` (read as `user`) into `to`; returns the bytes written.
    pub async fn download(
        &self,
        sandbox: &SandboxRef,
        path: &str,
        user: &str,
        to: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let req = self.envd(reqwest::Method::GET, sandbox, &files_query(path, user));
        let mut body = self.send_ok(req).await?.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            to.write_all(&chunk)
                .await
                .map_err(|e| ClientError::Config(format!("writing the download: {e}")))?;
            n += chunk.len() as u64;
        }
        to.flush()
            .await
            .map_err(|e| ClientError::Config(format!("writing the download: {e}")))?;
        Ok(n)
    }

    /// Streams `from` into file `path` of `sandbox` (written as `user`, parent directories
    /// made).
    pub async fn upload(
        &self,
        sandbox: &SandboxRef,
        path: &str,
        user: &str,
        from: impl tokio::io::AsyncRead + Send + 'static,
    ) -> Result<()> {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(from));
        let req = self
            .envd(reqwest::Method::POST, sandbox, &files_query(path, user))
            .header("Content-Type", "application/octet-stream")
            .body(body);
        self.send_ok(req).await.map(drop)
    }

    /// Runs `cmd` in `sandbox`, handing each chunk of its output to `output` as it comes;
    /// returns how it ended.
    pub async fn run(
        &self,
        sandbox: &SandboxRef,
        cmd: &Command,
        mut output: impl FnMut(Output, &[u8]),
    ) -> Result<Exit> {
        let (program, args) = cmd
            .argv
            .split_first()
            .ok_or_else(|| ClientError::Config("no command to run".into()))?;
        let envs: serde_json::Map<String, serde_json::Value> = cmd
            .envs
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut process = serde_json::json!({"cmd": program, "args": args, "envs": envs});
        if let Some(cwd) = &cmd.cwd {
            process["cwd"] = serde_json::Value::String(cwd.clone());
        }
        let start = serde_json::json!({"process": process, "stdin": false});
        let payload = serde_json::to_vec(&start).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let user = cmd.user.as_deref().unwrap_or("user");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        let req = self
            .envd(reqwest::Method::POST, sandbox, "/process.Process/Start")
            .header("Content-Type", "application/connect+json")
            .header("Connect-Protocol-Version", "1")
            .header("Authorization", format!("Basic {basic}"))
            .body(encode_envelope(0, &payload));
        let resp = self.send_ok(req).await?;
        let mut events = ProcessEvents::default();
        let mut decoder = EnvelopeDecoder::new(MAX_ENVELOPE);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            decoder.push(&chunk);
            while let Some(env) = decoder
                .next_envelope()
                .map_err(|e| ClientError::Protocol(format!("process stream: {e}")))?
            {
                if let Some(exit) = events.take(&env.payload, env.is_end_stream(), &mut output)? {
                    return Ok(exit);
                }
            }
        }
        Err(ClientError::Protocol(
            "the process stream ended before the process did".into(),
        ))
    }
}

/// Reads the events of one process stream.
#[derive(Debug, Default)]
struct ProcessEvents {
    ended: Option<Exit>,
}

impl ProcessEvents {
    /// Takes one envelope; the exit once the stream is complete.
    fn take(
        &mut self,
        payload: &[u8],
        end_stream: bool,
        output: &mut impl FnMut(Output, &[u8]),
    ) -> Result<Option<Exit>> {
        let msg: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| ClientError::Protocol(format!("process event: {e}")))?;
        if end_stream {
            if let Some(err) = msg.get("error") {
                let message = err.get("message").and_then(|m| m.as_str()).unwrap_or("failed");
                return Err(ClientError::Process(message.to_string()));
            }
            return match self.ended.take() {
                Some(exit) => Ok(Some(exit)),
                None => Err(ClientError::Protocol(
                    "the process stream closed without an end event".into(),
                )),
            };
        }
        let event = msg.get("event").cloned().unwrap_or_default();
        for (key, stream) in [("stdout", Output::Stdout), ("stderr", Output::Stderr)] {
            if let Some(data) = event.pointer(&format!("/data/{key}")).and_then(|d| d.as_str()) {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| ClientError::Protocol(format!("{key} is not base64: {e}")))?;
                output(stream, &bytes);
            }
        }
        if let Some(end) = event.get("end") {
            let status = end
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string();
            let code = end
                .get("exitCode")
                .and_then(|c| c.as_i64())
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or(0);
            let code = match signal_of(&status) {
                Some(sig) if code == 0 || code == -1 => 128 + sig,
                _ => code,
            };
            self.ended = Some(Exit {
                code,
                status,
                error: end.get("error").and_then(|e| e.as_str()).map(str::to_string),
            });
        }
        Ok(None)
    }
}

/// The signal number of an agent status such as `signal: killed`.
fn signal_of(status: &str) -> Option<i32> {
    let name = status.strip_prefix("signal: ")?;
    Some(match name {
        "hangup" => 1,
        "interrupt" => 2,
        "quit" => 3,
        "aborted" => 6,
        "killed" => 9,
        "segmentation fault" => 11,
        "broken pipe" => 13,
        "alarm clock" => 14,
        "terminated" => 15,
        _ => return None,
    })
}

/// The query of envd's `/files` for `path` as `user`.
fn files_query(path: &str, user: &str) -> String {
    format!("/files?path={}&username={}", query_value(path), query_value(user))
}

/// `v` percent-encoded for a query string (everything but unreserved characters).
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An error answer: its JSON `message`, else its text.
fn api_error(status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ClientError::Config(format!("{id:?} is not a sandbox id")));
    }
    Ok(())
}

fn sandbox_ref(body: &[u8]) -> Result<SandboxRef> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Sandbox {
        #[serde(rename = "sandboxID")]
        sandbox_id: String,
        envd_access_token: Option<String>,
    }
    let s: Sandbox =
        serde_json::from_slice(body).map_err(|e| ClientError::Protocol(format!("sandbox: {e}")))?;
    Ok(SandboxRef {
        id: s.sandbox_id,
        token: s.envd_access_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let e =
            Endpoint::from_vars(vars(&[("E2B_API_KEY", "e2b_1"), ("E2B_API_URL", "http://h:1/")])).unwrap();
        assert_eq!(
            (e.api_url.as_str(), e.sandbox_url.as_str()),
            ("http://h:1", "http://h:1")
        );
        let e = Endpoint::from_vars(vars(&[("E2B_API_KEY", "k")])).unwrap();
        assert_eq!(e.api_url, "http://127.0.0.1:3000");
        let missing = Endpoint::from_vars(vars(&[])).unwrap_err().to_string();
        assert!(missing.contains("E2B_API_KEY"), "{missing}");
        let bad = Endpoint::from_vars(vars(&[("E2B_API_KEY", "k"), ("E2B_SANDBOX_URL", "h:1")]))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("E2B_SANDBOX_URL"), "{bad}");
    }

    #[test]
    fn process_events_give_output_and_the_exit() {
        let mut ev = ProcessEvents::default();
        let mut got = Vec::new();
        let mut out = |s: Output, b: &[u8]| got.push((s, b.to_vec()));
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let msgs = [
            serde_json::json!({"event": {"start": {"pid": 7}}}),
            serde_json::json!({"event": {"data": {"stdout": b64("hi\n")}}}),
            serde_json::json!({"event": {"data": {"stderr": b64("oops\n")}}}),
            serde_json::json!({"event": {"end": {"exitCode": 3, "exited": true, "status": "exit status 3"}}}),
        ];
        for m in &msgs {
            assert_eq!(ev.take(m.to_string().as_bytes(), false, &mut out).unwrap(), None);
        }
        let exit = ev.take(b"{}", true, &mut out).unwrap().unwrap();
        assert_eq!((exit.code, exit.status.as_str()), (3, "exit status 3"));
        assert_eq!(
            got,
            vec![
                (Output::Stdout, b"hi\n".to_vec()),
                (Output::Stderr, b"oops\n".to_vec())
            ]
        );
        // killed by a signal: 128 + its number, as a shell reports it
        let mut ignore = |_: Output, _: &[u8]| {};
        let mut ev = ProcessEvents::default();
        let end = serde_json::json!({"event": {"end": {"exited": false, "status": "signal: killed"}}});
        ev.take(end.to_string().as_bytes(), false, &mut ignore).unwrap();
        assert_eq!(ev.take(b"{}", true, &mut ignore).unwrap().unwrap().code, 137);
        // a stream that closes early, or with an error
        assert!(ProcessEvents::default().take(b"{}", true, &mut ignore).is_err());
        let err = ProcessEvents::default()
            .take(
                br#"{"error":{"code":"not_found","message":"no such file"}}"#,
                true,
                &mut ignore,
            )
            .unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            query_value("/home/user/a b&c=d%.txt"),
            "/home/user/a%20b%26c%3Dd%25.txt"
        );
        assert_eq!(query_value("é"), "%C3%A9");
    }

    #[test]
    fn ids_are_checked_before_any_request() {
        assert!(check_id("abc123").is_ok());
        for bad in ["", "../x", "a b", "a/b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
