//! The registry's schema, as ordered migrations. Migration `n` (1-based) brings a database
//! from `PRAGMA user_version = n - 1` to `n`, in one transaction with the version bump; a
//! database newer than the last migration is refused. Every table is created here and only
//! here (earlier versions created some tables lazily on first use; migration 2 uses
//! `IF NOT EXISTS` so databases of those versions upgrade in place).

use crate::StoreError;
use rusqlite::Connection;

/// The migrations, oldest first. Never edit one that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the sandboxes (the registry's truth about which sandboxes exist)
    "CREATE TABLE IF NOT EXISTS sandboxes (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         id TEXT NOT NULL UNIQUE,
         template_id TEXT NOT NULL,
         alias TEXT,
         state TEXT NOT NULL,
         limits TEXT NOT NULL,
         metadata TEXT NOT NULL,
         env_vars TEXT NOT NULL,
         access_token TEXT,
         traffic_token TEXT,
         allow_internet_access INTEGER NOT NULL,
         network TEXT,
         started_at_us INTEGER NOT NULL,
         end_at_us INTEGER NOT NULL,
         agent_pid INTEGER,
         agent_start_time INTEGER
     );",
    // 2: lifecycle documents, volumes and their mounts, snapshots, idempotency keys
    "CREATE TABLE IF NOT EXISTS sandbox_lifecycle (
         id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
         data TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS volumes (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         id TEXT NOT NULL UNIQUE,
         name TEXT NOT NULL UNIQUE,
         size_mb INTEGER NOT NULL,
         token TEXT NOT NULL,
         created_at_us INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS sandbox_volumes (
         sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
         volume_id TEXT NOT NULL REFERENCES volumes(id),
         path TEXT NOT NULL,
         PRIMARY KEY (sandbox_id, path)
     );
     CREATE INDEX IF NOT EXISTS sandbox_volumes_volume ON sandbox_volumes(volume_id);
     CREATE TABLE IF NOT EXISTS snapshots (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         template_id TEXT NOT NULL UNIQUE,
         name TEXT,
         source_sandbox TEXT NOT NULL,
         kind TEXT NOT NULL,
         deleted INTEGER NOT NULL DEFAULT 0,
         created_at_us INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS idempotency_keys (
         key TEXT PRIMARY KEY,
         fingerprint TEXT NOT NULL,
         run_id TEXT NOT NULL,
         created_at_us INTEGER NOT NULL,
         status INTEGER,
         body TEXT
     );
     CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_at_us);",
    // 3: every create resolves its template name against the snapshots: by name, indexed
    "CREATE INDEX IF NOT EXISTS snapshots_name ON snapshots(name, seq);",
    // 4: secrets (the Secrets API), values sealed by the domain
    "CREATE TABLE IF NOT EXISTS secrets (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         id TEXT NOT NULL UNIQUE,
         name TEXT NOT NULL UNIQUE,
         version INTEGER NOT NULL,
         metadata TEXT NOT NULL,
         created_at_ms INTEGER NOT NULL,
         updated_at_ms INTEGER NOT NULL,
         nonce BLOB NOT NULL,
         sealed BLOB NOT NULL
     );",
    // 5: templates built with the template build API: one row per build, tags point at builds
    "CREATE TABLE IF NOT EXISTS template_builds (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         build_id TEXT NOT NULL UNIQUE,
         template_id TEXT NOT NULL,
         name TEXT NOT NULL,
         status TEXT NOT NULL,
         runtime_template TEXT,
         config TEXT NOT NULL,
         reason TEXT,
         reason_step TEXT,
         created_at_us INTEGER NOT NULL,
         finished_at_us INTEGER
     );
     CREATE INDEX IF NOT EXISTS template_builds_name ON template_builds(name, seq);
     CREATE INDEX IF NOT EXISTS template_builds_template ON template_builds(template_id, seq);
     CREATE TABLE IF NOT EXISTS template_tags (
         template_id TEXT NOT NULL,
         tag TEXT NOT NULL,
         build_id TEXT NOT NULL,
         created_at_us INTEGER NOT NULL,
         PRIMARY KEY (template_id, tag)
     );",
    // 6: how often and when sandboxes of each built template were created
    "CREATE TABLE IF NOT EXISTS template_usage (
         template_id TEXT PRIMARY KEY,
         spawn_count INTEGER NOT NULL,
         last_spawned_at_us INTEGER NOT NULL
     );",
    // 7: a sandbox's command policy (allowedCommands, a JSON array)
    "ALTER TABLE sandboxes ADD COLUMN allowed_commands TEXT;",
    // 8: settings of a template kept across its builds (`PATCH /templates/{id}`, JSON)
    "CREATE TABLE IF NOT EXISTS template_settings (
         template_id TEXT PRIMARY KEY,
         settings TEXT NOT NULL
     );",
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the migrations `conn` has not had yet.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(c: &Connection) -> Vec<String> {
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn fresh_and_version_1_databases_end_with_the_same_schema() {
        let mut fresh = Connection::open_in_memory().unwrap();
        migrate(&mut fresh).unwrap();
        let v: i64 = fresh
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // a version-1 database of an earlier sandboxd, with a lazily created table and a row
        let mut old = Connection::open_in_memory().unwrap();
        old.execute_batch(MIGRATIONS[0]).unwrap();
        old.execute_batch(
            "CREATE TABLE snapshots (seq INTEGER PRIMARY KEY AUTOINCREMENT, template_id TEXT NOT NULL UNIQUE,
             name TEXT, source_sandbox TEXT NOT NULL, kind TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
             created_at_us INTEGER NOT NULL);
             INSERT INTO snapshots (template_id, name, source_sandbox, kind, created_at_us) VALUES ('s1', 'n', 'i1', 'snapshot', 1);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        migrate(&mut old).unwrap();
        assert_eq!(tables(&old), tables(&fresh));
        let kept: i64 = old
            .query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1, "rows survive the upgrade");
        // idempotent: nothing left to do
        migrate(&mut old).unwrap();
    }
}
