//! `GET /sandboxes/{id}/metrics`, `GET /sandboxes/metrics` and the daemon's Prometheus
//! `GET /metrics` (`api/openapi.yaml`; `docs/observability.md`).

use super::extract::{SandboxId, json};
use crate::error::ApiError;
use crate::ids::{format_time, is_valid_sandbox_id};
use crate::query::query_pairs;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use sandboxd_daemon::Daemon;
use sandboxd_daemon::metrics::Sample;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most ids one `GET /sandboxes/metrics` may ask for.
pub const MAX_IDS: usize = 100;

/// `SandboxMetric` (every field required by the SDK).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    pub timestamp: String,
    pub timestamp_unix: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
    /// sandboxd-only: bytes and packets the sandbox received and sent on its network link so
    /// far (`docs/network.md`); absent without a link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_rx_packets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_tx_packets: Option<u64>,
    /// sandboxd-only: egress refused by the sandbox's policy so far — packets refused by the
    /// packet filter and connections refused by the egress proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_denied_packets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_denied_connections: Option<u64>,
}

impl From<Sample> for SandboxMetric {
    fn from(s: Sample) -> Self {
        let t = DateTime::from_timestamp_millis(s.ts_ms).unwrap_or_default();
        Self {
            timestamp: format_time(t),
            timestamp_unix: s.ts_ms.div_euclid(1000),
            cpu_count: s.cpu_count,
            cpu_used_pct: (s.cpu_used_pct * 100.0).round() / 100.0,
            mem_used: s.mem_used,
            mem_total: s.mem_total,
            mem_cache: s.mem_cache,
            disk_used: s.disk_used,
            disk_total: s.disk_total,
            net_rx_bytes: s.network.map(|n| n.rx_bytes),
            net_rx_packets: s.network.map(|n| n.rx_packets),
            net_tx_bytes: s.network.map(|n| n.tx_bytes),
            net_tx_packets: s.network.map(|n| n.tx_packets),
            net_denied_packets: s.network.map(|n| n.denied_packets),
            net_denied_connections: s.network.map(|n| n.denied_connections),
        }
    }
}

fn unix_param(name: &str, v: &str) -> Result<i64, ApiError> {
    v.trim()
        .parse::<i64>()
        .map_err(|_| ApiError::BadRequest(format!("{name} must be Unix seconds (an integer), got '{v}'")))
}

/// `GET /sandboxes/{id}/metrics?start=&end=`: samples with `start <= timestampUnix <= end`,
/// oldest first; `[]` when none (for example a range before the sandbox existed).
pub async fn history(
    State(daemon): State<Arc<Daemon>>,
    SandboxId(id): SandboxId,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (mut start, mut end) = (None, None);
    for (k, v) in query_pairs(raw.as_deref()) {
        match k.as_str() {
            "start" => start = Some(unix_param("start", &v)?),
            "end" => end = Some(unix_param("end", &v)?),
            _ => {}
        }
    }
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(ApiError::BadRequest(format!("start ({s}) is after end ({e})")));
    }
    let out: Vec<SandboxMetric> = daemon
        .metrics_history(&id, start, end)?
        .into_iter()
        .map(SandboxMetric::from)
        .collect();
    Ok(json(StatusCode::OK, &out))
}

/// `GET /sandboxes/metrics?sandbox_ids=a,b`: `{"sandboxes": {id: latest SandboxMetric}}` for
/// the listed sandboxes that exist and have a sample.
pub async fn latest_many(
    State(daemon): State<Arc<Daemon>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut ids: Vec<String> = Vec::new();
    let mut given = false;
    for (k, v) in query_pairs(raw.as_deref()) {
        if k == "sandbox_ids" {
            given = true;
            ids.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
    }
    if !given {
        return Err(ApiError::BadRequest("sandbox_ids is required".into()));
    }
    if ids.len() > MAX_IDS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_IDS} sandbox_ids per request (got {})",
            ids.len()
        )));
    }
    let mut checked = Vec::with_capacity(ids.len());
    for raw in ids {
        let id = raw.split_once('-').map_or(raw.as_str(), |(a, _)| a).to_string();
        if !is_valid_sandbox_id(&id) {
            return Err(ApiError::BadRequest(format!("Invalid sandbox ID '{raw}'")));
        }
        checked.push(id);
    }
    let out: BTreeMap<String, SandboxMetric> = daemon
        .latest_metrics(&checked)
        .into_iter()
        .map(|(id, s)| (id, SandboxMetric::from(s)))
        .collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "sandboxes": out })))
}

/// `GET /metrics`: daemon counters in the Prometheus text format (needs the API key like the
/// rest of the control plane).
pub async fn prometheus(State(daemon): State<Arc<Daemon>>) -> Response {
    let body = daemon.prometheus_text();
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_json_has_every_field() {
        let m = SandboxMetric::from(Sample {
            ts_ms: 1_700_000_000_250,
            cpu_count: 2,
            cpu_used_pct: 12.345,
            mem_used: 1,
            mem_total: 2,
            mem_cache: 3,
            disk_used: 4,
            disk_total: 5,
            network: None,
        });
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "timestamp": "2023-11-14T22:13:20.250000Z",
                "timestampUnix": 1_700_000_000i64,
                "cpuCount": 2,
                "cpuUsedPct": 12.35,
                "memUsed": 1, "memTotal": 2, "memCache": 3, "diskUsed": 4, "diskTotal": 5
            })
        );
    }

    #[test]
    fn unix_params() {
        assert_eq!(unix_param("start", "17").unwrap(), 17);
        assert_eq!(unix_param("start", "-1").unwrap(), -1);
        assert_eq!(unix_param("start", "1.5").unwrap_err().status(), 400);
        assert_eq!(unix_param("end", "").unwrap_err().status(), 400);
    }
}
