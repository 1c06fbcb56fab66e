//! Starting one user process: environment, credentials, cgroup, stdio pipes or a PTY.
//!
//! The child is forked through [`crate::pid1::spawn`] (so the reaper owns its exit status).
//! Its pre-exec step, between fork and exec, only makes async-signal-safe syscalls on data
//! prepared before the fork: write `0` to each inherited `work` cgroup `cgroup.procs` fd,
//! reset `oom_score_adj` to 100 (the agent's -1000 is inherited), `setsid` (and `TIOCSCTTY`
//! on the PTY), join the workload user namespace ([`crate::workload::enter`]),
//! `setgroups`/`setgid`/`setuid`, then `chdir` as the user.

use crate::pid1::{self, ExitStatus};
use crate::users::UserInfo;
use sandboxd_protocol::process::PtySize;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// Everything needed to start a process, already validated.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub pty: Option<PtySize>,
    /// A stdin pipe (true) or `/dev/null` (false). Ignored with a PTY.
    pub stdin: bool,
    /// Inherited `cgroup.procs` descriptors of the `work` cgroup.
    pub cgroup_fds: Vec<RawFd>,
    /// Started for the daemon on the control socket: under the helpers' ruleset of the command
    /// policy, not the workload's.
    pub helper: bool,
}

/// The environment of a process (`docs/contract.md` §4): `PATH` from the agent, then
/// `HOME`/`USER`/`LOGNAME`, then the sandbox-global variables, then the per-command ones.
pub fn build_env(
    path: &str,
    user: &UserInfo,
    global: &BTreeMap<String, String>,
    per_command: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), path.to_string());
    env.insert("HOME".to_string(), user.home.clone());
    env.insert("USER".to_string(), user.name.clone());
    env.insert("LOGNAME".to_string(), user.name.clone());
    for (k, v) in global.iter().chain(per_command) {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// Check that names, values and arguments can be passed to `execve`.
pub fn validate(program: &str, args: &[String], env: &BTreeMap<String, String>) -> Result<(), String> {
    if program.is_empty() {
        return Err("process.cmd is required".to_string());
    }
    if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
        return Err("command and arguments must not contain NUL bytes".to_string());
    }
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(format!("invalid environment variable name {k:?}"));
        }
        if v.contains('\0') {
            return Err(format!("environment variable {k:?} contains a NUL byte"));
        }
    }
    Ok(())
}

/// The PTY master of a process, readable and writable from tokio.
pub type PtyMaster = AsyncFd<OwnedFd>;

/// The parent's ends of the child's stdio.
pub enum ChildIo {
    Pipes {
        stdin: Option<pipe::Sender>,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    Pty(std::sync::Arc<PtyMaster>),
}

/// A started process.
pub struct Started {
    pub pid: u32,
    pub pidfd: Option<OwnedFd>,
    pub exit: oneshot::Receiver<ExitStatus>,
    pub io: ChildIo,
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Data the pre-exec step needs, prepared before the fork (no allocation after it).
struct PreExec {
    cgroup_fds: Vec<RawFd>,
    /// The workload user namespace to join (inside a sandbox).
    userns: Option<RawFd>,
    /// The command policy's Landlock ruleset to restrict the process with.
    ruleset: Option<RawFd>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    cwd: CString,
    pty: bool,
    /// False when the agent already has exactly these credentials (nothing to drop).
    change_credentials: bool,
}

/// Whether the calling process's uid, gid and groups differ from the wanted ones.
fn credentials_differ(uid: u32, gid: u32, groups: &[u32]) -> bool {
    // SAFETY: plain getters.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != uid || egid != gid {
        return true;
    }
    let mut current = vec![0 as libc::gid_t; 1024];
    // SAFETY: the buffer holds `current.len()` entries.
    let n = unsafe { libc::getgroups(current.len() as libc::c_int, current.as_mut_ptr()) };
    if n < 0 {
        return true;
    }
    current.truncate(n as usize);
    let mut current: Vec<u32> = current.into_iter().filter(|g| *g != egid).collect();
    let mut wanted: Vec<u32> = groups.iter().copied().filter(|g| *g != gid).collect();
    current.sort_unstable();
    current.dedup();
    wanted.sort_unstable();
    wanted.dedup();
    current != wanted
}

impl PreExec {
    /// Runs in the child between fork and exec: async-signal-safe syscalls only.
    fn run(&self) -> io::Result<()> {
        for &fd in &self.cgroup_fds {
            // SAFETY: write(2) of a static byte to an inherited descriptor.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: open/write/close with a static NUL-terminated path; failures are ignored
        // (outside a sandbox the value may already be what it should be).
        unsafe {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"100".as_ptr().cast(), 3);
                libc::close(fd);
            }
        }
        // SAFETY: setsid in the freshly forked child (never a group leader).
        if unsafe { libc::setsid() } == -1 {
            return Err(io::Error::last_os_error());
        }
        if self.pty {
            // SAFETY: fd 0 is the PTY slave; make it the controlling terminal of the new session.
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(fd) = self.userns {
            crate::workload::enter(fd, self.ruleset)?;
        }
        // SAFETY: plain credential syscalls on prepared values.
        unsafe {
            if self.change_credentials {
                if libc::setgroups(self.groups.len(), self.groups.as_ptr()) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(self.gid) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setuid(self.uid) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::chdir(self.cwd.as_ptr()) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Start the process described by `spec`. Must be called inside a tokio runtime.
pub fn start(spec: &SpawnSpec) -> io::Result<Started> {
    let cwd = CString::new(spec.cwd.as_bytes()).map_err(|_| io::Error::other("cwd contains a NUL byte"))?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).env_clear().envs(&spec.env);
    let mut parent_io = None;
    let mut pty_master = None;
    match spec.pty {
        Some(size) => {
            let ws = nix::pty::Winsize {
                ws_row: size.rows.min(u16::MAX as u32) as u16,
                ws_col: size.cols.min(u16::MAX as u32) as u16,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(&ws, None).map_err(io::Error::from)?;
            pid1::set_cloexec(pty.master.as_raw_fd())?;
            pid1::set_cloexec(pty.slave.as_raw_fd())?;
            set_nonblocking(&pty.master)?;
            cmd.stdin(Stdio::from(pty.slave.try_clone()?))
                .stdout(Stdio::from(pty.slave.try_clone()?))
                .stderr(Stdio::from(pty.slave));
            pty_master = Some(pty.master);
        }
        None => {
            let stdin = if spec.stdin {
                let (r, w) = cloexec_pipe()?;
                cmd.stdin(Stdio::from(r));
                Some(w)
            } else {
                cmd.stdin(Stdio::null());
                None
            };
            let (out_r, out_w) = cloexec_pipe()?;
            let (err_r, err_w) = cloexec_pipe()?;
            cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
            parent_io = Some((stdin, out_r, err_r));
        }
    }
    let pre = PreExec {
        cgroup_fds: spec.cgroup_fds.clone(),
        userns: crate::workload::userns_fd(),
        ruleset: crate::command_policy::ruleset_fd(spec.helper),
        uid: spec.uid,
        gid: spec.gid,
        groups: spec.groups.clone(),
        cwd,
        pty: spec.pty.is_some(),
        change_credentials: credentials_differ(spec.uid, spec.gid, &spec.groups),
    };
    // SAFETY: `PreExec::run` only makes async-signal-safe syscalls on data prepared above.
    unsafe {
        cmd.pre_exec(move || pre.run());
    }
    let spawned = pid1::spawn(&mut cmd)?;
    // Close the parent's copies of the child's ends (pipe write ends, PTY slave) now, so
    // that EOF arrives when the child and its descendants close theirs.
    drop(cmd);
    let io = match (parent_io, pty_master) {
        (Some((stdin, out_r, err_r)), _) => ChildIo::Pipes {
            stdin: stdin.map(pipe::Sender::from_owned_fd).transpose()?,
            stdout: pipe::Receiver::from_owned_fd(out_r)?,
            stderr: pipe::Receiver::from_owned_fd(err_r)?,
        },
        (None, Some(master)) => {
            // SAFETY: `master` is an owned, valid descriptor that the AsyncFd owns from now on
            // and that is never replaced or closed while registered.
            ChildIo::Pty(std::sync::Arc::new(unsafe { AsyncFd::register(master)? }))
        }
        (None, None) => return Err(io::Error::other("no stdio for the child")),
    };
    Ok(Started {
        pid: spawned.pid,
        pidfd: spawned.pidfd,
        exit: spawned.exit,
        io,
    })
}

/// Set the window size of a PTY (`TIOCSWINSZ`); the kernel sends `SIGWINCH` to its foreground.
pub fn resize(master: &PtyMaster, size: PtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows.min(u16::MAX as u32) as u16,
        ws_col: size.cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own from a PTY master we own.
    if unsafe { libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Read from a PTY master; `Ok(0)` at EOF (the kernel reports `EIO` once no slave is open).
pub async fn pty_read(master: &PtyMaster, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = master.readable().await?;
        let r = guard.try_io(|fd| {
            // SAFETY: read(2) into a buffer we own, of its length.
            let n = unsafe { libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match r {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

/// Write all of `data` to a PTY master.
pub async fn pty_write(master: &PtyMaster, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        let r = guard.try_io(|fd| {
            // SAFETY: write(2) from a buffer we own, of its length.
            let n = unsafe { libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match r {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
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
    fn env_order_and_overrides() {
        let mut global = BTreeMap::new();
        global.insert("E2B_SANDBOX".to_string(), "true".to_string());
        global.insert("HOME".to_string(), "/g".to_string());
        global.insert("FOO".to_string(), "global".to_string());
        let mut per = BTreeMap::new();
        per.insert("FOO".to_string(), "cmd".to_string());
        let env = build_env("/usr/bin:/bin", &user(), &global, &per);
        assert_eq!(env["PATH"], "/usr/bin:/bin");
        assert_eq!(env["USER"], "user");
        assert_eq!(env["LOGNAME"], "user");
        assert_eq!(env["HOME"], "/g");
        assert_eq!(env["FOO"], "cmd");
        assert_eq!(env["E2B_SANDBOX"], "true");
        assert_eq!(env.len(), 6);
    }

    #[test]
    fn validation() {
        let env = BTreeMap::new();
        assert!(validate("", &[], &env).is_err());
        assert!(validate("ls", &["a\0b".into()], &env).is_err());
        assert!(validate("ls", &[], &env).is_ok());
        let mut bad = BTreeMap::new();
        bad.insert("A=B".to_string(), "x".to_string());
        assert!(validate("ls", &[], &bad).is_err());
        let mut bad = BTreeMap::new();
        bad.insert(String::new(), "x".to_string());
        assert!(validate("ls", &[], &bad).is_err());
    }
}
