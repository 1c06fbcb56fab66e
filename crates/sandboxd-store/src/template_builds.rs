//! The `template_builds` and `template_tags` tables: templates made with the template build
//! API (`docs/templates.md`). A template is a name with a stable template id; each build is a
//! row; a tag (`default` unless named) points at one build of the template. The domain keeps
//! the build's configuration (resources, environment, start command) as JSON, and a template's
//! own settings (`template_settings`, kept across its builds) as JSON too.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, Row, params};

/// One build of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRow {
    /// Creation sequence (assigned on insert; 0 before).
    pub seq: i64,
    /// The build id (a UUID).
    pub build_id: String,
    /// The template's stable id (the same for every build of the name).
    pub template_id: String,
    /// The template's name.
    pub name: String,
    /// `waiting`, `building`, `ready` or `error`.
    pub status: String,
    /// The runtime template (directory under `<data>/templates`) once ready.
    pub runtime_template: Option<String>,
    /// The domain's JSON configuration of the build.
    pub config: String,
    /// Why the build failed.
    pub reason: Option<String>,
    /// The step that failed.
    pub reason_step: Option<String>,
    /// Creation time in Unix microseconds.
    pub created_at_us: i64,
    /// When the build ended.
    pub finished_at_us: Option<i64>,
}

/// A tag of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    /// The tag.
    pub tag: String,
    /// The build it names.
    pub build_id: String,
    /// When it was assigned (Unix microseconds).
    pub created_at_us: i64,
}

const COLUMNS: &str = "seq, build_id, template_id, name, status, runtime_template, config, reason, reason_step, created_at_us, finished_at_us";

fn build_row(r: &Row<'_>) -> rusqlite::Result<BuildRow> {
    Ok(BuildRow {
        seq: r.get(0)?,
        build_id: r.get(1)?,
        template_id: r.get(2)?,
        name: r.get(3)?,
        status: r.get(4)?,
        runtime_template: r.get(5)?,
        config: r.get(6)?,
        reason: r.get(7)?,
        reason_step: r.get(8)?,
        created_at_us: r.get(9)?,
        finished_at_us: r.get(10)?,
    })
}

impl Store {
    /// The template id of `name` (or `name` itself if it is a template id), if any build of it
    /// exists.
    pub fn built_template_id(&self, name_or_id: &str) -> Result<Option<(String, String)>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT template_id, name FROM template_builds WHERE name = ?1 OR template_id = ?1 ORDER BY seq DESC LIMIT 1",
                params![name_or_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Inserts a build row; returns it with its seq.
    pub fn insert_build(&self, row: &BuildRow) -> Result<BuildRow, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO template_builds (build_id, template_id, name, status, runtime_template, config, reason, reason_step, created_at_us, finished_at_us) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                row.build_id,
                row.template_id,
                row.name,
                row.status,
                row.runtime_template,
                row.config,
                row.reason,
                row.reason_step,
                row.created_at_us,
                row.finished_at_us
            ],
        )?;
        Ok(BuildRow {
            seq: conn.last_insert_rowid(),
            ..row.clone()
        })
    }

    /// A build by id.
    pub fn get_build(&self, build_id: &str) -> Result<Option<BuildRow>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM template_builds WHERE build_id = ?1"),
                params![build_id],
                build_row,
            )
            .optional()?)
    }

    /// Replaces the configuration of a build that has not started.
    pub fn set_build_config(&self, build_id: &str, config: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE template_builds SET config = ?2, status = 'building' WHERE build_id = ?1 AND status = 'waiting'",
            params![build_id, config],
        )?;
        Ok(n > 0)
    }

    /// Replaces the configuration of a build (what it found while running: environment, user).
    pub fn update_build_config(&self, build_id: &str, config: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE template_builds SET config = ?2 WHERE build_id = ?1",
            params![build_id, config],
        )?;
        Ok(())
    }

    /// Ends a build: `ready` with its runtime template (and the template's tags move to it in
    /// the same transaction), or `error` with a reason.
    pub fn finish_build(
        &self,
        build_id: &str,
        outcome: Result<&str, (&str, Option<&str>)>,
        tags: &[String],
        now_us: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        match outcome {
            Ok(runtime) => {
                tx.execute(
                    "UPDATE template_builds SET status = 'ready', runtime_template = ?2, finished_at_us = ?3 WHERE build_id = ?1",
                    params![build_id, runtime, now_us],
                )?;
                let template_id: String = tx.query_row(
                    "SELECT template_id FROM template_builds WHERE build_id = ?1",
                    params![build_id],
                    |r| r.get(0),
                )?;
                for tag in tags {
                    tx.execute(
                        "INSERT INTO template_tags (template_id, tag, build_id, created_at_us) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (template_id, tag) DO UPDATE SET build_id = excluded.build_id, created_at_us = excluded.created_at_us",
                        params![template_id, tag, build_id, now_us],
                    )?;
                }
            }
            Err((reason, step)) => {
                tx.execute(
                    "UPDATE template_builds SET status = 'error', reason = ?2, reason_step = ?3, finished_at_us = ?4 WHERE build_id = ?1",
                    params![build_id, reason, step, now_us],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks builds that were running when the daemon stopped as failed.
    pub fn fail_unfinished_builds(&self, now_us: i64) -> Result<usize, StoreError> {
        let conn = self.conn();
        Ok(conn.execute(
            "UPDATE template_builds SET status = 'error', reason = 'the daemon stopped during the build', finished_at_us = ?1 \
             WHERE status IN ('waiting', 'building')",
            params![now_us],
        )?)
    }

    /// The build a tag of a template (by name or id) points at.
    pub fn tagged_build(&self, name_or_id: &str, tag: &str) -> Result<Option<BuildRow>, StoreError> {
        let Some((template_id, _)) = self.built_template_id(name_or_id)? else {
            return Ok(None);
        };
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM template_builds WHERE build_id = \
                     (SELECT build_id FROM template_tags WHERE template_id = ?1 AND tag = ?2)"
                ),
                params![template_id, tag],
                build_row,
            )
            .optional()?)
    }

    /// Points `tags` of the template at `build_id`.
    pub fn assign_tags(
        &self,
        template_id: &str,
        build_id: &str,
        tags: &[String],
        now_us: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for tag in tags {
            tx.execute(
                "INSERT INTO template_tags (template_id, tag, build_id, created_at_us) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (template_id, tag) DO UPDATE SET build_id = excluded.build_id, created_at_us = excluded.created_at_us",
                params![template_id, tag, build_id, now_us],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes tags of a template; returns how many existed.
    pub fn remove_tags(&self, template_id: &str, tags: &[String]) -> Result<usize, StoreError> {
        let conn = self.conn();
        let mut n = 0;
        for tag in tags {
            n += conn.execute(
                "DELETE FROM template_tags WHERE template_id = ?1 AND tag = ?2",
                params![template_id, tag],
            )?;
        }
        Ok(n)
    }

    /// The tags of a template, oldest first.
    pub fn list_tags(&self, template_id: &str) -> Result<Vec<TagRow>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT tag, build_id, created_at_us FROM template_tags WHERE template_id = ?1 ORDER BY created_at_us, tag",
        )?;
        let rows = st.query_map(params![template_id], |r| {
            Ok(TagRow {
                tag: r.get(0)?,
                build_id: r.get(1)?,
                created_at_us: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every build, oldest first.
    pub fn list_builds(&self) -> Result<Vec<BuildRow>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM template_builds ORDER BY seq"))?;
        let rows = st.query_map([], build_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts a sandbox created from a built template.
    pub fn record_template_spawn(&self, template_id: &str, now_us: i64) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO template_usage (template_id, spawn_count, last_spawned_at_us) VALUES (?1, 1, ?2) \
             ON CONFLICT (template_id) DO UPDATE SET spawn_count = spawn_count + 1, last_spawned_at_us = excluded.last_spawned_at_us",
            params![template_id, now_us],
        )?;
        Ok(())
    }

    /// `(spawn count, last spawn µs)` of a built template.
    pub fn template_usage(&self, template_id: &str) -> Result<(i64, Option<i64>), StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT spawn_count, last_spawned_at_us FROM template_usage WHERE template_id = ?1",
                params![template_id],
                |r| Ok((r.get(0)?, Some(r.get(1)?))),
            )
            .optional()?
            .unwrap_or((0, None)))
    }

    /// Deletes a template: its builds and tags. Returns the runtime templates its builds used.
    pub fn delete_built_template(&self, template_id: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let runtime: Vec<String> = {
            let mut st = tx.prepare(
                "SELECT runtime_template FROM template_builds WHERE template_id = ?1 AND runtime_template IS NOT NULL",
            )?;
            let rows = st.query_map(params![template_id], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        tx.execute(
            "DELETE FROM template_tags WHERE template_id = ?1",
            params![template_id],
        )?;
        tx.execute(
            "DELETE FROM template_builds WHERE template_id = ?1",
            params![template_id],
        )?;
        tx.execute(
            "DELETE FROM template_usage WHERE template_id = ?1",
            params![template_id],
        )?;
        tx.execute(
            "DELETE FROM template_settings WHERE template_id = ?1",
            params![template_id],
        )?;
        tx.commit()?;
        Ok(runtime)
    }

    /// The settings (the domain's JSON) of template `template_id`, if any are set.
    pub fn template_settings(&self, template_id: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT settings FROM template_settings WHERE template_id = ?1",
                params![template_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Replaces the settings of template `template_id` (`None`: removes them).
    pub fn set_template_settings(&self, template_id: &str, settings: Option<&str>) -> Result<(), StoreError> {
        let conn = self.conn();
        match settings {
            Some(s) => conn.execute(
                "INSERT INTO template_settings (template_id, settings) VALUES (?1, ?2) \
                 ON CONFLICT (template_id) DO UPDATE SET settings = excluded.settings",
                params![template_id, s],
            )?,
            None => conn.execute(
                "DELETE FROM template_settings WHERE template_id = ?1",
                params![template_id],
            )?,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(build: &str, template: &str, name: &str) -> BuildRow {
        BuildRow {
            seq: 0,
            build_id: build.into(),
            template_id: template.into(),
            name: name.into(),
            status: "waiting".into(),
            runtime_template: None,
            config: "{}".into(),
            reason: None,
            reason_step: None,
            created_at_us: 1,
            finished_at_us: None,
        }
    }

    #[test]
    fn tags_follow_ready_builds() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.insert_build(&row("b1", "t1", "app")).unwrap();
        assert_eq!(
            s.built_template_id("app").unwrap(),
            Some(("t1".into(), "app".into()))
        );
        assert_eq!(
            s.built_template_id("t1").unwrap(),
            Some(("t1".into(), "app".into()))
        );
        assert!(s.set_build_config("b1", "{\"a\":1}").unwrap());
        assert!(
            !s.set_build_config("b1", "{}").unwrap(),
            "only a waiting build takes its steps"
        );
        assert_eq!(s.tagged_build("app", "default").unwrap(), None);
        s.finish_build("b1", Ok("bld-1"), &["default".into(), "v1".into()], 5)
            .unwrap();
        let b = s.tagged_build("app", "v1").unwrap().unwrap();
        assert_eq!(
            (b.status.as_str(), b.runtime_template.as_deref()),
            ("ready", Some("bld-1"))
        );
        // a failed build moves no tag
        s.insert_build(&row("b2", "t1", "app")).unwrap();
        s.finish_build("b2", Err(("boom", Some("2"))), &["default".into()], 6)
            .unwrap();
        assert_eq!(s.tagged_build("app", "default").unwrap().unwrap().build_id, "b1");
        let b2 = s.get_build("b2").unwrap().unwrap();
        assert_eq!(
            (b2.reason.as_deref(), b2.reason_step.as_deref()),
            (Some("boom"), Some("2"))
        );
        s.assign_tags("t1", "b1", &["stable".into()], 7).unwrap();
        assert_eq!(s.list_tags("t1").unwrap().len(), 3);
        assert_eq!(s.remove_tags("t1", &["stable".into(), "nope".into()]).unwrap(), 1);
        s.record_template_spawn("t1", 10).unwrap();
        s.record_template_spawn("t1", 11).unwrap();
        assert_eq!(s.template_usage("t1").unwrap(), (2, Some(11)));
        assert_eq!(s.template_usage("t2").unwrap(), (0, None));
        assert_eq!(s.template_settings("t1").unwrap(), None);
        s.set_template_settings("t1", Some("{\"public\":true}")).unwrap();
        s.set_template_settings("t1", Some("{\"public\":false}")).unwrap();
        assert_eq!(
            s.template_settings("t1").unwrap().as_deref(),
            Some("{\"public\":false}")
        );
        s.set_template_settings("base", Some("{}")).unwrap();
        s.set_template_settings("base", None).unwrap();
        assert_eq!(s.template_settings("base").unwrap(), None);
        assert_eq!(s.delete_built_template("t1").unwrap(), vec!["bld-1".to_string()]);
        assert_eq!(s.template_usage("t1").unwrap(), (0, None));
        assert_eq!(
            s.template_settings("t1").unwrap(),
            None,
            "settings go with the template"
        );
        assert_eq!(s.built_template_id("app").unwrap(), None);
        assert!(s.list_tags("t1").unwrap().is_empty());
    }

    #[test]
    fn unfinished_builds_fail_at_restart() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.insert_build(&row("b1", "t1", "app")).unwrap();
        assert_eq!(s.fail_unfinished_builds(9).unwrap(), 1);
        assert_eq!(s.get_build("b1").unwrap().unwrap().status, "error");
    }
}
