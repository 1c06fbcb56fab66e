//! The shapes of the template build API (as the E2B SDKs send them) and what a build stores.

use crate::error::DaemonError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `POST /v3/templates`: a build request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRequest {
    /// The template's name, optionally with `:tag`.
    pub name: Option<String>,
    /// The deprecated name field.
    pub alias: Option<String>,
    /// Tags to point at the build.
    pub tags: Option<Vec<String>>,
    /// vCPUs of the template's sandboxes.
    pub cpu_count: Option<i64>,
    /// Memory of the template's sandboxes.
    #[serde(rename = "memoryMB")]
    pub memory_mb: Option<i64>,
}

/// `POST /v2/templates/{id}/builds/{build}`: what to build.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStart {
    /// Base image reference.
    pub from_image: Option<String>,
    /// Base template name.
    pub from_template: Option<String>,
    /// Credentials for the base image's registry.
    pub from_image_registry: Option<serde_json::Value>,
    /// Rebuild every step.
    #[serde(default)]
    pub force: bool,
    /// The steps.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Command started in every sandbox of the template.
    pub start_cmd: Option<String>,
    /// Command that passes once the start command is ready.
    pub ready_cmd: Option<String>,
}

/// One step.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepSpec {
    /// `RUN`, `COPY`, `ENV`, `WORKDIR` or `USER`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The step's arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Hash of a `COPY` step's files (its upload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
    /// Rebuild this step (and the ones after it).
    #[serde(default)]
    pub force: bool,
}

/// What a build stores (the `config` column) and its sandboxes get.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BuildConfig {
    /// vCPUs of the template's sandboxes.
    pub cpu_count: Option<u32>,
    /// Memory of the template's sandboxes.
    #[serde(rename = "memoryMB")]
    pub memory_mb: Option<u64>,
    /// Tags the build gets when it is ready.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Environment of the template's sandboxes (the image's and `ENV` steps').
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    /// Working directory of the last `WORKDIR`.
    pub workdir: Option<String>,
    /// User of the last `USER`.
    pub user: Option<String>,
    /// Started in every sandbox of the template.
    pub start_cmd: Option<String>,
    /// Passes once the start command is ready.
    pub ready_cmd: Option<String>,
    /// Bytes of the layers the template stacks (set when the build is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The runtime templates of its base and of each step, in order: the cache the clean-up
    /// keeps while the build exists (`gc.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_templates: Vec<String>,
}

/// Most steps of one build.
pub const MAX_STEPS: usize = 256;
/// Longest argument of a step.
const MAX_ARG: usize = 64 << 10;

/// A template name (`[a-z0-9._-]`, the rules of template references) and its tag.
pub fn split_name(raw: &str) -> Result<(String, Option<String>), DaemonError> {
    let (name, tag) = crate::templates::parse_template_ref(raw)?;
    if raw.contains('/') {
        return Err(DaemonError::InvalidInput(format!(
            "template name '{raw}': namespaces are not supported by sandboxd"
        )));
    }
    Ok((name, tag))
}

/// Checks a tag (`[A-Za-z0-9._-]{1,128}`).
pub fn check_tag(tag: &str) -> Result<(), DaemonError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(DaemonError::InvalidInput(format!("invalid tag '{tag}'")))
    }
}

/// Checks the steps of a build before it starts: kinds, argument counts and sizes.
pub fn check_steps(steps: &[StepSpec]) -> Result<(), DaemonError> {
    if steps.len() > MAX_STEPS {
        return Err(DaemonError::InvalidInput(format!(
            "a build has at most {MAX_STEPS} steps, this one {}",
            steps.len()
        )));
    }
    for (i, s) in steps.iter().enumerate() {
        let n = i + 1;
        let bad = |m: String| DaemonError::InvalidInput(format!("step {n} ({}): {m}", s.kind));
        if s.args.iter().any(|a| a.len() > MAX_ARG || a.contains('\0')) {
            return Err(bad("an argument is too long or has a NUL byte".into()));
        }
        let args = s.args.len();
        match s.kind.as_str() {
            "RUN" if (1..=2).contains(&args) && !s.args[0].trim().is_empty() => {}
            "COPY" if (2..=4).contains(&args) => {
                let hash = s.files_hash.as_deref().unwrap_or_default();
                if !is_files_hash(hash) {
                    return Err(bad("needs the filesHash of its uploaded files".into()));
                }
                if let Some(mode) = s.args.get(3).filter(|m| !m.is_empty()) {
                    parse_mode(mode).map_err(bad)?;
                }
            }
            "ENV" if args % 2 == 0 => {
                for k in s.args.iter().step_by(2) {
                    let ok = !k.is_empty() && !k.contains('=') && !k.bytes().any(|b| b.is_ascii_whitespace());
                    if !ok {
                        return Err(bad(format!("invalid variable name '{k}'")));
                    }
                }
            }
            "WORKDIR" if args == 1 && s.args[0].starts_with('/') => {}
            "USER" if args == 1 && !s.args[0].is_empty() => {}
            "RUN" | "COPY" | "ENV" | "WORKDIR" | "USER" => {
                return Err(bad(format!("unexpected arguments {:?}", s.args)));
            }
            other => {
                return Err(DaemonError::InvalidInput(format!(
                    "step {n}: unknown step type '{other}' (RUN, COPY, ENV, WORKDIR and USER are known)"
                )));
            }
        }
    }
    Ok(())
}

/// Whether `h` is a files hash (sha256 hex).
pub fn is_files_hash(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A `COPY` mode (octal, `0755`).
pub fn parse_mode(m: &str) -> Result<u32, String> {
    u32::from_str_radix(m, 8)
        .ok()
        .filter(|v| *v <= 0o7777)
        .ok_or_else(|| format!("invalid mode '{m}' (octal, at most 7777)"))
}

/// What later steps see of the earlier ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StepContext {
    /// Environment.
    pub envs: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// The user steps run as (`user` unless a `USER` step said otherwise).
    pub user: String,
}

/// The runtime template name of `step` over `parent` in `ctx`: the same inputs give the same
/// name, so an unchanged step is found again.
pub fn step_template_name(parent: &str, step: &StepSpec, ctx: &StepContext) -> String {
    let mut h = Sha256::new();
    h.update(b"sandboxd-template-step-v1\n");
    h.update(parent.as_bytes());
    h.update(b"\n");
    h.update(step.kind.as_bytes());
    for a in &step.args {
        h.update(b"\n");
        h.update((a.len() as u64).to_le_bytes());
        h.update(a.as_bytes());
    }
    h.update(b"\n");
    h.update(step.files_hash.as_deref().unwrap_or_default().as_bytes());
    if let Ok(c) = serde_json::to_vec(ctx) {
        h.update(&c);
    }
    let hex = hex::encode(h.finalize());
    format!("b{}", &hex[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: &str, args: &[&str]) -> StepSpec {
        StepSpec {
            kind: kind.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn steps_are_checked() {
        check_steps(&[
            step("RUN", &["echo hi", "root"]),
            step("ENV", &["A", "1"]),
            step("WORKDIR", &["/app"]),
            step("USER", &["root"]),
        ])
        .unwrap();
        for bad in [
            step("RUN", &[""]),
            step("ENV", &["A"]),
            step("ENV", &["A B", "1"]),
            step("WORKDIR", &["rel"]),
            step("FROM", &["x"]),
            step("COPY", &["a", "/b"]),
        ] {
            assert!(check_steps(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        let mut c = step("COPY", &["a", "/b", "", "0755"]);
        c.files_hash = Some("a".repeat(64));
        check_steps(&[c.clone()]).unwrap();
        c.args[3] = "99".into();
        assert!(check_steps(&[c]).is_err());
    }

    #[test]
    fn step_names_change_with_every_input() {
        let ctx = StepContext {
            user: "user".into(),
            ..Default::default()
        };
        let s = step("RUN", &["echo hi"]);
        let a = step_template_name("base", &s, &ctx);
        assert_eq!(a, step_template_name("base", &s, &ctx));
        assert_eq!(a.len(), 25);
        assert_ne!(a, step_template_name("base2", &s, &ctx));
        assert_ne!(a, step_template_name("base", &step("RUN", &["echo ho"]), &ctx));
        let mut root = ctx.clone();
        root.user = "root".into();
        assert_ne!(a, step_template_name("base", &s, &root));
        let mut f = s.clone();
        f.files_hash = Some("0".repeat(64));
        assert_ne!(a, step_template_name("base", &f, &ctx));
    }
}
