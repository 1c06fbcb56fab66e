//! `GET /pool`: the warm pool of every template (`docs/pool.md`).

use axum::Json;
use axum::extract::State;
use sandboxd_daemon::Daemon;
use std::sync::Arc;

/// `GET /pool`: counts only; pooled ids are never shown.
pub async fn status(State(daemon): State<Arc<Daemon>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "templates": daemon.pool_views() }))
}
