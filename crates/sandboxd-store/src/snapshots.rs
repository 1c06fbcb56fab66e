//! The `snapshots` table: snapshot templates (and the hidden templates of forks) made from
//! sandboxes (`docs/snapshots.md`). A row outlives its source sandbox and daemon restarts.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// One snapshot template build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// Creation sequence (assigned on insert; 0 before).
    pub seq: i64,
    /// The template id (its directory under `<data>/templates`), `^[a-z0-9]+$`.
    pub template_id: String,
    /// The snapshot's name, if named.
    pub name: Option<String>,
    /// Id of the sandbox it was taken from.
    pub source_sandbox: String,
    /// `snapshot` (listed) or `fork` (hidden, removed once its forks are gone).
    pub kind: String,
    /// Deleted by the API (or replaced by a newer build of the same name): hidden, removed from
    /// disk once no sandbox uses it.
    pub deleted: bool,
    /// Creation time in Unix microseconds.
    pub created_at_us: i64,
}

/// How a template name resolves against the snapshots table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotResolution {
    /// A live snapshot (or fork) template: `(template id, alias)`.
    Found(String, String),
    /// A deleted (or replaced) build: not usable any more.
    Deleted,
    /// Not a snapshot: resolve as a plain template.
    NotSnapshot,
}

impl Store {
    /// Resolves `name` (a snapshot name or template id, namespace and tag already stripped):
    /// the newest live build of that name, else the row with that template id. Two indexed
    /// lookups (the create path runs this for every create).
    pub fn resolve_snapshot(&self, name: &str) -> Result<SnapshotResolution, StoreError> {
        let conn = self.conn();
        let by_name: Option<String> = conn
            .query_row(
                "SELECT template_id FROM snapshots WHERE name = ?1 AND deleted = 0 ORDER BY seq DESC LIMIT 1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(t) = by_name {
            return Ok(SnapshotResolution::Found(t, name.to_string()));
        }
        let by_id: Option<(String, bool)> = conn
            .query_row(
                "SELECT template_id, deleted FROM snapshots WHERE template_id = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match by_id {
            Some((t, false)) => SnapshotResolution::Found(t, name.to_string()),
            Some((_, true)) => SnapshotResolution::Deleted,
            None => SnapshotResolution::NotSnapshot,
        })
    }

    /// Inserts a snapshot row; with a name, older live rows of that name are marked deleted in
    /// the same transaction (a named snapshot gets a new build). Returns the row with its seq.
    pub fn insert_snapshot(&self, row: &SnapshotRow) -> Result<SnapshotRow, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(name) = &row.name {
            tx.execute(
                "UPDATE snapshots SET deleted = 1 WHERE name = ?1 AND kind = ?2",
                params![name, row.kind],
            )?;
        }
        tx.execute(
            "INSERT INTO snapshots (template_id, name, source_sandbox, kind, deleted, created_at_us) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                row.template_id,
                row.name,
                row.source_sandbox,
                row.kind,
                row.deleted,
                row.created_at_us
            ],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        Ok(SnapshotRow { seq, ..row.clone() })
    }

    /// All snapshot rows (deleted ones too), oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT seq, template_id, name, source_sandbox, kind, deleted, created_at_us FROM snapshots ORDER BY seq",
        )?;
        let rows = st.query_map([], |r| {
            Ok(SnapshotRow {
                seq: r.get(0)?,
                template_id: r.get(1)?,
                name: r.get(2)?,
                source_sandbox: r.get(3)?,
                kind: r.get(4)?,
                deleted: r.get(5)?,
                created_at_us: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a row deleted; `false` if there was no live row with this template id.
    pub fn mark_snapshot_deleted(&self, template_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE snapshots SET deleted = 1 WHERE template_id = ?1 AND deleted = 0",
            params![template_id],
        )?;
        Ok(n > 0)
    }

    /// Removes a row for good (its template directory is gone).
    pub fn remove_snapshot(&self, template_id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM snapshots WHERE template_id = ?1",
            params![template_id],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: &str, name: Option<&str>) -> SnapshotRow {
        SnapshotRow {
            seq: 0,
            template_id: t.into(),
            name: name.map(str::to_string),
            source_sandbox: "src".into(),
            kind: "snapshot".into(),
            deleted: false,
            created_at_us: 1,
        }
    }

    #[test]
    fn insert_rename_delete() {
        let s = Store::open_in_memory().unwrap();
        let a = s.insert_snapshot(&row("s1", Some("n"))).unwrap();
        assert!(a.seq > 0);
        s.insert_snapshot(&row("s2", Some("n"))).unwrap();
        s.insert_snapshot(&row("s3", None)).unwrap();
        let all = s.list_snapshots().unwrap();
        assert_eq!(all.len(), 3);
        assert!(all[0].deleted, "older build of the same name replaced");
        assert!(!all[1].deleted && !all[2].deleted);
        assert!(
            s.insert_snapshot(&row("s3", None)).is_err(),
            "duplicate template id"
        );
        assert!(s.mark_snapshot_deleted("s3").unwrap());
        assert!(!s.mark_snapshot_deleted("s3").unwrap());
        s.remove_snapshot("s3").unwrap();
        assert_eq!(s.list_snapshots().unwrap().len(), 2);
    }

    #[test]
    fn resolution() {
        let s = Store::open_in_memory().unwrap();
        let mk = |t: &str, n: Option<&str>| SnapshotRow {
            seq: 0,
            template_id: t.into(),
            name: n.map(str::to_string),
            source_sandbox: "i1".into(),
            kind: "snapshot".into(),
            deleted: false,
            created_at_us: 0,
        };
        s.insert_snapshot(&mk("s1", Some("n"))).unwrap();
        s.insert_snapshot(&mk("s2", Some("n"))).unwrap();
        assert_eq!(
            s.resolve_snapshot("n").unwrap(),
            SnapshotResolution::Found("s2".into(), "n".into())
        );
        assert_eq!(
            s.resolve_snapshot("s1").unwrap(),
            SnapshotResolution::Deleted,
            "replaced build"
        );
        assert_eq!(
            s.resolve_snapshot("s2").unwrap(),
            SnapshotResolution::Found("s2".into(), "s2".into())
        );
        assert_eq!(
            s.resolve_snapshot("base").unwrap(),
            SnapshotResolution::NotSnapshot
        );
    }
}
