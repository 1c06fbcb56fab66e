//! Imports of image archives: `docker save` (`manifest.json`) and OCI image layouts
//! (`index.json` + `blobs/`), plain or gzip-compressed. The archive's regular files are
//! copied to a temporary directory (nothing else of it is honoured: no links, no devices, no
//! paths outside), then its layers are unpacked like pulled ones.

use crate::store::{ImageStore, io, tmp_name};
use crate::unpack::{decompressed, normalize};
use crate::{Image, ImageError, Progress};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Most files an archive may hold.
const MAX_FILES: usize = 10_000;

fn bad(m: impl std::fmt::Display) -> ImageError {
    ImageError::BadImage(format!("image archive: {m}"))
}

/// Copies the archive's regular files under `dir`; returns their paths (relative).
fn extract(archive: &Path, dir: &Path, max_file: u64) -> Result<(), ImageError> {
    let f = std::fs::File::open(archive).map_err(io(archive))?;
    let reader = decompressed(f).map_err(io(archive))?;
    let mut tar = tar::Archive::new(reader);
    let mut n = 0;
    for e in tar.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        if !matches!(
            e.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        n += 1;
        if n > MAX_FILES {
            return Err(bad(format!("more than {MAX_FILES} files")));
        }
        let raw = e.path_bytes().into_owned();
        let Some(rel) = normalize(&raw).map_err(bad)? else {
            continue;
        };
        let size = e.header().size().unwrap_or(0);
        if size > max_file {
            return Err(ImageError::TooLarge(format!(
                "image archive: '{}' has {size} bytes",
                rel.display()
            )));
        }
        let dst = dir.join(&rel);
        // parents are made here, by us: the archive has no say in them
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(io(p))?;
        }
        let mut out = std::fs::File::create(&dst).map_err(io(&dst))?;
        std::io::copy(&mut (&mut e).take(size), &mut out).map_err(io(&dst))?;
    }
    Ok(())
}

fn read_json(dir: &Path, rel: &str, max: u64) -> Result<serde_json::Value, ImageError> {
    let p = safe_join(dir, rel)?;
    let f = std::fs::File::open(&p).map_err(|_| bad(format!("'{rel}' is missing")))?;
    let mut text = Vec::new();
    f.take(max).read_to_end(&mut text).map_err(io(&p))?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("'{rel}': {e}")))
}

fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let r = normalize(rel.as_bytes())
        .map_err(bad)?
        .ok_or_else(|| bad("an empty path"))?;
    Ok(dir.join(r))
}

/// `blobs/sha256/<hex>` of an OCI layout, checked to be a digest.
fn blob_path(digest: &str) -> Result<String, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| crate::store::is_hex64(h))
        .ok_or_else(|| bad(format!("unsupported digest '{digest}'")))?;
    Ok(format!("blobs/sha256/{hex}"))
}

fn sha256_file(p: &Path) -> Result<String, ImageError> {
    let mut f = std::fs::File::open(p).map_err(io(p))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(p))?;
    Ok(hex::encode(h.finalize()))
}

/// What an archive names: its reference, manifest digest, config file and layer files.
struct Found {
    reference: String,
    manifest_digest: String,
    config: String,
    layers: Vec<String>,
}

/// The reference of an imported image that names none: `localhost/<name>:latest`, or
/// `localhost/imported:<digest prefix>`.
fn local_name(name: Option<&str>, digest: &str) -> String {
    name.and_then(|n| crate::reference::normalize_reference(&format!("localhost/{n}")).ok())
        .unwrap_or_else(|| {
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
            format!("localhost/imported:{}", &hex[..hex.len().min(12)])
        })
}

fn docker_save(dir: &Path) -> Result<Found, ImageError> {
    let m = read_json(dir, "manifest.json", 1 << 20)?;
    let first = m
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| bad("manifest.json names no image"))?;
    let config = first["Config"]
        .as_str()
        .ok_or_else(|| bad("manifest.json has no Config"))?;
    let layers: Vec<String> = first["Layers"]
        .as_array()
        .ok_or_else(|| bad("manifest.json has no Layers"))?
        .iter()
        .map(|l| {
            l.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("a layer name is not a string"))
        })
        .collect::<Result<_, _>>()?;
    let tag = first["RepoTags"]
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t.as_str());
    let digest = format!("sha256:{}", sha256_file(&safe_join(dir, config)?)?);
    let reference = match tag {
        Some(t) => crate::reference::normalize_reference(t)?,
        None => local_name(None, &digest),
    };
    Ok(Found {
        reference,
        manifest_digest: digest,
        config: config.to_string(),
        layers,
    })
}

fn oci_layout(dir: &Path) -> Result<Found, ImageError> {
    let index = read_json(dir, "index.json", 1 << 20)?;
    let mut desc = index["manifests"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| bad("index.json names no manifest"))?;
    let name = desc["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .map(str::to_string);
    // a nested index: pick linux/amd64
    for _ in 0..4 {
        let digest = desc["digest"]
            .as_str()
            .ok_or_else(|| bad("a manifest without a digest"))?
            .to_string();
        let body = read_json(dir, &blob_path(&digest)?, 4 << 20)?;
        if let Some(ms) = body["manifests"].as_array() {
            desc = ms
                .iter()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
                .or(ms.first())
                .cloned()
                .ok_or_else(|| bad("an empty image index"))?;
            continue;
        }
        let config = blob_path(
            body["config"]["digest"]
                .as_str()
                .ok_or_else(|| bad("a manifest without a config"))?,
        )?;
        let layers = body["layers"]
            .as_array()
            .ok_or_else(|| bad("a manifest without layers"))?
            .iter()
            .map(|l| blob_path(l["digest"].as_str().unwrap_or_default()))
            .collect::<Result<_, _>>()?;
        let reference = match name.as_deref() {
            Some(n) if n.contains(':') || n.contains('/') => {
                crate::reference::normalize_reference(n).unwrap_or_else(|_| format!("imported@{digest}"))
            }
            Some(n) => format!("imported:{n}"),
            None => format!("imported@{digest}"),
        };
        return Ok(Found {
            reference,
            manifest_digest: digest,
            config,
            layers,
        });
    }
    Err(bad("image indexes nest too deep"))
}

impl ImageStore {
    /// Imports a `docker save` archive or an OCI image-layout archive (tar, optionally gzip).
    pub async fn import_archive(
        &self,
        archive: &Path,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        let dir = self.blobs.join(tmp_name());
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        let r = self.import_extracted(archive, &dir, progress).await;
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    async fn import_extracted(
        &self,
        archive: &Path,
        dir: &Path,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        let (a, d, max) = (
            archive.to_path_buf(),
            dir.to_path_buf(),
            self.limits.max_blob_bytes,
        );
        tokio::task::spawn_blocking(move || extract(&a, &d, max))
            .await
            .map_err(|e| ImageError::Io(format!("extract task: {e}")))??;
        let found = if dir.join("index.json").is_file() {
            oci_layout(dir)?
        } else {
            docker_save(dir)?
        };
        let config_path = safe_join(dir, &found.config)?;
        let mut config = Vec::new();
        std::fs::File::open(&config_path)
            .map_err(|_| bad("the image config is missing"))?
            .take(4 << 20)
            .read_to_end(&mut config)
            .map_err(io(&config_path))?;
        progress(Progress::Resolved {
            reference: found.reference.clone(),
            layers: found.layers.len(),
            total_bytes: 0,
        });
        let layer_paths: Vec<PathBuf> = found
            .layers
            .iter()
            .map(|l| safe_join(dir, l))
            .collect::<Result<_, _>>()?;
        let fetch = |i: usize, tmp: PathBuf| {
            let src = layer_paths[i].clone();
            async move {
                if !src.is_file() {
                    return Err(bad(format!("layer {} is missing", i + 1)));
                }
                std::fs::rename(&src, &tmp).map_err(io(&tmp))
            }
        };
        let mut image = self
            .install_image(
                found.reference,
                found.manifest_digest,
                &config,
                found.layers.len(),
                progress,
                fetch,
            )
            .await?;
        image.imported = true;
        self.save_record(&image)?;
        Ok(image)
    }
}
