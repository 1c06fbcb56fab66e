//! Building `EntryInfo` for a path (`docs/contract.md` §6.3): Go `FileMode` permission strings,
//! symlink handling (type and mode of the target, resolved target path), owner and group names
//! and metadata from `user.e2b.*` extended attributes.

use crate::filesystem::xattr;
use crate::users;
use chrono::{DateTime, TimeZone, Utc};
use sandboxd_protocol::filesystem::{EntryInfo, FileType};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// Go's `FileMode.String()` of a Unix `st_mode` (as `os.Lstat` converts it): type and special
/// letters from `dalTLDpSugct?` in that order (`-` when none), then `rwxrwxrwx`.
/// `/tmp` (`0o41777`) gives `dtrwxrwxrwx`.
pub fn go_mode_string(st_mode: u32) -> String {
    let fmt = st_mode & S_IFMT;
    // Flags in the order of Go's `dalTLDpSugct?` string (a, l, T never come from Linux stat).
    let letters = [
        ('d', fmt == S_IFDIR),
        ('L', fmt == S_IFLNK),
        ('D', fmt == S_IFBLK || fmt == S_IFCHR),
        ('p', fmt == S_IFIFO),
        ('S', fmt == S_IFSOCK),
        ('u', st_mode & S_ISUID != 0),
        ('g', st_mode & S_ISGID != 0),
        ('c', fmt == S_IFCHR),
        ('t', st_mode & S_ISVTX != 0),
        (
            '?',
            !matches!(
                fmt,
                S_IFDIR | S_IFLNK | S_IFBLK | S_IFCHR | S_IFIFO | S_IFSOCK | S_IFREG
            ),
        ),
    ];
    let mut s = String::with_capacity(12);
    for (c, set) in letters {
        if set {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    const RWX: &[u8; 9] = b"rwxrwxrwx";
    for (i, c) in RWX.iter().enumerate() {
        if st_mode & (1 << (8 - i)) != 0 {
            s.push(*c as char);
        } else {
            s.push('-');
        }
    }
    s
}

/// The entry type of a (non-symlink) `st_mode`: regular files and directories only.
pub fn file_type_of(st_mode: u32) -> FileType {
    match st_mode & S_IFMT {
        S_IFREG => FileType::File,
        S_IFDIR => FileType::Directory,
        _ => FileType::Unspecified,
    }
}

/// Go's `filepath.Base`: the last element, trailing slashes ignored; `/` for the root.
pub fn base_name(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/".into();
    }
    match trimmed.rfind('/') {
        Some(i) => trimmed[i + 1..].to_string(),
        None => trimmed.to_string(),
    }
}

/// Join a directory and a relative path with one `/`.
pub fn join(dir: &str, rel: &str) -> String {
    if rel.is_empty() {
        dir.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{rel}")
    } else {
        format!("{dir}/{rel}")
    }
}

/// Caches uid/gid → name lookups for the duration of one request.
#[derive(Default)]
pub struct NameCache {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl NameCache {
    /// The user name of `uid` (or the number).
    pub fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| users::uid_name(uid))
            .clone()
    }

    /// The group name of `gid` (or the number).
    pub fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| users::gid_name(gid))
            .clone()
    }
}

fn mtime(md: &std::fs::Metadata) -> DateTime<Utc> {
    let nsec = u32::try_from(md.mtime_nsec()).unwrap_or(0).min(999_999_999);
    Utc.timestamp_opt(md.mtime(), nsec)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Build the `EntryInfo` of `path` (`lstat`, then the target for a symlink). `path` is reported
/// unchanged. Errors are those of `lstat`.
pub fn entry_info(path: &str, names: &mut NameCache) -> io::Result<EntryInfo> {
    let md = std::fs::symlink_metadata(path)?;
    Ok(entry_from_metadata(path, &md, names))
}

/// Build the `EntryInfo` of `path` from its `lstat` result.
pub fn entry_from_metadata(path: &str, md: &std::fs::Metadata, names: &mut NameCache) -> EntryInfo {
    let st_mode = md.mode();
    let is_link = st_mode & S_IFMT == S_IFLNK;
    let (file_type, mode, symlink_target) = if is_link {
        let target = std::fs::metadata(path).ok();
        let ty = target
            .as_ref()
            .map(|t| file_type_of(t.mode()))
            .unwrap_or(FileType::Unspecified);
        let bits = target.as_ref().map(|t| t.mode()).unwrap_or(st_mode) & 0o777;
        let resolved = std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
            .unwrap_or_else(|| path.to_string());
        (ty, bits, Some(resolved))
    } else {
        (file_type_of(st_mode), st_mode & 0o777, None)
    };
    EntryInfo {
        name: base_name(path),
        file_type,
        path: path.to_string(),
        size: i64::try_from(md.size()).unwrap_or(i64::MAX),
        mode,
        permissions: go_mode_string(st_mode),
        owner: names.user(md.uid()),
        group: names.group(md.gid()),
        modified_time: mtime(md),
        symlink_target,
        metadata: xattr::read_metadata(Path::new(path)),
        is_symlink: is_link,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn go_mode_strings() {
        assert_eq!(go_mode_string(0o100644), "-rw-r--r--");
        assert_eq!(go_mode_string(0o040755), "drwxr-xr-x");
        assert_eq!(go_mode_string(0o120777), "Lrwxrwxrwx");
        assert_eq!(go_mode_string(0o041777), "dtrwxrwxrwx");
        assert_eq!(go_mode_string(0o104755), "urwxr-xr-x");
        assert_eq!(go_mode_string(0o102755), "grwxr-xr-x");
        assert_eq!(go_mode_string(0o020666), "Dcrw-rw-rw-");
        assert_eq!(go_mode_string(0o060660), "Drw-rw----");
        assert_eq!(go_mode_string(0o010644), "prw-r--r--");
        assert_eq!(go_mode_string(0o140755), "Srwxr-xr-x");
        assert_eq!(go_mode_string(0o100000), "----------");
        assert_eq!(go_mode_string(0o042775), "dgrwxrwxr-x");
    }

    #[test]
    fn base_and_join() {
        assert_eq!(base_name("/home/user/a.txt"), "a.txt");
        assert_eq!(base_name("/home/user/"), "user");
        assert_eq!(base_name("/"), "/");
        assert_eq!(base_name("a"), "a");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "b/c"), "/a/b/c");
        assert_eq!(join("/a", ""), "/a");
    }

    #[test]
    fn entry_of_file_dir_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let file = format!("{d}/f.txt");
        std::fs::write(&file, b"abcd").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let sub = format!("{d}/sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(&file, format!("{d}/lf")).unwrap();
        std::os::unix::fs::symlink("sub", format!("{d}/ld")).unwrap();
        std::os::unix::fs::symlink("missing", format!("{d}/lb")).unwrap();
        let mut names = NameCache::default();

        let e = entry_info(&file, &mut names).unwrap();
        assert_eq!(e.name, "f.txt");
        assert_eq!(e.file_type, FileType::File);
        assert_eq!((e.size, e.mode, e.permissions.as_str()), (4, 0o644, "-rw-r--r--"));
        assert_eq!(e.symlink_target, None);
        assert!(!e.is_symlink);
        assert!(e.metadata.is_empty());
        let md = std::fs::metadata(&file).unwrap();
        assert_eq!(e.owner, users::uid_name(md.uid()));
        assert_eq!(e.modified_time.timestamp(), md.mtime());
        assert_eq!(e.modified_time.timestamp_subsec_nanos() as i64, md.mtime_nsec());

        let e = entry_info(&sub, &mut names).unwrap();
        assert_eq!(e.file_type, FileType::Directory);
        assert_eq!((e.mode, e.permissions.as_str()), (0o755, "drwxr-xr-x"));
        assert!(e.size > 0);

        let real = std::fs::canonicalize(&file).unwrap();
        let e = entry_info(&format!("{d}/lf"), &mut names).unwrap();
        assert_eq!(e.file_type, FileType::File);
        assert_eq!(e.mode, 0o644);
        assert_eq!(e.permissions, "Lrwxrwxrwx");
        assert_eq!(e.symlink_target.as_deref(), real.to_str());
        assert!(e.is_symlink);

        let e = entry_info(&format!("{d}/ld"), &mut names).unwrap();
        assert_eq!(e.file_type, FileType::Directory);
        assert_eq!(e.mode, 0o755);

        let e = entry_info(&format!("{d}/lb"), &mut names).unwrap();
        assert_eq!(e.file_type, FileType::Unspecified);
        assert!(e.is_symlink);
        assert_eq!(e.symlink_target.as_deref(), Some(format!("{d}/lb").as_str()));

        assert_eq!(
            entry_info(&format!("{d}/nope"), &mut names).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn tmp_is_sticky() {
        let e = entry_info("/tmp", &mut NameCache::default()).unwrap();
        assert_eq!(e.permissions, "dtrwxrwxrwx");
        assert_eq!(e.mode, 0o777);
    }
}
