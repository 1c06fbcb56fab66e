//! One running Jupyter kernel: the process (spawned by us, as the sandbox user), its ZeroMQ
//! sockets, and routing of its messages to the one request that waits for them.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use jupyter_protocol::connection_info::Transport;
use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, InterruptRequest, JupyterMessage, KernelInfoRequest, ShutdownRequest,
};
use jupyter_zmq_client::{Connection, RawMessage};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, info, warn};
use zeromq::SocketRecv;

use crate::error::Error;
use crate::language::Language;
use crate::output::{Channel, KernelMessage};
use crate::spawn::{KernelCommand, UserIds};

/// How long a kernel may take from spawn until it answers `kernel_info`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How a kernel is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptMode {
    /// SIGINT to the kernel process.
    Signal,
    /// `interrupt_request` on the control channel.
    Message,
}

/// Why a kernel is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Still running.
    Running,
    /// We stopped it (restart, delete, shutdown).
    Stopped,
    /// It exited on its own; the text says how (exit status or signal).
    Crashed(String),
}

struct Route {
    msg_id: String,
    tx: mpsc::Sender<KernelMessage>,
}

type Routes = Arc<StdMutex<Option<Route>>>;

/// A running kernel.
pub struct Kernel {
    /// Language it serves.
    pub language: Language,
    pid: i32,
    session: String,
    shell: Mutex<Connection<zeromq::DealerSendHalf>>,
    control: Mutex<Connection<zeromq::DealerSocket>>,
    interrupt_mode: InterruptMode,
    routes: Routes,
    exit_rx: watch::Receiver<Exit>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    dir: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Last lines a kernel wrote to stderr, for error messages.
#[derive(Clone, Default)]
struct Tail(Arc<StdMutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() >= 20 {
                q.pop_front();
            }
            q.push_back(line);
        }
    }
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Kernel {
    /// Spawns the kernel described by `cmd` in `cwd` and waits until it answers `kernel_info`
    /// on shell and publishes on iopub (so no early output can be lost).
    pub async fn start(
        language: Language,
        cmd: KernelCommand,
        dir: PathBuf,
        cwd: &str,
        user: Option<UserIds>,
    ) -> Result<Kernel, Error> {
        let not_started = |reason: String| Error::KernelStart {
            language: language.to_string(),
            reason,
        };
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_started(format!("working directory {cwd} is not a directory"))),
            Err(e) => return Err(not_started(format!("working directory {cwd}: {e}"))),
        }
        prepare_dir(&dir, user).map_err(|e| not_started(format!("runtime dir {}: {e}", dir.display())))?;

        let key = uuid::Uuid::new_v4().simple().to_string();
        let info = connection_info(cmd.transport.clone(), &dir, key, language)
            .await
            .map_err(|e| not_started(format!("connection info: {e}")))?;
        let conn_file = dir.join("connection.json");
        let json = serde_json::to_vec(&info).map_err(|e| not_started(e.to_string()))?;
        write_private(&conn_file, &json, user)
            .map_err(|e| not_started(format!("write {}: {e}", conn_file.display())))?;

        let mut command = cmd.to_command(&conn_file, cwd, user);
        let mut child = command
            .spawn()
            .map_err(|e| not_started(format!("{}: {e}", cmd.program.display())))?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        info!(%language, pid, "kernel spawned");

        let tail = Tail::default();
        let mut tasks = Vec::new();
        if let Some(out) = child.stdout.take() {
            tasks.push(tokio::spawn(log_lines(out, language, "stdout", None)));
        }
        if let Some(err) = child.stderr.take() {
            tasks.push(tokio::spawn(log_lines(
                err,
                language,
                "stderr",
                Some(tail.clone()),
            )));
        }

        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (exit_tx, exit_rx) = watch::channel(Exit::Running);
        {
            let stopping = stopping.clone();
            tasks.push(tokio::spawn(async move {
                let how = match child.wait().await {
                    Ok(status) => describe_status(status),
                    Err(e) => format!("wait failed: {e}"),
                };
                let exit = if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    Exit::Stopped
                } else {
                    warn!(%language, pid, %how, "kernel exited");
                    Exit::Crashed(how)
                };
                let _ = exit_tx.send(exit);
            }));
        }

        let session = uuid::Uuid::new_v4().to_string();
        let connect = async {
            if cmd.transport == Transport::IPC {
                wait_for_ipc(&dir, &exit_rx).await?;
            }
            let iopub = jupyter_zmq_client::create_client_iopub_connection(&info, "", &session).await?;
            let identity = jupyter_zmq_client::peer_identity_for_session(&session)?;
            let shell =
                jupyter_zmq_client::create_client_shell_connection_with_identity(&info, &session, identity)
                    .await?;
            let control = jupyter_zmq_client::create_client_control_connection(&info, &session).await?;
            Ok::<_, ConnectError>((iopub, shell, control))
        };
        let connected = tokio::time::timeout(START_TIMEOUT, connect).await;
        let (iopub, shell, control) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let reason = startup_failure(&e.to_string(), &exit_rx, &tail).await;
                kill_pid(pid);
                return Err(not_started(reason));
            }
            Err(_) => {
                kill_pid(pid);
                return Err(not_started(format!(
                    "no kernel sockets after {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
        };

        let routes: Routes = Arc::new(StdMutex::new(None));
        let (shell_send, shell_recv) = shell.split();
        tasks.push(tokio::spawn(read_loop(
            iopub,
            Channel::IoPub,
            routes.clone(),
            language,
        )));
        tasks.push(tokio::spawn(read_loop(
            shell_recv,
            Channel::Shell,
            routes.clone(),
            language,
        )));

        let kernel = Kernel {
            language,
            pid,
            session,
            shell: Mutex::new(shell_send),
            control: Mutex::new(control),
            interrupt_mode: cmd.interrupt_mode,
            routes,
            exit_rx,
            stopping,
            dir,
            tasks,
        };
        match tokio::time::timeout(START_TIMEOUT, kernel.handshake()).await {
            Ok(Ok(())) => {
                info!(%language, pid, "kernel ready");
                Ok(kernel)
            }
            Ok(Err(e)) => {
                let reason = startup_failure(&e.to_string(), &kernel.exit_rx, &tail).await;
                kernel.stop().await;
                Err(not_started(reason))
            }
            Err(_) => {
                let reason = startup_failure(
                    &format!("no answer to kernel_info within {}s", START_TIMEOUT.as_secs()),
                    &kernel.exit_rx,
                    &tail,
                )
                .await;
                kernel.stop().await;
                Err(not_started(reason))
            }
        }
    }

    /// Sends `kernel_info_request` until the reply and an iopub message for it have both
    /// arrived: from then on, the iopub subscription is live.
    async fn handshake(&self) -> Result<(), Error> {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let msg: JupyterMessage = JupyterMessage::new(KernelInfoRequest {}, None);
            let (tx, mut rx) = mpsc::channel(16);
            self.set_route(&msg.header.msg_id, tx);
            self.shell
                .lock()
                .await
                .send(msg)
                .await
                .map_err(|e| Error::Kernel(e.to_string()))?;
            let mut reply = false;
            let mut iopub = false;
            let attempt = tokio::time::sleep(Duration::from_millis(1000));
            tokio::pin!(attempt);
            let mut exit_rx = self.exit_rx.clone();
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) if m.channel == Channel::Shell => reply = true,
                        Some(_) => iopub = true,
                        None => break,
                    },
                    _ = &mut attempt => break,
                    _ = exit_rx.changed() => {
                        return Err(Error::Kernel("kernel process exited during start".into()));
                    }
                }
                if reply && iopub {
                    self.clear_route();
                    return Ok(());
                }
            }
            self.clear_route();
            if reply && attempts >= 3 {
                // A kernel that never publishes status for kernel_info: go on without it.
                warn!(language = %self.language, "kernel answers kernel_info but publishes nothing on iopub");
                return Ok(());
            }
            if *self.exit_rx.borrow() != Exit::Running {
                return Err(Error::Kernel("kernel process exited during start".into()));
            }
        }
    }

    /// Routes every message whose parent is `msg_id` to `tx` (replacing any earlier route).
    pub fn set_route(&self, msg_id: &str, tx: mpsc::Sender<KernelMessage>) {
        if let Ok(mut r) = self.routes.lock() {
            *r = Some(Route {
                msg_id: msg_id.to_string(),
                tx,
            });
        }
    }

    /// Drops the current route; later messages for it are discarded.
    pub fn clear_route(&self) {
        if let Ok(mut r) = self.routes.lock() {
            *r = None;
        }
    }

    /// Sends an `execute_request`; returns its msg_id. Output is routed to `tx`.
    pub async fn execute(
        &self,
        code: String,
        silent: bool,
        tx: mpsc::Sender<KernelMessage>,
    ) -> Result<String, Error> {
        let req = ExecuteRequest {
            code,
            silent,
            store_history: !silent,
            user_expressions: None,
            allow_stdin: false,
            stop_on_error: true,
        };
        let msg: JupyterMessage = JupyterMessage::new(req, None);
        let id = msg.header.msg_id.clone();
        self.set_route(&id, tx);
        let mut shell = self.shell.lock().await;
        shell
            .send(msg)
            .await
            .map_err(|e| Error::Kernel(format!("send execute_request: {e}")))?;
        Ok(id)
    }

    /// Runs `code` silently and waits until the kernel is idle again. Returns the error the
    /// kernel reported, if any.
    pub async fn run_silent(&self, code: String, timeout: Duration) -> Result<Option<String>, Error> {
        let (tx, mut rx) = mpsc::channel(64);
        self.execute(code, true, tx).await?;
        let mut exit_rx = self.exit_rx.clone();
        let mut error = None;
        let mut busy = false;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let result = loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { break Ok(error) };
                    match (m.channel, m.msg_type.as_str()) {
                        (Channel::IoPub, "error") => {
                            let name = m.content.get("ename").and_then(Value::as_str).unwrap_or("");
                            let value = m.content.get("evalue").and_then(Value::as_str).unwrap_or("");
                            error = Some(format!("{name}: {value}"));
                        }
                        (Channel::IoPub, "status") => {
                            match m.content.get("execution_state").and_then(Value::as_str) {
                                Some("busy") => busy = true,
                                Some("idle") if busy => break Ok(error),
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
                _ = exit_rx.changed() => break Err(Error::Kernel("kernel exited".into())),
                _ = &mut deadline => break Err(Error::Kernel("kernel did not finish a setup cell in time".into())),
            }
        };
        self.clear_route();
        result
    }

    /// Interrupts the running execution.
    pub async fn interrupt(&self) {
        debug!(language = %self.language, pid = self.pid, "interrupting kernel");
        match self.interrupt_mode {
            InterruptMode::Signal => {
                if self.pid > 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(self.pid),
                        nix::sys::signal::Signal::SIGINT,
                    );
                }
            }
            InterruptMode::Message => {
                let msg: JupyterMessage = JupyterMessage::new(InterruptRequest {}, None);
                let mut control = self.control.lock().await;
                if control.send(msg).await.is_ok() {
                    // The reply is not needed; drain it so the socket does not fill up.
                    let _ = tokio::time::timeout(Duration::from_secs(2), control.socket.recv()).await;
                }
            }
        }
    }

    /// After an interrupt, how long to wait for the execution to end before the kernel is
    /// restarted so that its context stays usable. SIGINT stops ipykernel, bash_kernel and
    /// IRkernel at once; Deno does not stop pending promises on `interrupt_request` (and dies
    /// on SIGINT), so it gets only a short grace.
    pub fn interrupt_grace(&self) -> Duration {
        match self.interrupt_mode {
            InterruptMode::Signal => Duration::from_secs(10),
            InterruptMode::Message => Duration::from_secs(2),
        }
    }

    /// A receiver that changes when the process exits.
    pub fn exit_watch(&self) -> watch::Receiver<Exit> {
        self.exit_rx.clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        *self.exit_rx.borrow() == Exit::Running
    }

    /// Stops the kernel: a polite `shutdown_request`, then SIGKILL of its process group.
    pub async fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if self.is_running() {
            let msg: JupyterMessage = JupyterMessage::new(ShutdownRequest { restart: false }, None);
            if let Ok(mut control) =
                tokio::time::timeout(Duration::from_millis(200), self.control.lock()).await
            {
                let _ = tokio::time::timeout(Duration::from_millis(200), control.send(msg)).await;
            }
            let mut rx = self.exit_rx.clone();
            let _ =
                tokio::time::timeout(Duration::from_millis(300), rx.wait_for(|e| *e != Exit::Running)).await;
        }
        kill_pid(self.pid);
        let mut rx = self.exit_rx.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|e| *e != Exit::Running)).await;
        self.clear_route();
        let _ = std::fs::remove_dir_all(&self.dir);
        debug!(language = %self.language, pid = self.pid, session = %self.session, "kernel stopped");
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        kill_pid(self.pid);
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Zmq(#[from] jupyter_zmq_client::RuntimeError),
    #[error("{0}")]
    Other(String),
}

/// Waits until the kernel has created its five ipc socket files (a pure-Rust ZeroMQ connect to a
/// missing ipc endpoint fails instead of retrying).
async fn wait_for_ipc(dir: &Path, exit_rx: &watch::Receiver<Exit>) -> Result<(), ConnectError> {
    loop {
        if (1..=5).all(|i| dir.join(format!("k-{i}")).exists()) {
            return Ok(());
        }
        if *exit_rx.borrow() != Exit::Running {
            return Err(ConnectError::Other("kernel process exited during start".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn startup_failure(what: &str, exit_rx: &watch::Receiver<Exit>, tail: &Tail) -> String {
    let mut rx = exit_rx.clone();
    // Give stderr a moment to be read after an exit.
    let _ = tokio::time::timeout(Duration::from_millis(300), rx.wait_for(|e| *e != Exit::Running)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut reason = what.to_string();
    if let Exit::Crashed(how) = &*exit_rx.borrow() {
        reason = format!("kernel process {how}");
    }
    let tail = tail.text();
    if !tail.is_empty() {
        reason.push_str(": ");
        reason.push_str(&tail);
    }
    reason
}

async fn read_loop<S: SocketRecv + Send>(
    mut conn: Connection<S>,
    channel: Channel,
    routes: Routes,
    language: Language,
) {
    loop {
        let raw = match conn.socket.recv().await {
            Ok(m) => m,
            Err(e) => {
                debug!(%language, ?channel, "kernel socket closed: {e}");
                return;
            }
        };
        let raw = match RawMessage::from_multipart(raw, &conn.mac) {
            Ok(r) => r,
            Err(e) => {
                warn!(%language, ?channel, "bad kernel message: {e}");
                continue;
            }
        };
        let Some((parent, msg)) = parse_raw(&raw.jparts, channel) else {
            continue;
        };
        tracing::trace!(%language, ?channel, msg_type = %msg.msg_type, %parent, "kernel message");
        let tx = match routes.lock() {
            Ok(r) => match &*r {
                Some(route) if route.msg_id == parent => Some(route.tx.clone()),
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(tx) = tx {
            // Backpressure: a slow client slows the kernel's output down instead of growing
            // buffers here.
            let _ = tx.send(msg).await;
        }
    }
}

/// Parses the JSON frames of a message: (parent msg_id, message).
fn parse_raw(jparts: &[bytes::Bytes], channel: Channel) -> Option<(String, KernelMessage)> {
    let header: Value = serde_json::from_slice(jparts.first()?).ok()?;
    let parent: Value = serde_json::from_slice(jparts.get(1)?).ok()?;
    let content: Value = serde_json::from_slice(jparts.get(3)?).ok()?;
    let parent_id = parent.get("msg_id").and_then(Value::as_str)?.to_string();
    let msg_type = header.get("msg_type").and_then(Value::as_str)?.to_string();
    let date = header.get("date").and_then(Value::as_str).map(str::to_string);
    Some((
        parent_id,
        KernelMessage {
            channel,
            msg_type,
            date,
            content,
        },
    ))
}

async fn log_lines<R: AsyncRead + Unpin>(r: R, language: Language, stream: &'static str, tail: Option<Tail>) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        debug!(%language, stream, "kernel: {line}");
        if let Some(t) = &tail {
            t.push(line);
        }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("?");
            format!("was killed by signal {sig} ({name})")
        }
        _ => "exited".to_string(),
    }
}

fn kill_pid(pid: i32) {
    if pid > 0 {
        // The kernel leads its own process group: take its children (bash_kernel's bash, ...) too.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn prepare_dir(dir: &Path, user: Option<UserIds>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some(u) = user {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8], user: Option<UserIds>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

async fn connection_info(
    transport: Transport,
    dir: &Path,
    key: String,
    language: Language,
) -> std::io::Result<ConnectionInfo> {
    let (ip, ports) = match transport {
        Transport::IPC => (dir.join("k").to_string_lossy().into_owned(), vec![1, 2, 3, 4, 5]),
        Transport::TCP => {
            // Kernels that only speak TCP (Deno, IJava) get free loopback ports.
            let mut listeners = Vec::new();
            let mut ports = Vec::new();
            for _ in 0..5 {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                ports.push(l.local_addr()?.port());
                listeners.push(l);
            }
            ("127.0.0.1".to_string(), ports)
        }
    };
    Ok(ConnectionInfo {
        ip,
        transport,
        shell_port: ports[0],
        iopub_port: ports[1],
        stdin_port: ports[2],
        control_port: ports[3],
        hb_port: ports[4],
        key,
        signature_scheme: "hmac-sha256".to_string(),
        kernel_name: Some(language.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_frames() {
        let parts = vec![
            bytes::Bytes::from_static(
                br#"{"msg_id":"m2","msg_type":"stream","date":"2025-01-01T00:00:00Z"}"#,
            ),
            bytes::Bytes::from_static(br#"{"msg_id":"m1"}"#),
            bytes::Bytes::from_static(b"{}"),
            bytes::Bytes::from_static(br#"{"name":"stdout","text":"x"}"#),
        ];
        let (parent, msg) = parse_raw(&parts, Channel::IoPub).unwrap();
        assert_eq!(parent, "m1");
        assert_eq!(msg.msg_type, "stream");
        assert_eq!(msg.date.as_deref(), Some("2025-01-01T00:00:00Z"));
        assert_eq!(msg.content["text"], "x");
        // No parent (for example the kernel's startup status): not routable.
        let mut orphan = parts.clone();
        orphan[1] = bytes::Bytes::from_static(b"{}");
        assert!(parse_raw(&orphan, Channel::IoPub).is_none());
        assert!(parse_raw(&parts[..3], Channel::IoPub).is_none());
    }

    #[tokio::test]
    async fn ipc_connection_info_uses_the_kernel_dir() {
        let dir = tempfile::tempdir().unwrap();
        let info = connection_info(Transport::IPC, dir.path(), "k".into(), Language::Python)
            .await
            .unwrap();
        assert_eq!(info.shell_url(), format!("ipc://{}/k-1", dir.path().display()));
        let info = connection_info(Transport::TCP, dir.path(), "k".into(), Language::Javascript)
            .await
            .unwrap();
        assert!(info.shell_url().starts_with("tcp://127.0.0.1:"));
        let mut ports = [
            info.shell_port,
            info.iopub_port,
            info.stdin_port,
            info.control_port,
            info.hb_port,
        ];
        ports.sort();
        ports.windows(2).for_each(|w| assert_ne!(w[0], w[1]));
    }

    #[test]
    fn status_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_status(std::process::ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_status(std::process::ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
    }
}
