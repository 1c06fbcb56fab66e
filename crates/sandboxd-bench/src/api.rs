//! The calls the bench makes: control plane (create, kill, list) and envd through the daemon's
//! sandbox proxy (`E2b-Sandbox-Id`, `X-Access-Token`).

use crate::BenchError;
use crate::http::{Conn, ConnectStream, empty, envelope, full, request};
use base64::Engine;
use http::{Method, StatusCode, header};
use std::time::{Duration, Instant};

/// The create body the Python SDK sends by default (`secure: true`).
pub fn sdk_create_body(extra: Option<&serde_json::Value>) -> serde_json::Value {
    let mut b = serde_json::json!({
        "templateID": "base",
        "timeout": 600,
        "secure": true,
        "allow_internet_access": true,
        "metadata": {},
        "envVars": {},
    });
    if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (extra, b.as_object_mut()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    b
}

/// A sandbox the bench created.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    /// `envdAccessToken` (secure sandboxes).
    pub token: Option<String>,
}

/// The control-plane API of one daemon.
#[derive(Debug, Clone)]
pub struct Api {
    pub key: String,
}

impl Api {
    /// `POST /sandboxes`; returns the sandbox and the time until the 201 response was read.
    pub async fn create(
        &self,
        conn: &mut Conn,
        body: &serde_json::Value,
    ) -> Result<(Sandbox, Duration), BenchError> {
        let req = request(Method::POST, "/sandboxes")
            .header("X-API-Key", &self.key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(body.to_string()))
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let t0 = Instant::now();
        let (status, bytes) = conn.call(req).await?;
        let took = t0.elapsed();
        if status != StatusCode::CREATED {
            return Err(BenchError::Create(format!(
                "POST /sandboxes answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| BenchError::Create(format!("create response is not JSON: {e}")))?;
        let id = v
            .get("sandboxID")
            .and_then(|x| x.as_str())
            .ok_or_else(|| BenchError::Create(format!("create response has no sandboxID: {v}")))?
            .to_string();
        let token = v
            .get("envdAccessToken")
            .and_then(|x| x.as_str())
            .map(str::to_string);
        Ok((Sandbox { id, token }, took))
    }

    /// `DELETE /sandboxes/{id}`: 204, or 404 when it is already gone.
    pub async fn kill(&self, conn: &mut Conn, id: &str) -> Result<(), BenchError> {
        let req = request(Method::DELETE, &format!("/sandboxes/{id}"))
            .header("X-API-Key", &self.key)
            .body(empty())
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let (status, bytes) = conn.call(req).await?;
        if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_FOUND {
            return Err(BenchError::Http(format!(
                "DELETE /sandboxes/{id} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        Ok(())
    }

    /// Ids of the running sandboxes (`GET /v2/sandboxes`, first page of up to 100).
    pub async fn list_ids(&self, conn: &mut Conn) -> Result<Vec<String>, BenchError> {
        let req = request(Method::GET, "/v2/sandboxes?limit=100")
            .header("X-API-Key", &self.key)
            .body(empty())
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let (status, bytes) = conn.call(req).await?;
        if status != StatusCode::OK {
            return Err(BenchError::Http(format!("GET /v2/sandboxes answered {status}")));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| BenchError::Http(format!("list: {e}")))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.get("sandboxID").and_then(|x| x.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A request to a sandbox's envd through the daemon's proxy.
pub fn envd(method: Method, path: &str, sbx: &Sandbox) -> http::request::Builder {
    let mut b = request(method, path)
        .header("E2b-Sandbox-Id", &sbx.id)
        .header("E2b-Sandbox-Port", "49983");
    if let Some(t) = &sbx.token {
        b = b.header("X-Access-Token", t);
    }
    b
}

/// A unary Connect call; returns the JSON answer.
pub async fn unary(
    conn: &mut Conn,
    sbx: &Sandbox,
    method: &str,
    msg: &serde_json::Value,
) -> Result<serde_json::Value, BenchError> {
    let req = envd(Method::POST, &format!("/{method}"), sbx)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Connect-Protocol-Version", "1")
        .body(full(msg.to_string()))
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let (status, bytes) = conn.call(req).await?;
    if status != StatusCode::OK {
        return Err(BenchError::Http(format!(
            "{method} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| BenchError::Http(format!("{method}: bad JSON: {e}")))
}

/// Opens a server stream (`Process/Start`, `Filesystem/WatchDir`).
pub async fn open_stream(
    conn: &mut Conn,
    sbx: &Sandbox,
    method: &str,
    msg: &serde_json::Value,
) -> Result<ConnectStream, BenchError> {
    let req = envd(Method::POST, &format!("/{method}"), sbx)
        .header(
            header::CONTENT_TYPE,
            sandboxd_protocol::connect::CONTENT_TYPE_STREAM_JSON,
        )
        .header("Connect-Protocol-Version", "1")
        .header("Connect-Timeout-Ms", "60000")
        .header("Keepalive-Ping-Interval", "50")
        .body(full(envelope(msg)))
        .map_err(|e| BenchError::Http(e.to_string()))?;
    ConnectStream::new(conn.send(req).await?)
}

/// Outcome of one `Process.Start`.
#[derive(Debug)]
pub struct ProcessRun {
    /// From sending the request to receiving the `end` event.
    pub until_end: Duration,
    pub exit_code: i64,
    pub stdout: Vec<u8>,
}

/// Runs a process (`StartRequest` JSON) and waits for its `end` event; the stream is read to
/// its end afterwards so the connection stays usable.
pub async fn run_process(
    conn: &mut Conn,
    sbx: &Sandbox,
    start: &serde_json::Value,
) -> Result<ProcessRun, BenchError> {
    let t0 = Instant::now();
    let mut stream = open_stream(conn, sbx, "process.Process/Start", start).await?;
    let mut stdout = Vec::new();
    let mut saw_start = false;
    while let Some((msg, at)) = stream.next().await? {
        let ev = msg.get("event").cloned().unwrap_or_default();
        if ev.get("start").is_some() {
            saw_start = true;
        } else if let Some(out) = ev.pointer("/data/stdout").and_then(|x| x.as_str()) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(out)
                .map_err(|e| BenchError::Http(format!("stdout is not base64: {e}")))?;
            stdout.extend_from_slice(&bytes);
        } else if let Some(end) = ev.get("end") {
            if !saw_start {
                return Err(BenchError::Http("end event before start event".into()));
            }
            let until_end = at - t0;
            let exit_code = end.get("exitCode").and_then(|x| x.as_i64()).unwrap_or(0);
            stream.finish().await?;
            return Ok(ProcessRun {
                until_end,
                exit_code,
                stdout,
            });
        }
    }
    Err(BenchError::Http(
        "process stream ended without an end event".into(),
    ))
}

/// `StartRequest` of a command run directly (no shell), stdin closed.
pub fn start_direct(cmd: &str, args: &[&str]) -> serde_json::Value {
    serde_json::json!({"process": {"cmd": cmd, "args": args}, "stdin": false})
}

/// `StartRequest` as the SDK's `commands.run(cmd)` sends it.
pub fn start_sdk(cmd: &str) -> serde_json::Value {
    serde_json::json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": false})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_defaults_and_extras() {
        let b = sdk_create_body(None);
        assert_eq!(b["templateID"], "base");
        assert_eq!(b["secure"], true);
        let b = sdk_create_body(Some(&serde_json::json!({"diskSizeMB": 4096, "secure": false})));
        assert_eq!(b["diskSizeMB"], 4096);
        assert_eq!(b["secure"], false);
    }

    #[test]
    fn start_requests() {
        assert_eq!(
            start_sdk("echo hi").to_string(),
            r#"{"process":{"args":["-l","-c","echo hi"],"cmd":"/bin/bash"},"stdin":false}"#
        );
        assert_eq!(start_direct("/bin/true", &[])["process"]["cmd"], "/bin/true");
    }
}
