//! Per-sandbox bandwidth limits (`network.bandwidth`, `docs/network.md`, "Bandwidth"), kept on
//! the host side of the sandbox's link, where the sandbox cannot change them.
//!
//! - What the sandbox receives leaves the host through the host end of its veth: a token
//!   bucket (`tbf`) as that device's root qdisc.
//! - What the sandbox sends arrives on the host end: an `ingress` qdisc redirects every packet
//!   (`u32` match-all, `mirred`) to the slot's own `ifb` device, whose root `tbf` shapes it.
//!   Shaping (queueing) rather than policing (dropping) keeps TCP at the configured rate.
//!
//! Written with Debian's `tc` and `ip` (iproute2) in one batch each: the kernel's traffic
//! control has no maintained Rust binding for `tbf` and `mirred`.

use crate::policy::Bandwidth;
use std::fmt::Write;
use tokio::process::Command;

/// Queueing allowed before packets are dropped (the bucket's `latency`).
const LATENCY_MS: u64 = 100;

/// The bucket size for `kbit` per second: 20 ms worth, at least 16 KiB (several full-size
/// packets; `tbf` needs at least one MTU).
pub fn burst_bytes(kbit: u64) -> u64 {
    (kbit * 1000 / 8 / 50).max(16 * 1024)
}

/// The `tc -batch` commands that set `bw` on host link `link` with shaper device `shaper`
/// (which must exist when egress is limited), removing what a direction no longer limits.
pub fn tc_batch(link: &str, shaper: &str, bw: &Bandwidth) -> String {
    let mut s = String::new();
    let tbf = |kbit: u64| {
        format!(
            "tbf rate {kbit}kbit burst {} latency {LATENCY_MS}ms",
            burst_bytes(kbit)
        )
    };
    match bw.ingress_kbit {
        Some(k) => {
            let _ = writeln!(s, "qdisc replace dev {link} root {}", tbf(k));
        }
        None => {
            let _ = writeln!(s, "qdisc del dev {link} root");
        }
    }
    match bw.egress_kbit {
        Some(k) => {
            let _ = writeln!(s, "qdisc replace dev {link} handle ffff: ingress");
            let _ = writeln!(
                s,
                "filter replace dev {link} parent ffff: pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev {shaper}"
            );
            let _ = writeln!(s, "qdisc replace dev {shaper} root {}", tbf(k));
        }
        None => {
            let _ = writeln!(s, "qdisc del dev {link} ingress");
        }
    }
    s
}

/// Applies `bw` to host link `link`: creates the shaper device `shaper` when egress is
/// limited, removes it when not.
pub async fn apply(link: &str, shaper: &str, bw: &Bandwidth) -> std::io::Result<()> {
    if bw.egress_kbit.is_some() {
        let exists = Command::new("ip")
            .args(["link", "show", "dev", shaper])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await?
            .success();
        if !exists {
            run("ip", &["link", "add", shaper, "type", "ifb"]).await?;
        }
        run("ip", &["link", "set", shaper, "up"]).await?;
    }
    // `-force` goes on after a failed line (deleting what is not there) and still reports it
    let batch = tc_batch(link, shaper, bw);
    let mut child = Command::new("tc")
        .args(["-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(batch.as_bytes()).await?;
        // dropped here: end of input
    }
    let out = child.wait_with_output().await?;
    let err = String::from_utf8_lossy(&out.stderr);
    // only the deletes of absent qdiscs may fail
    let real: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !(l.contains("Cannot delete qdisc with handle of zero")
                || l.contains("Cannot find specified qdisc")
                || l.contains("Invalid handle")
                || l.contains("No such file or directory")
                || l.starts_with("Command failed"))
        })
        .collect();
    if !real.is_empty() {
        return Err(std::io::Error::other(format!("tc: {}", real.join("; "))));
    }
    if bw.egress_kbit.is_none() {
        remove_shaper(shaper).await;
    }
    Ok(())
}

/// Removes a shaper device (nothing if it is not there).
pub async fn remove_shaper(shaper: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", "dev", shaper])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

async fn run(prog: &str, args: &[&str]) -> std::io::Result<()> {
    let out = Command::new(prog).args(args).output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_limit_each_direction_and_clear_the_other() {
        let both = Bandwidth {
            egress_kbit: Some(1000),
            ingress_kbit: Some(8000),
        };
        let b = tc_batch("sx0001_3", "si0001_3", &both);
        assert!(b.contains("qdisc replace dev sx0001_3 root tbf rate 8000kbit burst 20000 latency 100ms"));
        assert!(b.contains("qdisc replace dev sx0001_3 handle ffff: ingress"));
        assert!(b.contains("action mirred egress redirect dev si0001_3"));
        assert!(b.contains("qdisc replace dev si0001_3 root tbf rate 1000kbit burst 16384"));
        let none = tc_batch("sx0001_3", "si0001_3", &Bandwidth::default());
        assert_eq!(
            none,
            "qdisc del dev sx0001_3 root\nqdisc del dev sx0001_3 ingress\n"
        );
    }

    #[test]
    fn bursts_hold_several_packets() {
        assert_eq!(burst_bytes(64), 16 * 1024);
        assert_eq!(burst_bytes(1_000_000), 2_500_000);
    }
}
