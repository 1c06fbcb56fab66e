//! The sandbox's seccomp deny list.
//!
//! The BPF program is compiled with `seccompiler` (in the spawn helper, once) and installed in
//! each sandbox's init with a raw `seccomp(SECCOMP_SET_MODE_FILTER)` call *without*
//! `no_new_privs` (allowed for namespace root), so setuid `sudo` keeps working inside.
//! Denied calls fail with `EPERM`; `clone3` fails with `ENOSYS` because its flags cannot be
//! inspected and libc falls back to `clone` only on `ENOSYS`; x32-ABI syscall numbers are
//! denied outright (they would otherwise bypass a deny list), and foreign architectures
//! (i386 `int 0x80`) kill the process.

use crate::RuntimeError;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};
use std::collections::BTreeMap;

/// Syscalls denied unconditionally (by name, for docs and errors; numbers from libc).
pub const DENIED: &[(&str, i64)] = &[
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_tree_attr", SYS_OPEN_TREE_ATTR),
    ("setns", libc::SYS_setns),
];

/// `open_tree_attr` (Linux 6.15), not yet in libc.
#[cfg(target_arch = "x86_64")]
const SYS_OPEN_TREE_ATTR: i64 = 467;
#[cfg(target_arch = "aarch64")]
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// Syscalls denied when their first argument (flags) contains `CLONE_NEWUSER`.
pub const DENIED_WITH_NEWUSER: &[(&str, i64)] = &[("unshare", libc::SYS_unshare), ("clone", libc::SYS_clone)];

/// First syscall number of the x32 ABI on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// A compiled filter, ready to install.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    filter: Vec<libc::sock_filter>,
}

fn bpf_stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn bpf_jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

impl SeccompProgram {
    /// Compile the deny list of workload processes for the running architecture.
    pub fn build() -> Result<Self, RuntimeError> {
        Self::build_with(DENIED)
    }

    /// The agent's deny list: [`DENIED`] except `setns`, which the agent needs to move its
    /// children into the workload user namespace (they add a filter denying it again).
    pub fn build_agent() -> Result<Self, RuntimeError> {
        let denied: Vec<(&str, i64)> = DENIED
            .iter()
            .copied()
            .filter(|(_, nr)| *nr != libc::SYS_setns)
            .collect();
        Self::build_with(&denied)
    }

    fn build_with(denied: &[(&str, i64)]) -> Result<Self, RuntimeError> {
        fn err(e: impl std::fmt::Display) -> RuntimeError {
            RuntimeError::Step {
                step: "seccomp build",
                message: e.to_string(),
            }
        }
        let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(err)?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (_, nr) in denied {
            rules.insert(*nr, vec![]);
        }
        for (_, nr) in DENIED_WITH_NEWUSER {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(libc::CLONE_NEWUSER as u64),
                libc::CLONE_NEWUSER as u64,
            )
            .map_err(err)?;
            rules.insert(*nr, vec![SeccompRule::new(vec![cond]).map_err(err)?]);
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(err)?;
        let mut prog: BpfProgram = filter.try_into().map_err(err)?;
        // seccompiler starts with a 3-instruction architecture check (load arch, jump over
        // the kill if it matches, kill). Our own checks go right after it; BPF jumps are
        // relative and forward-only, so the rest of the program is unaffected.
        let arch_check_len = 3;
        if prog.len() < arch_check_len || prog[arch_check_len - 1].code != BPF_RET_K {
            return Err(RuntimeError::Step {
                step: "seccomp build",
                message: "unexpected program layout from seccompiler".into(),
            });
        }
        let mut extra = Vec::new();
        extra.push(bpf_stmt(BPF_LD_W_ABS, 0)); // seccomp_data.nr
        if cfg!(target_arch = "x86_64") {
            extra.push(bpf_jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1));
            extra.push(bpf_stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32));
        }
        extra.push(bpf_jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
        extra.push(bpf_stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
        prog.splice(arch_check_len..arch_check_len, extra);
        if prog.len() > 4096 {
            return Err(RuntimeError::Step {
                step: "seccomp build",
                message: format!("program too long: {} instructions", prog.len()),
            });
        }
        let filter = prog
            .into_iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        Ok(Self { filter })
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.filter.len()
    }

    /// Whether the program is empty (never true for a built program).
    pub fn is_empty(&self) -> bool {
        self.filter.is_empty()
    }

    /// Install the filter on the calling thread with `seccomp(SECCOMP_SET_MODE_FILTER, 0)`,
    /// without setting `no_new_privs`. Needs `CAP_SYS_ADMIN` in the caller's user namespace.
    pub fn install(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.filter.len() as u16,
            filter: self.filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points to a valid, fully initialised BPF program that outlives the
        // call; the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
                0 as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(test)]
    fn instructions(&self) -> &[libc::sock_filter] {
        &self.filter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;

    /// A minimal classic-BPF interpreter for the instructions seccomp filters use.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes()); // instruction pointer
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            let class = i.code & 0x07;
            match class {
                0x00 => {
                    assert_eq!(i.code, 0x20, "only LD|W|ABS is used");
                    let off = i.k as usize;
                    acc = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap());
                    pc += 1;
                }
                0x04 => {
                    // ALU
                    match i.code & 0xf0 {
                        0x50 => acc &= i.k,
                        op => panic!("alu op {op:#x}"),
                    }
                    pc += 1;
                }
                0x05 => {
                    let op = i.code & 0xf0;
                    if op == 0x00 {
                        pc += 1 + i.k as usize;
                        continue;
                    }
                    let taken = match op {
                        0x10 => acc == i.k,
                        0x20 => acc > i.k,
                        0x30 => acc >= i.k,
                        0x40 => acc & i.k != 0,
                        _ => panic!("jmp op {op:#x}"),
                    };
                    pc += 1 + if taken { i.jt as usize } else { i.jf as usize };
                }
                0x06 => return i.k,
                c => panic!("class {c:#x}"),
            }
        }
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn deny_list_semantics() {
        let p = SeccompProgram::build().unwrap();
        let prog = p.instructions();
        let call = |nr: i64, a0: u64| run(prog, AUDIT_ARCH_X86_64, nr as u32, [a0, 0, 0, 0, 0, 0]);
        for (name, nr) in DENIED {
            assert_eq!(call(*nr, 0), EPERM, "{name} must be denied");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_setuid,
            libc::SYS_setgroups,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_ptrace,
            libc::SYS_chroot,
            libc::SYS_fork,
        ] {
            assert_eq!(call(nr, 0), ALLOW, "syscall {nr} must be allowed");
        }
        // clone / unshare: only CLONE_NEWUSER is denied.
        let thread_flags = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(call(libc::SYS_clone, thread_flags), ALLOW);
        assert_eq!(call(libc::SYS_clone, libc::SIGCHLD as u64), ALLOW);
        assert_eq!(
            call(libc::SYS_clone, libc::CLONE_NEWUSER as u64 | libc::SIGCHLD as u64),
            EPERM
        );
        assert_eq!(call(libc::SYS_unshare, libc::CLONE_NEWNS as u64), ALLOW);
        assert_eq!(
            call(
                libc::SYS_unshare,
                (libc::CLONE_NEWUSER | libc::CLONE_NEWNS) as u64
            ),
            EPERM
        );
        // high bits of the 64-bit flags argument do not matter
        assert_eq!(call(libc::SYS_unshare, 0xffff_ffff_0000_0000), ALLOW);
        // clone3 cannot be inspected: ENOSYS so libc falls back to clone.
        assert_eq!(call(libc::SYS_clone3, 0), ENOSYS);
        // x32 ABI numbers are denied, including x32 mount.
        assert_eq!(call(X32_SYSCALL_BIT as i64 + libc::SYS_mount, 0), EPERM);
        assert_eq!(call(X32_SYSCALL_BIT as i64 + libc::SYS_read, 0), EPERM);
        // Foreign architecture: kill.
        assert_eq!(
            run(prog, AUDIT_ARCH_I386, 21, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn agent_list_allows_only_setns_more() {
        let agent = SeccompProgram::build_agent().unwrap();
        let call = |nr: i64, a0: u64| {
            run(
                agent.instructions(),
                AUDIT_ARCH_X86_64,
                nr as u32,
                [a0, 0, 0, 0, 0, 0],
            )
        };
        assert_eq!(call(libc::SYS_setns, 0), ALLOW);
        for (name, nr) in DENIED.iter().filter(|(n, _)| *n != "setns") {
            assert_eq!(call(*nr, 0), EPERM, "{name} must be denied");
        }
        assert_eq!(call(libc::SYS_unshare, libc::CLONE_NEWUSER as u64), EPERM);
        assert_eq!(call(libc::SYS_clone3, 0), ENOSYS);
    }

    #[test]
    fn program_is_small() {
        let p = SeccompProgram::build().unwrap();
        assert!(!p.is_empty());
        assert!(p.len() < 256, "{} instructions", p.len());
    }
}
