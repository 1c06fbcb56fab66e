//! A `COPY` step: the uploaded files (a tar the SDK made of the paths `src` matches, relative
//! to its file context) are unpacked with the image unpacker's rules (no escapes, no devices),
//! the ones `src` names are laid out at `dest` in a staging tree owned by the step's user, and
//! the runtime stacks that tree as a new layer over the parent (`derive_template`).
//!
//! Placement follows Docker's `COPY`: a directory's contents go into `dest`; a file goes to
//! `dest`, or into it when `dest` ends with `/` or several paths match.

use super::requests::{FILES_DIR, MAX_UPLOAD_BYTES};
use super::spec::{StepContext, StepSpec, parse_mode};
use crate::daemon::Daemon;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The sandbox ids of a step's user: `root`, `user` or a number.
fn user_ids(user: &str) -> Result<(u32, u32), String> {
    match user {
        "" | "user" => Ok((1000, 1000)),
        "root" => Ok((0, 0)),
        u => match u.split_once(':') {
            Some((a, b)) => match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) => Ok((a, b)),
                _ => Err(format!("COPY as '{u}': use root, user, a uid or uid:gid")),
            },
            None => u
                .parse()
                .map(|id| (id, id))
                .map_err(|_| format!("COPY as '{u}': use root, user, a uid or uid:gid")),
        },
    }
}

/// Whether `name` matches the shell pattern `pat` (`*`, `?`; no `/` inside a component).
fn component_matches(pat: &[u8], name: &[u8]) -> bool {
    match (pat.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            component_matches(&pat[1..], name) || (!name.is_empty() && component_matches(pat, &name[1..]))
        }
        (Some(b'?'), Some(_)) => component_matches(&pat[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => component_matches(&pat[1..], &name[1..]),
        _ => false,
    }
}

/// Whether relative path `path` matches `pattern` (components; `**` matches any number).
fn path_matches(pattern: &[&str], path: &[&str]) -> bool {
    match (pattern.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            path_matches(&pattern[1..], path) || (!path.is_empty() && path_matches(pattern, &path[1..]))
        }
        (Some(p), Some(n)) => {
            component_matches(p.as_bytes(), n.as_bytes()) && path_matches(&pattern[1..], &path[1..])
        }
        _ => false,
    }
}

/// Every path under `root` (relative), parents first.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let r = rel.join(&n);
        out.push(r.clone());
        if std::fs::symlink_metadata(root.join(&r))?.is_dir() {
            walk(root, &r, out)?;
        }
    }
    Ok(())
}

/// Copies `src` (a file, symlink or directory's contents) to `dst`, owned by `ids`, with
/// `mode` on everything but symlinks when given.
fn copy_into(
    src: &Path,
    dst: &Path,
    ids: (u32, u32),
    mode: Option<u32>,
    contents: bool,
) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(src)?;
    let set = |p: &Path, m: u32| -> std::io::Result<()> {
        std::os::unix::fs::lchown(p, Some(ids.0), Some(ids.1))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode.unwrap_or(m)))
    };
    if md.is_dir() {
        if !contents {
            match std::fs::symlink_metadata(dst) {
                Ok(d) if d.is_dir() => {}
                Ok(_) => {
                    std::fs::remove_file(dst)?;
                    std::fs::create_dir(dst)?;
                }
                Err(_) => std::fs::create_dir(dst)?,
            }
            set(dst, md.mode() & 0o7777)?;
        }
        for e in std::fs::read_dir(src)?.flatten() {
            copy_into(&e.path(), &dst.join(e.file_name()), ids, mode, false)?;
        }
        return Ok(());
    }
    if std::fs::symlink_metadata(dst).is_ok_and(|d| d.is_dir()) {
        std::fs::remove_dir_all(dst)?;
    } else {
        let _ = std::fs::remove_file(dst);
    }
    if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
        return std::os::unix::fs::lchown(dst, Some(ids.0), Some(ids.1));
    }
    if md.is_file() {
        std::fs::copy(src, dst)?;
        return set(dst, md.mode() & 0o7777);
    }
    Ok(()) // whiteouts and FIFOs of the upload are not copied
}

/// Lays out the matched files of `ctx_dir` at `dest` under `stage`; returns the directories
/// leading to them (relative to `/`), which take the parent template's attributes.
fn stage_files(
    ctx_dir: &Path,
    src: &str,
    dest: &str,
    stage: &Path,
    ids: (u32, u32),
    mode: Option<u32>,
) -> Result<Vec<String>, String> {
    let src = src.trim_start_matches("./").trim_end_matches('/');
    let pattern: Vec<&str> = src.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if pattern.is_empty() || pattern.contains(&"..") {
        return Err(format!(
            "COPY source '{src}' must be a relative path inside the file context"
        ));
    }
    let dest_parts: Vec<&str> = dest.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if dest_parts.contains(&"..") {
        return Err(format!("COPY destination '{dest}' may not contain '..'"));
    }
    let mut all = Vec::new();
    walk(ctx_dir, Path::new(""), &mut all).map_err(|e| format!("reading the uploaded files: {e}"))?;
    let matches: Vec<PathBuf> = all
        .into_iter()
        .filter(|p| {
            let comps: Vec<&str> = p.iter().filter_map(|c| c.to_str()).collect();
            path_matches(&pattern, &comps)
        })
        .collect();
    // a directory that matches brings its contents; entries under it are not matches of their own
    let matches: Vec<PathBuf> = matches
        .iter()
        .filter(|p| !matches.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();
    if matches.is_empty() {
        return Err(format!("COPY source '{src}' matched none of the uploaded files"));
    }
    let globbed = src.contains(['*', '?']);
    let into_dir = dest.ends_with('/') || matches.len() > 1 || globbed;
    let dest_rel: PathBuf = dest_parts.iter().collect();
    // the leading directories, owned by the user unless the parent has them
    let mut leading: Vec<String> = Vec::new();
    let mut p = PathBuf::new();
    let dirs_needed = if into_dir || matches.iter().any(|m| ctx_dir.join(m).is_dir()) {
        dest_parts.len()
    } else {
        dest_parts.len().saturating_sub(1)
    };
    for c in &dest_parts[..dirs_needed] {
        p.push(c);
        let d = stage.join(&p);
        if !d.exists() {
            std::fs::create_dir(&d).map_err(|e| format!("staging: {e}"))?;
            std::os::unix::fs::lchown(&d, Some(ids.0), Some(ids.1)).map_err(|e| format!("staging: {e}"))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("staging: {e}"))?;
        }
        leading.push(p.to_string_lossy().into_owned());
    }
    for m in &matches {
        let from = ctx_dir.join(m);
        let is_dir = std::fs::symlink_metadata(&from)
            .map_err(|e| format!("staging: {e}"))?
            .is_dir();
        let to = if is_dir || !into_dir {
            stage.join(&dest_rel)
        } else {
            stage.join(&dest_rel).join(m.file_name().unwrap_or_default())
        };
        if to == stage && !is_dir {
            return Err(format!("COPY of file '{}' to '/' needs a file name", m.display()));
        }
        copy_into(&from, &to, ids, mode, is_dir).map_err(|e| format!("staging '{}': {e}", m.display()))?;
    }
    Ok(leading)
}

impl Daemon {
    /// A `COPY` step: its uploaded files over template `parent` as template `name`.
    pub(super) async fn copy_step(
        &self,
        parent: &str,
        name: &str,
        step: &StepSpec,
        ctx: &StepContext,
    ) -> Result<(), String> {
        let data = self.config.builds.data_dir.clone();
        let hash = step.files_hash.clone().unwrap_or_default();
        let archive = data.join(FILES_DIR).join(&hash);
        if !archive.is_file() {
            return Err(format!(
                "the files of this COPY step (hash {hash}) were never uploaded"
            ));
        }
        let src = step.args[0].clone();
        let dest = {
            let d = &step.args[1];
            if d.starts_with('/') {
                d.clone()
            } else {
                let base = ctx.workdir.clone().unwrap_or_else(|| "/home/user".into());
                format!("{}/{d}", base.trim_end_matches('/'))
            }
        };
        let user = step
            .args
            .get(2)
            .filter(|u| !u.is_empty())
            .cloned()
            .unwrap_or_else(|| ctx.user.clone());
        let ids = user_ids(&user)?;
        let mode = match step.args.get(3).filter(|m| !m.is_empty()) {
            Some(m) => Some(parse_mode(m)?),
            None => None,
        };
        let work = data
            .join(FILES_DIR)
            .join(format!(".tmp-copy-{}", crate::ids::new_token()));
        let (ctx_dir, stage) = (work.join("context"), work.join("stage"));
        let prepared = {
            let (ctx_dir, stage, work) = (ctx_dir.clone(), stage.clone(), work.clone());
            tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
                for d in [&work, &ctx_dir, &stage] {
                    std::fs::create_dir(d).map_err(|e| format!("staging: {e}"))?;
                }
                std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("staging: {e}"))?;
                let f =
                    std::fs::File::open(&archive).map_err(|e| format!("reading the uploaded files: {e}"))?;
                let reader = sandboxd_image::unpack::decompressed(f)
                    .map_err(|e| format!("reading the uploaded files: {e}"))?;
                sandboxd_image::unpack::unpack_layer(reader, &ctx_dir, MAX_UPLOAD_BYTES.saturating_mul(4))
                    .map_err(|e| format!("the uploaded files: {e}"))?;
                stage_files(&ctx_dir, &src, &dest, &stage, ids, mode)
            })
            .await
            .map_err(|e| format!("staging task: {e}"))?
        };
        let r = match prepared {
            Ok(leading) => self
                .backend
                .derive_template(parent, name, &stage, &leading)
                .await
                // the same step of a concurrent build made it meanwhile
                .or_else(|e| {
                    if self.backend.has_template(name) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| format!("saving the step's files: {e}")),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_dir_all(&work).await;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let m = |p: &str, path: &str| {
            path_matches(
                &p.split('/').collect::<Vec<_>>(),
                &path.split('/').collect::<Vec<_>>(),
            )
        };
        assert!(m("*.txt", "a.txt"));
        assert!(!m("*.txt", "dir/a.txt"));
        assert!(m("dir/*.txt", "dir/a.txt"));
        assert!(m("**/*.py", "x/y/z.py"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("app", "app"));
    }

    #[test]
    fn users() {
        assert_eq!(user_ids("root").unwrap(), (0, 0));
        assert_eq!(user_ids("").unwrap(), (1000, 1000));
        assert_eq!(user_ids("1001:50").unwrap(), (1001, 50));
        assert!(user_ids("postgres").is_err());
    }

    #[test]
    #[ignore = "privileged: staging sets owners (root)"]
    fn files_land_where_docker_puts_them() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(ctx.join("app/sub")).unwrap();
        std::fs::write(ctx.join("app/main.py"), "print(1)").unwrap();
        std::fs::write(ctx.join("app/sub/x"), "x").unwrap();
        std::fs::write(ctx.join("a.txt"), "a").unwrap();
        std::fs::write(ctx.join("b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("main.py", ctx.join("app/link")).unwrap();
        let stage = |name: &str, src: &str, dest: &str| {
            let s = d.path().join(name);
            std::fs::create_dir(&s).unwrap();
            let lead = stage_files(&ctx, src, dest, &s, (1000, 1000), None).unwrap();
            (s, lead)
        };
        let (s, lead) = stage("s1", "app", "/home/user/app");
        assert_eq!(
            std::fs::read(s.join("home/user/app/main.py")).unwrap(),
            b"print(1)"
        );
        assert_eq!(
            std::fs::read_link(s.join("home/user/app/link")).unwrap(),
            Path::new("main.py")
        );
        assert!(s.join("home/user/app/sub/x").is_file());
        assert_eq!(lead, vec!["home", "home/user", "home/user/app"]);
        assert_eq!(
            std::fs::metadata(s.join("home/user/app/main.py")).unwrap().uid(),
            1000
        );
        let (s, lead) = stage("s2", "a.txt", "/etc/config.txt");
        assert_eq!(std::fs::read(s.join("etc/config.txt")).unwrap(), b"a");
        assert_eq!(lead, vec!["etc"]);
        let (s, _) = stage("s3", "*.txt", "/data");
        assert!(s.join("data/a.txt").is_file() && s.join("data/b.txt").is_file());
        let (s, _) = stage("s4", "a.txt", "/opt/");
        assert!(s.join("opt/a.txt").is_file());
        let s5 = d.path().join("s5");
        std::fs::create_dir(&s5).unwrap();
        assert!(stage_files(&ctx, "../x", "/x", &s5, (0, 0), None).is_err());
        assert!(stage_files(&ctx, "nope", "/x", &s5, (0, 0), None).is_err());
        let s6 = d.path().join("s6");
        std::fs::create_dir(&s6).unwrap();
        stage_files(&ctx, "a.txt", "/bin/tool", &s6, (0, 0), Some(0o755)).unwrap();
        assert_eq!(
            std::fs::metadata(s6.join("bin/tool")).unwrap().mode() & 0o7777,
            0o755
        );
    }
}
