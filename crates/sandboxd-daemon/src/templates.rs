//! Template references and their resolution (built-in templates and snapshots).

use crate::daemon::Daemon;
use crate::error::DaemonError;
use sandboxd_store::SnapshotResolution;

/// A template reference split into its parts: `[namespace/]name[:tag]`.
pub fn parse_template_ref(raw: &str) -> Result<(String, Option<String>), DaemonError> {
    let bad = || DaemonError::InvalidInput(format!("invalid template reference '{raw}'"));
    let raw = raw.trim();
    let without_ns = raw.rsplit('/').next().unwrap_or_default();
    let (name, tag) = match without_ns.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (without_ns, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !name_ok || !tag_ok {
        return Err(bad());
    }
    Ok((name.to_string(), tag.map(str::to_string)))
}

impl Daemon {
    /// Resolves a template reference to `(template id, alias)`; "not found" when unknown.
    pub async fn resolve_template(&self, raw: &str) -> Result<(String, String), DaemonError> {
        let (name, tag) = parse_template_ref(raw)?;
        // snapshot templates (snapshots.rs): by name or template id; deleted ones are gone
        let n2 = name.clone();
        match self.registry.call(move |s| s.resolve_snapshot(&n2)).await? {
            SnapshotResolution::Found(id, alias) if tag.as_deref().is_none_or(|t| t == "default") => {
                return Ok((id, alias));
            }
            SnapshotResolution::NotSnapshot => {}
            _ => return Err(DaemonError::TemplateNotFound(raw.trim().to_string())),
        }
        // templates of the template build API (template_builds/): a tag's ready build
        if let Some(b) = self.resolve_built(raw).await? {
            return Ok((b.runtime, b.name));
        }
        if tag.as_deref().is_some_and(|t| t != "default") || !self.backend.has_template(&name) {
            // a known template whose host layer is missing: say how to install it
            if let Some(why) = self.backend.template_missing_reason(&name) {
                return Err(DaemonError::NotFound(why));
            }
            return Err(DaemonError::TemplateNotFound(raw.trim().to_string()));
        }
        Ok((name.clone(), name))
    }

    /// Whether a template name (no tag) exists.
    pub fn template_exists(&self, name: &str) -> bool {
        parse_template_ref(name).is_ok_and(|(n, t)| t.is_none() && self.backend.has_template(&n))
    }

    /// `Template.exists` / `GET /templates/aliases/{alias}`: the template id of a built
    /// template, snapshot or built-in template with this name, if there is one.
    pub async fn template_alias(&self, name: &str) -> Result<Option<String>, DaemonError> {
        let Ok((n, None)) = parse_template_ref(name) else {
            return Ok(None);
        };
        let n2 = n.clone();
        if let Some((id, _)) = self.registry.call(move |s| s.built_template_id(&n2)).await? {
            return Ok(Some(id));
        }
        if let SnapshotResolution::Found(id, _) = self
            .registry
            .call({
                let n = n.clone();
                move |s| s.resolve_snapshot(&n)
            })
            .await?
        {
            return Ok(Some(id));
        }
        Ok(self.backend.has_template(&n).then_some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_refs() {
        assert_eq!(parse_template_ref("base").unwrap(), ("base".into(), None));
        assert_eq!(
            parse_template_ref("team/base:default").unwrap(),
            ("base".into(), Some("default".into()))
        );
        assert_eq!(
            parse_template_ref("code-interpreter-v1").unwrap(),
            ("code-interpreter-v1".into(), None)
        );
        for bad in ["", "a:", ":x", "Base", "a b", "team/", "a:b c"] {
            assert!(
                matches!(parse_template_ref(bad), Err(DaemonError::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }
}
