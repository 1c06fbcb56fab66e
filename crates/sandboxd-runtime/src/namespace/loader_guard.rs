//! The loader guard of a sandbox with a command policy (`docs/command-policy.md`).
//!
//! Landlock's `EXECUTE` right has to be granted on the ELF loader (`ld-linux`) of every allowed
//! dynamic program, and a loader executed directly (`ld-linux /usr/bin/anything`) maps and runs
//! any program without an `execve` of it. The guard is a private `binfmt_misc` instance of the
//! sandbox's user namespace with one entry per loader in the sandbox's root: its magic is the
//! loader's first 64 bytes (its whole ELF header) and its interpreter does not exist, so a
//! direct `execve` of the loader — or of a copy, or a hard link — fails with `ENOENT`, while
//! programs that merely name it in `PT_INTERP` still start (the kernel loads `PT_INTERP` itself,
//! not through binfmt handlers).
//!
//! The instance is a detached mount (`fsopen` + `fsmount`, never attached to a path): it is in
//! no mount table the workload could see or unmount, and it lives exactly as long as its fd,
//! which the agent keeps for the sandbox's life (`AgentConfig::loader_guard_fd`). Its entries
//! apply to the workload's user namespace too (a child of the one that owns the instance).
//! Created by the sandbox's init before its seccomp filter, which denies `fsopen` and `mount`.

use sandboxd_protocol::agent::GUARDED_LOADERS;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Bytes of a loader matched (its ELF header).
const MAGIC_LEN: usize = 64;
/// The interpreter of every entry: absent, so matching executions fail with `ENOENT`.
const REFUSING_INTERPRETER: &str = "/nonexistent/sandboxd-refuses-direct-loader-execution";

/// `FSOPEN_CLOEXEC`, `FSCONFIG_CMD_CREATE` and `FSMOUNT_CLOEXEC` (`<linux/mount.h>`).
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// `LANDLOCK_CREATE_RULESET_VERSION` (`<linux/landlock.h>`).
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;

/// The Landlock ABI version of the running kernel, `None` when Landlock is absent or disabled
/// (the agent builds the command policy's ruleset with it, `sandboxd_envd::command_policy`).
pub fn landlock_abi() -> Option<i32> {
    // SAFETY: the version query takes no attribute pointer (NULL, size 0).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v as i32)
}

/// The `register` line of entry `name` matching `magic` at offset 0.
pub fn register_line(name: &str, magic: &[u8]) -> String {
    let mut escaped = String::with_capacity(magic.len() * 4);
    for b in magic {
        escaped.push_str(&format!("\\x{b:02x}"));
    }
    format!(":{name}:M:0:{escaped}::{REFUSING_INTERPRETER}:")
}

/// The first [`MAGIC_LEN`] bytes of each loader present in the current root, without
/// duplicates (`/lib64/...` is often a link to the same file as another name).
fn loader_headers() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for path in GUARDED_LOADERS {
        let Ok(bytes) = std::fs::read(path) else { continue };
        if bytes.len() < MAGIC_LEN || &bytes[..4] != b"\x7fELF" {
            continue;
        }
        let head = bytes[..MAGIC_LEN].to_vec();
        if !out.contains(&head) {
            out.push(head);
        }
    }
    out
}

/// Create the instance and register an entry per loader of the current root; the returned fd
/// keeps it alive.
pub fn install() -> io::Result<OwnedFd> {
    // SAFETY: fsopen with a valid C string; returns a new fd or -1.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"binfmt_misc".as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("binfmt_misc in the sandbox's user namespace (Linux 6.7 or later): {e}"),
        ));
    }
    // SAFETY: the fd was just returned to us and is owned by nothing else.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    if unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsmount of a created context; returns a new fd or -1.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if mnt < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
    for (i, head) in loader_headers().iter().enumerate() {
        let line = register_line(&format!("sandboxd-loader-{i}"), head);
        // SAFETY: openat relative to the mount's root with a valid C string.
        let reg = unsafe {
            libc::openat(
                mnt.as_raw_fd(),
                c"register".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if reg < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just opened.
        let reg = unsafe { OwnedFd::from_raw_fd(reg) };
        // SAFETY: write of a buffer we own, of its length.
        let n = unsafe { libc::write(reg.as_raw_fd(), line.as_ptr().cast(), line.len()) };
        if n != line.len() as isize {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("registering the loader guard: {e}"),
            ));
        }
    }
    Ok(mnt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_line_escapes_every_byte() {
        let l = register_line("x", b"\x7fELF:\\\n");
        assert_eq!(
            l,
            ":x:M:0:\\x7f\\x45\\x4c\\x46\\x3a\\x5c\\x0a::/nonexistent/sandboxd-refuses-direct-loader-execution:"
        );
        // the kernel's limit on a register line is 1920 bytes
        assert!(register_line("sandboxd-loader-9", &[0u8; MAGIC_LEN]).len() < 1920);
    }

    #[test]
    fn landlock_abi_is_a_version_or_none() {
        assert!(landlock_abi().is_none_or(|v| v >= 1));
    }

    #[test]
    fn the_hosts_loader_is_covered() {
        assert!(
            !loader_headers().is_empty(),
            "no loader of {GUARDED_LOADERS:?} on this host"
        );
    }
}
