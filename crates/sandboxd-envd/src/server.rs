//! The agent's HTTP router: one route table for the whole envd surface.

use crate::state::AgentState;
use crate::{auth, files, filesystem, health, process};
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

/// The envd API router (served on `agent.sock` and on `127.0.0.1:49983` inside the sandbox).
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/envs", get(health::envs))
        .route("/files", get(files::download).post(files::upload))
        .route("/process.Process/{method}", post(process::dispatch))
        .route("/filesystem.Filesystem/{method}", post(filesystem::dispatch))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
}
