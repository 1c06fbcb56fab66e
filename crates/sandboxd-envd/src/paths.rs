//! Path resolution for every path-taking API (`docs/contract.md` §3).

use crate::users::UserInfo;

/// Errors resolving a path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("cannot expand user-specific home dir: {0}")]
    OtherUserHome(String),
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("path is deeper than {MAX_PATH_DEPTH} levels")]
    TooDeep,
}

/// Longest path an API call accepts (the kernel's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Most components of a path an API call accepts: bounds the work one request causes
/// (directories created, watches added for every recursive watcher).
pub const MAX_PATH_DEPTH: usize = 128;

/// Resolve `raw` for `user`: empty → default workdir or home, `~` → home, absolute as is
/// (not cleaned), relative → `<home>/<raw>` cleaned.
pub fn resolve(raw: &str, user: &UserInfo, default_workdir: Option<&str>) -> Result<String, PathError> {
    if raw.contains('\0') {
        return Err(PathError::Nul);
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let mut path = raw.to_string();
    if path.is_empty()
        && let Some(w) = default_workdir.filter(|w| !w.is_empty())
    {
        path = w.to_string();
    }
    if path == "~" {
        path = user.home.clone();
    } else if let Some(rest) = path.strip_prefix("~/") {
        path = format!("{}/{}", user.home, rest);
    } else if path.starts_with('~') {
        return Err(PathError::OtherUserHome(path));
    }
    let path = if path.starts_with('/') {
        path
    } else {
        clean(&format!("{}/{}", user.home, path))
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.split('/').filter(|c| !c.is_empty() && *c != ".").count() > MAX_PATH_DEPTH {
        return Err(PathError::TooDeep);
    }
    Ok(path)
}

/// Lexically clean an absolute path like Go's `filepath.Clean` (no `..` above `/`).
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserInfo {
        UserInfo {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
            groups: vec![1000],
        }
    }

    #[test]
    fn rules() {
        let u = user();
        assert_eq!(resolve("test.txt", &u, None).unwrap(), "/home/user/test.txt");
        assert_eq!(resolve("", &u, None).unwrap(), "/home/user");
        assert_eq!(resolve("", &u, Some("/work")).unwrap(), "/work");
        assert_eq!(resolve("~", &u, None).unwrap(), "/home/user");
        assert_eq!(resolve("~/a/b", &u, None).unwrap(), "/home/user/a/b");
        assert_eq!(resolve("/a/../b", &u, None).unwrap(), "/a/../b");
        assert_eq!(resolve("../../etc/shadow", &u, None).unwrap(), "/etc/shadow");
        assert!(matches!(
            resolve("~root/x", &u, None),
            Err(PathError::OtherUserHome(_))
        ));
        assert_eq!(resolve("a\0b", &u, None), Err(PathError::Nul));
    }

    #[test]
    fn length_and_depth_limits() {
        let u = user();
        assert_eq!(resolve(&"a".repeat(8192), &u, None), Err(PathError::TooLong));
        assert_eq!(
            resolve(&format!("/{}", "a".repeat(4200)), &u, None),
            Err(PathError::TooLong)
        );
        let deep = "d/".repeat(1200);
        assert_eq!(resolve(&deep, &u, None), Err(PathError::TooDeep));
        // home is two levels: 126 more fit
        assert!(resolve(&"d/".repeat(MAX_PATH_DEPTH - 2), &u, None).is_ok());
        assert_eq!(
            resolve(&"d/".repeat(MAX_PATH_DEPTH - 1), &u, None),
            Err(PathError::TooDeep)
        );
    }
}
