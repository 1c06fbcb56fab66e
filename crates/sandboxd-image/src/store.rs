//! The store: `blobs/` (host only: blobs being fetched, image records) and `layers/<diff id>/`
//! (unpacked layers). A layer directory exists only once fully unpacked and checked: it is
//! made under a temporary name and renamed; whatever a crash or a failed pull leaves under a
//! temporary name is removed at open.

use crate::unpack::{decompressed, unpack_layer};
use crate::{Image, ImageConfig, ImageError, Layer, Progress, RegistryConfig, StoreLimits};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Prefix of directories and files being written.
const TMP: &str = ".tmp-";

/// The image store.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) blobs: PathBuf,
    pub(crate) layers: PathBuf,
    pub(crate) registry: RegistryConfig,
    pub(crate) limits: StoreLimits,
    /// Registry clients, kept across pulls (`registry.rs`).
    pub(crate) clients: crate::registry::Clients,
}

pub(crate) fn io(p: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::Io(format!("{}: {e}", p.display()))
}

/// A fresh temporary name.
pub(crate) fn tmp_name() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    format!("{TMP}{}-{}", std::process::id(), hex::encode(b))
}

/// Whether `s` is a sha256 hex digest.
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The image config's parts we use, and its diff ids, from the config JSON.
pub(crate) fn parse_config(json: &[u8]) -> Result<(ImageConfig, Vec<String>), ImageError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct Run {
        #[serde(default)]
        env: Option<Vec<String>>,
        #[serde(default)]
        cmd: Option<Vec<String>>,
        #[serde(default)]
        entrypoint: Option<Vec<String>>,
        #[serde(default)]
        working_dir: Option<String>,
        #[serde(default)]
        user: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        config: Option<Run>,
        rootfs: RootFs,
    }
    let c: Config =
        serde_json::from_slice(json).map_err(|e| ImageError::BadImage(format!("image config: {e}")))?;
    let run = c.config.unwrap_or_default();
    let mut diff_ids = Vec::new();
    for d in c.rootfs.diff_ids {
        let hex = d
            .strip_prefix("sha256:")
            .filter(|h| is_hex64(h))
            .ok_or_else(|| ImageError::BadImage(format!("image config: unsupported diff id '{d}'")))?;
        diff_ids.push(hex.to_string());
    }
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok((
        ImageConfig {
            env: run.env.unwrap_or_default(),
            working_dir: nonempty(run.working_dir),
            user: nonempty(run.user),
            cmd: run.cmd.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
        },
        diff_ids,
    ))
}

impl ImageStore {
    /// Opens (creating) the store; removes what interrupted pulls left.
    pub fn open(
        blobs_dir: &Path,
        layers_dir: &Path,
        registry: RegistryConfig,
        limits: StoreLimits,
    ) -> Result<Self, ImageError> {
        use std::os::unix::fs::DirBuilderExt;
        for d in [blobs_dir, layers_dir, &blobs_dir.join("images")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(io(d))?;
        }
        for d in [blobs_dir, layers_dir] {
            for e in std::fs::read_dir(d).map_err(io(d))?.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP) {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
        Ok(Self {
            blobs: blobs_dir.to_path_buf(),
            layers: layers_dir.to_path_buf(),
            registry,
            limits,
            clients: Default::default(),
        })
    }

    /// The unpacked directory of a layer (it exists only once fully unpacked).
    pub fn layer_dir(&self, diff_id_hex: &str) -> PathBuf {
        self.layers.join(diff_id_hex)
    }

    /// Whether a layer is in the store.
    pub fn has_layer(&self, diff_id_hex: &str) -> bool {
        is_hex64(diff_id_hex) && self.layer_dir(diff_id_hex).is_dir()
    }

    /// Unpacks the layer blob at `blob` (any compression) and installs it as `want` (the diff
    /// id the image config names): a layer whose content hashes otherwise is refused.
    /// Blocking.
    pub(crate) fn install_layer(&self, blob: &Path, want: &str) -> Result<Layer, ImageError> {
        let dst = self.layer_dir(want);
        let tmp = self.layers.join(tmp_name());
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let r = (|| {
            let f = std::fs::File::open(blob).map_err(io(blob))?;
            let reader = decompressed(f).map_err(io(blob))?;
            let u = unpack_layer(reader, &tmp, self.limits.max_layer_bytes)?;
            if u.diff_id != want {
                return Err(ImageError::BadImage(format!(
                    "a layer's content hashes to sha256:{} but the image config says sha256:{want}",
                    u.diff_id
                )));
            }
            match std::fs::rename(&tmp, &dst) {
                Ok(()) => {}
                // another pull installed the same layer meanwhile
                Err(_) if dst.is_dir() => {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
                Err(e) => return Err(io(&dst)(e)),
            }
            std::fs::write(self.size_file(want), u.size.to_string()).map_err(io(&dst))?;
            Ok(Layer {
                diff_id: want.to_string(),
                size: u.size,
            })
        })();
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r
    }

    fn size_file(&self, diff_id: &str) -> PathBuf {
        self.blobs.join(format!("layer-{diff_id}.size"))
    }

    /// The recorded unpacked size of a stored layer.
    pub(crate) fn stored_layer(&self, diff_id: &str) -> Layer {
        let size = std::fs::read_to_string(self.size_file(diff_id))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Layer {
            diff_id: diff_id.to_string(),
            size,
        }
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        self.blobs.join("images").join(format!(
            "{}.json",
            hex::encode(Sha256::digest(reference.as_bytes()))
        ))
    }

    /// Saves what a pull or import made.
    pub(crate) fn save_record(&self, image: &Image) -> Result<(), ImageError> {
        let p = self.record_path(&image.reference);
        let tmp = self.blobs.join(tmp_name());
        let json = serde_json::to_vec(image).map_err(|e| ImageError::Io(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))
    }

    /// The image last pulled or imported under `reference` (normalized), if its layers are
    /// all still in the store.
    pub fn local_image(&self, reference: &str) -> Option<Image> {
        let text = std::fs::read(self.record_path(reference)).ok()?;
        let image: Image = serde_json::from_slice(&text).ok()?;
        image
            .layers
            .iter()
            .all(|l| self.has_layer(&l.diff_id))
            .then_some(image)
    }

    /// Installs every layer of an image from blobs fetched by `fetch(index, temp path)`,
    /// skipping layers already in the store, then records the image.
    pub(crate) async fn install_image<F, Fut>(
        &self,
        reference: String,
        manifest_digest: String,
        config_json: &[u8],
        blob_count: usize,
        progress: &(dyn Fn(Progress) + Send + Sync),
        mut fetch: F,
    ) -> Result<Image, ImageError>
    where
        F: FnMut(usize, PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), ImageError>>,
    {
        let (config, diff_ids) = parse_config(config_json)?;
        if diff_ids.len() != blob_count {
            return Err(ImageError::BadImage(format!(
                "the manifest has {blob_count} layers but the config {}",
                diff_ids.len()
            )));
        }
        if diff_ids.len() > self.limits.max_layers {
            return Err(ImageError::TooLarge(format!(
                "{} layers, more than the {} a template can stack",
                diff_ids.len(),
                self.limits.max_layers
            )));
        }
        let mut layers = Vec::new();
        for (i, want) in diff_ids.iter().enumerate() {
            if self.has_layer(want) {
                progress(Progress::Cached { index: i });
                layers.push(self.stored_layer(want));
                continue;
            }
            let blob = self.blobs.join(tmp_name());
            let r = fetch(i, blob.clone()).await;
            let r = match r {
                Ok(()) => {
                    let me = self.clone();
                    let (b, w) = (blob.clone(), want.clone());
                    tokio::task::spawn_blocking(move || me.install_layer(&b, &w))
                        .await
                        .map_err(|e| ImageError::Io(format!("unpack task: {e}")))
                        .and_then(|r| r)
                }
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_file(&blob);
            let layer = r.map_err(|e| match e {
                ImageError::BadImage(m) => {
                    ImageError::BadImage(format!("layer {} (sha256:{want}): {m}", i + 1))
                }
                other => other,
            })?;
            progress(Progress::Unpacked { index: i });
            layers.push(layer);
        }
        let image = Image {
            reference,
            manifest_digest,
            layers,
            config,
            imported: false,
        };
        self.save_record(&image)?;
        Ok(image)
    }

    /// Layers in the store and the bytes they unpacked to (as recorded at unpack).
    pub fn usage(&self) -> (usize, u64) {
        let Ok(rd) = std::fs::read_dir(&self.layers) else {
            return (0, 0);
        };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_hex64(n))
            .fold((0, 0), |(n, b), d| (n + 1, b + self.stored_layer(&d).size))
    }

    /// Removes unpacked layers not in `keep` (diff-id hexes) and the records of images that
    /// lost a layer; returns the bytes freed (as recorded at unpack).
    pub fn collect_garbage(&self, keep: &BTreeSet<String>) -> Result<u64, ImageError> {
        let mut freed = 0;
        for e in std::fs::read_dir(&self.layers)
            .map_err(io(&self.layers))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_hex64(&name) || keep.contains(&name) {
                continue;
            }
            freed += self.stored_layer(&name).size;
            std::fs::remove_dir_all(e.path()).map_err(io(&e.path()))?;
            let _ = std::fs::remove_file(self.size_file(&name));
        }
        let images = self.blobs.join("images");
        for e in std::fs::read_dir(&images).map_err(io(&images))?.flatten() {
            let keep_record = std::fs::read(e.path())
                .ok()
                .and_then(|t| serde_json::from_slice::<Image>(&t).ok())
                .is_some_and(|i| i.layers.iter().all(|l| self.has_layer(&l.diff_id)));
            if !keep_record {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parts() {
        let j = br#"{"config":{"Env":["A=1"],"Cmd":["sh"],"WorkingDir":"/w","User":""},"rootfs":{"type":"layers","diff_ids":["sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}}"#;
        let (c, d) = parse_config(j).unwrap();
        assert_eq!(c.env, vec!["A=1"]);
        assert_eq!(c.cmd, vec!["sh"]);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        assert_eq!(c.user, None);
        assert_eq!(d, vec!["a".repeat(64)]);
        let bad = br#"{"rootfs":{"diff_ids":["sha256:../../etc"]}}"#;
        assert!(matches!(parse_config(bad), Err(ImageError::BadImage(_))));
    }
}
