//! `allowedCommands` at create (`docs/command-policy.md`): the list is checked here, the host
//! is asked whether it can enforce it, and the agent inside the sandbox resolves the names and
//! builds the kernel policy at boot (`sandboxd_envd::command_policy`).

use crate::error::DaemonError;

/// Most names a policy may list.
pub const MAX_COMMANDS: usize = 64;
/// Longest name or path.
const MAX_NAME: usize = 4096;

/// What the kernel offers that a command policy needs.
pub trait PolicySupport {
    /// Landlock's ABI version, `None` when absent or disabled.
    fn landlock_abi(&self) -> Option<i32>;
    /// The running kernel's release (`uname -r`).
    fn kernel_release(&self) -> String;
}

/// The running kernel.
pub struct HostKernel;

impl PolicySupport for HostKernel {
    fn landlock_abi(&self) -> Option<i32> {
        sandboxd_runtime::namespace::loader_guard::landlock_abi()
    }

    fn kernel_release(&self) -> String {
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// `(major, minor)` of a release string such as `6.18.0-1-amd64`.
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether this host can enforce a command policy: Landlock (its `EXECUTE` right, ABI 1) and
/// `binfmt_misc` instances per user namespace (Linux 6.7) for the loader guard. Refused with
/// 501 otherwise — never accepted and ignored.
pub fn check_support(host: &dyn PolicySupport) -> Result<(), DaemonError> {
    if host.landlock_abi().is_none() {
        return Err(DaemonError::NotSupportedHere(
            "allowedCommands needs Landlock, which this kernel does not have or has disabled \
             (see lsm= on the kernel command line)"
                .into(),
        ));
    }
    let release = host.kernel_release();
    match release_version(&release) {
        Some(v) if v >= (6, 7) => Ok(()),
        _ => Err(DaemonError::NotSupportedHere(format!(
            "allowedCommands needs Linux 6.7 or later (binfmt_misc per user namespace, for the \
             loader guard); this kernel is {release}"
        ))),
    }
}

/// Check a requested list: 1 to [`MAX_COMMANDS`] names, each a program name (no `/`) or an
/// absolute path, without NUL bytes or whitespace.
pub fn check_allowed_commands(list: &[String]) -> Result<(), DaemonError> {
    let bad = |m: String| Err(DaemonError::InvalidInput(m));
    if list.is_empty() {
        return bad("allowedCommands must name at least one program (leave it out to allow any)".into());
    }
    if list.len() > MAX_COMMANDS {
        return bad(format!(
            "allowedCommands has {} names; at most {MAX_COMMANDS}",
            list.len()
        ));
    }
    for name in list {
        if name.is_empty() || name.len() > MAX_NAME {
            return bad(format!("allowedCommands: a name must have 1 to {MAX_NAME} bytes"));
        }
        if name.chars().any(|c| c == '\0' || c.is_whitespace()) {
            return bad(format!(
                "allowedCommands: '{}' is not a program name: no spaces or NUL bytes (one program per entry, no arguments)",
                name.escape_debug()
            ));
        }
        if name.contains('/') && !name.starts_with('/') {
            return bad(format!(
                "allowedCommands: '{name}' must be a program name looked up on PATH or an absolute path"
            ));
        }
        if name == "." || name == ".." {
            return bad(format!("allowedCommands: '{name}' is not a program"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Kernel(Option<i32>, &'static str);
    impl PolicySupport for Kernel {
        fn landlock_abi(&self) -> Option<i32> {
            self.0
        }
        fn kernel_release(&self) -> String {
            self.1.into()
        }
    }

    #[test]
    fn support_needs_landlock_and_6_7() {
        assert!(check_support(&Kernel(Some(7), "6.18.0-1-amd64")).is_ok());
        assert!(check_support(&Kernel(Some(1), "6.7.0")).is_ok());
        for k in [
            Kernel(None, "6.18.0"),
            Kernel(Some(4), "6.6.30"),
            Kernel(Some(4), "5.15.0"),
            Kernel(Some(4), ""),
        ] {
            assert!(matches!(check_support(&k), Err(DaemonError::NotSupportedHere(_))));
        }
        assert_eq!(release_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(release_version("7.0"), Some((7, 0)));
        assert_eq!(release_version("x"), None);
    }

    #[test]
    fn lists_are_checked() {
        let ok = |l: &[&str]| check_allowed_commands(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&["node", "npm", "/usr/bin/pnpm"]).is_ok());
        for bad in [
            &[][..],
            &["ls -l"],
            &["bin/ls"],
            &[""],
            &["a\0b"],
            &[".."],
            &["\tls"],
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_COMMANDS).map(|i| format!("p{i}")).collect();
        assert!(check_allowed_commands(&many).is_err());
    }
}
