//! The internal control API on `control.sock` (never proxied to SDK clients).
//!
//! - `GET /health`: 204 once the agent serves requests.
//! - `POST /config`: a full JSON `AgentConfig` that replaces the current one (204). Used to
//!   hand a warm-pool sandbox to its owner. `workCgroupFds` and `workloadUsernsFd` are kept
//!   from boot: those descriptors were inherited then and cannot change; so is the command
//!   policy.
//! - `POST /process.Process/Start`: as on the envd API, under the command policy's helper
//!   ruleset (the daemon's own helper programs, `docs/command-policy.md`).

use crate::connect::read_body_limited;
use crate::state::AgentState;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sandboxd_protocol::agent::AgentConfig;
use std::sync::Arc;

/// Largest accepted config body.
const MAX_CONFIG: usize = 1 << 20;

/// The control router.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .route("/config", post(set_config))
        .route("/logs", get(crate::log::get_logs))
        .route("/logs/oom", post(crate::log::post_oom))
        .route("/process.Process/Start", post(crate::process::start_helper))
        .with_state(state)
}

async fn set_config(State(state): State<Arc<AgentState>>, body: Body) -> Response {
    let data = match read_body_limited(body, MAX_CONFIG).await {
        Ok(d) => d,
        Err(e) => return crate::auth::json_error(StatusCode::BAD_REQUEST, &e.message),
    };
    let mut cfg: AgentConfig = match serde_json::from_slice(&data) {
        Ok(c) => c,
        Err(e) => {
            return crate::auth::json_error(StatusCode::BAD_REQUEST, &format!("invalid agent config: {e}"));
        }
    };
    let boot = state.config();
    cfg.work_cgroup_fds = boot.work_cgroup_fds.clone();
    cfg.work_counter_fds = boot.work_counter_fds.clone();
    cfg.workload_userns_fd = boot.workload_userns_fd;
    // the command policy is fixed at boot (its Landlock ruleset and loader guard are built then)
    cfg.allowed_commands = boot.allowed_commands.clone();
    cfg.command_policy_fds = boot.command_policy_fds;
    tracing::info!(sandbox_id = %cfg.sandbox_id, "config replaced");
    state.set_config(cfg);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn replaces_config_and_keeps_cgroup_fds() {
        let mut boot = AgentConfig::new("pool1", "base");
        boot.work_cgroup_fds = vec![9];
        let state = AgentState::new(boot);
        let app = router(state.clone());
        let r = app
            .clone()
            .oneshot(Request::get("/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let body = r#"{"sandboxId":"abc","templateId":"base","defaultUser":"root","accessToken":"t","workCgroupFds":[1,2]}"#;
        let r = app
            .clone()
            .oneshot(Request::post("/config").body(Body::from(body)).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let c = state.config();
        assert_eq!(c.sandbox_id, "abc");
        assert_eq!(c.access_token.as_deref(), Some("t"));
        assert_eq!(c.work_cgroup_fds, vec![9]);
        let r = app
            .oneshot(Request::post("/config").body(Body::from("{nope")).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(state.config().sandbox_id, "abc");
    }
}
