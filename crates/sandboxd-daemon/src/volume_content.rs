//! E2B's volume content API (`/volumecontent/{id}/…`, `docs/volumes.md`, "Content API"): a
//! volume's files without a sandbox, authorized by the volume's own token. The file work is
//! `sandboxd_runtime::volume_files` (every path resolved inside the volume by the kernel).

use crate::daemon::Daemon;
use crate::error::DaemonError;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sandboxd_runtime::volume_files::{VolumeFileError, VolumeFiles};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

pub use sandboxd_runtime::volume_files::{Entry, EntryKind, Ownership, VolumePath};

impl From<VolumeFileError> for DaemonError {
    fn from(e: VolumeFileError) -> Self {
        match e {
            VolumeFileError::NotFound(m) => DaemonError::NotFound(m),
            VolumeFileError::Invalid(m) => DaemonError::InvalidInput(m),
            VolumeFileError::Exists(m) => DaemonError::Conflict(m),
            VolumeFileError::NoSpace(m) => DaemonError::InsufficientStorage(m),
            VolumeFileError::Busy(m) => DaemonError::Conflict(m),
            VolumeFileError::Io(m) => DaemonError::Internal(m),
        }
    }
}

/// Runs one blocking file operation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeFileError> + Send + 'static,
) -> Result<T, DaemonError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DaemonError::Internal(format!("volume file task: {e}")))?
        .map_err(DaemonError::from)
}

impl Daemon {
    /// The files of volume `volume` (id or name) if `token` is its token.
    async fn volume_files(&self, volume: &str, token: Option<&str>) -> Result<VolumeFiles, DaemonError> {
        let row = self.volume(volume).await?;
        let given = token.unwrap_or_default().as_bytes();
        if token.is_none() || !bool::from(given.ct_eq(row.token.as_bytes())) {
            return Err(DaemonError::Unauthorized(
                "missing or wrong volume token: send 'Authorization: Bearer <token>' with the token POST /volumes returned"
                    .into(),
            ));
        }
        Ok(self.backend.volume_files(&row.id).await?)
    }

    /// Runs `op` on `path` of volume `volume`, off the async workers, once `token` is its
    /// token and `path` is well-formed.
    async fn on_volume_path<T: Send + 'static>(
        &self,
        volume: &str,
        token: Option<&str>,
        path: &str,
        op: impl FnOnce(&VolumeFiles, &VolumePath) -> Result<T, VolumeFileError> + Send + 'static,
    ) -> Result<T, DaemonError> {
        let files = self.volume_files(volume, token).await?;
        let path = VolumePath::parse(path)?;
        blocking(move || op(&files, &path)).await
    }

    /// `GET /volumecontent/{id}/path`: what `path` is (a link is shown, not followed).
    pub async fn volume_stat(
        &self,
        volume: &str,
        token: Option<&str>,
        path: &str,
    ) -> Result<Entry, DaemonError> {
        self.on_volume_path(volume, token, path, |f, p| f.stat(p)).await
    }

    /// `GET /volumecontent/{id}/dir`: the entries below directory `path`, `depth` levels deep
    /// (default 1).
    pub async fn volume_list(
        &self,
        volume: &str,
        token: Option<&str>,
        path: &str,
        depth: Option<u32>,
    ) -> Result<Vec<Entry>, DaemonError> {
        self.on_volume_path(volume, token, path, move |f, p| f.list(p, depth.unwrap_or(1)))
            .await
    }

    /// `POST /volumecontent/{id}/dir`: makes directory `path` (`force`: its missing parents
    /// too, and an existing directory is no error).
    pub async fn volume_make_dir(
        &self,
        volume: &str,
        token: Option<&str>,
        path: &str,
        owner: Ownership,
        force: bool,
    ) -> Result<Entry, DaemonError> {
        self.on_volume_path(volume, token, path, move |f, p| f.make_dir(p, &owner, force))
            .await
    }

    /// `PATCH /volumecontent/{id}/path`: changes the owner, group or mode of `path`.
    pub async fn volume_update_metadata(
        &self,
        volume: &str,
        token: Option<&str>,
        path: &str,
        change: Ownership,
    ) -> Result<Entry, DaemonError> {
        self.on_volume_path(volume, token, path, move |f, p| f.set_metadata(p, &change))
            .await
    }

    /// `DELETE /volumecontent/{id}/path`: removes a file, a link or a directory tree.
    pub async fn volume_remove(
        &self,
        volume: &str,
        token: Option<&str>,
        path: &str,
    ) -> Result<(), DaemonError> {
        self.on_volume_path(volume, token, path, |f, p| f.remove(p)).await
    }

    /// `GET /volumecontent/{id}/file`: regular file `path`, opened for streaming, and its size.
    pub async fn volume_read_file(
        &self,
        volume: &str,
        token: Option<&str>,
        path: &str,
    ) -> Result<(tokio::fs::File, u64), DaemonError> {
        let (file, size) = self
            .on_volume_path(volume, token, path, |f, p| f.open_read(p))
            .await?;
        Ok((tokio::fs::File::from_std(file), size))
    }

    /// `PUT /volumecontent/{id}/file`: writes `body` (streamed) as file `path`, replacing it
    /// whole once all of it is stored (`force`: missing parent directories are made). A cut or
    /// failed upload changes nothing; a full volume is "insufficient storage".
    pub async fn volume_write_file<S, E>(
        &self,
        volume: &str,
        token: Option<&str>,
        path: &str,
        owner: Ownership,
        force: bool,
        mut body: S,
    ) -> Result<Entry, DaemonError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (file, pending) = self
            .on_volume_path(volume, token, path, move |f, p| f.begin_write(p, &owner, force))
            .await?;
        let shown = VolumePath::parse(path).map(|p| p.display()).unwrap_or_default();
        let mut file = tokio::fs::File::from_std(file);
        let write_err = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                DaemonError::InsufficientStorage(format!("write {shown}: the volume is full"))
            }
            _ => DaemonError::Internal(format!("write {shown}: {e}")),
        };
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| DaemonError::InvalidInput(format!("reading the upload: {e}")))?;
            if let Err(e) = file.write_all(&chunk).await {
                // read (and drop) what the client is still sending, for a bounded time, so it
                // gets this answer rather than a connection reset mid-upload
                let drain = async { while body.next().await.is_some() {} };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
                return Err(write_err(e));
            }
        }
        file.flush().await.map_err(write_err)?;
        let file = file.into_std().await;
        blocking(move || pending.commit(file)).await
    }
}
