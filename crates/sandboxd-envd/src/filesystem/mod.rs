//! `filesystem.Filesystem` service (`api/envd/filesystem/filesystem.proto`).
//!
//! [`ops`] holds the blocking file operations, [`watch`] the inotify-backed watches and
//! [`xattr`] the `user.e2b.*` metadata helpers. This module decodes requests, resolves the user
//! and paths (§1.3–1.4) and runs the operations on the blocking pool.

pub mod ops;
pub mod watch;
pub mod xattr;

use crate::auth;
use crate::connect::{
    UnaryError, UnaryResult, deadline, keepalive_interval, read_stream_request, read_unary, stream_channel,
    stream_error, unary_ok,
};
use crate::paths;
use crate::state::AgentState;
use crate::users::UserInfo;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use sandboxd_protocol::connect::{Code, ConnectError};
use sandboxd_protocol::filesystem::{
    CreateWatcherResponse, Empty, EntryResponse, GetWatcherEventsResponse, ListDirRequest, ListDirResponse,
    MoveRequest, PathRequest, WatchDirRequest, WatchDirResponse, WatcherIdRequest,
};
use std::sync::Arc;

pub use watch::WatcherTable;

/// `POST /filesystem.Filesystem/{method}`.
pub async fn dispatch(
    State(state): State<Arc<AgentState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match method.as_str() {
        "WatchDir" => return watch_dir(state, headers, body).await,
        "Stat" => stat(&state, &headers, body).await,
        "MakeDir" => make_dir(&state, &headers, body).await,
        "Move" => move_entry(&state, &headers, body).await,
        "ListDir" => list_dir(&state, &headers, body).await,
        "Remove" => remove(&state, &headers, body).await,
        "CreateWatcher" => create_watcher(&state, &headers, body).await,
        "GetWatcherEvents" => get_watcher_events(&state, &headers, body).await,
        "RemoveWatcher" => remove_watcher(&state, &headers, body).await,
        other => Err(UnaryError(ConnectError::unimplemented(format!(
            "filesystem.Filesystem/{other} is not implemented"
        )))),
    };
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Resolve a raw path for a user (§1.4); errors are `invalid_argument`.
fn resolve(state: &AgentState, user: &UserInfo, raw: &str) -> Result<String, ConnectError> {
    let cfg = state.config();
    paths::resolve(raw, user, cfg.default_workdir.as_deref())
        .map_err(|e| ConnectError::invalid_argument(e.to_string()))
}

/// Run a blocking operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ConnectError> + Send + 'static,
) -> Result<T, ConnectError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConnectError::internal(format!("file operation failed: {e}")))?
}

async fn stat(state: &AgentState, headers: &HeaderMap, body: Body) -> UnaryResult {
    let req: PathRequest = read_unary(headers, body).await?;
    let user = auth::rpc_user(headers, state)?;
    let path = resolve(state, &user, &req.path)?;
    let entry = blocking(move || ops::stat(&path)).await?;
    unary_ok(&EntryResponse { entry: Some(entry) })
}

async fn make_dir(state: &Arc<AgentState>, headers: &HeaderMap, body: Body) -> UnaryResult {
    let req: PathRequest = read_unary(headers, body).await?;
    let user = auth::rpc_user(headers, state)?;
    let path = resolve(state, &user, &req.path)?;
    let st = state.clone();
    let entry = blocking(move || {
        let r = ops::make_dir(&path, user.uid, user.gid);
        // Recursive watches must cover the new directories before the next request.
        st.watchers.sync();
        r
    })
    .await?;
    unary_ok(&EntryResponse { entry: Some(entry) })
}

async fn move_entry(state: &Arc<AgentState>, headers: &HeaderMap, body: Body) -> UnaryResult {
    let req: MoveRequest = read_unary(headers, body).await?;
    let user = auth::rpc_user(headers, state)?;
    let source = resolve(state, &user, &req.source)?;
    let destination = resolve(state, &user, &req.destination)?;
    let st = state.clone();
    let entry = blocking(move || {
        let r = ops::move_entry(&source, &destination, user.uid, user.gid);
        st.watchers.sync();
        r
    })
    .await?;
    unary_ok(&EntryResponse { entry: Some(entry) })
}

async fn list_dir(state: &AgentState, headers: &HeaderMap, body: Body) -> UnaryResult {
    let req: ListDirRequest = read_unary(headers, body).await?;
    let user = auth::rpc_user(headers, state)?;
    let path = resolve(state, &user, &req.path)?;
    let entries = blocking(move || ops::list_dir(&path, req.depth)).await?;
    unary_ok(&ListDirResponse { entries })
}

async fn remove(state: &AgentState, headers: &HeaderMap, body: Body) -> UnaryResult {
    let req: PathRequest = read_unary(headers, body).await?;
    let user = auth::rpc_user(headers, state)?;
    let path = resolve(state, &user, &req.path)?;
    blocking(move || ops::remove(&path)).await?;
    unary_ok(&Empty {})
}

/// Check the request and build the watch options (shared by WatchDir and CreateWatcher).
async fn watch_options(
    state: &AgentState,
    headers: &HeaderMap,
    req: &WatchDirRequest,
) -> Result<watch::WatchOptions, ConnectError> {
    let user = auth::rpc_user(headers, state)?;
    let path = resolve(state, &user, &req.path)?;
    let allow = req.allow_network_mounts;
    let checked = path.clone();
    blocking(move || ops::check_watch_dir(&checked, allow)).await?;
    Ok(watch::WatchOptions {
        root: path,
        recursive: req.recursive,
        include_entry: req.include_entry,
    })
}

async fn create_watcher(state: &Arc<AgentState>, headers: &HeaderMap, body: Body) -> UnaryResult {
    let req: WatchDirRequest = read_unary(headers, body).await?;
    let opts = watch_options(state, headers, &req).await?;
    let st = state.clone();
    let watcher_id = blocking(move || st.watchers.create_polling(&opts)).await?;
    unary_ok(&CreateWatcherResponse { watcher_id })
}

async fn get_watcher_events(state: &Arc<AgentState>, headers: &HeaderMap, body: Body) -> UnaryResult {
    let req: WatcherIdRequest = read_unary(headers, body).await?;
    auth::rpc_user(headers, state)?;
    let st = state.clone();
    let events = blocking(move || st.watchers.take_events(&req.watcher_id)).await?;
    unary_ok(&GetWatcherEventsResponse { events })
}

async fn remove_watcher(state: &Arc<AgentState>, headers: &HeaderMap, body: Body) -> UnaryResult {
    let req: WatcherIdRequest = read_unary(headers, body).await?;
    auth::rpc_user(headers, state)?;
    state.watchers.remove_polling(&req.watcher_id)?;
    unary_ok(&Empty {})
}

/// `WatchDir`: `{"start":{}}` at once, then one message per event, keepalives when idle, until
/// the client goes away, the deadline passes or the watch fails.
async fn watch_dir(state: Arc<AgentState>, headers: HeaderMap, body: Body) -> Response {
    let req: WatchDirRequest = match read_stream_request(&headers, body).await {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let limit = match deadline(&headers) {
        Ok(d) => d,
        Err(e) => return stream_error(e),
    };
    let opts = match watch_options(&state, &headers, &req).await {
        Ok(o) => o,
        Err(e) => return stream_error(e),
    };
    let st = state.clone();
    let (guard, mut rx) = match blocking(move || st.watchers.subscribe_stream(&opts)).await {
        Ok(v) => v,
        Err(e) => return stream_error(e),
    };
    let keepalive = keepalive_interval(&headers);
    let (sender, resp) = stream_channel();
    tokio::spawn(async move {
        let _guard = guard;
        if !sender.send(&WatchDirResponse::Start(Empty {})).await {
            return;
        }
        let end = async {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(end);
        let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(watch::WatchItem::Event(ev)) => {
                        if !sender.send(&WatchDirResponse::Filesystem(ev)).await {
                            return;
                        }
                        idle.reset();
                    }
                    Some(watch::WatchItem::Error(e)) => break Some(e),
                    None => break Some(ConnectError::internal("watch stopped")),
                },
                _ = idle.tick() => {
                    if !sender.send(&WatchDirResponse::Keepalive(Empty {})).await {
                        return;
                    }
                }
                _ = &mut end => break Some(ConnectError::new(Code::DeadlineExceeded, "deadline exceeded")),
                _ = sender.closed() => return,
            }
        };
        sender.finish(result).await;
    });
    resp
}

#[cfg(test)]
mod http_tests;
