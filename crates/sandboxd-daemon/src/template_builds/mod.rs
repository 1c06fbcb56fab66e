//! The template build API (`docs/templates.md`): E2B's `Template` builder. A build starts from
//! an image (pulled, `images.rs`) or a template, runs its steps, and ends as a runtime
//! template (a layered template directory) that a tag of the template's name points at.
//!
//! Every step that changes files becomes a runtime template of its own, named by a hash of
//! its parent and the step (`b<24 hex>`): an unchanged rebuild finds them all and is instant,
//! a changed step rebuilds only what follows it. `RUN` steps run in a build sandbox whose
//! writable layer is then snapshotted; `COPY` steps make their layer on the host from the
//! uploaded files; `ENV`, `WORKDIR` and `USER` change what later steps and the template's
//! sandboxes see.
//!
//! - `spec.rs`: the wire shapes of requests and steps, the stored configuration.
//! - `requests.rs`: request, upload links, start, status, tags, delete (`impl Daemon`).
//! - `runner.rs`: running a build's steps.
//! - `copy_step.rs`: staging the files of a `COPY` step.
//! - `logs.rs`: build logs.
//! - `gc.rs`: removing what deleted templates leave.

mod copy_step;
pub mod gc;
mod logs;
mod requests;
mod runner;
pub mod spec;
mod start_command;

pub use logs::{LogLine, LogQuery};
pub use requests::{BuildStatusView, BuiltTemplate, RequestedBuild, TemplateSummary, UploadLink};
pub use spec::{BuildRequest, BuildStart, StepSpec};

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Builds running at once (each may run a sandbox and pull images).
pub(crate) const CONCURRENT_BUILDS: usize = 2;

/// What the daemon keeps about builds in memory.
#[derive(Debug)]
pub struct BuildState {
    /// Logs of recent builds.
    pub(crate) logs: logs::BuildLogs,
    /// Upload tokens handed out: token → (files hash, when it expires).
    pub(crate) uploads: Mutex<HashMap<String, (String, Instant)>>,
    /// The image store, opened on first use (`images.rs`).
    pub(crate) images: OnceLock<sandboxd_image::ImageStore>,
    /// Builds running at once.
    pub(crate) slots: tokio::sync::Semaphore,
}

impl Default for BuildState {
    fn default() -> Self {
        Self {
            logs: logs::BuildLogs::default(),
            uploads: Mutex::new(HashMap::new()),
            images: OnceLock::new(),
            slots: tokio::sync::Semaphore::new(CONCURRENT_BUILDS),
        }
    }
}
