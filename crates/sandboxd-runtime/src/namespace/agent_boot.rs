//! Waiting for a freshly spawned agent: `GET /health` on its socket, the template's service
//! readiness, or the agent's exit.

use super::layered_template;
use super::sandbox_dirs::tail;
use super::{NamespaceBackend, step, sys};
use crate::RuntimeError;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Send `GET /health` over a unix socket and return the HTTP status code.
pub async fn agent_health(sock: &Path) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std_stream = sys::connect_unix(sock)?;
    std_stream.set_nonblocking(true)?;
    let mut s = tokio::net::UnixStream::from_std(std_stream)?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(2).any(|w| w == b"\r\n") || buf.len() > 4096 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidData, format!("bad HTTP answer: {:.80}", line))
        })?;
    Ok(code)
}

/// Wait until the pidfd is readable (the process exited).
pub(super) async fn wait_exit(pidfd: Arc<OwnedFd>) {
    let Ok(dup) = pidfd.try_clone() else {
        return std::future::pending().await;
    };
    // SAFETY: `dup` is an OwnedFd moved into the AsyncFd, so it stays open and refers to the
    // same pidfd for as long as the registration exists.
    match unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => std::future::pending().await,
    }
}

impl NamespaceBackend {
    /// Wait until a freshly booted agent answers `GET /health` on its `agent.sock` and, for
    /// layered templates, until their service is ready (the code interpreter's kernel), or
    /// fail when the agent exits or the ready timeout passes (30 s at least with a service).
    pub(super) async fn wait_booted(
        &self,
        sbx: &Path,
        pidfd: &Arc<OwnedFd>,
        service_ready: Option<&layered_template::ReadyCheck>,
    ) -> Result<(), RuntimeError> {
        let api = sbx.join("run/agent.sock");
        let mut timeout = self.inner.cfg.ready_timeout;
        if service_ready.is_some() {
            // a Python kernel start takes seconds on a busy host
            timeout = timeout.max(Duration::from_secs(30));
        }
        let ready = async {
            let mut delay = Duration::from_millis(1);
            loop {
                match agent_health(&api).await {
                    Ok(204) => break,
                    Ok(code) => return Err(format!("GET /health answered {code}")),
                    // the agent closed the connection before answering; retry shortly
                    Err(_) => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(50));
                    }
                }
            }
            match service_ready {
                Some(check) => layered_template::wait_ready(&api, check).await,
                None => Ok(()),
            }
        };
        tokio::select! {
            r = ready => r.map_err(|m| step("agent health", m)),
            _ = wait_exit(pidfd.clone()) => Err(step(
                "agent",
                format!("agent exited during boot; log: {}", tail(&sbx.join("agent.log"), 2000)),
            )),
            _ = tokio::time::sleep(timeout) => Err(if service_ready.is_some() {
                step("service ready", format!(
                    "the template's service did not become ready within {} ms; agent log: {}",
                    timeout.as_millis(),
                    tail(&sbx.join("agent.log"), 2000)
                ))
            } else {
                RuntimeError::NotReady(timeout.as_millis() as u64)
            }),
        }
    }
}
