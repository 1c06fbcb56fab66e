//! File metadata as `user.e2b.*` extended attributes (`docs/contract.md` §6.2–6.3).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The xattr name prefix of file metadata.
pub const PREFIX: &str = "user.e2b.";

/// Either a path (following symlinks) or an open file.
#[derive(Clone, Copy)]
enum Target<'a> {
    Path(&'a CStr),
    Fd(BorrowedFd<'a>),
}

/// Call a size-probing xattr syscall until the buffer fits.
fn read_sized(mut call: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 20 {
            return Err(err);
        }
        let len = buf.len() * 4;
        buf.resize(len, 0);
    }
}

fn list(t: Target<'_>) -> io::Result<Vec<Vec<u8>>> {
    let raw = read_sized(|buf| match t {
        // SAFETY: `p` is a valid NUL-terminated string and `buf` is a writable buffer of the
        // given length; listxattr writes at most that many bytes.
        Target::Path(p) => unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
        // SAFETY: `fd` is an open descriptor borrowed for the call; `buf` as above.
        Target::Fd(fd) => unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) },
    })?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

fn get(t: Target<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    read_sized(|buf| match t {
        // SAFETY: `p` and `name` are valid NUL-terminated strings; `buf` is writable for its length.
        Target::Path(p) => unsafe {
            libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        },
        // SAFETY: `fd` is open for the call; `name` and `buf` as above.
        Target::Fd(fd) => unsafe {
            libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        },
    })
}

fn collect(t: Target<'_>) -> io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for name in list(t)? {
        let Some(key) = name.strip_prefix(PREFIX.as_bytes()) else {
            continue;
        };
        let (Ok(key), Ok(cname)) = (std::str::from_utf8(key), CString::new(name.clone())) else {
            continue;
        };
        let Ok(value) = get(t, &cname) else { continue };
        if let Ok(value) = String::from_utf8(value) {
            out.insert(key.to_string(), value);
        }
    }
    Ok(out)
}

/// The `user.e2b.*` attributes of `path` (symlinks followed), prefix removed. Names and values
/// that are not UTF-8, and any error (no xattr support, broken link), give no entries.
pub fn read_metadata(path: &Path) -> BTreeMap<String, String> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return BTreeMap::new();
    };
    collect(Target::Path(&c)).unwrap_or_default()
}

/// The `user.e2b.*` attributes of an open file.
pub fn read_metadata_fd(fd: BorrowedFd<'_>) -> BTreeMap<String, String> {
    collect(Target::Fd(fd)).unwrap_or_default()
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENOSYS))
}

/// Replace the metadata of an open file: remove every `user.e2b.*` attribute not in `meta`, then
/// set each key. Only touches the file when there is something to change, so an upload without
/// metadata to a file without metadata makes no xattr syscalls (and no watch events). A
/// filesystem without xattr support is ignored.
pub fn replace_metadata_fd(fd: BorrowedFd<'_>, meta: &BTreeMap<String, String>) -> io::Result<()> {
    let existing = match list(Target::Fd(fd)) {
        Ok(l) => l,
        Err(e) if unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in existing {
        let Some(key) = name.strip_prefix(PREFIX.as_bytes()) else {
            continue;
        };
        let keep = std::str::from_utf8(key).is_ok_and(|k| meta.contains_key(k));
        if keep {
            continue;
        }
        let Ok(cname) = CString::new(name) else { continue };
        // SAFETY: `fd` is open for the call and `cname` is NUL-terminated.
        let r = unsafe { libc::fremovexattr(fd.as_raw_fd(), cname.as_ptr()) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENODATA) {
                return Err(e);
            }
        }
    }
    for (k, v) in meta {
        let cname = CString::new(format!("{PREFIX}{k}"))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in metadata key"))?;
        // SAFETY: `fd` is open; `cname` is NUL-terminated; `v` is readable for `v.len()` bytes.
        let r = unsafe { libc::fsetxattr(fd.as_raw_fd(), cname.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if unsupported(&e) {
                return Ok(());
            }
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn replace_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = std::fs::File::create(&p).unwrap();
        let mut m = BTreeMap::new();
        m.insert("author".to_string(), "me".to_string());
        m.insert("k2".to_string(), "v 2".to_string());
        replace_metadata_fd(f.as_fd(), &m).unwrap();
        if read_metadata(&p).is_empty() {
            // The test filesystem has no user xattrs (for example an old tmpfs): nothing to check.
            return;
        }
        assert_eq!(read_metadata(&p), m);
        assert_eq!(read_metadata_fd(f.as_fd()), m);
        let mut m2 = BTreeMap::new();
        m2.insert("k2".to_string(), "new".to_string());
        replace_metadata_fd(f.as_fd(), &m2).unwrap();
        assert_eq!(read_metadata(&p), m2);
        replace_metadata_fd(f.as_fd(), &BTreeMap::new()).unwrap();
        assert!(read_metadata(&p).is_empty());
        assert!(read_metadata(&dir.path().join("missing")).is_empty());
    }
}
