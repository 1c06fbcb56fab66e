//! The template build API's operations (`impl Daemon`): request a build, upload its files,
//! start it, follow it; tags; resolve and delete built templates.

use super::logs::LogLine;
use super::spec::{BuildConfig, BuildRequest, BuildStart, check_steps, check_tag, is_files_hash, split_name};
use crate::daemon::Daemon;
use crate::error::DaemonError;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sandboxd_store::BuildRow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Directory under the data dir where uploaded build files are kept, by files hash.
pub(crate) const FILES_DIR: &str = "template-files";
/// Largest upload of a `COPY` step's files.
pub const MAX_UPLOAD_BYTES: u64 = 8 << 30;
/// How long an upload link stays valid.
const UPLOAD_LINK_TTL: Duration = Duration::from_secs(3600);
/// Most log lines a status call returns.
pub const MAX_LOG_PAGE: usize = 100;
/// Built-in templates whose names a build may not take.
const RESERVED: &[&str] = &["base", "code-interpreter-v1", "code-interpreter", "scratch"];

/// A build that was requested (`POST /v3/templates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedBuild {
    /// The template's stable id.
    pub template_id: String,
    /// The new build.
    pub build_id: String,
    /// The template's name.
    pub name: String,
    /// Tags the build gets when ready.
    pub tags: Vec<String>,
}

/// Where to upload a step's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLink {
    /// The files are already here.
    pub present: bool,
    /// The one-use token of the upload URL (`PUT /template-files/{token}`).
    pub token: String,
}

/// A build's status and a page of its logs.
#[derive(Debug, Clone)]
pub struct BuildStatusView {
    /// The template's id.
    pub template_id: String,
    /// The build's id.
    pub build_id: String,
    /// `waiting`, `building`, `ready` or `error`.
    pub status: String,
    /// Log lines from the asked offset.
    pub log_entries: Vec<LogLine>,
    /// Why it failed.
    pub reason: Option<(String, Option<String>, Vec<LogLine>)>,
}

/// A ready build a template reference resolved to.
#[derive(Debug, Clone)]
pub struct BuiltTemplate {
    /// The runtime template sandboxes are made from.
    pub runtime: String,
    /// The build's configuration.
    pub config: BuildConfig,
    /// The template's name.
    pub name: String,
    /// The template's stable id.
    pub template_id: String,
}

/// A built template, for listings.
#[derive(Debug, Clone)]
pub struct TemplateSummary {
    /// Stable id.
    pub template_id: String,
    /// Name.
    pub name: String,
    /// Its newest build.
    pub latest: BuildRow,
    /// Number of builds.
    pub builds: usize,
    /// Its configuration (of the newest build).
    pub config: BuildConfig,
    /// Sandboxes created from it.
    pub spawn_count: i64,
    /// When the last one was (µs).
    pub last_spawned_at_us: Option<i64>,
    /// Its own settings (`PATCH /templates/{id}`).
    pub settings: crate::template_settings::TemplateSettings,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", &crate::ids::new_token()[..20])
}

fn new_build_id() -> String {
    // a UUID (the SDKs show it; some parse it)
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Daemon {
    fn builds_dir(&self) -> Result<std::path::PathBuf, DaemonError> {
        let d = &self.config.builds.data_dir;
        if d.as_os_str().is_empty() {
            return Err(DaemonError::NotSupportedHere(
                "template builds need a daemon with a data dir".into(),
            ));
        }
        Ok(d.clone())
    }

    /// `POST /v3/templates`: a new build of template `name` (made on first use).
    pub async fn request_build(&self, req: BuildRequest) -> Result<RequestedBuild, DaemonError> {
        self.builds_dir()?;
        let raw = req
            .name
            .or(req.alias)
            .ok_or_else(|| DaemonError::InvalidInput("a build needs the template's name".into()))?;
        let (name, tag) = split_name(&raw)?;
        if RESERVED.contains(&name.as_str()) || super::gc::is_build_runtime_template(&name) {
            return Err(DaemonError::Conflict(format!(
                "'{name}' is the name of a template built into sandboxd or of a build's runtime template"
            )));
        }
        let n2 = name.clone();
        if let sandboxd_store::SnapshotResolution::Found(..) =
            self.registry.call(move |s| s.resolve_snapshot(&n2)).await?
        {
            return Err(DaemonError::Conflict(format!(
                "'{name}' is the name of a snapshot"
            )));
        }
        let mut tags: Vec<String> = Vec::new();
        match tag {
            Some(t) => tags.push(t),
            None if req.tags.as_ref().is_none_or(|t| t.is_empty()) => tags.push("default".into()),
            None => {}
        }
        for t in req.tags.unwrap_or_default() {
            check_tag(&t)?;
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        if tags.len() > 64 {
            return Err(DaemonError::InvalidInput("at most 64 tags".into()));
        }
        // the template's resources must be ones this daemon gives
        let defaults = self.config.template_defaults;
        let limits = crate::limits::resolve_limits(
            &defaults,
            &self.config.limits,
            req.cpu_count,
            req.memory_mb,
            None,
        )?;
        let config = BuildConfig {
            cpu_count: req.cpu_count.map(|_| limits.cpu_count),
            memory_mb: req.memory_mb.map(|_| limits.memory_mb),
            tags: tags.clone(),
            ..Default::default()
        };
        let n2 = name.clone();
        let template_id = match self.registry.call(move |s| s.built_template_id(&n2)).await? {
            Some((id, _)) => id,
            None => new_id("t"),
        };
        let row = BuildRow {
            seq: 0,
            build_id: new_build_id(),
            template_id,
            name: name.clone(),
            status: "waiting".into(),
            runtime_template: None,
            config: serde_json::to_string(&config).map_err(|e| DaemonError::Internal(e.to_string()))?,
            reason: None,
            reason_step: None,
            created_at_us: now_us(),
            finished_at_us: None,
        };
        let row = self.registry.call(move |s| s.insert_build(&row)).await?;
        Ok(RequestedBuild {
            template_id: row.template_id,
            build_id: row.build_id,
            name,
            tags,
        })
    }

    /// The build `build_id` of template `template_id` (by id or name).
    async fn build_of(&self, template_id: &str, build_id: &str) -> Result<BuildRow, DaemonError> {
        let b = build_id.to_string();
        let row = self.registry.call(move |s| s.get_build(&b)).await?;
        match row {
            Some(r) if r.template_id == template_id || r.name == template_id => Ok(r),
            _ => Err(DaemonError::NotFound(format!(
                "build '{build_id}' of template '{template_id}' not found"
            ))),
        }
    }

    /// `GET /templates/{id}/files/{hash}`: whether a step's files are here, and a token to
    /// upload them with.
    pub async fn upload_link(&self, template_id: &str, hash: &str) -> Result<UploadLink, DaemonError> {
        let dir = self.builds_dir()?;
        if !is_files_hash(hash) {
            return Err(DaemonError::InvalidInput(format!("invalid files hash '{hash}'")));
        }
        let t = template_id.to_string();
        if self
            .registry
            .call(move |s| s.built_template_id(&t))
            .await?
            .is_none()
        {
            return Err(DaemonError::TemplateNotFound(template_id.to_string()));
        }
        let present = dir.join(FILES_DIR).join(hash).is_file();
        let token = crate::ids::new_token();
        let mut g = self.builds.uploads.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        g.retain(|_, (_, exp)| *exp > now);
        if g.len() >= 10_000 {
            return Err(DaemonError::TooManySandboxes(
                "too many upload links are open; retry later".into(),
            ));
        }
        g.insert(token.clone(), (hash.to_string(), now + UPLOAD_LINK_TTL));
        Ok(UploadLink { present, token })
    }

    /// `PUT /template-files/{token}`: stores an upload (streamed, bounded). The token is used
    /// up by a complete upload.
    pub async fn save_upload<S, E>(&self, token: &str, mut body: S) -> Result<(), DaemonError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let dir = self.builds_dir()?.join(FILES_DIR);
        let hash = {
            let g = self.builds.uploads.lock().unwrap_or_else(|p| p.into_inner());
            match g.get(token) {
                Some((h, exp)) if *exp > Instant::now() => h.clone(),
                _ => {
                    return Err(DaemonError::NotFound(
                        "this upload link is unknown or expired; ask for a new one".into(),
                    ));
                }
            }
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| DaemonError::Internal(format!("creating the upload dir: {e}")))?;
        let tmp = dir.join(format!(".tmp-{}", crate::ids::new_token()));
        let r = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| DaemonError::Internal(format!("storing an upload: {e}")))?;
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| DaemonError::InvalidInput(format!("reading the upload: {e}")))?;
                total += chunk.len() as u64;
                if total > MAX_UPLOAD_BYTES {
                    return Err(DaemonError::InsufficientStorage(format!(
                        "an upload may have at most {} MiB",
                        MAX_UPLOAD_BYTES >> 20
                    )));
                }
                f.write_all(&chunk).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::StorageFull => {
                        DaemonError::InsufficientStorage(format!("storing an upload: {e}"))
                    }
                    _ => DaemonError::Internal(format!("storing an upload: {e}")),
                })?;
            }
            f.sync_all()
                .await
                .map_err(|e| DaemonError::Internal(format!("storing an upload: {e}")))?;
            tokio::fs::rename(&tmp, dir.join(&hash))
                .await
                .map_err(|e| DaemonError::Internal(format!("storing an upload: {e}")))
        }
        .await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        } else {
            self.builds
                .uploads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(token);
        }
        r
    }

    /// `POST /v2/templates/{id}/builds/{build}`: checks the steps and starts the build in the
    /// background.
    pub async fn start_build(
        self: &Arc<Self>,
        template_id: &str,
        build_id: &str,
        start: BuildStart,
    ) -> Result<(), DaemonError> {
        self.builds_dir()?;
        let row = self.build_of(template_id, build_id).await?;
        if start.from_image.is_some() == start.from_template.is_some() {
            return Err(DaemonError::InvalidInput(
                "a build starts from exactly one of fromImage and fromTemplate".into(),
            ));
        }
        check_steps(&start.steps)?;
        for c in [&start.start_cmd, &start.ready_cmd].into_iter().flatten() {
            if c.len() > 64 << 10 || c.contains('\0') {
                return Err(DaemonError::InvalidInput(
                    "startCmd/readyCmd too long or with a NUL byte".into(),
                ));
            }
        }
        let mut config: BuildConfig = serde_json::from_str(&row.config).unwrap_or_default();
        config.start_cmd = start.start_cmd.clone();
        config.ready_cmd = start.ready_cmd.clone();
        let json = serde_json::to_string(&config).map_err(|e| DaemonError::Internal(e.to_string()))?;
        let b = row.build_id.clone();
        if !self.registry.call(move |s| s.set_build_config(&b, &json)).await? {
            return Err(DaemonError::Conflict(format!(
                "build '{build_id}' was started already"
            )));
        }
        let me = self.clone();
        tokio::spawn(async move { me.run_build(row, config, start).await });
        Ok(())
    }

    /// `GET /templates/{id}/builds/{build}/logs`: lines by time, direction and level.
    pub async fn build_logs(
        &self,
        template_id: &str,
        build_id: &str,
        query: super::logs::LogQuery,
    ) -> Result<Vec<LogLine>, DaemonError> {
        let row = self.build_of(template_id, build_id).await?;
        let query = super::logs::LogQuery {
            limit: query.limit.min(MAX_LOG_PAGE),
            ..query
        };
        Ok(self.builds.logs.query(&row.build_id, query))
    }

    /// `GET /templates/{id}/builds/{build}/status`.
    pub async fn build_status(
        &self,
        template_id: &str,
        build_id: &str,
        logs_offset: usize,
        limit: usize,
    ) -> Result<BuildStatusView, DaemonError> {
        let row = self.build_of(template_id, build_id).await?;
        let log_entries = self
            .builds
            .logs
            .page(&row.build_id, logs_offset, limit.min(MAX_LOG_PAGE));
        let reason = row.reason.clone().map(|m| {
            let tail = row
                .reason_step
                .as_deref()
                .map(|s| self.builds.logs.tail_of_step(&row.build_id, s, 20))
                .unwrap_or_default();
            (m, row.reason_step.clone(), tail)
        });
        Ok(BuildStatusView {
            template_id: row.template_id,
            build_id: row.build_id,
            status: row.status,
            log_entries,
            reason,
        })
    }

    /// The ready build a reference (`name[:tag]`, or the template id) names. `None` when no
    /// built template has the name.
    pub async fn resolve_built(&self, raw: &str) -> Result<Option<BuiltTemplate>, DaemonError> {
        let Ok((name, tag)) = crate::templates::parse_template_ref(raw) else {
            return Ok(None);
        };
        let n2 = name.clone();
        let Some((template_id, real_name)) = self.registry.call(move |s| s.built_template_id(&n2)).await?
        else {
            return Ok(None);
        };
        let tag = tag.unwrap_or_else(|| "default".into());
        let (t2, tag2) = (template_id.clone(), tag.clone());
        let row = self.registry.call(move |s| s.tagged_build(&t2, &tag2)).await?;
        match row {
            Some(BuildRow {
                runtime_template: Some(runtime),
                config,
                ..
            }) => Ok(Some(BuiltTemplate {
                runtime,
                config: serde_json::from_str(&config).unwrap_or_default(),
                name: real_name,
                template_id,
            })),
            _ => Err(DaemonError::TemplateNotFound(format!(
                "{real_name}:{tag} (the template has no ready build with this tag)"
            ))),
        }
    }

    /// `POST /templates/tags`: points `tags` at the build `target` (`name:tag`) names.
    pub async fn assign_template_tags(
        &self,
        target: &str,
        tags: Vec<String>,
    ) -> Result<(String, Vec<String>), DaemonError> {
        let (name, tag) = split_name(target)?;
        for t in &tags {
            check_tag(t)?;
        }
        if tags.is_empty() {
            return Err(DaemonError::InvalidInput("no tags to assign".into()));
        }
        let tag = tag.unwrap_or_else(|| "default".into());
        let n2 = name.clone();
        let Some((template_id, _)) = self.registry.call(move |s| s.built_template_id(&n2)).await? else {
            return Err(DaemonError::TemplateNotFound(name));
        };
        let (t2, tag2) = (template_id.clone(), tag.clone());
        let build = self
            .registry
            .call(move |s| s.tagged_build(&t2, &tag2))
            .await?
            .ok_or_else(|| DaemonError::NotFound(format!("template '{name}' has no tag '{tag}'")))?;
        let (t3, b3, tags3) = (template_id, build.build_id.clone(), tags.clone());
        self.registry
            .call(move |s| s.assign_tags(&t3, &b3, &tags3, now_us()))
            .await?;
        Ok((build.build_id, tags))
    }

    /// `DELETE /templates/tags`.
    pub async fn remove_template_tags(&self, name: &str, tags: Vec<String>) -> Result<(), DaemonError> {
        let (name, _) = split_name(name)?;
        let n2 = name.clone();
        let Some((template_id, _)) = self.registry.call(move |s| s.built_template_id(&n2)).await? else {
            return Err(DaemonError::TemplateNotFound(name));
        };
        self.registry
            .call(move |s| s.remove_tags(&template_id, &tags))
            .await?;
        Ok(())
    }

    /// `GET /templates/{id}/tags`: `(tag, build id, created at µs)`.
    pub async fn template_tags(&self, raw: &str) -> Result<Vec<(String, String, i64)>, DaemonError> {
        let (name, _) = split_name(raw)?;
        let n2 = name.clone();
        let Some((template_id, _)) = self.registry.call(move |s| s.built_template_id(&n2)).await? else {
            return Err(DaemonError::TemplateNotFound(name));
        };
        let rows = self.registry.call(move |s| s.list_tags(&template_id)).await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.tag, r.build_id, r.created_at_us))
            .collect())
    }

    /// Deletes a built template (its builds and tags); `Ok(false)` if no built template has
    /// the name. Sandboxes running from it keep their layers; the runtime templates stay as
    /// the build cache.
    pub async fn delete_built_template(self: &Arc<Self>, raw: &str) -> Result<bool, DaemonError> {
        let Ok((name, _)) = crate::templates::parse_template_ref(raw) else {
            return Ok(false);
        };
        let n2 = name.clone();
        let Some((template_id, _)) = self.registry.call(move |s| s.built_template_id(&n2)).await? else {
            return Ok(false);
        };
        self.registry
            .call(move |s| s.delete_built_template(&template_id))
            .await?;
        tracing::info!(template = %name, "built template deleted");
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.collect_template_garbage().await {
                tracing::warn!("clean-up after a template delete: {e}");
            }
        });
        Ok(true)
    }

    /// Built templates, newest first.
    pub async fn list_built_templates(&self) -> Result<Vec<TemplateSummary>, DaemonError> {
        let rows = self.registry.call(|s| s.list_builds()).await?;
        let mut out: Vec<TemplateSummary> = Vec::new();
        for r in rows.into_iter().rev() {
            if let Some(t) = out.iter_mut().find(|t| t.template_id == r.template_id) {
                t.builds += 1;
                continue;
            }
            let config = serde_json::from_str(&r.config).unwrap_or_default();
            out.push(TemplateSummary {
                template_id: r.template_id.clone(),
                name: r.name.clone(),
                latest: r,
                builds: 1,
                config,
                spawn_count: 0,
                last_spawned_at_us: None,
                settings: Default::default(),
            });
        }
        for t in &mut out {
            let id = t.template_id.clone();
            (t.spawn_count, t.last_spawned_at_us) =
                self.registry.call(move |s| s.template_usage(&id)).await?;
            t.settings = self.template_settings(&t.template_id).await?;
        }
        Ok(out)
    }
}
