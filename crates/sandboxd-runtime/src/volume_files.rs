//! The files of one volume, for E2B's volume content API (`docs/volumes.md`, "Content API").
//!
//! The daemon is host root and a volume holds whatever its sandboxes wrote, symbolic links to
//! `/etc` included. So every path is resolved by the kernel inside the volume's root
//! (`openat2` with `RESOLVE_IN_ROOT`: absolute links and `..` stay in the volume), the last
//! component of a stat, a metadata change or a removal is never followed, and a file is read
//! only if it is a regular file. Owners are given and shown in the sandboxes' ids (`user` is
//! 1000), which map to one host range.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, unlinkat};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest path accepted, in bytes.
pub const MAX_PATH: usize = 4096;
/// Most entries one listing returns.
pub const MAX_LISTED: usize = 100_000;
/// Deepest listing (levels below the listed directory).
pub const MAX_DEPTH: u32 = 64;
/// Mode bits a file or directory may be given (no set-user-ID or set-group-ID).
pub const ALLOWED_MODE: u32 = 0o1777;

/// What went wrong; the message names the path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeFileError {
    /// The path, or a directory on the way, does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A bad path, a bad value, or an operation the entry does not allow.
    #[error("{0}")]
    Invalid(String),
    /// The entry exists already.
    #[error("{0}")]
    Exists(String),
    /// The volume is full.
    #[error("{0}")]
    NoSpace(String),
    /// The volume kept changing under the path (renames racing its resolution): try again.
    #[error("{0}")]
    Busy(String),
    /// Anything else.
    #[error("{0}")]
    Io(String),
}

type Result<T> = std::result::Result<T, VolumeFileError>;

/// The host ids of the sandboxes: sandbox id `n` is host id `base + n`, for `n < count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// Host id of the sandboxes' root.
    pub base: u32,
    /// How many ids are mapped.
    pub count: u32,
    /// The sandbox id new entries get when the request names none (`user`).
    pub default_owner: u32,
}

impl IdRange {
    fn to_host(self, id: u32, what: &str) -> Result<u32> {
        if id >= self.count {
            return Err(VolumeFileError::Invalid(format!(
                "{what} {id}: sandbox ids are 0 to {}",
                self.count.saturating_sub(1)
            )));
        }
        Ok(self.base + id)
    }

    /// A host id as the sandboxes see it (`nobody`, 65534, when it is outside their range).
    fn sandbox_id_of(self, id: u32) -> u32 {
        id.checked_sub(self.base)
            .filter(|n| *n < self.count)
            .unwrap_or(65534)
    }
}

/// Kind of a volume entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (never followed when it is the last component).
    Symlink,
    /// Anything else (a FIFO, a socket).
    Unknown,
}

/// One file, directory or link, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its last component (`/` for the volume's root).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Its absolute path inside the volume (`/a/b`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Owner, in the sandboxes' ids.
    pub uid: u32,
    /// Group, in the sandboxes' ids.
    pub gid: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
    /// A link's target, as stored.
    pub target: Option<String>,
}

/// Owner and mode for what a request creates or changes (`None`: the default, or unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Sandbox uid.
    pub uid: Option<u32>,
    /// Sandbox gid.
    pub gid: Option<u32>,
    /// Permission bits.
    pub mode: Option<u32>,
}

impl Ownership {
    fn check_mode(&self) -> Result<()> {
        match self.mode {
            Some(m) if m & !ALLOWED_MODE != 0 => Err(VolumeFileError::Invalid(format!(
                "mode {m:o}: at most 1777 (no set-user-ID or set-group-ID bits)"
            ))),
            _ => Ok(()),
        }
    }
}

/// A volume path split into its components (no `.`, no empty ones; `..` is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePath(Vec<String>);

impl VolumePath {
    /// Reads a request's path: absolute or relative to the volume's root.
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = |why: &str| VolumeFileError::Invalid(format!("path {raw:?}: {why}"));
        if raw.is_empty() {
            return Err(bad("empty"));
        }
        if raw.len() > MAX_PATH || raw.contains('\0') {
            return Err(bad("at most 4096 bytes and no NUL"));
        }
        let mut parts = Vec::new();
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(bad("'..' is not allowed")),
                c if c.len() > 255 => return Err(bad("a name is at most 255 bytes")),
                c => parts.push(c.to_string()),
            }
        }
        Ok(Self(parts))
    }

    /// `/a/b`.
    pub fn display(&self) -> String {
        format!("/{}", self.0.join("/"))
    }

    fn relative(&self) -> String {
        if self.0.is_empty() {
            ".".into()
        } else {
            self.0.join("/")
        }
    }

    fn parent(&self) -> Option<(Self, &str)> {
        let (last, rest) = self.0.split_last()?;
        Some((Self(rest.to_vec()), last.as_str()))
    }
}

fn io_err(what: &str, path: &VolumePath, e: Errno) -> VolumeFileError {
    let p = path.display();
    match e {
        Errno::ENOENT => VolumeFileError::NotFound(format!("path {p} not found")),
        Errno::ENOTDIR => {
            VolumeFileError::NotFound(format!("path {p} not found (a part of it is not a directory)"))
        }
        Errno::EEXIST => VolumeFileError::Exists(format!("{p} already exists")),
        Errno::ENOSPC | Errno::EDQUOT => VolumeFileError::NoSpace(format!("{what} {p}: the volume is full")),
        Errno::EISDIR => VolumeFileError::Invalid(format!("{what} {p}: it is a directory")),
        Errno::ENOTEMPTY => VolumeFileError::Invalid(format!("{what} {p}: the directory is not empty")),
        Errno::ELOOP => VolumeFileError::Invalid(format!("{what} {p}: too many symbolic links")),
        Errno::EXDEV => VolumeFileError::Invalid(format!("{what} {p}: it leads out of the volume")),
        Errno::ENXIO | Errno::ENODEV => VolumeFileError::Invalid(format!("{what} {p}: not a regular file")),
        Errno::ENAMETOOLONG => VolumeFileError::Invalid(format!("{what} {p}: name too long")),
        Errno::EAGAIN => VolumeFileError::Busy(format!(
            "{what} {p}: the volume kept changing under the path; try again"
        )),
        e => VolumeFileError::Io(format!("{what} {p}: {}", e.desc())),
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let secs = u64::try_from(secs).unwrap_or(0);
    let nsecs = u32::try_from(nsecs).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nsecs)
}

fn kind_of(st: &FileStat) -> EntryKind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => EntryKind::File,
        SFlag::S_IFDIR => EntryKind::Directory,
        SFlag::S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Unknown,
    }
}

static UPLOADS: AtomicU64 = AtomicU64::new(0);

fn entry(ids: IdRange, path: &VolumePath, st: &FileStat, target: Option<String>) -> Entry {
    Entry {
        name: path.0.last().cloned().unwrap_or_else(|| "/".into()),
        kind: kind_of(st),
        path: path.display(),
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        uid: ids.sandbox_id_of(st.st_uid),
        gid: ids.sandbox_id_of(st.st_gid),
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        target,
    }
}

/// A volume's root, opened once per request.
#[derive(Debug)]
pub struct VolumeFiles {
    root: OwnedFd,
    ids: IdRange,
}

impl VolumeFiles {
    /// Opens the volume whose contents are the host directory `dir`.
    pub fn open(dir: &Path, ids: IdRange) -> std::io::Result<Self> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { root, ids })
    }

    /// Resolves `path` inside the root (links followed, all of them inside the volume).
    fn resolve(&self, path: &VolumePath, flags: OFlag) -> std::result::Result<OwnedFd, Errno> {
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
            ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV,
        );
        // EAGAIN: a rename in the volume raced the resolution (the kernel's guard against `..`
        // escapes); a few tries, then the caller hears that the volume is busy
        let mut tries = 0;
        loop {
            match openat2(&self.root, path.relative().as_str(), how) {
                Err(Errno::EAGAIN) if tries < 32 => tries += 1,
                r => return r,
            }
        }
    }

    /// The directory holding `path`'s last component, and that component.
    fn parent_of<'p>(&self, path: &'p VolumePath, what: &str) -> Result<(OwnedFd, &'p str)> {
        let (parent, name) = path
            .parent()
            .ok_or_else(|| VolumeFileError::Invalid(format!("{what} /: not allowed on the volume's root")))?;
        let fd = self
            .resolve(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|e| io_err(what, &parent, e))?;
        Ok((fd, name))
    }

    fn entry(&self, path: &VolumePath, st: &FileStat, target: Option<String>) -> Entry {
        entry(self.ids, path, st, target)
    }

    /// The entry `name` of directory `dir`, not followed if it is a link.
    fn entry_at<Fd: AsFd>(&self, dir: Fd, name: &str, path: &VolumePath) -> Result<Entry> {
        let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| io_err("stat", path, e))?;
        let target = (kind_of(&st) == EntryKind::Symlink)
            .then(|| nix::fcntl::readlinkat(&dir, name).ok())
            .flatten()
            .map(|t| t.to_string_lossy().into_owned());
        Ok(self.entry(path, &st, target))
    }

    /// `GET …/path`: what `path` is (a link is shown, not followed).
    pub fn stat(&self, path: &VolumePath) -> Result<Entry> {
        match path.parent() {
            None => {
                let st = fstat(&self.root).map_err(|e| io_err("stat", path, e))?;
                Ok(self.entry(path, &st, None))
            }
            Some(_) => {
                let (dir, name) = self.parent_of(path, "stat")?;
                self.entry_at(&dir, name, path)
            }
        }
    }

    /// `GET …/dir`: the entries below directory `path`, `depth` levels deep (1: its own).
    pub fn list(&self, path: &VolumePath, depth: u32) -> Result<Vec<Entry>> {
        if !(1..=MAX_DEPTH).contains(&depth) {
            return Err(VolumeFileError::Invalid(format!(
                "depth {depth}: 1 to {MAX_DEPTH}"
            )));
        }
        let dir = self
            .resolve(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| io_err("list", path, e))?;
        let mut out = Vec::new();
        self.list_into(dir, path, depth, &mut out)?;
        Ok(out)
    }

    fn list_into(&self, dir: OwnedFd, path: &VolumePath, depth: u32, out: &mut Vec<Entry>) -> Result<()> {
        let mut d = nix::dir::Dir::from_fd(dir).map_err(|e| io_err("list", path, e))?;
        let mut names: Vec<String> = Vec::new();
        for ent in d.iter() {
            let ent = ent.map_err(|e| io_err("list", path, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            if out.len() >= MAX_LISTED {
                return Err(VolumeFileError::Invalid(format!(
                    "list {}: more than {MAX_LISTED} entries; list with a smaller depth",
                    path.display()
                )));
            }
            let mut child = path.clone();
            child.0.push(name.clone());
            let e = match self.entry_at(&d, &name, &child) {
                Ok(e) => e,
                // removed while listing
                Err(VolumeFileError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let is_dir = e.kind == EntryKind::Directory;
            out.push(e);
            if is_dir && depth > 1 {
                // one component, never a link
                match openat(
                    &d,
                    name.as_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(sub) => self.list_into(sub, &child, depth - 1, out)?,
                    Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
                    Err(e) => return Err(io_err("list", &child, e)),
                }
            }
        }
        Ok(())
    }

    /// Gives the entry `fd` (just made by this request) its owner and mode.
    fn own(&self, fd: &OwnedFd, owner: &Ownership, default_mode: u32, path: &VolumePath) -> Result<()> {
        let uid = self
            .ids
            .to_host(owner.uid.unwrap_or(self.ids.default_owner), "uid")?;
        let gid = self
            .ids
            .to_host(owner.gid.unwrap_or(self.ids.default_owner), "gid")?;
        fchownat(
            fd,
            "",
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| io_err("chown", path, e))?;
        chmod_fd(fd, owner.mode.unwrap_or(default_mode)).map_err(|e| io_err("chmod", path, e))
    }

    /// `POST …/dir`: makes directory `path` (with `parents`, the missing ones on the way too,
    /// and an existing directory is not an error).
    pub fn make_dir(&self, path: &VolumePath, owner: &Ownership, parents: bool) -> Result<Entry> {
        owner.check_mode()?;
        if path.0.is_empty() {
            return if parents {
                self.stat(path)
            } else {
                Err(VolumeFileError::Exists("/ already exists".into()))
            };
        }
        let upto = if parents { 1 } else { path.0.len() };
        for n in upto..=path.0.len() {
            let part = VolumePath(path.0[..n].to_vec());
            let last = n == path.0.len();
            let (dir, name) = self.parent_of(&part, "make directory")?;
            match mkdirat(&dir, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) => {
                    let fd = openat(
                        &dir,
                        name,
                        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err("make directory", &part, e))?;
                    let mode = if last {
                        *owner
                    } else {
                        Ownership { mode: None, ..*owner }
                    };
                    self.own(&fd, &mode, 0o755, &part)?;
                }
                Err(Errno::EEXIST) if parents => {
                    // must be a directory (or a link to one inside the volume)
                    self.resolve(&part, OFlag::O_PATH | OFlag::O_DIRECTORY)
                        .map_err(|e| match e {
                            Errno::ENOTDIR => VolumeFileError::Exists(format!(
                                "{} exists and is not a directory",
                                part.display()
                            )),
                            e => io_err("make directory", &part, e),
                        })?;
                }
                Err(e) => return Err(io_err("make directory", &part, e)),
            }
        }
        self.stat(path)
    }

    /// `PATCH …/path`: changes the owner, group or mode of `path` (not followed if it is a
    /// link; a link has no mode of its own).
    pub fn set_metadata(&self, path: &VolumePath, change: &Ownership) -> Result<Entry> {
        change.check_mode()?;
        let fd = self
            .resolve(path, OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .map_err(|e| io_err("update", path, e))?;
        let st = fstat(&fd).map_err(|e| io_err("update", path, e))?;
        if change.uid.is_some() || change.gid.is_some() {
            let uid = change.uid.map(|u| self.ids.to_host(u, "uid")).transpose()?;
            let gid = change.gid.map(|g| self.ids.to_host(g, "gid")).transpose()?;
            fchownat(
                &fd,
                "",
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("chown", path, e))?;
        }
        if let Some(mode) = change.mode {
            if kind_of(&st) == EntryKind::Symlink {
                return Err(VolumeFileError::Invalid(format!(
                    "chmod {}: a symbolic link has no mode of its own",
                    path.display()
                )));
            }
            chmod_fd(&fd, mode).map_err(|e| io_err("chmod", path, e))?;
        }
        self.stat(path)
    }

    /// `DELETE …/path`: removes a file, a link (not what it points to) or a directory tree.
    pub fn remove(&self, path: &VolumePath) -> Result<()> {
        let (dir, name) = self.parent_of(path, "remove")?;
        let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| io_err("remove", path, e))?;
        if kind_of(&st) != EntryKind::Directory {
            return unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| io_err("remove", path, e));
        }
        remove_tree(&dir, name).map_err(|e| io_err("remove", path, e))
    }

    /// `GET …/file`: opens regular file `path` for reading (links inside the volume followed);
    /// returns it and its size.
    pub fn open_read(&self, path: &VolumePath) -> Result<(File, u64)> {
        let fd = self
            .resolve(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
            .map_err(|e| io_err("read", path, e))?;
        let st = fstat(&fd).map_err(|e| io_err("read", path, e))?;
        match kind_of(&st) {
            EntryKind::File => Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0))),
            EntryKind::Directory => Err(VolumeFileError::Invalid(format!(
                "read {}: it is a directory",
                path.display()
            ))),
            _ => Err(VolumeFileError::Invalid(format!(
                "read {}: not a regular file",
                path.display()
            ))),
        }
    }

    /// `PUT …/file`: starts writing `path` (with `parents`, missing directories are made): the
    /// file to write the data to, a new one beside `path`, which [`PendingWrite::commit`]
    /// renames over it. A failed or cut upload leaves the old file as it was.
    pub fn begin_write(
        &self,
        path: &VolumePath,
        owner: &Ownership,
        parents: bool,
    ) -> Result<(File, PendingWrite)> {
        owner.check_mode()?;
        let (parent, name) = path
            .parent()
            .ok_or_else(|| VolumeFileError::Invalid("write /: it is a directory".into()))?;
        if parents && !parent.0.is_empty() {
            self.make_dir(&parent, &Ownership::default(), true)?;
        }
        let (dir, _) = self.parent_of(path, "write")?;
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let tmp = format!(
                ".sandboxd-upload-{}-{nanos:x}-{}",
                std::process::id(),
                UPLOADS.fetch_add(1, Ordering::Relaxed)
            );
            match openat(
                &dir,
                tmp.as_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => {
                    let pending = PendingWrite {
                        dir,
                        tmp,
                        name: name.to_string(),
                        path: path.clone(),
                        ids: self.ids,
                        owner: *owner,
                    };
                    return Ok((File::from(fd), pending));
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(io_err("write", path, e)),
            }
        }
    }
}

/// Removes directory `name` of `dir` and everything below it. Each level is entered with
/// `O_NOFOLLOW` from the one above (never leaving the tree), and the levels are kept on the
/// heap, not the call stack: a sandbox may nest directories thousands deep.
fn remove_tree(dir: &OwnedFd, name: &str) -> std::result::Result<(), Errno> {
    use nix::dir::Dir;
    let open = |parent: BorrowedFd<'_>, n: &str| {
        Dir::openat(
            parent,
            n,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    // the open directories from the tree's top down, with their names in their parents
    let mut levels: Vec<(Dir, String)> = vec![(open(dir.as_fd(), name)?, name.to_string())];
    while let Some((top, _)) = levels.last_mut() {
        let mut names = Vec::new();
        for ent in top.iter() {
            let n = ent?.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        let fd = top.as_fd();
        let mut deeper = None;
        for n in names {
            match unlinkat(fd, n.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => match unlinkat(fd, n.as_str(), UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(Errno::ENOTEMPTY | Errno::EEXIST) => {
                        deeper = Some(n);
                        break;
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        match deeper {
            Some(n) => {
                let child = {
                    let (top, _) = levels.last().ok_or(Errno::EIO)?;
                    open(top.as_fd(), &n)?
                };
                levels.push((child, n));
            }
            None => {
                let (_, done) = levels.pop().ok_or(Errno::EIO)?;
                let parent = levels.last().map_or(dir.as_fd(), |(d, _)| d.as_fd());
                match unlinkat(parent, done.as_str(), UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    // filled again meanwhile: go through it once more
                    Err(Errno::ENOTEMPTY | Errno::EEXIST) => levels.push((open(parent, &done)?, done)),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// `chmod` of the object `fd` refers to (an `O_PATH` descriptor: through its `/proc` link,
/// which names that very inode, never a path a sandbox could swap).
fn chmod_fd(fd: &OwnedFd, mode: u32) -> std::result::Result<(), Errno> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        std::fs::Permissions::from_mode(mode),
    )
    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// An upload in progress ([`VolumeFiles::begin_write`]); dropped without
/// [`commit`](Self::commit), its file is removed.
#[derive(Debug)]
pub struct PendingWrite {
    dir: OwnedFd,
    /// The new file's name beside the target (empty once renamed).
    tmp: String,
    name: String,
    path: VolumePath,
    ids: IdRange,
    owner: Ownership,
}

impl PendingWrite {
    /// Gives `file` (what `begin_write` returned, now written) its owner and mode, syncs it
    /// and puts it in place of the target.
    pub fn commit(mut self, file: File) -> Result<Entry> {
        let path = self.path.clone();
        let uid = self
            .ids
            .to_host(self.owner.uid.unwrap_or(self.ids.default_owner), "uid")?;
        let gid = self
            .ids
            .to_host(self.owner.gid.unwrap_or(self.ids.default_owner), "gid")?;
        fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| io_err("chown", &path, e))?;
        fchmod(&file, Mode::from_bits_truncate(self.owner.mode.unwrap_or(0o644)))
            .map_err(|e| io_err("chmod", &path, e))?;
        file.sync_all().map_err(|e| match e.raw_os_error() {
            Some(n) => io_err("write", &path, Errno::from_raw(n)),
            None => VolumeFileError::Io(format!("write {}: {e}", path.display())),
        })?;
        renameat(&self.dir, self.tmp.as_str(), &self.dir, self.name.as_str())
            .map_err(|e| io_err("write", &path, e))?;
        self.tmp.clear();
        let st = fstat(&file).map_err(|e| io_err("write", &path, e))?;
        Ok(entry(self.ids, &path, &st, None))
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            let _ = unlinkat(&self.dir, self.tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_normalised() {
        let p = |s: &str| VolumePath::parse(s).map(|p| p.display());
        assert_eq!(p("/a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(p("a/b").unwrap(), "/a/b");
        assert_eq!(p("/").unwrap(), "/");
        for bad in ["", "/a/../b", "..", "a\0b"] {
            assert!(matches!(p(bad), Err(VolumeFileError::Invalid(_))), "{bad:?}");
        }
        assert!(p(&"x".repeat(256)).is_err());
        assert!(p(&"a/".repeat(2100)).is_err());
    }

    #[test]
    fn ids_map_into_the_sandbox_range_only() {
        let ids = IdRange {
            base: 100_000,
            count: 65536,
            default_owner: 1000,
        };
        assert_eq!(ids.to_host(1000, "uid"), Ok(101_000));
        assert!(ids.to_host(65536, "uid").is_err());
        assert_eq!(ids.sandbox_id_of(101_000), 1000);
        assert_eq!(ids.sandbox_id_of(0), 65534, "host root shows as nobody");
        assert_eq!(ids.sandbox_id_of(165_536), 65534);
    }

    fn volume(dir: &Path) -> VolumeFiles {
        let ids = IdRange {
            base: 0,
            count: 65536,
            default_owner: 0,
        };
        VolumeFiles::open(dir, ids).unwrap()
    }

    #[test]
    fn links_resolve_inside_the_volume_and_are_never_followed_out() {
        let tmp = tempfile::tempdir().unwrap();
        let canary = tmp.path().join("canary");
        std::fs::write(&canary, "host").unwrap();
        let root = tmp.path().join("vol");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("inside"), "vol").unwrap();
        std::os::unix::fs::symlink(&canary, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../canary", root.join("d/rel")).unwrap();
        std::os::unix::fs::symlink("/inside", root.join("d/ok")).unwrap();
        let v = volume(&root);
        let p = |s: &str| VolumePath::parse(s).unwrap();
        let read = |s: &str| {
            v.open_read(&p(s)).map(|(mut f, _)| {
                let mut out = String::new();
                std::io::Read::read_to_string(&mut f, &mut out).unwrap();
                out
            })
        };
        assert_eq!(read("/d/ok").unwrap(), "vol");
        assert!(matches!(read("/abs"), Err(VolumeFileError::NotFound(_))));
        assert!(matches!(read("/d/rel"), Err(VolumeFileError::NotFound(_))));
        let link = v.stat(&p("/abs")).unwrap();
        assert_eq!(
            (link.kind, link.target.as_deref()),
            (EntryKind::Symlink, canary.to_str())
        );
        assert!(matches!(read("/d"), Err(VolumeFileError::Invalid(_))));
        v.remove(&p("/abs")).unwrap();
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host");
        assert!(matches!(v.remove(&p("/")), Err(VolumeFileError::Invalid(_))));
    }

    #[test]
    fn a_deep_tree_is_removed_without_recursion_and_without_leaving_it() {
        let tmp = tempfile::tempdir().unwrap();
        let canary = tmp.path().join("canary");
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("keep"), "host").unwrap();
        let root = tmp.path().join("vol");
        // 3000 levels, a file and a link out of the volume at the bottom
        let deep = root.join("t");
        std::fs::create_dir_all(&deep).unwrap();
        let mut dir = std::fs::File::open(&deep).unwrap();
        for _ in 0..3000 {
            nix::sys::stat::mkdirat(&dir, "n", Mode::from_bits_truncate(0o755)).unwrap();
            dir = File::from(openat(&dir, "n", OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap());
        }
        let f = openat(
            &dir,
            "f",
            OFlag::O_WRONLY | OFlag::O_CREAT,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        drop(f);
        nix::unistd::symlinkat(&canary, &dir, "out").unwrap();
        let v = volume(&root);
        let listed = v.list(&VolumePath::parse("/t").unwrap(), MAX_DEPTH).unwrap();
        assert_eq!(
            listed.len(),
            MAX_DEPTH as usize,
            "one directory per level, down to the cap"
        );
        assert!(v.list(&VolumePath::parse("/t").unwrap(), MAX_DEPTH + 1).is_err());
        v.remove(&VolumePath::parse("/t").unwrap()).unwrap();
        assert!(!root.join("t").exists());
        assert_eq!(std::fs::read_to_string(canary.join("keep")).unwrap(), "host");
    }

    #[test]
    fn modes_without_set_id_bits() {
        let o = |m| {
            Ownership {
                mode: Some(m),
                ..Default::default()
            }
            .check_mode()
        };
        assert!(o(0o644).is_ok() && o(0o1777).is_ok());
        assert!(o(0o4755).is_err() && o(0o2755).is_err() && o(0o10000).is_err());
    }
}
