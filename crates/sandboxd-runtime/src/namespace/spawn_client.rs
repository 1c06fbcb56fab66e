//! The daemon's side of the spawn helper ([`super::spawn_helper`]): starts the helper process,
//! sends it spawn requests with their fds and receives the init's pidfd.

use super::spawn_protocol::{HELPER_FD, HELPER_SUBCOMMAND, HelperInit, HelperReply, SpawnRequest};
use super::{step, sys};
use crate::RuntimeError;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

/// A spawned sandbox init (the agent, or a debug program).
#[derive(Debug)]
pub struct Spawned {
    /// Host pid.
    pub pid: i32,
    /// Start time from `/proc/<pid>/stat`.
    pub start_time: u64,
    /// pidfd of the init: readable once it exited.
    pub pidfd: OwnedFd,
}

pub(super) struct SpawnHelperClient {
    pub(super) child: std::process::Child,
    pub(super) sock: OwnedFd,
}

impl SpawnHelperClient {
    pub(super) fn start(exe: &Path, init: &HelperInit) -> Result<Self, RuntimeError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| step("helper start", format!("socketpair: {e}")))?;
        let theirs_raw = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(HELPER_SUBCOMMAND)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SAFETY: dup2 is async-signal-safe; it only places the helper's socket at fd 3
        // (clearing close-on-exec) in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(theirs_raw, HELPER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            step(
                "helper start",
                format!("running {} {}: {e}", exe.display(), HELPER_SUBCOMMAND),
            )
        })?;
        drop(theirs);
        let mut me = Self { child, sock: ours };
        let data = serde_json::to_vec(init).map_err(|e| step("helper start", e))?;
        sys::send_msg(me.sock.as_raw_fd(), &data, &[]).map_err(|e| step("helper start", e))?;
        match me.recv().map_err(|e| step("helper start", e))? {
            (HelperReply::Ready, _) => Ok(me),
            (HelperReply::Failed { step: s, message }, _) => {
                Err(step("helper start", format!("{s}: {message}")))
            }
            (other, _) => Err(step("helper start", format!("unexpected reply {other:?}"))),
        }
    }

    pub(super) fn recv(&mut self) -> std::io::Result<(HelperReply, Vec<OwnedFd>)> {
        let (data, fds) = sys::recv_msg(self.sock.as_raw_fd())?
            .ok_or_else(|| std::io::Error::new(ErrorKind::UnexpectedEof, "spawn helper exited"))?;
        let r = serde_json::from_slice(&data).map_err(std::io::Error::other)?;
        Ok((r, fds))
    }

    pub(super) fn call(
        &mut self,
        req: &SpawnRequest,
        fds: &[RawFd],
    ) -> std::io::Result<(HelperReply, Vec<OwnedFd>)> {
        let data = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        sys::send_msg(self.sock.as_raw_fd(), &data, fds)?;
        self.recv()
    }
}

impl Drop for SpawnHelperClient {
    fn drop(&mut self) {
        // Closing our end makes the helper exit; sandboxes are unaffected.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
