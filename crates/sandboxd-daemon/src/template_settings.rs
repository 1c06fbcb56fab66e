//! A template's own settings, kept across its builds (`PATCH /templates/{id}`,
//! `docs/templates.md`, "Template settings"): E2B's `public`, and sandboxd's `bandwidth`, the
//! rate limits of its sandboxes whose create sets none.

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::templates::parse_template_ref;
use sandboxd_store::SnapshotResolution;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What `PATCH /templates/{id}` sets, stored as JSON in the registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSettings {
    /// E2B's `public`. One daemon has one team (one API key), so it changes only what the
    /// template listings report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// `{egressMbps, ingressMbps}` (checked; either may be absent: no limit that way): the
    /// limits of the template's sandboxes whose create sets no `network.bandwidth`, in place of
    /// the daemon's `--default-*-mbps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Value>,
}

impl TemplateSettings {
    /// Applies an update: a field left out is kept, `null` clears it. On error nothing changes.
    fn apply(&mut self, update: &Map<String, Value>) -> Result<(), DaemonError> {
        let invalid = |m: String| DaemonError::InvalidInput(m);
        if let Some(k) = update
            .keys()
            .find(|k| !matches!(k.as_str(), "public" | "bandwidth"))
        {
            return Err(invalid(format!(
                "unknown template setting {k:?} (public, bandwidth)"
            )));
        }
        let public = match update.get("public") {
            None => self.public,
            Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(invalid("public: must be true or false".into())),
        };
        let bandwidth = match update.get("bandwidth") {
            None => self.bandwidth.clone(),
            Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => {
                let bw =
                    sandboxd_net::policy::parse_bandwidth(Some(v)).map_err(|e| invalid(e.to_string()))?;
                let mbps = |k: Option<u64>| k.map(|k| serde_json::json!(k as f64 / 1000.0));
                let mut m = Map::new();
                if let Some(v) = mbps(bw.egress_kbit) {
                    m.insert("egressMbps".into(), v);
                }
                if let Some(v) = mbps(bw.ingress_kbit) {
                    m.insert("ingressMbps".into(), v);
                }
                Some(Value::Object(m))
            }
            Some(_) => {
                return Err(invalid(
                    "bandwidth: must be an object {egressMbps, ingressMbps} or null".into(),
                ));
            }
        };
        (self.public, self.bandwidth) = (public, bandwidth);
        Ok(())
    }

    /// The rate limits (kbit/s: egress, ingress) a template's sandboxes get by default, if the
    /// template sets them.
    pub fn bandwidth_kbit(&self) -> Option<(Option<u64>, Option<u64>)> {
        let bw = sandboxd_net::policy::parse_bandwidth(self.bandwidth.as_ref()).ok()?;
        self.bandwidth.as_ref().map(|_| (bw.egress_kbit, bw.ingress_kbit))
    }
}

/// A template whose settings were updated.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatedTemplate {
    /// The template id (a built-in template's is its name).
    pub template_id: String,
    /// Its name.
    pub name: String,
    /// Its settings after the update.
    pub settings: TemplateSettings,
}

impl Daemon {
    /// `PATCH /templates/{id}`: updates the settings of a built or built-in template (by id or
    /// name). A snapshot has none (its sandboxes take what their create gives).
    pub async fn update_template(
        &self,
        raw: &str,
        update: Map<String, Value>,
    ) -> Result<UpdatedTemplate, DaemonError> {
        let (name, tag) = parse_template_ref(raw)?;
        if tag.is_some() {
            return Err(DaemonError::InvalidInput(format!(
                "'{raw}': settings belong to a template, not to one of its tags"
            )));
        }
        let n2 = name.clone();
        let (template_id, name) = match self.registry.call(move |s| s.built_template_id(&n2)).await? {
            Some(found) => found,
            None => {
                let n2 = name.clone();
                if let SnapshotResolution::Found(..) =
                    self.registry.call(move |s| s.resolve_snapshot(&n2)).await?
                {
                    return Err(DaemonError::InvalidInput(format!(
                        "'{name}' is a snapshot: it has no template settings"
                    )));
                }
                if !self.template_exists(&name) {
                    return Err(DaemonError::TemplateNotFound(raw.trim().to_string()));
                }
                (name.clone(), name)
            }
        };
        let mut settings = self.template_settings(&template_id).await?;
        settings.apply(&update)?;
        let json = (settings != TemplateSettings::default())
            .then(|| serde_json::to_string(&settings))
            .transpose()
            .map_err(|e| DaemonError::Internal(e.to_string()))?;
        let t2 = template_id.clone();
        self.registry
            .call(move |s| s.set_template_settings(&t2, json.as_deref()))
            .await?;
        Ok(UpdatedTemplate {
            template_id,
            name,
            settings,
        })
    }

    /// The settings of template `template_id` (defaults when none are set).
    pub async fn template_settings(&self, template_id: &str) -> Result<TemplateSettings, DaemonError> {
        let t2 = template_id.to_string();
        let raw = self.registry.call(move |s| s.template_settings(&t2)).await?;
        Ok(raw
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn updates_keep_what_they_leave_out_and_null_clears() {
        let mut s = TemplateSettings::default();
        s.apply(&update(json!({"bandwidth": {"egressMbps": 1.5}})))
            .unwrap();
        assert_eq!(s.bandwidth, Some(json!({"egressMbps": 1.5})));
        assert_eq!(s.bandwidth_kbit(), Some((Some(1500), None)));
        s.apply(&update(json!({"public": true}))).unwrap();
        assert_eq!(
            (s.public, s.bandwidth_kbit()),
            (Some(true), Some((Some(1500), None)))
        );
        s.apply(&update(json!({"bandwidth": {}}))).unwrap();
        assert_eq!(
            s.bandwidth_kbit(),
            Some((None, None)),
            "{{}}: explicitly no limits"
        );
        s.apply(&update(json!({"bandwidth": null, "public": null})))
            .unwrap();
        assert_eq!(s, TemplateSettings::default());
        assert_eq!(s.bandwidth_kbit(), None);
    }

    #[test]
    fn bad_updates_are_refused_and_change_nothing() {
        let mut s = TemplateSettings {
            public: Some(false),
            bandwidth: Some(json!({"ingressMbps": 2.0})),
        };
        let before = s.clone();
        for (bad, names) in [
            (json!({"cpuCount": 2}), "cpuCount"),
            (json!({"public": "yes"}), "public"),
            (json!({"bandwidth": 5}), "bandwidth"),
            (json!({"bandwidth": {"egressMbps": 0}}), "bandwidth.egressMbps"),
            (json!({"bandwidth": {"egressMbps": "1"}}), "bandwidth.egressMbps"),
            (json!({"bandwidth": {"upMbps": 1}}), "bandwidth"),
            (
                json!({"public": true, "bandwidth": {"egressMbps": -1}}),
                "bandwidth",
            ),
        ] {
            let e = s.apply(&update(bad.clone())).unwrap_err();
            assert!(
                matches!(&e, DaemonError::InvalidInput(m) if m.contains(names)),
                "{bad}: {e}"
            );
            assert_eq!(s, before, "{bad}");
        }
    }
}
