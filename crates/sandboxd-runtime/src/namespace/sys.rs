//! Small syscall wrappers used by the backend, the spawn helper and the sandbox init.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Turn a `-1` return into the current `errno`.
pub fn cvt(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; on success the result is a new fd we own.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: valid fd, null siginfo is allowed.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// Wait until the process behind `pidfd` has exited, up to `timeout_ms` (-1: forever).
/// Returns whether it exited.
pub fn pidfd_wait_exit(pidfd: &OwnedFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return rc > 0;
    }
}

/// Fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Start time in clock ticks since boot (field 22).
    pub start_time: u64,
}

/// Parse the text of `/proc/<pid>/stat` (the command name may contain spaces and parens).
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19 here
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Read `/proc/<pid>/stat`.
pub fn proc_stat(pid: i32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_proc_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/<pid>/stat"))
}

/// What the host says about a process identified by pid and start time.
#[derive(Debug)]
pub enum Liveness {
    /// The process runs.
    Alive,
    /// Evidence that it is gone: no such pid, another process with that pid, or a zombie.
    Gone,
    /// The check itself failed (out of file descriptors, `/proc` unreadable): no evidence
    /// either way, so nothing may be destroyed because of it.
    Unknown(io::Error),
}

impl Liveness {
    /// The answer of a pidfd we hold: readable means exited; a failed poll proves nothing.
    pub fn of_pidfd(pidfd: &OwnedFd) -> Self {
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd; a zero timeout never blocks.
            let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
            match rc {
                0 => return Self::Alive,
                n if n > 0 => return Self::Gone,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EINTR) {
                        return Self::Unknown(e);
                    }
                }
            }
        }
    }
}

/// Whether `pid` is a live (non-zombie) process that started at `start_time`, from
/// `/proc/<pid>/stat`. Only a missing pid, a different start time or a zombie count as gone.
pub fn liveness(pid: i32, start_time: u64) -> Liveness {
    liveness_from(proc_stat(pid), start_time)
}

fn liveness_from(stat: io::Result<ProcStat>, start_time: u64) -> Liveness {
    match stat {
        Ok(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X' => Liveness::Alive,
        Ok(_) => Liveness::Gone,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Liveness::Gone,
        Err(e) => Liveness::Unknown(e),
    }
}

/// Whether `pid` is a live (non-zombie) process that started at `start_time`; `false` also
/// when the check fails (callers that destroy on `false` use [`liveness`]).
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    matches!(liveness(pid, start_time), Liveness::Alive)
}

/// A memfd holding `data`, positioned at offset 0 (CLOEXEC).
pub fn memfd_with(name: &CStr, data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: valid C string; the result is a new fd we own.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    use std::io::{Seek, Write};
    f.write_all(data)?;
    f.seek(io::SeekFrom::Start(0))?;
    Ok(f.into())
}

/// Connect to a unix socket path of any length: paths longer than `sun_path` go through
/// `/proc/self/fd/<dirfd>/<name>`.
pub fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() < 100 {
        return UnixStream::connect(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad socket path"));
    };
    let dirfd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let short = format!("/proc/self/fd/{}/{}", dirfd.as_raw_fd(), name.to_string_lossy());
    UnixStream::connect(short)
}

/// Send one message with file descriptors on a `SOCK_SEQPACKET` socket.
pub fn send_msg(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [io::IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Maximum size of one helper protocol message.
pub const MAX_MSG: usize = 64 * 1024;
/// Maximum number of fds in one helper protocol message.
pub const MAX_FDS: usize = 64;

/// Receive one message with file descriptors. `Ok(None)` on EOF.
pub fn recv_msg(sock: RawFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = vec![0u8; MAX_MSG];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel installed these fds for us; we own them now.
                        fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                    }
                }
                let truncated =
                    msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC);
                let n = msg.bytes;
                if n == 0 && fds.is_empty() {
                    return Ok(None);
                }
                if truncated {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "helper message truncated",
                    ));
                }
                buf.truncate(n);
                return Ok(Some((buf, fds)));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A fresh random UUID (v4) in its text form, for `boot_id`.
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let s = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 50 \
                 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let st = parse_proc_stat(s).unwrap();
        assert_eq!(st.state, 'S');
        assert_eq!(st.start_time, 98765);
        assert!(parse_proc_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let st = proc_stat(me).unwrap();
        assert!(is_alive(me, st.start_time));
        assert!(!is_alive(me, st.start_time + 1));
        assert!(matches!(liveness(me, st.start_time + 1), Liveness::Gone));
        assert!(matches!(liveness(i32::MAX, 1), Liveness::Gone));
    }

    #[test]
    fn a_failed_check_is_not_evidence_of_exit() {
        let st = ProcStat {
            state: 'S',
            start_time: 7,
        };
        assert!(matches!(liveness_from(Ok(st), 7), Liveness::Alive));
        let zombie = ProcStat { state: 'Z', ..st };
        assert!(matches!(liveness_from(Ok(zombie), 7), Liveness::Gone));
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(matches!(liveness_from(Err(emfile), 7), Liveness::Unknown(_)));
        let garbage = io::Error::new(io::ErrorKind::InvalidData, "bad /proc/<pid>/stat");
        assert!(matches!(liveness_from(Err(garbage), 7), Liveness::Unknown(_)));
    }

    #[test]
    fn pidfd_liveness() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        assert!(matches!(Liveness::of_pidfd(&fd), Liveness::Alive));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(Liveness::of_pidfd(&fd), Liveness::Gone));
    }

    #[test]
    fn uuid_shape() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, random_uuid());
    }

    #[test]
    fn fds_cross_a_seqpacket_pair() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let m = memfd_with(c"t", b"hello").unwrap();
        send_msg(a.as_raw_fd(), b"msg", &[m.as_raw_fd()]).unwrap();
        let (data, fds) = recv_msg(b.as_raw_fd()).unwrap().unwrap();
        assert_eq!(data, b"msg");
        assert_eq!(fds.len(), 1);
        let mut s = String::new();
        use std::io::Read;
        std::fs::File::from(fds.into_iter().next().unwrap())
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
        drop(a);
        assert!(recv_msg(b.as_raw_fd()).unwrap().is_none());
    }
}
