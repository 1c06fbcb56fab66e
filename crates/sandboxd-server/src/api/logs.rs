//! `GET /sandboxes/{id}/logs` (v1) and `GET /v2/sandboxes/{id}/logs`
//! (`api/openapi.yaml`, `docs/observability.md`).
//!
//! The log lives in the sandbox's agent (`sandboxd-envd` `log.rs`); the daemon validates the
//! parameters, reports new OOM kills it sees on the host first (so the answer includes them),
//! fetches the entries over the internal control socket and shapes them like E2B.

use super::extract::{SandboxId, json};
use crate::error::ApiError;
use crate::ids::format_time;
use crate::query::query_pairs;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::DateTime;
use sandboxd_daemon::Daemon;
use sandboxd_daemon::logs::{LogQuery, LogRecord};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest page (also the v1 default).
pub const MAX_LIMIT: usize = 1000;

/// `SandboxLogEntry`.
#[derive(Debug, Serialize)]
pub struct LogEntry {
    pub timestamp: String,
    pub level: String,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

/// `SandboxLog` (v1 `logs` items).
#[derive(Debug, Serialize)]
pub struct LogLine {
    pub timestamp: String,
    pub line: String,
}

fn ms_time(ms: i64) -> String {
    format_time(DateTime::from_timestamp_millis(ms).unwrap_or_default())
}

fn parse_limit(v: &str) -> Result<usize, ApiError> {
    match v.trim().parse::<usize>() {
        Ok(n) if n <= MAX_LIMIT => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be an integer from 0 to {MAX_LIMIT}, got '{v}'"
        ))),
    }
}

fn parse_ms(name: &str, v: &str) -> Result<i64, ApiError> {
    v.trim().parse::<i64>().map_err(|_| {
        ApiError::BadRequest(format!(
            "{name} must be Unix milliseconds (an integer), got '{v}'"
        ))
    })
}

/// v1 parameters: `start` (ms), `limit` (default 1000).
pub fn parse_v1(raw: Option<&str>) -> Result<LogQuery, ApiError> {
    let mut q = LogQuery {
        limit: MAX_LIMIT,
        ..LogQuery::default()
    };
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "start" => q.cursor = Some(parse_ms("start", &v)?),
            "limit" => q.limit = parse_limit(&v)?,
            _ => {}
        }
    }
    Ok(q)
}

/// v2 parameters: `cursor` (ms), `limit` (≤ 1000, default 1000), `direction`
/// (`forward`|`backward`), `level` (minimum: `debug|info|warn|error`), `search`.
pub fn parse_v2(raw: Option<&str>) -> Result<LogQuery, ApiError> {
    let mut q = LogQuery {
        limit: MAX_LIMIT,
        ..LogQuery::default()
    };
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "cursor" => q.cursor = Some(parse_ms("cursor", &v)?),
            "limit" => q.limit = parse_limit(&v)?,
            "direction" => {
                q.backward = match v.as_str() {
                    "forward" => false,
                    "backward" => true,
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "direction must be forward or backward, got '{v}'"
                        )));
                    }
                }
            }
            "level" => match v.to_ascii_lowercase().as_str() {
                l @ ("debug" | "info" | "warn" | "error") => q.level = Some(l.to_string()),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "level must be debug, info, warn or error, got '{v}'"
                    )));
                }
            },
            "search" if !v.is_empty() => {
                if v.len() > 256 {
                    return Err(ApiError::BadRequest("search is longer than 256 bytes".into()));
                }
                q.search = Some(v);
            }
            _ => {}
        }
    }
    Ok(q)
}

fn entry(e: LogRecord) -> LogEntry {
    LogEntry {
        timestamp: ms_time(e.timestamp),
        level: e.level,
        message: e.message,
        fields: e.fields,
    }
}

/// `GET /sandboxes/{id}/logs?start=<ms>&limit=`: entries from `start` on, oldest first, as
/// both `logs` (`{timestamp, line}`, the line a JSON object) and `logEntries`.
pub async fn logs_v1(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_v1(raw.as_deref())?;
    let entries = daemon.read_log(&id, &q).await?;
    let mut logs = Vec::with_capacity(entries.len());
    let mut log_entries = Vec::with_capacity(entries.len());
    for e in entries {
        let mut obj = serde_json::Map::new();
        obj.insert("level".into(), e.level.clone().into());
        obj.insert("message".into(), e.message.clone().into());
        for (k, v) in &e.fields {
            obj.entry(k.clone()).or_insert_with(|| v.clone().into());
        }
        logs.push(LogLine {
            timestamp: ms_time(e.timestamp),
            line: serde_json::Value::Object(obj).to_string(),
        });
        log_entries.push(entry(e));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "logs": logs, "logEntries": log_entries }),
    ))
}

/// `GET /v2/sandboxes/{id}/logs?cursor=&limit=&direction=&level=&search=`:
/// `{"logs":[SandboxLogEntry]}` in the requested direction (backward: newest first).
pub async fn logs_v2(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_v2(raw.as_deref())?;
    let entries = daemon.read_log(&id, &q).await?;
    let logs: Vec<LogEntry> = entries.into_iter().map(entry).collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "logs": logs })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_params() {
        let q = parse_v1(Some("start=1700000000000&limit=5")).unwrap();
        assert_eq!(
            (q.cursor, q.limit, q.backward),
            (Some(1_700_000_000_000), 5, false)
        );
        assert_eq!(parse_v1(None).unwrap().limit, 1000);
        for bad in ["start=x", "limit=1001", "limit=-1", "start=1.5"] {
            assert_eq!(parse_v1(Some(bad)).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[test]
    fn v2_params() {
        let q = parse_v2(Some(
            "cursor=10&limit=2&direction=backward&level=WARN&search=a%20b",
        ))
        .unwrap();
        assert_eq!(
            q,
            LogQuery {
                cursor: Some(10),
                limit: 2,
                backward: true,
                level: Some("warn".into()),
                search: Some("a b".into()),
            }
        );
        assert_eq!(
            q.to_query_string(),
            "cursor=10&limit=2&direction=backward&level=warn&search=a+b"
        );
        for bad in ["cursor=no", "limit=5000", "direction=sideways", "level=fatal"] {
            assert_eq!(parse_v2(Some(bad)).unwrap_err().status(), 400, "{bad}");
        }
        let long = format!("search={}", "x".repeat(300));
        assert_eq!(parse_v2(Some(&long)).unwrap_err().status(), 400);
    }
}
