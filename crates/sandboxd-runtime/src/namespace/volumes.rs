//! Volumes (`docs/volumes.md`): named persistent directories with a size quota, bound
//! read-write into the sandboxes that name them.
//!
//! A volume `<id>` lives in `<data>/volumes/<id>/`: its quota filesystem is mounted at `disk`
//! (a loop-mounted ext4 image `disk.img`, [`quota`](super::quota), like a sandbox's writable
//! layers; a plain directory where quotas are disabled) and its contents are `disk/data`, owned
//! by the sandboxes' `user` (uid 1000 inside; sandbox root may write too). The mount stays on
//! the host for the volume's whole life, across sandbox kills and daemon restarts; after a host
//! reboot it is mounted again when a sandbox next needs it. All sandboxes share one id range,
//! so every sandbox sees the same owners.

use super::quota::{self, DiskQuota};
use crate::RuntimeError;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// Directory of all volumes inside the data dir.
pub const VOLUMES_DIR: &str = "volumes";
/// Most volumes one sandbox may mount.
pub const MAX_MOUNTS: usize = 16;
/// Longest mount path, in bytes.
pub const MAX_PATH_LEN: usize = 512;

/// Paths that a volume may not be mounted on, nor below: the system the sandbox runs on, and
/// the kernel's own filesystems.
const RESERVED: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/sbin",
    "/sys",
    "/usr",
    "/opt/sandboxd",
];

/// Check a mount path: absolute, normalised (no `.`, `..`, empty or trailing components), at
/// most [`MAX_PATH_LEN`] bytes of printable characters, and neither `/` nor at or below a
/// [reserved](RESERVED) system path. The message is for the client.
pub fn check_mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("volume mount path '{path}' must be absolute"));
    }
    if path.len() > MAX_PATH_LEN || path.chars().any(char::is_control) {
        return Err(format!(
            "volume mount path must be at most {MAX_PATH_LEN} bytes without control characters"
        ));
    }
    if path == "/" {
        return Err("a volume cannot be mounted over /".into());
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(format!(
            "volume mount path '{path}' must be normalised (no '.', '..', '//' or trailing '/')"
        ));
    }
    if let Some(r) = RESERVED.iter().find(|r| is_at_or_below(path, r)) {
        return Err(format!(
            "volume mount path '{path}' is a system path ({r} and below are reserved)"
        ));
    }
    Ok(())
}

/// Whether `path` is `base` or below it (both normalised).
pub fn is_at_or_below(path: &str, base: &str) -> bool {
    path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

/// The directory of volume `id`.
pub fn volume_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join(VOLUMES_DIR).join(id)
}

/// The contents of a volume (what sandboxes see) inside its directory.
fn content_dir(vol: &Path) -> PathBuf {
    vol.join(quota::DISK_DIR).join("data")
}

fn verr(message: String) -> RuntimeError {
    RuntimeError::Step {
        step: "volume",
        message,
    }
}

/// Make volume `id` (its directory must not exist): the quota filesystem of `size_mb` MiB and
/// its content dir (0755, owned by `owner`, the host uid and gid of the sandboxes' `user`)
/// inside a directory only host root may enter.
/// On error nothing is left.
pub fn create(
    quota: &dyn DiskQuota,
    data_dir: &Path,
    id: &str,
    size_mb: u64,
    owner: u32,
) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    quota::validate_size(size_mb)?;
    let vol = volume_dir(data_dir, id);
    std::fs::create_dir(&vol).map_err(|e| verr(format!("creating {}: {e}", vol.display())))?;
    let r = (|| {
        // Host root only: the volume holds files the sandboxes made (set-id ones included, owned
        // by the sandbox range), which no other host user may reach. The sandbox init opens the
        // source while it still has host root's owner access (`open_sources`).
        std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| verr(format!("chmod {}: {e}", vol.display())))?;
        quota.attach(&vol.join(quota::DISK_DIR), size_mb)?;
        let data = content_dir(&vol);
        let made = std::fs::create_dir(&data)
            .and_then(|()| std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)))
            .and_then(|()| std::os::unix::fs::lchown(&data, Some(owner), Some(owner)));
        made.map_err(|e| verr(format!("creating {}: {e}", data.display())))
    })();
    if r.is_err() {
        delete(data_dir, id);
    }
    r
}

/// Remove volume `id`: unmount its quota filesystem (lazily), delete the image and the
/// directory. Idempotent; failures are logged.
pub fn delete(data_dir: &Path, id: &str) {
    let vol = volume_dir(data_dir, id);
    quota::release(&vol);
    match std::fs::remove_dir_all(&vol) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing volume {}: {e}", vol.display()),
    }
}

/// The host directory to bind for volume `id`, mounting its image again first if the host
/// forgot the mount (a reboot).
pub fn source(data_dir: &Path, id: &str) -> Result<PathBuf, RuntimeError> {
    let vol = volume_dir(data_dir, id);
    quota::ensure_mounted(&vol)?;
    let data = content_dir(&vol);
    if !data.is_dir() {
        return Err(RuntimeError::InvalidSpec(format!(
            "volume {id} has no storage on this host ({} is missing)",
            data.display()
        )));
    }
    Ok(data)
}

/// A volume's host directory and its path inside the sandbox (sent to the spawn helper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeBind {
    /// The volume's data directory on the host.
    pub source: PathBuf,
    /// Absolute mount path inside the sandbox.
    pub target: String,
}

/// In the sandbox init, while it still has host root's access: open every source (`O_PATH`),
/// so that the data dir's modes do not matter once it is the sandbox's root.
pub fn open_sources(binds: &[VolumeBind]) -> io::Result<Vec<RawFd>> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    use std::os::fd::IntoRawFd;
    binds
        .iter()
        .map(|b| {
            open(
                &b.source,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .map(IntoRawFd::into_raw_fd)
            .map_err(|e| io::Error::other(format!("opening volume {}: {e}", b.source.display())))
        })
        .collect()
}

/// In the sandbox init, after the root overlay (before `pivot_root`): bind each opened source
/// (`fds`, from [`open_sources`]) read-write at its target under `rootfs`, then make the bind
/// nosuid and nodev (keeping the source's atime and read-only flags, which a user namespace
/// may not change).
pub fn mount_in_child(rootfs: &Path, binds: &[VolumeBind], fds: &[RawFd]) -> io::Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sys::statvfs::{FsFlags, fstatvfs};
    for (b, fd) in binds.iter().zip(fds) {
        let dir = super::mounts::mount_point(rootfs, &b.target)?;
        let src = PathBuf::from(format!("/proc/self/fd/{fd}"));
        let ctx = |what: &str, e: nix::Error| io::Error::other(format!("{what} volume at {}: {e}", b.target));
        mount(Some(&src), &dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| ctx("binding", e))?;
        // SAFETY: `fd` is an open O_PATH descriptor owned by this process until exec.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
        let kept = fstatvfs(fd).map_err(|e| ctx("statvfs of", e))?.flags();
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        for (st, ms) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if kept.contains(st) {
                flags |= ms;
            }
        }
        mount(None::<&str>, &dir, None::<&str>, flags, None::<&str>).map_err(|e| ctx("remounting", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_checked() {
        for ok in [
            "/data",
            "/home/user/work",
            "/mnt/vol-1",
            "/tmp/x",
            "/opt/data",
            "/usrdata",
        ] {
            assert_eq!(check_mount_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "data",
            "./data",
            "/",
            "/data/",
            "//data",
            "/a/../etc",
            "/a/./b",
            "/proc",
            "/proc/1",
            "/sys",
            "/dev/shm",
            "/usr",
            "/usr/local",
            "/etc",
            "/bin",
            "/opt/sandboxd/interpreter",
            "/a\nb",
        ] {
            assert!(check_mount_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_mount_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
        assert!(is_at_or_below("/data/x", "/data"));
        assert!(is_at_or_below("/data", "/data"));
        assert!(!is_at_or_below("/database", "/data"));
    }

    #[test]
    fn plain_directory_volumes_without_quota() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join(VOLUMES_DIR)).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        create(&quota::NoQuota, t.path(), "v1", 64, me).unwrap();
        let src = source(t.path(), "v1").unwrap();
        assert_eq!(src, t.path().join("volumes/v1/disk/data"));
        std::fs::write(src.join("f"), "x").unwrap();
        assert!(create(&quota::NoQuota, t.path(), "v1", 64, me).is_err(), "exists");
        assert!(
            create(&quota::NoQuota, t.path(), "v2", 4, me).is_err(),
            "below the minimum"
        );
        assert!(
            !volume_dir(t.path(), "v2").exists(),
            "nothing left of a failed create"
        );
        delete(t.path(), "v1");
        assert!(!volume_dir(t.path(), "v1").exists());
        delete(t.path(), "v1"); // idempotent
        assert!(source(t.path(), "v1").is_err());
    }
}
