//! The command policy of a sandbox (`allowedCommands`, `docs/command-policy.md`), prepared by
//! its init inside the new root before the agent starts (`sandbox_init.rs`, step 8c):
//!
//! - the asked names are resolved on the sandbox's `PATH`, with what they need to start: bash
//!   and `id` (the SDKs run every command as `bash -l -c`, whose profile runs `id -u`), the
//!   `#!` interpreters of scripts and the ELF loader of programs (a loader only when the
//!   loader guard covers it, `loader_guard.rs`);
//! - every granted file is bound read-only onto itself, so no workload — root in its user
//!   namespace included — can rewrite it in place, rename over it or delete it (the mounts
//!   belong to the init's user namespace, out of the workload's reach);
//! - two Landlock rulesets that handle `EXECUTE`: the workload's (the files above) and the
//!   daemon's helpers' (`realpath`, `ps`, `chmod`, `kill`, which the session API runs for
//!   itself, and the loader). Rules bind inodes, so a file put at a granted path later is not
//!   granted.
//!
//! The agent inherits both ruleset fds and installs one in every process it starts, between
//! fork and exec (`sandboxd_envd::command_policy`). Landlock is driven with its raw syscalls
//! rather than the `landlock` crate because the restriction happens between fork and exec,
//! where the crate's allocating builder cannot run.

use sandboxd_protocol::agent::GUARDED_LOADERS;
use std::collections::BTreeSet;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `LANDLOCK_ACCESS_FS_EXECUTE` (`<linux/landlock.h>`).
const ACCESS_FS_EXECUTE: u64 = 1 << 0;
/// `LANDLOCK_RULE_PATH_BENEATH`.
const RULE_PATH_BENEATH: libc::c_int = 1;
/// Most names a policy may list (the daemon refuses more).
pub const MAX_COMMANDS: usize = 64;
/// How many `#!` interpreters deep a script chain is followed (the kernel stops at 4 too).
const MAX_SCRIPT_DEPTH: usize = 4;
/// The programs every policy grants: the SDKs run each command as `bash -l -c`, and the login
/// profile (`/etc/profile`) runs `id -u`. Neither can execute anything outside the policy.
pub const SDK_PROGRAMS: &[&str] = &["bash", "id"];
/// The programs the daemon runs in a session for itself (`sandboxd-daemon`, `sessions/`).
pub const HELPER_PROGRAMS: &[&str] = &["realpath", "ps", "chmod", "kill"];

/// `struct landlock_ruleset_attr` with only its first field: the kernel accepts shorter
/// versions of the struct (ABI 1).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the UAPI header).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The two rulesets of a sandbox with a command policy.
#[derive(Debug)]
pub struct PolicyRulesets {
    /// For every workload process.
    pub workload: OwnedFd,
    /// For the daemon's helper programs.
    pub helpers: OwnedFd,
}

/// In the sandbox's init, in its new root: resolve `asked` on `path_var`, bind every granted
/// file read-only onto itself and build both rulesets.
pub fn prepare_in_child(asked: &[String], path_var: &str) -> Result<PolicyRulesets, String> {
    let granted = resolve(asked, path_var)?;
    let guarded = guarded_loaders();
    let mut helpers = BTreeSet::new();
    for name in HELPER_PROGRAMS {
        // a template without one of them loses only that session API feature
        if let Some(p) = lookup(name, path_var) {
            grant(&p, path_var, &guarded, &mut helpers, 0)?;
        }
    }
    for file in granted.union(&helpers) {
        bind_read_only(file).map_err(|e| format!("binding {} read-only: {e}", file.display()))?;
    }
    Ok(PolicyRulesets {
        workload: build_ruleset(&granted).map_err(|e| e.to_string())?,
        helpers: build_ruleset(&helpers).map_err(|e| e.to_string())?,
    })
}

/// Bind `file` onto itself, read-only, keeping the flags the kernel locks in a user namespace
/// (`nosuid`, `nodev`, `noexec`, atime) as they are.
fn bind_read_only(file: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let st = nix::sys::statvfs::statvfs(file).map_err(io::Error::from)?;
    let kept = remount_flags(st.flags());
    // SAFETY: mount(2) with valid C strings and no data.
    unsafe {
        if libc::mount(
            c.as_ptr(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The mount flags of a bind remount that keep a file system's `statvfs` flags.
fn remount_flags(f: nix::sys::statvfs::FsFlags) -> libc::c_ulong {
    use nix::sys::statvfs::FsFlags;
    [
        (FsFlags::ST_NOSUID, libc::MS_NOSUID),
        (FsFlags::ST_NODEV, libc::MS_NODEV),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
        (FsFlags::ST_NOATIME, libc::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, libc::MS_RELATIME),
    ]
    .iter()
    .filter(|(st, _)| f.contains(*st))
    .fold(0, |acc, (_, ms)| acc | ms)
}

/// Put the calling process under `ruleset` (tests; the agent has its own copy of this one
/// syscall, run between fork and exec).
#[cfg(test)]
fn restrict(ruleset: RawFd) -> io::Result<()> {
    // SAFETY: a plain syscall on an open fd.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A Landlock ruleset that handles `EXECUTE` and grants it on exactly `granted`.
pub fn build_ruleset(granted: &BTreeSet<PathBuf>) -> io::Result<OwnedFd> {
    let attr = RulesetAttr {
        handled_access_fs: ACCESS_FS_EXECUTE,
    };
    // SAFETY: `attr` is a valid struct of the size passed; the kernel copies it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("Landlock is not available in this kernel ({e}); allowedCommands cannot be enforced"),
        ));
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    for path in granted {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let rule = PathBeneathAttr {
            allowed_access: ACCESS_FS_EXECUTE,
            parent_fd: file.as_raw_fd(),
        };
        // SAFETY: `rule` is a valid packed struct; both fds are open.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("rule for {}: {e}", path.display()),
            ));
        }
    }
    Ok(ruleset)
}

/// The files to grant `EXECUTE` on for `asked` (names looked up on `path_var`, or absolute
/// paths), with bash, the `#!` interpreters of scripts and the ELF loaders of programs, all
/// canonical. An asked name that is not an executable file is an error.
pub fn resolve(asked: &[String], path_var: &str) -> Result<BTreeSet<PathBuf>, String> {
    if asked.len() > MAX_COMMANDS {
        return Err(format!("at most {MAX_COMMANDS} allowed commands"));
    }
    let guarded = guarded_loaders();
    let mut granted = BTreeSet::new();
    for name in asked {
        let found = lookup(name, path_var).ok_or_else(|| {
            format!("allowed command '{name}' is not an executable file on this sandbox's PATH ({path_var})")
        })?;
        grant(&found, path_var, &guarded, &mut granted, 0)?;
    }
    // the SDKs run every command as `/bin/bash -l -c <cmd>`, whose login profile runs `id`
    for name in SDK_PROGRAMS {
        if let Some(p) = lookup(name, path_var) {
            grant(&p, path_var, &guarded, &mut granted, 0)?;
        }
    }
    Ok(granted)
}

/// The canonical paths of the loaders the loader guard covers that this root has.
fn guarded_loaders() -> Vec<PathBuf> {
    GUARDED_LOADERS
        .iter()
        .filter_map(|l| std::fs::canonicalize(l).ok())
        .collect()
}

/// `name` on `path_var` (or `name` itself when it has a `/`), if it is an executable file.
pub fn lookup(name: &str, path_var: &str) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = Path::new(name);
        return (p.is_absolute() && is_exe(p)).then(|| p.to_path_buf());
    }
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    path_var
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(name))
        .find(|p| is_exe(p))
}

fn grant(
    path: &Path,
    path_var: &str,
    guarded: &[PathBuf],
    granted: &mut BTreeSet<PathBuf>,
    depth: usize,
) -> Result<(), String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !granted.insert(real.clone()) {
        return Ok(());
    }
    let mut head = [0u8; 4096];
    let n = std::fs::File::open(&real)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(|e| format!("{}: {e}", real.display()))?;
    let head = &head[..n];
    if let Some(interp) = elf_interpreter(head) {
        // the kernel opens PT_INTERP with an execute check too; a loader is only granted when
        // the sandbox's loader guard covers it (else it could run any program directly)
        if let Ok(p) = std::fs::canonicalize(&interp) {
            if !guarded.contains(&p) {
                return Err(format!(
                    "{}: its ELF loader {interp} is not one sandboxd guards ({})",
                    real.display(),
                    GUARDED_LOADERS.join(", ")
                ));
            }
            granted.insert(p);
        }
    } else if let Some((interp, arg)) = shebang(head) {
        if depth >= MAX_SCRIPT_DEPTH {
            return Err(format!("{}: #! interpreters nested too deep", real.display()));
        }
        let interp_path = lookup(&interp, path_var).ok_or_else(|| {
            format!(
                "{}: its interpreter {interp} is not an executable file",
                real.display()
            )
        })?;
        grant(&interp_path, path_var, guarded, granted, depth + 1)?;
        // `#!/usr/bin/env node`: env then executes node from PATH
        if Path::new(&interp).file_name().is_some_and(|f| f == "env")
            && let Some(prog) = arg.filter(|a| !a.starts_with('-'))
            && let Some(p) = lookup(&prog, path_var)
        {
            grant(&p, path_var, guarded, granted, depth + 1)?;
        }
    }
    Ok(())
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A script's `#!` line: the interpreter and its first argument.
pub fn shebang(head: &[u8]) -> Option<(String, Option<String>)> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    let interp = words.next()?.to_string();
    let arg = words.next().map(str::to_string);
    Some((interp, arg))
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF file from its first bytes (`None` for
/// anything else, or when the path lies beyond `head`).
pub fn elf_interpreter(head: &[u8]) -> Option<String> {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| {
        Some(u16::from_le_bytes(
            head.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |o: usize| {
        Some(u32::from_le_bytes(
            head.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |o: usize| {
        Some(u64::from_le_bytes(
            head.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    if phentsize < 56 {
        return None;
    }
    for i in 0..phnum.min(64) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? == 3 {
            // PT_INTERP: p_offset at +8, p_filesz at +32
            let off = usize::try_from(u64_at(ph.checked_add(8)?)?).ok()?;
            let len = usize::try_from(u64_at(ph.checked_add(32)?)?).ok()?;
            let bytes = head.get(off..off.checked_add(len)?)?;
            let s = bytes.split(|b| *b == 0).next()?;
            return std::str::from_utf8(s).ok().map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines() {
        assert_eq!(
            shebang(b"#!/usr/bin/env node\nconsole.log(1)"),
            Some(("/usr/bin/env".into(), Some("node".into())))
        );
        assert_eq!(
            shebang(b"#! /bin/sh -e\n"),
            Some(("/bin/sh".into(), Some("-e".into())))
        );
        assert_eq!(shebang(b"#!/bin/bash"), Some(("/bin/bash".into(), None)));
        assert_eq!(shebang(b"\x7fELF"), None);
        assert_eq!(shebang(b"#!\n"), None);
    }

    #[test]
    fn elf_interpreter_of_a_dynamic_program() {
        let head = std::fs::read("/bin/ls").unwrap();
        let interp = elf_interpreter(&head[..4096.min(head.len())]).unwrap();
        assert!(interp.contains("ld-linux"), "{interp}");
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(elf_interpreter(&[0u8; 10]), None);
        // a header whose program headers point past the buffer
        let mut bad = head[..64].to_vec();
        bad[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_interpreter(&bad), None);
    }

    #[test]
    fn resolve_adds_bash_the_loader_and_script_interpreters() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("tool");
        std::fs::write(&script, "#!/usr/bin/env ls\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path_var = format!("{}:/usr/bin:/bin", dir.path().display());
        let g = resolve(&["tool".into(), "cat".into()], &path_var).unwrap();
        let has = |name: &str| g.iter().any(|p| p.file_name().is_some_and(|f| f == name));
        for n in ["tool", "cat", "bash", "env", "ls"] {
            assert!(has(n), "{n} missing from {g:?}");
        }
        assert!(
            g.iter().any(|p| p.to_string_lossy().contains("ld-linux")),
            "{g:?}"
        );
        assert!(!has("python3"));
    }

    #[test]
    fn resolve_refuses_what_is_not_an_executable_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "x").unwrap();
        let path_var = format!("{}:/usr/bin", dir.path().display());
        for bad in ["data", "no-such-program", "relative/ls", "..", "", "/tmp"] {
            assert!(resolve(&[bad.into()], &path_var).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_COMMANDS).map(|_| "ls".to_string()).collect();
        assert!(resolve(&many, "/usr/bin").is_err());
    }

    #[test]
    #[ignore = "kernel feature: needs Landlock; run with --run-ignored all (scripts/test.sh does, as root)"]
    fn a_ruleset_restricts_a_child_to_the_granted_programs() {
        let granted = resolve(&["true".into()], "/usr/bin:/bin").unwrap();
        let ruleset = build_ruleset(&granted).expect("a Landlock ruleset");
        let fd = ruleset.as_raw_fd();
        let run = |prog: &str| {
            let mut cmd = std::process::Command::new(prog);
            // SAFETY: prctl and one landlock syscall, both async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    restrict(fd)
                });
            }
            cmd.status()
        };
        assert!(run("true").unwrap().success());
        let e = run("false").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    }
}
