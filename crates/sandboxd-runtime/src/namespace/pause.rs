//! Pause and resume for the namespace backend (`docs/lifecycle.md`).
//!
//! - Memory pause freezes the sandbox's whole cgroup (`<root>/<id>`, so the agent and user
//!   processes): v1 `freezer.state = FROZEN`, v2 `cgroup.freeze = 1`. Resume thaws it; every
//!   process, socket and the boot id survive. A frozen sandbox uses no CPU.
//! - Filesystem-only pause kills every process (the pid namespace dies with its init) and
//!   removes the cgroups, but keeps the sandbox directory with its upper dirs. Resume boots a
//!   fresh agent on the same directory with a new boot id ([`NamespaceBackend::boot_existing`]).
//!
//! The freezer files are plain file I/O on the cgroup mounts, so the state machine is tested
//! against a fake tree.

use super::cgroup::CgroupLayout;
use super::names::is_valid_sandbox_id;
use super::namespace_backend::{AgentRecord, Inner};
use super::{ExecTarget, NamespaceBackend, step, sys};
use crate::RuntimeError;
use crate::backend::{AgentEndpoint, SandboxHandle, SandboxSpec};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a freeze or thaw may take before it counts as failed.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The freezer control files of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreezerFiles {
    /// v1: `<freezer mount>/<root>/<id>/freezer.state`.
    V1(PathBuf),
    /// v2: `<mount>/<root>/<id>/cgroup.freeze` and its `cgroup.events`.
    V2 {
        /// `cgroup.freeze`.
        freeze: PathBuf,
        /// `cgroup.events`.
        events: PathBuf,
    },
}

impl FreezerFiles {
    /// The files for sandbox `id` under cgroup root `root_name`; `None` without a freezer
    /// hierarchy (v1 without the `freezer` controller).
    pub fn of(layout: &CgroupLayout, root_name: &str, id: &str) -> Option<Self> {
        match layout {
            CgroupLayout::V1(hs) => hs
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == "freezer"))
                .map(|h| FreezerFiles::V1(h.mount.join(root_name).join(id).join("freezer.state"))),
            CgroupLayout::V2(m) => {
                let d = m.join(root_name).join(id);
                Some(FreezerFiles::V2 {
                    freeze: d.join("cgroup.freeze"),
                    events: d.join("cgroup.events"),
                })
            }
        }
    }

    fn control(&self) -> &Path {
        match self {
            FreezerFiles::V1(p) => p,
            FreezerFiles::V2 { freeze, .. } => freeze,
        }
    }

    /// Ask the kernel to freeze (`true`) or thaw (`false`).
    pub fn request(&self, frozen: bool) -> std::io::Result<()> {
        let v = match (self, frozen) {
            (FreezerFiles::V1(_), true) => "FROZEN",
            (FreezerFiles::V1(_), false) => "THAWED",
            (FreezerFiles::V2 { .. }, true) => "1",
            (FreezerFiles::V2 { .. }, false) => "0",
        };
        std::fs::write(self.control(), v)
    }

    /// Whether the group has reached the state: v1 reads `FROZEN`/`THAWED` (not `FREEZING`),
    /// v2 reads `frozen 1`/`frozen 0` from `cgroup.events`.
    pub fn reached(&self, frozen: bool) -> std::io::Result<bool> {
        match self {
            FreezerFiles::V1(p) => {
                let s = std::fs::read_to_string(p)?;
                Ok(s.trim() == if frozen { "FROZEN" } else { "THAWED" })
            }
            FreezerFiles::V2 { events, .. } => {
                let s = std::fs::read_to_string(events)?;
                let want = if frozen { "1" } else { "0" };
                Ok(s.lines()
                    .filter_map(|l| l.strip_prefix("frozen "))
                    .any(|v| v.trim() == want))
            }
        }
    }

    /// Whether the group is frozen or freezing (a missing group is not).
    pub fn is_frozen(&self) -> bool {
        match self {
            FreezerFiles::V1(p) => std::fs::read_to_string(p).is_ok_and(|s| s.trim() != "THAWED"),
            FreezerFiles::V2 { freeze, .. } => std::fs::read_to_string(freeze).is_ok_and(|s| s.trim() == "1"),
        }
    }

    /// Request a state and wait until the kernel reports it (or `timeout` passes).
    pub fn set_and_wait(&self, frozen: bool, timeout: Duration) -> Result<(), RuntimeError> {
        let what = if frozen { "freeze" } else { "thaw" };
        self.request(frozen).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                step("pause", format!("{what}: the sandbox's cgroup does not exist"))
            } else {
                step(
                    "pause",
                    format!("{what}: writing {}: {e}", self.control().display()),
                )
            }
        })?;
        let t0 = Instant::now();
        let mut delay = Duration::from_micros(200);
        loop {
            match self.reached(frozen) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(step("pause", format!("{what}: reading state: {e}"))),
            }
            if t0.elapsed() >= timeout {
                return Err(step(
                    "pause",
                    format!("{what} did not complete within {} ms", timeout.as_millis()),
                ));
            }
            // v1 re-checks the tasks only when the state file is written again
            if frozen && matches!(self, FreezerFiles::V1(_)) {
                let _ = self.request(true);
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }
}

impl Inner {
    fn freezer(&self, id: &str) -> Result<FreezerFiles, RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad sandbox id '{id}'")));
        }
        FreezerFiles::of(self.cgroups.layout(), &self.cfg.cgroup_root, id).ok_or_else(|| {
            RuntimeError::Unsupported("memory pause needs the cgroup v1 freezer controller".into())
        })
    }

    /// Freeze the sandbox's cgroup and wait until every task is frozen. On failure it is
    /// thawed again.
    pub(super) fn freeze(&self, id: &str) -> Result<(), RuntimeError> {
        let f = self.freezer(id)?;
        let r = f.set_and_wait(true, FREEZE_TIMEOUT);
        if r.is_err() {
            let _ = f.request(false);
        }
        r
    }

    /// Thaw the sandbox's cgroup and wait until it runs.
    pub(super) fn thaw_checked(&self, id: &str) -> Result<(), RuntimeError> {
        self.freezer(id)?.set_and_wait(false, FREEZE_TIMEOUT)
    }

    /// Whether the sandbox's cgroup is frozen.
    pub(super) fn is_frozen(&self, id: &str) -> bool {
        self.freezer(id).is_ok_and(|f| f.is_frozen())
    }

    /// Kill every process of the sandbox and remove its cgroups and sockets; keep the directory.
    pub(super) fn stop_keep_files(&self, id: &str) -> Result<(), RuntimeError> {
        if !is_valid_sandbox_id(id) {
            return Err(RuntimeError::InvalidSpec(format!("bad sandbox id '{id}'")));
        }
        let rec = self.agents.lock().ok().and_then(|mut m| m.remove(id));
        if !self.kill_processes(id, rec.as_ref(), 60) {
            return Err(step("pause", "processes of the sandbox did not exit"));
        }
        let mut cg = self.cgroups.remove(id);
        for _ in 0..50 {
            if cg.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            cg = self.cgroups.remove(id);
        }
        cg?;
        let run = self.sandbox_dir(id).join("run");
        for s in ["agent.sock", "control.sock"] {
            match std::fs::remove_file(run.join(s)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(step("pause", format!("removing {s}: {e}"))),
            }
        }
        Ok(())
    }

    /// Prepare a stopped sandbox's directory for a fresh boot: new boot id, stale sockets and
    /// overlay work dirs removed.
    fn prepare_reboot(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let sbx = self.sandbox_dir(id);
        for d in [
            "upper/root",
            "upper/usr",
            "work/root",
            "work/usr",
            "run",
            "rootfs",
        ] {
            if !sbx.join(d).is_dir() {
                return Err(step(
                    "resume",
                    format!(
                        "the files of sandbox {id} are gone ({} is missing)",
                        sbx.join(d).display()
                    ),
                ));
            }
        }
        for s in ["run/agent.sock", "run/control.sock"] {
            match std::fs::remove_file(sbx.join(s)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(step("resume", format!("removing {s}: {e}"))),
            }
        }
        // overlay's scratch dirs of the previous mount
        for d in ["work/root", "work/usr"] {
            if let Ok(rd) = std::fs::read_dir(sbx.join(d)) {
                for e in rd.flatten() {
                    let p = e.path();
                    let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    r.map_err(|e| step("resume", format!("clearing {}: {e}", p.display())))?;
                }
            }
        }
        let boot_id = sbx.join("boot_id");
        let _ = std::fs::remove_file(&boot_id);
        std::fs::write(&boot_id, format!("{}\n", sys::random_uuid()))
            .map_err(|e| step("resume", format!("writing boot_id: {e}")))?;
        Ok(sbx)
    }

    /// Spawn the agent on the existing directory (cgroups created fresh). On error, the new
    /// processes and cgroups are removed and the files are kept.
    pub(super) fn spawn_existing(&self, mut spec: SandboxSpec) -> Result<super::Spawned, RuntimeError> {
        // the same read-only binds and supervised services as at create
        let binds = self.complete_spec(&mut spec)?;
        let id = spec.id.clone();
        // leftovers of an interrupted pause or resume
        self.stop_keep_files(&id)?;
        super::quota::ensure_mounted(&self.sandbox_dir(&id))?; // host rebooted: mount the disk image again
        let sbx = self.prepare_reboot(&id)?;
        let r = self.spawn_prepared(&sbx, spec, ExecTarget::Agent, false, binds);
        if r.is_err() {
            let _ = self.stop_keep_files(&id);
        }
        r
    }
}

impl NamespaceBackend {
    /// Boot a fresh agent on a stopped sandbox's kept files and wait until it answers.
    pub(super) async fn boot_existing_impl(&self, spec: SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let id = spec.id.clone();
        // layered templates (code interpreter): the service must answer too, as at create
        let service_ready = super::layered_template::resolve(&spec.template).and_then(|t| t.ready);
        let inner = self.inner.clone();
        let spawned = tokio::task::spawn_blocking(move || inner.spawn_existing(spec))
            .await
            .map_err(|e| step("resume", e))??;
        let sbx = self.sandbox_dir(&id);
        let api = sbx.join("run/agent.sock");
        let pidfd = Arc::new(spawned.pidfd);
        let outcome = self.wait_booted(&sbx, &pidfd, service_ready.as_ref()).await;
        if let Ok(mut m) = self.inner.agents.lock() {
            m.insert(id.clone(), AgentRecord { pidfd: pidfd.clone() });
        }
        if let Err(e) = outcome {
            let inner = self.inner.clone();
            let id2 = id.clone();
            let _ = tokio::task::spawn_blocking(move || inner.stop_keep_files(&id2)).await;
            return Err(e);
        }
        Ok(SandboxHandle {
            id,
            agent_pid: spawned.pid,
            agent_start_time: spawned.start_time,
            api: AgentEndpoint::Unix(api),
            control: AgentEndpoint::Unix(sbx.join("run/control.sock")),
        })
    }

    /// Run a blocking lifecycle step on the blocking pool.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Inner) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| step(what, e))?
    }

    /// Whether the sandbox's cgroup is frozen (tests, diagnostics).
    pub fn is_frozen(&self, id: &str) -> bool {
        self.inner.is_frozen(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::cgroup::Hierarchy;

    #[test]
    fn v1_files_and_states() {
        let d = tempfile::tempdir().unwrap();
        let layout = CgroupLayout::V1(vec![
            Hierarchy {
                controllers: vec!["cpu".into()],
                mount: d.path().join("cpu"),
            },
            Hierarchy {
                controllers: vec!["freezer".into()],
                mount: d.path().join("freezer"),
            },
        ]);
        let f = FreezerFiles::of(&layout, "sandboxd", "abc").unwrap();
        assert_eq!(
            f,
            FreezerFiles::V1(d.path().join("freezer/sandboxd/abc/freezer.state"))
        );
        // a missing group: clear error, not frozen
        assert!(!f.is_frozen());
        let e = f.set_and_wait(true, Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        std::fs::create_dir_all(d.path().join("freezer/sandboxd/abc")).unwrap();
        std::fs::write(d.path().join("freezer/sandboxd/abc/freezer.state"), "THAWED\n").unwrap();
        // a fake file holds what was written, so the state is reached at once
        f.set_and_wait(true, Duration::from_millis(100)).unwrap();
        assert!(f.is_frozen());
        f.set_and_wait(false, Duration::from_millis(100)).unwrap();
        assert!(!f.is_frozen());
        // FREEZING never becoming FROZEN times out with a message
        std::fs::write(d.path().join("freezer/sandboxd/abc/freezer.state"), "FREEZING").unwrap();
        assert!(!f.reached(true).unwrap());
        assert!(f.is_frozen(), "FREEZING counts as frozen for the proxy");
    }

    #[test]
    fn v1_without_freezer() {
        let layout = CgroupLayout::V1(vec![Hierarchy {
            controllers: vec!["cpu".into()],
            mount: "/nonexistent".into(),
        }]);
        assert!(FreezerFiles::of(&layout, "sandboxd", "abc").is_none());
    }

    #[test]
    fn v2_events_decide() {
        let d = tempfile::tempdir().unwrap();
        let layout = CgroupLayout::V2(d.path().to_path_buf());
        let f = FreezerFiles::of(&layout, "sandboxd", "x1").unwrap();
        let g = d.path().join("sandboxd/x1");
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("cgroup.freeze"), "0").unwrap();
        std::fs::write(g.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        // requested but the kernel has not reported it yet: times out
        let e = f.set_and_wait(true, Duration::from_millis(30)).unwrap_err();
        assert!(e.to_string().contains("freeze did not complete"), "{e}");
        assert_eq!(std::fs::read_to_string(g.join("cgroup.freeze")).unwrap(), "1");
        std::fs::write(g.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        f.set_and_wait(true, Duration::from_millis(30)).unwrap();
        assert!(f.is_frozen());
        std::fs::write(g.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        f.set_and_wait(false, Duration::from_millis(30)).unwrap();
        assert!(!f.is_frozen());
    }
}
