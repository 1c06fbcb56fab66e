//! A sandbox's directory under `<data>/sandboxes`: creating it with its generated files,
//! renaming without replacing, and removing it through the trash (deleted in the background).

use super::namespace_backend::Inner;
use super::{quota, step, sys, template};
use crate::RuntimeError;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub(super) fn mkdir_owned(p: &Path, mode: u32, owner: Option<u32>) -> Result<(), RuntimeError> {
    match std::fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(step("sandbox dirs", format!("creating {}: {e}", p.display()))),
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| step("sandbox dirs", format!("chmod {}: {e}", p.display())))?;
    if let Some(id) = owner {
        std::os::unix::fs::lchown(p, Some(id), Some(id))
            .map_err(|e| step("sandbox dirs", format!("chown {}: {e}", p.display())))?;
    }
    Ok(())
}

pub(super) fn write_owned(
    p: &Path,
    content: &str,
    mode: u32,
    owner: Option<u32>,
) -> Result<(), RuntimeError> {
    std::fs::write(p, content).map_err(|e| step("sandbox dirs", format!("writing {}: {e}", p.display())))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| step("sandbox dirs", format!("chmod {}: {e}", p.display())))?;
    if let Some(id) = owner {
        std::os::unix::fs::lchown(p, Some(id), Some(id))
            .map_err(|e| step("sandbox dirs", format!("chown {}: {e}", p.display())))?;
    }
    Ok(())
}

pub(super) fn set_opaque(p: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| step("sandbox dirs", e))?;
    // SAFETY: valid C strings and a 1-byte value buffer.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(step(
            "sandbox dirs",
            format!(
                "setting user.overlay.opaque on {}: {} (the data dir needs a filesystem with user xattrs)",
                p.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

/// Last `max` bytes of a file, for error messages.
pub(super) fn tail(p: &Path, max: usize) -> String {
    match std::fs::read(p) {
        Ok(b) => {
            let s = &b[b.len().saturating_sub(max)..];
            String::from_utf8_lossy(s).trim().to_string()
        }
        Err(_) => String::new(),
    }
}

impl Inner {
    pub(super) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    /// Step 1: the sandbox's directories and generated files (`id` may be a pool slot name).
    pub(super) fn prepare_dir(
        &self,
        id: &str,
        hostname: &str,
        disk_mb: u64,
    ) -> Result<PathBuf, RuntimeError> {
        let sbx = self.sandbox_dir(id);
        match std::fs::create_dir(&sbx) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(RuntimeError::InvalidSpec(format!(
                    "sandbox {id} already exists on this host"
                )));
            }
            Err(e) => return Err(step("sandbox dirs", format!("creating {}: {e}", sbx.display()))),
        }
        let root = Some(self.cfg.idmap.root());
        // Only host root and the sandbox's root (group) may enter: the upper dirs hold files
        // the sandbox made set-id for its host range, which no other host user may run.
        mkdir_owned(&sbx, 0o710, None)?;
        std::os::unix::fs::lchown(&sbx, None, root)
            .map_err(|e| step("sandbox dirs", format!("chown {}: {e}", sbx.display())))?;
        // upper/ and work/ become symlinks into the disk quota filesystem (quota.rs)
        quota::prepare_layout(&*self.quota, &sbx, disk_mb)?;
        mkdir_owned(&sbx.join("upper"), 0o711, None)?;
        mkdir_owned(&sbx.join("work"), 0o711, None)?;
        for d in ["upper/root", "upper/usr", "work/root", "work/usr"] {
            mkdir_owned(&sbx.join(d), 0o755, root)?;
        }
        mkdir_owned(&sbx.join("run"), 0o700, root)?;
        mkdir_owned(&sbx.join("rootfs"), 0o755, None)?;
        // /usr/local: an opaque (empty, writable) directory hides the host's.
        let local = sbx.join("upper/usr/local");
        mkdir_owned(&local, 0o755, root)?;
        set_opaque(&local)?;
        for d in ["bin", "etc", "games", "include", "lib", "sbin", "share", "src"] {
            mkdir_owned(&local.join(d), 0o755, root)?;
        }
        let etc = sbx.join("upper/root/etc");
        mkdir_owned(&etc, 0o755, root)?;
        self.write_host_files(&sbx, hostname)?;
        write_owned(&etc.join("resolv.conf"), template::RESOLV_CONF, 0o644, root)?;
        write_owned(
            &sbx.join("boot_id"),
            &format!("{}\n", sys::random_uuid()),
            0o444,
            None,
        )?;
        Ok(sbx)
    }

    pub(super) fn write_host_files(&self, sbx: &Path, hostname: &str) -> Result<(), RuntimeError> {
        let root = Some(self.cfg.idmap.root());
        let etc = sbx.join("upper/root/etc");
        write_owned(&etc.join("hostname"), &format!("{hostname}\n"), 0o644, root)?;
        write_owned(&etc.join("hosts"), &template::hosts_file(hostname), 0o644, root)
    }

    /// Delete a trashed directory on the background deleter thread (started on first use).
    pub(super) fn delete_later(&self, path: PathBuf) {
        let Ok(mut tx) = self.trash_tx.lock() else {
            let _ = std::fs::remove_dir_all(&path);
            return;
        };
        if tx.is_none() {
            let (s, r) = std::sync::mpsc::channel::<PathBuf>();
            let spawned = std::thread::Builder::new()
                .name("sandboxd-trash".into())
                .spawn(move || {
                    for p in r {
                        if let Err(e) = std::fs::remove_dir_all(&p) {
                            tracing::warn!("removing {}: {e}", p.display());
                        }
                    }
                });
            if spawned.is_ok() {
                *tx = Some(s);
            }
        }
        match tx.as_ref() {
            Some(s) => {
                if let Err(e) = s.send(path) {
                    let _ = std::fs::remove_dir_all(e.0);
                }
            }
            None => {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// `renameat2(RENAME_NOREPLACE)`.
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE).map_err(std::io::Error::from)
}

/// Rename a sandbox directory into the trash, so its id is free at once. Returns the new
/// path, or `None` if there was nothing to move.
pub(super) fn move_to_trash(dir: &Path, trash: &Path) -> Result<Option<PathBuf>, RuntimeError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let t = trash.join(format!("{name}-{nanos}"));
    quota::release(dir);
    match std::fs::rename(dir, &t) {
        Ok(()) => Ok(Some(t)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(step(
            "cleanup",
            format!("moving {} to the trash: {e}", dir.display()),
        )),
    }
}

/// Remove a sandbox directory now (through the trash).
pub(super) fn remove_tree(dir: &Path, trash: &Path) -> Result<(), RuntimeError> {
    match move_to_trash(dir, trash)? {
        Some(t) => {
            std::fs::remove_dir_all(&t).map_err(|e| step("cleanup", format!("removing {}: {e}", t.display())))
        }
        None => Ok(()),
    }
}
