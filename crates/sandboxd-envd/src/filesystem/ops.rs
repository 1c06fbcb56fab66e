//! The blocking file operations behind the unary `filesystem.Filesystem` RPCs
//! (`docs/contract.md` §6.3). Paths are already resolved (§1.4); the agent runs as root and
//! chowns what it creates to the requesting user.

use crate::entry::{self, NameCache};
use sandboxd_protocol::connect::{Code, ConnectError};
use sandboxd_protocol::filesystem::EntryInfo;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Most entries one `ListDir` returns.
pub const MAX_LIST_ENTRIES: usize = 500_000;

/// Map an I/O error to a Connect error (`what` describes the operation and path).
pub fn io_error(what: &str, e: &io::Error) -> ConnectError {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) => Code::NotFound,
        Some(
            libc::ENOTDIR
            | libc::EISDIR
            | libc::EINVAL
            | libc::ENAMETOOLONG
            | libc::EBUSY
            | libc::EXDEV
            | libc::EOPNOTSUPP,
        ) => Code::InvalidArgument,
        Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => Code::AlreadyExists,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => Code::PermissionDenied,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Code::ResourceExhausted,
        Some(libc::ELOOP) => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    ConnectError::new(code, format!("{what}: {e}"))
}

/// Create `path` and any missing parents, one level at a time, each with mode 0755 and owned by
/// `uid:gid`. Existing directories are left alone; an existing non-directory component is
/// `ENOTDIR` (or `EEXIST` for the last one). Returns whether the last component was created.
pub fn make_dirs(path: &Path, uid: u32, gid: u32) -> io::Result<bool> {
    let mut cur = PathBuf::new();
    let mut created_last = false;
    let comps: Vec<_> = path.components().collect();
    for (i, comp) in comps.iter().enumerate() {
        cur.push(comp.as_os_str());
        if matches!(comp, std::path::Component::RootDir) {
            continue;
        }
        let last = i + 1 == comps.len();
        match std::fs::DirBuilder::new().mode(0o755).create(&cur) {
            Ok(()) => {
                std::os::unix::fs::lchown(&cur, Some(uid), Some(gid))?;
                created_last = last;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !std::fs::metadata(&cur).is_ok_and(|m| m.is_dir()) {
                    return Err(if last {
                        e
                    } else {
                        io::Error::from_raw_os_error(libc::ENOTDIR)
                    });
                }
                created_last = false;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(created_last)
}

/// `Stat`.
pub fn stat(path: &str) -> Result<EntryInfo, ConnectError> {
    entry::entry_info(path, &mut NameCache::default()).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ConnectError::not_found(format!("file not found: {path}"))
        } else {
            io_error(&format!("error getting file info for {path}"), &e)
        }
    })
}

/// `MakeDir`: already a directory → `already_exists`; exists otherwise → `invalid_argument`.
pub fn make_dir(path: &str, uid: u32, gid: u32) -> Result<EntryInfo, ConnectError> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => {
            return Err(ConnectError::new(
                Code::AlreadyExists,
                format!("directory already exists: {path}"),
            ));
        }
        Ok(_) => {
            return Err(ConnectError::invalid_argument(format!(
                "path already exists but is not a directory: {path}"
            )));
        }
        Err(_) => {}
    }
    match make_dirs(Path::new(path), uid, gid) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Lost a race with another creator: report like the checks above.
            return Err(if Path::new(path).is_dir() {
                ConnectError::new(Code::AlreadyExists, format!("directory already exists: {path}"))
            } else {
                ConnectError::invalid_argument(format!("path already exists but is not a directory: {path}"))
            });
        }
        Err(e) => return Err(io_error(&format!("error creating directory {path}"), &e)),
    }
    stat(path)
}

/// `Move`: parents of the destination are created (0755, chowned); metadata moves with the file.
pub fn move_entry(source: &str, destination: &str, uid: u32, gid: u32) -> Result<EntryInfo, ConnectError> {
    if let Err(e) = std::fs::symlink_metadata(source) {
        return Err(if e.kind() == io::ErrorKind::NotFound {
            ConnectError::not_found(format!("source file not found: {source}"))
        } else {
            io_error(&format!("error getting source info for {source}"), &e)
        });
    }
    if let Some(parent) = Path::new(destination).parent() {
        make_dirs(parent, uid, gid)
            .map_err(|e| io_error(&format!("error creating parent directories of {destination}"), &e))?;
    }
    std::fs::rename(source, destination)
        .map_err(|e| io_error(&format!("error renaming {source} to {destination}"), &e))?;
    stat(destination)
}

/// `Remove`: `rm -rf`; a missing path is a success.
pub fn remove(path: &str) -> Result<(), ConnectError> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(&format!("error removing {path}"), &e)),
    };
    let r = if md.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&format!("error removing {path}"), &e)),
    }
}

/// `ListDir`: symlinks in `path` are resolved; the walk is pre-order with each directory's
/// entries sorted by name (bytes), symlinked subdirectories are not descended into, and entries
/// up to `depth` levels deep (0 means 1) are returned with paths `<path>/<relative path>`.
pub fn list_dir(path: &str, depth: u32) -> Result<Vec<EntryInfo>, ConnectError> {
    let depth = depth.max(1);
    let real = std::fs::canonicalize(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => ConnectError::not_found(format!("path not found: {path}")),
        Some(libc::ELOOP) => ConnectError::new(
            Code::FailedPrecondition,
            format!("symlink chain too deep or cyclic: {path}"),
        ),
        _ => io_error(&format!("error resolving path {path}"), &e),
    })?;
    let md = std::fs::metadata(&real).map_err(|e| io_error(&format!("error reading {path}"), &e))?;
    if !md.is_dir() {
        return Err(ConnectError::invalid_argument(format!(
            "path is not a directory: {path}"
        )));
    }
    let mut out = Vec::new();
    let mut names = NameCache::default();
    walk(&real, path, "", 1, depth, &mut names, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    requested: &str,
    rel: &str,
    level: u32,
    depth: u32,
    names: &mut NameCache,
    out: &mut Vec<EntryInfo>,
) -> Result<(), ConnectError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        // The root is checked by the caller; a subdirectory that vanished is skipped.
        Err(e) if level > 1 && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(io_error(
                &format!("error reading directory {}", dir.display()),
                &e,
            ));
        }
    };
    let mut children: Vec<Vec<u8>> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().as_bytes().to_vec())
        .collect();
    children.sort();
    for name in children {
        let fs_path = dir.join(OsStr::from_bytes(&name));
        let Ok(md) = std::fs::symlink_metadata(&fs_path) else {
            continue;
        };
        let name_s = String::from_utf8_lossy(&name);
        let child_rel = if rel.is_empty() {
            name_s.into_owned()
        } else {
            format!("{rel}/{name_s}")
        };
        let report = entry::join(requested, &child_rel);
        // Build from the real path (symlinks in the requested path already resolved) but report
        // the requested one.
        let mut e = entry::entry_from_metadata(fs_path.to_str().unwrap_or(&report), &md, names);
        e.path = report;
        out.push(e);
        if out.len() > MAX_LIST_ENTRIES {
            return Err(ConnectError::new(
                Code::ResourceExhausted,
                format!("more than {MAX_LIST_ENTRIES} entries: use a smaller depth"),
            ));
        }
        if md.is_dir() && level < depth {
            walk(&fs_path, requested, &child_rel, level + 1, depth, names, out)?;
        }
    }
    Ok(())
}

/// Whether `path` is on a network filesystem (NFS, CIFS/SMB, FUSE), which watches refuse
/// unless `allow_network_mounts` is set.
pub fn is_network_mount(path: &str) -> bool {
    use nix::sys::statfs::FsType;
    const CIFS: FsType = FsType(0xFF53_4D42);
    const SMB2: FsType = FsType(0xFE53_4D42);
    match nix::sys::statfs::statfs(path) {
        Ok(s) => {
            let t = s.filesystem_type();
            t == nix::sys::statfs::NFS_SUPER_MAGIC
                || t == nix::sys::statfs::SMB_SUPER_MAGIC
                || t == nix::sys::statfs::FUSE_SUPER_MAGIC
                || t == CIFS
                || t == SMB2
        }
        Err(_) => false,
    }
}

/// Check a directory to watch: missing → `not_found`, not a directory → `invalid_argument`.
pub fn check_watch_dir(path: &str, allow_network_mounts: bool) -> Result<(), ConnectError> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(ConnectError::invalid_argument(format!(
                "path {path} is not a directory"
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ConnectError::not_found(format!("path {path} not found")));
        }
        Err(e) => return Err(io_error(&format!("error statting {path}"), &e)),
    }
    if !allow_network_mounts && is_network_mount(path) {
        return Err(ConnectError::invalid_argument(format!(
            "cannot watch path on a network filesystem: {path}"
        )));
    }
    Ok(())
}

/// The uid and gid of an existing path (used by tests and callers that preserve ownership).
pub fn owner_of(path: &Path) -> io::Result<(u32, u32)> {
    let md = std::fs::symlink_metadata(path)?;
    Ok((md.uid(), md.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandboxd_protocol::filesystem::FileType;
    use std::os::unix::fs::PermissionsExt;

    fn s(p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    #[test]
    fn make_dir_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/c");
        let e = make_dir(&s(&p), 1234, 1235).unwrap();
        assert_eq!(e.file_type, FileType::Directory);
        assert_eq!(e.mode, 0o755);
        for sub in ["a", "a/b", "a/b/c"] {
            let md = std::fs::metadata(dir.path().join(sub)).unwrap();
            assert_eq!((md.uid(), md.gid()), (1234, 1235), "{sub}");
            assert_eq!(md.permissions().mode() & 0o777, 0o755);
        }
        assert_eq!(make_dir(&s(&p), 0, 0).unwrap_err().code, Code::AlreadyExists);
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert_eq!(
            make_dir(&s(&dir.path().join("f")), 0, 0).unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(
            make_dir(&s(&dir.path().join("f/x")), 0, 0).unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn move_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.txt");
        std::fs::write(&src, b"data").unwrap();
        let dst = dir.path().join("x/y/dst.txt");
        let e = move_entry(&s(&src), &s(&dst), 42, 43).unwrap();
        assert_eq!((e.name.as_str(), e.size), ("dst.txt", 4));
        assert_eq!(owner_of(&dir.path().join("x/y")).unwrap(), (42, 43));
        assert!(!src.exists());
        assert_eq!(
            move_entry(&s(&src), &s(&dst), 0, 0).unwrap_err().code,
            Code::NotFound
        );
        remove(&s(&dir.path().join("x"))).unwrap();
        assert!(!dir.path().join("x").exists());
        remove(&s(&dir.path().join("x"))).unwrap();
        // A symlink to a directory is removed, not its target.
        std::fs::create_dir(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t/keep"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path().join("t"), dir.path().join("l")).unwrap();
        remove(&s(&dir.path().join("l"))).unwrap();
        assert!(dir.path().join("t/keep").exists());
    }

    #[test]
    fn stat_missing_is_not_found() {
        let e = stat("/nonexistent/definitely").unwrap_err();
        assert_eq!(e.code, Code::NotFound);
        assert_eq!(e.message, "file not found: /nonexistent/definitely");
    }

    #[test]
    fn list_dir_order_and_depth() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "subdir2/subdir2_2",
            "subdir2/subdir2_1",
            "subdir1/subdir1_2/deep",
            "subdir1/subdir1_1",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("file1.txt"), b"x").unwrap();
        std::fs::write(d.join("B"), b"x").unwrap();
        std::os::unix::fs::symlink(d.join("subdir1"), d.join("zlink")).unwrap();
        let root = s(d);
        let rel = |v: &[EntryInfo]| -> Vec<String> {
            v.iter()
                .map(|e| e.path.strip_prefix(&format!("{root}/")).unwrap().to_string())
                .collect()
        };
        assert_eq!(
            rel(&list_dir(&root, 0).unwrap()),
            ["B", "file1.txt", "subdir1", "subdir2", "zlink"]
        );
        assert_eq!(
            rel(&list_dir(&root, 2).unwrap()),
            [
                "B",
                "file1.txt",
                "subdir1",
                "subdir1/subdir1_1",
                "subdir1/subdir1_2",
                "subdir2",
                "subdir2/subdir2_1",
                "subdir2/subdir2_2",
                "zlink"
            ]
        );
        let deep = list_dir(&root, 3).unwrap();
        assert!(rel(&deep).contains(&"subdir1/subdir1_2/deep".to_string()));
        assert!(!rel(&deep).iter().any(|p| p.starts_with("zlink/")));
        let link = deep.iter().find(|e| e.name == "zlink").unwrap();
        assert_eq!(link.file_type, FileType::Directory);
        assert!(link.symlink_target.is_some());
        // A symlinked requested path is resolved, but paths keep the requested prefix.
        let via = list_dir(&format!("{root}/zlink"), 1).unwrap();
        assert_eq!(via[0].path, format!("{root}/zlink/subdir1_1"));
        let e = list_dir(&format!("{root}/file1.txt"), 1).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.starts_with("path is not a directory: "));
        assert_eq!(
            list_dir(&format!("{root}/nope"), 1).unwrap_err().code,
            Code::NotFound
        );
        std::os::unix::fs::symlink(d.join("loop1"), d.join("loop2")).unwrap();
        std::os::unix::fs::symlink(d.join("loop2"), d.join("loop1")).unwrap();
        assert_eq!(
            list_dir(&format!("{root}/loop1"), 1).unwrap_err().code,
            Code::FailedPrecondition
        );
    }

    #[test]
    fn watch_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        check_watch_dir(&s(dir.path()), false).unwrap();
        assert_eq!(
            check_watch_dir(&s(&dir.path().join("nope")), false)
                .unwrap_err()
                .code,
            Code::NotFound
        );
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert_eq!(
            check_watch_dir(&s(&dir.path().join("f")), false)
                .unwrap_err()
                .code,
            Code::InvalidArgument
        );
    }
}
