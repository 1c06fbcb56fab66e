//! The `secrets` table (the Secrets API, `docs/secrets.md`): one row per secret with its
//! current version's value, encrypted by the domain before it gets here, and the key file that
//! encryption uses (`<data>/secrets.key`, kept apart from the database so a copy of the database
//! alone reveals no value).

use super::{Store, StoreError};
use rusqlite::{Connection, OptionalExtension, params};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Name of the key file in the data dir.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// One secret (its value sealed: nonce and ciphertext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    /// Creation sequence (assigned on insert; 0 before).
    pub seq: i64,
    /// `sec_…` identifier.
    pub id: String,
    /// Unique name (lower case).
    pub name: String,
    /// Current version, 1 for a new secret.
    pub version: i64,
    /// Metadata, a JSON object of strings.
    pub metadata: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last update time, Unix milliseconds.
    pub updated_at_ms: i64,
    /// Nonce of the sealed value.
    pub nonce: Vec<u8>,
    /// The sealed value of the current version.
    pub sealed: Vec<u8>,
}

const SECRET_COLUMNS: &str = "seq, id, name, version, metadata, created_at_ms, updated_at_ms, nonce, sealed";

fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRow> {
    Ok(SecretRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        version: r.get(3)?,
        metadata: r.get(4)?,
        created_at_ms: r.get(5)?,
        updated_at_ms: r.get(6)?,
        nonce: r.get(7)?,
        sealed: r.get(8)?,
    })
}

fn by_id_or_name(conn: &Connection, key: &str) -> Result<Option<SecretRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"),
            params![key],
            secret_row,
        )
        .optional()?)
}

impl Store {
    /// The 32-byte key secrets are sealed with: read from `<data>/secrets.key`, or made from the
    /// OS's random source and written there (mode 0600) on first use.
    pub fn secrets_key(&self) -> Result<[u8; 32], StoreError> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let path = dir.join(SECRETS_KEY_FILE);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(b) => b.as_slice().try_into().map_err(|_| {
                io(std::io::Error::other(format!(
                    "{} holds {} bytes, not a 32-byte key",
                    path.display(),
                    b.len()
                )))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| io(std::io::Error::other(e.to_string())))?;
                let tmp = dir.join(format!(".{SECRETS_KEY_FILE}.tmp"));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(&key).and_then(|()| f.sync_all()).map_err(io)?;
                // never replace a key another writer made first (its secrets would be lost)
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&tmp);
                        Ok(key)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let _ = std::fs::remove_file(&tmp);
                        self.secrets_key()
                    }
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Inserts a secret; [`StoreError::Duplicate`] (with the name) if the name is taken.
    pub fn insert_secret(&self, row: &SecretRow) -> Result<SecretRow, StoreError> {
        let conn = self.conn();
        let res = conn.execute(
            "INSERT INTO secrets (id, name, version, metadata, created_at_ms, updated_at_ms, nonce, sealed) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.id,
                row.name,
                row.version,
                row.metadata,
                row.created_at_ms,
                row.updated_at_ms,
                row.nonce,
                row.sealed
            ],
        );
        match res {
            Ok(_) => Ok(SecretRow {
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

    /// A secret by id, or else by name.
    pub fn get_secret(&self, id_or_name: &str) -> Result<Option<SecretRow>, StoreError> {
        by_id_or_name(&self.conn(), id_or_name)
    }

    /// Up to `limit` secrets created after sequence `after`, oldest first.
    pub fn list_secrets(&self, after: i64, limit: usize) -> Result<Vec<SecretRow>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let rows = st.query_map(params![after, limit as i64], secret_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a new version of a secret (by id or name): `seal` gets the row's id and the
    /// new version and returns `(nonce, sealed)`; `metadata` replaces the stored one when
    /// given. `None` when there is no such secret.
    pub fn update_secret(
        &self,
        id_or_name: &str,
        metadata: Option<&str>,
        updated_at_ms: i64,
        seal: impl FnOnce(&str, i64) -> (Vec<u8>, Vec<u8>),
    ) -> Result<Option<SecretRow>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(row) = by_id_or_name(&tx, id_or_name)? else {
            return Ok(None);
        };
        let version = row.version + 1;
        let (nonce, sealed) = seal(&row.id, version);
        let metadata = metadata.map(str::to_string).unwrap_or(row.metadata.clone());
        tx.execute(
            "UPDATE secrets SET version = ?2, metadata = ?3, updated_at_ms = ?4, nonce = ?5, sealed = ?6 WHERE id = ?1",
            params![row.id, version, metadata, updated_at_ms, nonce, sealed],
        )?;
        tx.commit()?;
        Ok(Some(SecretRow {
            version,
            metadata,
            updated_at_ms,
            nonce,
            sealed,
            ..row
        }))
    }

    /// Deletes a secret by id or name; false when there is none.
    pub fn delete_secret(&self, id_or_name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(row) = by_id_or_name(&tx, id_or_name)? else {
            return Ok(false);
        };
        tx.execute("DELETE FROM secrets WHERE id = ?1", params![row.id])?;
        tx.commit()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: &str) -> SecretRow {
        SecretRow {
            seq: 0,
            id: id.into(),
            name: name.into(),
            version: 1,
            metadata: "{}".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            nonce: vec![1; 24],
            sealed: vec![2; 40],
        }
    }

    #[test]
    fn secrets_crud_by_id_and_name() {
        let s = Store::open_in_memory().unwrap();
        let a = s.insert_secret(&row("sec_a", "openai")).unwrap();
        assert!(matches!(
            s.insert_secret(&row("sec_b", "openai")),
            Err(StoreError::Duplicate(_))
        ));
        s.insert_secret(&row("sec_c", "github")).unwrap();
        assert_eq!(s.get_secret("openai").unwrap().unwrap().id, "sec_a");
        assert_eq!(s.get_secret("sec_a").unwrap().unwrap().name, "openai");
        let page = s.list_secrets(0, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(s.list_secrets(page[0].seq, 10).unwrap()[0].id, "sec_c");
        let up = s
            .update_secret("openai", Some("{\"k\":\"v\"}"), 5, |id, v| {
                assert_eq!((id, v), ("sec_a", 2));
                (vec![3; 24], vec![4; 40])
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (up.version, up.created_at_ms, up.updated_at_ms),
            (2, a.created_at_ms, 5)
        );
        assert_eq!(s.get_secret("sec_a").unwrap().unwrap().sealed, vec![4; 40]);
        assert!(
            s.update_secret("nope", None, 5, |_, _| unreachable!())
                .unwrap()
                .is_none()
        );
        assert!(s.delete_secret("openai").unwrap());
        assert!(!s.delete_secret("openai").unwrap());
        assert!(s.get_secret("sec_a").unwrap().is_none());
    }

    #[test]
    fn the_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let k = s.secrets_key().unwrap();
        assert_eq!(s.secrets_key().unwrap(), k);
        let meta = std::fs::metadata(dir.path().join(SECRETS_KEY_FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        std::fs::write(dir.path().join(SECRETS_KEY_FILE), b"short").unwrap();
        assert!(s.secrets_key().is_err());
    }
}
