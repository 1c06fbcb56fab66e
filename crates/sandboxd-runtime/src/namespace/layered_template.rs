//! Templates built from a generated skeleton plus read-only host directories, and the services
//! the agent supervises in them (see `docs/templates.md`).
//!
//! Today there is one such template, `code-interpreter-v1`: the `base` skeleton with the host's
//! interpreter layer (`/opt/sandboxd/interpreter`, filled by `scripts/setup-interpreter.sh`)
//! bind-mounted read-only at the same path, and `sandboxd interpreter` supervised by the agent.
//! A template of this kind exists only while its layers are installed on the host.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the code-interpreter template (the SDK's default).
pub const CODE_INTERPRETER: &str = "code-interpreter-v1";
/// Other names accepted for it.
pub const CODE_INTERPRETER_ALIASES: &[&str] = &["code-interpreter", "code-interpreter-beta"];
/// Where the interpreter layer lives on the host and inside the sandbox.
pub const INTERPRETER_LAYER: &str = "/opt/sandboxd/interpreter";
/// Environment variable that moves the host side of the interpreter layer (tests, set-ups that
/// keep it elsewhere). Inside, it is always at [`INTERPRETER_LAYER`].
pub const INTERPRETER_LAYER_ENV: &str = "SANDBOXD_INTERPRETER_DIR";
pub use super::mounts::ReadOnlyBind;
pub use sandboxd_protocol::{INTERPRETER_PORT, INTERPRETER_SERVICE};
/// Path polled for readiness: answers once the default Python kernel runs.
pub const INTERPRETER_READY_PATH: &str = "/ready";

/// Host configuration directories the interpreter's kernels need, bound read-only at the same
/// path when they exist on the host (no secrets: R's site configuration).
pub const HOST_CONFIG_BINDS: &[&str] = &["/etc/R"];

/// An HTTP endpoint inside the sandbox that must answer 200 before the sandbox is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCheck {
    /// Port inside the sandbox.
    pub port: u16,
    /// Path that answers 200 once ready.
    pub path: &'static str,
}

/// What a layered template resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayeredTemplate {
    /// The generated skeleton (a directory under `<data>/templates`) used as the root lower.
    pub skeleton: &'static str,
    /// Read-only binds on top of the root overlay.
    pub binds: Vec<ReadOnlyBind>,
    /// Services the agent supervises (`AgentConfig::services`).
    pub services: Vec<String>,
    /// Checked after the agent answers; `create` returns only once it answers 200.
    pub ready: Option<ReadyCheck>,
}

/// The host directory of the interpreter layer.
pub fn interpreter_layer_dir() -> PathBuf {
    std::env::var_os(INTERPRETER_LAYER_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(INTERPRETER_LAYER))
}

/// Whether `dir` holds an installed interpreter layer (`.stamp` written last by the set-up
/// script, and the Python packages).
pub fn interpreter_layer_installed(dir: &Path) -> bool {
    dir.join(".stamp").is_file() && dir.join("python").is_dir()
}

/// Whether `name` is one of the code-interpreter template names.
pub fn is_code_interpreter(name: &str) -> bool {
    name == CODE_INTERPRETER || CODE_INTERPRETER_ALIASES.contains(&name)
}

/// Resolve a layered template by name, looking at the host layer `layer` (normally
/// [`interpreter_layer_dir`]). `None` when `name` is not a layered template or its layer is
/// not installed.
pub fn resolve_with(name: &str, layer: &Path) -> Option<LayeredTemplate> {
    if !is_code_interpreter(name) || !interpreter_layer_installed(layer) {
        return None;
    }
    let mut binds = vec![ReadOnlyBind {
        source: layer.to_path_buf(),
        target: INTERPRETER_LAYER.to_string(),
    }];
    // R (the optional IRkernel) reads its configuration from /etc/R (`/usr/lib/R/etc` links
    // there), which the base skeleton's /etc allow-list does not copy.
    for extra in HOST_CONFIG_BINDS {
        if Path::new(extra).is_dir() {
            binds.push(ReadOnlyBind {
                source: PathBuf::from(extra),
                target: extra.to_string(),
            });
        }
    }
    Some(LayeredTemplate {
        skeleton: super::template::BASE,
        binds,
        services: vec![INTERPRETER_SERVICE.to_string()],
        ready: Some(ReadyCheck {
            port: INTERPRETER_PORT,
            path: INTERPRETER_READY_PATH,
        }),
    })
}

/// [`resolve_with`] for the configured host layer.
pub fn resolve(name: &str) -> Option<LayeredTemplate> {
    resolve_with(name, &interpreter_layer_dir())
}

/// Why a known layered template cannot be used right now (its layer is missing), for the
/// error the daemon returns. `None` for names that are not layered templates.
pub fn missing_reason_with(name: &str, layer: &Path) -> Option<String> {
    if !is_code_interpreter(name) || interpreter_layer_installed(layer) {
        return None;
    }
    Some(format!(
        "template '{name}' is not installed on this host: its interpreter layer {} is missing or \
         incomplete; run scripts/setup-interpreter.sh (as root) and retry",
        layer.display()
    ))
}

/// [`missing_reason_with`] for the configured host layer.
pub fn missing_reason(name: &str) -> Option<String> {
    missing_reason_with(name, &interpreter_layer_dir())
}

/// Log at backend start which layered templates are usable, and what is missing for the others.
pub fn log_availability() {
    let layer = interpreter_layer_dir();
    match missing_reason_with(CODE_INTERPRETER, &layer) {
        None => tracing::info!(layer = %layer.display(), "template {CODE_INTERPRETER} available"),
        Some(why) => tracing::warn!("{why}"),
    }
}

/// Send one `GET <path>` through the agent's `CONNECT` tunnel to `127.0.0.1:<port>` and return
/// the status code of the inner answer (`Ok(502)` from the tunnel when nothing listens yet).
async fn probe(api: &Path, port: u16, path: &str) -> io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std_stream = super::connect_unix(api)?;
    std_stream.set_nonblocking(true)?;
    let mut s = tokio::net::UnixStream::from_std(std_stream)?;
    let connect = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    s.write_all(connect.as_bytes()).await?;
    let head = read_head(&mut s).await?;
    let code = status_code(&head)?;
    if code != 200 {
        return Ok(code);
    }
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let head = read_head(&mut s).await?;
    let code = status_code(&head)?;
    // drain a little of the body for the log on failure; the connection closes on drop
    let mut rest = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut rest)).await;
    Ok(code)
}

async fn read_head(s: &mut tokio::net::UnixStream) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    // byte-wise: the bytes after the CONNECT answer's head belong to the tunnelled stream
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        buf.push(byte[0]);
        if buf.len() > 16 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head too long"));
        }
    }
    Ok(buf)
}

fn status_code(head: &[u8]) -> io::Result<u16> {
    let line = String::from_utf8_lossy(head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP answer: {line:.80}")))
}

/// Poll `check` through the agent socket `api` until it answers 200. Waits as long as the
/// caller lets it (wrap it in a timeout); returns the last failure on `Err` only when the
/// endpoint answers with a definitive server error (5xx other than 502/503) three times.
pub async fn wait_ready(api: &Path, check: &ReadyCheck) -> Result<(), String> {
    let mut delay = Duration::from_millis(10);
    let mut errors = 0;
    loop {
        match probe(api, check.port, check.path).await {
            Ok(200) => return Ok(()),
            // not listening yet (tunnel 502), or starting (503)
            Ok(502) | Ok(503) => {}
            Ok(code) if code >= 500 => {
                errors += 1;
                if errors >= 3 {
                    return Err(format!(
                        "GET {} on port {} answered {code}",
                        check.path, check.port
                    ));
                }
            }
            Ok(_) | Err(_) => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(installed: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if installed {
            std::fs::create_dir(d.path().join("python")).unwrap();
            std::fs::write(d.path().join(".stamp"), "x").unwrap();
        }
        d
    }

    #[test]
    fn resolves_only_when_installed() {
        let ok = layer(true);
        let t = resolve_with(CODE_INTERPRETER, ok.path()).unwrap();
        assert_eq!(t.skeleton, "base");
        assert_eq!(t.binds[0].source, ok.path());
        assert_eq!(t.binds[0].target, INTERPRETER_LAYER);
        assert_eq!(t.services, vec!["interpreter".to_string()]);
        assert!(resolve_with("code-interpreter", ok.path()).is_some());
        assert!(resolve_with("base", ok.path()).is_none());
        assert!(missing_reason_with(CODE_INTERPRETER, ok.path()).is_none());

        let missing = layer(false);
        assert!(resolve_with(CODE_INTERPRETER, missing.path()).is_none());
        let why = missing_reason_with(CODE_INTERPRETER, missing.path()).unwrap();
        assert!(why.contains("scripts/setup-interpreter.sh"), "{why}");
        assert!(missing_reason_with("base", missing.path()).is_none());
        // a stamp without the python dir is a half-finished set-up
        std::fs::write(missing.path().join(".stamp"), "x").unwrap();
        assert!(resolve_with(CODE_INTERPRETER, missing.path()).is_none());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").unwrap(), 502);
        assert!(status_code(b"garbage").is_err());
    }
}
