//! PID 1 duties of the agent: one reaper for every child, boot file descriptors, loopback.
//!
//! **Reaping.** Every child the agent starts goes through [`spawn`], which forks under the
//! reaper's lock and registers the pid before the lock is released. In [`ReapMode::All`] (the
//! agent as PID 1, and development mode) one thread blocks in `waitid(P_ALL, WEXITED|WNOWAIT)`
//! until *some* child is waitable, then takes the lock and reaps with
//! `waitid(P_ALL, WEXITED|WNOHANG)` until nothing is left, dispatching each exit status to the
//! pid's registered receiver. Orphans re-parented to PID 1 are reaped and ignored. Because the
//! pid is registered under the same lock the reaper takes before reaping, no exit status can be
//! lost to the race that a global `waitpid(-1)` has with `tokio::process` (which is therefore
//! never used for child processes of the agent). Blocking in `waitid` instead of waiting for
//! `SIGCHLD` means no signal can be missed and the reaper does not depend on a tokio runtime.
//!
//! In [`ReapMode::Registered`] (the default when the agent is embedded, for example in unit
//! tests that share a process with other code) each child gets its own `waitpid(pid)` thread,
//! so children of other code are never touched.

use sandboxd_protocol::agent::AgentConfig;
use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use tokio::sync::oneshot;

/// Errors of the PID 1 boot steps.
#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("boot fd {fd}: {what}: {source}")]
    Fd {
        fd: RawFd,
        what: &'static str,
        source: io::Error,
    },
    #[error("boot fd {0} is not a listening socket")]
    NotListening(RawFd),
    #[error("agent config from fd {0}: {1}")]
    Config(RawFd, serde_json::Error),
    #[error("bringing up lo: {0}")]
    Loopback(io::Error),
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Normal exit with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// Decode a `waitid` siginfo (`si_code`, `si_status`).
    pub fn from_siginfo(code: i32, status: i32) -> Self {
        match code {
            libc::CLD_EXITED => ExitStatus::Exited(status),
            libc::CLD_DUMPED => ExitStatus::Signaled {
                signal: status,
                core_dumped: true,
            },
            _ => ExitStatus::Signaled {
                signal: status,
                core_dumped: false,
            },
        }
    }

    /// Decode a `waitpid` status word.
    pub fn from_wait_status(status: i32) -> Self {
        if libc::WIFEXITED(status) {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        } else {
            ExitStatus::Signaled {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            }
        }
    }
}

/// How the reaper finds exited children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapMode {
    /// Reap every child and orphan (`waitid(P_ALL)`): the agent owns all its children.
    All,
    /// Wait only for the pids started through [`spawn`].
    Registered,
}

/// A started child: its pid, a pidfd (opened before the child could be reaped, so signals sent
/// through it can never hit a reused pid) and a receiver for its exit status.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub pidfd: Option<OwnedFd>,
    pub exit: oneshot::Receiver<ExitStatus>,
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: `fd` is a fresh descriptor returned by the kernel.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Send `signal` to the process of `pidfd` (`ESRCH` once it has been reaped).
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own; a null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct Table {
    waiting: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Bumped on every spawn; the reaper sleeps on it while there are no children.
    generation: u64,
}

struct Reaper {
    mode: ReapMode,
    table: Mutex<Table>,
    spawned: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// Choose the reap mode. Call once at startup, before the first [`spawn`]; returns `false` if
/// the reaper was already initialised (with whatever mode it has).
pub fn init_reaper(mode: ReapMode) -> bool {
    let created = REAPER.set(new_reaper(mode)).is_ok();
    if created && mode == ReapMode::All {
        let started = std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 << 10)
            .spawn(|| reaper().reap_all_loop());
        if let Err(e) = started {
            tracing::error!("cannot start the reaper thread: {e}");
        }
    }
    created
}

fn new_reaper(mode: ReapMode) -> Reaper {
    Reaper {
        mode,
        table: Mutex::new(Table {
            waiting: HashMap::new(),
            generation: 0,
        }),
        spawned: Condvar::new(),
    }
}

fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| new_reaper(ReapMode::Registered))
}

/// Start `cmd` and register its pid for its exit status, atomically with respect to the
/// reaper. `cmd` must not use `Stdio::piped()` handles that need a `Child` to stay alive:
/// the `std::process::Child` is dropped (it neither kills nor waits).
pub fn spawn(cmd: &mut Command) -> io::Result<Spawned> {
    let r = reaper();
    let mut table = lock(&r.table);
    let child = cmd.spawn()?;
    let pid = child.id();
    drop(child);
    let pidfd = pidfd_open(pid);
    let (tx, rx) = oneshot::channel();
    match r.mode {
        ReapMode::All => {
            table.waiting.insert(pid as i32, tx);
            table.generation += 1;
            r.spawned.notify_all();
        }
        ReapMode::Registered => {
            let waiter = std::thread::Builder::new()
                .name(format!("wait-{pid}"))
                .stack_size(64 << 10)
                .spawn(move || {
                    let status = wait_pid(pid as i32);
                    let _ = tx.send(status);
                });
            if let Err(e) = waiter {
                // Without a waiter the child would stay a zombie: kill it and reap it here.
                // SAFETY: `pid` is our own unreaped child, so the pid cannot have been reused.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                let _ = wait_pid(pid as i32);
                return Err(e);
            }
        }
    }
    drop(table);
    Ok(Spawned { pid, pidfd, exit: rx })
}

fn wait_pid(pid: i32) -> ExitStatus {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return ExitStatus::from_wait_status(status);
        }
        if r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        // ECHILD: someone else reaped it; report an unknown end as a kill.
        return ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        };
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Reaper {
    fn reap_all_loop(&self) {
        loop {
            let seen = lock(&self.table).generation;
            // SAFETY: an all-zero siginfo_t is a valid value; waitid fills it in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // Block until some child is waitable, without reaping it yet.
            // SAFETY: valid out pointer; P_ALL ignores the id argument.
            let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if r == -1 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => {
                        // No children at all: sleep until the next spawn.
                        let mut t = lock(&self.table);
                        while t.generation == seen {
                            t = match self.spawned.wait(t) {
                                Ok(g) => g,
                                Err(p) => p.into_inner(),
                            };
                        }
                        continue;
                    }
                    _ => {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                }
            }
            self.reap_ready();
        }
    }

    /// Reap every exited child under the spawn lock and dispatch the statuses.
    fn reap_ready(&self) {
        let mut table = lock(&self.table);
        loop {
            // SAFETY: an all-zero siginfo_t is a valid value; waitid fills it in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid out pointer; WNOHANG never blocks.
            let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG) };
            if r == -1 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            // SAFETY: waitid succeeded, so the SIGCHLD fields of the union are initialised
            // (all zero when no child was ready).
            let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
            if pid == 0 {
                return;
            }
            let status = ExitStatus::from_siginfo(info.si_code, status);
            match table.waiting.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => tracing::debug!(pid, ?status, "reaped an orphan"),
            }
        }
    }
}

/// Set `FD_CLOEXEC` on an inherited descriptor.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a caller-provided descriptor number; errors are reported, not UB.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Read the JSON [`AgentConfig`] from the inherited descriptor `fd` to EOF, then close it.
pub fn read_config_fd(fd: RawFd) -> Result<AgentConfig, Pid1Error> {
    check_open(fd, "config")?;
    // SAFETY: the runtime hands this descriptor to the agent; nothing else owns it.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(|source| Pid1Error::Fd {
        fd,
        what: "reading config",
        source,
    })?;
    serde_json::from_slice(&data).map_err(|e| Pid1Error::Config(fd, e))
}

fn check_open(fd: RawFd, what: &'static str) -> Result<(), Pid1Error> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(Pid1Error::Fd {
            fd,
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Take over the inherited listening unix socket `fd` (close-on-exec, non-blocking).
pub fn take_unix_listener(fd: RawFd) -> Result<std::os::unix::net::UnixListener, Pid1Error> {
    check_open(fd, "listener")?;
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out pointers of the right sizes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == -1 || accepting == 0 {
        return Err(Pid1Error::NotListening(fd));
    }
    set_cloexec(fd).map_err(|source| Pid1Error::Fd {
        fd,
        what: "cloexec",
        source,
    })?;
    // SAFETY: the runtime hands this listening socket to the agent; nothing else owns it.
    let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    l.set_nonblocking(true).map_err(|source| Pid1Error::Fd {
        fd,
        what: "nonblocking",
        source,
    })?;
    Ok(l)
}

/// Largest size of the agent's log file (boot mode): past it, the file starts over.
pub const LOG_FILE_CAP: u64 = 4 << 20;

/// The agent's log writer in boot mode: fd 2, the sandbox's `agent.log` on the host (opened
/// for appending by the runtime). Only the agent holds it (its children get pipes), and it
/// never grows past [`LOG_FILE_CAP`]: a write that would cross it truncates the file first.
#[derive(Debug, Default, Clone, Copy)]
pub struct BoundedStderr;

impl io::Write for BoundedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let fd = libc::STDERR_FILENO;
        // SAFETY: an all-zero stat is a valid out-buffer for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat/ftruncate/write on fd 2 with valid buffers.
        unsafe {
            if libc::fstat(fd, &mut st) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFREG
                && st.st_size as u64 + buf.len() as u64 > LOG_FILE_CAP
                && libc::ftruncate(fd, 0) == 0
            {
                let note = b"[agent log truncated: it reached its size limit]\n";
                libc::write(fd, note.as_ptr().cast(), note.len());
            }
            let len = buf.len().min(LOG_FILE_CAP as usize / 2);
            let n = libc::write(fd, buf.as_ptr().cast(), len);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bring the loopback interface up (a new network namespace starts with `lo` down).
pub fn bring_up_loopback() -> Result<(), Pid1Error> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return Err(Pid1Error::Loopback(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned only here.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } == -1 {
        return Err(Pid1Error::Loopback(io::Error::last_os_error()));
    }
    // SAFETY: the flags member of the union was just filled in by SIOCGIFFLAGS.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let wanted = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    if wanted == flags {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = wanted;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } == -1 {
        return Err(Pid1Error::Loopback(io::Error::last_os_error()));
    }
    Ok(())
}

/// The `PATH` given to user processes: the agent's own, or a standard one when it has none.
pub fn default_path() -> String {
    std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn exit_status_decoding() {
        assert_eq!(
            ExitStatus::from_siginfo(libc::CLD_EXITED, 3),
            ExitStatus::Exited(3)
        );
        assert_eq!(
            ExitStatus::from_siginfo(libc::CLD_KILLED, 9),
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(ExitStatus::from_wait_status(2 << 8), ExitStatus::Exited(2));
        assert_eq!(
            ExitStatus::from_wait_status(15),
            ExitStatus::Signaled {
                signal: 15,
                core_dumped: false
            }
        );
    }

    #[tokio::test]
    async fn registered_spawn_reports_exit_codes() {
        let s = spawn(Command::new("/bin/sh").args(["-c", "exit 7"])).unwrap();
        assert!(s.pid > 0);
        assert_eq!(s.exit.await.unwrap(), ExitStatus::Exited(7));
        let s = spawn(Command::new("/bin/sh").args(["-c", "kill -9 $$"])).unwrap();
        assert!(s.pidfd.is_some());
        assert_eq!(
            s.exit.await.unwrap(),
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert!(spawn(&mut Command::new("/nonexistent/binary")).is_err());
    }

    #[test]
    fn config_from_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(br#"{"sandboxId":"abc","defaultUser":"user","workCgroupFds":[7]}"#)
            .unwrap();
        drop(w);
        let fd = std::os::fd::IntoRawFd::into_raw_fd(r);
        let c = read_config_fd(fd).unwrap();
        assert_eq!(c.sandbox_id, "abc");
        assert_eq!(c.work_cgroup_fds, vec![7]);
    }

    #[test]
    fn listener_checks() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(l);
        let l = take_unix_listener(fd).unwrap();
        drop(l);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            take_unix_listener(a.as_raw_fd()),
            Err(Pid1Error::NotListening(_))
        ));
    }
}
