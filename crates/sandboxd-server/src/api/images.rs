//! `/images…`: a sandboxd addition to E2B's API: import a `docker save` or OCI-layout archive
//! (`docs/templates.md`), whose reference then works in a build's `fromImage` with no registry.

use super::extract::json;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::TryStreamExt;
use sandboxd_daemon::Daemon;
use std::sync::Arc;

/// `POST /images/import`: 201 with the image's reference, digest and layers.
pub(super) async fn import(State(daemon): State<Arc<Daemon>>, req: Request) -> Result<Response, ApiError> {
    let body = req.into_body().into_data_stream().map_err(|e| e.to_string());
    let image = daemon.import_image(Box::pin(body)).await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "reference": image.reference,
            "manifestDigest": image.manifest_digest,
            "layers": image.layers.iter().map(|l| serde_json::json!({"diffID": format!("sha256:{}", l.diff_id), "sizeBytes": l.size})).collect::<Vec<_>>(),
            "env": image.config.env,
            "cmd": image.config.cmd,
            "entrypoint": image.config.entrypoint,
            "workingDir": image.config.working_dir,
        }),
    ))
}
