//! Derived templates: a template plus one root layer made on the host from a staged tree
//! (the template build API's `COPY` step, `docs/templates.md`). No sandbox runs: the files of
//! the step are copied into the new layer with their owners moved into the sandbox range, and
//! the directories that only lead to them take the owner and mode the parent template shows
//! for them (an overlay directory's attributes are those of its topmost copy, so a new
//! `/home/user` owned by root would take the user's home away).

use super::names::valid_template;
use super::snapshot::{
    Budget, CopyOpts, LAYERS_FILE, Owners, TMP_PREFIX, TemplateLayers, copy_tree, is_image_layer,
};
use super::{NamespaceBackend, step};
use crate::RuntimeError;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The attributes a directory has in a stack of layers (top first): the topmost layer
/// holding the path decides; `None` if no layer has it or the topmost is not a directory.
/// Returns `(uid, gid, mode, whether the layer holds host ids)`.
fn attrs_in_layers(layers: &[(PathBuf, bool)], rel: &str) -> Option<(u32, u32, u32, bool)> {
    for (dir, host_ids) in layers {
        if let Ok(md) = std::fs::symlink_metadata(dir.join(rel)) {
            return md
                .file_type()
                .is_dir()
                .then(|| (md.uid(), md.gid(), md.mode() & 0o7777, *host_ids));
        }
    }
    None
}

impl NamespaceBackend {
    /// Make template `name`: template `parent` with one more root layer, a copy of `stage` (a
    /// tree laid out from `/`, holding sandbox ids). `ancestors` (paths relative to `/`) are
    /// the staged directories that only lead to the copied files: they get the owner and mode
    /// the parent shows for them. On any error nothing is left. Blocking.
    pub fn derive_template_blocking(
        &self,
        parent: &str,
        name: &str,
        stage: &Path,
        ancestors: &[String],
    ) -> Result<(), RuntimeError> {
        if !valid_template(name) {
            return Err(RuntimeError::InvalidSpec(format!("bad template name '{name}'")));
        }
        let cfg = &self.inner.cfg;
        let templates = cfg.data_dir.join("templates");
        let p = self.template_layers(parent)?;
        if p.root.len() + p.usr.len() >= 64 {
            return Err(RuntimeError::InvalidSpec(format!(
                "template '{parent}' has the most layers a template can stack (64)"
            )));
        }
        if !p.host_ids && !p.root.is_empty() {
            return Err(RuntimeError::InvalidSpec(format!(
                "template '{parent}' was stored by an older version; snapshot it first"
            )));
        }
        let final_dir = templates.join(name);
        if final_dir.exists() {
            return Err(RuntimeError::InvalidSpec(format!(
                "template '{name}' already exists"
            )));
        }
        let tmp = templates.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let idmap = cfg.idmap;
        let r = (|| -> Result<(), RuntimeError> {
            let io =
                |what: &'static str| move |e: std::io::Error| step("template layer", format!("{what}: {e}"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .map_err(io("creating the template dir"))?;
            std::fs::create_dir(tmp.join("root")).map_err(io("creating the template dir"))?;
            let layer = tmp.join("root/0");
            let mut budget = Budget::new(u64::MAX);
            copy_tree(
                stage,
                &layer,
                CopyOpts {
                    owners: Owners::Legacy(idmap),
                    link: false,
                },
                &mut budget,
            )
            .map_err(io("copying the files"))?;
            // the parent's view of the leading directories: its layers, then its base's root
            let mut stack: Vec<(PathBuf, bool)> = p
                .root
                .iter()
                .map(|l| (templates.join(l), p.host_ids && !is_image_layer(l)))
                .collect();
            stack.push((templates.join(&p.base).join("rootfs"), false));
            for a in ancestors {
                let rel = a.trim_start_matches('/');
                if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") {
                    continue;
                }
                let target = layer.join(rel);
                let Ok(md) = std::fs::symlink_metadata(&target) else {
                    continue;
                };
                if !md.is_dir() {
                    continue;
                }
                let Some((uid, gid, mode, host_layer)) = attrs_in_layers(&stack, rel) else {
                    continue;
                };
                // layers of the host range keep their ids; sandbox-id layers move into the range
                let to_host = |id: u32| {
                    if host_layer {
                        id
                    } else {
                        idmap.to_host(id).unwrap_or(idmap.base + 65534)
                    }
                };
                let (huid, hgid) = (to_host(uid), to_host(gid));
                std::os::unix::fs::lchown(&target, Some(huid), Some(hgid))
                    .map_err(io("setting the owner of a directory"))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                    .map_err(io("setting the mode of a directory"))?;
            }
            let mut root = vec![format!("{name}/root/0")];
            let mut usr = Vec::new();
            // the parent's own layers are hard-linked (layers are immutable), other templates'
            // layers stay shared, as snapshots do
            let own = format!("{parent}/");
            for (kind, list, dst) in [("root", &p.root, &mut root), ("usr", &p.usr, &mut usr)] {
                for l in list {
                    if l.starts_with(&own) {
                        let n = dst.len();
                        std::fs::create_dir_all(tmp.join(kind)).map_err(io("copying a parent layer"))?;
                        copy_tree(
                            &templates.join(l),
                            &tmp.join(kind).join(n.to_string()),
                            CopyOpts {
                                owners: Owners::Keep,
                                link: true,
                            },
                            &mut budget,
                        )
                        .map_err(io("copying a parent layer"))?;
                        dst.push(format!("{name}/{kind}/{n}"));
                    } else {
                        dst.push(l.clone());
                    }
                }
            }
            let manifest = TemplateLayers {
                base: p.base.clone(),
                root,
                usr,
                host_ids: true,
                bytes: budget.used(),
                whole_root: p.whole_root,
            };
            let json = serde_json::to_vec(&manifest).map_err(|e| step("template layer", e))?;
            std::fs::write(tmp.join(LAYERS_FILE), json).map_err(io("writing the manifest"))?;
            super::sandbox_dirs::rename_noreplace(&tmp, &final_dir).map_err(io("installing the template"))
        })();
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r
    }
}
