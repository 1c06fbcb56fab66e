//! Snapshots and fork (`docs/snapshots.md`, `api/openapi.yaml`).
//!
//! A snapshot is a read-only template made by the backend from a running sandbox's writable
//! layers; its row lives in the registry's `snapshots` table. Its template id (the directory
//! name) is `s` + 20 `[a-z0-9]`; its snapshot id is `<name>:default` when named, else
//! `<template id>:default`. Deleting marks the row deleted at once (the name is free and the id
//! stops resolving); the directory is removed once no sandbox row uses it. A fork is a hidden
//! snapshot (kind `fork`), deleted as soon as its forks were created.

use crate::config::DaemonLimits;
use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::ids::new_sandbox_id;
use crate::limits::validate_timeout;
use crate::params::CreateParams;
use crate::sandbox::LiveSandbox;
use crate::templates::parse_template_ref;
use sandboxd_runtime::SnapshotLimits;
use sandboxd_store::{SnapshotResolution, SnapshotRow};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How often deleted snapshot templates are looked at for removal.
const GC_INTERVAL: Duration = Duration::from_secs(5);
/// Kind of listed snapshots.
pub const KIND_SNAPSHOT: &str = "snapshot";
/// Kind of the hidden templates of forks.
pub const KIND_FORK: &str = "fork";

/// `SnapshotInfo` of the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

impl SnapshotInfo {
    /// The API view of a row.
    pub fn of(row: &SnapshotRow) -> Self {
        match &row.name {
            Some(n) => Self {
                snapshot_id: format!("{n}:default"),
                names: vec![n.clone()],
            },
            None => Self {
                snapshot_id: format!("{}:default", row.template_id),
                names: Vec::new(),
            },
        }
    }
}

/// Validates a snapshot name: `[a-z0-9._-]`, 1..=100 characters, starting with a letter or
/// digit (no namespace, no tag).
pub fn validate_name(name: &str) -> Result<(), DaemonError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(DaemonError::InvalidInput(format!(
            "invalid snapshot name '{name}': use 1 to 100 characters of a-z, 0-9, '-', '_' and '.'"
        )))
    }
}

/// The size limits of a snapshot of a sandbox with disk size `disk_mb` (0: unlimited).
fn snapshot_limits(limits: &DaemonLimits, disk_mb: u64) -> SnapshotLimits {
    let mb = match (disk_mb, limits.max_snapshot_mb) {
        (0, m) | (m, 0) => m,
        (d, m) => d.min(m),
    };
    SnapshotLimits {
        max_bytes: mb.saturating_mul(1 << 20),
        store_max_bytes: limits.max_snapshot_store_mb.saturating_mul(1 << 20),
    }
}

/// Query of `GET /snapshots`.
#[derive(Debug, Default, Clone)]
pub struct SnapshotQuery {
    pub sandbox_id: Option<String>,
    pub name: Option<String>,
    pub limit: usize,
    pub after_seq: Option<i64>,
}

/// One fork's outcome.
pub type ForkResult = Result<Arc<LiveSandbox>, DaemonError>;

impl Daemon {
    /// Copies the source's layers into a new template and records it.
    async fn take(
        self: &Arc<Self>,
        src: &LiveSandbox,
        name: Option<String>,
        kind: &str,
    ) -> Result<SnapshotRow, DaemonError> {
        self.ensure_snapshot_gc();
        let template_id = format!("s{}", &new_sandbox_id()[1..]);
        self.backend()
            .snapshot(
                src.id(),
                &src.rec.template_id,
                &template_id,
                snapshot_limits(&self.config().limits, src.rec.limits.disk_mb),
            )
            .await?;
        let row = SnapshotRow {
            seq: 0,
            template_id: template_id.clone(),
            name,
            source_sandbox: src.id().to_string(),
            kind: kind.to_string(),
            deleted: false,
            created_at_us: chrono::Utc::now().timestamp_micros(),
        };
        match self.registry.call(move |s| s.insert_snapshot(&row)).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = self.backend().delete_snapshot_template(&template_id).await;
                Err(e.into())
            }
        }
    }

    /// `POST /sandboxes/{id}/snapshots`.
    pub async fn create_snapshot(
        self: &Arc<Self>,
        id: &str,
        name: Option<String>,
    ) -> Result<SnapshotInfo, DaemonError> {
        if let Some(n) = &name {
            validate_name(n)?;
        }
        let src = self.running(id)?;
        let row = self.take(&src, name, KIND_SNAPSHOT).await?;
        tracing::info!(sandbox = %id, template = %row.template_id, "snapshot created");
        let _ = self.gc_snapshots().await;
        Ok(SnapshotInfo::of(&row))
    }

    /// `GET /snapshots`: newest first; returns the page and the next token (the last seq shown).
    pub async fn list_snapshots(
        self: &Arc<Self>,
        q: SnapshotQuery,
    ) -> Result<(Vec<SnapshotInfo>, Option<String>), DaemonError> {
        let rows = self.registry.call(|s| s.list_snapshots()).await?;
        let wanted = q.name.as_deref().map(|n| {
            // a namespace and a tag are accepted; a bare name matches a namespaced one
            let bare = n.rsplit('/').next().unwrap_or(n);
            bare.split_once(':').map_or(bare, |(b, _)| b).to_string()
        });
        let mut items: Vec<&SnapshotRow> = rows
            .iter()
            .rev()
            .filter(|r| !r.deleted && r.kind == KIND_SNAPSHOT)
            .filter(|r| q.sandbox_id.as_deref().is_none_or(|s| r.source_sandbox == s))
            .filter(|r| {
                wanted
                    .as_deref()
                    .is_none_or(|w| r.name.as_deref() == Some(w) || r.template_id == w)
            })
            .filter(|r| q.after_seq.is_none_or(|a| r.seq < a))
            .collect();
        let more = items.len() > q.limit;
        items.truncate(q.limit);
        let next = if more {
            items.last().map(|r| r.seq.to_string())
        } else {
            None
        };
        Ok((items.into_iter().map(SnapshotInfo::of).collect(), next))
    }

    /// `DELETE /templates/{id}` for snapshots: `Ok(true)` deleted, `Ok(false)` unknown (404).
    /// `raw` is the decoded path segment (`[namespace/]name[:tag]`).
    pub async fn delete_template(self: &Arc<Self>, raw: &str) -> Result<bool, DaemonError> {
        let (name, _tag) = parse_template_ref(raw)?;
        // templates of the template build API
        if self.delete_built_template(raw).await? {
            return Ok(true);
        }
        let n2 = name.clone();
        let found = self.registry.call(move |s| s.resolve_snapshot(&n2)).await?;
        let template_id = match found {
            SnapshotResolution::Found(t, _) => t,
            SnapshotResolution::Deleted => return Ok(false),
            SnapshotResolution::NotSnapshot => {
                if self.template_exists(&name) {
                    return Err(DaemonError::InvalidInput(format!(
                        "template '{name}' is built into this daemon and cannot be deleted"
                    )));
                }
                return Ok(false);
            }
        };
        let t2 = template_id.clone();
        let done = self.registry.call(move |s| s.mark_snapshot_deleted(&t2)).await?;
        let _ = self.gc_snapshots().await;
        Ok(done)
    }

    /// Removes deleted templates that no sandbox row (creating, running, paused, killing) uses.
    pub async fn gc_snapshots(self: &Arc<Self>) -> Result<usize, DaemonError> {
        let (rows, sandboxes) = self
            .registry
            .call(|s| Ok((s.list_snapshots()?, s.list()?)))
            .await?;
        let used: HashSet<String> = sandboxes
            .into_iter()
            .map(|r| r.template_id)
            .chain(self.sandboxes.all().iter().map(|s| s.rec.template_id.clone()))
            .collect();
        let mut removed = 0;
        for r in rows
            .into_iter()
            .filter(|r| r.deleted && !used.contains(&r.template_id))
        {
            match self.backend().delete_snapshot_template(&r.template_id).await {
                Ok(_) => {
                    let t = r.template_id.clone();
                    self.registry.call(move |s| s.remove_snapshot(&t)).await?;
                    removed += 1;
                }
                Err(e) => tracing::warn!(template = %r.template_id, "removing a deleted snapshot: {e}"),
            }
        }
        Ok(removed)
    }

    /// Starts the background removal of deleted snapshot templates (once per process).
    fn ensure_snapshot_gc(self: &Arc<Self>) {
        static STARTED: OnceLock<()> = OnceLock::new();
        if STARTED.set(()).is_ok() {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(GC_INTERVAL).await;
                    let Some(daemon) = weak.upgrade() else { return };
                    if let Err(e) = daemon.gc_snapshots().await {
                        tracing::warn!("snapshot clean-up: {e}");
                    }
                }
            });
        }
    }

    /// `POST /sandboxes/{id}/fork`: a filesystem checkpoint of the source, then `count` sandboxes
    /// from it with the source's settings and `timeout_secs`.
    pub async fn fork(
        self: &Arc<Self>,
        id: &str,
        timeout_secs: i64,
        count: i64,
    ) -> Result<Vec<ForkResult>, DaemonError> {
        if !(1..=100).contains(&count) {
            return Err(DaemonError::InvalidInput(format!(
                "count must be between 1 and 100, got {count}"
            )));
        }
        validate_timeout(timeout_secs, &self.config().limits)?;
        let src = self.running(id)?;
        let row = self.take(&src, None, KIND_FORK).await?;
        let rec = &src.rec;
        // forks mount the source's volumes (shared, not copied)
        let src_id = rec.id.clone();
        let volume_mounts = self
            .registry
            .call(move |s| s.sandbox_volumes(&src_id))
            .await?
            .into_iter()
            .map(|m| (m.name, m.path))
            .collect();
        let params = CreateParams {
            template: row.template_id.clone(),
            timeout_secs,
            secure: rec.access_token.is_some(),
            allow_internet_access: rec.allow_internet_access,
            metadata: rec.metadata.clone(),
            env_vars: rec.env_vars.clone(),
            network: rec.network.clone(),
            restrict_public_traffic: rec.traffic_token.is_some(),
            cpu_count: Some(rec.limits.cpu_count.into()),
            memory_mb: i64::try_from(rec.limits.memory_mb).ok(),
            disk_mb: i64::try_from(rec.limits.disk_mb).ok(),
            volume_mounts,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            out.push(self.create(params.clone()).await);
        }
        // The forks hold the template's layers; it is removed once they are all gone.
        let t = row.template_id.clone();
        self.registry.call(move |s| s.mark_snapshot_deleted(&t)).await?;
        tracing::info!(sandbox = %id, forks = out.iter().filter(|r| r.is_ok()).count(), "forked");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        for ok in ["a", "my-snap", "snap_1.2", "0x"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a/b", "a:b", "-a", "a b", &"x".repeat(101)] {
            assert!(
                matches!(validate_name(bad), Err(DaemonError::InvalidInput(_))),
                "{bad}"
            );
        }
        let mut r = SnapshotRow {
            seq: 1,
            template_id: "sabc".into(),
            name: None,
            source_sandbox: "i1".into(),
            kind: KIND_SNAPSHOT.into(),
            deleted: false,
            created_at_us: 0,
        };
        assert_eq!(SnapshotInfo::of(&r).snapshot_id, "sabc:default");
        assert!(SnapshotInfo::of(&r).names.is_empty());
        r.name = Some("named".into());
        assert_eq!(
            SnapshotInfo::of(&r),
            SnapshotInfo {
                snapshot_id: "named:default".into(),
                names: vec!["named".into()]
            }
        );
    }

    #[test]
    fn limits_of_a_snapshot() {
        let mut l = DaemonLimits {
            max_snapshot_mb: 100,
            max_snapshot_store_mb: 1000,
            ..DaemonLimits::default()
        };
        let mb = |n: u64| n << 20;
        assert_eq!(
            snapshot_limits(&l, 50).max_bytes,
            mb(50),
            "the disk size is the smaller"
        );
        assert_eq!(snapshot_limits(&l, 500).max_bytes, mb(100), "the daemon maximum");
        assert_eq!(snapshot_limits(&l, 0).max_bytes, mb(100), "unlimited disk");
        assert_eq!(snapshot_limits(&l, 0).store_max_bytes, mb(1000));
        l.max_snapshot_mb = 0;
        assert_eq!(snapshot_limits(&l, 50).max_bytes, mb(50));
        assert_eq!(snapshot_limits(&l, 0).max_bytes, 0, "no limit at all");
    }
}
