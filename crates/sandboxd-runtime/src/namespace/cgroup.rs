//! cgroup management for sandboxes, on cgroup v1 (one directory per hierarchy) and v2.
//!
//! Layout, under a configurable root name (default `sandboxd`) in each hierarchy:
//! `<root>/<id>/agent` holds the agent (no limits of its own, so user processes cannot starve
//! it; its OOM score keeps it out of the sandbox's OOM kills) and `<root>/<id>/work` holds user
//! processes (cpu quota, memory with swap 0, pids). `<root>/<id>` itself has one memory limit
//! for both: `memoryMB` plus [`AGENT_MEMORY_RESERVE_MB`], so memory the agent uses on the
//! sandbox's behalf (files it writes into the sandbox's tmpfs) is charged to the sandbox.
//! Everything here is plain file I/O on a mount path, so tests run against a fake tree.

use crate::RuntimeError;
use crate::backend::Limits;
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// v1 controllers sandboxd uses (others, such as `devices` and `name=systemd`, are ignored).
pub const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio"];
/// v2 controllers sandboxd enables for its subtree when available.
pub const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];
/// Memory the agent may use on top of `memoryMB` (the limit of `<id>` is their sum).
pub const AGENT_MEMORY_RESERVE_MB: u64 = 64;
/// CFS period used for cpu quotas (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Controllers attached to this mount (v1), for example `["cpu"]` or `["cpu", "cpuacct"]`.
    pub controllers: Vec<String>,
    /// Mount point.
    pub mount: PathBuf,
}

impl Hierarchy {
    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

/// Which cgroup version is used and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v1: one mount per (group of) controller(s).
    V1(Vec<Hierarchy>),
    /// cgroup v2: the unified mount.
    V2(PathBuf),
}

/// Undo the octal escapes (`\040` for space, ...) of `/proc/self/mountinfo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl CgroupLayout {
    /// Find the cgroup mounts in the text of `/proc/self/mountinfo`. v1 is used when the
    /// `memory` controller is mounted as v1 (hybrid hosts); otherwise the unified mount.
    pub fn from_mountinfo(text: &str) -> Result<Self, RuntimeError> {
        let mut v1: Vec<Hierarchy> = Vec::new();
        let mut v2: Option<PathBuf> = None;
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let (root, mount) = (pre[3], unescape_mountinfo(pre[4]));
            if root != "/" {
                continue; // a bind of a sub-cgroup: not a hierarchy root
            }
            match post[0] {
                "cgroup" => {
                    let controllers: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o))
                        .map(str::to_string)
                        .collect();
                    if !controllers.is_empty() && !v1.iter().any(|h| h.mount == Path::new(&mount)) {
                        v1.push(Hierarchy {
                            controllers,
                            mount: PathBuf::from(mount),
                        });
                    }
                }
                "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(mount)),
                _ => {}
            }
        }
        if v1.iter().any(|h| h.has("memory")) {
            return Ok(Self::V1(v1));
        }
        if let Some(m) = v2 {
            return Ok(Self::V2(m));
        }
        Err(RuntimeError::Unsupported(
            "no usable cgroup mount (neither a v1 memory hierarchy nor cgroup2) in /proc/self/mountinfo"
                .into(),
        ))
    }

    /// Read `/proc/self/mountinfo` of the calling process.
    pub fn detect() -> Result<Self, RuntimeError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Self::from_mountinfo(&text)
    }
}

fn step(message: String) -> RuntimeError {
    RuntimeError::Step {
        step: "cgroup",
        message,
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), RuntimeError> {
    std::fs::write(path, value)
        .map_err(|e| step(format!("writing '{}' to {}: {e}", value.trim(), path.display())))
}

fn read_trimmed(path: &Path) -> Result<String, RuntimeError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| step(format!("reading {}: {e}", path.display())))
}

fn mkdir(path: &Path) -> Result<bool, RuntimeError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(step(format!("creating {}: {e}", path.display()))),
    }
}

fn rmdir(path: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(step(format!("removing {}: {e}", path.display()))),
    }
}

/// The sandbox cgroups of one host.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: CgroupLayout,
    root_name: String,
    /// v1: `memory.memsw.*` exists; v2: `memory.swap.max` exists.
    swap_files: bool,
    /// v2: controllers enabled for our subtree.
    v2_controllers: Vec<String>,
}

/// The files a process writes `0` to in order to move itself into one of the sandbox's two
/// groups: on v1 the `tasks` file of each hierarchy (moving the calling thread only, which for
/// a freshly forked single-threaded process is the whole process, and which skips the global
/// threadgroup lock and its RCU grace period that `cgroup.procs` writes pay on v1, about
/// 1 ms each), on v2 the one `cgroup.procs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxCgroupFiles {
    /// `<id>/agent/{tasks|cgroup.procs}`, one per hierarchy.
    pub agent_procs: Vec<PathBuf>,
    /// `<id>/work/{tasks|cgroup.procs}`, one per hierarchy.
    pub work_procs: Vec<PathBuf>,
    /// The `work` group's counter files the agent reads (opened read-only for it).
    pub work_counters: WorkCounterFiles,
}

/// Counter files of a sandbox's `work` group (`None` where the controller is not mounted):
/// the agent reads them to explain a failed process (`docs/limits.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkCounterFiles {
    /// `pids.events` (`max N`: refused forks).
    pub pids_events: Option<PathBuf>,
    /// `pids.max`.
    pub pids_max: Option<PathBuf>,
    /// v2 `memory.events`, v1 `memory.oom_control` (`oom_kill N`).
    pub memory_events: Option<PathBuf>,
    /// v2 `memory.max`, v1 `memory.limit_in_bytes`.
    pub memory_max: Option<PathBuf>,
}

impl Cgroups {
    /// Prepare `<root_name>` in every hierarchy (v1: cpuset values copied; v2: controllers
    /// enabled) and detect optional files.
    pub fn init(layout: CgroupLayout, root_name: &str) -> Result<Self, RuntimeError> {
        if root_name.is_empty()
            || root_name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || root_name.starts_with('/')
        {
            return Err(RuntimeError::InvalidSpec(format!(
                "bad cgroup root name '{root_name}'"
            )));
        }
        let mut me = Self {
            layout,
            root_name: root_name.to_string(),
            swap_files: false,
            v2_controllers: Vec::new(),
        };
        match &me.layout {
            CgroupLayout::V1(hs) => {
                for h in hs {
                    let mut dir = h.mount.clone();
                    for comp in root_name.split('/') {
                        let parent = dir.clone();
                        dir.push(comp);
                        mkdir(&dir)?;
                        if h.has("cpuset") {
                            copy_cpuset(&parent, &dir)?;
                        }
                    }
                    if h.has("memory") {
                        me.swap_files = h.mount.join("memory.memsw.limit_in_bytes").exists();
                    }
                }
            }
            CgroupLayout::V2(mount) => {
                let available = read_trimmed(&mount.join("cgroup.controllers"))?;
                let wanted: Vec<String> = V2_CONTROLLERS
                    .iter()
                    .filter(|c| available.split_whitespace().any(|a| a == **c))
                    .map(|c| c.to_string())
                    .collect();
                let enable = wanted
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut dir = mount.clone();
                for comp in root_name.split('/') {
                    if !enable.is_empty() {
                        write_file(&dir.join("cgroup.subtree_control"), &enable)?;
                    }
                    dir.push(comp);
                    mkdir(&dir)?;
                }
                if !enable.is_empty() {
                    write_file(&dir.join("cgroup.subtree_control"), &enable)?;
                }
                me.swap_files = dir.join("memory.swap.max").exists();
                me.v2_controllers = wanted;
            }
        }
        Ok(me)
    }

    /// The layout in use.
    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// `<mount>/<root>` of every hierarchy used.
    fn roots(&self) -> Vec<PathBuf> {
        match &self.layout {
            CgroupLayout::V1(hs) => hs.iter().map(|h| h.mount.join(&self.root_name)).collect(),
            CgroupLayout::V2(m) => vec![m.join(&self.root_name)],
        }
    }

    /// The two groups' self-move files of sandbox `id` (whether or not they exist); see
    /// [`SandboxCgroupFiles`].
    pub fn files(&self, id: &str) -> SandboxCgroupFiles {
        let name = match self.layout {
            CgroupLayout::V1(_) => "tasks",
            CgroupLayout::V2(_) => "cgroup.procs",
        };
        let mut f = SandboxCgroupFiles::default();
        for r in self.roots() {
            f.agent_procs.push(r.join(id).join("agent").join(name));
            f.work_procs.push(r.join(id).join("work").join(name));
        }
        f.work_counters = self.work_counter_files(id);
        f
    }

    /// The counter files of sandbox `id`'s `work` group; see [`WorkCounterFiles`].
    pub fn work_counter_files(&self, id: &str) -> WorkCounterFiles {
        let work = |mount: &Path| mount.join(&self.root_name).join(id).join("work");
        match &self.layout {
            CgroupLayout::V1(hs) => {
                let mut c = WorkCounterFiles::default();
                for h in hs {
                    if h.has("pids") {
                        c.pids_events = Some(work(&h.mount).join("pids.events"));
                        c.pids_max = Some(work(&h.mount).join("pids.max"));
                    }
                    if h.has("memory") {
                        c.memory_events = Some(work(&h.mount).join("memory.oom_control"));
                        c.memory_max = Some(work(&h.mount).join("memory.limit_in_bytes"));
                    }
                }
                c
            }
            CgroupLayout::V2(m) => {
                let has = |c: &str| self.v2_controllers.iter().any(|x| x == c);
                let w = work(m);
                WorkCounterFiles {
                    pids_events: has("pids").then(|| w.join("pids.events")),
                    pids_max: has("pids").then(|| w.join("pids.max")),
                    memory_events: has("memory").then(|| w.join("memory.events")),
                    memory_max: has("memory").then(|| w.join("memory.max")),
                }
            }
        }
    }

    /// Create `<id>`, `<id>/agent` and `<id>/work` and write the limits (see [`Self::apply_limits`]). On error,
    /// whatever was created is removed again.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<SandboxCgroupFiles, RuntimeError> {
        let mut created = Vec::new();
        let r = self.create_inner(id, limits, &mut created);
        if r.is_err() {
            for d in created.iter().rev() {
                let _ = rmdir_cgroup(d);
            }
        }
        r
    }

    fn create_inner(
        &self,
        id: &str,
        limits: &Limits,
        created: &mut Vec<PathBuf>,
    ) -> Result<SandboxCgroupFiles, RuntimeError> {
        let mut mk = |d: &Path| -> Result<(), RuntimeError> {
            if !mkdir(d)? {
                return Err(step(format!("{} already exists", d.display())));
            }
            created.push(d.to_path_buf());
            Ok(())
        };
        match &self.layout {
            CgroupLayout::V1(hs) => {
                for h in hs {
                    let root = h.mount.join(&self.root_name);
                    let sb = root.join(id);
                    let (agent, work) = (sb.join("agent"), sb.join("work"));
                    mk(&sb)?;
                    mk(&agent)?;
                    mk(&work)?;
                    if h.has("cpuset") {
                        copy_cpuset(&root, &sb)?;
                        copy_cpuset(&sb, &agent)?;
                        copy_cpuset(&sb, &work)?;
                    }
                }
            }
            CgroupLayout::V2(m) => {
                let sb = m.join(&self.root_name).join(id);
                mk(&sb)?;
                if !self.v2_controllers.is_empty() {
                    let enable = self
                        .v2_controllers
                        .iter()
                        .map(|c| format!("+{c}"))
                        .collect::<Vec<_>>();
                    write_file(&sb.join("cgroup.subtree_control"), &enable.join(" "))?;
                }
                mk(&sb.join("agent"))?;
                mk(&sb.join("work"))?;
            }
        }
        self.apply_limits(id, limits)?;
        Ok(self.files(id))
    }

    /// Write the limits of the sandbox's `work` group and the memory limit of the whole sandbox
    /// (also to change them later).
    pub fn apply_limits(&self, id: &str, limits: &Limits) -> Result<(), RuntimeError> {
        let quota = (limits.cpu_count as u64).saturating_mul(CPU_PERIOD_US);
        let memory = limits.memory_mb.saturating_mul(1 << 20).to_string();
        let sandbox_memory = limits
            .memory_mb
            .saturating_add(AGENT_MEMORY_RESERVE_MB)
            .saturating_mul(1 << 20)
            .to_string();
        match &self.layout {
            CgroupLayout::V1(hs) => {
                for h in hs {
                    let sb = h.mount.join(&self.root_name).join(id);
                    let work = sb.join("work");
                    if h.has("cpu") {
                        write_file(&work.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write_file(&work.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                    if h.has("memory") {
                        for (dir, bytes) in [(&sb, &sandbox_memory), (&work, &memory)] {
                            if self.swap_files {
                                // memory+swap must never be below memory: lift it, set memory,
                                // then set memory+swap equal to memory (no swap).
                                write_file(&dir.join("memory.memsw.limit_in_bytes"), "-1")?;
                                write_file(&dir.join("memory.limit_in_bytes"), bytes)?;
                                write_file(&dir.join("memory.memsw.limit_in_bytes"), bytes)?;
                            } else {
                                write_file(&dir.join("memory.limit_in_bytes"), bytes)?;
                                write_file(&dir.join("memory.swappiness"), "0")?;
                            }
                        }
                    }
                    if h.has("pids") {
                        write_file(&work.join("pids.max"), &limits.pids.to_string())?;
                    }
                }
            }
            CgroupLayout::V2(m) => {
                let sb = m.join(&self.root_name).join(id);
                let work = sb.join("work");
                let has = |c: &str| self.v2_controllers.iter().any(|x| x == c);
                if has("cpu") {
                    write_file(&work.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if has("memory") {
                    for (dir, bytes) in [(&sb, &sandbox_memory), (&work, &memory)] {
                        write_file(&dir.join("memory.max"), bytes)?;
                        if self.swap_files {
                            write_file(&dir.join("memory.swap.max"), "0")?;
                        }
                    }
                }
                if has("pids") {
                    write_file(&work.join("pids.max"), &limits.pids.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Whether groups can be renamed (v1 only; cgroup v2 refuses `rename(2)`), which lets the
    /// backend prepare groups ahead of time under a pool name.
    pub fn supports_rename(&self) -> bool {
        matches!(self.layout, CgroupLayout::V1(_))
    }

    /// Rename the groups of `from` to `to` in every hierarchy. Fails without changes if `to`
    /// exists anywhere; a failure midway renames the moved ones back.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), RuntimeError> {
        let roots = self.roots();
        if let Some(r) = roots.iter().find(|r| r.join(to).exists()) {
            return Err(step(format!("{} already exists", r.join(to).display())));
        }
        for (i, r) in roots.iter().enumerate() {
            if let Err(e) = std::fs::rename(r.join(from), r.join(to)) {
                for r in &roots[..i] {
                    let _ = std::fs::rename(r.join(to), r.join(from));
                }
                return Err(step(format!("renaming {} to {to}: {e}", r.join(from).display())));
            }
        }
        Ok(())
    }

    /// Pids of every process in the sandbox's groups (union over hierarchies).
    pub fn pids(&self, id: &str) -> Vec<i32> {
        let mut set = BTreeSet::new();
        for r in self.roots() {
            for g in ["agent", "work", ""] {
                let p = r.join(id).join(g).join("cgroup.procs");
                if let Ok(s) = std::fs::read_to_string(&p) {
                    set.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
                }
            }
        }
        set.into_iter().collect()
    }

    /// Thaw the sandbox if a freezer froze it (a SIGKILLed frozen task only dies once thawed).
    pub fn thaw(&self, id: &str) {
        match &self.layout {
            CgroupLayout::V1(hs) => {
                for h in hs.iter().filter(|h| h.has("freezer")) {
                    let f = h.mount.join(&self.root_name).join(id).join("freezer.state");
                    if f.exists() {
                        let _ = std::fs::write(&f, "THAWED");
                    }
                }
            }
            CgroupLayout::V2(m) => {
                let f = m.join(&self.root_name).join(id).join("cgroup.freeze");
                if f.exists() {
                    let _ = std::fs::write(&f, "0");
                }
            }
        }
    }

    /// v2 only: kill every process of the sandbox with `cgroup.kill`. Returns whether the
    /// kernel supports it.
    pub fn kill_v2(&self, id: &str) -> bool {
        if let CgroupLayout::V2(m) = &self.layout {
            let f = m.join(&self.root_name).join(id).join("cgroup.kill");
            if f.exists() {
                return std::fs::write(&f, "1").is_ok();
            }
        }
        false
    }

    /// Remove the sandbox's groups (children first). Missing groups are fine; a group that
    /// still has processes gives an error (`EBUSY`).
    pub fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut first_err = None;
        for r in self.roots() {
            let sb = r.join(id);
            for d in [sb.join("work"), sb.join("agent"), sb.clone()] {
                if let Err(e) = rmdir_cgroup(&d) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Remove `<root>` (and its parents below the mount, for nested root names) in every
    /// hierarchy where it has no sandbox groups left. Best effort.
    pub fn remove_root_if_empty(&self) {
        let mounts: Vec<PathBuf> = match &self.layout {
            CgroupLayout::V1(hs) => hs.iter().map(|h| h.mount.clone()).collect(),
            CgroupLayout::V2(m) => vec![m.clone()],
        };
        for m in mounts {
            let mut dir = m.join(&self.root_name);
            while dir != m && dir.starts_with(&m) {
                if rmdir_cgroup(&dir).is_err() {
                    break;
                }
                if !dir.pop() {
                    break;
                }
            }
        }
    }

    /// Ids of sandbox groups that exist under the root in any hierarchy.
    pub fn list(&self) -> Vec<String> {
        let mut ids = BTreeSet::new();
        for r in self.roots() {
            if let Ok(rd) = std::fs::read_dir(&r) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false)
                        && let Some(n) = e.file_name().to_str()
                    {
                        ids.insert(n.to_string());
                    }
                }
            }
        }
        ids.into_iter().collect()
    }
}

/// Remove one cgroup directory. A real cgroupfs directory contains only control files and
/// rmdir removes it whole; in a fake tree (tests) the plain files are removed first.
fn rmdir_cgroup(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty && !is_cgroupfs(dir) => {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for ent in rd.flatten() {
                    if ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
                        let _ = std::fs::remove_file(ent.path());
                    }
                }
            }
            rmdir(dir)
        }
        Err(e) => Err(step(format!("removing {}: {e}", dir.display()))),
    }
}

fn is_cgroupfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| {
            let t = s.filesystem_type();
            t == nix::sys::statfs::CGROUP_SUPER_MAGIC || t == nix::sys::statfs::CGROUP2_SUPER_MAGIC
        })
        .unwrap_or(false)
}

/// v1 cpuset groups start with empty `cpuset.cpus`/`cpuset.mems`: copy the parent's.
fn copy_cpuset(parent: &Path, child: &Path) -> Result<(), RuntimeError> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = std::fs::read_to_string(child.join(f)).unwrap_or_default();
        if cur.trim().is_empty() {
            let v = read_trimmed(&parent.join(f))?;
            write_file(&child.join(f), &v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_hybrid_mountinfo_as_v1() {
        let l = CgroupLayout::from_mountinfo(HYBRID).unwrap();
        let CgroupLayout::V1(hs) = l else {
            panic!("expected v1")
        };
        let names: Vec<_> = hs.iter().map(|h| h.controllers.join(",")).collect();
        assert_eq!(
            names,
            ["cpu", "cpuacct", "cpuset", "memory", "freezer", "blkio", "pids"]
        );
        assert_eq!(hs[3].mount, PathBuf::from("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn parses_combined_and_escaped_mounts() {
        let text = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /my\\040cgroups/memory rw - cgroup cgroup rw,memory
36 31 0:32 /nested /elsewhere rw - cgroup cgroup rw,memory
";
        let CgroupLayout::V1(hs) = CgroupLayout::from_mountinfo(text).unwrap() else {
            panic!()
        };
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(hs[1].mount, PathBuf::from("/my cgroups/memory"));
    }

    #[test]
    fn parses_pure_v2_and_rejects_none() {
        let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            CgroupLayout::from_mountinfo(text).unwrap(),
            CgroupLayout::V2(PathBuf::from("/sys/fs/cgroup"))
        );
        assert!(CgroupLayout::from_mountinfo("25 1 254:0 / / rw - ext4 /dev/vda rw\n").is_err());
    }

    fn limits() -> Limits {
        Limits {
            cpu_count: 2,
            memory_mb: 256,
            disk_mb: 1024,
            pids: 100,
        }
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap().trim().to_string()
    }

    #[test]
    fn v2_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        std::fs::write(
            m.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        std::fs::create_dir(m.join("sandboxd")).unwrap();
        std::fs::write(m.join("sandboxd/memory.swap.max"), "max\n").unwrap();
        let cg = Cgroups::init(CgroupLayout::V2(m.to_path_buf()), "sandboxd").unwrap();
        assert_eq!(read(&m.join("cgroup.subtree_control")), "+cpu +memory +pids +io");
        assert_eq!(
            read(&m.join("sandboxd/cgroup.subtree_control")),
            "+cpu +memory +pids +io"
        );

        assert!(!cg.supports_rename());
        let files = cg.create("abc", &limits()).unwrap();
        let w = m.join("sandboxd/abc/work");
        assert_eq!(
            read(&m.join("sandboxd/abc/cgroup.subtree_control")),
            "+cpu +memory +pids +io"
        );
        assert_eq!(read(&w.join("cpu.max")), "200000 100000");
        assert_eq!(read(&w.join("memory.max")), (256u64 << 20).to_string());
        assert_eq!(read(&w.join("memory.swap.max")), "0");
        assert_eq!(read(&w.join("pids.max")), "100");
        assert_eq!(
            files.work_counters,
            WorkCounterFiles {
                pids_events: Some(w.join("pids.events")),
                pids_max: Some(w.join("pids.max")),
                memory_events: Some(w.join("memory.events")),
                memory_max: Some(w.join("memory.max")),
            }
        );
        assert!(
            !m.join("sandboxd/abc/agent/memory.max").exists(),
            "agent has no limits of its own"
        );
        // one limit over agent and work: memoryMB plus the agent's reserve, no swap
        assert_eq!(
            read(&m.join("sandboxd/abc/memory.max")),
            ((256 + AGENT_MEMORY_RESERVE_MB) << 20).to_string()
        );
        assert_eq!(read(&m.join("sandboxd/abc/memory.swap.max")), "0");
        assert_eq!(files.work_procs, vec![w.join("cgroup.procs")]);
        assert_eq!(files.agent_procs, vec![m.join("sandboxd/abc/agent/cgroup.procs")]);

        // creating twice is an error and does not destroy the first
        assert!(cg.create("abc", &limits()).is_err());
        std::fs::write(m.join("sandboxd/abc/work/cgroup.procs"), "12\n13\n").unwrap();
        std::fs::write(m.join("sandboxd/abc/agent/cgroup.procs"), "11\n").unwrap();
        assert_eq!(cg.pids("abc"), vec![11, 12, 13]);
        assert_eq!(cg.list(), vec!["abc".to_string()]);

        std::fs::write(m.join("sandboxd/abc/cgroup.freeze"), "1").unwrap();
        cg.thaw("abc");
        assert_eq!(read(&m.join("sandboxd/abc/cgroup.freeze")), "0");
        std::fs::write(m.join("sandboxd/abc/cgroup.kill"), "").unwrap();
        assert!(cg.kill_v2("abc"));
        assert_eq!(read(&m.join("sandboxd/abc/cgroup.kill")), "1");

        cg.create("keep", &limits()).unwrap();
        cg.remove("abc").unwrap();
        assert!(!m.join("sandboxd/abc").exists());
        assert_eq!(cg.list(), vec!["keep".to_string()]);
        cg.remove("abc").unwrap(); // idempotent
        cg.remove_root_if_empty();
        assert!(m.join("sandboxd").is_dir(), "kept while a sandbox group exists");
        cg.remove("keep").unwrap();
        cg.remove_root_if_empty();
        assert!(!m.join("sandboxd").exists());
        assert!(m.exists(), "never the mount itself");
    }

    #[test]
    fn v2_without_swap_or_controllers() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        std::fs::write(m.join("cgroup.controllers"), "\n").unwrap();
        let cg = Cgroups::init(CgroupLayout::V2(m.to_path_buf()), "a/b").unwrap();
        let files = cg.create("x1", &limits()).unwrap();
        assert!(m.join("a/b/x1/work").is_dir());
        assert_eq!(files.work_counters, WorkCounterFiles::default(), "no controllers");
        assert!(!m.join("a/b/x1/work/memory.max").exists());
        assert!(!m.join("a/cgroup.subtree_control").exists());
    }

    fn fake_v1(m: &Path, memsw: bool) -> CgroupLayout {
        let mut hs = Vec::new();
        for c in ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"] {
            let d = m.join(c);
            std::fs::create_dir(&d).unwrap();
            hs.push(Hierarchy {
                controllers: vec![c.to_string()],
                mount: d,
            });
        }
        std::fs::write(m.join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(m.join("cpuset/cpuset.mems"), "0\n").unwrap();
        if memsw {
            std::fs::write(
                m.join("memory/memory.memsw.limit_in_bytes"),
                "9223372036854771712\n",
            )
            .unwrap();
        }
        CgroupLayout::V1(hs)
    }

    #[test]
    fn v1_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        let cg = Cgroups::init(fake_v1(m, true), "sandboxd").unwrap();
        assert_eq!(read(&m.join("cpuset/sandboxd/cpuset.cpus")), "0-1");
        let files = cg.create("s1", &limits()).unwrap();
        assert_eq!(files.work_procs.len(), 6);
        assert_eq!(files.agent_procs[3], m.join("memory/sandboxd/s1/agent/tasks"));
        assert_eq!(
            files.work_counters,
            WorkCounterFiles {
                pids_events: Some(m.join("pids/sandboxd/s1/work/pids.events")),
                pids_max: Some(m.join("pids/sandboxd/s1/work/pids.max")),
                memory_events: Some(m.join("memory/sandboxd/s1/work/memory.oom_control")),
                memory_max: Some(m.join("memory/sandboxd/s1/work/memory.limit_in_bytes")),
            }
        );
        for g in ["s1", "s1/agent", "s1/work"] {
            assert_eq!(
                read(&m.join("cpuset/sandboxd").join(g).join("cpuset.cpus")),
                "0-1"
            );
            assert_eq!(read(&m.join("cpuset/sandboxd").join(g).join("cpuset.mems")), "0");
        }
        let w = |c: &str, f: &str| read(&m.join(c).join("sandboxd/s1/work").join(f));
        assert_eq!(w("cpu", "cpu.cfs_quota_us"), "200000");
        assert_eq!(w("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(w("memory", "memory.limit_in_bytes"), (256u64 << 20).to_string());
        assert_eq!(
            w("memory", "memory.memsw.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
        assert!(!m.join("memory/sandboxd/s1/work/memory.swappiness").exists());
        let whole = ((256 + AGENT_MEMORY_RESERVE_MB) << 20).to_string();
        for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
            assert_eq!(read(&m.join("memory/sandboxd/s1").join(f)), whole, "{f}");
        }
        assert!(!m.join("memory/sandboxd/s1/agent/memory.limit_in_bytes").exists());
        assert_eq!(w("pids", "pids.max"), "100");
        assert!(!m.join("cpu/sandboxd/s1/agent/cpu.cfs_quota_us").exists());

        std::fs::write(m.join("freezer/sandboxd/s1/freezer.state"), "FROZEN\n").unwrap();
        cg.thaw("s1");
        assert_eq!(read(&m.join("freezer/sandboxd/s1/freezer.state")), "THAWED");
        assert!(!cg.kill_v2("s1"));

        cg.remove("s1").unwrap();
        for c in ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"] {
            assert!(!m.join(c).join("sandboxd/s1").exists(), "{c}");
        }
    }

    #[test]
    fn v1_rename_and_new_limits() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        let cg = Cgroups::init(fake_v1(m, true), "sandboxd").unwrap();
        assert!(cg.supports_rename());
        cg.create(".pool-1", &Limits::default()).unwrap();
        cg.create("taken", &limits()).unwrap();
        assert!(
            cg.rename(".pool-1", "taken").is_err(),
            "never replaces an existing group"
        );
        assert!(m.join("memory/sandboxd/.pool-1").is_dir());
        cg.rename(".pool-1", "s3").unwrap();
        assert!(!m.join("memory/sandboxd/.pool-1").exists());
        cg.apply_limits("s3", &limits()).unwrap();
        let w = |c: &str, f: &str| read(&m.join(c).join("sandboxd/s3/work").join(f));
        assert_eq!(w("memory", "memory.limit_in_bytes"), (256u64 << 20).to_string());
        assert_eq!(
            w("memory", "memory.memsw.limit_in_bytes"),
            (256u64 << 20).to_string()
        );
        assert_eq!(w("pids", "pids.max"), "100");
        assert_eq!(
            read(&m.join("memory/sandboxd/s3/memory.limit_in_bytes")),
            ((256 + AGENT_MEMORY_RESERVE_MB) << 20).to_string(),
            "the sandbox's limit follows the claim's memoryMB"
        );
        assert_eq!(cg.files("s3").work_procs[0], m.join("cpu/sandboxd/s3/work/tasks"));
    }

    #[test]
    fn v1_without_memsw_uses_swappiness() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroups::init(fake_v1(t.path(), false), "sandboxd").unwrap();
        cg.create("s2", &limits()).unwrap();
        assert_eq!(
            read(&t.path().join("memory/sandboxd/s2/work/memory.swappiness")),
            "0"
        );
        assert_eq!(read(&t.path().join("memory/sandboxd/s2/memory.swappiness")), "0");
        assert!(
            !t.path()
                .join("memory/sandboxd/s2/work/memory.memsw.limit_in_bytes")
                .exists()
        );
    }

    #[test]
    fn failed_create_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path();
        let cg = Cgroups::init(fake_v1(m, true), "sandboxd").unwrap();
        // make the memory hierarchy unusable for this id: a file where the dir should go
        std::fs::write(m.join("memory/sandboxd/bad"), "").unwrap();
        assert!(cg.create("bad", &limits()).is_err());
        assert!(!m.join("cpu/sandboxd/bad").exists());
        assert!(!m.join("cpuacct/sandboxd/bad").exists());
    }

    #[test]
    fn rejects_bad_root_names() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["", "/abs", "a/../b", "a//b"] {
            assert!(
                Cgroups::init(CgroupLayout::V2(t.path().to_path_buf()), bad).is_err(),
                "{bad}"
            );
        }
    }
}
