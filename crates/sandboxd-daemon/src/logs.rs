//! Sandbox logs (`docs/observability.md`): the log lives in the sandbox's agent
//! (`sandboxd-envd` `log.rs`); the daemon reads it over the agent's control socket.

use crate::agent::control_request;
use crate::daemon::Daemon;
use crate::error::DaemonError;
use sandboxd_runtime::AgentEndpoint;
use sandboxd_store::SandboxState;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A log entry as the agent keeps it.
#[derive(Debug, Deserialize)]
pub struct LogRecord {
    /// Unix milliseconds.
    pub timestamp: i64,
    pub level: String,
    pub message: String,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// A validated log query (what the agent's `GET /logs` takes).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub cursor: Option<i64>,
    pub limit: usize,
    pub backward: bool,
    pub level: Option<String>,
    pub search: Option<String>,
}

impl LogQuery {
    pub fn to_query_string(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        if let Some(c) = self.cursor {
            s.append_pair("cursor", &c.to_string());
        }
        s.append_pair("limit", &self.limit.to_string());
        s.append_pair("direction", if self.backward { "backward" } else { "forward" });
        if let Some(l) = &self.level {
            s.append_pair("level", l);
        }
        if let Some(q) = &self.search {
            s.append_pair("search", q);
        }
        s.finish()
    }
}

impl Daemon {
    /// The entries of a running sandbox's log matching `q`. OOM kills the host saw since the last
    /// sample are reported to the agent first, so the answer includes them.
    pub async fn read_log(self: &Arc<Self>, id: &str, q: &LogQuery) -> Result<Vec<LogRecord>, DaemonError> {
        let s = match self.sandboxes.get(id) {
            Some(s) => s,
            None => return Err(DaemonError::SandboxNotFound(id.to_string())),
        };
        match s.state() {
            SandboxState::Running => {}
            SandboxState::Paused => {
                return Err(DaemonError::Conflict(format!(
                    "sandbox {id} is paused: its log is kept by its agent and readable once it runs again"
                )));
            }
            _ => return Err(DaemonError::SandboxNotFound(id.to_string())),
        }
        // OOM kills the host saw since the last sample go into the log first.
        if let Ok(stats) = self.backend().stats(id).await
            && !stats.frozen
        {
            self.report_oom(&s, &stats).await;
        }
        let AgentEndpoint::Unix(sock) = &s.handle.control;
        let path = format!("/logs?{}", q.to_query_string());
        let (status, body) = control_request(sock, http::Method::GET, &path, String::new())
            .await
            .map_err(|e| DaemonError::Internal(format!("reading the log of sandbox {id}: {e}")))?;
        if !status.is_success() {
            return Err(DaemonError::Internal(format!(
                "the agent of sandbox {id} answered {status} to a log request: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        #[derive(Deserialize)]
        struct Page {
            entries: Vec<LogRecord>,
        }
        let page: Page = serde_json::from_slice(&body)
            .map_err(|e| DaemonError::Internal(format!("bad log answer from sandbox {id}: {e}")))?;
        Ok(page.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_query_string() {
        let q = LogQuery {
            cursor: Some(10),
            limit: 2,
            backward: true,
            level: Some("warn".into()),
            search: Some("a b".into()),
        };
        assert_eq!(
            q.to_query_string(),
            "cursor=10&limit=2&direction=backward&level=warn&search=a+b"
        );
    }
}
