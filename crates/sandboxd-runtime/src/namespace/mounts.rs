//! Mount helpers of the spawn path: the helper's idmapped read-only staging views
//! ([`idmapped_bind`]) and the read-only host binds of layered templates ([`mount_binds`]),
//! which the sandbox init makes before `pivot_root` without following symlinks.

use super::sys::cvt;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A host directory bind-mounted read-only into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnlyBind {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the sandbox (created in the root overlay if missing).
    pub target: String,
}

pub(super) fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Mount `src` at `target` (in the caller's mount namespace) idmapped through `userns`, and
/// read-only: `open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_IDMAP)` + `move_mount`.
pub fn idmapped_bind(src: &Path, target: &Path, userns: &OwnedFd) -> io::Result<()> {
    let (src, target) = (cpath(src)?, cpath(target)?);
    // SAFETY: valid C string; result is a new fd we own.
    let tree = cvt(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    // SAFETY: fresh fd from the kernel.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, attr struct of the size we pass.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    // SAFETY: valid fd and C strings.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Validate a bind target: absolute, normal components only, not `/`.
fn target_parts(target: &str) -> io::Result<Vec<&str>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad bind target '{target}'"));
    if !target.starts_with('/') {
        return Err(bad());
    }
    let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(bad());
    }
    Ok(parts)
}

/// The directory `target` (absolute, validated) under `rootfs`, created (0755) in the root
/// overlay where missing. Fails on a component that is not a directory (a symlink included),
/// so a mount never follows a link planted inside the sandbox.
pub fn mount_point(rootfs: &Path, target: &str) -> io::Result<PathBuf> {
    let mut dir = rootfs.to_path_buf();
    for p in target_parts(target)? {
        dir.push(p);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "mount target {target} exists and is not a directory"
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// Bind every entry of `binds` read-only (and nosuid, nodev) under `rootfs` (the sandbox's new
/// root, before `pivot_root`). Runs in the sandbox init as the sandbox's root; mount points are
/// created in the root overlay when missing. Never follows symlinks inside the sandbox root.
pub fn mount_binds(rootfs: &Path, binds: &[ReadOnlyBind]) -> io::Result<()> {
    for b in binds {
        let dir = mount_point(rootfs, &b.target)?;
        let src = cpath_bytes(b.source.as_os_str().as_bytes())?;
        let dst = cpath_bytes(dir.as_os_str().as_bytes())?;
        // SAFETY: valid NUL-terminated strings; a null fstype/data is allowed for MS_BIND.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("bind {} at {}: {e}", b.source.display(), b.target),
            ));
        }
        // SAFETY: as above; remounting the bind we just made.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("read-only remount of {}: {e}", b.target),
            ));
        }
    }
    Ok(())
}

fn cpath_bytes(p: &[u8]) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_targets_are_checked() {
        assert_eq!(target_parts("/opt/a/b").unwrap(), vec!["opt", "a", "b"]);
        for bad in ["", "/", "opt", "/opt/../etc", "/./x"] {
            assert!(target_parts(bad).is_err(), "{bad:?}");
        }
    }
}
