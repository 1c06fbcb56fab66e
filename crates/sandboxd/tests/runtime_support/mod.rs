//! Shared helpers of the namespace-backend integration tests (`runtime_*.rs`).
#![allow(dead_code)]

use sandboxd_protocol::agent::AgentConfig;
use sandboxd_runtime::namespace::{NamespaceBackend, NamespaceConfig};
use sandboxd_runtime::{Limits, SandboxSpec};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether privileged tests can run. Not root: skip, except under `CI=true`, where a skip
/// would hide a broken set-up, so it fails.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("runtime integration tests need root, and CI=true forbids skipping them");
    }
    eprintln!("skipping: runtime integration tests need root");
    false
}

/// A backend over a fresh data dir, with a test-only cgroup root.
pub struct TestBackend {
    pub backend: NamespaceBackend,
    pub dir: tempfile::TempDir,
}

pub fn backend() -> TestBackend {
    let dir = tempfile::Builder::new()
        .prefix("sbxrt")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut cfg = NamespaceConfig::new(dir.path(), PathBuf::from(env!("CARGO_BIN_EXE_sandboxd")));
    cfg.cgroup_root = "sandboxd-test".into();
    let backend = NamespaceBackend::new(cfg).expect("namespace backend starts");
    TestBackend { backend, dir }
}

static N: AtomicU32 = AtomicU32::new(0);

/// A unique sandbox id.
pub fn new_id() -> String {
    format!("t{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn spec(id: &str, limits: Limits) -> SandboxSpec {
    SandboxSpec {
        id: id.to_string(),
        template: "base".into(),
        limits,
        agent: AgentConfig::new(id, "base"),
    }
}

/// Whether this process has CAP_SYS_RESOURCE (needed to give agents oom_score_adj -1000).
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << 24) != 0
}
