//! The workload user namespace (`docs/security.md`, "two user namespaces").
//!
//! The agent runs in the sandbox's first user namespace (U1) and is not dumpable. Every process
//! it starts (commands, PTYs, the code interpreter and therefore its kernels) joins the second
//! one (U2, a child of U1 with an identity map) between fork and exec, then adds a seccomp
//! filter that denies `setns` again (the agent's own filter allows it; the rest of the deny
//! list is inherited). Root in U2 has no capability in U1: the agent's memory, fds and
//! namespaces are out of its reach.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

static USERNS: OnceLock<OwnedFd> = OnceLock::new();

/// Make this process non-dumpable: its `/proc/<pid>` files become root-owned and ptrace,
/// `/proc/<pid>/mem|environ|fd` and `pidfd_getfd` then need `CAP_SYS_PTRACE` in the user
/// namespace of its memory (U1), which no workload process has.
pub fn make_undumpable() -> io::Result<()> {
    // SAFETY: prctl with plain integer arguments on our own process.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Take over the inherited fd of the workload user namespace (made close-on-exec). Call once,
/// at boot; later calls fail.
pub fn init(fd: RawFd) -> io::Result<()> {
    crate::pid1::set_cloexec(fd)?;
    // SAFETY: the runtime hands this descriptor to the agent; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: NS_GET_NSTYPE only queries the namespace of the fd.
    let kind = unsafe { libc::ioctl(owned.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWUSER {
        return Err(io::Error::other(format!("fd {fd} is not a user namespace")));
    }
    USERNS
        .set(owned)
        .map_err(|_| io::Error::other("workload user namespace already set"))
}

/// The workload user namespace's fd, if the agent has one (inside a sandbox).
pub fn userns_fd() -> Option<RawFd> {
    USERNS.get().map(|f| f.as_raw_fd())
}

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>` (`_IO(0xb7, 0x3)`).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const BPF_JSET_K: u16 = 0x45;
/// `MFD_NOEXEC_SEAL` (`<linux/memfd.h>`).
const MFD_NOEXEC_SEAL: u32 = 0x0008;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// `setns` fails with `EPERM`, everything else is allowed; a foreign architecture is killed
/// (as in the sandbox's deny list, which stays installed underneath).
static DENY_SETNS: [libc::sock_filter; 7] = [
    insn(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
    insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH),
    insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    insn(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
    insn(BPF_JEQ_K, 0, 1, libc::SYS_setns as u32),
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
];

/// Under a command policy: `memfd_create` fails with `EPERM` unless `MFD_NOEXEC_SEAL` is
/// asked. Landlock does not check executions of files on internal mounts, and a memfd is one:
/// without this, an `fexecve` of a memfd holding any program's bytes would run it. A sealed
/// memfd can never be made executable.
static DENY_EXECUTABLE_MEMFD: [libc::sock_filter; 9] = [
    insn(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
    insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH),
    insn(BPF_RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
    insn(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
    insn(BPF_JEQ_K, 0, 3, libc::SYS_memfd_create as u32),
    insn(BPF_LD_W_ABS, 0, 0, 24), // the low half of seccomp_data.args[1], the flags
    insn(BPF_JSET_K, 1, 0, MFD_NOEXEC_SEAL),
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
];

fn install_filter(filter: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to a valid static BPF program; the kernel only reads (copies) it.
    // Allowed without no_new_privs: the caller has CAP_SYS_ADMIN in U2.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            0 as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Between fork and exec, before any credential change (joining needs `CAP_SYS_ADMIN` over
/// U2, which the agent has as its owner): join `userns`, deny `setns` from then on, and when
/// `ruleset` is given put the process under the sandbox's command policy
/// ([`crate::command_policy`], with [`DENY_EXECUTABLE_MEMFD`]). Async-signal-safe: a few
/// syscalls on prepared data.
pub fn enter(userns: RawFd, ruleset: Option<RawFd>) -> io::Result<()> {
    // SAFETY: setns on an fd the agent holds; the caller is a freshly forked, single-threaded
    // child.
    if unsafe { libc::setns(userns, libc::CLONE_NEWUSER) } != 0 {
        return Err(io::Error::last_os_error());
    }
    install_filter(&DENY_SETNS)?;
    // with CAP_SYS_ADMIN in U2 (just joined), so no_new_privs is not needed and setuid
    // programs keep working inside the domain
    if let Some(fd) = ruleset {
        install_filter(&DENY_EXECUTABLE_MEMFD)?;
        crate::command_policy::restrict(fd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_jumps_stay_in_the_program() {
        for p in [&DENY_SETNS[..], &DENY_EXECUTABLE_MEMFD[..]] {
            for (i, ins) in p.iter().enumerate() {
                if ins.code == BPF_JEQ_K || ins.code == BPF_JSET_K {
                    assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < p.len());
                }
            }
            assert_eq!(p[p.len() - 1].k, SECCOMP_RET_ALLOW);
        }
        assert_eq!(DENY_SETNS[4].k, libc::SYS_setns as u32);
        assert_eq!(DENY_EXECUTABLE_MEMFD[4].k, libc::SYS_memfd_create as u32);
    }

    #[test]
    fn memfd_filter_refuses_executable_memfds_only() {
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            "import os\n\
             try:\n    os.memfd_create('x')\nexcept PermissionError:\n    print('refused')\n\
             fd = os.memfd_create('y', 8)\nprint('sealed', oct(os.fstat(fd).st_mode & 0o777))",
        ]);
        // SAFETY: prctl and seccomp on prepared static data, async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                install_filter(&DENY_EXECUTABLE_MEMFD)
            });
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout,
            "refused\nsealed 0o666\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn init_refuses_a_non_namespace_fd() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(r);
        assert!(init(fd).is_err());
        assert!(userns_fd().is_none());
    }
}
