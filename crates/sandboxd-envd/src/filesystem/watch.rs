//! Directory watches (`WatchDir`, `CreateWatcher`, `docs/contract.md` §6.3).
//!
//! One inotify instance per agent (inotify instances are a per-host-uid resource shared by every
//! sandbox), created on first use. Each subscriber (a `WatchDir` stream or a polling watcher)
//! registers interest in a set of watch descriptors, each with its path relative to the
//! subscriber's root. Events are read by a background task, and also synchronously by
//! [`WatcherTable::sync`] so that `GetWatcherEvents` and the agent's own directory-creating
//! requests see every event caused by requests that have already finished.

use crate::entry::{self, NameCache};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use sandboxd_protocol::connect::{Code, ConnectError};
use sandboxd_protocol::filesystem::{EventType, FilesystemEvent};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most inotify watches (directories) one agent holds at a time.
pub const MAX_WATCHES: usize = 8192;
/// Most subscribers (streams plus polling watchers) one agent serves at a time.
pub const MAX_SUBSCRIBERS: usize = 256;
/// Most undelivered events per subscriber before it fails with `resource_exhausted`.
pub const MAX_PENDING: usize = 65_536;
/// Deepest directory a recursive watch follows below its root; deeper ones are not watched
/// (their creation is still reported), so one deep tree costs bounded work per subscriber.
pub const MAX_WATCH_DEPTH: usize = 128;
/// Longest a request waits for queued events to be processed (`WatcherTable::sync`, new
/// subscriptions, `GetWatcherEvents`); what is left is handled by the reader thread.
const REQUEST_DRAIN_BUDGET: Duration = Duration::from_millis(100);
/// Longest the reader thread holds the watch state at a time, so requests get their turn.
const READER_SLICE: Duration = Duration::from_millis(20);

/// The inotify events a watch asks for.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ATTRIB
}

/// Map an inotify mask to event types, in upstream's order CREATE, RENAME, CHMOD, WRITE, REMOVE.
pub fn event_types(mask: u32) -> Vec<EventType> {
    let has = |f: AddWatchFlags| mask & f.bits() != 0;
    let mut out = Vec::with_capacity(1);
    if has(AddWatchFlags::IN_CREATE) || has(AddWatchFlags::IN_MOVED_TO) {
        out.push(EventType::Create);
    }
    if has(AddWatchFlags::IN_MOVED_FROM) || has(AddWatchFlags::IN_MOVE_SELF) {
        out.push(EventType::Rename);
    }
    if has(AddWatchFlags::IN_ATTRIB) {
        out.push(EventType::Chmod);
    }
    if has(AddWatchFlags::IN_MODIFY) {
        out.push(EventType::Write);
    }
    if has(AddWatchFlags::IN_DELETE) || has(AddWatchFlags::IN_DELETE_SELF) {
        out.push(EventType::Remove);
    }
    out
}

/// Levels of a path relative to a watch root ("" is the root itself).
fn rel_depth(rel: &str) -> usize {
    if rel.is_empty() {
        0
    } else {
        rel.matches('/').count() + 1
    }
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Errors of `inotify_add_watch` as Connect errors.
fn add_watch_error(path: &Path, e: Errno) -> ConnectError {
    match e {
        Errno::ENOENT => ConnectError::not_found(format!("path {} not found", path.display())),
        Errno::ENOTDIR => {
            ConnectError::invalid_argument(format!("path {} is not a directory", path.display()))
        }
        Errno::ENOSPC => ConnectError::new(
            Code::ResourceExhausted,
            "inotify watch limit reached (fs.inotify.max_user_watches)",
        ),
        e => ConnectError::internal(format!("error watching {}: {e}", path.display())),
    }
}

/// One item delivered to a streaming subscriber.
#[derive(Debug)]
pub enum WatchItem {
    Event(FilesystemEvent),
    /// The watch failed; the stream ends with this error.
    Error(ConnectError),
}

/// The receiving side of a streaming subscription.
pub struct StreamRx {
    rx: mpsc::UnboundedReceiver<WatchItem>,
    pending: Arc<AtomicUsize>,
}

impl StreamRx {
    /// The next item; `None` when the subscription was dropped.
    pub async fn recv(&mut self) -> Option<WatchItem> {
        let item = self.rx.recv().await;
        if item.is_some() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        item
    }
}

enum Sink {
    Stream {
        tx: mpsc::UnboundedSender<WatchItem>,
        pending: Arc<AtomicUsize>,
    },
    Buffer {
        events: Vec<FilesystemEvent>,
        error: Option<ConnectError>,
    },
}

struct Sub {
    root: String,
    recursive: bool,
    include_entry: bool,
    root_wd: WatchDescriptor,
    wds: HashSet<WatchDescriptor>,
    sink: Sink,
    failed: bool,
}

struct WdInfo {
    /// Absolute path of the watched directory, as first registered.
    path: PathBuf,
    /// Subscriber id → path relative to that subscriber's root ("" for the root).
    subs: HashMap<u64, String>,
}

#[derive(Default)]
struct WatchState {
    wds: HashMap<WatchDescriptor, WdInfo>,
    subs: HashMap<u64, Sub>,
    polling: HashMap<String, u64>,
    next_sub: u64,
}

struct Watcher {
    inotify: Inotify,
    limits: WatchLimits,
    state: Mutex<WatchState>,
}

fn lock(m: &Mutex<WatchState>) -> MutexGuard<'_, WatchState> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Watcher {
    /// Read and dispatch queued inotify events until the queue is empty (`Ok(true)`) or
    /// `budget` has passed (`Ok(false)`).
    fn drain_locked(&self, st: &mut WatchState, budget: Duration) -> std::io::Result<bool> {
        let deadline = Instant::now() + budget;
        loop {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => return Ok(true),
                Ok(events) => {
                    let mut names = NameCache::default();
                    for ev in events {
                        self.dispatch(st, ev, &mut names);
                    }
                }
                Err(Errno::EAGAIN) => return Ok(true),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The reader thread: waits for events and processes them in slices, taking the state
    /// lock for at most [`READER_SLICE`] at a time. Ends when the watcher is dropped.
    fn read_loop(weak: std::sync::Weak<Watcher>) {
        loop {
            let Some(w) = weak.upgrade() else { return };
            let mut pfd = libc::pollfd {
                fd: w.inotify.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on an fd `w` keeps open; bounded wait so a dropped
            // watcher is noticed.
            let rc = unsafe { libc::poll(&mut pfd, 1, 500) };
            if rc <= 0 {
                continue;
            }
            loop {
                let done = w.drain_locked(&mut lock(&w.state), READER_SLICE);
                match done {
                    Ok(true) => break,
                    Ok(false) => std::thread::yield_now(),
                    Err(e) => {
                        tracing::error!(error = %e, "reading inotify events");
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
    }

    /// Add a watch on `dir` for subscriber `sub_id` with relative path `rel`.
    fn add(
        &self,
        st: &mut WatchState,
        sub_id: u64,
        dir: &Path,
        rel: &str,
        follow: bool,
    ) -> Result<WatchDescriptor, ConnectError> {
        if st.wds.len() >= self.limits.max_watches && !st.wds.values().any(|i| i.path == dir) {
            return Err(ConnectError::new(
                Code::ResourceExhausted,
                format!(
                    "too many watched directories in this sandbox (limit {})",
                    self.limits.max_watches
                ),
            ));
        }
        let mut mask = watch_mask() | AddWatchFlags::IN_ONLYDIR;
        if !follow {
            mask |= AddWatchFlags::IN_DONT_FOLLOW;
        }
        let wd = self
            .inotify
            .add_watch(dir, mask)
            .map_err(|e| add_watch_error(dir, e))?;
        let info = st.wds.entry(wd).or_insert_with(|| WdInfo {
            path: dir.to_path_buf(),
            subs: HashMap::new(),
        });
        info.subs.insert(sub_id, rel.to_string());
        if let Some(sub) = st.subs.get_mut(&sub_id) {
            sub.wds.insert(wd);
        }
        Ok(wd)
    }

    /// Watch every subdirectory under `dir` (symlinks not followed). With `emit`, also report a
    /// CREATE for every entry found (a directory created and filled before its watch existed).
    fn add_tree(
        &self,
        st: &mut WatchState,
        sub_id: u64,
        dir: &Path,
        rel: &str,
        emit: bool,
        names: &mut NameCache,
    ) -> Result<(), ConnectError> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let mut entries: Vec<(Vec<u8>, bool)> = rd
            .filter_map(Result::ok)
            .map(|e| {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                (e.file_name().as_bytes().to_vec(), is_dir)
            })
            .collect();
        entries.sort();
        for (name, is_dir) in entries {
            let name_s = String::from_utf8_lossy(&name).into_owned();
            let child_rel = join_rel(rel, &name_s);
            let child = dir.join(std::ffi::OsStr::from_bytes(&name));
            if emit {
                self.deliver(st, sub_id, &child, &child_rel, EventType::Create, names);
            }
            if is_dir && rel_depth(&child_rel) <= MAX_WATCH_DEPTH {
                match self.add(st, sub_id, &child, &child_rel, false) {
                    Ok(_) => self.add_tree(st, sub_id, &child, &child_rel, emit, names)?,
                    Err(e) if e.code == Code::ResourceExhausted => return Err(e),
                    // Vanished or replaced meanwhile: skip it.
                    Err(_) => {}
                }
            }
        }
        Ok(())
    }

    fn deliver(
        &self,
        st: &mut WatchState,
        sub_id: u64,
        abs: &Path,
        name: &str,
        ty: EventType,
        names: &mut NameCache,
    ) {
        let Some(sub) = st.subs.get_mut(&sub_id) else {
            return;
        };
        if sub.failed {
            return;
        }
        let entry =
            if sub.include_entry && matches!(ty, EventType::Create | EventType::Write | EventType::Chmod) {
                abs.to_str().and_then(|p| {
                    let report = entry::join(&sub.root, name);
                    std::fs::symlink_metadata(p)
                        .ok()
                        .map(|md| entry::entry_from_metadata(&report, &md, names))
                })
            } else {
                None
            };
        let ev = FilesystemEvent {
            name: name.to_string(),
            event_type: ty,
            entry,
        };
        let overflow = ConnectError::new(
            Code::ResourceExhausted,
            format!("more than {MAX_PENDING} undelivered watch events"),
        );
        match &mut sub.sink {
            Sink::Stream { tx, pending } => {
                if pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING {
                    let _ = tx.send(WatchItem::Error(overflow));
                    sub.failed = true;
                } else if tx.send(WatchItem::Event(ev)).is_err() {
                    sub.failed = true;
                }
            }
            Sink::Buffer { events, error } => {
                // Like the kernel, merge a WRITE into an identical one still waiting in the buffer.
                if let Some(last) = events.last_mut()
                    && ty == EventType::Write
                    && last.event_type == ty
                    && last.name == ev.name
                {
                    *last = ev;
                } else if events.len() >= MAX_PENDING {
                    *error = Some(overflow);
                    sub.failed = true;
                } else {
                    events.push(ev);
                }
            }
        }
    }

    fn dispatch(&self, st: &mut WatchState, ev: InotifyEvent, names: &mut NameCache) {
        let mask = ev.mask;
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            tracing::warn!("inotify queue overflow: some watch events were lost");
            return;
        }
        if mask.contains(AddWatchFlags::IN_IGNORED) {
            if let Some(info) = st.wds.remove(&ev.wd) {
                for sub_id in info.subs.keys() {
                    if let Some(sub) = st.subs.get_mut(sub_id) {
                        sub.wds.remove(&ev.wd);
                    }
                }
            }
            return;
        }
        let Some(info) = st.wds.get(&ev.wd) else { return };
        let dir = info.path.clone();
        let targets: Vec<(u64, String)> = info.subs.iter().map(|(k, v)| (*k, v.clone())).collect();
        let is_self = mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF);
        let is_dir = mask.contains(AddWatchFlags::IN_ISDIR);
        for (sub_id, rel) in targets {
            let Some(sub) = st.subs.get(&sub_id) else { continue };
            let (recursive, root_wd) = (sub.recursive, sub.root_wd);
            let (name, abs) = match &ev.name {
                Some(n) => (
                    join_rel(&rel, &String::from_utf8_lossy(n.as_bytes())),
                    dir.join(n),
                ),
                None => {
                    // A subdirectory's own delete/move is reported by its parent's watch.
                    if is_self && ev.wd != root_wd {
                        continue;
                    }
                    (
                        if rel.is_empty() {
                            ".".to_string()
                        } else {
                            rel.clone()
                        },
                        dir.clone(),
                    )
                }
            };
            for ty in event_types(mask.bits()) {
                self.deliver(st, sub_id, &abs, &name, ty, names);
            }
            if recursive && is_dir && ev.name.is_some() {
                if mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                    if rel_depth(&name) > MAX_WATCH_DEPTH {
                        continue;
                    }
                    // Watch the new directory, then rescan it: entries created before the watch
                    // existed get a CREATE.
                    match self.add(st, sub_id, &abs, &name, false) {
                        Ok(_) => {
                            if let Err(e) = self.add_tree(st, sub_id, &abs, &name, true, names) {
                                tracing::warn!(error = %e.message, "recursive watch incomplete");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e.message, "not watching new directory"),
                    }
                } else if mask.contains(AddWatchFlags::IN_MOVED_FROM) {
                    self.forget_subtree(st, sub_id, &name);
                }
            }
        }
    }

    /// Stop watching `rel` and everything under it for one subscriber (a directory moved away).
    fn forget_subtree(&self, st: &mut WatchState, sub_id: u64, rel: &str) {
        let prefix = format!("{rel}/");
        let gone: Vec<WatchDescriptor> = st
            .wds
            .iter()
            .filter(|(_, info)| {
                info.subs
                    .get(&sub_id)
                    .is_some_and(|r| r == rel || r.starts_with(&prefix))
            })
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.release(st, sub_id, wd);
        }
    }

    /// Drop one subscriber's interest in `wd`; remove the inotify watch when nobody is left.
    fn release(&self, st: &mut WatchState, sub_id: u64, wd: WatchDescriptor) {
        if let Some(sub) = st.subs.get_mut(&sub_id) {
            sub.wds.remove(&wd);
        }
        let empty = match st.wds.get_mut(&wd) {
            Some(info) => {
                info.subs.remove(&sub_id);
                info.subs.is_empty()
            }
            None => false,
        };
        if empty {
            st.wds.remove(&wd);
            let _ = self.inotify.rm_watch(wd);
        }
    }

    fn unsubscribe(&self, st: &mut WatchState, sub_id: u64) {
        let wds: Vec<WatchDescriptor> = match st.subs.get(&sub_id) {
            Some(sub) => sub.wds.iter().copied().collect(),
            None => return,
        };
        for wd in wds {
            self.release(st, sub_id, wd);
        }
        st.subs.remove(&sub_id);
    }
}

/// Options of one subscription.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The resolved directory path (reported in entries, base of event names).
    pub root: String,
    pub recursive: bool,
    pub include_entry: bool,
}

/// All watches of one agent: the lazily created inotify instance and the polling watchers.
#[derive(Default)]
pub struct WatcherTable {
    watcher: Mutex<Option<Arc<Watcher>>>,
    limits: WatchLimits,
}

/// Per-agent caps on watches (inotify watches are a per-host-uid resource).
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// Most watched directories.
    pub max_watches: usize,
    /// Most subscribers (streams plus polling watchers).
    pub max_subscribers: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            max_watches: MAX_WATCHES,
            max_subscribers: MAX_SUBSCRIBERS,
        }
    }
}

/// A streaming subscription; unsubscribes when dropped.
pub struct StreamGuard {
    watcher: Arc<Watcher>,
    sub_id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.watcher.state);
        self.watcher.unsubscribe(&mut st, self.sub_id);
    }
}

impl WatcherTable {
    /// A table with other limits than the defaults.
    pub fn with_limits(limits: WatchLimits) -> Self {
        Self {
            watcher: Mutex::new(None),
            limits,
        }
    }

    fn get(&self) -> Result<Arc<Watcher>, ConnectError> {
        let mut slot = match self.watcher.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(w) = slot.as_ref() {
            return Ok(w.clone());
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| {
            ConnectError::new(
                Code::ResourceExhausted,
                format!("cannot create an inotify instance: {e} (fs.inotify.max_user_instances)"),
            )
        })?;
        let w = Arc::new(Watcher {
            inotify,
            limits: self.limits,
            state: Mutex::new(WatchState::default()),
        });
        // Events are handled on a thread of their own, off the runtime and the request path.
        let weak = Arc::downgrade(&w);
        std::thread::Builder::new()
            .name("sandboxd-inotify".into())
            .spawn(move || Watcher::read_loop(weak))
            .map_err(|e| ConnectError::internal(format!("starting the watch reader: {e}")))?;
        *slot = Some(w.clone());
        Ok(w)
    }

    fn existing(&self) -> Option<Arc<Watcher>> {
        match self.watcher.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn subscribe(&self, opts: &WatchOptions, sink: Sink) -> Result<(Arc<Watcher>, u64), ConnectError> {
        let w = self.get()?;
        let mut st = lock(&w.state);
        // Events queued before this watch existed must not reach it.
        let _ = w.drain_locked(&mut st, REQUEST_DRAIN_BUDGET);
        if st.subs.len() >= w.limits.max_subscribers {
            return Err(ConnectError::new(
                Code::ResourceExhausted,
                format!(
                    "too many directory watchers in this sandbox (limit {})",
                    w.limits.max_subscribers
                ),
            ));
        }
        let sub_id = st.next_sub;
        st.next_sub += 1;
        let root = Path::new(&opts.root);
        if st.wds.len() >= w.limits.max_watches && !st.wds.values().any(|i| i.path == root) {
            return Err(ConnectError::new(
                Code::ResourceExhausted,
                format!(
                    "too many watched directories in this sandbox (limit {})",
                    w.limits.max_watches
                ),
            ));
        }
        let mask = watch_mask() | AddWatchFlags::IN_ONLYDIR;
        let root_wd = w
            .inotify
            .add_watch(root, mask)
            .map_err(|e| add_watch_error(root, e))?;
        st.subs.insert(
            sub_id,
            Sub {
                root: opts.root.clone(),
                recursive: opts.recursive,
                include_entry: opts.include_entry,
                root_wd,
                wds: HashSet::from([root_wd]),
                sink,
                failed: false,
            },
        );
        st.wds
            .entry(root_wd)
            .or_insert_with(|| WdInfo {
                path: root.to_path_buf(),
                subs: HashMap::new(),
            })
            .subs
            .insert(sub_id, String::new());
        if opts.recursive {
            let mut names = NameCache::default();
            if let Err(e) = w.add_tree(&mut st, sub_id, root, "", false, &mut names) {
                w.unsubscribe(&mut st, sub_id);
                return Err(e);
            }
        }
        drop(st);
        Ok((w, sub_id))
    }

    /// Start a streaming subscription (`WatchDir`). The watch is active when this returns.
    pub fn subscribe_stream(&self, opts: &WatchOptions) -> Result<(StreamGuard, StreamRx), ConnectError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let sink = Sink::Stream {
            tx,
            pending: pending.clone(),
        };
        let (watcher, sub_id) = self.subscribe(opts, sink)?;
        Ok((StreamGuard { watcher, sub_id }, StreamRx { rx, pending }))
    }

    /// Create a polling watcher (`CreateWatcher`) and return its id. The watch is active when
    /// this returns.
    pub fn create_polling(&self, opts: &WatchOptions) -> Result<String, ConnectError> {
        let sink = Sink::Buffer {
            events: Vec::new(),
            error: None,
        };
        let (w, sub_id) = self.subscribe(opts, sink)?;
        let id = format!("w{:016x}", rand::random::<u64>());
        lock(&w.state).polling.insert(id.clone(), sub_id);
        Ok(id)
    }

    /// Take the events buffered for a polling watcher, after reading every queued inotify event.
    pub fn take_events(&self, id: &str) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let not_found = || ConnectError::not_found(format!("watcher with id {id} not found"));
        let w = self.existing().ok_or_else(not_found)?;
        let mut st = lock(&w.state);
        let _ = w.drain_locked(&mut st, REQUEST_DRAIN_BUDGET);
        let sub_id = *st.polling.get(id).ok_or_else(not_found)?;
        let sub = st.subs.get_mut(&sub_id).ok_or_else(not_found)?;
        match &mut sub.sink {
            Sink::Buffer { events, error } => {
                if events.is_empty()
                    && let Some(e) = error.clone()
                {
                    return Err(e);
                }
                Ok(std::mem::take(events))
            }
            Sink::Stream { .. } => Err(not_found()),
        }
    }

    /// Stop and delete a polling watcher.
    pub fn remove_polling(&self, id: &str) -> Result<(), ConnectError> {
        let not_found = || ConnectError::not_found(format!("watcher with id {id} not found"));
        let w = self.existing().ok_or_else(not_found)?;
        let mut st = lock(&w.state);
        let sub_id = st.polling.remove(id).ok_or_else(not_found)?;
        w.unsubscribe(&mut st, sub_id);
        Ok(())
    }

    /// Process every queued inotify event now. Called after the agent itself creates
    /// directories, so that recursive watches cover them before the next request runs.
    pub fn sync(&self) {
        if let Some(w) = self.existing() {
            let mut st = lock(&w.state);
            if !st.subs.is_empty() {
                let _ = w.drain_locked(&mut st, REQUEST_DRAIN_BUDGET);
            }
        }
    }

    /// Number of inotify watches held (for tests and diagnostics).
    pub fn watch_count(&self) -> usize {
        self.existing().map(|w| lock(&w.state).wds.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(ev: &[FilesystemEvent]) -> Vec<(String, EventType)> {
        ev.iter().map(|e| (e.name.clone(), e.event_type)).collect()
    }

    #[test]
    fn mapping_order() {
        let m = |f: AddWatchFlags| f.bits();
        assert_eq!(event_types(m(AddWatchFlags::IN_CREATE)), vec![EventType::Create]);
        assert_eq!(
            event_types(m(AddWatchFlags::IN_MOVED_TO)),
            vec![EventType::Create]
        );
        assert_eq!(event_types(m(AddWatchFlags::IN_MODIFY)), vec![EventType::Write]);
        assert_eq!(event_types(m(AddWatchFlags::IN_ATTRIB)), vec![EventType::Chmod]);
        assert_eq!(event_types(m(AddWatchFlags::IN_DELETE)), vec![EventType::Remove]);
        assert_eq!(
            event_types(m(AddWatchFlags::IN_DELETE_SELF)),
            vec![EventType::Remove]
        );
        assert_eq!(
            event_types(m(AddWatchFlags::IN_MOVED_FROM)),
            vec![EventType::Rename]
        );
        assert_eq!(
            event_types(m(AddWatchFlags::IN_MOVE_SELF)),
            vec![EventType::Rename]
        );
        assert_eq!(
            event_types(m(AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_ATTRIB
                | AddWatchFlags::IN_MOVED_FROM)),
            vec![
                EventType::Create,
                EventType::Rename,
                EventType::Chmod,
                EventType::Write,
                EventType::Remove
            ]
        );
        assert!(event_types(m(AddWatchFlags::IN_CLOSE_WRITE)).is_empty());
    }

    fn opts(root: &Path, recursive: bool) -> WatchOptions {
        WatchOptions {
            root: root.to_str().unwrap().to_string(),
            recursive,
            include_entry: false,
        }
    }

    #[tokio::test]
    async fn polling_sees_create_chmod_write_at_once() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let table = WatcherTable::default();
        let id = table.create_polling(&opts(dir.path(), false)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dir.path().join("a.txt"))
            .unwrap();
        std::os::unix::fs::fchown(&f, Some(0), Some(0)).unwrap();
        f.write_all(b"hello").unwrap();
        drop(f);
        let ev = table.take_events(&id).unwrap();
        assert_eq!(
            types(&ev),
            vec![
                ("a.txt".into(), EventType::Create),
                ("a.txt".into(), EventType::Chmod),
                ("a.txt".into(), EventType::Write)
            ]
        );
        assert!(table.take_events(&id).unwrap().is_empty());
        std::fs::remove_file(dir.path().join("a.txt")).unwrap();
        assert_eq!(
            types(&table.take_events(&id).unwrap()),
            vec![("a.txt".into(), EventType::Remove)]
        );
        table.remove_polling(&id).unwrap();
        assert_eq!(table.take_events(&id).unwrap_err().code, Code::NotFound);
        assert_eq!(table.remove_polling(&id).unwrap_err().code, Code::NotFound);
        assert_eq!(table.watch_count(), 0);
    }

    #[tokio::test]
    async fn recursive_picks_up_new_dirs_and_rescans() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("old")).unwrap();
        let table = WatcherTable::default();
        let id = table.create_polling(&opts(dir.path(), true)).unwrap();
        assert_eq!(table.watch_count(), 2);
        std::fs::write(dir.path().join("old/f"), b"x").unwrap();
        // A tree created before its watch is added: the rescan reports its entries.
        std::fs::create_dir_all(dir.path().join("n1/n2")).unwrap();
        std::fs::write(dir.path().join("n1/n2/g"), b"x").unwrap();
        table.sync();
        // After sync, the new directories are watched: writes inside are seen.
        std::fs::write(dir.path().join("n1/n2/g"), b"yy").unwrap();
        let ev = types(&table.take_events(&id).unwrap());
        assert_eq!(ev[0], ("old/f".into(), EventType::Create));
        assert!(ev.contains(&("old/f".into(), EventType::Write)), "{ev:?}");
        assert!(ev.contains(&("n1".into(), EventType::Create)), "{ev:?}");
        assert!(ev.contains(&("n1/n2".into(), EventType::Create)), "{ev:?}");
        assert!(ev.contains(&("n1/n2/g".into(), EventType::Create)), "{ev:?}");
        assert_eq!(ev.last().unwrap(), &("n1/n2/g".into(), EventType::Write));
        assert_eq!(table.watch_count(), 4);
        // Moving a directory away stops its watches; deleting the tree releases them.
        std::fs::rename(dir.path().join("n1"), dir.path().join("m1")).unwrap();
        table.sync();
        std::fs::write(dir.path().join("m1/n2/h"), b"x").unwrap();
        let ev = types(&table.take_events(&id).unwrap());
        assert!(ev.contains(&("n1".into(), EventType::Rename)), "{ev:?}");
        assert!(ev.contains(&("m1".into(), EventType::Create)), "{ev:?}");
        assert!(ev.contains(&("m1/n2/h".into(), EventType::Create)), "{ev:?}");
        assert!(!ev.iter().any(|(n, _)| n.starts_with("n1/")), "{ev:?}");
        std::fs::remove_dir_all(dir.path().join("m1")).unwrap();
        std::fs::remove_dir_all(dir.path().join("old")).unwrap();
        table.sync();
        assert_eq!(table.watch_count(), 1);
        table.remove_polling(&id).unwrap();
        assert_eq!(table.watch_count(), 0);
    }

    #[tokio::test]
    async fn recursive_watches_stop_at_the_depth_limit() {
        let dir = tempfile::tempdir().unwrap();
        let table = WatcherTable::default();
        let id = table.create_polling(&opts(dir.path(), true)).unwrap();
        let deep = dir.path().join("d/".repeat(MAX_WATCH_DEPTH + 50));
        std::fs::create_dir_all(&deep).unwrap();
        let t0 = std::time::Instant::now();
        while table.watch_count() < MAX_WATCH_DEPTH + 1 && t0.elapsed() < Duration::from_secs(10) {
            table.sync();
        }
        table.sync();
        // the root and MAX_WATCH_DEPTH levels below it; every level's creation is reported
        assert_eq!(table.watch_count(), MAX_WATCH_DEPTH + 1);
        let ev = types(&table.take_events(&id).unwrap());
        let created = ev.iter().filter(|(_, t)| *t == EventType::Create).count();
        assert!(created >= MAX_WATCH_DEPTH, "{created} creates");
        table.remove_polling(&id).unwrap();
    }

    #[tokio::test]
    async fn stream_subscription_and_shared_watches() {
        let dir = tempfile::tempdir().unwrap();
        let table = WatcherTable::default();
        let (guard, mut rx) = table
            .subscribe_stream(&WatchOptions {
                include_entry: true,
                ..opts(dir.path(), false)
            })
            .unwrap();
        let id = table.create_polling(&opts(dir.path(), false)).unwrap();
        assert_eq!(table.watch_count(), 1);
        std::fs::write(dir.path().join("b"), b"x").unwrap();
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match first {
            WatchItem::Event(e) => {
                assert_eq!((e.name.as_str(), e.event_type), ("b", EventType::Create));
                let entry = e.entry.unwrap();
                assert_eq!(entry.path, format!("{}/b", dir.path().display()));
            }
            WatchItem::Error(e) => panic!("{e:?}"),
        }
        drop(guard);
        assert_eq!(table.watch_count(), 1);
        assert_eq!(
            types(&table.take_events(&id).unwrap())[0],
            ("b".into(), EventType::Create)
        );
        table.remove_polling(&id).unwrap();
        assert_eq!(table.watch_count(), 0);
    }

    #[tokio::test]
    async fn limits_are_enforced_and_released() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::create_dir(dir.path().join(format!("d{i}"))).unwrap();
        }
        let table = WatcherTable::with_limits(WatchLimits {
            max_watches: 4,
            max_subscribers: 2,
        });
        // Root + 5 subdirectories exceed 4 watches: refused, and nothing is left behind.
        let e = table.create_polling(&opts(dir.path(), true)).unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert_eq!(table.watch_count(), 0);
        let a = table.create_polling(&opts(dir.path(), false)).unwrap();
        // The same directory again shares the watch.
        let b = table.create_polling(&opts(dir.path(), false)).unwrap();
        assert_eq!(table.watch_count(), 1);
        let e = table
            .create_polling(&opts(&dir.path().join("d0"), false))
            .unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted);
        table.remove_polling(&a).unwrap();
        let c = table
            .create_polling(&opts(&dir.path().join("d0"), false))
            .unwrap();
        assert_eq!(table.watch_count(), 2);
        table.remove_polling(&b).unwrap();
        table.remove_polling(&c).unwrap();
        assert_eq!(table.watch_count(), 0);
    }

    #[tokio::test]
    async fn bad_paths() {
        let dir = tempfile::tempdir().unwrap();
        let table = WatcherTable::default();
        let e = table
            .create_polling(&opts(&dir.path().join("nope"), false))
            .unwrap_err();
        assert_eq!(e.code, Code::NotFound);
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let e = table
            .create_polling(&opts(&dir.path().join("f"), false))
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(table.watch_count(), 0);
    }
}
