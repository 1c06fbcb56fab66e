//! The pool of prepared sandbox slots: directories (and, on cgroup v1, cgroups) made ahead of
//! time by a background filler thread, so `create` only renames them.

use super::namespace_backend::Inner;
use super::sandbox_dirs::{remove_tree, rename_noreplace};
use super::{quota, step};
use crate::RuntimeError;
use crate::backend::Limits;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

/// Prepared sandbox slots (`<data>/sandboxes/.pool-*`, plus same-named cgroups on v1).
#[derive(Default)]
pub(super) struct PoolState {
    pub(super) slots: Vec<String>,
    pub(super) next: u64,
    pub(super) stopped: bool,
    /// The filler is making a slot (its disk quota is mounted): `drain_pool` waits for it.
    pub(super) making: bool,
}

/// Name prefix of prepared slots; never a valid sandbox id.
pub(super) const POOL_PREFIX: &str = ".pool-";
/// Hostname the pooled slots' `/etc` files are written for.
pub(super) const DEFAULT_HOSTNAME: &str = "sandbox";

impl Inner {
    /// Make one pool slot: directories and (v1) cgroups with default limits.
    pub(super) fn make_slot(&self) -> Result<String, RuntimeError> {
        let name = {
            let mut p = self.pool.lock().map_err(|_| step("pool", "lock poisoned"))?;
            p.next += 1;
            format!("{POOL_PREFIX}{}-{}", std::process::id(), p.next)
        };
        let sbx = self.prepare_dir(&name, DEFAULT_HOSTNAME, Limits::default().disk_mb)?;
        if self.cgroups.supports_rename()
            && let Err(e) = self.cgroups.create(&name, &Limits::default())
        {
            let _ = remove_tree(&sbx, &self.cfg.data_dir.join(".trash"));
            return Err(e);
        }
        Ok(name)
    }

    /// Take a prepared slot for sandbox `id`: rename its directory (and cgroups), write the
    /// limits and hostname. `Ok(None)` when no slot is ready.
    pub(super) fn claim_slot(
        &self,
        id: &str,
        hostname: &str,
        limits: &Limits,
    ) -> Result<Option<(PathBuf, bool)>, RuntimeError> {
        // slots carry a disk quota of the default size (quota.rs)
        if !quota::slot_fits(&*self.quota, Limits::default().disk_mb, limits.disk_mb) {
            return Ok(None);
        }
        let slot = match self.pool.lock() {
            Ok(mut p) => p.slots.pop(),
            Err(_) => None,
        };
        let Some(slot) = slot else { return Ok(None) };
        self.pool_cv.notify_one();
        let sbx = self.sandbox_dir(id);
        let from = self.sandbox_dir(&slot);
        let give_back = |slot: String| {
            if let Ok(mut p) = self.pool.lock() {
                p.slots.push(slot);
            }
        };
        if let Err(e) = rename_noreplace(&from, &sbx) {
            give_back(slot);
            return Err(
                if e.kind() == ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ENOTEMPTY) {
                    RuntimeError::InvalidSpec(format!("sandbox {id} already exists on this host"))
                } else {
                    step(
                        "sandbox dirs",
                        format!("renaming {} to {}: {e}", from.display(), sbx.display()),
                    )
                },
            );
        }
        let pooled_cgroups = self.cgroups.supports_rename();
        if pooled_cgroups && let Err(e) = self.cgroups.rename(&slot, id) {
            if rename_noreplace(&sbx, &from).is_ok() {
                give_back(slot);
            }
            return Err(e);
        }
        let finish = || -> Result<(), RuntimeError> {
            if pooled_cgroups {
                self.cgroups.apply_limits(id, limits)?;
            }
            if hostname != DEFAULT_HOSTNAME {
                self.write_host_files(&sbx, hostname)?;
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = self.cgroups.remove(id);
            let _ = remove_tree(&sbx, &self.cfg.data_dir.join(".trash"));
            return Err(e);
        }
        Ok(Some((sbx, pooled_cgroups)))
    }

    pub(super) fn drain_pool(&self) {
        let slots = match self.pool.lock() {
            Ok(mut p) => {
                p.stopped = true;
                // a slot being made has its disk quota mounted; the filler removes it itself
                // once it sees `stopped`: wait for that (a process exit would leak the mount)
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while p.making && std::time::Instant::now() < deadline {
                    p = match self.pool_cv.wait_timeout(p, Duration::from_millis(50)) {
                        Ok((g, _)) => g,
                        Err(_) => return,
                    };
                }
                std::mem::take(&mut p.slots)
            }
            Err(_) => return,
        };
        self.pool_cv.notify_all();
        for s in slots {
            let _ = self.cgroups.remove(&s);
            let _ = remove_tree(&self.sandbox_dir(&s), &self.cfg.data_dir.join(".trash"));
        }
    }
}

/// Keep `size` prepared slots; exits once the backend is gone or the pool is drained.
pub(super) fn pool_filler(weak: Weak<Inner>, size: usize) {
    // Background work: yield the CPU to creates in progress (nice applies per thread).
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let need = match inner.pool.lock() {
            Ok(p) if p.stopped => return,
            Ok(p) if p.slots.len() >= size => {
                let _ = inner.pool_cv.wait_timeout(p, Duration::from_millis(500));
                false
            }
            Ok(mut p) => {
                p.making = true;
                true
            }
            Err(_) => return,
        };
        if !need {
            continue;
        }
        let done_making = || {
            if let Ok(mut p) = inner.pool.lock() {
                p.making = false;
            }
            inner.pool_cv.notify_all();
        };
        match inner.make_slot() {
            Ok(name) => {
                let mut keep = Some(name);
                if let Ok(mut p) = inner.pool.lock()
                    && !p.stopped
                {
                    p.slots.extend(keep.take());
                }
                if let Some(name) = keep {
                    // drained meanwhile
                    let _ = inner.cgroups.remove(&name);
                    let _ = remove_tree(&inner.sandbox_dir(&name), &inner.cfg.data_dir.join(".trash"));
                    done_making();
                    return;
                }
                done_making();
            }
            Err(e) => {
                done_making();
                tracing::warn!("preparing a sandbox slot failed: {e}");
                drop(inner);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
