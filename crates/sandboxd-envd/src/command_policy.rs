//! The sandbox's command policy (`allowedCommands`, `docs/command-policy.md`) as the agent
//! applies it. The sandbox's init resolved the allowed programs and built two Landlock rulesets
//! (`sandboxd_runtime::namespace::command_policy`); the agent inherits their fds and the loader
//! guard's, and every process it starts installs one ruleset between fork and exec
//! ([`crate::workload::enter`]): the workload's for everything a request starts (commands,
//! PTYs, services), the helpers' for what the daemon starts on the control socket for itself.
//! The kernel then checks every `execve`: nothing a workload starts — a shell, `env`,
//! `python -c 'os.execv(...)'`, a copied binary, `sudo` — can execute another file.

use sandboxd_protocol::agent::CommandPolicyFds;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

/// The policy in force in this agent.
#[derive(Debug)]
pub struct CommandPolicy {
    workload: OwnedFd,
    helpers: OwnedFd,
    /// Keeps the `binfmt_misc` instance (the loader guard) alive for the agent's life.
    _loader_guard: OwnedFd,
    /// The names as asked.
    pub asked: Vec<String>,
}

static POLICY: OnceLock<CommandPolicy> = OnceLock::new();

/// Take over the inherited fds of the policy (made close-on-exec). Call once, at boot, before
/// any process starts; later calls fail.
pub fn install(asked: &[String], fds: &CommandPolicyFds) -> io::Result<()> {
    let take = |fd: RawFd| -> io::Result<OwnedFd> {
        crate::pid1::set_cloexec(fd)?;
        // SAFETY: the runtime hands this descriptor to the agent; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let policy = CommandPolicy {
        workload: take(fds.workload_ruleset)?,
        helpers: take(fds.helper_ruleset)?,
        _loader_guard: take(fds.loader_guard)?,
        asked: asked.to_vec(),
    };
    POLICY
        .set(policy)
        .map_err(|_| io::Error::other("command policy already set"))
}

/// The policy of this agent, if its sandbox has one.
pub fn current() -> Option<&'static CommandPolicy> {
    POLICY.get()
}

/// The ruleset a process installs: the helpers' for the daemon's own programs, else the
/// workload's; `None` without a policy.
pub fn ruleset_fd(helper: bool) -> Option<RawFd> {
    POLICY.get().map(|p| {
        if helper {
            p.helpers.as_raw_fd()
        } else {
            p.workload.as_raw_fd()
        }
    })
}

/// Between fork and exec: put the calling process under `ruleset`. Async-signal-safe (one
/// syscall). Needs `CAP_SYS_ADMIN` in the current user namespace or `no_new_privs`; workload
/// processes have the former right after joining their namespace, so setuid programs (`sudo`)
/// keep working — inside the same domain.
pub fn restrict(ruleset: RawFd) -> io::Result<()> {
    // SAFETY: a plain syscall on an fd the agent holds for its whole life.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `program` (looked up on the `PATH` of `env`) is one of the loaders the loader guard
/// covers, by its canonical path.
pub fn is_guarded_loader(program: &str, env: &std::collections::BTreeMap<String, String>) -> bool {
    let path = if program.contains('/') {
        std::path::PathBuf::from(program)
    } else {
        match env.get("PATH").and_then(|p| {
            p.split(':')
                .map(|d| std::path::Path::new(d).join(program))
                .find(|c| c.is_file())
        }) {
            Some(p) => p,
            None => return false,
        }
    };
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    sandboxd_protocol::agent::GUARDED_LOADERS
        .iter()
        .any(|l| std::fs::canonicalize(l).is_ok_and(|c| c == real))
}

/// Why a process under a policy ended with a shell's "cannot execute" status (126): the
/// kernel refused a program it tried to run (bash prints `Permission denied`, which does not
/// say why). `None` without a policy or for any other status.
pub fn explain_exit(status: crate::pid1::ExitStatus) -> Option<String> {
    let p = current()?;
    matches!(status, crate::pid1::ExitStatus::Exited(126)).then(|| {
        format!(
            "command not allowed: exit status 126, a program could not be executed; this sandbox runs only its allowed commands ({})",
            p.asked.join(", ")
        )
    })
}

/// The message of a start the policy refused.
pub fn not_allowed_message(program: &str) -> String {
    match current() {
        Some(p) => format!(
            "command not allowed: '{program}' is not one of this sandbox's allowed commands ({})",
            p.asked.join(", ")
        ),
        None => format!("command not allowed: '{program}'"),
    }
}
