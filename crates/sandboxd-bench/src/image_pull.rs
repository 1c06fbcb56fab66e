//! Image pull throughput (`docs/templates.md`): a one-layer image of 100 MiB of incompressible
//! data is pushed to a registry on loopback (Debian's `docker-registry`, when installed), and a
//! daemon whose `docker.io` mirror it is builds a template from it; the build's time gives the
//! pull-and-unpack rate. Without `docker-registry` the row says so.

use crate::BenchError;
use crate::http::{Conn, full, request};
use crate::image_template::build_from_image;
use crate::scenarios::Ctx;
use http::{Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Size of the pulled layer's data (a quick run pulls a fifth of it).
pub const LAYER_BYTES: usize = 100 << 20;

/// What the pull measurement found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullSection {
    /// Bytes of the layer blob.
    pub bytes: u64,
    /// Pull, unpack and template (the first build).
    pub seconds: f64,
    /// `bytes / seconds` in MB/s (10^6).
    pub mb_per_s: f64,
}

/// A `docker-registry` on a free loopback port, stopped on drop.
pub struct LocalRegistry {
    child: std::process::Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalRegistry {
    /// Starts one with its storage under `dir`; `None` when `docker-registry` is not installed.
    pub fn start(dir: &Path) -> Result<Option<LocalRegistry>, BenchError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BenchError::Io)?
            .port();
        std::fs::create_dir_all(dir)?;
        let cfg = dir.join("registry.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )?;
        let child = match std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BenchError::Io(e)),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let reg = LocalRegistry { child, addr };
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(Some(reg));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(BenchError::Daemon("docker-registry did not start".into()))
    }
}

/// Incompressible bytes (xorshift), fast to make.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn push_blob(conn: &mut Conn, repo: &str, blob: Vec<u8>) -> Result<String, BenchError> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let fail = |m: String| BenchError::Http(format!("pushing to the bench registry: {m}"));
    let req = request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .body(full(Vec::new()))
        .map_err(|e| fail(e.to_string()))?;
    let resp = conn.send(req).await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(fail(format!("upload start answered {}", resp.status())));
    }
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .ok_or_else(|| fail("no upload location".into()))?
        .to_string();
    crate::http::drain(resp.into_body()).await?;
    let path = match location.find("/v2/") {
        Some(i) => location[i..].to_string(),
        None => return Err(fail(format!("odd upload location {location}"))),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let req = request(Method::PUT, &format!("{path}{sep}digest={digest}"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(full(blob))
        .map_err(|e| fail(e.to_string()))?;
    let (status, body) = conn.call(req).await?;
    if status != StatusCode::CREATED {
        return Err(fail(format!(
            "blob upload answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(digest)
}

/// Pushes `library/sandboxd-bench-pull:1`: one uncompressed layer of `size` bytes of data.
async fn push_image(addr: SocketAddr, size: usize) -> Result<u64, BenchError> {
    let mut conn = Conn::connect(addr).await?;
    let repo = "library/sandboxd-bench-pull";
    let mut b = tar::Builder::new(Vec::with_capacity(size + 4096));
    let mut h = tar::Header::new_gnu();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "data/noise.bin", noise(size).as_slice())
        .map_err(BenchError::Io)?;
    let layer = b.into_inner().map_err(BenchError::Io)?;
    let layer_len = layer.len() as u64;
    let diff = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let layer_digest = push_blob(&mut conn, repo, layer).await?;
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff]}})
        .to_string()
        .into_bytes();
    let config_len = config.len();
    let config_digest = push_blob(&mut conn, repo, config).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_len}],
    })
    .to_string();
    let req = request(Method::PUT, &format!("/v2/{repo}/manifests/1"))
        .header(header::CONTENT_TYPE, "application/vnd.oci.image.manifest.v1+json")
        .body(full(manifest))
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let (status, body) = conn.call(req).await?;
    if status != StatusCode::CREATED {
        return Err(BenchError::Http(format!(
            "pushing the bench manifest answered {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(layer_len)
}

/// Pushes the bench image to `registry` and builds a template from it in `ctx`'s daemon
/// (whose `docker.io` mirror the registry is).
pub async fn pull(ctx: &Ctx, registry: SocketAddr) -> Result<PullSection, BenchError> {
    let size = if ctx.cfg.quick {
        LAYER_BYTES / 5
    } else {
        LAYER_BYTES
    };
    let bytes = push_image(registry, size).await?;
    let t0 = Instant::now();
    build_from_image(ctx, "sandboxd-bench-pull", "sandboxd-bench-pull:1").await?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(PullSection {
        bytes,
        seconds,
        mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_incompressible_enough() {
        let n = noise(1 << 16);
        assert_eq!(n.len(), 1 << 16);
        let distinct: std::collections::HashSet<&[u8]> = n.chunks(8).collect();
        assert!(distinct.len() > (1 << 13) - 10);
    }
}
