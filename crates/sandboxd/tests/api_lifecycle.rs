//! Durability of the lifecycle (docs/lifecycle.md): the daemon is SIGKILLed while creates,
//! pauses and an upload are in flight, or stopped with SIGTERM, and started again on the same
//! data dir; nothing may be lost and nothing half made may remain. Needs root (skipped
//! otherwise; fails with CI=true).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

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

async fn state(d: &Daemon, id: &str) -> (u16, String) {
    let (s, v) = d.get(&format!("/sandboxes/{id}")).await;
    (s, v["state"].as_str().unwrap_or("").to_string())
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
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn readoption_after_sigkill_and_sigterm() {
    require_root("readoption_after_sigkill_and_sigterm");
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
        d.post(&format!("/sandboxes/{}/pause", sbx[1].1), json!({"memory": true}))
            .await
            .0,
        204
    );
    assert_eq!(
        d.post(
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
            d.process_list(&running.1, &running.2).await.contains("4242"),
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
        let (s, v) = d
            .post(
                &format!("/sandboxes/{}/connect", memory.1),
                json!({"timeout": 60}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["envdAccessToken"].as_str(), Some(memory.2.as_str()));
        assert!(d.process_list(&memory.1, &memory.2).await.contains("4242"));
        let (s, _) = d
            .post(&format!("/sandboxes/{}/connect", fs.1), json!({"timeout": 60}))
            .await;
        assert_eq!(s, 201);
        assert_eq!(
            download(&d, &fs.1, &fs.2, "/home/user/kind").await,
            (200, "filesystem".into())
        );
        assert!(!d.process_list(&fs.1, &fs.2).await.contains("4242"));
    }
    let ids: BTreeSet<String> = sbx.iter().map(|s| s.1.clone()).collect();
    assert_eq!(listed(&d).await, ids);
    assert_eq!(dirs(&data), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn crash_during_creates_pauses_and_upload_loses_nothing() {
    require_root("crash_during_creates_pauses_and_upload_loses_nothing");
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
                let (s, v) = d
                    .post(&format!("/sandboxes/{id}/connect"), json!({"timeout": 60}))
                    .await;
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

/// xorshift64: the crash test's random moments, replayable with `SANDBOXD_CRASH_SEED`.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Mount points under `dir` (host mount namespace).
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Loop devices whose backing file is under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|b| b.starts_with(&prefix))
        .map(|b| b.trim().to_string())
        .collect()
}

/// Leftovers the host must not keep: mounts other than the disks of listed sandboxes and of
/// the running daemon's (`daemon_pid`) prepared slots and the current spawn helper's views,
/// trash entries, stale helper stages.
fn leaks(data: &Path, listed: &BTreeSet<String>, daemon_pid: Option<u32>) -> Vec<String> {
    let slot_prefix = daemon_pid.map(|p| format!(".pool-{p}-"));
    let mut out: Vec<String> = mounts_under(data)
        .into_iter()
        .filter(|m| {
            let rel = m.strip_prefix(&format!("{}/", data.display())).unwrap_or(m);
            let disk = rel
                .strip_prefix("sandboxes/")
                .and_then(|r| r.strip_suffix("/disk"))
                .is_some_and(|id| {
                    listed.contains(id) || slot_prefix.as_ref().is_some_and(|p| id.starts_with(p.as_str()))
                });
            !(disk || rel.starts_with(".helper/"))
        })
        .map(|m| format!("mount {m}"))
        .collect();
    let trash = std::fs::read_dir(data.join(".trash"))
        .map(|r| r.count())
        .unwrap_or(0);
    if trash > 0 {
        out.push(format!("{trash} trash entries"));
    }
    let stages = std::fs::read_dir(data.join(".helper"))
        .map(|r| r.count())
        .unwrap_or(0);
    if stages > 1 {
        out.push(format!("{stages} helper stages"));
    }
    out
}

/// Starts `sandboxd serve` without waiting for it (to kill it during start-up).
fn spawn_serve(data: &Path, key: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("SANDBOXD_API_KEY", key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// What the in-flight calls of one round were told before the crash.
#[derive(Default)]
struct Told {
    created: Vec<(String, String)>,
    killed: Vec<String>,
    paused: Vec<String>,
}

/// `kill -9` of the daemon at random moments: during start-up, creates, pauses, resumes,
/// kills and uploads. After every restart no sandbox the API acknowledged is lost (and none it
/// acknowledged killing is back), stable sandboxes keep their files, and no directory, cgroup,
/// mount, loop device, trash entry or helper stage is left over; at the end, after every
/// sandbox is killed, nothing at all. `SANDBOXD_CRASH_ROUNDS` (default 12; `sandboxd`'s long
/// run uses 100) and `SANDBOXD_CRASH_SEED` replay a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn crash_at_random_moments_leaks_and_loses_nothing() {
    require_root("crash_at_random_moments_leaks_and_loses_nothing");
    let rounds: usize = std::env::var("SANDBOXD_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("SANDBOXD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test: {rounds} rounds, SANDBOXD_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = test_key();

    // sandboxes that must survive every crash, each with a file named after itself
    let mut stable: Vec<(String, String)> = Vec::new();
    {
        let mut d = restart(&data, &key);
        for _ in 0..3 {
            let (s, v) = d
                .create(json!({"templateID":"base","timeout":3600,"secure":true}))
                .await;
            assert_eq!(s, 201, "{v}");
            let (id, token) = (sid(&v), v["envdAccessToken"].as_str().unwrap().to_string());
            assert_eq!(
                upload(&d, &id, &token, "/home/user/stable", id.clone().into()).await,
                200
            );
            stable.push((id, token));
        }
        d.terminate();
    }
    let mut cgroup_base: Option<std::path::PathBuf> = None;
    let mut extras: Vec<(String, String)> = Vec::new();
    let mut gone: BTreeSet<String> = BTreeSet::new();
    let mut paused: BTreeSet<String> = BTreeSet::new();
    let (mut startup_kills, mut busy_kills) = (0, 0);
    for round in 0..rounds {
        // pauses acknowledged (204) in this round: paused after the restart
        let mut must_be_paused: Vec<String> = Vec::new();
        let mut maybe_killed: Option<String> = None;
        if rng.below(4) == 0 {
            // during start-up (re-adoption, quota probe, helper staging, templates)
            let mut c = spawn_serve(&data, &key);
            std::thread::sleep(Duration::from_millis(rng.below(1500)));
            let _ = c.kill();
            c.wait().unwrap();
            startup_kills += 1;
        } else {
            let d = std::sync::Arc::new(restart(&data, &key));
            let (s, list) = d.get("/v2/sandboxes?state=running,paused&limit=100").await;
            assert_eq!(s, 200);
            let running: Vec<(String, String)> = stable
                .iter()
                .chain(extras.iter())
                .filter(|(id, _)| {
                    list.as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v["sandboxID"] == id.as_str() && v["state"] == "running")
                })
                .cloned()
                .collect();
            let told = std::sync::Arc::new(std::sync::Mutex::new(Told::default()));
            let mut tasks = Vec::new();
            for _ in 0..1 + rng.below(2) {
                let (d, told) = (d.clone(), told.clone());
                tasks.push(tokio::spawn(async move {
                    // the daemon may die under the request: no answer is no acknowledgement
                    let Ok(r) = d
                        .api(reqwest::Method::POST, "/sandboxes")
                        .json(&json!({"templateID":"base","timeout":3600,"secure":true}))
                        .send()
                        .await
                    else {
                        return;
                    };
                    let s = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if s == 201 {
                        let t = v["envdAccessToken"].as_str().unwrap_or("").to_string();
                        told.lock().unwrap().created.push((sid(&v), t));
                    }
                }));
            }
            if !running.is_empty() {
                let (id, token) = running[rng.below(running.len() as u64) as usize].clone();
                let big = 1 + rng.below(16) as usize;
                let d2 = d.clone();
                tasks.push(tokio::spawn(async move {
                    let _ = upload(&d2, &id, &token, "/home/user/big", vec![b'x'; big << 20]).await;
                }));
                let (id, _) = running[rng.below(running.len() as u64) as usize].clone();
                let memory = rng.below(2) == 0;
                let (d2, told) = (d.clone(), told.clone());
                tasks.push(tokio::spawn(async move {
                    let r = d2
                        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/pause"))
                        .json(&json!({ "memory": memory }))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 204) {
                        told.lock().unwrap().paused.push(id);
                    }
                }));
            }
            if let Some(id) = paused.iter().nth(rng.below(paused.len().max(1) as u64) as usize) {
                let (d2, id) = (d.clone(), id.clone());
                tasks.push(tokio::spawn(async move {
                    let _ = d2
                        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/connect"))
                        .json(&json!({"timeout": 3600}))
                        .send()
                        .await;
                }));
            }
            if !extras.is_empty() {
                let (id, _) = extras[rng.below(extras.len() as u64) as usize].clone();
                // unacknowledged, the kill may or may not have happened
                maybe_killed = Some(id.clone());
                let (d2, told) = (d.clone(), told.clone());
                tasks.push(tokio::spawn(async move {
                    let r = d2
                        .api(reqwest::Method::DELETE, &format!("/sandboxes/{id}"))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 204) {
                        told.lock().unwrap().killed.push(id);
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(rng.below(600))).await;
            let pid = nix::unistd::Pid::from_raw(d.child.as_ref().unwrap().id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
            for t in tasks {
                let _ = t.await;
            }
            let mut d = std::sync::Arc::try_unwrap(d).ok().expect("tasks done");
            if let Some(mut c) = d.child.take() {
                c.wait().unwrap();
            }
            drop(d);
            let told = std::mem::take(&mut *told.lock().unwrap());
            extras.extend(told.created);
            extras.retain(|(id, _)| !told.killed.contains(id));
            must_be_paused = told
                .paused
                .into_iter()
                .filter(|id| !told.killed.contains(id))
                .collect();
            gone.extend(told.killed);
            busy_kills += 1;
        }

        // after the restart: nothing acknowledged is lost, nothing killed is back, no leftovers
        let d = restart(&data, &key);
        let now = listed(&d).await;
        if let Some(id) = &maybe_killed
            && !now.contains(id)
        {
            extras.retain(|(e, _)| e != id);
            gone.insert(id.clone());
        }
        for (id, _) in stable.iter().chain(extras.iter()) {
            assert!(
                now.contains(id),
                "round {round} (seed {seed}): sandbox {id} lost\n{}",
                d.logs()
            );
        }
        for id in &gone {
            assert!(
                !now.contains(id),
                "round {round} (seed {seed}): killed sandbox {id} is back"
            );
        }
        let (_, list) = d.get("/v2/sandboxes?state=running,paused&limit=100").await;
        paused = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["state"] == "paused")
            .filter_map(|v| v["sandboxID"].as_str().map(str::to_string))
            .collect();
        for id in must_be_paused.iter().filter(|id| now.contains(*id)) {
            assert!(
                paused.contains(id),
                "round {round} (seed {seed}): acknowledged pause of {id} lost"
            );
        }
        for (id, token) in &stable {
            if !paused.contains(id) {
                assert_eq!(
                    download(&d, id, token, "/home/user/stable").await,
                    (200, id.clone()),
                    "round {round} (seed {seed})"
                );
            }
        }
        // sandboxes a crashed create left half made are removed at start; what remains is listed
        extras.extend(
            now.iter()
                .filter(|id| !stable.iter().chain(extras.iter()).any(|(s, _)| s == *id))
                .map(|id| (id.clone(), String::new()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(dirs(&data), now, "round {round} (seed {seed})");
        if let Some(cg) = cgroups(&now) {
            assert!(
                cg.is_subset(&now),
                "round {round} (seed {seed}): cgroups {cg:?} vs {now:?}"
            );
        }
        if cgroup_base.is_none() {
            cgroup_base = std::fs::read_dir("/sys/fs/cgroup/pids").ok().and_then(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .find(|p| stable.iter().any(|(id, _)| p.join(id).is_dir()))
            });
        }
        let me = d.child.as_ref().map(|c| c.id());
        let clean = wait_until(Duration::from_secs(10), || async {
            leaks(&data, &now, me).is_empty()
        })
        .await;
        assert!(
            clean,
            "round {round} (seed {seed}): leftovers {:?}",
            leaks(&data, &now, me)
        );
        // keep the population small: kill surplus extras through the API
        while extras.len() > 3 {
            let (id, _) = extras.remove(0);
            assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
            gone.insert(id);
        }
        let mut d = d;
        d.terminate();
    }
    eprintln!("crash test: {startup_kills} kills during start-up, {busy_kills} during work");

    // the end: every stable sandbox resumes with its file; then nothing may be left on the host
    let d = restart(&data, &key);
    for (id, token) in &stable {
        let (s, st) = state(&d, id).await;
        assert_eq!(s, 200);
        if st == "paused" {
            let (s, v) = d
                .post(&format!("/sandboxes/{id}/connect"), json!({"timeout": 60}))
                .await;
            assert_eq!(s, 201, "{v}\n{}", d.logs());
        }
        assert_eq!(
            download(&d, id, token, "/home/user/stable").await,
            (200, id.clone())
        );
    }
    d.kill_all_sandboxes();
    let mut d = d;
    d.terminate();
    let none = BTreeSet::new();
    let clean = wait_until(Duration::from_secs(15), || async {
        mounts_under(&data).is_empty()
            && loops_under(&data).is_empty()
            && leaks(&data, &none, None).is_empty()
    })
    .await;
    assert!(
        clean,
        "left on the host: mounts {:?}, loop devices {:?}, {:?}",
        mounts_under(&data),
        loops_under(&data),
        leaks(&data, &none, None)
    );
    assert!(dirs(&data).is_empty(), "{:?}", dirs(&data));
    if let Some(base) = cgroup_base {
        let left: Vec<_> = std::fs::read_dir(&base)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "cgroups left under {}: {left:?}", base.display());
    }
}
