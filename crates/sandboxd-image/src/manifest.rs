//! Bounded fetches of an image's manifest and config (`docs/templates.md`, "Limits").
//!
//! `oci-client` reads manifests and configs whole into memory, with no size limit, so a
//! registry (any host a build names) could make the daemon hold gigabytes. Here the manifest
//! is fetched with the same authentication (`oci-client`'s token exchange, its `auth`) but
//! read as a stream capped at [`MAX_MANIFEST`], checked against the digest it is asked by, and
//! parsed with `oci-client`'s types; an index is resolved to its `linux/amd64` entry (one
//! level). The config is fetched through `oci-client`'s blob download into a buffer capped at
//! the descriptor's size (at most [`MAX_CONFIG`]) and checked against its digest.

use crate::ImageError;
use crate::registry::classify;
use oci_client::client::linux_amd64_resolver;
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Largest manifest or index read from a registry (real ones are a few KiB).
pub const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config (real ones are a few KiB, large history included well under 1 MiB).
pub const MAX_CONFIG: u64 = 16 << 20;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// An error and whether the next source should be tried.
pub type Failure = (ImageError, bool);

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The image manifest of `r` (an index resolved to `linux/amd64`), its digest and its config.
pub async fn manifest_and_config(
    oci: &Client,
    http: &reqwest::Client,
    insecure: bool,
    r: &Reference,
    auth: &RegistryAuth,
) -> Result<(OciImageManifest, String, String), Failure> {
    let what = r.whole();
    let authorization = authorization(oci, r, auth).await?;
    let (manifest, digest) = match fetch(http, insecure, r, authorization.as_deref()).await? {
        (OciManifest::Image(m), d) => (m, d),
        (OciManifest::ImageIndex(index), _) => {
            let Some(platform) = linux_amd64_resolver(&index.manifests) else {
                return Err((
                    ImageError::NotFound(format!("{what}: no linux/amd64 image in its index")),
                    false,
                ));
            };
            match fetch(
                http,
                insecure,
                &r.clone_with_digest(platform),
                authorization.as_deref(),
            )
            .await?
            {
                (OciManifest::Image(m), d) => (m, d),
                (OciManifest::ImageIndex(_), _) => {
                    return Err((
                        ImageError::BadImage(format!("{what}: an index inside an index")),
                        false,
                    ));
                }
            }
        }
    };
    let size = u64::try_from(manifest.config.size).unwrap_or(u64::MAX);
    if size > MAX_CONFIG {
        return Err((
            ImageError::TooLarge(format!(
                "{what}: an image config of {} bytes (the limit is {MAX_CONFIG})",
                manifest.config.size
            )),
            false,
        ));
    }
    let mut config = Capped {
        buf: Vec::with_capacity(size as usize),
        limit: size,
    };
    oci.pull_blob(r, &manifest.config, &mut config)
        .await
        .map_err(|e| classify(r, e))?;
    if config.buf.len() as u64 != size || sha256_digest(&config.buf) != manifest.config.digest {
        return Err((
            ImageError::BadImage(format!(
                "{what}: the image config does not match its digest {}",
                manifest.config.digest
            )),
            false,
        ));
    }
    let config = String::from_utf8(config.buf).map_err(|_| {
        (
            ImageError::BadImage(format!("{what}: the image config is not UTF-8")),
            false,
        )
    })?;
    Ok((manifest, digest, config))
}

/// The `Authorization` header for pulls of `r`: a bearer token from the registry's token
/// service, or the basic credentials, or none.
async fn authorization(oci: &Client, r: &Reference, auth: &RegistryAuth) -> Result<Option<String>, Failure> {
    use base64::Engine;
    match oci.auth(r, auth, RegistryOperation::Pull).await {
        Ok(Some(token)) => Ok(Some(format!("Bearer {token}"))),
        Ok(None) => Ok(match auth {
            RegistryAuth::Basic(u, p) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )),
            _ => None,
        }),
        Err(e) => Err(classify(r, e)),
    }
}

/// One manifest (or index) of `r`, read up to [`MAX_MANIFEST`] bytes, with its digest.
async fn fetch(
    http: &reqwest::Client,
    insecure: bool,
    r: &Reference,
    authorization: Option<&str>,
) -> Result<(OciManifest, String), Failure> {
    let what = r.whole();
    let scheme = if insecure { "http" } else { "https" };
    let at = r.digest().or(r.tag()).unwrap_or("latest");
    let url = format!(
        "{scheme}://{}/v2/{}/manifests/{at}",
        r.resolve_registry(),
        r.repository()
    );
    let mut req = http.get(&url).header(reqwest::header::ACCEPT, ACCEPT);
    if let Some(a) = authorization {
        req = req.header(reqwest::header::AUTHORIZATION, a);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| (ImageError::Registry(format!("{what}: {e}")), true))?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Err((ImageError::NotFound(what), true)),
        401 | 403 => return Err((ImageError::Unauthorized(what), false)),
        code => {
            return Err((
                ImageError::Registry(format!("{what}: HTTP {code} for its manifest")),
                true,
            ));
        }
    }
    let too_large = || {
        (
            ImageError::TooLarge(format!("{what}: a manifest of more than {MAX_MANIFEST} bytes")),
            false,
        )
    };
    if resp.content_length().is_some_and(|n| n > MAX_MANIFEST as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        (
            ImageError::Registry(format!("{what}: reading its manifest: {e}")),
            true,
        )
    })? {
        if body.len() + chunk.len() > MAX_MANIFEST {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let digest = sha256_digest(&body);
    if let Some(want) = r.digest()
        && want != digest
    {
        return Err((
            ImageError::BadImage(format!("{what}: the manifest's digest is {digest}, not {want}")),
            false,
        ));
    }
    let manifest: OciManifest = serde_json::from_slice(&body).map_err(|e| {
        (
            ImageError::BadImage(format!("{what}: its manifest does not parse: {e}")),
            false,
        )
    })?;
    Ok((manifest, digest))
}

/// A buffer that refuses to grow past `limit` bytes.
struct Capped {
    buf: Vec<u8>,
    limit: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if (self.buf.len() + data.len()) as u64 > self.limit {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the blob is larger than its {} bytes",
                self.limit
            ))));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A registry on loopback answering every request with what `respond` gives for its path.
    async fn hostile(respond: fn(&str) -> (String, Vec<u8>, bool)) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { return };
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&b[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                    let (ctype, body, endless) = respond(&path);
                    let len = if endless {
                        String::new()
                    } else {
                        format!("Content-Length: {}\r\n", body.len())
                    };
                    let hdr =
                        format!("HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n{len}Connection: close\r\n\r\n");
                    if s.write_all(hdr.as_bytes()).await.is_err() {
                        return;
                    }
                    loop {
                        if s.write_all(&body).await.is_err() || !endless {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    fn client(port: u16) -> (Client, Reference) {
        let oci = Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        (oci, format!("127.0.0.1:{port}/evil:latest").parse().unwrap())
    }

    #[tokio::test]
    async fn an_endless_manifest_is_cut_at_the_limit() {
        let port = hostile(|path| {
            if path.contains("/manifests/") {
                (
                    "application/vnd.oci.image.manifest.v1+json".into(),
                    vec![b' '; 64 << 10],
                    true,
                )
            } else {
                ("application/json".into(), b"{}".to_vec(), false)
            }
        })
        .await;
        let (oci, r) = client(port);
        let http = reqwest::Client::new();
        let t0 = std::time::Instant::now();
        let (e, next) = manifest_and_config(&oci, &http, true, &r, &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(e, ImageError::TooLarge(_)), "{e}");
        assert!(e.to_string().contains("manifest of more than"), "{e}");
        assert!(!next);
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_huge_config_is_refused_before_it_is_fetched() {
        let port = hostile(|path| {
            if path.contains("/manifests/") {
                let m = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": format!("sha256:{}", "a".repeat(64)), "size": 1u64 << 40},
                    "layers": []
                });
                (
                    "application/vnd.oci.image.manifest.v1+json".into(),
                    m.to_string().into_bytes(),
                    false,
                )
            } else if path.contains("/blobs/") {
                ("application/octet-stream".into(), vec![b'x'; 64 << 10], true)
            } else {
                ("application/json".into(), b"{}".to_vec(), false)
            }
        })
        .await;
        let (oci, r) = client(port);
        let (e, _) = manifest_and_config(&oci, &http_client(), true, &r, &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ImageError::TooLarge(_)) && e.to_string().contains("image config"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_config_longer_than_its_descriptor_or_not_matching_its_digest_is_refused() {
        let port = hostile(|path| {
            if path.contains("/manifests/") {
                let m = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": format!("sha256:{}", "b".repeat(64)), "size": 10},
                    "layers": []
                });
                (
                    "application/vnd.oci.image.manifest.v1+json".into(),
                    m.to_string().into_bytes(),
                    false,
                )
            } else if path.contains("/blobs/") {
                ("application/octet-stream".into(), vec![b'x'; 64 << 10], true)
            } else {
                ("application/json".into(), b"{}".to_vec(), false)
            }
        })
        .await;
        let (oci, r) = client(port);
        let (e, _) = manifest_and_config(&oci, &http_client(), true, &r, &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("larger than its 10 bytes"), "{e}");
    }

    #[tokio::test]
    async fn a_manifest_must_match_the_digest_it_is_asked_by() {
        let port = hostile(|path| {
            if path.contains("/manifests/") {
                (
                    "application/vnd.oci.image.manifest.v1+json".into(),
                    b"{\"schemaVersion\":2}".to_vec(),
                    false,
                )
            } else {
                ("application/json".into(), b"{}".to_vec(), false)
            }
        })
        .await;
        let oci = Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let r: Reference = format!("127.0.0.1:{port}/evil@sha256:{}", "c".repeat(64))
            .parse()
            .unwrap();
        let (e, _) = manifest_and_config(&oci, &http_client(), true, &r, &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(
            matches!(e, ImageError::BadImage(_)) && e.to_string().contains("digest"),
            "{e}"
        );
    }

    fn http_client() -> reqwest::Client {
        reqwest::Client::new()
    }
}
