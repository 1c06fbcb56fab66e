//! Image templates in the benchmark (`docs/templates.md`): a two-layer image made here as a
//! `docker save` archive, imported (`POST /images/import`), built into a template through
//! the template build API, rebuilt unchanged (all cache hits), then sandboxes created from it
//! sequentially — next to the same run's `base` creates.

use crate::BenchError;
use crate::http::{full, request};
use crate::scenarios::Ctx;
use crate::stats::Summary;
use http::{Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// What the image template measurements found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTemplateSection {
    /// Sequential creates from the image template.
    pub create: Summary,
    /// Importing the archive (`POST /images/import`).
    pub import_ms: f64,
    /// The first build (layers into a template).
    pub build_ms: f64,
    /// The same build again: every step a cache hit.
    pub rebuild_unchanged_ms: f64,
}

fn tar_of(files: &[(&str, Vec<u8>, u32)]) -> Result<Vec<u8>, BenchError> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, data.as_slice())
            .map_err(|e| BenchError::Create(format!("making the bench image: {e}")))?;
    }
    b.into_inner()
        .map_err(|e| BenchError::Create(format!("making the bench image: {e}")))
}

/// A `docker save` archive of a two-layer image: some files, then a layer that deletes one
/// (a whiteout) and adds another.
pub fn bench_image_archive() -> Result<Vec<u8>, BenchError> {
    let mut l1: Vec<(&str, Vec<u8>, u32)> = vec![
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644),
        ("etc/remove-me", b"x\n".to_vec(), 0o644),
    ];
    let names: Vec<String> = (0..200).map(|i| format!("usr/share/bench/file-{i}")).collect();
    for n in &names {
        l1.push((n.as_str(), vec![b'x'; 4096], 0o644));
    }
    if let Ok(bb) = std::fs::read("/bin/busybox") {
        l1.push(("bin/busybox", bb, 0o755));
    }
    let layer1 = tar_of(&l1)?;
    let layer2 = tar_of(&[
        ("etc/.wh.remove-me", Vec::new(), 0o644),
        ("etc/added", b"y\n".to_vec(), 0o644),
    ])?;
    let d1 = hex::encode(Sha256::digest(&layer1));
    let d2 = hex::encode(Sha256::digest(&layer2));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin", "BENCH=1"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{d1}"), format!("sha256:{d2}")]},
    })
    .to_string()
    .into_bytes();
    let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["localhost/sandboxd-bench:1"],
        "Layers": [format!("{d1}/layer.tar"), format!("{d2}/layer.tar")],
    }])
    .to_string()
    .into_bytes();
    let (p1, p2) = (format!("{d1}/layer.tar"), format!("{d2}/layer.tar"));
    tar_of(&[
        ("manifest.json", manifest, 0o644),
        (config_name.as_str(), config, 0o644),
        (p1.as_str(), layer1, 0o644),
        (p2.as_str(), layer2, 0o644),
    ])
}

async fn call(
    ctx: &Ctx,
    method: Method,
    path: &str,
    body: Vec<u8>,
    json: bool,
) -> Result<(StatusCode, serde_json::Value), BenchError> {
    let mut conn = ctx.conn().await?;
    let mut req = request(method, path).header("X-API-Key", &ctx.api.key);
    if json {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(full(body))
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let (status, bytes) = conn.call(req).await?;
    let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok((status, v))
}

/// One build of `name` from `image` (no steps); returns when it is ready.
pub async fn build_from_image(ctx: &Ctx, name: &str, image: &str) -> Result<Duration, BenchError> {
    let t0 = Instant::now();
    let fail = |m: String| BenchError::Create(format!("template build: {m}"));
    let (s, v) = call(
        ctx,
        Method::POST,
        "/v3/templates",
        serde_json::json!({"name": name}).to_string().into_bytes(),
        true,
    )
    .await?;
    if s != StatusCode::ACCEPTED {
        return Err(fail(format!("POST /v3/templates answered {s}: {v}")));
    }
    let (tid, bid) = (
        v["templateID"].as_str().unwrap_or_default().to_string(),
        v["buildID"].as_str().unwrap_or_default().to_string(),
    );
    let start = serde_json::json!({"fromImage": image, "steps": []})
        .to_string()
        .into_bytes();
    let (s, v) = call(
        ctx,
        Method::POST,
        &format!("/v2/templates/{tid}/builds/{bid}"),
        start,
        true,
    )
    .await?;
    if s != StatusCode::ACCEPTED {
        return Err(fail(format!("starting the build answered {s}: {v}")));
    }
    loop {
        let (s, v) = call(
            ctx,
            Method::GET,
            &format!("/templates/{tid}/builds/{bid}/status"),
            Vec::new(),
            false,
        )
        .await?;
        match (s, v["status"].as_str()) {
            (StatusCode::OK, Some("ready")) => return Ok(t0.elapsed()),
            (StatusCode::OK, Some("error")) => return Err(fail(format!("failed: {}", v["reason"]))),
            (StatusCode::OK, _) => {}
            _ => return Err(fail(format!("status answered {s}: {v}"))),
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(fail("not ready within 120 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Imports the bench image, builds it into a template twice, and creates sandboxes from it.
pub async fn image_template(ctx: &Ctx) -> Result<ImageTemplateSection, BenchError> {
    let archive = bench_image_archive()?;
    let t0 = Instant::now();
    let (s, v) = call(ctx, Method::POST, "/images/import", archive, false).await?;
    if s != StatusCode::CREATED {
        return Err(BenchError::Create(format!(
            "POST /images/import answered {s}: {v}"
        )));
    }
    let import_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let reference = v["reference"].as_str().unwrap_or_default().to_string();
    let name = "sandboxd-bench-image";
    let first = build_from_image(ctx, name, &reference).await?;
    let again = build_from_image(ctx, name, &reference).await?;
    let body = serde_json::json!({"templateID": name});
    let mut conn = ctx.conn().await?;
    for _ in 0..3 {
        let (s, _) = ctx.create(&mut conn, Some(&body)).await?;
        ctx.kill(&mut conn, &s.id).await?;
    }
    let mut seq = Vec::with_capacity(ctx.cfg.runs.create);
    for _ in 0..ctx.cfg.runs.create {
        let (s, d) = ctx.create(&mut conn, Some(&body)).await?;
        seq.push(d);
        ctx.kill(&mut conn, &s.id).await?;
    }
    Ok(ImageTemplateSection {
        create: Summary::of_durations(&seq)
            .ok_or_else(|| BenchError::Create("no image template creates".into()))?,
        import_ms,
        build_ms: first.as_secs_f64() * 1000.0,
        rebuild_unchanged_ms: again.as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_a_docker_save_archive() {
        let a = bench_image_archive().unwrap();
        let mut t = tar::Archive::new(a.as_slice());
        let names: Vec<String> = t
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names[0], "manifest.json");
        assert_eq!(names.iter().filter(|n| n.ends_with("layer.tar")).count(), 2);
    }
}
