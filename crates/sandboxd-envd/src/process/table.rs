//! The table of processes, their output fan-out and the per-process driver task.
//!
//! Each process has one driver task that reads its output (two pipes or the PTY master),
//! waits for its exit status from the reaper, enforces the Start deadline (SIGKILL) and, at
//! the end, publishes one end event. Output goes to the streams attached at that moment
//! (Start and any number of Connect streams); with none attached it is dropped. An ended
//! process stays in the table for [`EXIT_CACHE`] so that a late `Connect` still gets
//! `start` + `end`, but it is no longer listed and takes no input or signals.

use super::spawn::{self, ChildIo, PtyMaster};
use super::status::end_event;
use crate::pid1::ExitStatus;
use sandboxd_protocol::process::{DataEvent, EndEvent, ProcessInfo, Selector};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long an ended process is remembered for `Connect`.
pub const EXIT_CACHE: Duration = Duration::from_secs(30);
/// Largest data event of a pipe (stdout/stderr).
pub const PIPE_CHUNK: usize = 32 << 10;
/// Largest data event of a PTY.
pub const PTY_CHUNK: usize = 16 << 10;
/// After the process exits, output still arriving (from descendants holding the pipes) is
/// streamed until the pipes are quiet this long, then the end event is sent.
pub const DRAIN_IDLE: Duration = Duration::from_millis(50);
/// Messages buffered per attached stream before the driver waits for the client.
const SUBSCRIBER_BUFFER: usize = 32;

/// What an attached stream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Data(DataEvent),
    End(EndEvent),
}

/// The result of attaching a stream to a process.
pub enum Attach {
    /// Live output and the end event follow on this receiver.
    Live(mpsc::Receiver<Out>),
    /// The process has already ended.
    Ended(EndEvent),
}

/// Where input to a process goes.
pub enum InputSink {
    /// Started with `stdin: false`.
    Disabled,
    /// The stdin pipe; `None` once closed.
    Pipe(Option<pipe::Sender>),
    /// The PTY master.
    Pty(Arc<PtyMaster>),
}

#[derive(Default)]
struct ProcState {
    subscribers: Vec<mpsc::Sender<Out>>,
    end: Option<EndEvent>,
}

/// One process started through `Start`.
pub struct Proc {
    pub pid: u32,
    /// The config as requested, pid and tag (for `List`).
    pub info: ProcessInfo,
    pub input: tokio::sync::Mutex<InputSink>,
    pub pty: Option<Arc<PtyMaster>>,
    pidfd: Option<OwnedFd>,
    state: Mutex<ProcState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Proc {
    /// Attach a stream: live output from now on, or the end event if it already ended.
    pub fn attach(&self) -> Attach {
        let mut st = lock(&self.state);
        if let Some(end) = &st.end {
            return Attach::Ended(end.clone());
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        st.subscribers.retain(|s| !s.is_closed());
        st.subscribers.push(tx);
        Attach::Live(rx)
    }

    /// Whether the process has ended.
    pub fn ended(&self) -> bool {
        lock(&self.state).end.is_some()
    }

    /// Send a signal to the process (through its pidfd, so never to a reused pid).
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        if self.ended() {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        match &self.pidfd {
            Some(fd) => crate::pid1::pidfd_send_signal(fd, signal),
            None => {
                // SAFETY: plain kill(2); the process has not been reported as ended.
                if unsafe { libc::kill(self.pid as i32, signal) } == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }

    async fn publish(&self, ev: DataEvent) {
        let subs: Vec<_> = {
            let mut st = lock(&self.state);
            st.subscribers.retain(|s| !s.is_closed());
            st.subscribers.clone()
        };
        for s in subs {
            let _ = s.send(Out::Data(ev.clone())).await;
        }
    }

    async fn finish(&self, end: EndEvent) {
        let subs = {
            let mut st = lock(&self.state);
            st.end = Some(end.clone());
            std::mem::take(&mut st.subscribers)
        };
        for s in subs {
            let _ = s.send(Out::End(end.clone())).await;
        }
    }
}

/// Running and recently ended processes by pid.
#[derive(Default)]
pub struct ProcessTable {
    procs: Arc<Mutex<HashMap<u32, Arc<Proc>>>>,
    /// The sandbox's structured log (process starts and exits are recorded here).
    pub log: crate::log::SandboxLog,
    /// The `work` cgroup's counters, which explain a failure by the process or memory limit
    /// in the end event's `error` (`None` outside a sandbox).
    pub counters: Option<Arc<dyn crate::work_counters::CounterSource>>,
}

impl ProcessTable {
    /// Find a process (running or in the exit cache) by pid or tag.
    pub fn find(&self, sel: &Selector) -> Option<Arc<Proc>> {
        let procs = lock(&self.procs);
        match sel {
            Selector::Pid(pid) => procs.get(pid).cloned(),
            Selector::Tag(tag) => {
                let mut found: Vec<_> = procs
                    .values()
                    .filter(|p| p.info.tag.as_deref() == Some(tag.as_str()))
                    .cloned()
                    .collect();
                // Prefer a running process, then the newest start.
                found.sort_by_key(|p| (!p.ended(), p.pid));
                found.pop()
            }
        }
    }

    /// Find a running process by pid or tag.
    pub fn find_running(&self, sel: &Selector) -> Option<Arc<Proc>> {
        self.find(sel).filter(|p| !p.ended())
    }

    /// Every running process, by pid.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let procs = lock(&self.procs);
        let mut v: Vec<_> = procs
            .values()
            .filter(|p| !p.ended())
            .map(|p| p.info.clone())
            .collect();
        v.sort_by_key(|i| i.pid);
        v
    }

    fn insert(&self, p: Arc<Proc>) {
        lock(&self.procs).insert(p.pid, p);
    }

    /// Register a started process, attach the first stream (before any output can be read),
    /// and start its driver. `kill_at` is the Start deadline.
    pub fn register(
        &self,
        started: spawn::Started,
        info: ProcessInfo,
        kill_at: Option<Instant>,
    ) -> (Arc<Proc>, mpsc::Receiver<Out>) {
        let (input, pty, output) = match started.io {
            ChildIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let sink = match stdin {
                    Some(s) => InputSink::Pipe(Some(s)),
                    None => InputSink::Disabled,
                };
                (sink, None, Output::Pipes(stdout, stderr))
            }
            ChildIo::Pty(m) => (InputSink::Pty(m.clone()), Some(m.clone()), Output::Pty(m)),
        };
        let proc = Arc::new(Proc {
            pid: started.pid,
            info,
            input: tokio::sync::Mutex::new(input),
            pty,
            pidfd: started.pidfd,
            state: Mutex::new(ProcState::default()),
        });
        let rx = match proc.attach() {
            Attach::Live(rx) => rx,
            Attach::Ended(_) => mpsc::channel(1).1,
        };
        self.insert(proc.clone());
        let table = self.procs.clone();
        let p = proc.clone();
        let log = self.log.clone();
        let t0 = Instant::now();
        let counters = self.counters.clone();
        let before = counters.as_deref().map(crate::work_counters::snapshot);
        tokio::spawn(async move {
            let status = drive(&p, output, started.exit, kill_at).await;
            let at_deadline = kill_at.is_some_and(|t| Instant::now() >= t);
            let cmdline = crate::log::command_line(&p.info.config.cmd, &p.info.config.args);
            log.process_exited(p.pid, &cmdline, status, at_deadline, t0.elapsed());
            let mut end = end_event(status);
            let why = match (counters.as_deref(), before) {
                (Some(c), Some(before)) => crate::work_counters::explain(c, before, status),
                _ => None,
            }
            .or_else(|| crate::command_policy::explain_exit(status));
            if let Some(why) = why {
                // also as the last line of stderr: the Python SDK's CommandExitException
                // message shows stderr, the JS SDK's CommandExitError shows `error`
                let line = match p.pty {
                    Some(_) => DataEvent::Pty(format!("\r\nsandboxd: {why}\r\n").into_bytes()),
                    None => DataEvent::Stderr(format!("sandboxd: {why}\n").into_bytes()),
                };
                p.publish(line).await;
                end.error = Some(why);
            }
            p.finish(end).await;
            tokio::time::sleep(EXIT_CACHE).await;
            let mut procs = lock(&table);
            if procs.get(&p.pid).is_some_and(|q| Arc::ptr_eq(q, &p)) {
                procs.remove(&p.pid);
            }
        });
        (proc, rx)
    }
}

enum Output {
    Pipes(pipe::Receiver, pipe::Receiver),
    Pty(Arc<PtyMaster>),
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Stream the output of `proc` until it has exited and its output is drained.
async fn drive(
    proc: &Proc,
    output: Output,
    exit: tokio::sync::oneshot::Receiver<ExitStatus>,
    mut kill_at: Option<Instant>,
) -> ExitStatus {
    let mut exit = exit;
    let mut status: Option<ExitStatus> = None;
    let mut drain_until: Option<Instant> = None;
    let killed = ExitStatus::Signaled {
        signal: libc::SIGKILL,
        core_dumped: false,
    };
    match output {
        Output::Pipes(mut out, mut err) => {
            let mut obuf = vec![0u8; PIPE_CHUNK];
            let mut ebuf = vec![0u8; PIPE_CHUNK];
            let (mut out_open, mut err_open) = (true, true);
            loop {
                if status.is_some() && !out_open && !err_open {
                    break;
                }
                tokio::select! {
                    biased;
                    s = &mut exit, if status.is_none() => {
                        status = Some(s.unwrap_or(killed));
                        drain_until = Some(Instant::now() + DRAIN_IDLE);
                    }
                    r = out.read(&mut obuf), if out_open => match r {
                        Ok(n) if n > 0 => {
                            proc.publish(DataEvent::Stdout(obuf[..n].to_vec())).await;
                            if status.is_some() { drain_until = Some(Instant::now() + DRAIN_IDLE); }
                        }
                        _ => out_open = false,
                    },
                    r = err.read(&mut ebuf), if err_open => match r {
                        Ok(n) if n > 0 => {
                            proc.publish(DataEvent::Stderr(ebuf[..n].to_vec())).await;
                            if status.is_some() { drain_until = Some(Instant::now() + DRAIN_IDLE); }
                        }
                        _ => err_open = false,
                    },
                    _ = sleep_until_opt(kill_at), if status.is_none() && kill_at.is_some() => {
                        let _ = proc.signal(libc::SIGKILL);
                        kill_at = None;
                    }
                    _ = sleep_until_opt(drain_until), if drain_until.is_some() => break,
                }
            }
        }
        Output::Pty(master) => {
            let mut buf = vec![0u8; PTY_CHUNK];
            let mut open = true;
            loop {
                if status.is_some() && !open {
                    break;
                }
                tokio::select! {
                    biased;
                    s = &mut exit, if status.is_none() => {
                        status = Some(s.unwrap_or(killed));
                        drain_until = Some(Instant::now() + DRAIN_IDLE);
                    }
                    r = spawn::pty_read(&master, &mut buf), if open => match r {
                        Ok(n) if n > 0 => {
                            proc.publish(DataEvent::Pty(buf[..n].to_vec())).await;
                            if status.is_some() { drain_until = Some(Instant::now() + DRAIN_IDLE); }
                        }
                        _ => open = false,
                    },
                    _ = sleep_until_opt(kill_at), if status.is_none() && kill_at.is_some() => {
                        let _ = proc.signal(libc::SIGKILL);
                        kill_at = None;
                    }
                    _ = sleep_until_opt(drain_until), if drain_until.is_some() => break,
                }
            }
        }
    }
    status.unwrap_or(killed)
}
