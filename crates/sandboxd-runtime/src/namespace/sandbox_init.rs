//! The code that runs in a freshly cloned sandbox init (PID 1 of the new pid namespace, in the
//! new user, mount, net, uts and ipc namespaces) until it execs the agent.
//!
//! It runs in a copy of the single-threaded spawn helper, so allocating is safe. Every step
//! reports failure as `step\0message` on the error pipe and exits; a successful `execveat`
//! closes the (close-on-exec) pipe, which the helper reads as success.

use super::seccomp::SeccompProgram;
use sandboxd_protocol::agent::boot_fds;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// What the init execs at the end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExecTarget {
    /// The sandboxd binary (opened by the helper before any pivot): `sandboxd agent --boot`.
    Agent,
    /// Debug/test path: a program inside the sandbox with these arguments (argv\[0\] included).
    Program {
        /// Absolute path inside the sandbox.
        path: String,
        /// Arguments, `argv[0]` included.
        argv: Vec<String>,
    },
}

/// Everything the child needs, prepared by the helper before `clone`.
pub struct ChildCtx<'a> {
    /// Read end of the pipe on which the helper says "go" (maps written).
    pub go_rd: RawFd,
    /// Write end of the error pipe (`step\0message`; close-on-exec).
    pub err_wr: RawFd,
    /// `<data>/sandboxes/<id>`.
    pub sandbox_dir: CString,
    /// The template's root (through the idmapped staging view).
    pub template_lower: CString,
    /// The host `/usr` (through the idmapped staging view).
    pub usr_lower: CString,
    /// Extra read-only layers stacked above `template_lower` / `usr_lower`, top first
    /// (snapshot and template layers; see `snapshot.rs`).
    pub root_layers: Vec<CString>,
    /// The same for `/usr`.
    pub usr_layers: Vec<CString>,
    /// Mount the `/usr` overlay (false for image templates, whose root has its own `/usr`).
    pub mount_usr: bool,
    /// Read-only host directories bound into the new root (layered_template.rs).
    pub binds: &'a [super::mounts::ReadOnlyBind],
    /// Volumes bound read-write into the new root (volumes.rs).
    pub volumes: &'a [super::volumes::VolumeBind],
    /// The sandbox's hostname.
    pub hostname: CString,
    /// Mount a read-only `/sys`.
    pub mount_sys: bool,
    /// Mount options of `/dev/shm` (its size is within the sandbox's memory).
    pub shm_opts: CString,
    /// `O_PATH` fd of the sandboxd executable (exec'd as the agent).
    pub exe_fd: RawFd,
    /// The agent's configuration (memfd).
    pub config_fd: RawFd,
    /// The agent log (stdout and stderr).
    pub log_fd: RawFd,
    /// Files that move the writer into the agent cgroup (one per hierarchy).
    pub agent_fds: Vec<RawFd>,
    /// Files that move a writer into the work cgroup (handed to the agent).
    pub work_fds: Vec<RawFd>,
    /// What to exec at the end.
    pub exec: &'a ExecTarget,
    /// The deny list of workload processes (and of an `ExecTarget::Program`).
    pub seccomp: &'a SeccompProgram,
    /// The agent's deny list: the same, except that it may `setns` into the workload namespace.
    pub agent_seccomp: &'a SeccompProgram,
    /// Number of ids mapped into the sandbox (the workload namespace maps them all, 1:1).
    pub workload_ids: u32,
    /// The command policy to prepare (loader_guard.rs, command_policy.rs).
    pub command_policy: Option<&'a super::spawn_protocol::PolicyRequest>,
    /// Print per-step timings to stderr (`SANDBOXD_RUNTIME_TIMING`).
    pub timing: Option<std::time::Instant>,
}

fn mark(ctx: &ChildCtx<'_>, what: &str) {
    if let Some(t) = ctx.timing {
        eprintln!("sandbox init: {what} at {:?}", t.elapsed());
    }
}

/// The agent's environment.
pub const AGENT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

type StepResult<T> = Result<T, (&'static str, io::Error)>;

fn os(step: &'static str) -> impl FnOnce(io::Error) -> (&'static str, io::Error) {
    move |e| (step, e)
}

fn last(step: &'static str) -> (&'static str, io::Error) {
    (step, io::Error::last_os_error())
}

fn cstr(s: String) -> CString {
    // Paths built here never contain NUL (they come from validated ids and fd numbers).
    CString::new(s).unwrap_or_default()
}

fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are valid NUL-terminated strings or null, as mount(2) allows.
    let rc = unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_path(p: &CStr, flags: libc::c_int) -> io::Result<RawFd> {
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

fn touch(p: &CStr) -> io::Result<()> {
    let fd = open_path(p, libc::O_CREAT | libc::O_WRONLY)?;
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
    Ok(())
}

fn mkdir(p: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid C string.
    if unsafe { libc::mkdir(p.as_ptr(), mode) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

fn symlink(target: &CStr, link: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    if unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind_socket(path: &CStr) -> io::Result<RawFd> {
    // SAFETY: plain syscalls on a fresh fd we own; the address is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.to_bytes();
        if bytes.len() >= addr.sun_path.len() {
            libc::close(fd);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "socket path too long",
            ));
        }
        for (i, b) in bytes.iter().enumerate() {
            addr.sun_path[i] = *b as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 || libc::listen(fd, 1024) != 0
        {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

/// Entry point of the cloned child. Never returns.
pub fn run(ctx: &ChildCtx<'_>) -> ! {
    let err = match setup_and_exec(ctx) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let msg = format!("{}\0{}", err.0, err.1);
    // SAFETY: writing a buffer we own to our pipe, then exiting without running destructors
    // (this is a forked copy of the helper).
    unsafe {
        libc::write(ctx.err_wr, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn setup_and_exec(ctx: &ChildCtx<'_>) -> StepResult<std::convert::Infallible> {
    wait_for_go(ctx);
    let dirs = open_dirs(ctx)?;
    mark(ctx, "opened dirs");
    become_sandbox_root()?;
    mark(ctx, "credentials");
    enter_cgroups(ctx)?;
    mount_root(ctx, &dirs)?;
    mount_dev(ctx)?;
    mark(ctx, "dev");
    mount_proc_and_sys(ctx, dirs.sbx)?;
    mark(ctx, "proc sys");
    let (api, control) = bind_sockets(dirs.sbx)?;
    mark(ctx, "sockets");
    pivot_into_root(&dirs)?;
    mark(ctx, "pivot");
    set_hostname_and_rlimits(ctx)?;
    // 8b. The workload user namespace, and the sandbox's caps on kernel counters (userns.rs).
    let workload_userns = super::userns::prepare_in_child(ctx.workload_ids)?;
    mark(ctx, "workload userns");
    // 8c. A command policy: the loader guard, read-only granted files and the rulesets, in the
    //     new root, before seccomp denies fsopen and mount.
    let policy = match ctx.command_policy {
        Some(p) => {
            let guard = super::loader_guard::install().map_err(os("loader guard"))?;
            let rulesets = super::command_policy::prepare_in_child(&p.allowed, &p.path)
                .map_err(|m| ("command policy", io::Error::other(m)))?;
            Some([guard, rulesets.workload, rulesets.helpers])
        }
        None => None,
    };
    mark(ctx, "command policy");
    let fds = arrange_fds(ctx, api, control, &workload_userns, policy.as_ref())?;
    mark(ctx, "fds");
    reset_signals();
    exec_init(ctx, &fds)
}

/// Directories opened before the credentials change (O_PATH fds) and the overlay lower-dir
/// prefixes of the template's extra layers.
struct OpenedDirs {
    sbx: RawFd,
    tpl: RawFd,
    usr: RawFd,
    lower_root: String,
    lower_usr: String,
    volume_fds: Vec<RawFd>,
}

/// Where [`arrange_fds`] put the executable and the error pipe.
struct PlacedFds {
    exe: RawFd,
    report: RawFd,
}

fn wait_for_go(ctx: &ChildCtx<'_>) {
    // 1. Wait until the helper wrote our uid/gid maps and placed us in our cgroups.
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local buffer.
    let n = unsafe { libc::read(ctx.go_rd, b.as_mut_ptr().cast(), 1) };
    if n != 1 {
        // the helper gave up on us
        // SAFETY: exiting the forked child.
        unsafe { libc::_exit(126) };
    }
    mark(ctx, "go");
    // SAFETY: detach from the daemon's session so terminal signals never reach sandboxes.
    unsafe { libc::setsid() };
}

fn open_dirs(ctx: &ChildCtx<'_>) -> StepResult<OpenedDirs> {
    // 2. Open the directories we need while we still have host uid 0 (owner access to
    //    root-owned parents, whatever their mode); afterwards everything is reached via these fds.
    let dflags = libc::O_PATH | libc::O_DIRECTORY;
    let sbx = open_path(&ctx.sandbox_dir, dflags).map_err(os("open sandbox dir"))?;
    let tpl = open_path(&ctx.template_lower, dflags).map_err(os("open template"))?;
    let usr = open_path(&ctx.usr_lower, dflags).map_err(os("open usr"))?;
    let mut lower_root = String::new();
    let mut lower_usr = String::new();
    for (layers, out) in [
        (&ctx.root_layers, &mut lower_root),
        (&ctx.usr_layers, &mut lower_usr),
    ] {
        for l in layers {
            let fd = open_path(l, dflags).map_err(os("open template layer"))?;
            out.push_str(&format!("/proc/self/fd/{fd}:"));
        }
    }
    let volume_fds = super::volumes::open_sources(ctx.volumes).map_err(os("open volumes"))?;
    Ok(OpenedDirs {
        sbx,
        tpl,
        usr,
        lower_root,
        lower_usr,
        volume_fds,
    })
}

fn become_sandbox_root() -> StepResult<()> {
    // 3. Become root of the sandbox (host uid = map base).
    // SAFETY: plain credential syscalls on our own process.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(last("setgroups"));
        }
        if libc::setresgid(0, 0, 0) != 0 {
            return Err(last("setresgid"));
        }
        if libc::setresuid(0, 0, 0) != 0 {
            return Err(last("setresuid"));
        }
    }
    Ok(())
}

fn enter_cgroups(ctx: &ChildCtx<'_>) -> StepResult<()> {
    // 4. cgroups: move ourselves into the agent group (fds opened by the host), then make it
    //    the root of a new cgroup namespace.
    for fd in &ctx.agent_fds {
        // SAFETY: writing a 1-byte buffer to an fd we hold.
        if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(last("cgroup attach"));
        }
    }
    mark(ctx, "cgroups");
    // SAFETY: unshare with a namespace flag only affects this process.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(last("cgroup namespace"));
    }
    Ok(())
}

/// The root and `/usr` overlays, template binds and volumes; ends in the new root's directory.
fn mount_root(ctx: &ChildCtx<'_>, dirs: &OpenedDirs) -> StepResult<()> {
    let (sbx, tpl, usr) = (dirs.sbx, dirs.tpl, dirs.usr);
    let (lower_root, lower_usr) = (&dirs.lower_root, &dirs.lower_usr);
    // 5. Mounts.
    mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None).map_err(os("make mounts private"))?;
    let fdp = |fd: RawFd, rest: &str| cstr(format!("/proc/self/fd/{fd}{rest}"));
    let rootfs = fdp(sbx, "/rootfs");
    let opts = cstr(format!(
        "lowerdir={lower_root}/proc/self/fd/{tpl},upperdir=/proc/self/fd/{sbx}/upper/root,workdir=/proc/self/fd/{sbx}/work/root,userxattr"
    ));
    mount(
        Some(c"overlay"),
        &rootfs,
        Some(c"overlay"),
        libc::MS_NODEV,
        Some(&opts),
    )
    .map_err(os("mount root overlay"))?;
    if ctx.mount_usr {
        mount_usr(sbx, usr, lower_usr)?;
    }
    if !ctx.binds.is_empty() {
        let root = std::path::PathBuf::from(rootfs.to_string_lossy().into_owned());
        super::mounts::mount_binds(&root, ctx.binds).map_err(os("mount template binds"))?;
    }
    if !ctx.volumes.is_empty() {
        let root = std::path::PathBuf::from(rootfs.to_string_lossy().into_owned());
        super::volumes::mount_in_child(&root, ctx.volumes, &dirs.volume_fds).map_err(os("mount volumes"))?;
    }
    mark(ctx, "overlays");
    // SAFETY: valid C string.
    if unsafe { libc::chdir(rootfs.as_ptr()) } != 0 {
        return Err(last("chdir rootfs"));
    }
    Ok(())
}

/// The `/usr` overlay: the template's `/usr` layers over the host's `/usr`.
fn mount_usr(sbx: RawFd, usr: RawFd, lower_usr: &str) -> StepResult<()> {
    let fdp = |fd: RawFd, rest: &str| cstr(format!("/proc/self/fd/{fd}{rest}"));
    let opts = cstr(format!(
        "lowerdir={lower_usr}/proc/self/fd/{usr},upperdir=/proc/self/fd/{sbx}/upper/usr,workdir=/proc/self/fd/{sbx}/work/usr,userxattr"
    ));
    mount(
        Some(c"overlay"),
        &fdp(sbx, "/rootfs/usr"),
        Some(c"overlay"),
        libc::MS_NODEV,
        Some(&opts),
    )
    .map_err(os("mount usr overlay"))
}

fn mount_dev(ctx: &ChildCtx<'_>) -> StepResult<()> {
    // /dev: a small tmpfs with bind-mounted host device nodes and a private devpts.
    mount(
        Some(c"tmpfs"),
        c"dev",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=755,size=64k"),
    )
    .map_err(os("mount /dev"))?;
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = cstr(format!("dev/{dev}"));
        touch(&target).map_err(os("create /dev node"))?;
        mount(
            Some(&cstr(format!("/dev/{dev}"))),
            &target,
            None,
            libc::MS_BIND,
            None,
        )
        .map_err(os("bind /dev node"))?;
    }
    mkdir(c"dev/pts", 0o755).map_err(os("mkdir /dev/pts"))?;
    mount(
        Some(c"devpts"),
        c"dev/pts",
        Some(c"devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(os("mount devpts"))?;
    symlink(c"pts/ptmx", c"dev/ptmx").map_err(os("link /dev/ptmx"))?;
    mkdir(c"dev/shm", 0o1777).map_err(os("mkdir /dev/shm"))?;
    mount(
        Some(c"shm"),
        c"dev/shm",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&ctx.shm_opts),
    )
    .map_err(os("mount /dev/shm"))?;
    for (link, target) in [
        (c"dev/fd", c"/proc/self/fd"),
        (c"dev/stdin", c"/proc/self/fd/0"),
        (c"dev/stdout", c"/proc/self/fd/1"),
        (c"dev/stderr", c"/proc/self/fd/2"),
    ] {
        symlink(target, link).map_err(os("link /dev entries"))?;
    }
    Ok(())
}

fn mount_proc_and_sys(ctx: &ChildCtx<'_>, sbx: RawFd) -> StepResult<()> {
    // /proc of the new pid namespace, with this boot's boot_id.
    let pflags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(Some(c"proc"), c"proc", Some(c"proc"), pflags, None).map_err(os("mount /proc"))?;
    // The boot_id file is copied onto a scratch tmpfs first so that the sandbox's mount table
    // names no host path.
    let boot_id = c"proc/sys/kernel/random/boot_id";
    let id = std::fs::read(format!("/proc/self/fd/{sbx}/boot_id")).map_err(os("bind boot_id"))?;
    mount(
        Some(c"tmpfs"),
        c"tmp",
        Some(c"tmpfs"),
        pflags,
        Some(c"size=4k,mode=755"),
    )
    .map_err(os("bind boot_id"))?;
    std::fs::write("tmp/boot_id", &id[..id.len().min(64)]).map_err(os("bind boot_id"))?;
    mount(Some(c"tmp/boot_id"), boot_id, None, libc::MS_BIND, None).map_err(os("bind boot_id"))?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c"tmp".as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(last("bind boot_id"));
    }
    mount(
        None,
        boot_id,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | pflags,
        None,
    )
    .map_err(os("remount boot_id"))?;
    // /proc/meminfo shows memoryMB (meminfo.rs); the init is pinned to cpuCount CPUs (cpus.rs)
    super::meminfo::bind_in_child(sbx).map_err(os("bind meminfo"))?;
    super::cpus::apply_in_child(sbx).map_err(os("pin cpus"))?;
    if ctx.mount_sys {
        mount(
            Some(c"sysfs"),
            c"sys",
            Some(c"sysfs"),
            libc::MS_RDONLY | pflags,
            None,
        )
        .map_err(os("mount /sys"))?;
    }
    Ok(())
}

fn bind_sockets(sbx: RawFd) -> StepResult<(RawFd, RawFd)> {
    let fdp = |fd: RawFd, rest: &str| cstr(format!("/proc/self/fd/{fd}{rest}"));
    // 6. Sockets in the run dir, bound while the host path is still reachable.
    let api = bind_socket(&fdp(sbx, "/run/agent.sock")).map_err(os("bind agent.sock"))?;
    let control = bind_socket(&fdp(sbx, "/run/control.sock")).map_err(os("bind control.sock"))?;
    Ok((api, control))
}

fn pivot_into_root(dirs: &OpenedDirs) -> StepResult<()> {
    // 7. pivot_root into the overlay and drop the old root.
    // SAFETY: path syscalls with valid C strings; "." is the new root (our cwd).
    unsafe {
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            return Err(last("pivot_root"));
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(last("detach old root"));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(last("chdir /"));
        }
        libc::close(dirs.sbx);
        libc::close(dirs.tpl);
        libc::close(dirs.usr);
    }
    Ok(())
}

fn set_hostname_and_rlimits(ctx: &ChildCtx<'_>) -> StepResult<()> {
    // 8. Hostname.
    let h = ctx.hostname.to_bytes();
    // SAFETY: valid buffer and length.
    if unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) } != 0 {
        return Err(last("sethostname"));
    }

    // rlimits: no core dumps (a host core_pattern pipe would run a host helper for sandbox
    // crashes; the hard limit 0 cannot be raised from inside), open files up to the hard limit.
    // SAFETY: setrlimit/getrlimit on our own process with valid structs.
    unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(last("rlimits"));
        }
        let mut nofile = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) == 0 {
            nofile.rlim_cur = nofile.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &nofile);
        }
    }
    Ok(())
}

fn arrange_fds(
    ctx: &ChildCtx<'_>,
    api: RawFd,
    control: RawFd,
    workload_userns: &std::os::fd::OwnedFd,
    policy: Option<&[std::os::fd::OwnedFd; 3]>,
) -> StepResult<PlacedFds> {
    // 9. File descriptors (boot_fds): 0 /dev/null, 1+2 agent log, 3 config, 4 agent.sock,
    //    5 control.sock, 6 the workload user namespace, 7.. work cgroup.procs and counters,
    //    the command policy's three fds if any; then (close-on-exec) the exe fd and the error
    //    pipe.
    let null = open_path(c"/dev/null", libc::O_RDWR).map_err(os("open /dev/null"))?;
    let n_work = ctx.work_fds.len();
    let program = matches!(ctx.exec, ExecTarget::Program { .. });
    let mut plan: Vec<(RawFd, RawFd, bool)> = vec![
        (null, 0, false),
        (ctx.log_fd, 1, false),
        (ctx.log_fd, 2, false),
        (ctx.config_fd, 3, false),
        (api, 4, false),
        (control, 5, false),
        (workload_userns.as_raw_fd(), boot_fds::WORKLOAD_USERNS, program),
    ];
    for (i, fd) in ctx.work_fds.iter().enumerate() {
        plan.push((*fd, boot_fds::FIRST_WORK_CGROUP + i as RawFd, false));
    }
    let mut exe_target = boot_fds::FIRST_WORK_CGROUP + n_work as RawFd;
    // the command policy's loader guard, workload and helper rulesets (CommandPolicyFds)
    for fd in policy.into_iter().flatten() {
        plan.push((fd.as_raw_fd(), exe_target, false));
        exe_target += 1;
    }
    let err_target = exe_target + 1;
    plan.push((ctx.exe_fd, exe_target, true));
    plan.push((ctx.err_wr, err_target, true));
    // First move every source above all targets, then into place.
    let high: Vec<RawFd> = plan
        .iter()
        .map(|(src, _, _)| {
            // SAFETY: duplicating an fd we hold.
            let r = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 256) };
            if r < 0 { Err(last("arrange fds")) } else { Ok(r) }
        })
        .collect::<Result<_, _>>()?;
    for ((_, target, cloexec), h) in plan.iter().zip(&high) {
        let flags = if *cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 onto a target number; closes whatever was there.
        if unsafe { libc::dup3(*h, *target, flags) } < 0 {
            return Err(last("arrange fds"));
        }
    }
    // SAFETY: closes every fd above the ones we keep (including the high copies).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (err_target + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    // From here errors must go to the moved pipe.
    Ok(PlacedFds {
        exe: exe_target,
        report: err_target,
    })
}

fn reset_signals() {
    // 10. Signals: default dispositions and an empty mask for the agent.
    // SAFETY: resetting our own signal state.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

fn exec_init(ctx: &ChildCtx<'_>, fds: &PlacedFds) -> ! {
    // 11. seccomp (no no_new_privs), then exec.
    let report_fd = fds.report;
    let program = matches!(ctx.exec, ExecTarget::Program { .. });
    let fail = |step: &'static str, e: io::Error| -> ! {
        let msg = format!("{step}\0{e}");
        // SAFETY: reporting on our pipe and exiting the forked child.
        unsafe {
            libc::write(report_fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    // The agent stays in U1 (and may setns its children into U2); a debug program runs in U2
    // like a workload process.
    if program {
        // SAFETY: setns on the fd placed above; this process is single-threaded.
        if unsafe { libc::setns(boot_fds::WORKLOAD_USERNS, libc::CLONE_NEWUSER) } != 0 {
            fail("enter workload user namespace", io::Error::last_os_error());
        }
    }
    let filter = if program { ctx.seccomp } else { ctx.agent_seccomp };
    if let Err(e) = filter.install() {
        fail("seccomp", e);
    }
    let env = [cstr(AGENT_PATH_ENV.to_string())];
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    match ctx.exec {
        ExecTarget::Agent => {
            let argv = [c"sandboxd", c"agent", c"--boot"];
            let argvp: Vec<*const libc::c_char> = argv
                .iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect();
            // SAFETY: argv/envp are NULL-terminated arrays of valid C strings.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fds.exe,
                    c"".as_ptr(),
                    argvp.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
            fail("exec agent", io::Error::last_os_error());
        }
        ExecTarget::Program { path, argv } => {
            let path = cstr(path.clone());
            let argv: Vec<CString> = argv.iter().map(|a| cstr(a.clone())).collect();
            let argvp: Vec<*const libc::c_char> = argv
                .iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect();
            // SAFETY: as above.
            unsafe { libc::execve(path.as_ptr(), argvp.as_ptr(), envp.as_ptr()) };
            fail("exec program", io::Error::last_os_error());
        }
    }
}
