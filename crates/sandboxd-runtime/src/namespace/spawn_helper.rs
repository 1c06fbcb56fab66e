//! The spawn helper: a long-lived, single-threaded process (`sandboxd __spawn-helper`) that
//! clones sandboxes on request of the (multithreaded) daemon over a `SOCK_SEQPACKET` pair.
//!
//! At start it mounts the host `/usr` and the templates directory under
//! `<data>/.helper/<its pid>/`, idmapped host 0 → sandbox 0 and read-only, once for all
//! sandboxes. Every sandbox's mount namespace is a copy of the host's, so those staging mounts
//! are the overlay lower layers without per-sandbox `open_tree` calls. It removes them when
//! the daemon closes the socket; a later helper removes those of dead helpers.

use super::mounts::{cpath, idmapped_bind};
use super::sandbox_init::ChildCtx;
use super::seccomp::SeccompProgram;
use super::spawn_protocol::{HELPER_FD, HELPER_SUBCOMMAND, HelperInit, HelperReply, SpawnRequest};
use super::sys::{self, cvt};
use crate::RuntimeError;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Unmount and remove a helper's staging directory (`<stage_dir>/<pid>`).
fn unstage(own: &Path) {
    for d in ["usr", "templates"] {
        let p = own.join(d);
        // lazily detach whatever is mounted there (stacked mounts included)
        while nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        let _ = std::fs::remove_dir(&p);
    }
    let _ = std::fs::remove_dir(own);
}

/// Remove the staging directories of helpers that are gone (a crashed daemon's).
fn clean_stale_stages(stage_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(stage_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let alive = name.parse::<i32>().ok().is_some_and(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok()
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    c.windows(HELPER_SUBCOMMAND.len())
                        .any(|w| w == HELPER_SUBCOMMAND.as_bytes())
                })
        });
        if !alive {
            unstage(&e.path());
        }
    }
}

/// Raw `clone` with fork semantics (no new stack). Returns 0 in the child.
///
/// # Safety
/// Only for single-threaded callers; the child must only exec or `_exit`.
unsafe fn raw_clone(flags: libc::c_int, pidfd: Option<&mut libc::c_int>) -> io::Result<i32> {
    let ptid = pidfd.map_or(std::ptr::null_mut(), |p| p as *mut libc::c_int);
    // SAFETY: fork-like clone: null stack means the child continues on a copy of ours; the
    // caller guarantees single-threadedness.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            ptid,
            0usize,
            0usize,
        )
    };
    cvt(rc).map(|r| r as i32)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((r, w))
}

fn write_proc(pid: i32, file: &str, content: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/{file}"), content)
}

/// Mount options of a sandbox's `/dev/shm`: at most `memory_mb` MiB of data (pages it holds
/// are charged to whoever wrote them, the agent included, all inside the sandbox's memory
/// limit) and 256 inodes per MiB.
pub fn shm_options(memory_mb: u64) -> CString {
    let opts = match memory_mb {
        0 => "mode=1777".to_string(),
        m => format!("mode=1777,size={m}m,nr_inodes={}", m.saturating_mul(256)),
    };
    CString::new(opts).unwrap_or_default()
}

/// A user namespace with the sandbox mapping, for idmapped mounts.
fn mapping_userns(map: &str) -> io::Result<OwnedFd> {
    let (r, w) = pipe()?;
    // SAFETY: the helper is single-threaded; the child only reads and exits.
    let pid = unsafe { raw_clone(libc::CLONE_NEWUSER, None)? };
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: block until the parent closes the pipe, then exit.
        unsafe {
            libc::close(w.as_raw_fd());
            libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(r);
    let res = (|| {
        write_proc(pid, "uid_map", map)?;
        write_proc(pid, "gid_map", map)?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(f))
    })();
    drop(w);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    res
}

struct Helper {
    usr_stage: PathBuf,
    templates_stage: PathBuf,
    templates_dir: PathBuf,
    own_stage: PathBuf,
    map_line: String,
    id_count: u32,
    exe: OwnedFd,
    seccomp: SeccompProgram,
    agent_seccomp: SeccompProgram,
    oom_warned: std::cell::Cell<bool>,
    timing: bool,
}

impl Drop for Helper {
    fn drop(&mut self) {
        unstage(&self.own_stage);
    }
}

fn fail(step: &str, e: impl std::fmt::Display) -> HelperReply {
    HelperReply::Failed {
        step: step.to_string(),
        message: e.to_string(),
    }
}

impl Helper {
    fn setup(init: HelperInit) -> Result<Self, HelperReply> {
        let map_line = format!("0 {} {}\n", init.uid_base, init.uid_count);
        // The staging views are mounted in the host's mount namespace (every sandbox's mount
        // namespace is a copy of it taken at clone time, so mounts the daemon makes later, such
        // as disk-quota filesystems, are visible too), under a directory of this helper's own.
        clean_stale_stages(&init.stage_dir);
        let own = init.stage_dir.join(std::process::id().to_string());
        let (usr_stage, templates_stage) = (own.join("usr"), own.join("templates"));
        for d in [&own, &usr_stage, &templates_stage] {
            std::fs::create_dir_all(d)
                .map_err(|e| fail("helper init", format!("creating {}: {e}", d.display())))?;
        }
        let userns = mapping_userns(&map_line)
            .map_err(|e| fail("helper init", format!("mapping user namespace: {e}")))?;
        for (src, stage) in [
            (&init.usr_source, &usr_stage),
            (&init.templates_source, &templates_stage),
        ] {
            if let Err(e) = idmapped_bind(src, stage, &userns) {
                unstage(&own);
                return Err(fail(
                    "helper init",
                    format!("idmapped mount of {} on {}: {e}", src.display(), stage.display()),
                ));
            }
        }
        let exe = nix::fcntl::open(
            "/proc/self/exe",
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| fail("helper init", format!("open /proc/self/exe: {e}")))?;
        let seccomp = SeccompProgram::build().map_err(|e| fail("helper init", e))?;
        let agent_seccomp = SeccompProgram::build_agent().map_err(|e| fail("helper init", e))?;
        if let Err(e) = super::userns::lift_helper_rlimits() {
            eprintln!(
                "sandboxd spawn helper: cannot lift rlimits (sandboxes share host root's counters): {e}"
            );
        }
        // Children are reaped automatically; the daemon watches them through pidfds.
        // SAFETY: installing SIG_DFL with SA_NOCLDWAIT for SIGCHLD.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            sa.sa_flags = libc::SA_NOCLDWAIT;
            libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut());
        }
        Ok(Self {
            usr_stage,
            templates_stage,
            templates_dir: init.templates_source.clone(),
            own_stage: own,
            map_line,
            id_count: init.uid_count,
            exe,
            seccomp,
            agent_seccomp,
            oom_warned: std::cell::Cell::new(false),
            timing: std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some(),
        })
    }

    fn spawn(&self, req: &SpawnRequest, fds: &[OwnedFd]) -> Result<(OwnedFd, i32, u64), HelperReply> {
        let want = 2 + req.agent_procs + req.work_procs;
        if fds.len() != want || req.work_procs > 32 {
            return Err(fail("request", format!("expected {want} fds, got {}", fds.len())));
        }
        if req.template.is_empty() || req.template.contains('/') || req.template.starts_with('.') {
            return Err(fail("request", "bad template name"));
        }
        let bad = |e: io::Error| fail("request", e);
        let ctx_paths = (
            cpath(&req.sandbox_dir).map_err(bad)?,
            cpath(&self.templates_stage.join(&req.template).join("rootfs")).map_err(bad)?,
            cpath(&self.usr_stage).map_err(bad)?,
            CString::new(req.hostname.as_bytes()).map_err(|_| fail("request", "NUL in hostname"))?,
        );
        // Image layers hold the image's own ids (sandbox ids): always through the idmapped view.
        let layers_dir = |l: &str| {
            if req.layers_host_ids && !super::snapshot::is_image_layer(l) {
                &self.templates_dir
            } else {
                &self.templates_stage
            }
        };
        let layer_paths = |layers: &[String]| -> Result<Vec<CString>, HelperReply> {
            layers
                .iter()
                .map(|l| {
                    if !super::snapshot::valid_layer_path(l) {
                        return Err(fail("request", format!("bad template layer path '{l}'")));
                    }
                    cpath(&layers_dir(l).join(l)).map_err(bad)
                })
                .collect()
        };
        let (root_layers, usr_layers) = (layer_paths(&req.root_layers)?, layer_paths(&req.usr_layers)?);
        let (go_rd, go_wr) = pipe().map_err(|e| fail("clone", e))?;
        let (err_rd, err_wr) = pipe().map_err(|e| fail("clone", e))?;
        let ctx = ChildCtx {
            go_rd: go_rd.as_raw_fd(),
            err_wr: err_wr.as_raw_fd(),
            sandbox_dir: ctx_paths.0,
            template_lower: ctx_paths.1,
            usr_lower: ctx_paths.2,
            root_layers,
            usr_layers,
            mount_usr: !req.whole_root,
            binds: &req.binds,
            volumes: &req.volumes,
            hostname: ctx_paths.3,
            mount_sys: req.mount_sys,
            shm_opts: shm_options(req.memory_mb),
            exe_fd: self.exe.as_raw_fd(),
            config_fd: fds[0].as_raw_fd(),
            log_fd: fds[1].as_raw_fd(),
            agent_fds: fds[2..2 + req.agent_procs]
                .iter()
                .map(|f| f.as_raw_fd())
                .collect(),
            work_fds: fds[2 + req.agent_procs..].iter().map(|f| f.as_raw_fd()).collect(),
            exec: &req.exec,
            seccomp: &self.seccomp,
            agent_seccomp: &self.agent_seccomp,
            workload_ids: self.id_count,
            command_policy: req.command_policy.as_ref(),
            timing: self.timing.then(std::time::Instant::now),
        };
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_PIDFD;
        let mut pidfd: libc::c_int = -1;
        // SAFETY: the helper is single-threaded; the child runs `child::run`, which only
        // execs or `_exit`s.
        let pid = unsafe { raw_clone(flags, Some(&mut pidfd)) }.map_err(|e| fail("clone", e))?;
        if pid == 0 {
            super::sandbox_init::run(&ctx);
        }
        // SAFETY: CLONE_PIDFD stored a new fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        drop(go_rd);
        drop(err_wr);
        // On failure the init is killed and gone (out of its cgroups) before we answer.
        let kill = |reply: HelperReply| {
            let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
            sys::pidfd_wait_exit(&pidfd, 2000);
            reply
        };
        if let Some(t) = ctx.timing {
            eprintln!("spawn helper: {}: cloned at {:?}", req.id, t.elapsed());
        }
        if let Err(r) = self.prepare_child(pid, ctx.timing) {
            return Err(kill(r));
        }
        match nix::unistd::write(&go_wr, b"g") {
            Ok(1) => {}
            Ok(_) => return Err(kill(fail("clone", "short write on the go pipe"))),
            Err(e) => return Err(kill(fail("clone", e))),
        }
        drop(go_wr);
        let t_go = ctx.timing.map(|t| t.elapsed());
        let r = read_until_eof(&err_rd, req.timeout_ms);
        if let (Some(t), Some(go)) = (ctx.timing, t_go) {
            eprintln!(
                "spawn helper: {}: go sent at {go:?}, exec done at {:?}",
                req.id,
                t.elapsed()
            );
        }
        match r {
            Ok(buf) if buf.is_empty() => {}
            Ok(buf) => {
                let text = String::from_utf8_lossy(&buf);
                let (step, msg) = text.split_once('\0').unwrap_or(("spawn", &text));
                return Err(kill(fail(step, msg)));
            }
            Err(e) => return Err(kill(fail("spawn timeout", e))),
        }
        let start =
            sys::proc_stat(pid).map_err(|e| kill(fail("clone", format!("reading /proc/{pid}/stat: {e}"))))?;
        Ok((pidfd, pid, start.start_time))
    }

    /// Host-side setup of the new init before it proceeds: id maps and OOM protection (the
    /// init moves itself into its cgroups).
    fn prepare_child(&self, pid: i32, timing: Option<std::time::Instant>) -> Result<(), HelperReply> {
        write_proc(pid, "uid_map", &self.map_line).map_err(|e| fail("uid map", e))?;
        write_proc(pid, "gid_map", &self.map_line).map_err(|e| fail("gid map", e))?;
        if let Some(t) = timing {
            eprintln!("spawn helper: maps written at {:?}", t.elapsed());
        }
        // The legacy file sets the score to -1000 without lowering the floor that children
        // inherit, so processes the agent starts can reset it but never lower it again.
        // Best effort: it needs CAP_SYS_RESOURCE, which some hosts (containers) drop; the
        // agent is still outside the `work` cgroup whose limits trigger OOM kills.
        if let Err(e) = write_proc(pid, "oom_adj", "-17")
            && !self.oom_warned.replace(true)
        {
            eprintln!("sandboxd spawn helper: cannot protect agents from the OOM killer (oom_adj: {e})");
        }
        Ok(())
    }
}

/// Read a pipe until EOF, with an overall timeout.
fn read_until_eof(fd: &OwnedFd, timeout_ms: u64) -> io::Result<Vec<u8>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "sandbox init did not exec in time",
            ));
        }
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut pfd = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut pfd, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let n = match nix::unistd::read(fd, &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 64 * 1024 {
            return Ok(out);
        }
    }
}

fn reply(sock: RawFd, r: &HelperReply, fds: &[RawFd]) -> io::Result<()> {
    let data = serde_json::to_vec(r).map_err(io::Error::other)?;
    sys::send_msg(sock, &data, fds)
}

/// Entry point of `sandboxd __spawn-helper`. Must be called from a single-threaded process
/// (no async runtime). Returns when the daemon closes its end of the socket.
pub fn run_spawn_helper() -> Result<(), RuntimeError> {
    let sock = HELPER_FD;
    let mut st: libc::stat = unsafe {
        // SAFETY: zeroed stat is a valid out-buffer.
        std::mem::zeroed()
    };
    // SAFETY: fstat into a local buffer.
    if unsafe { libc::fstat(sock, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(RuntimeError::Unsupported(
            "__spawn-helper is started by the namespace backend, not by hand (fd 3 is not its socket)".into(),
        ));
    }
    let first = sys::recv_msg(sock)?.ok_or_else(|| RuntimeError::Step {
        step: "helper init",
        message: "daemon closed the socket".into(),
    })?;
    let init: HelperInit = serde_json::from_slice(&first.0).map_err(|e| RuntimeError::Step {
        step: "helper init",
        message: e.to_string(),
    })?;
    let helper = match Helper::setup(init) {
        Ok(h) => {
            reply(sock, &HelperReply::Ready, &[])?;
            h
        }
        Err(r) => {
            reply(sock, &r, &[])?;
            return Ok(());
        }
    };
    // the staging views go when `helper` drops, also when the daemon died meanwhile
    serve(sock, &helper)
}

fn serve(sock: RawFd, helper: &Helper) -> Result<(), RuntimeError> {
    while let Some((data, fds)) = sys::recv_msg(sock)? {
        let req: SpawnRequest = match serde_json::from_slice(&data) {
            Ok(r) => r,
            Err(e) => {
                reply(sock, &fail("request", e), &[])?;
                continue;
            }
        };
        match helper.spawn(&req, &fds) {
            Ok((pidfd, pid, start_time)) => {
                reply(
                    sock,
                    &HelperReply::Spawned { pid, start_time },
                    &[pidfd.as_raw_fd()],
                )?;
            }
            Err(r) => reply(sock, &r, &[])?,
        }
    }
    Ok(())
}
