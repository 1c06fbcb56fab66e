//! Checks of what clients name in the session API: session ids, sizes, relative file paths,
//! environment variables, script types; and the process listing's parser.

use crate::error::DaemonError;
use std::collections::BTreeMap;

/// Longest session id.
pub const MAX_SESSION_ID: usize = 128;
/// Longest relative path.
const MAX_PATH: usize = 4096;
/// Longest path component.
const MAX_COMPONENT: usize = 255;

/// A session id: 1–128 of `[A-Za-z0-9_.-]`, not `.` or `..`.
pub fn validate_session_id(id: &str) -> Result<(), DaemonError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SESSION_ID
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DaemonError::InvalidInput(format!(
            "invalid session id '{}': use 1 to {MAX_SESSION_ID} letters, digits, '_', '.' or '-'",
            id.escape_debug()
        )))
    }
}

/// A size in MiB from a number (MiB) or a string with an optional unit: `50M`, `50MB`, `1G`,
/// `512K` (binary units; K rounds up to whole MiB).
pub fn parse_size_mb(v: &serde_json::Value) -> Result<u64, DaemonError> {
    let bad = || {
        DaemonError::InvalidInput(format!(
            "invalid size {v}: use a number of MiB or a string like \"50M\" or \"1G\""
        ))
    };
    let mb = match v {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(bad)?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            let upper = s.to_ascii_uppercase();
            let t = upper
                .strip_suffix("IB")
                .or_else(|| upper.strip_suffix('B'))
                .unwrap_or(&upper);
            let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
                Some((i, _)) => (&t[..i], t[i..].trim()),
                None => (t, ""),
            };
            let n: u64 = digits.parse().map_err(|_| bad())?;
            match unit {
                "" | "M" => n,
                "G" => n.checked_mul(1024).ok_or_else(bad)?,
                "K" => n.div_ceil(1024),
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    };
    if mb < 8 {
        return Err(DaemonError::InvalidInput(format!(
            "size {v} is too small: a session needs at least 8M"
        )));
    }
    Ok(mb)
}

/// A client's file name made canonical and kept inside the session's directory: relative,
/// no `..`, no NUL, bounded; `.` and empty components dropped. `""` is the directory itself.
/// (Symbolic links are checked inside the sandbox, where they resolve.)
pub fn relative_path(raw: &str) -> Result<String, DaemonError> {
    let bad =
        |why: &str| DaemonError::InvalidInput(format!("invalid file name '{}': {why}", raw.escape_debug()));
    if raw.len() > MAX_PATH {
        return Err(bad("too long"));
    }
    if raw.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if raw.starts_with('/') {
        return Err(bad(
            "absolute paths are not allowed; name files relative to the session",
        ));
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad("'..' is not allowed; files never leave the session")),
            c if c.len() > MAX_COMPONENT => return Err(bad("a path component is too long")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Environment variable names: non-empty, no `=` or NUL; values without NUL.
pub fn validate_env(env: &BTreeMap<String, String>) -> Result<(), DaemonError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(DaemonError::InvalidInput(format!(
                "invalid environment variable '{}'",
                k.escape_debug()
            )));
        }
    }
    Ok(())
}

/// An interpreter `execute_code` runs a file with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptType {
    Python,
    Bash,
    Sh,
    Node,
    Perl,
    R,
}

impl ScriptType {
    const ALL: [ScriptType; 6] = [
        ScriptType::Python,
        ScriptType::Bash,
        ScriptType::Sh,
        ScriptType::Node,
        ScriptType::Perl,
        ScriptType::R,
    ];

    /// From `script_type` (`python`, `bash`, `sh`, `node`/`javascript`/`js`, `perl`, `r`).
    pub fn from_name(name: &str) -> Result<Self, DaemonError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => ScriptType::Python,
            "bash" => ScriptType::Bash,
            "sh" | "shell" => ScriptType::Sh,
            "node" | "javascript" | "js" | "nodejs" => ScriptType::Node,
            "perl" => ScriptType::Perl,
            "r" | "rscript" => ScriptType::R,
            _ => {
                return Err(DaemonError::InvalidInput(format!(
                    "unknown script_type '{}': use one of python, bash, sh, node, perl, r",
                    name.escape_debug()
                )));
            }
        })
    }

    /// From a file name's extension.
    pub fn from_filename(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.extension().eq_ignore_ascii_case(&ext))
            .or(match ext.as_str() {
                "mjs" | "cjs" => Some(ScriptType::Node),
                "pl" => Some(ScriptType::Perl),
                _ => None,
            })
    }

    pub fn extension(self) -> &'static str {
        match self {
            ScriptType::Python => "py",
            ScriptType::Bash | ScriptType::Sh => "sh",
            ScriptType::Node => "js",
            ScriptType::Perl => "pl",
            ScriptType::R => "R",
        }
    }

    /// The interpreter, looked up on the sandbox's `PATH`.
    pub fn program(self) -> &'static str {
        match self {
            ScriptType::Python => "python3",
            ScriptType::Bash => "bash",
            ScriptType::Sh => "sh",
            ScriptType::Node => "node",
            ScriptType::Perl => "perl",
            ScriptType::R => "Rscript",
        }
    }
}

/// Parses `ps -e -o pid=,user:32=,etimes=,args=`, leaving out PID 1 (the agent), `own_pid` (the
/// listing itself) and the daemon's own programs (`sandboxd …`, for example the interpreter).
pub fn parse_ps(text: &str, own_pid: u32) -> Vec<super::SessionProcess> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(pid), Some(user), Some(etimes)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let command = it.collect::<Vec<_>>().join(" ");
        let program = command.split_whitespace().next().unwrap_or("");
        if pid == 1 || pid == own_pid || program == "sandboxd" || program.ends_with("/sandboxd") {
            continue;
        }
        out.push(super::SessionProcess {
            pid,
            user: user.to_string(),
            elapsed_secs: etimes.parse().unwrap_or(0),
            command,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn session_ids() {
        for ok in ["a", "user-123", "A.b_c", &"x".repeat(128)] {
            assert!(validate_session_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129), "a\0"] {
            assert!(validate_session_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mb(&json!(50)).unwrap(), 50);
        assert_eq!(parse_size_mb(&json!("50M")).unwrap(), 50);
        assert_eq!(parse_size_mb(&json!("50MB")).unwrap(), 50);
        assert_eq!(parse_size_mb(&json!("64MiB")).unwrap(), 64);
        assert_eq!(parse_size_mb(&json!("1G")).unwrap(), 1024);
        assert_eq!(parse_size_mb(&json!("10240K")).unwrap(), 10);
        assert_eq!(parse_size_mb(&json!(" 20 ")).unwrap(), 20);
        for bad in [
            json!("5M"),
            json!(-1),
            json!(1.5),
            json!("lots"),
            json!("5T"),
            json!(null),
            json!(""),
        ] {
            assert!(parse_size_mb(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path("a/./b//c.txt").unwrap(), "a/b/c.txt");
        assert_eq!(relative_path("").unwrap(), "");
        assert_eq!(relative_path("./").unwrap(), "");
        assert_eq!(relative_path("..foo").unwrap(), "..foo");
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "a\0b",
            &"a/".repeat(3000),
        ] {
            let e = relative_path(bad).unwrap_err();
            assert!(matches!(e, DaemonError::InvalidInput(_)), "{bad:?}");
        }
        assert!(relative_path(&"x".repeat(256)).is_err());
    }

    #[test]
    fn script_types() {
        assert_eq!(ScriptType::from_name("Python").unwrap(), ScriptType::Python);
        assert_eq!(ScriptType::from_name("javascript").unwrap().program(), "node");
        assert!(ScriptType::from_name("cobol").is_err());
        assert_eq!(ScriptType::from_filename("test.py"), Some(ScriptType::Python));
        assert_eq!(ScriptType::from_filename("x.mjs"), Some(ScriptType::Node));
        assert_eq!(ScriptType::from_filename("run.sh"), Some(ScriptType::Bash));
        assert_eq!(ScriptType::from_filename("noext"), None);
    }

    #[test]
    fn env_names() {
        let ok = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert!(validate_env(&ok).is_ok());
        for k in ["", "A=B", "A\0"] {
            assert!(validate_env(&BTreeMap::from([(k.to_string(), String::new())])).is_err());
        }
    }

    #[test]
    fn ps_listing() {
        let text = "    1 root                                    12 /proc/self/fd/3 agent\n   \
                    7 user                                     5 sleep 100\n  \
                    9 root                                     3 sandboxd interpreter\n  \
                    12 user                                     0 ps -e -o pid=\n";
        let ps = parse_ps(text, 12);
        assert_eq!(ps.len(), 1, "{ps:?}");
        assert_eq!(
            (ps[0].pid, ps[0].user.as_str(), ps[0].elapsed_secs),
            (7, "user", 5)
        );
        assert_eq!(ps[0].command, "sleep 100");
    }
}
