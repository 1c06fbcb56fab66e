//! Images as templates (`docs/templates.md`): a pull into the image store (`sandboxd-image`)
//! and the runtime template made of its layers, once per image manifest.

use crate::daemon::Daemon;
use crate::error::DaemonError;
use sandboxd_image::{Credentials, ImageConfig, ImageError, ImageStore, Progress, StoreLimits};
use std::sync::Arc;

/// The image store's directories under the data dir.
const BLOBS_DIR: &str = "images";
/// Largest image archive an import takes.
pub const MAX_IMPORT_BYTES: u64 = 16 << 30;

/// The runtime template name of an image with this manifest digest.
pub(crate) fn image_template_name(manifest_digest: &str) -> String {
    let hex = manifest_digest.strip_prefix("sha256:").unwrap_or(manifest_digest);
    format!("i{}", &hex[..hex.len().min(24)])
}

impl From<ImageError> for DaemonError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::BadReference(_) | ImageError::BadImage(_) => DaemonError::InvalidInput(e.to_string()),
            ImageError::NotFound(_) => DaemonError::NotFound(e.to_string()),
            ImageError::Unauthorized(_) => DaemonError::SecurityDenied(e.to_string()),
            ImageError::Registry(_) => DaemonError::Unavailable(e.to_string()),
            ImageError::TooLarge(_) => DaemonError::InsufficientStorage(e.to_string()),
            ImageError::Io(_) => DaemonError::Internal(e.to_string()),
        }
    }
}

impl Daemon {
    /// The image store (opened on first use).
    pub(crate) fn image_store(&self) -> Result<&ImageStore, DaemonError> {
        if let Some(s) = self.builds.images.get() {
            return Ok(s);
        }
        let cfg = &self.config.builds;
        if cfg.data_dir.as_os_str().is_empty() {
            return Err(DaemonError::NotSupportedHere(
                "this daemon has no data dir for images".into(),
            ));
        }
        let store = ImageStore::open(
            &cfg.data_dir.join(BLOBS_DIR),
            &cfg.data_dir
                .join("templates")
                .join(sandboxd_runtime::IMAGE_LAYERS),
            cfg.registry.clone(),
            StoreLimits::default(),
        )?;
        Ok(self.builds.images.get_or_init(|| store))
    }

    /// Pulls `reference` (mirrors first) and returns the runtime template of its layers (made
    /// the first time) and its config. `log` hears the progress.
    pub(crate) async fn image_template(
        self: &Arc<Self>,
        reference: &str,
        credentials: Option<Credentials>,
        log: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(String, ImageConfig), DaemonError> {
        let store = self.image_store()?.clone();
        // an imported image names no registry: it is used as imported
        let normalized = sandboxd_image::normalize_reference(reference)?;
        if let Some(image) = store.local_image(&normalized).filter(|i| i.imported) {
            log(format!("Using {normalized}, imported from an archive"));
            return self.image_runtime_template(image).await;
        }
        let progress = |p: Progress| match p {
            Progress::Resolved {
                reference,
                layers,
                total_bytes,
            } => log(format!(
                "Pulling {reference}: {layers} layers, {:.1} MB",
                total_bytes as f64 / 1e6
            )),
            Progress::Layer { index, bytes, total } if bytes == total => log(format!(
                "Layer {}: fetched {:.1} MB",
                index + 1,
                total as f64 / 1e6
            )),
            Progress::Layer { index, bytes, total } => log(format!(
                "Layer {}: {:.1} of {:.1} MB",
                index + 1,
                bytes as f64 / 1e6,
                total as f64 / 1e6
            )),
            Progress::Unpacked { index } => log(format!("Layer {}: unpacked", index + 1)),
            Progress::Cached { index } => log(format!("Layer {}: already in the store", index + 1)),
        };
        let image = match store.pull(reference, credentials, &progress).await {
            Ok(i) => i,
            // the registry is unreachable: an image pulled before still builds
            Err(ImageError::Registry(e)) => match store.local_image(&normalized) {
                Some(i) => {
                    log(format!(
                        "The registry is unreachable ({e}); using {normalized} as pulled before"
                    ));
                    i
                }
                None => return Err(ImageError::Registry(e).into()),
            },
            Err(e) => return Err(e.into()),
        };
        self.image_runtime_template(image).await
    }

    /// The runtime template of a stored image (made the first time).
    async fn image_runtime_template(
        &self,
        image: sandboxd_image::Image,
    ) -> Result<(String, ImageConfig), DaemonError> {
        let name = image_template_name(&image.manifest_digest);
        if !self.backend.has_template(&name) {
            let layers: Vec<String> = image
                .layers
                .iter()
                .map(|l| format!("{}/{}", sandboxd_runtime::IMAGE_LAYERS, l.diff_id))
                .collect();
            if let Err(e) = self.backend.create_image_template(&name, &layers).await {
                // another build made it meanwhile
                if !self.backend.has_template(&name) {
                    return Err(e.into());
                }
            }
        }
        Ok((name, image.config))
    }

    /// `POST /images/import`: stores a `docker save` or OCI-layout archive (streamed, bounded)
    /// and imports it. Its reference then works in `fromImage` without a registry.
    pub async fn import_image<S, E>(&self, mut body: S) -> Result<sandboxd_image::Image, DaemonError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let store = self.image_store()?.clone();
        let tmp = self
            .config
            .builds
            .data_dir
            .join(BLOBS_DIR)
            .join(format!(".tmp-import-{}", crate::ids::new_token()));
        let r = async {
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| DaemonError::Internal(format!("storing an image archive: {e}")))?;
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| DaemonError::InvalidInput(format!("reading the archive: {e}")))?;
                total += chunk.len() as u64;
                if total > MAX_IMPORT_BYTES {
                    return Err(DaemonError::InsufficientStorage(format!(
                        "an image archive may have at most {} MiB",
                        MAX_IMPORT_BYTES >> 20
                    )));
                }
                f.write_all(&chunk)
                    .await
                    .map_err(|e| DaemonError::Internal(format!("storing an image archive: {e}")))?;
            }
            f.flush()
                .await
                .map_err(|e| DaemonError::Internal(format!("storing an image archive: {e}")))?;
            let noop = |_p: Progress| {};
            Ok(store.import_archive(&tmp, &noop).await?)
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        r
    }
}
