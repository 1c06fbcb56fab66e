//! The `volumes` table (named persistent volumes, `docs/volumes.md`) and `sandbox_volumes`
//! (which sandbox mounts which volume where). A volume row outlives sandboxes and daemon
//! restarts; a mount row goes with its sandbox's row (`ON DELETE CASCADE`) and keeps its volume
//! from being deleted (`REFERENCES volumes`), so "in use" and "unknown volume" are decided
//! inside one transaction each.

use super::{Store, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    /// Creation sequence (assigned on insert; 0 before).
    pub seq: i64,
    /// Volume id, `^[a-z0-9]+$` (also its directory on the host).
    pub id: String,
    /// Unique name; sandboxes mount volumes by name.
    pub name: String,
    /// Size limit in MiB.
    pub size_mb: u64,
    /// The token E2B returns with a volume (for its content API).
    pub token: String,
    /// Creation time in Unix microseconds.
    pub created_at_us: i64,
}

/// A volume mounted in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRow {
    /// The volume's id.
    pub volume_id: String,
    /// The volume's name.
    pub name: String,
    /// Absolute path inside the sandbox.
    pub path: String,
}

/// What [`Store::delete_volume`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeDeletion {
    /// Deleted; the row it had.
    Deleted(VolumeRow),
    /// No volume with that name.
    NotFound,
    /// Sandboxes (ids) that mount it; nothing was deleted.
    InUse(Vec<String>),
}

const VOLUME_COLUMNS: &str = "seq, id, name, size_mb, token, created_at_us";

fn volume_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRow> {
    Ok(VolumeRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        size_mb: r.get::<_, i64>(3)? as u64,
        token: r.get(4)?,
        created_at_us: r.get(5)?,
    })
}

fn by_id_or_name(conn: &Connection, key: &str) -> Result<Option<VolumeRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"),
            params![key],
            volume_row,
        )
        .optional()?)
}

impl Store {
    /// Inserts a volume; [`StoreError::Duplicate`] (with the name) if the name or id is taken.
    pub fn insert_volume(&self, row: &VolumeRow) -> Result<VolumeRow, StoreError> {
        let conn = self.conn();
        let res = conn.execute(
            "INSERT INTO volumes (id, name, size_mb, token, created_at_us) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.id, row.name, row.size_mb as i64, row.token, row.created_at_us],
        );
        match res {
            Ok(_) => Ok(VolumeRow {
                seq: conn.last_insert_rowid(),
                ..row.clone()
            }),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Duplicate(row.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A volume by id, or else by name.
    pub fn get_volume(&self, id_or_name: &str) -> Result<Option<VolumeRow>, StoreError> {
        by_id_or_name(&self.conn(), id_or_name)
    }

    /// All volumes, oldest first.
    pub fn list_volumes(&self) -> Result<Vec<VolumeRow>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {VOLUME_COLUMNS} FROM volumes ORDER BY seq"))?;
        let rows = st.query_map([], volume_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the row of a volume (by id or name) unless a sandbox row mounts it.
    pub fn delete_volume(&self, id_or_name: &str) -> Result<VolumeDeletion, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(row) = by_id_or_name(&tx, id_or_name)? else {
            return Ok(VolumeDeletion::NotFound);
        };
        let users: Vec<String> = {
            let mut st = tx.prepare(
                "SELECT DISTINCT sandbox_id FROM sandbox_volumes WHERE volume_id = ?1 ORDER BY sandbox_id",
            )?;
            let ids = st.query_map(params![row.id], |r| r.get(0))?;
            ids.collect::<Result<_, _>>()?
        };
        if !users.is_empty() {
            return Ok(VolumeDeletion::InUse(users));
        }
        tx.execute("DELETE FROM volumes WHERE id = ?1", params![row.id])?;
        tx.commit()?;
        Ok(VolumeDeletion::Deleted(row))
    }

    /// Records the volumes a sandbox (its row must exist) mounts, given as `(name, path)`, all or
    /// none; [`StoreError::VolumeNotFound`] for an unknown name.
    pub fn attach_volumes(
        &self,
        sandbox_id: &str,
        mounts: &[(String, String)],
    ) -> Result<Vec<MountRow>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(mounts.len());
        for (name, path) in mounts {
            let id: Option<String> = tx
                .query_row("SELECT id FROM volumes WHERE name = ?1", params![name], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(volume_id) = id else {
                return Err(StoreError::VolumeNotFound(name.clone()));
            };
            tx.execute(
                "INSERT INTO sandbox_volumes (sandbox_id, volume_id, path) VALUES (?1, ?2, ?3)",
                params![sandbox_id, volume_id, path],
            )?;
            out.push(MountRow {
                volume_id,
                name: name.clone(),
                path: path.clone(),
            });
        }
        tx.commit()?;
        Ok(out)
    }

    /// The volumes a sandbox mounts, in the order they were given.
    pub fn sandbox_volumes(&self, sandbox_id: &str) -> Result<Vec<MountRow>, StoreError> {
        Ok(self
            .all_sandbox_volumes(Some(sandbox_id))?
            .remove(sandbox_id)
            .unwrap_or_default())
    }

    /// The volumes of every sandbox that mounts any (or of one sandbox), by sandbox id.
    pub fn all_sandbox_volumes(
        &self,
        only: Option<&str>,
    ) -> Result<BTreeMap<String, Vec<MountRow>>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT m.sandbox_id, m.volume_id, v.name, m.path FROM sandbox_volumes m \
             JOIN volumes v ON v.id = m.volume_id WHERE ?1 IS NULL OR m.sandbox_id = ?1 ORDER BY m.rowid",
        )?;
        let rows = st.query_map(params![only], |r| {
            Ok((
                r.get::<_, String>(0)?,
                MountRow {
                    volume_id: r.get(1)?,
                    name: r.get(2)?,
                    path: r.get(3)?,
                },
            ))
        })?;
        let mut out: BTreeMap<String, Vec<MountRow>> = BTreeMap::new();
        for r in rows {
            let (sandbox, m) = r?;
            out.entry(sandbox).or_default().push(m);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SandboxRecord, SandboxState, StoredLimits};

    fn vol(id: &str, name: &str) -> VolumeRow {
        VolumeRow {
            seq: 0,
            id: id.into(),
            name: name.into(),
            size_mb: 64,
            token: "t".into(),
            created_at_us: 1,
        }
    }

    fn sandbox(s: &Store, id: &str) {
        let now = chrono::Utc::now();
        s.insert(&SandboxRecord {
            seq: 0,
            id: id.into(),
            template_id: "base".into(),
            alias: None,
            state: SandboxState::Running,
            limits: StoredLimits {
                cpu_count: 1,
                memory_mb: 128,
                disk_mb: 0,
                pids: 10,
            },
            metadata: Default::default(),
            env_vars: Default::default(),
            access_token: None,
            traffic_token: None,
            allow_internet_access: true,
            network: None,
            started_at: now,
            end_at: now,
            agent_pid: None,
            agent_start_time: None,
            allowed_commands: None,
        })
        .unwrap();
    }

    #[test]
    fn volumes_mounts_and_deletion() {
        let s = Store::open_in_memory().unwrap();
        let a = s.insert_volume(&vol("va", "alpha")).unwrap();
        assert!(a.seq > 0);
        assert!(
            matches!(s.insert_volume(&vol("vb", "alpha")), Err(StoreError::Duplicate(n)) if n == "alpha")
        );
        s.insert_volume(&vol("vb", "beta")).unwrap();
        assert_eq!(s.get_volume("va").unwrap().unwrap().name, "alpha");
        assert_eq!(s.get_volume("beta").unwrap().unwrap().id, "vb");
        assert_eq!(s.get_volume("nope").unwrap(), None);
        assert_eq!(s.list_volumes().unwrap().len(), 2);

        sandbox(&s, "s1");
        sandbox(&s, "s2");
        let m = s
            .attach_volumes(
                "s1",
                &[("alpha".into(), "/data".into()), ("beta".into(), "/b".into())],
            )
            .unwrap();
        assert_eq!(m[1].volume_id, "vb");
        s.attach_volumes("s2", &[("alpha".into(), "/x".into())]).unwrap();
        // an unknown name attaches nothing
        assert!(matches!(
            s.attach_volumes("s2", &[("beta".into(), "/y".into()), ("gone".into(), "/z".into())]),
            Err(StoreError::VolumeNotFound(n)) if n == "gone"
        ));
        assert_eq!(s.sandbox_volumes("s2").unwrap().len(), 1);
        assert_eq!(s.all_sandbox_volumes(None).unwrap().len(), 2);
        assert_eq!(s.sandbox_volumes("s1").unwrap()[0].path, "/data");

        assert_eq!(
            s.delete_volume("alpha").unwrap(),
            VolumeDeletion::InUse(vec!["s1".into(), "s2".into()])
        );
        s.delete("s1").unwrap();
        s.delete("s2").unwrap();
        assert!(matches!(s.delete_volume("alpha").unwrap(), VolumeDeletion::Deleted(r) if r.id == "va"));
        assert_eq!(s.delete_volume("alpha").unwrap(), VolumeDeletion::NotFound);
        assert!(s.sandbox_volumes("s1").unwrap().is_empty());
    }
}
