//! Live sandboxes in memory: what the router and the control plane read on every request.
//! The registry ([`sandboxd_store::Store`]) is the durable copy; this map is written through.

use crate::agent::AgentClient;
use crate::error::DaemonError;
use chrono::{DateTime, Utc};
use sandboxd_runtime::{AgentEndpoint, SandboxHandle};
use sandboxd_store::{SandboxRecord, SandboxState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio_util::sync::CancellationToken;

/// A client connection the HTTP layer resets when the sandbox its request targets stops
/// (an SDK reads only a reset, not a clean close, as "the sandbox was killed").
pub trait ClientConnection: Send + Sync + std::fmt::Debug {
    /// Unique id of the connection.
    fn id(&self) -> u64;
    /// Resets the connection now.
    fn abort(&self);
}

/// A sandbox known to the daemon (running, or later paused).
pub struct LiveSandbox {
    /// The registry row as created (state and end time live in [`Dynamic`]).
    pub rec: SandboxRecord,
    pub handle: SandboxHandle,
    /// Pooled HTTP/1.1 client to the agent's API socket.
    pub agent: AgentClient,
    /// Cancelled when the sandbox stops serving (killed, expired, later: paused).
    stopped: CancellationToken,
    dynamic: Mutex<Dynamic>,
}

/// The mutable part of a live sandbox.
#[derive(Debug)]
pub struct Dynamic {
    pub state: SandboxState,
    pub end_at: DateTime<Utc>,
    /// `network` and `allow_internet_access` as last set (create, then `PUT …/network`).
    pub network: Option<serde_json::Value>,
    pub allow_internet_access: bool,
    /// HTTP/1.1 client connections with an in-flight request to this sandbox (count per
    /// connection), reset when it stops.
    inflight: HashMap<u64, (usize, Arc<dyn ClientConnection>)>,
}

impl std::fmt::Debug for LiveSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSandbox").field("id", &self.rec.id).finish()
    }
}

impl LiveSandbox {
    pub fn new(rec: SandboxRecord, handle: SandboxHandle, agent: AgentClient) -> Arc<Self> {
        let dynamic = Dynamic {
            state: rec.state,
            end_at: rec.end_at,
            network: rec.network.clone(),
            allow_internet_access: rec.allow_internet_access,
            inflight: HashMap::new(),
        };
        Arc::new(Self {
            rec,
            handle,
            agent,
            stopped: CancellationToken::new(),
            dynamic: Mutex::new(dynamic),
        })
    }

    /// A live-map entry for `rec` in `state` with the agent of `handle` (a new object per
    /// create, pause and resume: a stopped sandbox's cancellation token cannot be reused).
    pub(crate) fn from_handle(
        mut rec: SandboxRecord,
        state: SandboxState,
        end_at: DateTime<Utc>,
        handle: SandboxHandle,
    ) -> Result<Arc<Self>, DaemonError> {
        let AgentEndpoint::Unix(path) = &handle.api;
        let client = AgentClient::new(path)
            .map_err(|e| DaemonError::Internal(format!("agent socket of sandbox {}: {e}", rec.id)))?;
        rec.state = state;
        rec.end_at = end_at;
        rec.agent_pid = Some(handle.agent_pid);
        rec.agent_start_time = Some(handle.agent_start_time);
        Ok(Self::new(rec, handle, client))
    }

    pub fn id(&self) -> &str {
        &self.rec.id
    }

    /// Locks the mutable part (never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, Dynamic> {
        self.dynamic.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> SandboxState {
        self.lock().state
    }

    pub fn end_at(&self) -> DateTime<Utc> {
        self.lock().end_at
    }

    /// The registry row with the current values of its mutable fields (state, end time,
    /// network settings): what a rebuilt sandbox (pause/resume) must start from.
    pub fn current_rec(&self) -> SandboxRecord {
        let d = self.lock();
        let mut rec = self.rec.clone();
        rec.state = d.state;
        rec.end_at = d.end_at;
        rec.network = d.network.clone();
        rec.allow_internet_access = d.allow_internet_access;
        rec
    }

    /// A token cancelled when the sandbox stops serving.
    pub fn stopped(&self) -> &CancellationToken {
        &self.stopped
    }

    /// Registers an in-flight request. `None` if the sandbox does not serve traffic (the
    /// caller answers 502). `conn` is the HTTP/1.1 client connection to reset if the sandbox
    /// stops before the response is done; HTTP/2 requests pass `None` (their stream is reset
    /// through [`LiveSandbox::stopped`] instead).
    pub fn begin_request<C: ClientConnection + 'static>(
        self: &Arc<Self>,
        conn: Option<&Arc<C>>,
    ) -> Option<InflightGuard> {
        let mut d = self.lock();
        if d.state != SandboxState::Running || self.stopped.is_cancelled() {
            return None;
        }
        if let Some(c) = conn {
            let entry: Arc<dyn ClientConnection> = c.clone();
            d.inflight.entry(c.id()).or_insert_with(|| (0, entry)).0 += 1;
        }
        Some(InflightGuard {
            sandbox: self.clone(),
            conn: conn.map(|c| c.id()),
        })
    }

    /// Stops serving: sets `state`, cancels [`LiveSandbox::stopped`] and resets every client
    /// connection with an in-flight request here. Returns how many connections were reset.
    pub fn stop(&self, state: SandboxState) -> usize {
        let conns: Vec<Arc<dyn ClientConnection>> = {
            let mut d = self.lock();
            d.state = state;
            self.stopped.cancel();
            d.inflight.drain().map(|(_, (_, c))| c).collect()
        };
        for c in &conns {
            c.abort();
        }
        conns.len()
    }
}

/// Keeps a request registered as in flight until dropped (held by the response body).
#[derive(Debug)]
pub struct InflightGuard {
    sandbox: Arc<LiveSandbox>,
    conn: Option<u64>,
}

impl InflightGuard {
    pub fn sandbox(&self) -> &Arc<LiveSandbox> {
        &self.sandbox
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(id) = self.conn {
            let mut d = self.sandbox.lock();
            if let Some(e) = d.inflight.get_mut(&id) {
                e.0 -= 1;
                if e.0 == 0 {
                    d.inflight.remove(&id);
                }
            }
        }
    }
}

/// A point-in-time copy of a sandbox for listings and responses.
#[derive(Debug, Clone)]
pub struct SandboxView {
    pub rec: SandboxRecord,
    pub state: SandboxState,
    pub end_at: DateTime<Utc>,
}

impl SandboxView {
    pub fn of(s: &LiveSandbox) -> Self {
        let rec = s.current_rec();
        Self {
            state: rec.state,
            end_at: rec.end_at,
            rec,
        }
    }
}

/// All live sandboxes by id.
#[derive(Debug, Default)]
pub struct SandboxMap {
    map: RwLock<HashMap<String, Arc<LiveSandbox>>>,
}

impl SandboxMap {
    pub fn get(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn insert(&self, s: Arc<LiveSandbox>) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.id().to_string(), s);
    }

    pub fn remove(&self, id: &str) -> Option<Arc<LiveSandbox>> {
        self.map.write().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    pub fn all(&self) -> Vec<Arc<LiveSandbox>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
