//! Metrics reads: a sandbox's sample history, the latest samples of several sandboxes and the
//! daemon counters as Prometheus text (`docs/observability.md`).

use crate::daemon::Daemon;
use crate::error::DaemonError;
pub use crate::metrics_store::Sample;
use sandboxd_store::SandboxState;
use std::collections::BTreeMap;

impl Daemon {
    /// Samples of a running or paused sandbox with `start <= unix seconds <= end`, oldest first.
    pub fn metrics_history(
        &self,
        id: &str,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<Vec<Sample>, DaemonError> {
        match self.sandboxes.get(id) {
            Some(s) if matches!(s.state(), SandboxState::Running | SandboxState::Paused) => {}
            _ => return Err(DaemonError::SandboxNotFound(id.to_string())),
        }
        Ok(self.metrics.range(id, start, end))
    }

    /// The latest sample of each listed sandbox that exists and has one.
    pub fn latest_metrics(&self, ids: &[String]) -> BTreeMap<String, Sample> {
        ids.iter()
            .filter(|id| self.sandboxes.get(id).is_some())
            .filter_map(|id| Some((id.clone(), self.metrics.latest(id)?)))
            .collect()
    }

    /// The daemon counters and sandbox counts per state in the Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for st in [
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Paused,
            SandboxState::Killing,
        ] {
            counts.insert(st.as_str(), 0);
        }
        for s in self.sandboxes.all() {
            *counts.entry(s.state().as_str()).or_default() += 1;
        }
        let states: Vec<(&str, usize)> = counts.into_iter().collect();
        let mut text = self.counters.render(&states, self.metrics.len());
        self.render_network(&mut text);
        self.render_image_store(&mut text);
        text
    }

    /// The image store's layers and their size (`docs/templates.md`).
    fn render_image_store(&self, o: &mut String) {
        use std::fmt::Write;
        let (layers, bytes) = self.builds.images.get().map(|s| s.usage()).unwrap_or((0, 0));
        let _ = writeln!(
            o,
            "# HELP sandboxd_image_layers Unpacked image layers in the store.\n# TYPE sandboxd_image_layers gauge\nsandboxd_image_layers {layers}"
        );
        let _ = writeln!(
            o,
            "# HELP sandboxd_image_layer_bytes Bytes the image layers in the store unpacked to.\n# TYPE sandboxd_image_layer_bytes gauge\nsandboxd_image_layer_bytes {bytes}"
        );
    }

    /// Per-sandbox traffic of the sandboxes' network links, from their latest samples.
    fn render_network(&self, o: &mut String) {
        use std::fmt::Write;
        let rows: Vec<(String, sandboxd_runtime::NetworkCounters)> = self
            .sandboxes
            .all()
            .iter()
            .filter_map(|s| {
                let id = s.rec.id.clone();
                let n = self.metrics.latest(&id)?.network?;
                Some((id, n))
            })
            .collect();
        type Counter = fn(&sandboxd_runtime::NetworkCounters) -> u64;
        let series: [(&str, &str, Counter); 6] = [
            (
                "sandboxd_sandbox_network_receive_bytes_total",
                "Bytes a sandbox received on its network link.",
                |n| n.rx_bytes,
            ),
            (
                "sandboxd_sandbox_network_receive_packets_total",
                "Packets a sandbox received on its network link.",
                |n| n.rx_packets,
            ),
            (
                "sandboxd_sandbox_network_transmit_bytes_total",
                "Bytes a sandbox sent on its network link.",
                |n| n.tx_bytes,
            ),
            (
                "sandboxd_sandbox_network_transmit_packets_total",
                "Packets a sandbox sent on its network link.",
                |n| n.tx_packets,
            ),
            (
                "sandboxd_sandbox_network_denied_packets_total",
                "Packets of a sandbox the packet filter refused by its egress policy.",
                |n| n.denied_packets,
            ),
            (
                "sandboxd_sandbox_network_denied_connections_total",
                "Connections of a sandbox the egress proxy refused by its egress policy.",
                |n| n.denied_connections,
            ),
        ];
        for (name, help, get) in series {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (id, n) in &rows {
                let _ = writeln!(o, "{name}{{sandbox=\"{id}\"}} {}", get(n));
            }
        }
    }
}
