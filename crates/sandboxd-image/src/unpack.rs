//! Unpacking one layer (an untrusted tar, gzip, zstd or plain) into a directory that becomes a
//! read-only overlay layer.
//!
//! The rules, each against a way a layer could write outside its directory or smuggle in
//! something the host or the overlay would act on:
//! - paths are normalized (leading `/` and `.` dropped); `..`, NUL and over-long paths refuse
//!   the layer;
//! - nothing is created through a symlink: every parent of an entry must be a real directory
//!   of this layer (made by an earlier entry or implicitly); symlinks themselves are stored as
//!   they are, absolute or not, since they are resolved inside the sandbox;
//! - a hard link must name an earlier regular file of the same layer;
//! - device nodes refuse the layer (a sandbox gets its devices from the runtime); FIFOs are
//!   made (harmless);
//! - whiteouts become what overlayfs (mounted with `userxattr`) understands: `.wh.<name>` a
//!   character device 0:0, `.wh..wh..opq` the xattr `user.overlay.opaque=y`;
//! - of the PAX xattrs only `user.*` are kept, and never `user.overlay.*` (overlayfs would read
//!   them as redirects, opaque marks or metacopy data); `trusted.*` and `security.*` (file
//!   capabilities, SELinux labels) are dropped: they would mean something to the host kernel;
//! - modes (set-id bits included) and numeric owners are kept as the tar says: the layer is
//!   mounted through an idmapped view, so they are the sandbox's ids;
//! - the unpacked size and the number of entries are bounded.

use crate::ImageError;
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Most entries one layer may have.
pub const MAX_ENTRIES: u64 = 2_000_000;
/// Longest path in a layer.
const MAX_PATH: usize = 4096;
/// Cost of an entry that is not file data, against the size limit.
const ENTRY_COST: u64 = 512;

/// What unpacking a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 hex of the uncompressed tar (the layer's diff id).
    pub diff_id: String,
    /// Bytes of file data and entries written.
    pub size: u64,
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Opens a layer blob: gzip and zstd are recognized by their magic bytes, anything else is
/// read as a plain tar.
pub fn decompressed(mut file: std::fs::File) -> io::Result<Box<dyn Read + Send>> {
    use std::io::{Seek, SeekFrom};
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    let file = io::BufReader::new(file);
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::with_buffer(file)?)
    } else {
        Box::new(file)
    })
}

fn bad(what: impl std::fmt::Display) -> ImageError {
    ImageError::BadImage(what.to_string())
}

/// The normalized relative path of an entry name, or why it is refused.
pub fn normalize(raw: &[u8]) -> Result<Option<PathBuf>, String> {
    if raw.contains(&0) {
        return Err("a path with a NUL byte".into());
    }
    if raw.len() > MAX_PATH {
        return Err(format!("a path of {} bytes", raw.len()));
    }
    let mut out = PathBuf::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(format!(
                    "the path '{}' leaves the layer",
                    String::from_utf8_lossy(raw)
                ));
            }
            c => out.push(std::ffi::OsStr::from_bytes(c)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// The unpacker of one layer into `root` (an empty directory of ours).
struct Unpacker<'a> {
    root: &'a Path,
    limit: u64,
    used: u64,
    entries: u64,
    /// Directories whose mtime is set at the end (entries under them change it).
    dir_times: Vec<(PathBuf, i64)>,
}

impl Unpacker<'_> {
    fn charge(&mut self, bytes: u64) -> Result<(), ImageError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            return Err(ImageError::TooLarge(format!(
                "the layer unpacks to more than {} MiB",
                self.limit >> 20
            )));
        }
        Ok(())
    }

    /// Make sure every parent of `rel` is a real directory of this layer (creating missing
    /// ones, mode 0755, root), never following a symlink.
    fn parents(&mut self, rel: &Path) -> Result<(), ImageError> {
        let mut p = self.root.to_path_buf();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            p.push(c);
            match std::fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(bad(format!(
                        "'{}' goes through '{}', which is not a directory of the layer",
                        rel.display(),
                        p.strip_prefix(self.root).unwrap_or(&p).display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.charge(ENTRY_COST)?;
                    std::fs::create_dir(&p).map_err(|e| io_err(&p, e))?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                        .map_err(|e| io_err(&p, e))?;
                }
                Err(e) => return Err(io_err(&p, e)),
            }
        }
        Ok(())
    }

    /// Remove whatever is at `p` (a later entry of the same path replaces it; a directory
    /// replaced by a directory is kept and merged).
    fn clear(&self, p: &Path, keep_dir: bool) -> Result<(), ImageError> {
        match std::fs::symlink_metadata(p) {
            Ok(md) if md.is_dir() => {
                if !keep_dir {
                    std::fs::remove_dir_all(p).map_err(|e| io_err(p, e))?;
                }
            }
            Ok(_) => std::fs::remove_file(p).map_err(|e| io_err(p, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(p, e)),
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<(), ImageError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(ImageError::TooLarge(format!(
                "the layer has more than {MAX_ENTRIES} entries"
            )));
        }
        let kind = e.header().entry_type();
        let raw = e.path_bytes().into_owned();
        let Some(rel) = normalize(&raw).map_err(bad)? else {
            return Ok(()); // the layer's root itself
        };
        let name = rel.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        self.charge(ENTRY_COST)?;
        self.parents(&rel)?;
        let path = self.root.join(&rel);
        // whiteouts
        if name == b".wh..wh..opq" {
            let dir = path.parent().unwrap_or(self.root).to_path_buf();
            if dir != self.root {
                set_xattr(&dir, "user.overlay.opaque", b"y")?;
            }
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let target = path.with_file_name(std::ffi::OsStr::from_bytes(hidden));
            self.clear(&target, false)?;
            mknod_whiteout(&target)?;
            return Ok(());
        }
        let header = e.header().clone();
        let mode = header
            .mode()
            .map_err(|e| bad(format!("'{}': mode: {e}", rel.display())))?
            & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let xattrs = user_xattrs(&mut e)?;
        match kind {
            tar::EntryType::Directory => {
                self.clear(&path, true)?;
                if std::fs::symlink_metadata(&path).is_err() {
                    std::fs::create_dir(&path).map_err(|e| io_err(&path, e))?;
                }
                self.dir_times.push((path.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(&path, false)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                let size = e.header().size().unwrap_or(0);
                self.charge(size)?;
                let copied = io::copy(&mut (&mut e).take(size), &mut f).map_err(|x| io_err(&path, x))?;
                if copied != size {
                    return Err(bad(format!("'{}' is cut short", rel.display())));
                }
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| bad(format!("symlink '{}' has no target", rel.display())))?
                    .into_owned();
                if target.contains(&0) || target.is_empty() || target.len() > MAX_PATH {
                    return Err(bad(format!("symlink '{}' has a bad target", rel.display())));
                }
                self.clear(&path, false)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    .map_err(|e| io_err(&path, e))?;
                lchown(&path, uid, gid)?;
                set_times(&path, mtime)?;
                return Ok(());
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| bad(format!("hard link '{}' has no target", rel.display())))?
                    .into_owned();
                let Some(trel) = normalize(&target).map_err(bad)? else {
                    return Err(bad(format!("hard link '{}' names the layer root", rel.display())));
                };
                // the target must be a regular file reached through real directories
                self.parents(&trel)?;
                let tpath = self.root.join(&trel);
                match std::fs::symlink_metadata(&tpath) {
                    Ok(md) if md.is_file() => {}
                    _ => {
                        return Err(bad(format!(
                            "hard link '{}' names '{}', which is not an earlier file of the layer",
                            rel.display(),
                            trel.display()
                        )));
                    }
                }
                if tpath != path {
                    self.clear(&path, false)?;
                    std::fs::hard_link(&tpath, &path).map_err(|e| io_err(&path, e))?;
                }
                return Ok(());
            }
            tar::EntryType::Fifo => {
                self.clear(&path, false)?;
                let c = cstr(&path)?;
                // SAFETY: a valid C string; mkfifo creates one FIFO.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(io_err(&path, io::Error::last_os_error()));
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(bad(format!(
                    "the layer holds a device node '{}': images may not bring devices",
                    rel.display()
                )));
            }
            other => {
                return Err(bad(format!(
                    "'{}' has an entry type this unpacker does not know ({other:?})",
                    rel.display()
                )));
            }
        }
        // owner first: chown clears set-id bits, the mode then sets them
        lchown(&path, uid, gid)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_err(&path, e))?;
        for (k, v) in xattrs {
            set_xattr(&path, &k, &v)?;
        }
        if kind != tar::EntryType::Directory {
            set_times(&path, mtime)?;
        }
        Ok(())
    }
}

/// The `user.*` xattrs of an entry's PAX records, without `user.overlay.*`.
fn user_xattrs<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let mut out = Vec::new();
    let Ok(Some(exts)) = e.pax_extensions() else {
        return Ok(out);
    };
    for ext in exts.flatten() {
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if name.starts_with("user.") && !name.starts_with("user.overlay.") && name.len() < 256 {
            out.push((name.to_string(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

fn io_err(p: &Path, e: io::Error) -> ImageError {
    ImageError::Io(format!("{}: {e}", p.display()))
}

fn cstr(p: &Path) -> Result<CString, ImageError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| bad("a path with a NUL byte"))
}

fn lchown(p: &Path, uid: u32, gid: u32) -> Result<(), ImageError> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| io_err(p, e))
}

fn set_times(p: &Path, mtime: i64) -> Result<(), ImageError> {
    let c = cstr(p)?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: a valid C string and two timespecs; AT_SYMLINK_NOFOLLOW sets the link's own.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io_err(p, io::Error::last_os_error()));
    }
    Ok(())
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<(), ImageError> {
    let c = cstr(p)?;
    let n = CString::new(name).map_err(|_| bad("an xattr name with a NUL byte"))?;
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 {
        return Err(io_err(p, io::Error::last_os_error()));
    }
    Ok(())
}

/// An overlayfs whiteout: a character device 0:0.
fn mknod_whiteout(p: &Path) -> Result<(), ImageError> {
    let c = cstr(p)?;
    // SAFETY: a valid C string; creates one device node of number 0:0 (which no driver has).
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
    if r != 0 {
        return Err(io_err(p, io::Error::last_os_error()));
    }
    Ok(())
}

/// Unpacks the layer read from `reader` into `root` (an empty directory), within `limit`
/// bytes. Blocking.
pub fn unpack_layer(reader: Box<dyn Read + Send>, root: &Path, limit: u64) -> Result<Unpacked, ImageError> {
    let mut hashing = HashingReader {
        inner: reader,
        hash: Sha256::new(),
    };
    let mut u = Unpacker {
        root,
        limit,
        used: 0,
        entries: 0,
        dir_times: Vec::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for e in entries {
            let e = e.map_err(|e| bad(format!("reading the layer: {e}")))?;
            u.entry(e)?;
        }
    }
    // the diff id covers the whole stream, padding included
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| bad(format!("reading the layer: {e}")))?;
    for (p, t) in u.dir_times.iter().rev() {
        set_times(p, *t)?;
    }
    Ok(Unpacked {
        diff_id: hex::encode(hashing.hash.finalize()),
        size: u.used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_entry(name: &[u8], kind: tar::EntryType, data: &[u8], link: Option<&[u8]>) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        {
            let b = h.as_old_mut();
            b.name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                b.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut t: Vec<u8> = entries.concat();
        t.extend_from_slice(&[0u8; 1024]);
        t
    }

    fn unpack(t: Vec<u8>, limit: u64) -> (tempfile::TempDir, Result<Unpacked, ImageError>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("layer")).unwrap();
        let r = unpack_layer(Box::new(io::Cursor::new(t)), &d.path().join("layer"), limit);
        (d, r)
    }

    fn only_layer_written(d: &tempfile::TempDir) {
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("layer")],
            "nothing outside the layer"
        );
    }

    #[test]
    #[ignore = "privileged: unpacking sets the tar's owners (root)"]
    fn names_are_normalized_and_escapes_refused() {
        assert_eq!(
            normalize(b"/etc/./passwd").unwrap(),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(normalize(b"./").unwrap(), None);
        assert!(normalize(b"a/../../x").is_err());
        assert!(normalize(b"..").is_err());
        let (d, r) = unpack(
            tar_of(&[raw_entry(b"../evil", tar::EntryType::Regular, b"x", None)]),
            1 << 20,
        );
        assert!(matches!(r, Err(ImageError::BadImage(_))), "{r:?}");
        only_layer_written(&d);
        // an absolute path lands inside the layer
        let (d, r) = unpack(
            tar_of(&[raw_entry(b"/abs", tar::EntryType::Regular, b"x", None)]),
            1 << 20,
        );
        r.unwrap();
        assert_eq!(std::fs::read(d.path().join("layer/abs")).unwrap(), b"x");
    }

    #[test]
    #[ignore = "privileged: unpacking sets the tar's owners (root)"]
    fn nothing_is_written_through_a_symlink() {
        let out = tempfile::tempdir().unwrap();
        let target = out.path().to_str().unwrap().as_bytes().to_vec();
        let t = tar_of(&[
            raw_entry(b"link", tar::EntryType::Symlink, b"", Some(&target)),
            raw_entry(b"link/pwned", tar::EntryType::Regular, b"x", None),
        ]);
        let (d, r) = unpack(t, 1 << 20);
        assert!(matches!(r, Err(ImageError::BadImage(_))), "{r:?}");
        assert!(!out.path().join("pwned").exists());
        // the symlink itself is kept as it was
        assert_eq!(
            std::fs::read_link(d.path().join("layer/link")).unwrap(),
            out.path()
        );
        only_layer_written(&d);
    }

    #[test]
    #[ignore = "privileged: unpacking sets the tar's owners (root)"]
    fn hard_links_stay_inside_the_layer() {
        let t = tar_of(&[raw_entry(b"h", tar::EntryType::Link, b"", Some(b"/etc/passwd"))]);
        let (_d, r) = unpack(t, 1 << 20);
        assert!(matches!(r, Err(ImageError::BadImage(_))), "{r:?}");
        let t = tar_of(&[
            raw_entry(b"s", tar::EntryType::Symlink, b"", Some(b"/etc/shadow")),
            raw_entry(b"h", tar::EntryType::Link, b"", Some(b"s")),
        ]);
        let (_d, r) = unpack(t, 1 << 20);
        assert!(
            matches!(r, Err(ImageError::BadImage(_))),
            "a link to a symlink: {r:?}"
        );
        let t = tar_of(&[
            raw_entry(b"a", tar::EntryType::Regular, b"data", None),
            raw_entry(b"b", tar::EntryType::Link, b"", Some(b"a")),
        ]);
        let (d, r) = unpack(t, 1 << 20);
        r.unwrap();
        assert_eq!(std::fs::read(d.path().join("layer/b")).unwrap(), b"data");
    }

    #[test]
    #[ignore = "privileged: unpacking sets the tar's owners (root)"]
    fn devices_are_refused() {
        let t = tar_of(&[raw_entry(b"dev/sda", tar::EntryType::Block, b"", None)]);
        let (_d, r) = unpack(t, 1 << 20);
        assert!(matches!(r, Err(ImageError::BadImage(m)) if m.contains("device")));
    }

    #[test]
    #[ignore = "privileged: unpacking sets the tar's owners (root)"]
    fn sizes_are_bounded() {
        let t = tar_of(&[raw_entry(b"big", tar::EntryType::Regular, &[7u8; 8192], None)]);
        let (_d, r) = unpack(t, 4096);
        assert!(matches!(r, Err(ImageError::TooLarge(_))), "{r:?}");
    }

    #[test]
    #[ignore = "privileged: unpacking sets the tar's owners (root)"]
    fn later_entries_replace_earlier_ones_and_the_diff_id_is_the_tar_hash() {
        let t = tar_of(&[
            raw_entry(b"f", tar::EntryType::Regular, b"one", None),
            raw_entry(b"f", tar::EntryType::Regular, b"two", None),
        ]);
        let want = hex::encode(Sha256::digest(&t));
        let (d, r) = unpack(t, 1 << 20);
        assert_eq!(r.unwrap().diff_id, want);
        assert_eq!(std::fs::read(d.path().join("layer/f")).unwrap(), b"two");
    }

    #[test]
    #[ignore = "privileged: unpacking sets the tar's owners (root)"]
    fn overlay_xattrs_are_dropped() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("SCHILY.xattr.user.overlay.redirect", b"/etc".as_slice()),
            ("SCHILY.xattr.user.keep", b"yes".as_slice()),
            ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02".as_slice()),
        ])
        .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let (d, r) = unpack(t, 1 << 20);
        r.unwrap();
        let p = d.path().join("layer/f");
        let get = |name: &str| -> Option<Vec<u8>> {
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            let n = CString::new(name).unwrap();
            let mut buf = [0u8; 64];
            // SAFETY: valid C strings and a buffer of its length.
            let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            (r >= 0).then(|| buf[..r as usize].to_vec())
        };
        assert_eq!(get("user.overlay.redirect"), None);
        assert_eq!(get("security.capability"), None);
        // user.* xattrs need a file system that has them (tmpfs has since 6.6, ext4 always)
        if let Some(v) = get("user.keep") {
            assert_eq!(v, b"yes");
        }
    }

    #[test]
    #[ignore = "privileged: whiteouts are device nodes (root)"]
    fn whiteouts_and_opaque_dirs_become_overlay_marks() {
        let t = tar_of(&[
            raw_entry(b"etc/", tar::EntryType::Directory, b"", None),
            raw_entry(b"etc/.wh.passwd", tar::EntryType::Regular, b"", None),
            raw_entry(b"var/cache/.wh..wh..opq", tar::EntryType::Regular, b"", None),
            raw_entry(b"var/cache/kept", tar::EntryType::Regular, b"k", None),
        ]);
        let (d, r) = unpack(t, 1 << 20);
        r.unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let wh = std::fs::symlink_metadata(d.path().join("layer/etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        let c = CString::new(d.path().join("layer/var/cache").as_os_str().as_bytes()).unwrap();
        let mut buf = [0u8; 4];
        // SAFETY: valid C strings and a buffer of its length.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                c"user.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(&buf[..n.max(0) as usize], b"y");
        assert_eq!(
            std::fs::read(d.path().join("layer/var/cache/kept")).unwrap(),
            b"k"
        );
        assert!(!d.path().join("layer/var/cache/.wh..wh..opq").exists());
    }
}
