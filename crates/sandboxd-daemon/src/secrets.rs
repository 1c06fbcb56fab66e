//! Secrets (`docs/secrets.md`): the Secrets API of the newest SDKs — create, update (a new
//! version), get, list, delete. Values are write-only: sealed with XChaCha20-Poly1305 under the
//! data dir's key (`sandboxd_store::SECRETS_KEY_FILE`) before they reach the registry, bound to
//! the secret's id and version, and never returned, logged or shown by any read.

use crate::daemon::Daemon;
use crate::error::DaemonError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sandboxd_store::{SecretRow, StoreError};
use std::collections::BTreeMap;

/// Longest secret name, in bytes.
pub const MAX_NAME: usize = 256;
/// Largest secret value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Most metadata entries, and their size limits (upstream's).
pub const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY: usize = 128;
const MAX_METADATA_VALUE: usize = 1024;
const MAX_METADATA_TOTAL: usize = 8192;
/// Most secrets in one listing page (and the default).
pub const MAX_PAGE: usize = 100;

/// What a read shows of a secret (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// `sec_…` identifier.
    pub id: String,
    /// Name, lower case.
    pub name: String,
    /// Current version (1 for a new secret).
    pub version: i64,
    /// Customer metadata.
    pub metadata: BTreeMap<String, String>,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last update, Unix milliseconds.
    pub updated_at_ms: i64,
}

impl From<SecretRow> for SecretInfo {
    fn from(r: SecretRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            version: r.version,
            metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        }
    }
}

/// A secret name as stored: lower case; `None` when unusable (empty, too long, `{`, `}` or
/// control characters — it is interpolated into `${e2b.secrets.<name>}` —, or the `sec_`
/// prefix reserved for ids).
pub fn canonical_name(name: &str) -> Result<String, DaemonError> {
    let lower = name.to_lowercase();
    let bad = lower.is_empty()
        || lower.len() > MAX_NAME
        || lower.starts_with("sec_")
        || lower.chars().any(|c| c == '{' || c == '}' || c.is_control());
    if bad {
        return Err(DaemonError::InvalidInput(format!(
            "invalid secret name {name:?}: 1-{MAX_NAME} bytes without '{{', '}}' or control characters, not starting with 'sec_'"
        )));
    }
    Ok(lower)
}

fn check_value(value: &str) -> Result<(), DaemonError> {
    if value.is_empty() || value.len() > MAX_VALUE {
        return Err(DaemonError::InvalidInput(format!(
            "a secret value must be 1 to {MAX_VALUE} bytes"
        )));
    }
    Ok(())
}

fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), DaemonError> {
    let total: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
    if m.len() > MAX_METADATA_ENTRIES
        || m.iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE)
        || total > MAX_METADATA_TOTAL
    {
        return Err(DaemonError::InvalidInput(format!(
            "secret metadata: at most {MAX_METADATA_ENTRIES} entries, keys of 1-{MAX_METADATA_KEY} bytes, values up to {MAX_METADATA_VALUE} bytes, {MAX_METADATA_TOTAL} bytes in all"
        )));
    }
    Ok(())
}

fn not_found(key: &str) -> DaemonError {
    DaemonError::NotFound(format!("secret '{key}' not found"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The associated data a sealed value is bound to: its secret and version, so a sealed value
/// copied to another row or version does not open.
fn aad(id: &str, version: i64) -> Vec<u8> {
    format!("sandboxd secret {id} v{version}").into_bytes()
}

/// A fresh random nonce.
fn new_nonce() -> Result<[u8; 24], DaemonError> {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|e| DaemonError::Internal(format!("random nonce: {e}")))?;
    Ok(nonce)
}

/// Seals `value` for secret `id` at `version` with `nonce`: `(nonce, ciphertext)`.
fn seal(key: &[u8; 32], nonce: &[u8; 24], id: &str, version: i64, value: &str) -> (Vec<u8>, Vec<u8>) {
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: value.as_bytes(),
                aad: &aad(id, version),
            },
        )
        .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
    (nonce.to_vec(), sealed)
}

/// Opens a sealed value; an error when the key, row or version do not match.
fn open(key: &[u8; 32], row: &SecretRow) -> Result<String, DaemonError> {
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    if row.nonce.len() != 24 {
        return Err(DaemonError::Internal(format!("secret {}: bad nonce", row.id)));
    }
    let plain = cipher
        .decrypt(
            XNonce::from_slice(&row.nonce),
            Payload {
                msg: &row.sealed,
                aad: &aad(&row.id, row.version),
            },
        )
        .map_err(|_| {
            DaemonError::Internal(format!(
                "secret {} cannot be opened with this data dir's key",
                row.id
            ))
        })?;
    String::from_utf8(plain).map_err(|_| DaemonError::Internal(format!("secret {}: not UTF-8", row.id)))
}

impl Daemon {
    /// The sealing key, read (or made) once: the egress proxy asks for a value on every request
    /// with a header rule.
    async fn secrets_key(&self) -> Result<[u8; 32], DaemonError> {
        if let Some(k) = self.sealing_key.get() {
            return Ok(*k);
        }
        let key = self.registry.call(|s| s.secrets_key()).await?;
        Ok(*self.sealing_key.get_or_init(|| key))
    }

    /// Creates a secret (version 1); "conflict" if the name is taken.
    pub async fn create_secret(
        &self,
        name: &str,
        value: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<SecretInfo, DaemonError> {
        let name = canonical_name(name)?;
        check_value(value)?;
        check_metadata(&metadata)?;
        let key = self.secrets_key().await?;
        let id = format!("sec_{}", crate::ids::new_token().get(..24).unwrap_or_default());
        let (nonce, sealed) = seal(&key, &new_nonce()?, &id, 1, value);
        let now = now_ms();
        let row = SecretRow {
            seq: 0,
            id,
            name: name.clone(),
            version: 1,
            metadata: serde_json::to_string(&metadata).map_err(|e| DaemonError::Internal(e.to_string()))?,
            created_at_ms: now,
            updated_at_ms: now,
            nonce,
            sealed,
        };
        match self.registry.call(move |s| s.insert_secret(&row)).await {
            Ok(r) => Ok(r.into()),
            Err(StoreError::Duplicate(_)) => {
                Err(DaemonError::Conflict(format!("secret '{name}' already exists")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `value` as a secret's new version (by id or name); `metadata` replaces the
    /// stored metadata when given.
    pub async fn update_secret(
        &self,
        key: &str,
        value: &str,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<SecretInfo, DaemonError> {
        check_value(value)?;
        if let Some(m) = &metadata {
            check_metadata(m)?;
        }
        let lookup = lookup_key(key);
        let sealing_key = self.secrets_key().await?;
        let metadata = metadata
            .map(|m| serde_json::to_string(&m))
            .transpose()
            .map_err(|e| DaemonError::Internal(e.to_string()))?;
        let value = value.to_string();
        let nonce = new_nonce()?;
        let row = self
            .registry
            .call(move |s| {
                s.update_secret(&lookup, metadata.as_deref(), now_ms(), |id, version| {
                    seal(&sealing_key, &nonce, id, version, &value)
                })
            })
            .await?;
        row.map(Into::into).ok_or_else(|| not_found(key))
    }

    /// A secret by id or name.
    pub async fn secret(&self, key: &str) -> Result<SecretInfo, DaemonError> {
        let lookup = lookup_key(key);
        self.registry
            .call(move |s| s.get_secret(&lookup))
            .await?
            .map(Into::into)
            .ok_or_else(|| not_found(key))
    }

    /// One page of secrets, oldest first, and the token of the next page.
    pub async fn secrets(
        &self,
        limit: Option<usize>,
        next_token: Option<&str>,
    ) -> Result<(Vec<SecretInfo>, Option<String>), DaemonError> {
        let limit = limit.unwrap_or(MAX_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(DaemonError::InvalidInput(format!(
                "limit must be from 1 to {MAX_PAGE}"
            )));
        }
        let after = match next_token {
            None => 0,
            Some(t) => t
                .parse::<i64>()
                .ok()
                .filter(|s| *s >= 0)
                .ok_or_else(|| DaemonError::InvalidInput(format!("invalid nextToken {t:?}")))?,
        };
        let mut rows = self
            .registry
            .call(move |s| s.list_secrets(after, limit + 1))
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = more.then(|| rows.last().map(|r| r.seq.to_string())).flatten();
        Ok((rows.into_iter().map(Into::into).collect(), next))
    }

    /// Deletes a secret by id or name.
    pub async fn delete_secret(&self, key: &str) -> Result<(), DaemonError> {
        let lookup = lookup_key(key);
        if self.registry.call(move |s| s.delete_secret(&lookup)).await? {
            Ok(())
        } else {
            Err(not_found(key))
        }
    }

    /// The current value of a secret by name (for the egress proxy's placeholders; never
    /// returned by the API).
    pub async fn secret_value(&self, name: &str) -> Result<String, DaemonError> {
        let key = self.secrets_key().await?;
        let lookup = lookup_key(name);
        let row = self
            .registry
            .call(move |s| s.get_secret(&lookup))
            .await?
            .ok_or_else(|| not_found(name))?;
        open(&key, &row)
    }
}

/// The secret names `${e2b.secrets.<name>}` placeholders in a `network` object's `rules`
/// header values refer to.
pub fn secret_references(network: Option<&serde_json::Value>) -> Vec<String> {
    const OPEN: &str = "${e2b.secrets.";
    let mut out = Vec::new();
    let Some(rules) = network.and_then(|n| n.get("rules")).and_then(|r| r.as_object()) else {
        return out;
    };
    let values = rules
        .values()
        .filter_map(|l| l.as_array())
        .flatten()
        .filter_map(|r| r.get("transform")?.get("headers")?.as_object())
        .flat_map(|h| h.values().filter_map(|v| v.as_str()));
    for v in values {
        let mut rest = v;
        while let Some(i) = rest.find(OPEN) {
            let after = &rest[i + OPEN.len()..];
            let Some(end) = after.find('}') else { break };
            out.push(after[..end].to_lowercase());
            rest = &after[end + 1..];
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Daemon {
    /// "invalid input" naming the first secret a `network` object's rules refer to that does
    /// not exist.
    pub async fn check_secret_references(
        &self,
        network: Option<&serde_json::Value>,
    ) -> Result<(), DaemonError> {
        for name in secret_references(network) {
            let lookup = name.clone();
            if self
                .registry
                .call(move |s| s.get_secret(&lookup))
                .await?
                .is_none()
            {
                return Err(DaemonError::InvalidInput(format!(
                    "network.rules: unknown secret '{name}' in a ${{e2b.secrets.{name}}} placeholder"
                )));
            }
        }
        Ok(())
    }
}

/// How a path key is looked up: ids as given, names in their stored (lower-case) form.
fn lookup_key(key: &str) -> String {
    if key.starts_with("sec_") {
        key.to_string()
    } else {
        key.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_values_and_metadata_are_checked() {
        assert_eq!(canonical_name("OpenAI-Key").unwrap(), "openai-key");
        for bad in ["", "a{b", "a}b", "a\nb", "sec_x", "SEC_x", &"a".repeat(300)] {
            assert!(canonical_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_value("").is_err());
        assert!(check_value(&"x".repeat(MAX_VALUE + 1)).is_err());
        let many: BTreeMap<String, String> = (0..33).map(|i| (i.to_string(), String::new())).collect();
        assert!(check_metadata(&many).is_err());
        let big = BTreeMap::from([("k".to_string(), "v".repeat(1025))]);
        assert!(check_metadata(&big).is_err());
        assert!(check_metadata(&BTreeMap::from([("k".into(), "v".into())])).is_ok());
    }

    #[test]
    fn placeholders_are_found_in_rule_headers() {
        let net = serde_json::json!({"rules": {"api.test": [
            {"transform": {"headers": {"Authorization": "Bearer ${e2b.secrets.OpenAI}", "X": "${e2b.secrets.b}-${e2b.secrets.a}"}}},
            {"transform": {"headers": {"Y": "plain ${e2b.secrets.unterminated"}}}
        ]}});
        assert_eq!(secret_references(Some(&net)), ["a", "b", "openai"]);
        assert!(secret_references(None).is_empty());
    }

    #[test]
    fn sealed_values_open_only_for_their_row_and_version() {
        let key = [7u8; 32];
        let (nonce, sealed) = seal(&key, &new_nonce().unwrap(), "sec_a", 1, "hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "stored in clear");
        let row = SecretRow {
            seq: 1,
            id: "sec_a".into(),
            name: "a".into(),
            version: 1,
            metadata: "{}".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            nonce,
            sealed,
        };
        assert_eq!(open(&key, &row).unwrap(), "hunter2");
        assert!(open(&[8u8; 32], &row).is_err(), "another key");
        assert!(
            open(
                &key,
                &SecretRow {
                    version: 2,
                    ..row.clone()
                }
            )
            .is_err(),
            "another version"
        );
        assert!(
            open(
                &key,
                &SecretRow {
                    id: "sec_b".into(),
                    ..row
                }
            )
            .is_err(),
            "another row"
        );
    }
}
