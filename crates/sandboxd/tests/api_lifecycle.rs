//! Durability of the lifecycle (docs/lifecycle.md): the daemon is SIGKILLed while creates,
//! pauses and an upload are in flight, or stopped with SIGTERM, and started again on the same
//! data dir; nothing may be lost and nothing half made may remain. Needs root (skipped
//! otherwise; fails with CI=true).

mod common;

use common::{Daemon, Opts, require_root, test_key, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

async fn upload(d: &Daemon, id: &str, token: &str, path: &str, body: Vec<u8>) -> u16 {
    d.sandbox(
        reqwest::Method::POST,
        id,
        &format!("/files?path={path}&username=user"),
    )
    .header("X-Access-Token", token)
    .header("Content-Type", "application/octet-stream")
    .body(body)
    .send()
    .await
    .map(|r| r.status().as_u16())
    .unwrap_or(0)
}

async fn download(d: &Daemon, id: &str, token: &str, path: &str) -> (u16, String) {
    let r = d
        .sandbox(
            reqwest::Method::GET,
            id,
            &format!("/files?path={path}&username=user"),
        )
        .header("X-Access-Token", token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Starts `sleep <marker>` in the background (the stream is dropped; the process lives on).
async fn start_sleep(d: &Daemon, id: &str, token: &str, secs: &str) {
    let env = common::connect_envelope(&json!({"process": {"cmd": "sleep", "args": [secs]}}));
    let r = d
        .sandbox(reqwest::Method::POST, id, "/process.Process/Start")
        .header("X-Access-Token", token)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(env)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // read until the start event, then hang up
    let mut r = r;
    let _ = tokio::time::timeout(Duration::from_secs(10), r.chunk()).await;
}

/// Command lines of the sandbox's processes (`Process.List`).
async fn processes(d: &Daemon, id: &str, token: &str) -> String {
    let r = d
        .sandbox(reqwest::Method::POST, id, "/process.Process/List")
        .header("X-Access-Token", token)
        .header("Content-Type", "application/json")
        .header("Connect-Protocol-Version", "1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn state(d: &Daemon, id: &str) -> (u16, String) {
    let (s, v) = d.get(&format!("/sandboxes/{id}")).await;
    (s, v["state"].as_str().unwrap_or("").to_string())
}

async fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    let r = d
        .api(reqwest::Method::POST, path)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn sigkill(d: &mut Daemon) {
    let mut c = d.child.take().expect("daemon running");
    c.kill().unwrap();
    c.wait().unwrap();
}

/// Listed ids (running and paused).
async fn listed(d: &Daemon) -> BTreeSet<String> {
    let (s, v) = d.get("/v2/sandboxes?state=running,paused&limit=100").await;
    assert_eq!(s, 200);
    v.as_array().unwrap().iter().map(sid).collect()
}

/// Sandbox ids with a directory under `<data>/sandboxes` (pool slots excluded).
fn dirs(data: &Path) -> BTreeSet<String> {
    std::fs::read_dir(data.join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Sandbox cgroups (pids hierarchy, v1) of the daemon whose root holds one of `known`.
fn cgroups(known: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let base = Path::new("/sys/fs/cgroup/pids");
    for e in std::fs::read_dir(base).ok()?.flatten() {
        let p = e.path();
        if known.iter().any(|id| p.join(id).is_dir()) {
            return Some(
                std::fs::read_dir(&p)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect(),
            );
        }
    }
    None
}

fn restart(data: &Path, key: &str) -> Daemon {
    Daemon::start_in(
        data,
        Opts {
            key: Some(key.to_string()),
            ..Opts::default()
        },
    )
    .expect("restart")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readoption_after_sigkill_and_sigterm() {
    if !require_root("readoption_after_sigkill_and_sigterm") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = test_key();
    let mut d = restart(&data, &key);
    let mut sbx = Vec::new();
    for kind in ["running", "memory", "filesystem"] {
        let (s, v) = d
            .create(json!({"templateID":"base","timeout":600,"secure":true,"metadata":{"kind":kind}}))
            .await;
        assert_eq!(s, 201, "{v}");
        let (id, token) = (sid(&v), v["envdAccessToken"].as_str().unwrap().to_string());
        assert_eq!(upload(&d, &id, &token, "/home/user/kind", kind.into()).await, 200);
        start_sleep(&d, &id, &token, "4242").await;
        sbx.push((kind, id, token));
    }
    assert_eq!(
        post(
            &d,
            &format!("/sandboxes/{}/pause", sbx[1].1),
            json!({"memory": true})
        )
        .await
        .0,
        204
    );
    assert_eq!(
        post(
            &d,
            &format!("/sandboxes/{}/pause", sbx[2].1),
            json!({"memory": false})
        )
        .await
        .0,
        204
    );

    for round in ["SIGKILL", "SIGTERM"] {
        if round == "SIGKILL" {
            sigkill(&mut d);
        } else {
            d.terminate();
        }
        d = restart(&data, &key);
        let (running, memory, fs) = (&sbx[0], &sbx[1], &sbx[2]);
        assert_eq!(
            state(&d, &running.1).await,
            (200, "running".into()),
            "{round}\n{}",
            d.logs()
        );
        assert_eq!(
            download(&d, &running.1, &running.2, "/home/user/kind").await,
            (200, "running".into())
        );
        assert!(
            processes(&d, &running.1, &running.2).await.contains("4242"),
            "{round}"
        );
        assert_eq!(state(&d, &memory.1).await, (200, "paused".into()), "{round}");
        assert_eq!(state(&d, &fs.1).await, (200, "paused".into()), "{round}");
        // paused ones get no traffic
        let r = d
            .sandbox(reqwest::Method::GET, &memory.1, "/health")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        if round == "SIGKILL" {
            continue;
        }
        // memory resume: processes still there; filesystem resume: files only
        let (s, v) = post(
            &d,
            &format!("/sandboxes/{}/connect", memory.1),
            json!({"timeout": 60}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["envdAccessToken"].as_str(), Some(memory.2.as_str()));
        assert!(processes(&d, &memory.1, &memory.2).await.contains("4242"));
        let (s, _) = post(
            &d,
            &format!("/sandboxes/{}/connect", fs.1),
            json!({"timeout": 60}),
        )
        .await;
        assert_eq!(s, 201);
        assert_eq!(
            download(&d, &fs.1, &fs.2, "/home/user/kind").await,
            (200, "filesystem".into())
        );
        assert!(!processes(&d, &fs.1, &fs.2).await.contains("4242"));
    }
    let ids: BTreeSet<String> = sbx.iter().map(|s| s.1.clone()).collect();
    assert_eq!(listed(&d).await, ids);
    assert_eq!(dirs(&data), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_during_creates_pauses_and_upload_loses_nothing() {
    if !require_root("crash_during_creates_pauses_and_upload_loses_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = test_key();
    for (round, delay_ms) in [(0, 5u64), (1, 25), (2, 60)] {
        let d = restart(&data, &key);
        // a stable population: sandboxes that must survive every crash
        let mut stable = Vec::new();
        for _ in 0..3 {
            let (s, v) = d
                .create(json!({"templateID":"base","timeout":600,"secure":true}))
                .await;
            assert_eq!(s, 201, "{v}");
            let (id, token) = (sid(&v), v["envdAccessToken"].as_str().unwrap().to_string());
            assert_eq!(
                upload(&d, &id, &token, "/home/user/stable", id.clone().into()).await,
                200
            );
            stable.push((id, token));
        }
        // in flight when the daemon dies: creates, pauses of two stable ones, a big upload
        let daemon_pid = d.child.as_ref().unwrap().id();
        let d = std::sync::Arc::new(d);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let _ = d.create(json!({"templateID":"base","timeout":600})).await;
            }));
        }
        for (i, (id, _)) in stable.iter().take(2).enumerate() {
            let (d, id) = (d.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let _ = d
                    .api(reqwest::Method::POST, &format!("/sandboxes/{id}/pause"))
                    .json(&json!({"memory": i == 0}))
                    .send()
                    .await;
            }));
        }
        {
            let (d, (id, token)) = (d.clone(), stable[2].clone());
            tasks.push(tokio::spawn(async move {
                let _ = upload(&d, &id, &token, "/home/user/big", vec![b'x'; 64 << 20]).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let pid = nix::unistd::Pid::from_raw(daemon_pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        for t in tasks {
            let _ = t.await;
        }
        let mut d = std::sync::Arc::try_unwrap(d).ok().expect("tasks done");
        if let Some(mut c) = d.child.take() {
            c.wait().unwrap();
        }
        drop(d);
        let d = restart(&data, &key);
        let now = listed(&d).await;
        for (id, token) in &stable {
            assert!(
                now.contains(id),
                "round {round}: stable sandbox {id} lost\n{}",
                d.logs()
            );
            let (s, st) = state(&d, id).await;
            assert_eq!(s, 200);
            if st == "paused" {
                let (s, v) = post(&d, &format!("/sandboxes/{id}/connect"), json!({"timeout": 60})).await;
                assert_eq!(s, 201, "round {round}: {v}\n{}", d.logs());
            }
            assert_eq!(
                download(&d, id, token, "/home/user/stable").await,
                (200, id.clone()),
                "round {round}"
            );
        }
        // nothing half made: every directory and cgroup belongs to a listed sandbox
        assert_eq!(dirs(&data), now, "round {round}");
        if let Some(cg) = cgroups(&now) {
            // filesystem-paused sandboxes have no cgroups; everything else must be listed
            assert!(
                cg.is_subset(&now),
                "round {round}: cgroups {cg:?} vs listed {now:?}"
            );
        }
        assert!(
            wait_until(Duration::from_secs(5), || async {
                listed(&d).await.len() == now.len()
            })
            .await
        );
        // next round starts from a clean slate
        d.kill_all_sandboxes();
        let mut d = d;
        d.terminate();
    }
}
