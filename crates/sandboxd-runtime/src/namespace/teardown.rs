//! Destroying a sandbox: kill its processes (thawing frozen ones), remove its cgroups with
//! retries and move its directory to the trash.

use super::names::is_valid_sandbox_id;
use super::namespace_backend::{AgentRecord, Inner};
use super::sandbox_dirs::move_to_trash;
use super::sys;
use crate::RuntimeError;
use std::time::Duration;

impl Inner {
    /// Kill everything of sandbox `id` and remove its cgroups and directory.
    pub(super) fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad sandbox id '{id}'")));
        }
        let t0 = std::time::Instant::now();
        let timing = std::env::var_os("SANDBOXD_RUNTIME_TIMING").is_some();
        let rec = self.agents.lock().ok().and_then(|mut m| m.remove(id));
        self.kill_processes(id, rec.as_ref(), 40);
        if timing {
            eprintln!("timing destroy {id}: processes gone at {:?}", t0.elapsed());
        }
        // A killed task keeps its cgroup busy until it has fully exited (mount and network
        // namespace teardown can take a while on a busy host): retry for up to ~5 s.
        let mut cg = self.cgroups.remove(id);
        let mut delay = 5;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cg.is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(delay));
            delay = (delay * 2).min(200);
            cg = self.cgroups.remove(id);
        }
        if timing {
            eprintln!("timing destroy {id}: cgroups removed at {:?}", t0.elapsed());
        }
        // The id is free once the directory is in the trash; deleting the files (large upper
        // dirs take a while) happens on a background thread.
        let dir = move_to_trash(&self.sandbox_dir(id), &self.cfg.data_dir.join(".trash")).map(|t| {
            if let Some(t) = t {
                self.delete_later(t);
            }
        });
        if timing {
            eprintln!("timing destroy {id}: dir removed at {:?}", t0.elapsed());
        }
        cg?;
        dir
    }

    /// SIGKILL the sandbox's agent (the pid namespace goes with it), then any task still in its
    /// cgroups (a sandbox of an earlier daemon, or a half-dead one), thawing after each signal
    /// because a killed frozen task only dies once thawed. Gives up after `rounds` tries with
    /// backoff; returns whether no task is left.
    pub(super) fn kill_processes(&self, id: &str, agent: Option<&AgentRecord>, rounds: u32) -> bool {
        if let Some(rec) = agent {
            let _ = sys::pidfd_send_signal(&rec.pidfd, libc::SIGKILL);
            self.cgroups.thaw(id);
            sys::pidfd_wait_exit(&rec.pidfd, 5000);
        }
        let mut delay = 2;
        for _ in 0..rounds {
            let pids = self.cgroups.pids(id);
            if pids.is_empty() {
                return true;
            }
            if !self.cgroups.kill_v2(id) {
                for p in pids {
                    if let Ok(fd) = sys::pidfd_open(p) {
                        let _ = sys::pidfd_send_signal(&fd, libc::SIGKILL);
                    }
                }
            }
            self.cgroups.thaw(id);
            std::thread::sleep(Duration::from_millis(delay));
            delay = (delay * 2).min(100);
        }
        self.cgroups.pids(id).is_empty()
    }
}
