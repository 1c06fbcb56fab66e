//! Session files: streamed all-or-nothing uploads, single-file writes, listings, downloads.

use super::envd_calls::{CallBody, Envd, full_body};
use super::{FileEntry, WORKDIR, helper, relative_path, resolve};
use crate::daemon::Daemon;
use crate::error::{DaemonError, Resource};
use std::collections::HashSet;

/// A set of files written to temporary names and renamed into place only once all of them are
/// complete, so a failed or refused upload leaves nothing half-written.
pub struct FileBatch {
    envd: Envd,
    session_id: String,
    /// `(temporary path, final path)`.
    staged: Vec<(String, String)>,
    seen: HashSet<String>,
}

impl FileBatch {
    /// Streams `body` to a temporary file next to `rel`'s final place.
    pub async fn add(&mut self, rel: &str, body: CallBody) -> Result<(), DaemonError> {
        let rel = relative_path(rel)?;
        if rel.is_empty() {
            return Err(DaemonError::InvalidInput("a file name is required".into()));
        }
        if !self.seen.insert(rel.clone()) {
            return Err(DaemonError::InvalidInput(format!(
                "file '{rel}' appears more than once"
            )));
        }
        let dest = resolve(&self.envd, &rel).await?;
        let (dir, name) = dest.rsplit_once('/').unwrap_or((WORKDIR, &dest));
        let tmp = format!("{dir}/.{name}.sandboxd-upload-{}", crate::ids::new_token());
        let r = self.envd.upload(&tmp, body).await;
        self.staged.push((tmp, dest));
        r.map_err(|e| match e {
            DaemonError::ResourceExhausted { resource, message } => DaemonError::ResourceExhausted {
                resource,
                message: format!(
                    "session '{}' is full writing '{rel}' (its size is a disk quota): {message}",
                    self.session_id
                ),
            },
            other => other,
        })
    }

    /// Renames every staged file into place.
    pub async fn commit(mut self) -> Result<Vec<String>, DaemonError> {
        let staged = std::mem::take(&mut self.staged);
        let mut done = Vec::new();
        for (i, (tmp, dest)) in staged.iter().enumerate() {
            if let Err(e) = self.envd.rename(tmp, dest).await {
                let rest = staged[i..].to_vec();
                discard(&self.envd, rest).await;
                return Err(e);
            }
            done.push(
                dest.strip_prefix(&format!("{WORKDIR}/"))
                    .unwrap_or(dest)
                    .to_string(),
            );
        }
        Ok(done)
    }

    /// Removes every staged file.
    pub async fn abort(mut self) {
        let staged = std::mem::take(&mut self.staged);
        discard(&self.envd, staged).await;
    }
}

async fn discard(envd: &Envd, staged: Vec<(String, String)>) {
    for (tmp, _) in staged {
        if let Err(e) = envd.remove(&tmp).await
            && !matches!(e, DaemonError::NotFound(_))
        {
            tracing::warn!(path = %tmp, "removing a partial upload: {e}");
        }
    }
}

/// A file's contents as the agent streams them.
pub struct Download {
    pub name: String,
    pub size: Option<u64>,
    pub body: hyper::body::Incoming,
}

impl Daemon {
    /// A batch of file writes into a session.
    pub fn begin_session_files(&self, session_id: &str) -> Result<FileBatch, DaemonError> {
        let s = self.find_session(session_id)?;
        Ok(FileBatch {
            envd: Envd::of(&s),
            session_id: session_id.to_string(),
            staged: Vec::new(),
            seen: HashSet::new(),
        })
    }

    /// Refuses an upload whose declared length cannot fit the session's free disk space.
    pub async fn check_session_room(&self, session_id: &str, declared_bytes: u64) -> Result<(), DaemonError> {
        let s = self.find_session(session_id)?;
        let stats = self.backend().stats(s.id()).await?;
        let Some(total) = stats.disk_total else {
            return Ok(());
        };
        let free = total.saturating_sub(stats.disk_used);
        if declared_bytes > free {
            return Err(DaemonError::ResourceExhausted {
                resource: Resource::Disk,
                message: format!(
                    "upload of {declared_bytes} bytes does not fit session '{session_id}': {free} of its {} MiB are free",
                    total >> 20
                ),
            });
        }
        Ok(())
    }

    /// Writes one file from bytes, then sets its permission bits when `mode` is given.
    pub async fn create_session_file(
        &self,
        session_id: &str,
        rel: &str,
        content: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<String, DaemonError> {
        let mut batch = self.begin_session_files(session_id)?;
        let envd = batch.envd.clone();
        if let Err(e) = batch.add(rel, full_body(content)).await {
            batch.abort().await;
            return Err(e);
        }
        let written = batch.commit().await?;
        let path = written.into_iter().next().unwrap_or_default();
        if let Some(mode) = mode {
            let abs = format!("{WORKDIR}/{path}");
            helper(&envd, "chmod", &[&format!("{mode:o}"), "--", &abs]).await?;
        }
        Ok(path)
    }

    /// Lists a directory of the session (its top by default).
    pub async fn list_session_files(
        &self,
        session_id: &str,
        sub: Option<&str>,
    ) -> Result<Vec<FileEntry>, DaemonError> {
        let s = self.find_session(session_id)?;
        let envd = Envd::of(&s);
        let rel = relative_path(sub.unwrap_or(""))?;
        let abs = resolve(&envd, &rel).await?;
        let entries = envd.list_dir(&abs, 1).await?;
        let prefix = format!("{WORKDIR}/");
        let mut out: Vec<FileEntry> = entries
            .into_iter()
            .map(|e| {
                use sandboxd_protocol::filesystem::FileType;
                let kind = if e.is_symlink {
                    "symlink"
                } else {
                    match e.file_type {
                        FileType::Directory => "dir",
                        _ => "file",
                    }
                };
                FileEntry {
                    path: e.path.strip_prefix(&prefix).unwrap_or(&e.path).to_string(),
                    name: e.name,
                    kind,
                    size: e.size,
                    mode: format!("{:04o}", e.mode & 0o7777),
                    modified: e.modified_time,
                }
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Opens a file of the session for download.
    pub async fn download_session_file(&self, session_id: &str, rel: &str) -> Result<Download, DaemonError> {
        let s = self.find_session(session_id)?;
        let envd = Envd::of(&s);
        let rel = relative_path(rel)?;
        if rel.is_empty() {
            return Err(DaemonError::InvalidInput("a file name is required".into()));
        }
        let abs = resolve(&envd, &rel).await?;
        let resp = envd.download(&abs).await.map_err(|e| match e {
            DaemonError::NotFound(_) => {
                DaemonError::NotFound(format!("file '{rel}' does not exist in session '{session_id}'"))
            }
            other => other,
        })?;
        let size = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Download {
            name: rel.rsplit('/').next().unwrap_or(&rel).to_string(),
            size,
            body: resp.into_body(),
        })
    }
}
