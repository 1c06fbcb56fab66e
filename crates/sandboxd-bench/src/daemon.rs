//! The daemon under test: the same executable's `serve`, on a free loopback port, with a
//! throwaway data dir and API key. Stopped (SIGTERM, then SIGKILL) by [`Daemon::stop`].

use crate::BenchError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A running `sandboxd serve`.
pub struct Daemon {
    child: tokio::process::Child,
    pub pid: i32,
    pub addr: SocketAddr,
    pub key: String,
    pub data_dir: PathBuf,
    /// The daemon's stderr (logs and the runtime's timing lines).
    pub log: PathBuf,
    pub serve_args: Vec<String>,
}

/// Parses the `export E2B_API_URL=http://<addr>` and `export E2B_API_KEY=<key>` lines.
pub fn parse_exports(lines: &[String]) -> Option<(SocketAddr, String)> {
    let mut addr = None;
    let mut key = None;
    for l in lines {
        if let Some(u) = l.strip_prefix("export E2B_API_URL=http://") {
            addr = u.trim().trim_end_matches('/').parse().ok();
        } else if let Some(k) = l.strip_prefix("export E2B_API_KEY=") {
            key = Some(k.trim().to_string());
        }
    }
    Some((addr?, key?))
}

/// A fresh API key in the SDK's format (`e2b_` + 40 hex digits).
pub fn new_key() -> String {
    let mut b = [0u8; 20];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Not a secret worth failing over: the daemon only listens on loopback for this run.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b[..16].copy_from_slice(&t.to_le_bytes());
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("e2b_{hex}")
}

/// The `serve --help` text of `exe`.
pub async fn serve_help(exe: &Path) -> String {
    match tokio::process::Command::new(exe)
        .args(["serve", "--help"])
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(_) => String::new(),
    }
}

impl Daemon {
    /// Starts `exe serve` with its data dir and log under `work` (which must exist).
    pub async fn start(
        exe: &Path,
        work: &Path,
        name: &str,
        extra_args: &[String],
    ) -> Result<Daemon, BenchError> {
        let data_dir = work.join(name);
        let log = work.join(format!("{name}.stderr.log"));
        let key = new_key();
        let mut serve_args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
        ];
        serve_args.extend(extra_args.iter().cloned());
        let log_file = std::fs::File::create(&log)
            .map_err(|e| BenchError::Daemon(format!("creating {}: {e}", log.display())))?;
        let mut child = tokio::process::Command::new(exe)
            .args(&serve_args)
            .env("SANDBOXD_API_KEY", &key)
            .env("SANDBOXD_RUNTIME_TIMING", "1")
            .env(
                "RUST_LOG",
                std::env::var("SANDBOXD_BENCH_DAEMON_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Daemon(format!("starting {} serve: {e}", exe.display())))?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Daemon("no stdout pipe".into()))?;
        let mut reader = BufReader::new(stdout);
        let read = async {
            let mut lines = Vec::new();
            while lines.len() < 3 {
                let mut l = String::new();
                if reader.read_line(&mut l).await.unwrap_or(0) == 0 {
                    break;
                }
                lines.push(l.trim_end().to_string());
            }
            lines
        };
        let lines = tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .unwrap_or_default();
        // Keep draining stdout so the daemon never blocks on a full pipe.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
        });
        let Some((addr, got_key)) = parse_exports(&lines) else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(BenchError::Daemon(format!(
                "the daemon did not print its address (got {lines:?}); its log ends with: {tail}"
            )));
        };
        if got_key != key {
            tracing::warn!("the daemon uses another API key than the one the bench gave it");
        }
        Ok(Daemon {
            child,
            pid,
            addr,
            key: got_key,
            data_dir,
            log,
            serve_args,
        })
    }

    /// Bytes written to the daemon's stderr so far.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The daemon's stderr between two offsets.
    pub fn log_slice(&self, from: u64, to: u64) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return String::new();
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.take(to.saturating_sub(from)).read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The spawn helper and other children of the daemon (pids).
    pub fn children(&self) -> Vec<i32> {
        let path = format!("/proc/{}/task/{}/children", self.pid, self.pid);
        std::fs::read_to_string(path)
            .map(|t| crate::procfs::parse_pids(&t))
            .unwrap_or_default()
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Sandboxes survive a SIGTERM: kill them first.
    pub async fn stop(mut self) -> Result<(), BenchError> {
        if self.pid > 0 {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                Err(BenchError::Daemon(
                    "the daemon did not stop within 10 s of SIGTERM".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports() {
        let lines = vec![
            "export E2B_API_URL=http://127.0.0.1:4567".to_string(),
            "export E2B_SANDBOX_URL=http://127.0.0.1:4567".to_string(),
            "export E2B_API_KEY=e2b_00ff".to_string(),
        ];
        let (a, k) = parse_exports(&lines).unwrap();
        assert_eq!(a, "127.0.0.1:4567".parse().unwrap());
        assert_eq!(k, "e2b_00ff");
        assert!(parse_exports(&lines[..2]).is_none());
        assert!(parse_exports(&["export E2B_API_URL=http://nonsense".to_string()]).is_none());
    }

    #[test]
    fn keys() {
        let k = new_key();
        assert_eq!(k.len(), 44);
        assert!(k.starts_with("e2b_") && k[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(new_key(), k);
    }
}
