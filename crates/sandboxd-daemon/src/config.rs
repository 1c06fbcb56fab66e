//! The domain's configuration: daemon-wide limits, template defaults, warm pools.

use std::time::Duration;

/// Daemon-wide maxima. Requests above them are rejected with a clear 400 (timeouts, limits)
/// or 429 (concurrency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonLimits {
    /// Largest `cpuCount` a sandbox may get.
    pub max_cpu: u32,
    /// Largest `memoryMB` a sandbox may get.
    pub max_memory_mb: u64,
    /// Largest `diskSizeMB` a sandbox may get.
    pub max_disk_mb: u64,
    /// Longest sandbox timeout (create, set_timeout, connect).
    pub max_timeout: Duration,
    /// Sandboxes that may exist at once (running, paused and being created).
    pub max_sandboxes: usize,
    /// Largest snapshot (or fork checkpoint), in MiB; a sandbox's own `diskSizeMB` limits its
    /// snapshots too. 0: no limit but the disk quota and the host's free space.
    pub max_snapshot_mb: u64,
    /// Most MiB all snapshots together may take (0: no limit but the host's free space).
    pub max_snapshot_store_mb: u64,
}

impl Default for DaemonLimits {
    fn default() -> Self {
        Self {
            max_cpu: 8,
            max_memory_mb: 8192,
            max_disk_mb: 10240,
            max_timeout: Duration::from_secs(24 * 3600),
            max_sandboxes: 1000,
            max_snapshot_mb: 10240,
            max_snapshot_store_mb: 0,
        }
    }
}

/// Template defaults when a create request gives no limits (E2B's base template).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateDefaults {
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub pids: u64,
    /// Rate limits (kbit/s; `network.bandwidth`, `docs/network.md`) of sandboxes whose
    /// create does not set `bandwidth`: what they send, what they receive.
    pub egress_kbit: Option<u64>,
    pub ingress_kbit: Option<u64>,
}

impl Default for TemplateDefaults {
    fn default() -> Self {
        Self {
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 1024,
            pids: 1024,
            egress_kbit: None,
            ingress_kbit: None,
        }
    }
}

/// Memory default of the code-interpreter templates: the Python kernel with pandas and
/// matplotlib takes ~150 MiB and starting Deno's JavaScript kernel peaks ~200 MiB more, so two
/// or three contexts do not fit in the base template's 512 MiB.
pub const INTERPRETER_MEMORY_MB: u64 = 1024;

impl TemplateDefaults {
    /// `network` with the default `bandwidth` added when it sets none (an explicit
    /// `"bandwidth": null` means no limit and is kept).
    pub fn with_default_bandwidth(&self, network: Option<serde_json::Value>) -> Option<serde_json::Value> {
        if self.egress_kbit.is_none() && self.ingress_kbit.is_none() {
            return network;
        }
        let mut net = match network {
            Some(serde_json::Value::Object(m)) => m,
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            // not an object: left for the check to refuse
            Some(other) => return Some(other),
        };
        if !net.contains_key("bandwidth") {
            let mbps = |k: Option<u64>| k.map(|k| serde_json::json!(k as f64 / 1000.0));
            let mut b = serde_json::Map::new();
            if let Some(v) = mbps(self.egress_kbit) {
                b.insert("egressMbps".into(), v);
            }
            if let Some(v) = mbps(self.ingress_kbit) {
                b.insert("ingressMbps".into(), v);
            }
            net.insert("bandwidth".into(), serde_json::Value::Object(b));
        }
        Some(serde_json::Value::Object(net))
    }

    /// The defaults of one template (resolved id): the base defaults, with more memory for the
    /// code-interpreter templates.
    pub fn for_template(&self, template_id: &str) -> Self {
        let mut d = *self;
        if template_id.starts_with("code-interpreter") {
            d.memory_mb = d.memory_mb.max(INTERPRETER_MEMORY_MB);
        }
        d
    }
}

/// What the [`crate::Daemon`] needs: limits, template defaults and warm pools.
#[derive(Debug, Clone, Default)]
pub struct DaemonConfig {
    pub limits: DaemonLimits,
    pub template_defaults: TemplateDefaults,
    /// Warm pools of booted, idle sandboxes per template (`pool/`, `docs/pool.md`).
    pub pool: Vec<crate::pool::spec::PoolSpec>,
    /// Template builds and images (`template_builds/`, `docs/templates.md`).
    pub builds: BuildsConfig,
}

/// Where template builds keep their files and where images come from.
#[derive(Debug, Clone, Default)]
pub struct BuildsConfig {
    /// The data dir (`<data>/images`, `<data>/template-files`, `<data>/templates`); empty:
    /// template builds and image pulls are not available.
    pub data_dir: std::path::PathBuf,
    /// Registries, mirrors and credentials of image pulls.
    pub registry: sandboxd_image::RegistryConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_templates_get_more_memory() {
        let d = TemplateDefaults::default();
        assert_eq!(d.for_template("base"), d);
        assert_eq!(
            d.for_template("code-interpreter-v1").memory_mb,
            INTERPRETER_MEMORY_MB
        );
        assert_eq!(d.for_template("code-interpreter").cpu_count, d.cpu_count);
        let big = TemplateDefaults { memory_mb: 4096, ..d };
        assert_eq!(big.for_template("code-interpreter-v1").memory_mb, 4096);
    }

    #[test]
    fn default_bandwidth_fills_in_only_what_the_create_leaves_out() {
        use serde_json::json;
        let none = TemplateDefaults::default();
        assert_eq!(none.with_default_bandwidth(None), None);
        let d = TemplateDefaults {
            egress_kbit: Some(1000),
            ingress_kbit: Some(2500),
            ..none
        };
        assert_eq!(
            d.with_default_bandwidth(None),
            Some(json!({"bandwidth": {"egressMbps": 1.0, "ingressMbps": 2.5}}))
        );
        assert_eq!(
            d.with_default_bandwidth(Some(json!({"allowOut": ["a.test"]}))),
            Some(json!({"allowOut": ["a.test"], "bandwidth": {"egressMbps": 1.0, "ingressMbps": 2.5}}))
        );
        // the create's own limits, or an explicit null (no limit), win
        let own = json!({"bandwidth": {"egressMbps": 7}});
        assert_eq!(d.with_default_bandwidth(Some(own.clone())), Some(own));
        let off = json!({"bandwidth": null});
        assert_eq!(d.with_default_bandwidth(Some(off.clone())), Some(off));
        // one direction only
        let up = TemplateDefaults {
            egress_kbit: Some(64),
            ..none
        };
        assert_eq!(
            up.with_default_bandwidth(None),
            Some(json!({"bandwidth": {"egressMbps": 0.064}}))
        );
        // not an object: left for the check to refuse
        assert_eq!(d.with_default_bandwidth(Some(json!([1]))), Some(json!([1])));
    }
}
