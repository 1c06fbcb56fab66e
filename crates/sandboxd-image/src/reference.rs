//! Image references: Docker's normalization and the registries a pull tries.

use crate::{ImageError, RegistryConfig};
use oci_client::Reference;

/// The normalized form of an image reference, as Docker resolves it: `python:3.13` →
/// `docker.io/library/python:3.13`, no tag → `:latest`, digests kept.
pub fn normalize_reference(s: &str) -> Result<String, ImageError> {
    Ok(parse(s)?.whole())
}

/// Parses a reference with Docker's defaults.
pub(crate) fn parse(s: &str) -> Result<Reference, ImageError> {
    let s = s.trim();
    if s.is_empty() || s.len() > 512 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ImageError::BadReference(format!("'{s}'")));
    }
    s.parse::<Reference>()
        .map_err(|e| ImageError::BadReference(format!("'{s}': {e}")))
}

/// One place to pull from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// `host[:port]` spoken to.
    pub host: String,
    /// Plain HTTP.
    pub insecure: bool,
}

/// The places to pull `r` from, in order: the registry's mirrors, then the registry.
pub(crate) fn sources(r: &Reference, cfg: &RegistryConfig) -> Vec<Source> {
    let mut out = Vec::new();
    for m in cfg.mirrors.get(r.registry()).into_iter().flatten() {
        let (insecure, rest) = match m.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some((_, rest)) => (false, rest),
            None => (false, m.as_str()),
        };
        let host = rest.trim_end_matches('/').to_string();
        if !host.is_empty() {
            let insecure = insecure || cfg.insecure.contains(&host);
            out.push(Source { host, insecure });
        }
    }
    let host = r.resolve_registry().to_string();
    let insecure = cfg.insecure.iter().any(|h| h == r.registry() || *h == host);
    out.push(Source { host, insecure });
    out
}

/// `r` as served by `host`.
pub(crate) fn at(r: &Reference, host: &str) -> Reference {
    match (r.tag(), r.digest()) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(
            host.to_string(),
            r.repository().to_string(),
            t.to_string(),
            d.to_string(),
        ),
        (_, Some(d)) => Reference::with_digest(host.to_string(), r.repository().to_string(), d.to_string()),
        (t, None) => Reference::with_tag(
            host.to_string(),
            r.repository().to_string(),
            t.unwrap_or("latest").to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_short_names() {
        assert_eq!(
            normalize_reference("python:3.13").unwrap(),
            "docker.io/library/python:3.13"
        );
        assert_eq!(
            normalize_reference("ubuntu").unwrap(),
            "docker.io/library/ubuntu:latest"
        );
        assert_eq!(
            normalize_reference("e2bdev/base").unwrap(),
            "docker.io/e2bdev/base:latest"
        );
        assert_eq!(
            normalize_reference("127.0.0.1:5000/x/y:1").unwrap(),
            "127.0.0.1:5000/x/y:1"
        );
        let d = format!("alpine@sha256:{}", "a".repeat(64));
        assert!(normalize_reference(&d).unwrap().ends_with(&"a".repeat(64)));
        for bad in ["", "UPPER:1", "a b", "x:", "a/../b"] {
            assert!(normalize_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mirrors_come_first() {
        let mut cfg = RegistryConfig::default();
        cfg.mirrors
            .insert("docker.io".into(), vec!["http://127.0.0.1:5000/".into()]);
        let r = parse("python:3.13").unwrap();
        assert_eq!(
            sources(&r, &cfg),
            vec![
                Source {
                    host: "127.0.0.1:5000".into(),
                    insecure: true
                },
                Source {
                    host: "index.docker.io".into(),
                    insecure: false
                },
            ]
        );
        let m = at(&r, "127.0.0.1:5000");
        assert_eq!(m.whole(), "127.0.0.1:5000/library/python:3.13");
        cfg.insecure.push("reg.local:5000".into());
        let r = parse("reg.local:5000/a:1").unwrap();
        assert_eq!(
            sources(&r, &cfg),
            vec![Source {
                host: "reg.local:5000".into(),
                insecure: true
            }]
        );
    }
}
