//! First-run hygiene of `sandboxd serve`: a second daemon on a data dir in use, or on a busy
//! port, exits before it touches anything, and the first one keeps working; logs carry no
//! colour codes when stderr is not a terminal; `--log-format json --log-file`.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, Opts, require_root, test_key};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `sandboxd serve` that is expected to exit at once; returns (exit ok, stdout, stderr).
fn serve_expecting_exit(data_dir: &Path, listen: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env("SANDBOXD_API_KEY", test_key())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the second daemon did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn create(d: &Daemon) -> (u16, Value) {
    d.create(json!({"templateID": "base", "timeout": 60})).await
}

#[tokio::test]
async fn busy_port_exits_before_touching_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = tmp.path().join("data");
    let (ok, stdout, stderr) = serve_expecting_exit(&data, &addr);
    assert!(!ok && stdout.is_empty(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("--listen"),
        "{stderr}"
    );
    // nothing but the lock file: no key, no registry, no backend directories
    assert_eq!(entries(&data), vec!["sandboxd.lock".to_string()]);
    // no colour codes when stderr is not a terminal
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

/// The first daemon (with a warm pool, whose slots and trash a second start used to clear)
/// keeps creating sandboxes after a second daemon was refused on its data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn second_daemon_on_a_data_dir_in_use_leaves_the_first_working() {
    require_root("second_daemon_on_a_data_dir_in_use_leaves_the_first_working");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = Daemon::start_in(
        &data,
        Opts {
            key: Some(test_key()),
            args: vec!["--pool".into(), "base=1:2:0".into()],
        },
    )
    .unwrap();
    let (s, a) = create(&first).await;
    assert_eq!(s, 201, "{a}");
    for listen in ["127.0.0.1:0".to_string(), first.addr.to_string()] {
        let (ok, stdout, stderr) = serve_expecting_exit(&data, &listen);
        assert!(!ok && stdout.is_empty(), "{stdout}\n{stderr}");
        assert!(stderr.contains("is in use by another sandboxd"), "{stderr}");
    }
    // the first daemon still creates (pooled and fresh) and serves its sandboxes
    for _ in 0..3 {
        let (s, v) = create(&first).await;
        assert_eq!(s, 201, "{v}\n{}", first.logs());
    }
    let (s, list) = first.get("/v2/sandboxes").await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    let r = first
        .sandbox(reqwest::Method::GET, a["sandboxID"].as_str().unwrap(), "/health")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert!(
        !first.logs().contains('\u{1b}'),
        "colour codes in a non-terminal log"
    );
}

#[tokio::test]
async fn json_log_file() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("sandboxd.log");
    let mut d = Daemon::start_in(
        &tmp.path().join("data"),
        Opts {
            key: Some(test_key()),
            args: vec![
                "--log-format".into(),
                "json".into(),
                "--log-file".into(),
                log.to_string_lossy().into_owned(),
                "--log-max-mb".into(),
                "1".into(),
            ],
        },
    )
    .unwrap();
    let (s, _) = d.get("/v2/sandboxes").await;
    assert_eq!(s, 200);
    assert!(d.terminate().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "sandboxd is serving"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    // the log went to the file, not to stderr
    assert!(!d.logs().contains("sandboxd is serving"), "{}", d.logs());
}
