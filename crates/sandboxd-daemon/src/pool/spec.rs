//! Pool settings: `--pool TEMPLATE=MIN[:MAX[:IDLE_SECS]]` flags and the config file's `pool`.

use sandboxd_runtime::SandboxBackend;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Idle timeout when a `--pool` flag gives none.
pub const DEFAULT_IDLE_SECS: u64 = 600;

/// The pool settings of one template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    /// Template name (`base`). Snapshot templates and templates with services are refused.
    pub template: String,
    /// Sandboxes kept ready at all times.
    pub min: usize,
    /// Upper bound of ready plus booting sandboxes (the pool grows towards it under demand).
    #[serde(default)]
    pub max: Option<usize>,
    /// Seconds a pooled sandbox may stay idle before it is recycled; 0 = never.
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
}

impl PoolSpec {
    /// `max`, defaulting to `min`.
    pub fn max(&self) -> usize {
        self.max.unwrap_or(self.min)
    }

    /// The idle timeout; `None` = never recycled.
    pub fn idle_timeout(&self) -> Option<Duration> {
        match self.idle_timeout_secs.unwrap_or(DEFAULT_IDLE_SECS) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        }
    }

    /// Checks the numbers and the template name's shape.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.template;
        if t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!("pool: invalid template name '{t}'"));
        }
        if self.max() == 0 {
            return Err(format!("pool {t}: max must be at least 1"));
        }
        if self.min > self.max() {
            return Err(format!("pool {t}: min {} is above max {}", self.min, self.max()));
        }
        if self.max() > 10_000 {
            return Err(format!("pool {t}: max {} is above 10000", self.max()));
        }
        Ok(())
    }
}

impl FromStr for PoolSpec {
    type Err = String;

    /// `TEMPLATE=MIN[:MAX[:IDLE_SECS]]`, for example `base=2:8:600`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage =
            || format!("invalid pool '{s}': expected TEMPLATE=MIN[:MAX[:IDLE_SECS]], e.g. base=2:8:600");
        let (template, nums) = s.split_once('=').ok_or_else(usage)?;
        let parts: Vec<&str> = nums.split(':').collect();
        if parts.len() > 3 {
            return Err(usage());
        }
        let num = |p: &str| p.trim().parse::<u64>().map_err(|_| usage());
        let spec = PoolSpec {
            template: template.trim().to_string(),
            min: num(parts[0])? as usize,
            max: parts.get(1).map(|p| num(p)).transpose()?.map(|v| v as usize),
            idle_timeout_secs: parts.get(2).map(|p| num(p)).transpose()?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// The daemon config file (`--config FILE`, JSON). Only `pool` for now; unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub pool: Vec<PoolSpec>,
}

impl ConfigFile {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&data).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates JSON config text.
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let c: ConfigFile = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        for p in &c.pool {
            p.validate()?;
        }
        Ok(c)
    }
}

/// Pool specs of the config file, overridden per template by the flags.
pub fn merge_specs(file: Vec<PoolSpec>, flags: Vec<PoolSpec>) -> Vec<PoolSpec> {
    let mut by_template: BTreeMap<String, PoolSpec> = BTreeMap::new();
    for p in file.into_iter().chain(flags) {
        by_template.insert(p.template.clone(), p);
    }
    by_template.into_values().collect()
}

/// Refuses pools of templates the backend knows are missing and of templates whose sandboxes
/// run services (the code interpreter reads env vars and the access token once at boot, so a
/// claim could not hand them over). Other unknown names may be built templates:
/// `Daemon::check_pool_templates` checks them once the registry is open.
pub fn check_templates(backend: &dyn SandboxBackend, specs: &[PoolSpec]) -> Result<(), String> {
    for p in specs {
        if !backend.has_template(&p.template) {
            if let Some(why) = backend.template_missing_reason(&p.template) {
                return Err(format!("pool {}: {why}", p.template));
            }
            // perhaps a built template: checked once the registry is open
            // (`Daemon::check_pool_templates`)
            continue;
        }
        if backend.template_has_services(&p.template) {
            return Err(format!(
                "pool {}: templates with services (the code interpreter) cannot be pooled: their \
                 services read env vars and the access token at boot",
                p.template
            ));
        }
    }
    Ok(())
}
