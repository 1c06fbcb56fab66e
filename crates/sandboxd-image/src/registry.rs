//! Pulls from registries with `oci-client`: mirrors first, then the registry; credentials from
//! the caller or a Docker `config.json`; the manifest and config with bounded reads
//! (`manifest.rs`); each layer blob is fetched to a temporary file (digest checked by the
//! client, size bounded here), retried, and unpacked into the store.

use crate::reference::{Source, at, parse, sources};
use crate::store::{ImageStore, io};
use crate::{Credentials, Image, ImageError, Progress};
use base64::Engine;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Attempts per blob before a pull gives up.
const BLOB_ATTEMPTS: u32 = 3;

/// Registry clients by source and credentials: making one loads the system's TLS roots, and a
/// client keeps the registry's tokens, so a client is never shared between credentials.
#[derive(Clone, Default)]
pub(crate) struct Clients {
    oci: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Client>>>,
    /// For the bounded manifest fetches (`manifest.rs`); one for all registries.
    http: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clients")
    }
}

impl Clients {
    fn get(&self, source: &Source, auth: &RegistryAuth) -> Client {
        use sha2::Digest;
        let who = match auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Basic(u, p) => hex::encode(sha2::Sha256::digest(format!("{u}\0{p}"))),
            RegistryAuth::Bearer(t) => hex::encode(sha2::Sha256::digest(t)),
        };
        let key = format!("{}|{}|{who}", source.host, source.insecure);
        let mut g = self.oci.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() > 64 {
            g.clear();
        }
        g.entry(key).or_insert_with(|| client_for(source)).clone()
    }
}

impl Clients {
    fn http(&self) -> reqwest::Client {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(60))
                    .build()
                    .unwrap_or_else(|_| reqwest::Client::new())
            })
            .clone()
    }
}

fn client_for(source: &Source) -> Client {
    let protocol = if source.insecure {
        oci_client::client::ClientProtocol::HttpsExcept(vec![source.host.clone()])
    } else {
        oci_client::client::ClientProtocol::Https
    };
    Client::new(oci_client::client::ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    })
}

/// What went wrong, in our terms; `true` when the next source should be tried.
pub(crate) fn classify(r: &Reference, e: OciDistributionError) -> (ImageError, bool) {
    let what = r.whole();
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => (ImageError::NotFound(what), true),
        OciDistributionError::RegistryError { envelope, .. } => {
            let not_found = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                )
            });
            if not_found {
                (ImageError::NotFound(format!("{what}: {envelope}")), true)
            } else {
                (ImageError::Registry(format!("{what}: {envelope}")), false)
            }
        }
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            (ImageError::Unauthorized(what), false)
        }
        OciDistributionError::ServerError { code: 404, .. } => (ImageError::NotFound(what), true),
        OciDistributionError::ServerError { code, message, .. } => (
            ImageError::Registry(format!("{what}: HTTP {code}: {message}")),
            true,
        ),
        OciDistributionError::RequestError(e) => (ImageError::Registry(format!("{what}: {e}")), true),
        OciDistributionError::DigestError(e) => (ImageError::BadImage(format!("{what}: {e}")), false),
        OciDistributionError::IoError(e) => (ImageError::Registry(format!("{what}: {e}")), true),
        other => (ImageError::BadImage(format!("{what}: {other}")), false),
    }
}

/// Credentials for `host` from a Docker `config.json` (`auths.<host>.auth`, or username and
/// password fields). Docker Hub's entry is `https://index.docker.io/v1/`.
pub(crate) fn docker_config_auth(path: &Path, hosts: &[&str]) -> Option<Credentials> {
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    let text = std::fs::read(path).ok()?;
    let cfg: Config = serde_json::from_slice(&text).ok()?;
    for (key, entry) in &cfg.auths {
        let key_host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let matches = hosts.iter().any(|h| {
            *h == key_host || (*h == "docker.io" || *h == "index.docker.io") && key_host == "index.docker.io"
        });
        if !matches {
            continue;
        }
        if let Some(a) = &entry.auth {
            let raw = base64::engine::general_purpose::STANDARD.decode(a.trim()).ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            return Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            });
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            });
        }
    }
    None
}

/// A file writer that counts bytes, refuses more than `limit`, and reports progress.
struct CountingFile<'a> {
    /// Buffered: each write of a tokio file is a trip to the blocking pool, and response
    /// chunks are small.
    file: tokio::io::BufWriter<tokio::fs::File>,
    written: &'a AtomicU64,
    limit: u64,
}

impl tokio::io::AsyncWrite for CountingFile<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let so_far = self.written.load(Ordering::Relaxed);
        if so_far + buf.len() as u64 > self.limit {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the blob is larger than its {} bytes",
                self.limit
            ))));
        }
        let r = Pin::new(&mut self.file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl ImageStore {
    fn auth_for(&self, source: &Source, registry: &str, given: &Option<Credentials>) -> RegistryAuth {
        if let Some(c) = given {
            return RegistryAuth::Basic(c.username.clone(), c.password.clone());
        }
        let path = self.registry.docker_config.clone().or_else(|| {
            let dir = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
            Some(dir.join("config.json"))
        });
        match path.and_then(|p| docker_config_auth(&p, &[source.host.as_str(), registry])) {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Pulls `reference` (Docker short names allowed) into the store: mirrors first, then
    /// the registry. Layers already in the store are not fetched again.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        let r = parse(reference)?;
        let normalized = r.whole();
        let mut last = ImageError::Registry(format!("{normalized}: no registry to pull from"));
        for source in sources(&r, &self.registry) {
            let at_source = at(&r, &source.host);
            let auth = self.auth_for(&source, r.registry(), &credentials);
            let client = self.clients.get(&source, &auth);
            let http = self.clients.http();
            let fetched =
                crate::manifest::manifest_and_config(&client, &http, source.insecure, &at_source, &auth)
                    .await;
            let (manifest, digest, config) = match fetched {
                Ok(x) => x,
                Err((err, next)) => {
                    tracing::debug!(source = %source.host, "pull of {normalized}: {err}");
                    // a mirror that answers "no such image" is believed (an air-gapped mirror
                    // must not send the pull out to the registry); one that cannot be reached
                    // or fails is skipped
                    if matches!(err, ImageError::NotFound(_)) {
                        return Err(ImageError::NotFound(normalized));
                    }
                    last = err;
                    if next {
                        continue;
                    }
                    return Err(last);
                }
            };
            for l in &manifest.layers {
                if l.size < 0 || l.size as u64 > self.limits.max_blob_bytes {
                    return Err(ImageError::TooLarge(format!(
                        "{normalized}: a layer of {} bytes (the limit is {})",
                        l.size, self.limits.max_blob_bytes
                    )));
                }
            }
            let total: u64 = manifest.layers.iter().map(|l| l.size.max(0) as u64).sum();
            progress(Progress::Resolved {
                reference: normalized.clone(),
                layers: manifest.layers.len(),
                total_bytes: total,
            });
            let layers = manifest.layers.clone();
            let fetch = |i: usize, path: PathBuf| {
                let (client, at_source, layer) = (&client, &at_source, layers[i].clone());
                async move { fetch_blob(client, at_source, &layer, &path, i, progress).await }
            };
            return self
                .install_image(
                    normalized.clone(),
                    digest,
                    config.as_bytes(),
                    layers.len(),
                    progress,
                    fetch,
                )
                .await;
        }
        Err(last)
    }
}

/// Fetches one blob to `path`, retrying; on failure nothing is left at `path`.
async fn fetch_blob(
    client: &Client,
    r: &Reference,
    layer: &OciDescriptor,
    path: &Path,
    index: usize,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), ImageError> {
    let total = layer.size.max(0) as u64;
    let mut last = None;
    for attempt in 1..=BLOB_ATTEMPTS {
        let written = AtomicU64::new(0);
        let file = tokio::fs::File::create(path).await.map_err(io(path))?;
        let out = CountingFile {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            written: &written,
            limit: total,
        };
        let pull = client.pull_blob(r, layer, out);
        tokio::pin!(pull);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let outcome = loop {
            tokio::select! {
                done = &mut pull => break done,
                _ = tick.tick() => {
                    let bytes = written.load(Ordering::Relaxed);
                    if bytes < total {
                        progress(Progress::Layer { index, bytes, total });
                    }
                }
            }
        };
        match outcome {
            Ok(()) if written.load(Ordering::Relaxed) == total => {
                progress(Progress::Layer {
                    index,
                    bytes: total,
                    total,
                });
                return Ok(());
            }
            Ok(()) => {
                last = Some(ImageError::BadImage(format!(
                    "layer {} of {}: {} bytes instead of {total}",
                    index + 1,
                    r.whole(),
                    written.load(Ordering::Relaxed)
                )));
            }
            Err(e) => {
                let (err, _) = classify(r, e);
                tracing::warn!(
                    "fetching layer {} of {} (attempt {attempt}): {err}",
                    index + 1,
                    r.whole()
                );
                let retry = matches!(err, ImageError::Registry(_));
                last = Some(err);
                if !retry {
                    break;
                }
            }
        }
        let _ = tokio::fs::remove_file(path).await;
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    let _ = tokio::fs::remove_file(path).await;
    Err(last.unwrap_or_else(|| ImageError::Registry("blob fetch failed".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"reg.local:5000":{{"username":"a","password":"b"}}}}}}"#
            ),
        )
        .unwrap();
        let hub = docker_config_auth(&p, &["docker.io"]).unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("u", "p:w"));
        let local = docker_config_auth(&p, &["reg.local:5000"]).unwrap();
        assert_eq!(local.username, "a");
        assert_eq!(docker_config_auth(&p, &["other"]), None);
    }
}
