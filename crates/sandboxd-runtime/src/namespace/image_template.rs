//! Image templates: a template whose root file system is an OCI image's layers
//! (`docs/templates.md`). Nothing of the host is mounted: no host `/usr`, no host `/etc`.
//!
//! Layout: a layered template (snapshot.rs, [`TemplateLayers`] with `wholeRoot`) over the
//! generated [`SCRATCH`] skeleton (only the mount points a sandbox needs), with the image's
//! layers (`_image-layers/<diff id>`, shared by every template of every image that has them)
//! and one small layer of the template's own on top, `top/`: `/etc/passwd` and `/etc/group` of
//! the image with the sandbox's `user` (uid 1000) added, `/home/user`, and the egress proxy's
//! CA in the image's trust stores ([`super::trust`]). The agent is the
//! statically linked sandboxd binary, exec'd by fd, so the image needs no libc and no shell.

use super::names::valid_template;
use super::snapshot::{IMAGE_LAYERS, LAYERS_FILE, TMP_PREFIX, TemplateLayers, valid_layer_path};
use super::template::{MARKER, USER_ID};
use super::{NamespaceBackend, step, trust};
use crate::RuntimeError;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The generated empty skeleton under every image template.
pub const SCRATCH: &str = "scratch";

/// Bump when the scratch skeleton changes.
const SCRATCH_VERSION: u32 = 1;

/// Largest `/etc/passwd` or `/etc/group` of an image that is read.
const MAX_ACCOUNT_FILE: u64 = 1 << 20;
/// Largest CA bundle of an image that is copied into the top layer with the CA appended.
const MAX_BUNDLE: u64 = 4 << 20;

fn io_step(what: &'static str) -> impl Fn(std::io::Error) -> RuntimeError {
    move |e| step("image template", format!("{what}: {e}"))
}

/// Make sure `<templates>/scratch` exists: the mount points of a sandbox and nothing else,
/// stored with sandbox ids (root) like `base`.
pub fn ensure_scratch(templates: &Path) -> Result<(), RuntimeError> {
    let dir = templates.join(SCRATCH);
    let want = format!("{{\"version\":{SCRATCH_VERSION},\"kind\":\"generated-scratch\"}}\n");
    if std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|s| s == want) {
        return Ok(());
    }
    let tmp = templates.join(format!("{TMP_PREFIX}scratch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let build = || -> std::io::Result<()> {
        let rootfs = tmp.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        for (d, mode) in [
            ("dev", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("tmp", 0o1777),
            ("run", 0o755),
            ("etc", 0o755),
            ("home", 0o755),
            ("root", 0o700),
        ] {
            let p = rootfs.join(d);
            std::fs::create_dir(&p)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        }
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(tmp.join(MARKER), &want)
    };
    if let Err(e) = build() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(step(
            "image template",
            format!("making the scratch skeleton: {e}"),
        ));
    }
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::rename(&tmp, &dir).map_err(io_step("installing the scratch skeleton"))
}

/// The path of unpacked image layer `diff_id` (hex) relative to the templates directory.
pub fn image_layer_path(diff_id: &str) -> String {
    format!("{IMAGE_LAYERS}/{diff_id}")
}

/// What an account file of the image says, read from the topmost layer that has it. `None`
/// when no layer has it, a layer deletes it, or an opaque `/etc` hides the lower ones.
fn image_file(templates: &Path, layers_top_first: &[String], rel: &str) -> Option<String> {
    use std::io::Read;
    for l in layers_top_first {
        let layer = templates.join(l);
        let p = layer.join(rel);
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            if !md.is_file() {
                return None;
            }
            let mut s = String::new();
            std::fs::File::open(&p)
                .ok()?
                .take(MAX_ACCOUNT_FILE)
                .read_to_string(&mut s)
                .ok()?;
            return Some(s);
        }
        let opaque = xattr_is_y(&layer.join("etc"), "user.overlay.opaque");
        if opaque {
            return None;
        }
    }
    None
}

fn xattr_is_y(p: &Path, name: &str) -> bool {
    let Ok(path) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

/// `passwd` and `group` of an image with the sandbox's accounts added: `root` (if missing)
/// and `user` (uid/gid 1000, home `/home/user`) unless the image has a `user` already.
pub fn account_files(passwd: Option<&str>, group: Option<&str>, shell: &str) -> (String, String) {
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split(':').next())
            .map(str::to_string)
            .collect()
    };
    let mut p = passwd.unwrap_or_default().to_string();
    let mut g = group.unwrap_or_default().to_string();
    for s in [&mut p, &mut g] {
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
    }
    let (pn, gn) = (names(&p), names(&g));
    if !pn.iter().any(|n| n == "root") {
        p.insert_str(0, &format!("root:x:0:0:root:/root:{shell}\n"));
    }
    if !gn.iter().any(|n| n == "root") {
        g.insert_str(0, "root:x:0:\n");
    }
    if !pn.iter().any(|n| n == "user") {
        p.push_str(&format!("user:x:{USER_ID}:{USER_ID}::/home/user:{shell}\n"));
    }
    if !gn.iter().any(|n| n == "user") {
        g.push_str(&format!("user:x:{USER_ID}:\n"));
    }
    (p, g)
}

impl NamespaceBackend {
    /// Make template `name` from image layers (paths relative to the templates directory, as
    /// [`image_layer_path`] gives them, bottom first). Fails if the template exists. Blocking.
    pub fn create_image_template_blocking(
        &self,
        name: &str,
        layers_bottom_first: &[String],
    ) -> Result<(), RuntimeError> {
        if !valid_template(name) || name == SCRATCH {
            return Err(RuntimeError::InvalidSpec(format!("bad template name '{name}'")));
        }
        if layers_bottom_first.len() > 60 {
            return Err(RuntimeError::InvalidSpec(format!(
                "an image of {} layers is more than the 60 a template can stack",
                layers_bottom_first.len()
            )));
        }
        if let Some(bad) = layers_bottom_first.iter().find(|l| !valid_layer_path(l)) {
            return Err(RuntimeError::InvalidSpec(format!("bad image layer path '{bad}'")));
        }
        let templates = self.inner.cfg.data_dir.join("templates");
        ensure_scratch(&templates)?;
        let final_dir = templates.join(name);
        if final_dir.exists() {
            return Err(RuntimeError::InvalidSpec(format!(
                "template '{name}' already exists"
            )));
        }
        let image_top_first: Vec<String> = layers_bottom_first.iter().rev().cloned().collect();
        let tmp = templates.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let r = self.write_image_template(&templates, &tmp, name, &image_top_first);
        let r = r.and_then(|()| {
            super::sandbox_dirs::rename_noreplace(&tmp, &final_dir)
                .map_err(|e| step("image template", format!("installing '{name}': {e}")))
        });
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r
    }

    fn write_image_template(
        &self,
        templates: &Path,
        tmp: &Path,
        name: &str,
        image_top_first: &[String],
    ) -> Result<(), RuntimeError> {
        let idmap = self.inner.cfg.idmap;
        let host = |id: u32| idmap.base + id;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(tmp)
            .map_err(io_step("creating the template dir"))?;
        let top = tmp.join("top");
        let has = |rel: &str| {
            image_top_first
                .iter()
                .any(|l| std::fs::symlink_metadata(templates.join(l).join(rel)).is_ok())
        };
        let shell = if has("bin/bash") || has("usr/bin/bash") {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let (passwd, group) = account_files(
            image_file(templates, image_top_first, "etc/passwd").as_deref(),
            image_file(templates, image_top_first, "etc/group").as_deref(),
            shell,
        );
        let mkdir = |p: &Path, mode: u32, owner: u32| -> Result<(), RuntimeError> {
            std::fs::create_dir(p).map_err(io_step("creating the top layer"))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(io_step("creating the top layer"))?;
            std::os::unix::fs::lchown(p, Some(host(owner)), Some(host(owner)))
                .map_err(io_step("creating the top layer"))
        };
        mkdir(&top, 0o755, 0)?;
        mkdir(&top.join("etc"), 0o755, 0)?;
        mkdir(&top.join("home"), 0o755, 0)?;
        mkdir(&top.join("home/user"), 0o750, USER_ID)?;
        for (file, text) in [("etc/passwd", &passwd), ("etc/group", &group)] {
            let p = top.join(file);
            std::fs::write(&p, text).map_err(io_step("writing the account files"))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                .map_err(io_step("writing the account files"))?;
            std::os::unix::fs::lchown(&p, Some(host(0)), Some(host(0)))
                .map_err(io_step("writing the account files"))?;
        }
        if let Some(pem) = &self.inner.cfg.egress_ca_pem {
            let layers: Vec<PathBuf> = image_top_first.iter().map(|l| templates.join(l)).collect();
            let files = trust_files(&layers, pem);
            for (rel, text) in &files {
                let mut dir = top.clone();
                for c in rel.parent().into_iter().flat_map(Path::components) {
                    dir.push(c);
                    if std::fs::symlink_metadata(&dir).is_err() {
                        mkdir(&dir, 0o755, 0)?;
                    }
                }
                let p = top.join(rel);
                std::fs::write(&p, text).map_err(io_step("writing the CA files"))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                    .map_err(io_step("writing the CA files"))?;
                std::os::unix::fs::lchown(&p, Some(host(0)), Some(host(0)))
                    .map_err(io_step("writing the CA files"))?;
            }
        }
        let manifest = TemplateLayers {
            base: SCRATCH.to_string(),
            root: std::iter::once(format!("{name}/top"))
                .chain(image_top_first.iter().cloned())
                .collect(),
            usr: Vec::new(),
            host_ids: true,
            bytes: 0,
            whole_root: true,
        };
        let json = serde_json::to_vec(&manifest).map_err(|e| step("image template", e))?;
        std::fs::write(tmp.join(LAYERS_FILE), json).map_err(io_step("writing the manifest"))
    }
}

/// The files an image template's top layer holds so its sandboxes trust the egress proxy's CA
/// `pem` (paths relative to the root): the certificate at [`trust::EGRESS_CA_PATH`], in
/// `/usr/local/share/ca-certificates` where the image has that directory (so a later
/// `update-ca-certificates` keeps it), and each system bundle of the image, resolved through its
/// links, with the certificate appended. An `/etc` that is not a directory gets nothing.
fn trust_files(layers_top_first: &[PathBuf], pem: &str) -> Vec<(PathBuf, String)> {
    use std::io::Read;
    let opaque = |p: &Path| xattr_is_y(p, "user.overlay.opaque");
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    let is_dir_or_absent = |rel: &str| {
        matches!(
            trust::image_entry(layers_top_first, Path::new(rel), &opaque),
            trust::ImageEntry::Dir | trust::ImageEntry::Missing
        )
    };
    if !is_dir_or_absent("etc") || !is_dir_or_absent("etc/sandboxd") {
        return out;
    }
    let cert = format!("{}\n", pem.trim());
    out.push((
        PathBuf::from(trust::EGRESS_CA_PATH.trim_start_matches('/')),
        cert.clone(),
    ));
    if trust::image_entry(
        layers_top_first,
        Path::new("usr/local/share/ca-certificates"),
        &opaque,
    ) == trust::ImageEntry::Dir
    {
        out.push((
            PathBuf::from("usr/local/share/ca-certificates/sandboxd-egress-ca.crt"),
            cert,
        ));
    }
    for rel in trust::BUNDLES {
        let Some((path, at, len)) = trust::resolve(layers_top_first, Path::new(rel), &opaque) else {
            continue;
        };
        if len > MAX_BUNDLE || out.iter().any(|(p, _)| *p == path) {
            continue;
        }
        let mut text = String::new();
        let read = std::fs::File::open(&at).and_then(|f| f.take(MAX_BUNDLE).read_to_string(&mut text));
        if read.is_ok() {
            out.push((path, trust::with_ca(&text, pem)));
        }
    }
    out
}

/// Bytes on disk of the layers template `name` stacks (its own, its images', other templates'
/// it shares), each file counted once; the skeleton under them and the host `/usr` are not
/// counted. Blocking: it walks the layers.
pub fn template_layers_bytes(templates: &Path, name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(Some(l)) = super::snapshot::read_layers(templates, name) else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack: Vec<std::path::PathBuf> = l.root.iter().chain(&l.usr).map(|x| templates.join(x)).collect();
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        total += md.blocks() * 512;
        if md.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

/// The image layers (diff ids) some template under `templates` stacks: those that must stay.
pub fn image_layers_in_use(templates: &Path) -> std::collections::BTreeSet<String> {
    let mut keep = std::collections::BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(templates) else {
        return keep;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(Some(l)) = super::snapshot::read_layers(templates, &name) {
            for layer in l.root.iter().chain(&l.usr) {
                if let Some(d) = layer.strip_prefix(IMAGE_LAYERS).and_then(|r| r.strip_prefix('/')) {
                    keep.insert(d.to_string());
                }
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_added_once() {
        let (p, g) = account_files(
            Some("root:x:0:0:root:/root:/bin/ash\nnobody:x:65534:65534::/:/sbin/nologin"),
            Some("root:x:0:\n"),
            "/bin/sh",
        );
        assert_eq!(
            p,
            "root:x:0:0:root:/root:/bin/ash\nnobody:x:65534:65534::/:/sbin/nologin\nuser:x:1000:1000::/home/user:/bin/sh\n"
        );
        assert_eq!(g, "root:x:0:\nuser:x:1000:\n");
        let (p2, g2) = account_files(Some(&p), Some(&g), "/bin/sh");
        assert_eq!((p2, g2), (p, g));
    }

    #[test]
    fn an_image_without_accounts_gets_root_and_user() {
        let (p, g) = account_files(None, None, "/bin/bash");
        assert_eq!(
            p,
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n"
        );
        assert_eq!(g, "root:x:0:\nuser:x:1000:\n");
    }

    #[test]
    fn account_files_come_from_the_topmost_layer() {
        let d = tempfile::tempdir().unwrap();
        for (l, text) in [("a", "top\n"), ("b", "lower\n")] {
            std::fs::create_dir_all(d.path().join(l).join("etc")).unwrap();
            if l == "b" || text == "top\n" {
                std::fs::write(d.path().join(l).join("etc/passwd"), text).unwrap();
            }
        }
        let layers = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            image_file(d.path(), &layers, "etc/passwd").as_deref(),
            Some("top\n")
        );
        assert_eq!(
            image_file(d.path(), &layers[1..], "etc/passwd").as_deref(),
            Some("lower\n")
        );
        assert_eq!(image_file(d.path(), &layers, "etc/group"), None);
    }

    #[test]
    fn image_layer_paths_are_valid_layer_paths() {
        let p = image_layer_path(&"ab".repeat(32));
        assert!(valid_layer_path(&p));
        assert!(super::super::snapshot::is_image_layer(&p));
        assert!(!super::super::snapshot::is_image_layer("_image-layersx/a"));
    }

    #[test]
    fn trust_files_follow_the_images_bundles() {
        let d = tempfile::tempdir().unwrap();
        let (top, low) = (d.path().join("top"), d.path().join("low"));
        // Debian-like: the bundle in the lower layer, a newer copy in the upper one, and a
        // local-certificates directory; /etc/ssl/cert.pem links to the bundle
        std::fs::create_dir_all(low.join("etc/ssl/certs")).unwrap();
        std::fs::create_dir_all(low.join("usr/local/share/ca-certificates")).unwrap();
        std::fs::write(low.join("etc/ssl/certs/ca-certificates.crt"), "OLD\n").unwrap();
        std::fs::create_dir_all(top.join("etc/ssl/certs")).unwrap();
        std::fs::write(top.join("etc/ssl/certs/ca-certificates.crt"), "NEW\n").unwrap();
        std::os::unix::fs::symlink("certs/ca-certificates.crt", low.join("etc/ssl/cert.pem")).unwrap();
        let files = trust_files(&[top.clone(), low.clone()], "PEM");
        let get = |p: &str| {
            files
                .iter()
                .find(|(r, _)| r == Path::new(p))
                .map(|(_, t)| t.as_str())
        };
        assert_eq!(get("etc/sandboxd/egress-ca.pem"), Some("PEM\n"));
        assert_eq!(
            get("usr/local/share/ca-certificates/sandboxd-egress-ca.crt"),
            Some("PEM\n")
        );
        let bundle = get("etc/ssl/certs/ca-certificates.crt").unwrap();
        assert!(
            bundle.starts_with("NEW\n") && bundle.ends_with("PEM\n"),
            "{bundle}"
        );
        // the link resolves to the same bundle: written once, the link left alone
        assert_eq!(files.len(), 3, "{files:?}");
        // an image without any bundle still gets the certificate file; an /etc that is a file
        // gets nothing
        let bare = d.path().join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        assert_eq!(trust_files(std::slice::from_ref(&bare), "PEM").len(), 1);
        std::fs::write(bare.join("etc"), "").unwrap();
        assert!(trust_files(std::slice::from_ref(&bare), "PEM").is_empty());
    }
}
