//! Removing what deleted templates leave (`docs/templates.md`): the runtime templates of builds
//! and images (`b…`, `i…`) that no remaining build made (its base, its steps' results) and no
//! sandbox uses, then the image layers no remaining template stacks. The cached steps of the
//! remaining templates stay, so their rebuilds stay instant.

use crate::daemon::Daemon;
use crate::error::DaemonError;
use std::collections::HashSet;

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateGarbage {
    /// Runtime templates removed.
    pub templates: Vec<String>,
    /// Bytes of image layers freed.
    pub layer_bytes: u64,
}

/// Whether `name` is a runtime template of a build step (`b` + 24 hex, a forced rebuild adds
/// 6 `[a-z0-9]`) or of an image (`i` + 24 hex).
pub fn is_build_runtime_template(name: &str) -> bool {
    let hex24 = |s: &str| {
        s.len() >= 24
            && s[..24]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match name.split_at_checked(1) {
        Some(("b", rest)) => {
            hex24(rest)
                && (rest.len() == 24
                    || rest.len() == 30
                        && rest[24..]
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        }
        Some(("i", rest)) => rest.len() == 24 && hex24(rest),
        _ => false,
    }
}

impl Daemon {
    /// Removes unused build and image runtime templates and unused image layers.
    pub async fn collect_template_garbage(&self) -> Result<TemplateGarbage, DaemonError> {
        let data = self.config.builds.data_dir.clone();
        if data.as_os_str().is_empty() {
            return Ok(TemplateGarbage::default());
        }
        let _running = self
            .builds
            .slots
            .acquire_many(super::CONCURRENT_BUILDS as u32)
            .await;
        let (builds, sandboxes) = self.registry.call(|s| Ok((s.list_builds()?, s.list()?))).await?;
        let used: HashSet<String> = builds
            .into_iter()
            .flat_map(|b| {
                let chain = serde_json::from_str::<super::spec::BuildConfig>(&b.config)
                    .map(|c| c.runtime_templates)
                    .unwrap_or_default();
                chain.into_iter().chain(b.runtime_template)
            })
            .chain(sandboxes.into_iter().map(|r| r.template_id))
            .chain(self.sandboxes.all().iter().map(|s| s.rec.template_id.clone()))
            .collect();
        let templates = data.join("templates");
        let names: Vec<String> = std::fs::read_dir(&templates)
            .map_err(|e| DaemonError::Internal(format!("listing templates: {e}")))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_build_runtime_template(n) && !used.contains(n))
            .collect();
        let mut out = TemplateGarbage::default();
        for n in names {
            match self.backend.delete_snapshot_template(&n).await {
                Ok(true) => out.templates.push(n),
                Ok(false) => {}
                Err(e) => tracing::warn!(template = %n, "removing an unused build template: {e}"),
            }
        }
        let keep = {
            let t = templates.clone();
            tokio::task::spawn_blocking(move || {
                sandboxd_runtime::namespace::image_template::image_layers_in_use(&t)
            })
            .await
            .map_err(|e| DaemonError::Internal(format!("listing image layers in use: {e}")))?
        };
        let store = self.image_store()?.clone();
        out.layer_bytes = tokio::task::spawn_blocking(move || store.collect_garbage(&keep))
            .await
            .map_err(|e| DaemonError::Internal(format!("image layer clean-up: {e}")))??;
        if !out.templates.is_empty() || out.layer_bytes > 0 {
            tracing::info!(
                templates = out.templates.len(),
                layer_mb = out.layer_bytes >> 20,
                "unused template builds and image layers removed"
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_template_names() {
        let h = "0123456789abcdef01234567";
        assert!(is_build_runtime_template(&format!("b{h}")));
        assert!(is_build_runtime_template(&format!("b{h}x1y2z3")));
        assert!(is_build_runtime_template(&format!("i{h}")));
        assert!(!is_build_runtime_template(&format!("i{h}x1y2z3")));
        assert!(!is_build_runtime_template("base"));
        assert!(!is_build_runtime_template(&format!("s{h}")));
        assert!(!is_build_runtime_template("b0123"));
    }
}
