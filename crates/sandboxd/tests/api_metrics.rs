//! Observability with the real daemon and real namespace sandboxes: resource metrics
//! (`/sandboxes/{id}/metrics`, `/sandboxes/metrics`), the Prometheus `/metrics`, and sandbox
//! logs (`/sandboxes/{id}/logs`, `/v2/sandboxes/{id}/logs`) including deadline and OOM kills.
//! Needs root (skipped otherwise; fails with CI=true).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, connect_envelope, require_root, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

fn token(v: &Value) -> String {
    v["envdAccessToken"].as_str().unwrap_or_default().to_string()
}

/// Runs a process to its end through the proxy (`Process.Start`), optionally with a Connect
/// deadline; returns the raw stream body.
async fn run(d: &Daemon, id: &str, tok: &str, cmd: &str, args: &[&str], deadline_ms: Option<u64>) -> String {
    let mut req = d
        .sandbox(reqwest::Method::POST, id, "/process.Process/Start")
        .header("X-Access-Token", tok)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(connect_envelope(&json!({"process": {"cmd": cmd, "args": args}})));
    if let Some(ms) = deadline_ms {
        req = req.header("Connect-Timeout-Ms", ms.to_string());
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned()
}

async fn metrics(d: &Daemon, id: &str, query: &str) -> (u16, Value) {
    d.get(&format!("/sandboxes/{id}/metrics{query}")).await
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn metrics_history_latest_and_prometheus() {
    require_root("metrics_history_latest_and_prometheus");
    let d = Daemon::start();
    let created_at = now_secs();
    let (s, v) = d
        .create(json!({"templateID":"base","timeout":120,"secure":true,"cpuCount":1,"memoryMB":256}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (id, tok) = (sid(&v), token(&v));

    // The first sample appears within a couple of seconds.
    let t0 = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            metrics(&d, &id, "")
                .await
                .1
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await,
        "no metrics sample within 5 s"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "first sample took {:?}",
        t0.elapsed()
    );
    let (_, arr) = metrics(&d, &id, "").await;
    let m = &arr[0];
    for k in [
        "timestamp",
        "timestampUnix",
        "cpuCount",
        "cpuUsedPct",
        "memUsed",
        "memTotal",
        "memCache",
        "diskUsed",
        "diskTotal",
    ] {
        assert!(m.get(k).is_some(), "missing {k} in {m}");
    }
    assert_eq!(m["cpuCount"], 1);
    assert_eq!(m["memTotal"], 256u64 << 20);
    // the quota filesystem's size (docs/limits.md): the 1 GiB limit minus ext4 metadata
    let disk_total = m["diskTotal"].as_u64().unwrap();
    assert!(disk_total > 900 << 20 && disk_total <= 1024 << 20, "{m}");
    assert!(m["memUsed"].as_u64().unwrap() > 0, "{m}");
    let ts = m["timestampUnix"].as_i64().unwrap();
    assert!(ts >= created_at && ts <= now_secs(), "{m}");
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));

    // CPU and disk use show up in later samples.
    run(
        &d,
        &id,
        &tok,
        "sh",
        &[
            "-c",
            "dd if=/dev/zero of=/home/user/blob bs=1M count=24 status=none; timeout 7 sh -c 'while :; do :; done'; true",
        ],
        None,
    )
    .await;
    let mut busy = None;
    let t0 = std::time::Instant::now();
    while busy.is_none() && t0.elapsed() < Duration::from_secs(12) {
        let (_, a) = metrics(&d, &id, "").await;
        busy = a
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["cpuUsedPct"].as_f64().unwrap() > 40.0)
            .cloned();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(busy.is_some(), "no busy sample: {}", metrics(&d, &id, "").await.1);
    let (_, a) = metrics(&d, &id, "").await;
    let last = a.as_array().unwrap().last().unwrap();
    assert!(last["diskUsed"].as_u64().unwrap() >= 24 << 20, "{last}");
    let pct = last["cpuUsedPct"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&pct));
    assert_eq!((pct * 100.0).round() / 100.0, pct, "2 decimals");
    let n = a.as_array().unwrap().len();
    assert!(n >= 2, "{a}");

    // Filtering: inclusive bounds, ranges before creation, bad parameters.
    let first_ts = a[0]["timestampUnix"].as_i64().unwrap();
    let (s, only) = metrics(&d, &id, &format!("?start={first_ts}&end={first_ts}")).await;
    assert_eq!(s, 200);
    assert!(!only.as_array().unwrap().is_empty());
    assert!(
        only.as_array()
            .unwrap()
            .iter()
            .all(|m| m["timestampUnix"] == first_ts)
    );
    let (s, before) = metrics(
        &d,
        &id,
        &format!("?start={}&end={}", created_at - 3600, created_at - 60),
    )
    .await;
    assert_eq!((s, before), (200, json!([])));
    let (s, future) = metrics(&d, &id, &format!("?start={}", now_secs() + 60)).await;
    assert_eq!((s, future), (200, json!([])));
    assert_eq!(metrics(&d, &id, "?start=abc").await.0, 400);
    assert_eq!(metrics(&d, &id, "?start=20&end=10").await.0, 400);
    assert_eq!(metrics(&d, "nonexistingsandbox", "").await.0, 404);
    assert_eq!(metrics(&d, "Bad-ID", "").await.0, 400);

    // Latest per sandbox.
    let (s, many) = d
        .get(&format!("/sandboxes/metrics?sandbox_ids={id},nonexistingsandbox"))
        .await;
    assert_eq!(s, 200, "{many}");
    let obj = many["sandboxes"].as_object().unwrap();
    assert_eq!(obj.len(), 1, "{many}");
    assert!(obj[&id]["timestampUnix"].as_i64().unwrap() >= ts);
    assert_eq!(d.get("/sandboxes/metrics").await.0, 400);
    let ids: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
    assert_eq!(
        d.get(&format!("/sandboxes/metrics?sandbox_ids={}", ids.join(",")))
            .await
            .0,
        400
    );

    // Prometheus: API key required, counters and gauges.
    let r = d.client().get(format!("{}/metrics", d.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = d.api(reqwest::Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    for line in [
        "sandboxd_sandboxes{state=\"running\"} 1",
        "sandboxd_sandbox_creates_total 1",
        "sandboxd_sandbox_create_seconds_count 1",
        "sandboxd_sandbox_kills_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
    }
    let proxied: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sandboxd_proxy_requests_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(proxied >= 1, "{text}");

    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
    assert_eq!(metrics(&d, &id, "").await.0, 404, "history goes with the sandbox");
    let text = d
        .api(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines().any(|l| l == "sandboxd_sandbox_kills_total 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "sandboxd_sandboxes{state=\"running\"} 0"),
        "{text}"
    );
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn logs_record_processes_deadlines_and_oom_kills() {
    require_root("logs_record_processes_deadlines_and_oom_kills");
    let d = Daemon::start();
    let (s, v) = d
        .create(json!({"templateID":"base","timeout":120,"secure":true,"memoryMB":128}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (id, tok) = (sid(&v), token(&v));

    run(&d, &id, &tok, "sh", &["-c", "exit 3"], None).await;
    run(&d, &id, &tok, "/bin/true", &[], None).await;
    // killed at its Start deadline
    run(&d, &id, &tok, "sleep", &["30"], Some(300)).await;
    // killed by the memory limit (128 MiB)
    run(
        &d,
        &id,
        &tok,
        "python3",
        &["-c", "b = []\nwhile True: b.append(bytearray(16 << 20))"],
        None,
    )
    .await;

    let logs = |q: String| {
        let d = &d;
        let id = id.clone();
        async move { d.get(&format!("/v2/sandboxes/{id}/logs{q}")).await }
    };
    let (s, all) = logs(String::new()).await;
    assert_eq!(s, 200, "{all}");
    let entries = all["logs"].as_array().unwrap().clone();
    let find = |pred: &dyn Fn(&Value) -> bool| entries.iter().find(|e| pred(e)).cloned();
    let started =
        find(&|e| e["message"].as_str().unwrap().contains("started: sh -c 'exit 3'")).expect("start entry");
    assert_eq!(started["level"], "info");
    assert!(started["fields"]["pid"].as_str().unwrap().parse::<u32>().is_ok());
    assert_eq!(started["fields"]["user"], "user");
    assert!(started["timestamp"].as_str().unwrap().ends_with('Z'));
    let exit3 = find(&|e| e["fields"]["exitCode"] == "3").expect("exit 3 entry");
    assert_eq!(exit3["level"], "warn");
    assert_eq!(exit3["fields"]["reason"], "exit");
    let deadline = find(&|e| e["fields"]["reason"] == "deadline").expect("deadline kill entry");
    assert_eq!(deadline["fields"]["signal"], "9");
    assert!(
        deadline["fields"]["cmd"]
            .as_str()
            .unwrap()
            .starts_with("sleep 30")
    );

    // The OOM kill: the python process died by SIGKILL and the daemon reports the cgroup's
    // OOM counter to the log (at the latest when the log is read).
    let oom_pid = find(&|e| {
        e["fields"]["reason"] == "sigkill" && e["fields"]["cmd"].as_str().unwrap().starts_with("python3")
    })
    .expect("python exit by SIGKILL")["fields"]["pid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut oom = None;
    let t0 = std::time::Instant::now();
    while oom.is_none() && t0.elapsed() < Duration::from_secs(10) {
        let (_, v) = logs("?level=error".into()).await;
        oom = v["logs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["fields"]["reason"] == "oom")
            .cloned();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(oom.is_some(), "no OOM entry");
    let oom = oom.unwrap();
    assert_eq!(oom["level"], "error");
    assert_eq!(oom["fields"]["pids"], oom_pid.as_str(), "{oom}");
    assert_eq!(oom["fields"]["memoryLimitBytes"], (128u64 << 20).to_string());
    assert!(oom["message"].as_str().unwrap().contains("128 MiB"));

    // Filters, direction and paging.
    let (_, errs) = logs("?level=error".into()).await;
    assert!(
        errs["logs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["level"] == "error")
    );
    let (_, newest) = logs("?direction=backward&limit=1".into()).await;
    assert_eq!(newest["logs"].as_array().unwrap().len(), 1);
    let (_, again) = logs(String::new()).await;
    assert_eq!(
        newest["logs"][0],
        *again["logs"].as_array().unwrap().last().unwrap()
    );
    let (_, searched) = logs("?search=EXIT%203".into()).await;
    let found = searched["logs"].as_array().unwrap();
    assert!(
        !found.is_empty()
            && found
                .iter()
                .all(|e| e["message"].as_str().unwrap().contains("exit 3"))
    );
    let (_, page1) = logs("?limit=2".into()).await;
    let p1 = page1["logs"].as_array().unwrap();
    assert_eq!(p1.len(), 2);
    assert_eq!(p1[0], entries[0]);

    // v1 shape, start in ms.
    let (s, v1) = d.get(&format!("/sandboxes/{id}/logs?start=0&limit=3")).await;
    assert_eq!(s, 200, "{v1}");
    assert_eq!(v1["logs"].as_array().unwrap().len(), 3);
    assert_eq!(v1["logEntries"].as_array().unwrap().len(), 3);
    let line: Value = serde_json::from_str(v1["logs"][0]["line"].as_str().unwrap()).unwrap();
    assert_eq!(line["message"], v1["logEntries"][0]["message"]);
    assert!(v1["logs"][0]["timestamp"].is_string());
    let (_, late) = d
        .get(&format!(
            "/sandboxes/{id}/logs?start={}",
            (now_secs() + 60) * 1000
        ))
        .await;
    assert_eq!(late["logs"], json!([]));

    // Errors.
    for bad in ["?limit=5000", "?direction=up", "?level=loud", "?cursor=x"] {
        assert_eq!(logs(bad.into()).await.0, 400, "{bad}");
    }
    assert_eq!(d.get(&format!("/sandboxes/{id}/logs?start=x")).await.0, 400);
    assert_eq!(d.get("/v2/sandboxes/nonexistingsandbox/logs").await.0, 404);
    assert_eq!(d.get("/sandboxes/nonexistingsandbox/logs").await.0, 404);
    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
}
