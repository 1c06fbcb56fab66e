//! OCI images for sandboxd (`docs/images.md`): pulls from registries (with mirrors, plain-HTTP
//! registries only where configured, credentials from the caller or a Docker `config.json`),
//! imports of `docker save` and OCI image-layout archives, and a content-addressed store of
//! unpacked layers that image templates stack as read-only overlay layers.
//!
//! The registry protocol is `oci-client` (the maintained OCI distribution client of the
//! Rust ecosystem: token auth, manifest lists, digest checks); the layer tars are read with
//! `tar`, `flate2` and `zstd`, and unpacked by [`unpack`], which treats them as hostile.

mod archive;
mod manifest;
mod reference;
mod registry;
mod store;
pub mod unpack;

pub use reference::normalize_reference;
pub use store::ImageStore;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where images come from.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registry host (as in a reference: `docker.io` for Docker Hub) → mirror base URLs tried
    /// in order before the registry itself (`http://127.0.0.1:5000`).
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries (`host[:port]`) spoken to over plain HTTP; all others are HTTPS only. A
    /// mirror given with `http://` is plain HTTP too.
    pub insecure: Vec<String>,
    /// Docker `config.json` with credentials; `None`: `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` if there is one.
    pub docker_config: Option<PathBuf>,
}

/// Registry credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Bounds of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Most bytes one layer may unpack to.
    pub max_layer_bytes: u64,
    /// Most bytes of one compressed blob.
    pub max_blob_bytes: u64,
    /// Most layers of an image.
    pub max_layers: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 16 << 30,
            max_blob_bytes: 8 << 30,
            max_layers: 60,
        }
    }
}

/// A pulled or imported image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// The normalized reference (`docker.io/library/python:3.13`).
    pub reference: String,
    /// Digest of the image manifest (`sha256:…`).
    pub manifest_digest: String,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// What the image config says about running it.
    pub config: ImageConfig,
    /// Imported from an archive (not pulled): its reference names no registry to pull from.
    #[serde(default)]
    pub imported: bool,
}

/// One unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    /// sha256 hex of the uncompressed layer (its directory name in the store).
    pub diff_id: String,
    /// Bytes it unpacked to.
    pub size: u64,
}

/// The parts of an image config that apply to its sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// The working directory.
    pub working_dir: Option<String>,
    /// The user (`name`, `uid`, `uid:gid`).
    pub user: Option<String>,
    /// The default command.
    pub cmd: Vec<String>,
    /// The entrypoint.
    pub entrypoint: Vec<String>,
}

/// What a pull or import is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The manifest is read.
    Resolved {
        /// The normalized reference.
        reference: String,
        /// Number of layers.
        layers: usize,
        /// Compressed bytes of all layers.
        total_bytes: u64,
    },
    /// Bytes of layer `index` fetched so far.
    Layer {
        /// Layer index, bottom first.
        index: usize,
        /// Bytes so far.
        bytes: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Layer `index` is unpacked.
    Unpacked {
        /// Layer index.
        index: usize,
    },
    /// Layer `index` was in the store already.
    Cached {
        /// Layer index.
        index: usize,
    },
}

/// Errors of image pulls and imports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference: {0}")]
    BadReference(String),
    /// The registry has no such image.
    #[error("image not found: {0}")]
    NotFound(String),
    /// The registry refused the credentials (or asked for some).
    #[error("registry refused access: {0}")]
    Unauthorized(String),
    /// The registry could not be reached or failed.
    #[error("registry error: {0}")]
    Registry(String),
    /// The image is malformed or unsafe (bad manifest, digest mismatch, a layer that would
    /// write outside its directory, a device node).
    #[error("bad image: {0}")]
    BadImage(String),
    /// Over a limit of the store.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// The store's disk failed.
    #[error("image store I/O error: {0}")]
    Io(String),
}
