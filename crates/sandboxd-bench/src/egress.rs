//! Egress throughput (`docs/network.md`, "Measured"): `iperf3` from a sandbox to a server in a
//! network namespace the bench makes (a stand-in for the internet, so no traffic leaves the
//! machine), over the NAT path (an open policy: the kernel forwards) and over the egress proxy
//! (a policy with a domain entry: TCP 80 goes through the daemon's transparent proxy), next to
//! the host sending to the same server in the same run.
//!
//! The server is at [`SERVER`] (TEST-NET-2, routed as a /32 into the namespace over the transit
//! link [`HOST_TRANSIT`]/30, so it stays apart from the test suite's fake internet, which routes
//! the /24 around it). Without `iperf3` or `ip` the section is left out with a note.

use crate::BenchError;
use crate::api::{run_process, start_direct};
use crate::scenarios::Ctx;
use serde::{Deserialize, Serialize};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The server's address.
pub const SERVER: &str = "198.51.100.200";
/// The host's end of the transit link (the namespace's is the next address).
const HOST_TRANSIT: &str = "198.18.0.9";
const NS_TRANSIT: &str = "198.18.0.10";

/// What the egress measurements found, in Mbit/s (10^6 bits, what the receiver got).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressSection {
    /// The host sending to the server (the ceiling of this machine's veth and `iperf3`).
    pub host_mbps: f64,
    /// A sandbox with an open policy (NAT in the kernel).
    pub nat_mbps: f64,
    /// A sandbox whose TCP 80 goes through the egress proxy.
    pub proxy_mbps: f64,
    /// Seconds of each transfer.
    pub seconds: u32,
}

/// The namespace, its link and servers; removed on drop.
struct Internet {
    ns: String,
    link: String,
    servers: Vec<Child>,
}

impl Drop for Internet {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["route", "del", &format!("{SERVER}/32")]);
        let _ = ip(&["link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

impl Internet {
    fn up() -> Result<Internet, BenchError> {
        let ns = format!("sbxbench-{}", std::process::id());
        let link = format!("sbxbn{}", std::process::id() % 100_000);
        let me = Internet {
            ns: ns.clone(),
            link: link.clone(),
            servers: Vec::new(),
        };
        let step = |r: Result<(), String>| r.map_err(BenchError::Daemon);
        step(ip(&["netns", "add", &ns]))?;
        step(ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]))?;
        step(ip(&["addr", "add", &format!("{HOST_TRANSIT}/30"), "dev", &link]))?;
        step(ip(&["link", "set", &link, "up"]))?;
        step(ip(&["-n", &ns, "link", "set", "lo", "up"]))?;
        step(ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{NS_TRANSIT}/30"),
            "dev",
            "eth0",
        ]))?;
        step(ip(&["-n", &ns, "link", "set", "eth0", "up"]))?;
        step(ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{SERVER}/32"),
            "dev",
            "lo",
        ]))?;
        step(ip(&["-n", &ns, "route", "add", "default", "via", HOST_TRANSIT]))?;
        step(ip(&[
            "route",
            "replace",
            &format!("{SERVER}/32"),
            "via",
            NS_TRANSIT,
        ]))?;
        Ok(me)
    }

    /// An `iperf3` server on `port` of [`SERVER`] (one client at a time).
    fn serve(&mut self, port: u16) -> Result<(), BenchError> {
        let child = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "iperf3", "--server", "--bind", SERVER, "--port",
            ])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.servers.push(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect_timeout(
                &format!("{SERVER}:{port}")
                    .parse()
                    .map_err(|e| BenchError::Daemon(format!("{e}")))?,
                Duration::from_millis(100),
            )
            .is_ok()
            {
                // the probe counts as a client that went away; give the server a moment
                std::thread::sleep(Duration::from_millis(100));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(BenchError::Daemon(format!(
            "iperf3 on {SERVER}:{port} did not start"
        )))
    }
}

/// Mbit/s the receiver got, from `iperf3 --json` output.
pub fn received_mbps(json: &[u8]) -> Result<f64, BenchError> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        BenchError::Check(format!(
            "iperf3 output is not JSON ({e}): {}",
            String::from_utf8_lossy(json)
        ))
    })?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(BenchError::Check(format!("iperf3: {err}")));
    }
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .map(|b| b / 1e6)
        .ok_or_else(|| BenchError::Check("iperf3 output has no end.sum_received".into()))
}

fn client_args(port: u16, seconds: u32) -> Vec<String> {
    vec![
        "--client".into(),
        SERVER.into(),
        "--port".into(),
        port.to_string(),
        "--time".into(),
        seconds.to_string(),
        "--json".into(),
    ]
}

/// `iperf3` from a new sandbox with network settings `policy` to the server's `port`.
async fn from_sandbox(
    ctx: &Ctx,
    conn: &mut crate::http::Conn,
    policy: Option<serde_json::Value>,
    port: u16,
    seconds: u32,
) -> Result<f64, BenchError> {
    let extra = policy.map(|p| serde_json::json!({"network": p}));
    let (sbx, _) = ctx.create(conn, extra.as_ref()).await?;
    let args = client_args(port, seconds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_process(conn, &sbx, &start_direct("/usr/bin/iperf3", &args)).await;
    ctx.kill(conn, &sbx.id).await?;
    received_mbps(&out?.stdout)
}

/// The three measurements; `None` when `iperf3` or `ip` is missing.
pub async fn egress(ctx: &Ctx) -> Result<Option<EgressSection>, BenchError> {
    if !have("iperf3") || !have("ip") {
        return Ok(None);
    }
    let seconds = if ctx.cfg.quick { 1 } else { 5 };
    let mut inet = tokio::task::spawn_blocking(|| -> Result<Internet, BenchError> {
        let mut i = Internet::up()?;
        i.serve(5201)?;
        i.serve(80)?;
        Ok(i)
    })
    .await
    .map_err(|e| BenchError::Daemon(e.to_string()))??;
    let r = measure(ctx, seconds).await;
    tokio::task::spawn_blocking(move || {
        for c in &mut inet.servers {
            let _ = c.kill();
        }
        drop(inet);
    })
    .await
    .map_err(|e| BenchError::Daemon(e.to_string()))?;
    r.map(Some)
}

async fn measure(ctx: &Ctx, seconds: u32) -> Result<EgressSection, BenchError> {
    let host = tokio::process::Command::new("iperf3")
        .args(client_args(5201, seconds))
        .stdin(Stdio::null())
        .output()
        .await?;
    let host_mbps = received_mbps(&host.stdout)?;
    let mut conn = ctx.conn().await?;
    let nat_mbps = from_sandbox(ctx, &mut conn, None, 5201, seconds).await?;
    let proxied = serde_json::json!({"allowOut": ["bench.test", SERVER], "denyOut": ["0.0.0.0/0"]});
    let proxy_mbps = from_sandbox(ctx, &mut conn, Some(proxied), 80, seconds).await?;
    Ok(EgressSection {
        host_mbps,
        nat_mbps,
        proxy_mbps,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_json_is_read() {
        let ok = br#"{"end": {"sum_received": {"bits_per_second": 2500000000.0}}}"#;
        assert!((received_mbps(ok).unwrap() - 2500.0).abs() < 1e-9);
        let err = br#"{"error": "unable to connect to server"}"#;
        assert!(
            received_mbps(err)
                .unwrap_err()
                .to_string()
                .contains("unable to connect")
        );
        assert!(received_mbps(b"not json").is_err());
        assert!(received_mbps(b"{}").is_err());
    }
}
