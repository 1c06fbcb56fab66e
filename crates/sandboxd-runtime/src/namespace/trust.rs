//! The egress proxy's CA in templates' trust stores (`docs/network.md`, "Header rules"): the
//! certificate alone at [`EGRESS_CA_PATH`] (for `NODE_EXTRA_CA_CERTS`, which the agent sets when
//! the file exists), and appended to each system bundle the template has, so OpenSSL, GnuTLS,
//! curl, Python's `ssl`, Debian's `pip` and `git` trust the certificates it mints.
//!
//! For the generated `base` the files are written into its `/etc`; for an image template into
//! its own top layer, as copies of the image's bundles with the certificate appended (the image's
//! layers stay untouched and shared).

use crate::RuntimeError;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

pub use sandboxd_protocol::agent::EGRESS_CA_PATH;

/// System CA bundles by distribution, relative to the root: Debian/Ubuntu/Alpine, Fedora/RHEL,
/// Alpine/BSD-style, openSUSE.
pub const BUNDLES: &[&str] = &[
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
    "etc/ssl/cert.pem",
    "etc/ssl/ca-bundle.pem",
];

/// Largest bundle that is copied (Mozilla's is about 220 KiB).
const MAX_BUNDLE: u64 = 4 << 20;

/// A short stable fingerprint of `pem` (FNV-1a 64), to notice a changed CA in markers.
pub fn fingerprint(pem: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in pem.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// `bundle` with `pem` appended on a line of its own, unless it already holds it.
pub fn with_ca(bundle: &str, pem: &str) -> String {
    if bundle.contains(pem.trim()) {
        return bundle.to_string();
    }
    let mut out = bundle.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# sandboxd egress CA (header rules on HTTPS)\n");
    out.push_str(pem.trim());
    out.push('\n');
    out
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> RuntimeError {
    move |e| RuntimeError::Step {
        step: "template",
        message: format!("{what}: {e}"),
    }
}

fn write_file(p: &Path, text: &str) -> Result<(), RuntimeError> {
    std::fs::write(p, text).map_err(io("writing a CA file"))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).map_err(io("writing a CA file"))
}

/// Installs the CA in a root file system being generated (`root`, whose `etc` is a plain
/// directory the generator owns): [`EGRESS_CA_PATH`], and appended to each regular bundle
/// file of [`BUNDLES`] that exists (symbolic links are left alone: they point at one of the
/// others or into `/usr`).
pub fn install_in_root(root: &Path, pem: &str) -> Result<(), RuntimeError> {
    let own = root.join(EGRESS_CA_PATH.trim_start_matches('/'));
    if let Some(dir) = own.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating /etc/sandboxd"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io("creating /etc/sandboxd"))?;
    }
    write_file(&own, &format!("{}\n", pem.trim()))?;
    for rel in BUNDLES {
        let p = root.join(rel);
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !md.is_file() || md.len() > MAX_BUNDLE {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(io("reading a CA bundle"))?;
        write_file(&p, &with_ca(&text, pem))?;
    }
    Ok(())
}

/// One entry of an image as its topmost layer holding the exact path shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageEntry {
    /// A directory.
    Dir,
    /// A regular file of this many bytes, in this layer's directory.
    File(PathBuf, u64),
    /// A symbolic link to this target.
    Link(PathBuf),
    /// Absent, deleted (a whiteout) or hidden by an opaque directory above, or anything else.
    Missing,
}

/// How `rel` appears in the image whose layer directories are `layers_top_first` (each a
/// directory tree as unpacked; overlay whiteouts are character devices, opaque directories carry
/// `user.overlay.opaque`). Intermediate symbolic links are not followed: see [`resolve`].
pub fn image_entry(layers_top_first: &[PathBuf], rel: &Path, opaque: &dyn Fn(&Path) -> bool) -> ImageEntry {
    for layer in layers_top_first {
        let p = layer.join(rel);
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            let ft = md.file_type();
            return if ft.is_dir() {
                ImageEntry::Dir
            } else if ft.is_file() {
                ImageEntry::File(p, md.len())
            } else if ft.is_symlink() {
                std::fs::read_link(&p).map_or(ImageEntry::Missing, ImageEntry::Link)
            } else {
                ImageEntry::Missing
            };
        }
        // an opaque ancestor in this layer hides every layer below
        let mut anc = rel.parent();
        while let Some(a) = anc.filter(|a| !a.as_os_str().is_empty()) {
            if opaque(&layer.join(a)) {
                return ImageEntry::Missing;
            }
            anc = a.parent();
        }
    }
    ImageEntry::Missing
}

/// `rel` with its symbolic links (in any component) resolved inside the image, at most 16 of
/// them; the path of a regular file and where its bytes are, or `None` (missing, a loop, or a
/// component that is not a directory).
pub fn resolve(
    layers_top_first: &[PathBuf],
    rel: &Path,
    opaque: &dyn Fn(&Path) -> bool,
) -> Option<(PathBuf, PathBuf, u64)> {
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut pending, rel);
    pending.reverse();
    let mut done = PathBuf::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let next = done.join(&c);
        match image_entry(layers_top_first, &next, opaque) {
            ImageEntry::Dir if !pending.is_empty() => done = next,
            ImageEntry::File(at, len) if pending.is_empty() => return Some((next, at, len)),
            ImageEntry::Link(target) => {
                links += 1;
                if links > 16 {
                    return None;
                }
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                let mut more = Vec::new();
                push_components(&mut more, &target);
                more.reverse();
                pending.extend(more);
            }
            _ => return None,
        }
    }
    None
}

fn push_components(out: &mut Vec<std::ffi::OsString>, p: &Path) {
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::ParentDir => out.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_ca_is_appended_once() {
        let once = with_ca("A\n-----END CERTIFICATE-----", PEM);
        assert!(once.starts_with("A\n-----END CERTIFICATE-----\n# sandboxd"));
        assert!(once.ends_with(PEM));
        assert_eq!(with_ca(&once, PEM), once);
        assert_eq!(with_ca("", PEM).matches("BEGIN").count(), 1);
        assert_ne!(fingerprint(PEM), fingerprint("other"));
        assert_eq!(fingerprint(PEM).len(), 16);
    }

    #[test]
    fn a_generated_root_gets_the_file_and_its_bundles_appended() {
        let d = tempfile::tempdir().unwrap();
        let certs = d.path().join("etc/ssl/certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca-certificates.crt"), "MOZILLA\n").unwrap();
        symlink("certs/ca-certificates.crt", d.path().join("etc/ssl/cert.pem")).unwrap();
        install_in_root(d.path(), PEM).unwrap();
        let own = std::fs::read_to_string(d.path().join("etc/sandboxd/egress-ca.pem")).unwrap();
        assert_eq!(own, PEM);
        let bundle = std::fs::read_to_string(certs.join("ca-certificates.crt")).unwrap();
        assert!(bundle.starts_with("MOZILLA\n") && bundle.ends_with(PEM));
        // the link is still a link
        assert!(
            std::fs::symlink_metadata(d.path().join("etc/ssl/cert.pem"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn bundles_are_found_through_links_across_layers() {
        let d = tempfile::tempdir().unwrap();
        let (top, low) = (d.path().join("top"), d.path().join("low"));
        // RHEL-style: the bundle path is a relative link into another directory of a lower layer
        std::fs::create_dir_all(low.join("etc/pki/tls/certs")).unwrap();
        std::fs::create_dir_all(low.join("etc/pki/ca-trust/extracted/pem")).unwrap();
        std::fs::write(
            low.join("etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"),
            "RH\n",
        )
        .unwrap();
        symlink(
            "../../ca-trust/extracted/pem/tls-ca-bundle.pem",
            low.join("etc/pki/tls/certs/ca-bundle.crt"),
        )
        .unwrap();
        // the top layer replaces /etc/ssl with an absolute link to /etc/pki/tls
        std::fs::create_dir_all(top.join("etc")).unwrap();
        symlink("/etc/pki/tls", top.join("etc/ssl")).unwrap();
        let layers = vec![top.clone(), low.clone()];
        let never = |_: &Path| false;
        let (path, at, len) = resolve(&layers, Path::new("etc/pki/tls/certs/ca-bundle.crt"), &never).unwrap();
        assert_eq!(
            path,
            Path::new("etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem")
        );
        assert_eq!(at, low.join("etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"));
        assert_eq!(len, 3);
        // through the top layer's link: /etc/ssl/certs/ca-bundle.crt is the same file
        let (p2, _, _) = resolve(&layers, Path::new("etc/ssl/certs/ca-bundle.crt"), &never).unwrap();
        assert_eq!(p2, path);
        // missing and looping paths
        assert!(resolve(&layers, Path::new("etc/ssl/cert.pem"), &never).is_none());
        symlink("loop", top.join("etc/loop")).unwrap();
        assert!(resolve(&layers, Path::new("etc/loop"), &never).is_none());
        // an opaque /etc in the top layer hides the lower one
        let opaque_etc = |p: &Path| p == top.join("etc");
        assert!(resolve(&layers, Path::new("etc/pki/tls/certs/ca-bundle.crt"), &opaque_etc).is_none());
    }
}
