//! Re-adoption for the namespace backend (`docs/lifecycle.md`): a daemon that starts again
//! attaches to the sandboxes of its predecessor. An agent is identified by its pid, its start
//! time from `/proc/<pid>/stat` (so a reused pid is not mistaken for it) and its cgroup (so an
//! unrelated process that happens to match is not either). Nothing here contacts the agent: it
//! may be frozen.

use super::names::is_valid_sandbox_id;
use super::namespace_backend::AgentRecord;
use super::{NamespaceBackend, step, sys};
use crate::RuntimeError;
use crate::backend::{Adopted, AgentEndpoint, SandboxHandle};
use std::sync::Arc;

/// Whether a `/proc/<pid>/cgroup` text puts the process in sandbox `id`'s agent group under
/// cgroup root `root` (v1: any hierarchy line; v2: the `0::` line).
pub fn in_agent_cgroup(proc_cgroup: &str, root: &str, id: &str) -> bool {
    let want = format!("/{root}/{id}/agent");
    proc_cgroup.lines().any(|l| {
        let path = l.splitn(3, ':').nth(2).unwrap_or("");
        path == want || path.ends_with(&want)
    })
}

impl NamespaceBackend {
    /// See [`crate::SandboxBackend::adopt`].
    pub(super) async fn adopt_impl(&self, id: &str, pid: i32, start: u64) -> Result<Adopted, RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad sandbox id '{id}'")));
        }
        let sbx = self.sandbox_dir(id);
        // after a host reboot the disk quota image is no longer mounted (quota.rs)
        if let Err(e) = super::quota::ensure_mounted(&sbx) {
            tracing::warn!(sandbox = %id, "mounting its disk image again: {e}");
        }
        let files = sbx.join("upper/root").is_dir() && sbx.join("upper/usr").is_dir();
        let root = self.inner.cfg.cgroup_root.clone();
        // Only evidence that the agent is gone makes it "not alive"; a failed check is an error
        // (the caller keeps the sandbox rather than destroying a live one).
        let check = |pid, start| match sys::liveness(pid, start) {
            sys::Liveness::Alive => Ok(true),
            sys::Liveness::Gone => Ok(false),
            sys::Liveness::Unknown(e) => Err(step("adopt", format!("reading /proc/{pid}/stat: {e}"))),
        };
        let pidfd = if pid > 0 && check(pid, start)? {
            match sys::pidfd_open(pid) {
                Ok(fd) => {
                    // The pidfd pins this exact process: check the start time and cgroup once more.
                    let cgroup = match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
                        Ok(c) => c,
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
                            String::new()
                        }
                        Err(e) => return Err(step("adopt", format!("reading /proc/{pid}/cgroup: {e}"))),
                    };
                    let ours = check(pid, start)? && in_agent_cgroup(&cgroup, &root, id);
                    ours.then_some(fd)
                }
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
                Err(e) => return Err(step("adopt", format!("pidfd_open({pid}): {e}"))),
            }
        } else {
            None
        };
        let agent_alive = pidfd.is_some();
        if let Some(fd) = pidfd
            && let Ok(mut m) = self.inner.agents.lock()
        {
            m.insert(id.to_string(), AgentRecord { pidfd: Arc::new(fd) });
        }
        Ok(Adopted {
            handle: SandboxHandle {
                id: id.to_string(),
                agent_pid: pid,
                agent_start_time: start,
                api: AgentEndpoint::Unix(sbx.join("run/agent.sock")),
                control: AgentEndpoint::Unix(sbx.join("run/control.sock")),
            },
            agent_alive,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_cgroup_lines() {
        let v1 = "12:freezer:/sandboxd/abc/agent\n11:cpu:/sandboxd/abc/agent\n0::/user.slice\n";
        assert!(in_agent_cgroup(v1, "sandboxd", "abc"));
        assert!(!in_agent_cgroup(v1, "sandboxd", "ab"));
        assert!(!in_agent_cgroup(v1, "other", "abc"));
        // a user process in the work group is not the agent
        assert!(!in_agent_cgroup("4:pids:/sandboxd/abc/work\n", "sandboxd", "abc"));
        // v2, and a daemon that itself runs inside a nested cgroup (paths seen from its ns)
        assert!(in_agent_cgroup(
            "0::/sandboxd-1a2b/x9/agent\n",
            "sandboxd-1a2b",
            "x9"
        ));
        assert!(in_agent_cgroup(
            "0::/system.slice/sandboxd/x9/agent\n",
            "sandboxd",
            "x9"
        ));
        assert!(!in_agent_cgroup("", "sandboxd", "x9"));
    }
}
