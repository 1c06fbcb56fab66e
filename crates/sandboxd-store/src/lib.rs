//! The sandboxd registry (embedded SQLite): the truth about which sandboxes exist.
//!
//! A row is written (state [`SandboxState::Creating`]) **before** anything of the sandbox is
//! spawned, so a daemon that dies at any step can reconcile at its next start: every row and
//! every host sandbox the backend finds is either re-adopted or cleaned up.
//!
//! The database lives in `<data dir>/sandboxd.db`, in WAL mode with `synchronous=FULL`: a
//! committed write survives a power cut. [`Store`]'s calls are synchronous and short; async
//! callers use [`Registry`], which runs them on the blocking pool.

mod idempotency;
mod migrations;
mod registry;
mod secrets;
mod snapshots;
mod template_builds;
mod volumes;
pub use idempotency::IdempotencyClaim;
pub use registry::Registry;
pub use secrets::{SECRETS_KEY_FILE, SecretRow};
pub use snapshots::{SnapshotResolution, SnapshotRow};
pub use template_builds::{BuildRow, TagRow};
pub use volumes::{MountRow, VolumeDeletion, VolumeRow};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "sandboxd.db";

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O, corruption, constraint).
    #[error("registry database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A JSON column could not be encoded or decoded.
    #[error("registry JSON column error: {0}")]
    Json(#[from] serde_json::Error),
    /// The data dir or database file could not be created.
    #[error("registry I/O error at {path}: {source}")]
    Io {
        /// The path being created or opened.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A row with this id already exists.
    #[error("sandbox '{0}' already exists in the registry")]
    Duplicate(String),
    /// No row with this id.
    #[error("sandbox '{0}' not found in the registry")]
    NotFound(String),
    /// No volume with this name.
    #[error("volume '{0}' not found")]
    VolumeNotFound(String),
    /// A row holds a value this version cannot read (for example an unknown state).
    #[error("registry row '{id}' is invalid: {message}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// What is wrong with it.
        message: String,
    },
    /// The database was written by a newer sandboxd.
    #[error("registry schema version {found} is newer than this sandboxd supports ({supported})")]
    SchemaTooNew {
        /// The schema version in the file.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// The blocking task running a registry call failed (panicked or was cancelled).
    #[error("registry task failed: {0}")]
    TaskFailed(String),
}

/// Lifecycle state of a registry row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Row written, backend not (yet) done. Never visible through the API.
    Creating,
    /// The agent answered; the sandbox serves traffic.
    Running,
    /// Frozen or checkpointed (lifecycle work; not produced yet).
    Paused,
    /// Kill decided; the backend is tearing it down. The row is deleted afterwards.
    Killing,
}

impl SandboxState {
    /// The stored (and API) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Killing => "killing",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => SandboxState::Creating,
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            "killing" => SandboxState::Killing,
            _ => return None,
        })
    }
}

/// Resolved resource limits of a sandbox (mirrors the runtime's `Limits`, kept separate so the
/// store does not depend on the runtime crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLimits {
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// Disk quota of the writable layer in MiB.
    pub disk_mb: u64,
    /// Process (task) limit.
    pub pids: u64,
}

/// One sandbox as the registry knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    /// Creation sequence (assigned by the store on insert; 0 before).
    pub seq: i64,
    /// Sandbox id, `^[a-z0-9]+$`.
    pub id: String,
    /// Resolved template id (for example `base`).
    pub template_id: String,
    /// Template alias / name the client used, if any.
    pub alias: Option<String>,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Resolved resource limits.
    pub limits: StoredLimits,
    /// User metadata (`metadata` of the create request).
    pub metadata: BTreeMap<String, String>,
    /// Sandbox-global environment variables (`envVars`).
    pub env_vars: BTreeMap<String, String>,
    /// envd access token of a secure sandbox.
    pub access_token: Option<String>,
    /// Traffic access token (`network.allowPublicTraffic == false`).
    pub traffic_token: Option<String>,
    /// `allow_internet_access` as requested (enforced by `sandboxd-net`).
    pub allow_internet_access: bool,
    /// The `network` object of the create request, verbatim (enforced by `sandboxd-net`).
    pub network: Option<serde_json::Value>,
    /// Creation time, microsecond precision.
    pub started_at: DateTime<Utc>,
    /// Time at which the reaper ends the sandbox, microsecond precision.
    pub end_at: DateTime<Utc>,
    /// Host pid of the agent once running.
    pub agent_pid: Option<i32>,
    /// Start time of the agent (`/proc/<pid>/stat` field 22) to detect pid reuse.
    pub agent_start_time: Option<u64>,
    /// The command policy (`allowedCommands`), as asked; `None`: any program.
    pub allowed_commands: Option<Vec<String>>,
}

/// Truncates a time to whole microseconds (what the store keeps and the API prints).
pub fn trunc_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    from_micros(t.timestamp_micros())
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The registry.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const COLUMNS: &str = "seq, id, template_id, alias, state, limits, metadata, env_vars, access_token, \
     traffic_token, allow_internet_access, network, started_at_us, end_at_us, agent_pid, agent_start_time, \
     allowed_commands";

impl Store {
    /// Opens (or creates) the registry in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        Self::init(conn, path)
    }

    /// An in-memory registry (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, PathBuf::from(":memory:"))
    }

    fn init(mut conn: Connection, path: PathBuf) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (each call is one
        // statement or one transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts a new row; returns it with its creation sequence. Fails with
    /// [`StoreError::Duplicate`] if the id exists.
    pub fn insert(&self, rec: &SandboxRecord) -> Result<SandboxRecord, StoreError> {
        Self::insert_on(&self.conn(), rec)
    }

    /// Like [`Store::insert`], committed with `synchronous=NORMAL` (no fsync; the WAL is
    /// synced by the next `FULL` commit): the row survives a crash of the daemon, not a power
    /// loss. For rows of running sandboxes, which die with the host anyway (the warm pool's
    /// claim, `pool.rs`, where an fsync under I/O load would cost milliseconds).
    pub fn insert_unsynced(&self, rec: &SandboxRecord) -> Result<SandboxRecord, StoreError> {
        let conn = self.conn();
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let r = Self::insert_on(&conn, rec);
        conn.pragma_update(None, "synchronous", "FULL")?;
        r
    }

    fn insert_on(conn: &Connection, rec: &SandboxRecord) -> Result<SandboxRecord, StoreError> {
        let res = conn.execute(
            "INSERT INTO sandboxes (id, template_id, alias, state, limits, metadata, env_vars, \
             access_token, traffic_token, allow_internet_access, network, started_at_us, end_at_us, \
             agent_pid, agent_start_time, allowed_commands) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                rec.id,
                rec.template_id,
                rec.alias,
                rec.state.as_str(),
                serde_json::to_string(&rec.limits)?,
                serde_json::to_string(&rec.metadata)?,
                serde_json::to_string(&rec.env_vars)?,
                rec.access_token,
                rec.traffic_token,
                rec.allow_internet_access,
                rec.network.as_ref().map(serde_json::to_string).transpose()?,
                rec.started_at.timestamp_micros(),
                rec.end_at.timestamp_micros(),
                rec.agent_pid,
                rec.agent_start_time.map(|t| t as i64),
                rec.allowed_commands
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()?,
            ],
        );
        match res {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::Duplicate(rec.id.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        let mut out = rec.clone();
        out.seq = conn.last_insert_rowid();
        out.started_at = trunc_micros(rec.started_at);
        out.end_at = trunc_micros(rec.end_at);
        Ok(out)
    }

    /// Marks a sandbox running and records its agent.
    pub fn set_running(&self, id: &str, agent_pid: i32, agent_start_time: u64) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE sandboxes SET state = 'running', agent_pid = ?2, agent_start_time = ?3 WHERE id = ?1",
            params![id, agent_pid, agent_start_time as i64],
        )?;
        Self::one(n, id)
    }

    /// Sets the state of a row.
    pub fn set_state(&self, id: &str, state: SandboxState) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE sandboxes SET state = ?2 WHERE id = ?1",
            params![id, state.as_str()],
        )?;
        Self::one(n, id)
    }

    /// Sets the end time of a row (microsecond precision).
    pub fn set_end_at(&self, id: &str, end_at: DateTime<Utc>) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "UPDATE sandboxes SET end_at_us = ?2 WHERE id = ?1",
            params![id, end_at.timestamp_micros()],
        )?;
        Self::one(n, id)
    }

    /// Replaces the network settings of a row (`PUT /sandboxes/{id}/network`).
    pub fn set_network(
        &self,
        id: &str,
        network: Option<&serde_json::Value>,
        allow_internet_access: bool,
    ) -> Result<(), StoreError> {
        let network = network.map(serde_json::to_string).transpose()?;
        let n = self.conn().execute(
            "UPDATE sandboxes SET network = ?2, allow_internet_access = ?3 WHERE id = ?1",
            params![id, network, allow_internet_access],
        )?;
        Self::one(n, id)
    }

    /// Deletes a row; deleting a missing row is `Ok(false)`.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        Ok(n > 0)
    }

    /// One row by id.
    pub fn get(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"))?;
        let raw = stmt.query_row(params![id], RawRow::from_row).optional()?;
        raw.map(RawRow::into_record).transpose()
    }

    /// All rows in creation order.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM sandboxes ORDER BY seq"))?;
        let rows = stmt.query_map([], RawRow::from_row)?;
        let mut out = Vec::new();
        for raw in rows {
            out.push(raw?.into_record()?);
        }
        Ok(out)
    }

    /// Stores the lifecycle document of a sandbox (replacing any).
    pub fn set_lifecycle(&self, id: &str, data: &serde_json::Value) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "INSERT INTO sandbox_lifecycle (id, data) SELECT id, ?2 FROM sandboxes WHERE id = ?1 \
             ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            params![id, serde_json::to_string(data)?],
        )?;
        Self::one(n, id)
    }

    /// Every stored lifecycle document by sandbox id.
    pub fn lifecycles(&self) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id, data FROM sandbox_lifecycle")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (id, data) = row?;
            out.insert(id, serde_json::from_str(&data)?);
        }
        Ok(out)
    }

    /// In one transaction: sets state and end time, the agent (when given) and the lifecycle
    /// document (pause and resume).
    pub fn set_lifecycle_state(
        &self,
        id: &str,
        state: SandboxState,
        end_at: DateTime<Utc>,
        agent: Option<(i32, u64)>,
        data: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = match agent {
            Some((pid, start)) => tx.execute(
                "UPDATE sandboxes SET state = ?2, end_at_us = ?3, agent_pid = ?4, agent_start_time = ?5 \
                 WHERE id = ?1",
                params![id, state.as_str(), end_at.timestamp_micros(), pid, start as i64],
            )?,
            None => tx.execute(
                "UPDATE sandboxes SET state = ?2, end_at_us = ?3 WHERE id = ?1",
                params![id, state.as_str(), end_at.timestamp_micros()],
            )?,
        };
        Self::one(n, id)?;
        tx.execute(
            "INSERT INTO sandbox_lifecycle (id, data) VALUES (?1, ?2) \
             ON CONFLICT(id) DO UPDATE SET data = excluded.data",
            params![id, serde_json::to_string(data)?],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn one(n: usize, id: &str) -> Result<(), StoreError> {
        if n == 0 {
            Err(StoreError::NotFound(id.to_string()))
        } else {
            Ok(())
        }
    }
}

/// A row as SQLite returns it, before JSON decoding (kept apart so decoding errors are ours).
struct RawRow {
    seq: i64,
    id: String,
    template_id: String,
    alias: Option<String>,
    state: String,
    limits: String,
    metadata: String,
    env_vars: String,
    access_token: Option<String>,
    traffic_token: Option<String>,
    allow_internet_access: bool,
    network: Option<String>,
    started_at_us: i64,
    end_at_us: i64,
    agent_pid: Option<i32>,
    agent_start_time: Option<i64>,
    allowed_commands: Option<String>,
}

impl RawRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: r.get(0)?,
            id: r.get(1)?,
            template_id: r.get(2)?,
            alias: r.get(3)?,
            state: r.get(4)?,
            limits: r.get(5)?,
            metadata: r.get(6)?,
            env_vars: r.get(7)?,
            access_token: r.get(8)?,
            traffic_token: r.get(9)?,
            allow_internet_access: r.get(10)?,
            network: r.get(11)?,
            started_at_us: r.get(12)?,
            end_at_us: r.get(13)?,
            agent_pid: r.get(14)?,
            agent_start_time: r.get(15)?,
            allowed_commands: r.get(16)?,
        })
    }

    fn into_record(self) -> Result<SandboxRecord, StoreError> {
        let state = SandboxState::parse(&self.state).ok_or_else(|| StoreError::Corrupt {
            id: self.id.clone(),
            message: format!("unknown state '{}'", self.state),
        })?;
        Ok(SandboxRecord {
            seq: self.seq,
            template_id: self.template_id,
            alias: self.alias,
            state,
            limits: serde_json::from_str(&self.limits)?,
            metadata: serde_json::from_str(&self.metadata)?,
            env_vars: serde_json::from_str(&self.env_vars)?,
            access_token: self.access_token,
            traffic_token: self.traffic_token,
            allow_internet_access: self.allow_internet_access,
            network: self.network.as_deref().map(serde_json::from_str).transpose()?,
            started_at: from_micros(self.started_at_us),
            end_at: from_micros(self.end_at_us),
            agent_pid: self.agent_pid,
            agent_start_time: self.agent_start_time.map(|t| t as u64),
            allowed_commands: self
                .allowed_commands
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
            id: self.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn record(id: &str) -> SandboxRecord {
        let now = Utc::now();
        SandboxRecord {
            seq: 0,
            id: id.into(),
            template_id: "base".into(),
            alias: Some("base".into()),
            state: SandboxState::Creating,
            limits: StoredLimits {
                cpu_count: 2,
                memory_mb: 512,
                disk_mb: 1024,
                pids: 1024,
            },
            metadata: BTreeMap::from([("k=".to_string(), "v&".to_string())]),
            env_vars: BTreeMap::from([("FOO".to_string(), "bar".to_string())]),
            access_token: Some("tok".into()),
            traffic_token: None,
            allow_internet_access: true,
            network: Some(serde_json::json!({"allowPublicTraffic": true})),
            started_at: now,
            end_at: now + Duration::seconds(300),
            agent_pid: None,
            agent_start_time: None,
            allowed_commands: Some(vec!["ls".into(), "/usr/bin/node".into()]),
        }
    }

    #[test]
    fn insert_get_roundtrip_with_micros() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rec = record("abc");
        let ins = store.insert(&rec).unwrap();
        assert!(ins.seq > 0);
        let got = store.get("abc").unwrap().unwrap();
        assert_eq!(got, ins);
        assert_eq!(got.started_at, trunc_micros(rec.started_at));
        assert_eq!(got.started_at.timestamp_subsec_nanos() % 1000, 0);
        assert_eq!(got.metadata["k="], "v&");
        assert_eq!(got.network, rec.network);
        assert_eq!(got.allowed_commands, rec.allowed_commands);
        assert!(store.get("nope").unwrap().is_none());
    }

    #[test]
    fn duplicate_id_is_rejected() {
        let store = Store::open_in_memory().unwrap();
        store.insert(&record("abc")).unwrap();
        assert!(matches!(store.insert(&record("abc")), Err(StoreError::Duplicate(id)) if id == "abc"));
    }

    #[test]
    fn state_end_and_agent_updates_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.insert(&record("a1")).unwrap();
            store.insert(&record("a2")).unwrap();
            store.set_running("a1", 4242, 987654).unwrap();
            let end = Utc.timestamp_micros(1_800_000_000_123_456).unwrap();
            store.set_end_at("a1", end).unwrap();
            store.set_state("a2", SandboxState::Killing).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let all = store.list().unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"]
        );
        assert!(all[0].seq < all[1].seq);
        assert_eq!(all[0].state, SandboxState::Running);
        assert_eq!(all[0].agent_pid, Some(4242));
        assert_eq!(all[0].agent_start_time, Some(987654));
        assert_eq!(all[0].end_at.timestamp_micros(), 1_800_000_000_123_456);
        assert_eq!(all[1].state, SandboxState::Killing);
    }

    #[test]
    fn updates_on_missing_rows_fail_and_delete_is_idempotent() {
        let store = Store::open_in_memory().unwrap();
        assert!(matches!(
            store.set_state("x", SandboxState::Running),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.set_end_at("x", Utc::now()),
            Err(StoreError::NotFound(_))
        ));
        store.insert(&record("x")).unwrap();
        assert!(store.delete("x").unwrap());
        assert!(!store.delete("x").unwrap());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn wal_mode_and_full_sync_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conn = store.conn();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2);
    }

    #[test]
    fn unsynced_insert_keeps_the_row_and_restores_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.insert_unsynced(&record("u")).unwrap();
            assert!(matches!(
                store.insert_unsynced(&record("u")),
                Err(StoreError::Duplicate(_))
            ));
            let sync: i64 = store
                .conn()
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 2);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list().unwrap()[0].id, "u");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn lifecycle_documents_follow_their_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let doc = serde_json::json!({"autoPause": true, "pauseMemory": false});
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(matches!(
                store.set_lifecycle("a1", &doc),
                Err(StoreError::NotFound(_))
            ));
            store.insert(&record("a1")).unwrap();
            store.insert(&record("a2")).unwrap();
            store.set_lifecycle("a1", &serde_json::json!({"old": 1})).unwrap();
            store.set_lifecycle("a1", &doc).unwrap();
            let end = Utc.timestamp_micros(1_800_000_000_000_001).unwrap();
            store
                .set_lifecycle_state("a2", SandboxState::Paused, end, Some((7, 8)), &doc)
                .unwrap();
            assert!(matches!(
                store.set_lifecycle_state("zz", SandboxState::Paused, end, None, &doc),
                Err(StoreError::NotFound(_))
            ));
        }
        let store = Store::open(dir.path()).unwrap();
        let all = store.lifecycles().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["a1"], doc);
        let a2 = store.get("a2").unwrap().unwrap();
        assert_eq!(a2.state, SandboxState::Paused);
        assert_eq!(a2.end_at.timestamp_micros(), 1_800_000_000_000_001);
        assert_eq!((a2.agent_pid, a2.agent_start_time), (Some(7), Some(8)));
        store.delete("a1").unwrap();
        assert_eq!(store.lifecycles().unwrap().keys().collect::<Vec<_>>(), ["a2"]);
    }

    #[test]
    fn corrupt_state_is_reported() {
        let store = Store::open_in_memory().unwrap();
        store.insert(&record("x")).unwrap();
        store
            .conn()
            .execute("UPDATE sandboxes SET state = 'weird'", [])
            .unwrap();
        assert!(matches!(store.get("x"), Err(StoreError::Corrupt { .. })));
    }
}
