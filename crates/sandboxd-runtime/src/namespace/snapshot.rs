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

use super::{NamespaceBackend, step, valid_id, valid_template};
use crate::RuntimeError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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

/// How [`copy_tree`] treats files.
#[derive(Debug, Clone, Copy)]
pub struct CopyOpts {
    /// Subtract this id-map base from owners in `base..base+count` (others become 65534).
    /// `None` keeps owners.
    pub shift: Option<(u32, u32)>,
    /// Hard-link regular files instead of copying them (only for immutable sources).
    pub link: bool,
}

impl CopyOpts {
    fn id(&self, id: u32) -> u32 {
        match self.shift {
            None => id,
            Some((base, count)) if id >= base && id - base < count => id - base,
            Some(_) => 65534,
        }
    }
}

/// Copy the tree `src` into the new directory `dst`: regular files (contents, or hard links),
/// directories, symlinks, device nodes (overlay whiteouts), fifos and sockets, with modes,
/// owners, times, hard links inside the tree and extended attributes (`system.*` ACLs left out).
pub fn copy_tree(src: &Path, dst: &Path, opts: CopyOpts) -> io::Result<()> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    copy_entry(src, dst, &opts, &mut links)
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    opts: &CopyOpts,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let md = std::fs::symlink_metadata(src)?;
    let ft = md.file_type();
    let ctx = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what} {}: {e}", dst.display()));
    if ft.is_dir() {
        std::fs::create_dir(dst).map_err(|e| ctx(e, "creating"))?;
        let mut names: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            copy_entry(&e.path(), &dst.join(e.file_name()), opts, links)?;
        }
    } else if !ft.is_symlink() && md.nlink() > 1 && links.contains_key(&(md.dev(), md.ino())) {
        let first = &links[&(md.dev(), md.ino())];
        return std::fs::hard_link(first, dst).map_err(|e| ctx(e, "linking"));
    } else if ft.is_file() {
        if opts.link {
            std::fs::hard_link(src, dst).map_err(|e| ctx(e, "linking"))?;
            return Ok(());
        }
        std::fs::copy(src, dst).map_err(|e| ctx(e, "copying to"))?;
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src)?;
        std::os::unix::fs::symlink(&target, dst).map_err(|e| ctx(e, "creating symlink"))?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
        let c = cpath(dst)?;
        // SAFETY: valid C string; creates a node of the same type and device number.
        if unsafe { libc::mknod(c.as_ptr(), md.mode() as libc::mode_t, md.rdev() as libc::dev_t) } != 0 {
            return Err(ctx(io::Error::last_os_error(), "creating node"));
        }
    } else {
        return Err(io::Error::new(
            ErrorKind::Unsupported,
            format!("unknown file type at {}", src.display()),
        ));
    }
    if md.nlink() > 1 && !ft.is_dir() && !ft.is_symlink() {
        links.insert((md.dev(), md.ino()), dst.to_path_buf());
    }
    finish_attrs(src, dst, &md, opts).map_err(|e| ctx(e, "setting attributes of"))
}

/// Owner, xattrs, mode and times of a copied entry (in that order: chown clears set-id bits).
fn finish_attrs(src: &Path, dst: &Path, md: &std::fs::Metadata, opts: &CopyOpts) -> io::Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    let (uid, gid) = (opts.id(md.uid()), opts.id(md.gid()));
    // SAFETY: valid C string; does not follow symlinks.
    if unsafe { libc::lchown(d.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    copy_xattrs(&s, &d, opts)?;
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

fn copy_xattrs(s: &CString, d: &CString, opts: &CopyOpts) -> io::Result<()> {
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
        if name == b"security.capability" && val.len() == 24 {
            // v3 file capabilities carry the owning namespace's root id: shift it too.
            let root = u32::from_le_bytes([val[20], val[21], val[22], val[23]]);
            val[20..24].copy_from_slice(&opts.id(root).to_le_bytes());
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
    /// Blocking.
    pub fn snapshot_blocking(&self, id: &str, source_template: &str, name: &str) -> Result<(), RuntimeError> {
        if !valid_id(id) {
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
        let tmp = templates.join(format!(".tmp-snap-{}", unique()));
        let r = self.build_snapshot(id, &tmp, name, &parent, source_template);
        let r = r.and_then(|()| {
            super::rename_noreplace(&tmp, &final_dir)
                .map_err(|e| step("snapshot", format!("renaming to {}: {e}", final_dir.display())))
        });
        if r.is_err() {
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
    ) -> Result<(), RuntimeError> {
        let cfg = &self.inner.cfg;
        let io_err = |what: &str| {
            let what = what.to_string();
            move |e: io::Error| step("snapshot", format!("{what}: {e}"))
        };
        for d in ["", "root", "usr"] {
            std::fs::create_dir(tmp.join(d)).map_err(io_err("creating the snapshot dir"))?;
        }
        let (upper_root, upper_usr) = self.upper_dirs(id);
        if !upper_root.is_dir() || !upper_usr.is_dir() {
            return Err(RuntimeError::InvalidSpec(format!(
                "sandbox {id} has no writable layers"
            )));
        }
        let shift = CopyOpts {
            shift: Some((cfg.idmap.base, cfg.idmap.count)),
            link: false,
        };
        {
            let _frozen = freeze(self.inner.cgroups.layout(), &cfg.cgroup_root, id)?;
            copy_tree(&upper_root, &tmp.join("root/0"), shift).map_err(io_err("copying the root layer"))?;
            copy_tree(&upper_usr, &tmp.join("usr/0"), shift).map_err(io_err("copying the usr layer"))?;
        }
        // The parent's own layers: hard-linked copies (layers are immutable), so this template
        // does not depend on the parent's directory. Layers of other templates stay shared.
        let templates = cfg.data_dir.join("templates");
        let own = format!("{source_template}/");
        let link = CopyOpts {
            shift: None,
            link: true,
        };
        let mut out = TemplateLayers {
            base: parent.base.clone(),
            root: vec![format!("{name}/root/0")],
            usr: vec![format!("{name}/usr/0")],
        };
        for (kind, list, dst) in [
            ("root", &parent.root, &mut out.root),
            ("usr", &parent.usr, &mut out.usr),
        ] {
            for l in list {
                if l.starts_with(&own) {
                    let n = dst.len();
                    copy_tree(&templates.join(l), &tmp.join(kind).join(n.to_string()), link)
                        .map_err(io_err("linking a parent layer"))?;
                    dst.push(format!("{name}/{kind}/{n}"));
                } else {
                    dst.push(l.clone());
                }
            }
        }
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
        let t = super::move_to_trash(&templates.join(name), &self.inner.cfg.data_dir.join(".trash"))?;
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

    #[test]
    fn id_shift() {
        let o = CopyOpts {
            shift: Some((100000, 65536)),
            link: false,
        };
        assert_eq!(o.id(100000), 0);
        assert_eq!(o.id(101000), 1000);
        assert_eq!(o.id(0), 65534);
        assert_eq!(o.id(165536), 65534);
        let keep = CopyOpts {
            shift: None,
            link: false,
        };
        assert_eq!(keep.id(5), 5);
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
            shift: None,
            link: false,
        };
        copy_tree(&src, &dst, keep).unwrap();
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
                shift: None,
                link: true,
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(linked.join("dir/f")).unwrap().ino(),
            std::fs::metadata(src.join("dir/f")).unwrap().ino()
        );
        // an existing destination is an error, not a merge
        assert!(copy_tree(&src, &dst, keep).is_err());
    }
}
