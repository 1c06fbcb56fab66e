//! Snapshot templates: a sandbox's two writable layers (the upper dirs of its `/` and `/usr`
//! overlays) copied into a read-only template that new sandboxes stack on top of the source's
//! own template (see `docs/snapshots.md`).
//!
//! A layered template is a directory `<data>/templates/<name>/` holding [`LAYERS_FILE`]
//! ([`TemplateLayers`]: the template it builds on, and its read-only layers for `/` and for
//! `/usr`, top first, as paths relative to `<data>/templates`). The spawn helper reaches layers
//! through its idmapped view of the templates directory, so layer files are stored with sandbox
//! ids (0, 1000), like the `base` skeleton: copying an upper dir shifts owners down by the
//! id-map base. Overlay metadata survives the copy: `user.overlay.*` xattrs (opaque dirs) and
//! whiteouts (char devices 0:0) are copied as they are, so the layer means the same thing one
//! level lower.
//!
//! Layout of a snapshot template `<name>`: `root/0` and `usr/0` (the source's upper dirs) and
//! `root/<n>`, `usr/<n>` (hard-linked copies of the source template's own snapshot layers, so
//! every snapshot template can be deleted on its own).

use super::names::{is_valid_sandbox_id, valid_template};
use super::{IdMap, NamespaceBackend, step};
use crate::{RuntimeError, SnapshotLimits};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The manifest of a layered template.
pub const LAYERS_FILE: &str = "layers.json";

/// The read-only layers of a layered template (the generic mechanism: a template is a base
/// template plus ordered read-only lower layers for `/` and for `/usr`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateLayers {
    /// The template this one builds on (a skeleton such as `base`, or another named template).
    pub base: String,
    /// Layers over the base's `/`, top first, relative to `<data>/templates`.
    #[serde(default)]
    pub root: Vec<String>,
    /// Layers over `/usr`, top first, relative to `<data>/templates`.
    #[serde(default)]
    pub usr: Vec<String>,
    /// The layers hold host ids of the sandbox range, like upper dirs (mounted as they are);
    /// `false` for layers of older versions, which hold sandbox ids (mounted through the
    /// idmapped templates view).
    #[serde(default, rename = "hostIds")]
    pub host_ids: bool,
    /// Bytes the snapshot's own copies took (charged to the snapshot store limit).
    #[serde(default)]
    pub bytes: u64,
    /// The root layers are a whole root file system (an image template,
    /// `image_template.rs`): the host's `/usr` is not mounted, `usr` is empty.
    #[serde(default, rename = "wholeRoot", skip_serializing_if = "std::ops::Not::not")]
    pub whole_root: bool,
}

/// Directory under `<data>/templates` of the unpacked image layers (`sandboxd-image`), one per
/// diff id. They hold the image's own ids (sandbox ids), whatever the template's `host_ids`.
pub const IMAGE_LAYERS: &str = "_image-layers";

/// Whether layer path `l` is an image layer (see [`IMAGE_LAYERS`]).
pub fn is_image_layer(l: &str) -> bool {
    l.strip_prefix(IMAGE_LAYERS)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Prefix of snapshot directories being written (removed at start if a crash left them).
pub const TMP_PREFIX: &str = ".tmp-snap-";

/// Room kept free on the data dir's filesystem whatever the limits say.
const FREE_RESERVE: u64 = 256 << 20;

/// The budget of a new snapshot: the smallest of its own limit, what the store limit leaves
/// (the sizes recorded in every snapshot manifest) and the free space of the disk minus a
/// reserve, saying which one it is.
fn snapshot_budget(templates: &Path, limits: SnapshotLimits) -> Result<Budget, RuntimeError> {
    let mib = |b: u64| b >> 20;
    let mut best = Budget::because(u64::MAX, String::new());
    let mut pick = |bytes: u64, what: String| {
        if bytes < best.limit {
            best = Budget::because(bytes, what);
        }
    };
    if limits.max_bytes > 0 {
        pick(
            limits.max_bytes,
            format!("its limit of {} MiB", mib(limits.max_bytes)),
        );
    }
    if limits.store_max_bytes > 0 {
        let used: u64 = std::fs::read_dir(templates)
            .map_err(|e| step("snapshot", format!("listing templates: {}", e.kind())))?
            .flatten()
            .filter_map(|e| {
                read_layers(templates, &e.file_name().to_string_lossy())
                    .ok()
                    .flatten()
            })
            .map(|l| l.bytes)
            .sum();
        let left = limits.store_max_bytes.saturating_sub(used);
        if left == 0 {
            return Err(RuntimeError::StorageFull(format!(
                "the snapshot store is full ({} of {} MiB used): delete snapshots first",
                mib(used),
                mib(limits.store_max_bytes)
            )));
        }
        pick(
            left,
            format!(
                "what the snapshot store limit leaves ({} of {} MiB)",
                mib(left),
                mib(limits.store_max_bytes)
            ),
        );
    }
    let fs = nix::sys::statvfs::statvfs(templates)
        .map_err(|e| step("snapshot", format!("checking free space: {e}")))?;
    let free = (fs.blocks_available() as u64).saturating_mul(fs.fragment_size() as u64);
    pick(
        free.saturating_sub(FREE_RESERVE),
        format!(
            "the host's free disk space ({} MiB, of which {} MiB stay free)",
            mib(free),
            mib(FREE_RESERVE)
        ),
    );
    Ok(best)
}

/// Whether `p` is a safe relative layer path: normal components of `[A-Za-z0-9._-]`, none
/// starting with a dot, at most 8 components.
pub fn valid_layer_path(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    !p.is_empty()
        && p.len() <= 512
        && parts.len() <= 8
        && parts.iter().all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

/// The manifest of template `name`, if it is a layered template. A manifest that does not parse
/// or names bad paths is an error.
pub fn read_layers(templates: &Path, name: &str) -> Result<Option<TemplateLayers>, RuntimeError> {
    if !valid_template(name) {
        return Ok(None);
    }
    let p = templates.join(name).join(LAYERS_FILE);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
            return Ok(None);
        }
        Err(e) => return Err(step("template", format!("reading {}: {e}", p.display()))),
    };
    let l: TemplateLayers = serde_json::from_slice(&text)
        .map_err(|e| step("template", format!("parsing {}: {e}", p.display())))?;
    if l.base == name
        || !valid_template(&l.base)
        || !l.root.iter().chain(&l.usr).all(|x| valid_layer_path(x))
        || l.root.len() + l.usr.len() > 64
    {
        return Err(step("template", format!("{} names bad layers", p.display())));
    }
    Ok(Some(l))
}

/// At backend start: remove snapshot copies a crash interrupted, and make sure only host root
/// can enter snapshot templates (those of older versions were world-searchable).
pub fn secure_store(templates: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(templates) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        } else if e.path().join(LAYERS_FILE).is_file() {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
}

/// A frozen sandbox cgroup; thawed on drop unless it was frozen already (a paused sandbox).
pub(super) struct Frozen {
    files: Vec<(PathBuf, &'static str)>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for (f, thawed) in &self.files {
            let _ = std::fs::write(f, thawed);
        }
    }
}

/// Freeze the processes of a sandbox (v1 freezer / v2 `cgroup.freeze`) and wait until frozen.
/// Without a freezer the copy happens live (documented: files being written then may be torn).
fn freeze(layout: &super::cgroup::CgroupLayout, root: &str, id: &str) -> Result<Frozen, RuntimeError> {
    use super::cgroup::CgroupLayout;
    let mut me = Frozen { files: Vec::new() };
    let (file, frozen_val, thawed_val, done): (PathBuf, &str, &'static str, Box<dyn Fn() -> bool>) =
        match layout {
            CgroupLayout::V1(hs) => {
                let Some(h) = hs.iter().find(|h| h.controllers.iter().any(|c| c == "freezer")) else {
                    tracing::warn!(sandbox = id, "no freezer cgroup: copying without freezing");
                    return Ok(me);
                };
                let f = h.mount.join(root).join(id).join("freezer.state");
                let f2 = f.clone();
                (
                    f,
                    "FROZEN",
                    "THAWED",
                    Box::new(move || std::fs::read_to_string(&f2).is_ok_and(|s| s.trim() == "FROZEN")),
                )
            }
            CgroupLayout::V2(m) => {
                let dir = m.join(root).join(id);
                let ev = dir.join("cgroup.events");
                (
                    dir.join("cgroup.freeze"),
                    "1",
                    "0",
                    Box::new(move || {
                        std::fs::read_to_string(&ev).is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
                    }),
                )
            }
        };
    if !file.exists() {
        return Err(step(
            "snapshot",
            format!("sandbox {id} has no cgroup (not running?)"),
        ));
    }
    if done() {
        // paused by the lifecycle code: leave it frozen afterwards
        return Ok(me);
    }
    std::fs::write(&file, frozen_val)
        .map_err(|e| step("snapshot", format!("freezing {}: {e}", file.display())))?;
    me.files.push((file, thawed_val));
    let t0 = std::time::Instant::now();
    while !done() {
        if t0.elapsed() > Duration::from_secs(5) {
            return Err(step(
                "snapshot",
                format!("sandbox {id} did not freeze within 5 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(me)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(ErrorKind::InvalidInput, "NUL in path"))
}

/// Sandbox id of `nobody`: owners that cannot be kept become this id of the range.
const NOBODY: u32 = 65534;

/// How [`copy_tree`] sets owners (and the root ids of file capabilities).
#[derive(Debug, Clone, Copy)]
pub enum Owners {
    /// Keep owners and xattrs as they are (only for trees this module made).
    Keep,
    /// The source holds host ids of the sandbox range (an upper dir, a current layer): ids in
    /// the range are kept, others become the range's `nobody`.
    Host(IdMap),
    /// The source holds sandbox ids (a layer stored by an older version): ids move into the range.
    Legacy(IdMap),
}

impl Owners {
    fn id(&self, id: u32) -> u32 {
        match *self {
            Owners::Keep => id,
            Owners::Host(m) if id.checked_sub(m.base).is_some_and(|i| i < m.count) => id,
            Owners::Host(m) => m.base + NOBODY,
            Owners::Legacy(m) => m.to_host(id).unwrap_or(m.base + NOBODY),
        }
    }

    /// The `security.capability` value to store for `val`, or `None` to leave it out. Copies
    /// always get v3 capabilities whose root id lies in the sandbox range: effective for the
    /// sandbox's root inside a sandbox, never for a host process (host caps need root id 0).
    /// A v2 value (effective everywhere) becomes v3 for the sandbox's root; v1 is dropped.
    fn capability(&self, val: &[u8]) -> Option<Vec<u8>> {
        const REVISION_MASK: u32 = 0xff00_0000;
        const REVISION_2: u32 = 0x0200_0000;
        const REVISION_3: u32 = 0x0300_0000;
        let m = match *self {
            Owners::Keep => return Some(val.to_vec()),
            Owners::Host(m) | Owners::Legacy(m) => m,
        };
        let magic = u32::from_le_bytes(val.get(..4)?.try_into().ok()?);
        let root = match (magic & REVISION_MASK, val.len()) {
            (REVISION_3, 24) => self.id(u32::from_le_bytes(val[20..24].try_into().ok()?)),
            (REVISION_2, 20) => m.base,
            _ => return None,
        };
        let mut out = val[..20].to_vec();
        out[..4].copy_from_slice(&((magic & !REVISION_MASK) | REVISION_3).to_le_bytes());
        out.extend_from_slice(&root.to_le_bytes());
        Some(out)
    }
}

/// How [`copy_tree`] treats files.
#[derive(Debug, Clone, Copy)]
pub struct CopyOpts {
    /// How owners are mapped.
    pub owners: Owners,
    /// Hard-link regular files instead of copying them (only for immutable sources).
    pub link: bool,
}

/// Bytes a copy may still write; a copy that would go over stops with
/// [`ErrorKind::StorageFull`]. Data is counted in 4 KiB blocks, a directory as one block and
/// every other entry as an inode (256 bytes).
#[derive(Debug)]
pub struct Budget {
    left: u64,
    limit: u64,
    /// What set the limit, for the error ("its limit of 16 MiB").
    what: String,
}

/// Sizes [`Budget`] charges: a data block (and a directory), an inode.
const BLOCK: u64 = 4096;
const INODE: u64 = 256;

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self::because(limit, format!("its limit of {} MiB", limit.div_ceil(1 << 20)))
    }

    /// A budget of `limit` bytes set by `what`.
    pub fn because(limit: u64, what: String) -> Self {
        Self {
            left: limit,
            limit,
            what,
        }
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.limit - self.left
    }

    fn charge(&mut self, bytes: u64) -> io::Result<()> {
        match self.left.checked_sub(bytes) {
            Some(l) => {
                self.left = l;
                Ok(())
            }
            None => Err(io::Error::new(
                ErrorKind::StorageFull,
                format!("the copy is larger than {}", self.what),
            )),
        }
    }
}

/// Copy the tree `src` into the new directory `dst`: regular files (contents, keeping holes, or
/// hard links), directories, symlinks, device nodes (overlay whiteouts), fifos and sockets,
/// with modes, owners, times, hard links inside the tree and extended attributes (`system.*`
/// ACLs left out). Errors name paths relative to `dst` only (they may reach API clients).
pub fn copy_tree(src: &Path, dst: &Path, opts: CopyOpts, budget: &mut Budget) -> io::Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut cx = CopyCx {
        opts,
        budget,
        links: &mut links,
        dst_root: dst,
    };
    cx.entry(src, dst)
}

struct CopyCx<'a> {
    opts: CopyOpts,
    budget: &'a mut Budget,
    links: &'a mut HashMap<(u64, u64), PathBuf>,
    dst_root: &'a Path,
}

impl CopyCx<'_> {
    /// `err` with the entry's path inside the copy (never a host path).
    fn ctx(&self, dst: &Path, what: &str, e: io::Error) -> io::Error {
        let rel = dst.strip_prefix(self.dst_root).unwrap_or(Path::new(""));
        io::Error::new(e.kind(), format!("{what} /{}: {e}", rel.display()))
    }

    fn entry(&mut self, src: &Path, dst: &Path) -> io::Result<()> {
        let md = std::fs::symlink_metadata(src).map_err(|e| self.ctx(dst, "reading", e))?;
        let ft = md.file_type();
        let key = (md.dev(), md.ino());
        if ft.is_dir() {
            self.budget
                .charge(BLOCK)
                .map_err(|e| self.ctx(dst, "copying", e))?;
            std::fs::create_dir(dst).map_err(|e| self.ctx(dst, "creating", e))?;
            let mut names: Vec<_> = std::fs::read_dir(src)
                .and_then(|rd| rd.collect::<Result<Vec<_>, _>>())
                .map_err(|e| self.ctx(dst, "reading", e))?;
            names.sort_by_key(|e| e.file_name());
            for e in names {
                self.entry(&e.path(), &dst.join(e.file_name()))?;
            }
        } else if !ft.is_symlink() && md.nlink() > 1 && self.links.contains_key(&key) {
            return std::fs::hard_link(&self.links[&key], dst).map_err(|e| self.ctx(dst, "linking", e));
        } else if ft.is_file() {
            if self.opts.link {
                std::fs::hard_link(src, dst).map_err(|e| self.ctx(dst, "linking", e))?;
                return Ok(());
            }
            self.budget
                .charge(INODE)
                .map_err(|e| self.ctx(dst, "copying", e))?;
            copy_sparse(src, dst, self.budget).map_err(|e| self.ctx(dst, "copying", e))?;
        } else if ft.is_symlink() {
            self.budget
                .charge(INODE)
                .map_err(|e| self.ctx(dst, "copying", e))?;
            let target = std::fs::read_link(src).map_err(|e| self.ctx(dst, "reading", e))?;
            std::os::unix::fs::symlink(&target, dst).map_err(|e| self.ctx(dst, "creating symlink", e))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            self.budget
                .charge(INODE)
                .map_err(|e| self.ctx(dst, "copying", e))?;
            let c = cpath(dst)?;
            // SAFETY: valid C string; creates a node of the same type and device number.
            if unsafe { libc::mknod(c.as_ptr(), md.mode() as libc::mode_t, md.rdev() as libc::dev_t) } != 0 {
                return Err(self.ctx(dst, "creating node", io::Error::last_os_error()));
            }
        } else {
            return Err(self.ctx(dst, "copying", io::Error::from(ErrorKind::Unsupported)));
        }
        if md.nlink() > 1 && !ft.is_dir() && !ft.is_symlink() {
            self.links.insert(key, dst.to_path_buf());
        }
        finish_attrs(src, dst, &md, &self.opts.owners).map_err(|e| self.ctx(dst, "setting attributes of", e))
    }
}

/// Copy the regular file `src` to the new file `dst`, data ranges only (`SEEK_DATA` /
/// `SEEK_HOLE`), so holes stay holes; each data range is charged to `budget` before it is
/// copied.
fn copy_sparse(src: &Path, dst: &Path, budget: &mut Budget) -> io::Result<()> {
    use nix::unistd::{Whence, lseek};
    let from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)?;
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)?;
    let len = i64::try_from(from.metadata()?.len()).map_err(|_| io::Error::from(ErrorKind::InvalidData))?;
    let mut pos = 0i64;
    while pos < len {
        let start = match lseek(&from, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = lseek(&from, start, Whence::SeekHole)?.min(len);
        budget.charge(((end - start) as u64).div_ceil(BLOCK).saturating_mul(BLOCK))?;
        copy_range(&from, &to, start, end)?;
        pos = end;
    }
    to.set_len(len as u64)
}

/// Copy bytes `start..end` of `from` to the same offsets of `to`.
fn copy_range(from: &std::fs::File, to: &std::fs::File, start: i64, end: i64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let want = usize::try_from(end - off_in).unwrap_or(usize::MAX).min(1 << 30);
        match nix::fcntl::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want) {
            Ok(0) => return Err(io::Error::from(ErrorKind::UnexpectedEof)),
            Ok(_) => {}
            Err(nix::errno::Errno::EXDEV | nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL) => {
                // no in-kernel copy between these files: read and write
                let mut buf = vec![0u8; 1 << 20];
                while off_in < end {
                    let n = usize::try_from(end - off_in).unwrap_or(usize::MAX).min(buf.len());
                    let got = from.read_at(&mut buf[..n], off_in as u64)?;
                    if got == 0 {
                        return Err(io::Error::from(ErrorKind::UnexpectedEof));
                    }
                    to.write_all_at(&buf[..got], off_in as u64)?;
                    off_in += got as i64;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Owner, xattrs, mode and times of a copied entry (in that order: chown clears set-id bits
/// and file capabilities).
fn finish_attrs(src: &Path, dst: &Path, md: &std::fs::Metadata, owners: &Owners) -> io::Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    let (uid, gid) = (owners.id(md.uid()), owners.id(md.gid()));
    // SAFETY: valid C string; does not follow symlinks.
    if unsafe { libc::lchown(d.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    copy_xattrs(&s, &d, owners)?;
    if !md.file_type().is_symlink() {
        // SAFETY: valid C string.
        if unsafe { libc::chmod(d.as_ptr(), md.mode() & 0o7777) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let ts = [
        libc::timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        libc::timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    ];
    // SAFETY: valid C string and a two-element timespec array.
    if unsafe { libc::utimensat(libc::AT_FDCWD, d.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn copy_xattrs(s: &CString, d: &CString, owners: &Owners) -> io::Result<()> {
    // SAFETY: size query with a null buffer.
    let n = unsafe { libc::llistxattr(s.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Ok(());
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: buffer of the queried size.
    let n = unsafe { libc::llistxattr(s.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"system.") {
            continue;
        }
        let cname = CString::new(name).map_err(|_| io::Error::from(ErrorKind::InvalidData))?;
        // SAFETY: size query with a null buffer.
        let len = unsafe { libc::lgetxattr(s.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            continue;
        }
        let mut val = vec![0u8; len as usize];
        // SAFETY: buffer of the queried size.
        let len = unsafe { libc::lgetxattr(s.as_ptr(), cname.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if len < 0 {
            continue;
        }
        val.truncate(len as usize);
        if name == b"security.capability" {
            match owners.capability(&val) {
                Some(v) => val = v,
                None => continue,
            }
        }
        // SAFETY: valid C strings and a buffer of `val.len()` bytes.
        if unsafe { libc::lsetxattr(d.as_ptr(), cname.as_ptr(), val.as_ptr().cast(), val.len(), 0) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("xattr {}: {e}", String::from_utf8_lossy(name)),
            ));
        }
    }
    Ok(())
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

impl NamespaceBackend {
    /// The `(base template, root layers, usr layers)` a sandbox of template `name` is built
    /// from: a plain template has no layers.
    pub fn template_layers(&self, name: &str) -> Result<TemplateLayers, RuntimeError> {
        let templates = self.inner.cfg.data_dir.join("templates");
        Ok(read_layers(&templates, name)?.unwrap_or_else(|| TemplateLayers {
            base: name.to_string(),
            ..Default::default()
        }))
    }

    /// Copy the writable layers of sandbox `id` (made from template `source_template`) into the
    /// new layered template `name`, freezing the sandbox while its upper dirs are copied.
    /// Over `limits` (or the host disk's free space) it fails with
    /// [`RuntimeError::StorageFull`]; on any error nothing is left. Blocking.
    pub fn snapshot_blocking(
        &self,
        id: &str,
        source_template: &str,
        name: &str,
        limits: SnapshotLimits,
    ) -> Result<(), RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad sandbox id '{id}'")));
        }
        if !valid_template(name) {
            return Err(RuntimeError::InvalidSpec(format!("bad template name '{name}'")));
        }
        let templates = self.inner.cfg.data_dir.join("templates");
        let parent = self.template_layers(source_template)?;
        let final_dir = templates.join(name);
        if final_dir.exists() {
            return Err(RuntimeError::InvalidSpec(format!(
                "template '{name}' already exists"
            )));
        }
        let mut budget = snapshot_budget(&templates, limits)?;
        let tmp = templates.join(format!("{TMP_PREFIX}{}", unique()));
        let r = self.build_snapshot(id, &tmp, name, &parent, source_template, &mut budget);
        let r = r.and_then(|()| {
            super::sandbox_dirs::rename_noreplace(&tmp, &final_dir)
                .map_err(|e| step("snapshot", format!("renaming: {e}")))
        });
        if let Err(e) = &r {
            tracing::warn!(sandbox = id, template = name, "snapshot failed: {e}");
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r
    }

    fn build_snapshot(
        &self,
        id: &str,
        tmp: &Path,
        name: &str,
        parent: &TemplateLayers,
        source_template: &str,
        budget: &mut Budget,
    ) -> Result<(), RuntimeError> {
        let cfg = &self.inner.cfg;
        // Errors name no host path: they reach API clients.
        let io_err = |what: &'static str| {
            move |e: io::Error| match e.kind() {
                ErrorKind::StorageFull => RuntimeError::StorageFull(format!("snapshot: {what}: {e}")),
                _ => step("snapshot", format!("{what}: {e}")),
            }
        };
        // Only host root may enter the store: layers hold the sandbox's set-id files.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(tmp)
            .map_err(io_err("creating the snapshot dir"))?;
        for d in ["root", "usr"] {
            std::fs::create_dir(tmp.join(d)).map_err(io_err("creating the snapshot dir"))?;
        }
        let (upper_root, upper_usr) = self.upper_dirs(id);
        if !upper_root.is_dir() || !upper_usr.is_dir() {
            return Err(RuntimeError::InvalidSpec(format!(
                "sandbox {id} has no writable layers"
            )));
        }
        let host = CopyOpts {
            owners: Owners::Host(cfg.idmap),
            link: false,
        };
        {
            let _frozen = freeze(self.inner.cgroups.layout(), &cfg.cgroup_root, id)?;
            copy_tree(&upper_root, &tmp.join("root/0"), host, budget).map_err(io_err("copying /"))?;
            copy_tree(&upper_usr, &tmp.join("usr/0"), host, budget).map_err(io_err("copying /usr"))?;
        }
        // The parent's own layers: hard-linked copies (layers are immutable), so this template
        // does not depend on the parent's directory. Layers of other templates stay shared.
        // Layers stored by an older version (sandbox ids) are copied into the host range.
        let templates = cfg.data_dir.join("templates");
        let own = format!("{source_template}/");
        let (owners, link) = if parent.host_ids || parent.root.len() + parent.usr.len() == 0 {
            (Owners::Keep, true)
        } else {
            (Owners::Legacy(cfg.idmap), false)
        };
        let mut out = TemplateLayers {
            base: parent.base.clone(),
            root: vec![format!("{name}/root/0")],
            // an image's /usr is in its root layers; the sandbox's /usr upper dir stays empty
            usr: if parent.whole_root {
                Vec::new()
            } else {
                vec![format!("{name}/usr/0")]
            },
            host_ids: true,
            bytes: 0,
            whole_root: parent.whole_root,
        };
        for (kind, list, dst) in [
            ("root", &parent.root, &mut out.root),
            ("usr", &parent.usr, &mut out.usr),
        ] {
            for l in list {
                if l.starts_with(&own) || !link {
                    let n = dst.len();
                    copy_tree(
                        &templates.join(l),
                        &tmp.join(kind).join(n.to_string()),
                        CopyOpts { owners, link },
                        budget,
                    )
                    .map_err(io_err("copying a parent layer"))?;
                    dst.push(format!("{name}/{kind}/{n}"));
                } else {
                    dst.push(l.clone());
                }
            }
        }
        out.bytes = budget.used();
        let json = serde_json::to_vec(&out).map_err(|e| step("snapshot", e))?;
        std::fs::write(tmp.join(LAYERS_FILE), json).map_err(io_err("writing the manifest"))?;
        Ok(())
    }

    /// Remove layered template `name` (only layered templates can be removed; sandboxes still
    /// running from it keep their mounted layers until they exit only if the caller waited).
    pub fn delete_template_blocking(&self, name: &str) -> Result<bool, RuntimeError> {
        let templates = self.inner.cfg.data_dir.join("templates");
        if read_layers(&templates, name)?.is_none() {
            return Ok(false);
        }
        let t = super::sandbox_dirs::move_to_trash(
            &templates.join(name),
            &self.inner.cfg.data_dir.join(".trash"),
        )?;
        if let Some(t) = t {
            self.inner.delete_later(t);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_paths() {
        assert!(valid_layer_path("snap1/root/0"));
        assert!(valid_layer_path("code-interpreter-v1/layer"));
        for bad in [
            "",
            "/abs",
            "a/../b",
            "a/./b",
            ".hidden/x",
            "a//b",
            "a/b c",
            "a/b/c/d/e/f/g/h/i",
        ] {
            assert!(!valid_layer_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn manifests() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_layers(d.path(), "none").unwrap(), None);
        std::fs::create_dir(d.path().join("s1")).unwrap();
        std::fs::write(
            d.path().join("s1").join(LAYERS_FILE),
            r#"{"base":"base","root":["s1/root/0"],"usr":["s1/usr/0"]}"#,
        )
        .unwrap();
        let l = read_layers(d.path(), "s1").unwrap().unwrap();
        assert_eq!(l.base, "base");
        assert_eq!(l.root, vec!["s1/root/0"]);
        for bad in [
            r#"{"base":"base","root":["../etc"]}"#,
            r#"{"base":"s1"}"#,
            r#"{"base":"a/b"}"#,
            "not json",
        ] {
            std::fs::write(d.path().join("s1").join(LAYERS_FILE), bad).unwrap();
            assert!(read_layers(d.path(), "s1").is_err(), "{bad}");
        }
        assert_eq!(read_layers(d.path(), "../s1").unwrap(), None);
    }

    const MAP: IdMap = IdMap {
        base: 100000,
        count: 65536,
    };

    #[test]
    fn budget_says_what_limits_it() {
        let d = tempfile::tempdir().unwrap();
        let lim = |max_bytes, store_max_bytes| SnapshotLimits {
            max_bytes,
            store_max_bytes,
        };
        let b = snapshot_budget(d.path(), lim(1 << 20, 0)).unwrap();
        assert_eq!((b.limit, b.what.as_str()), (1 << 20, "its limit of 1 MiB"));
        let b = snapshot_budget(d.path(), lim(0, 0)).unwrap();
        assert!(b.what.contains("free disk space"), "{}", b.what);
        std::fs::create_dir(d.path().join("s1")).unwrap();
        std::fs::write(
            d.path().join("s1").join(LAYERS_FILE),
            r#"{"base":"base","hostIds":true,"bytes":3145728}"#,
        )
        .unwrap();
        let b = snapshot_budget(d.path(), lim(0, 5 << 20)).unwrap();
        assert_eq!(b.limit, 2 << 20, "{}", b.what);
        assert!(b.what.contains("snapshot store"), "{}", b.what);
        let e = snapshot_budget(d.path(), lim(0, 3 << 20)).unwrap_err();
        assert!(
            matches!(&e, RuntimeError::StorageFull(m) if m.contains("store is full")),
            "{e}"
        );
    }

    #[test]
    fn owners_stay_in_the_sandbox_range() {
        let host = Owners::Host(MAP);
        assert_eq!(host.id(100000), 100000);
        assert_eq!(host.id(101000), 101000);
        assert_eq!(host.id(0), 165534, "host root becomes the range's nobody");
        assert_eq!(host.id(165536), 165534);
        let legacy = Owners::Legacy(MAP);
        assert_eq!(legacy.id(0), 100000);
        assert_eq!(legacy.id(1000), 101000);
        assert_eq!(legacy.id(70000), 165534);
        assert_eq!(Owners::Keep.id(5), 5);
    }

    fn cap(revision: u32, effective: bool, root: Option<u32>) -> Vec<u8> {
        let mut v = (revision | u32::from(effective)).to_le_bytes().to_vec();
        v.extend_from_slice(&[0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        if let Some(r) = root {
            v.extend_from_slice(&r.to_le_bytes());
        }
        v
    }

    #[test]
    fn file_capabilities_never_become_host_capabilities() {
        let host = Owners::Host(MAP);
        // v2 (effective for host processes) becomes v3 for the sandbox's root, flags kept
        assert_eq!(
            host.capability(&cap(0x0200_0000, true, None)),
            Some(cap(0x0300_0000, true, Some(100000)))
        );
        // v3 of the sandbox's root is kept; a host-root v3 is moved out of host root's reach
        assert_eq!(
            host.capability(&cap(0x0300_0000, false, Some(100000))),
            Some(cap(0x0300_0000, false, Some(100000)))
        );
        assert_eq!(
            host.capability(&cap(0x0300_0000, true, Some(0))),
            Some(cap(0x0300_0000, true, Some(165534)))
        );
        // older layers stored the sandbox root id (0): moved to the range
        assert_eq!(
            Owners::Legacy(MAP).capability(&cap(0x0300_0000, true, Some(0))),
            Some(cap(0x0300_0000, true, Some(100000)))
        );
        // v1, truncated and unknown values are left out
        assert_eq!(host.capability(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(host.capability(&cap(0x0300_0000, true, Some(0))[..22]), None);
        assert_eq!(host.capability(&cap(0x0700_0000, true, None)), None);
        assert_eq!(host.capability(&[]), None);
    }

    /// A 1 TiB file with 8 KiB of data copies as 8 KiB, holes where they were; a budget smaller
    /// than the data stops the copy with `StorageFull`.
    #[test]
    fn sparse_files_stay_sparse_and_count_against_the_budget() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let f = std::fs::File::create(src.join("sparse")).unwrap();
        f.set_len(1 << 40).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 1 << 39).unwrap();
        f.sync_all().unwrap();
        let keep = CopyOpts {
            owners: Owners::Keep,
            link: false,
        };
        let mut budget = Budget::new(1 << 20);
        copy_tree(&src, &d.path().join("dst"), keep, &mut budget).unwrap();
        let out = std::fs::File::open(d.path().join("dst/sparse")).unwrap();
        let md = out.metadata().unwrap();
        assert_eq!(md.len(), 1 << 40);
        assert!(
            md.blocks() * 512 <= 1 << 20,
            "allocated {} bytes",
            md.blocks() * 512
        );
        let mut buf = [0u8; 6];
        out.read_exact_at(&mut buf[..4], 0).unwrap();
        assert_eq!(&buf[..4], b"head");
        out.read_exact_at(&mut buf, 1 << 39).unwrap();
        assert_eq!(&buf, b"middle");
        out.read_exact_at(&mut buf, 1 << 30).unwrap();
        assert_eq!(buf, [0; 6]);
        assert!(
            budget.used() >= 2 * BLOCK && budget.used() < 4 * BLOCK,
            "{}",
            budget.used()
        );

        std::fs::write(src.join("big"), vec![7u8; 64 << 10]).unwrap();
        let mut small = Budget::new(32 << 10);
        let e = copy_tree(&src, &d.path().join("dst2"), keep, &mut small).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StorageFull);
        let msg = e.to_string();
        assert!(
            msg.contains("/big") && !msg.contains(&*d.path().to_string_lossy()),
            "{msg}"
        );
    }

    /// Copies a tree with a symlink, a hard link, a fifo, user xattrs and times (unprivileged:
    /// owners kept).
    #[test]
    fn copy_keeps_structure_and_xattrs() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("dir/sub")).unwrap();
        std::fs::write(src.join("dir/f"), b"hello").unwrap();
        std::fs::hard_link(src.join("dir/f"), src.join("h")).unwrap();
        std::os::unix::fs::symlink("dir/f", src.join("l")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
        let c = cpath(&src.join("dir/sub")).unwrap();
        // SAFETY: valid C strings.
        let xattr_ok = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"user.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        } == 0;
        std::fs::set_permissions(
            src.join("dir/f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o751),
        )
        .unwrap();
        let dst = d.path().join("dst");
        let keep = CopyOpts {
            owners: Owners::Keep,
            link: false,
        };
        copy_tree(&src, &dst, keep, &mut Budget::new(u64::MAX)).unwrap();
        assert_eq!(std::fs::read(dst.join("h")).unwrap(), b"hello");
        let (a, b) = (
            std::fs::metadata(dst.join("dir/f")).unwrap(),
            std::fs::metadata(dst.join("h")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "hard link kept");
        assert_ne!(
            a.ino(),
            std::fs::metadata(src.join("h")).unwrap().ino(),
            "a copy, not a link"
        );
        assert_eq!(a.mode() & 0o7777, 0o751);
        assert_eq!(a.mtime(), std::fs::metadata(src.join("dir/f")).unwrap().mtime());
        assert_eq!(std::fs::read_link(dst.join("l")).unwrap(), Path::new("dir/f"));
        assert!(
            std::fs::symlink_metadata(dst.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        if xattr_ok {
            let c = cpath(&dst.join("dir/sub")).unwrap();
            let mut buf = [0u8; 4];
            // SAFETY: valid C strings and buffer.
            let n = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    c"user.overlay.opaque".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    4,
                )
            };
            assert_eq!(n, 1);
            assert_eq!(buf[0], b'y');
        }
        // linking mode: same inodes as the source
        let linked = d.path().join("linked");
        copy_tree(
            &src,
            &linked,
            CopyOpts {
                owners: Owners::Keep,
                link: true,
            },
            &mut Budget::new(u64::MAX),
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(linked.join("dir/f")).unwrap().ino(),
            std::fs::metadata(src.join("dir/f")).unwrap().ino()
        );
        // an existing destination is an error, not a merge
        assert!(copy_tree(&src, &dst, keep, &mut Budget::new(u64::MAX)).is_err());
    }
}
