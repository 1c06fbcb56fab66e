//! Users inside the sandbox, read from the sandbox's own `/etc/passwd` and `/etc/group`.

use std::path::Path;

/// A resolved user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary group ids (including the primary gid).
    pub groups: Vec<u32>,
}

/// Errors looking up users.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user '{0}' not found")]
    NotFound(String),
    #[error("cannot read {0}: {1}")]
    Read(String, String),
}

/// Look a user up by name in `<root>/etc/passwd` (root is `/` inside a sandbox).
pub fn lookup_in(root: &Path, name: &str) -> Result<UserInfo, UserError> {
    let passwd_path = root.join("etc/passwd");
    let passwd = std::fs::read_to_string(&passwd_path)
        .map_err(|e| UserError::Read(passwd_path.display().to_string(), e.to_string()))?;
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    parse_user(&passwd, &group, name).ok_or_else(|| UserError::NotFound(name.to_string()))
}

/// Look a user up by name in the sandbox's `/etc/passwd`.
pub fn lookup(name: &str) -> Result<UserInfo, UserError> {
    lookup_in(Path::new("/"), name)
}

/// Name of the user with this uid, or the number as a string.
pub fn uid_name(uid: u32) -> String {
    name_by_id("/etc/passwd", uid)
}

/// Name of the group with this gid, or the number as a string.
pub fn gid_name(gid: u32) -> String {
    name_by_id("/etc/group", gid)
}

fn name_by_id(file: &str, id: u32) -> String {
    if let Ok(text) = std::fs::read_to_string(file) {
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 3 && f[2].parse::<u32>().ok() == Some(id) {
                return f[0].to_string();
            }
        }
    }
    id.to_string()
}

/// Parse the `passwd` and `group` texts for `name`.
pub fn parse_user(passwd: &str, group: &str, name: &str) -> Option<UserInfo> {
    let line = passwd.lines().find(|l| l.split(':').next() == Some(name))?;
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 {
        return None;
    }
    let uid = f[2].parse().ok()?;
    let gid = f[3].parse().ok()?;
    let mut groups = vec![gid];
    for gl in group.lines() {
        let g: Vec<&str> = gl.split(':').collect();
        if g.len() >= 4
            && g[3].split(',').any(|m| m == name)
            && let Ok(id) = g[2].parse::<u32>()
            && !groups.contains(&id)
        {
            groups.push(id);
        }
    }
    Some(UserInfo {
        name: name.to_string(),
        uid,
        gid,
        home: f[5].to_string(),
        shell: f[6].to_string(),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:user\nuser:x:1000:\n";

    #[test]
    fn parses_user_and_groups() {
        let u = parse_user(PASSWD, GROUP, "user").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/user"));
        assert_eq!(u.groups, vec![1000, 27]);
        assert!(parse_user(PASSWD, GROUP, "nobody").is_none());
        assert!(parse_user(PASSWD, GROUP, "use").is_none());
    }
}
