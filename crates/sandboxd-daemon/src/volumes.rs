//! Named persistent volumes (`docs/volumes.md`): create, list, get, delete. Sandboxes mount
//! them with `volumeMounts` on create (`create.rs`).

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::ids::{new_sandbox_id, new_token};
use sandboxd_runtime::namespace::quota::MIN_DISK_MB;
use sandboxd_runtime::namespace::volumes as mount_rules;
use sandboxd_store::{MountRow, StoreError, VolumeDeletion, VolumeRow};

/// Size of a volume whose create request gives none (a sparse image: costs only what is used).
pub const DEFAULT_VOLUME_MB: u64 = 1024;
/// Longest volume name.
const MAX_NAME_LEN: usize = 64;

/// Volume names: 1–64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), DaemonError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DaemonError::InvalidInput(format!(
            "invalid volume name {name:?}: 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )))
    }
}

/// Checks a create request's `volumeMounts` (`(name, path)` pairs): at most
/// [`MAX_MOUNTS`](mount_rules::MAX_MOUNTS) entries, valid names, allowed paths
/// (`check_mount_path`), no path twice and none inside another. Whether the volumes exist is
/// decided at create.
pub fn check_mounts(mounts: Vec<(String, String)>) -> Result<Vec<(String, String)>, DaemonError> {
    if mounts.len() > mount_rules::MAX_MOUNTS {
        return Err(DaemonError::InvalidInput(format!(
            "volumeMounts: at most {} entries",
            mount_rules::MAX_MOUNTS
        )));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(mounts.len());
    for (name, path) in mounts {
        check_name(&name)?;
        mount_rules::check_mount_path(&path).map_err(DaemonError::InvalidInput)?;
        if let Some((_, other)) = out
            .iter()
            .find(|(_, p)| mount_rules::is_at_or_below(p, &path) || mount_rules::is_at_or_below(&path, p))
        {
            return Err(DaemonError::InvalidInput(format!(
                "volumeMounts: paths '{other}' and '{path}' overlap"
            )));
        }
        out.push((name, path));
    }
    Ok(out)
}

/// A volume id or name from a request (checked like a name: ids are a subset).
fn check_key(raw: &str) -> Result<(), DaemonError> {
    check_name(raw).map_err(|_| DaemonError::InvalidInput(format!("invalid volume id {raw:?}")))
}

fn not_found(key: &str) -> DaemonError {
    DaemonError::NotFound(format!("volume '{key}' not found"))
}

impl Daemon {
    /// Creates a volume of `size_mb` (default [`DEFAULT_VOLUME_MB`]); "conflict" if the name
    /// is taken.
    pub async fn create_volume(&self, name: String, size_mb: Option<i64>) -> Result<VolumeRow, DaemonError> {
        check_name(&name)?;
        let max = self.config.limits.max_disk_mb;
        let size_mb = match size_mb {
            None => DEFAULT_VOLUME_MB.min(max),
            Some(s) if s < MIN_DISK_MB as i64 => {
                return Err(DaemonError::InvalidInput(format!(
                    "sizeMB must be at least {MIN_DISK_MB}"
                )));
            }
            Some(s) if s as u64 > max => {
                return Err(DaemonError::InvalidInput(format!(
                    "sizeMB {s} is above this daemon's maximum of {max}"
                )));
            }
            Some(s) => s as u64,
        };
        let row = VolumeRow {
            seq: 0,
            id: new_sandbox_id(),
            name,
            size_mb,
            token: new_token(),
            created_at_us: chrono::Utc::now().timestamp_micros(),
        };
        // The row first (it decides name clashes); without storage it is removed again.
        let r = row.clone();
        let row = match self.registry.call(move |s| s.insert_volume(&r)).await {
            Ok(row) => row,
            Err(StoreError::Duplicate(name)) => {
                return Err(DaemonError::Conflict(format!(
                    "a volume named '{name}' already exists"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = self.backend.create_volume(&row.id, size_mb).await {
            let id = row.id.clone();
            if let Err(de) = self.registry.call(move |s| s.delete_volume(&id)).await {
                tracing::error!(volume = %row.id, "removing the row of a failed volume: {de}");
            }
            return Err(e.into());
        }
        tracing::info!(volume = %row.id, name = %row.name, size_mb, "volume created");
        Ok(row)
    }

    /// Every volume.
    pub async fn list_volumes(&self) -> Result<Vec<VolumeRow>, DaemonError> {
        Ok(self.registry.call(|s| s.list_volumes()).await?)
    }

    /// A volume by id or name.
    pub async fn volume(&self, key: &str) -> Result<VolumeRow, DaemonError> {
        check_key(key)?;
        let k = key.to_string();
        match self.registry.call(move |s| s.get_volume(&k)).await? {
            Some(v) => Ok(v),
            None => Err(not_found(key)),
        }
    }

    /// Deletes a volume by id or name; "conflict" while a sandbox (running or paused) mounts it.
    pub async fn delete_volume(&self, key: &str) -> Result<(), DaemonError> {
        check_key(key)?;
        let k = key.to_string();
        let row = match self.registry.call(move |s| s.delete_volume(&k)).await? {
            VolumeDeletion::Deleted(row) => row,
            VolumeDeletion::NotFound => return Err(not_found(key)),
            VolumeDeletion::InUse(ids) => {
                return Err(DaemonError::Conflict(format!(
                    "volume '{key}' is mounted by sandbox(es) {}: kill them first",
                    ids.join(", ")
                )));
            }
        };
        // The row is gone, so no new sandbox can mount it: remove its storage.
        if let Err(e) = self.backend.delete_volume(&row.id).await {
            tracing::error!(volume = %row.id, "removing the storage of a deleted volume: {e}");
        }
        tracing::info!(volume = %row.id, name = %row.name, "volume deleted");
        Ok(())
    }

    /// The volumes a sandbox mounts.
    pub async fn sandbox_volumes(&self, id: &str) -> Result<Vec<MountRow>, DaemonError> {
        let id = id.to_string();
        Ok(self.registry.call(move |s| s.sandbox_volumes(&id)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(n, p)| (n.to_string(), p.to_string())).collect()
    }

    #[test]
    fn mount_lists() {
        let ok = check_mounts(pairs(&[("a", "/data"), ("a", "/home/user/x")]));
        assert_eq!(ok.unwrap()[1], ("a".to_string(), "/home/user/x".to_string()));
        for bad in [
            &[("a", "data")][..],
            &[("a", "/proc")],
            &[("a", "/")],
            &[("a", "/x/../etc")],
            &[("a/b", "/x")],
            &[("a", "/x"), ("b", "/x")],
            &[("a", "/x"), ("b", "/x/y")],
        ] {
            assert!(
                matches!(check_mounts(pairs(bad)), Err(DaemonError::InvalidInput(_))),
                "{bad:?}"
            );
        }
        let many: Vec<_> = (0..17).map(|i| ("a".to_string(), format!("/d{i}"))).collect();
        assert!(check_mounts(many).is_err());
    }

    #[test]
    fn names() {
        for ok in ["a", "data", "my-vol_1.2", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "ä", &"x".repeat(65), "../x"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
