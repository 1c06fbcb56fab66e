//! Warm pool (docs/pool.md) with the real daemon and real namespace sandboxes: creates served
//! from the pool (the agent was booted before the request), env vars and tokens of the request
//! apply, no state leaks between claimed sandboxes, the pool refills, pooled sandboxes are not
//! listed, other limits boot cold, a SIGKILLed daemon's pooled sandboxes are removed at the next
//! start, and nothing is left after shutdown. Prints p50 of POST /sandboxes -> 201 from the pool
//! and cold. Needs root (skipped otherwise; fails with CI=true).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, Opts, connect_envelope, require_root, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

/// Runs `bash -c script` in a sandbox with `token`; returns the HTTP status and the stream.
async fn sh_token(d: &Daemon, id: &str, token: Option<&str>, script: &str) -> (u16, String) {
    let mut req = d
        .sandbox(reqwest::Method::POST, id, "/process.Process/Start")
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(connect_envelope(
            &json!({"process": {"cmd": "/bin/bash", "args": ["-c", script]}}),
        ));
    if let Some(t) = token {
        req = req.header("X-Access-Token", t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned(),
    )
}

/// Output of a script in sandbox `v` (its own token), read back through `GET /files`.
async fn out(d: &Daemon, v: &Value, script: &str) -> String {
    let token = v["envdAccessToken"].as_str();
    let (s, body) = sh_token(
        d,
        &sid(v),
        token,
        &format!("({script}) > /tmp/.pool-test-out 2>&1"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let mut req = d.sandbox(
        reqwest::Method::GET,
        &sid(v),
        "/files?path=/tmp/.pool-test-out&username=root",
    );
    if let Some(t) = token {
        req = req.header("X-Access-Token", t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}

/// The `base` entry of `GET /pool`.
async fn pool(d: &Daemon) -> Value {
    let (s, v) = d.get("/pool").await;
    assert_eq!(s, 200, "{v}");
    v["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["template"] == "base")
        .cloned()
        .expect("base pool")
}

async fn wait_ready(d: &Daemon, n: u64) {
    let ok = wait_until(Duration::from_secs(60), || async { pool(d).await["ready"] == n }).await;
    assert!(ok, "pool never reached {n} ready: {}", pool(d).await);
}

async fn listed(d: &Daemon) -> BTreeSet<String> {
    let (s, v) = d.get("/v2/sandboxes?state=running,paused&limit=100").await;
    assert_eq!(s, 200);
    v.as_array().unwrap().iter().map(sid).collect()
}

/// Sandbox directories under `<data>/sandboxes` (the runtime's `.pool-*` slots excluded).
fn dirs(data: &Path) -> BTreeSet<String> {
    std::fs::read_dir(data.join("sandboxes"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Sandbox cgroups (v1 pids hierarchy) of the daemon on `data` (serve_cmd's cgroup root naming).
fn cgroups(data: &Path) -> BTreeSet<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let root = Path::new("/sys/fs/cgroup/pids").join(format!("sandboxd-{:012x}", h & 0xffff_ffff_ffff));
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Seconds since the sandbox's PID 1 (the agent) started, from inside.
async fn agent_age(d: &Daemon, v: &Value) -> f64 {
    let o = out(
        d,
        v,
        "cat /proc/uptime; cut -d' ' -f22 /proc/1/stat; getconf CLK_TCK",
    )
    .await;
    let nums: Vec<f64> = o.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(nums.len(), 4, "{o}");
    nums[0] - nums[2] / nums[3]
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-01-02T03:04:05.123456Z`).
fn unix_secs(t: &str) -> f64 {
    let t = t.trim_end_matches('Z');
    let (date, time) = t.split_once('T').expect("RFC 3339");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let hms: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // days from civil (Howard Hinnant)
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days as f64 * 86_400.0 + hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn timed_create(d: &Daemon, body: Value) -> (Duration, Value) {
    let t = Instant::now();
    let (s, v) = d.create(body).await;
    let e = t.elapsed();
    assert_eq!(s, 201, "{v}");
    (e, v)
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn pool_claims_isolation_refill_restart_cleanup() {
    require_root("pool_claims_isolation_refill_restart_cleanup");
    let mut d = Daemon::start_with_args(&["--pool", "base=2:4"]);
    let data = d.data_dir.canonicalize().unwrap();
    wait_ready(&d, 2).await;
    let p = pool(&d).await;
    assert_eq!(
        (p["min"].as_u64(), p["max"].as_u64(), p["claimed"].as_u64()),
        (Some(2), Some(4), Some(0))
    );
    // pooled sandboxes exist on the host but are not listed
    assert_eq!(dirs(&data).len(), 2);
    assert!(listed(&d).await.is_empty());
    // and unreachable before a claim: no control-plane entry, no sandbox traffic
    for id in dirs(&data) {
        assert_eq!(d.get(&format!("/sandboxes/{id}")).await.0, 404);
        assert_eq!(sh_token(&d, &id, None, "true").await.0, 502);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A: secure, env vars, metadata; served from the pool
    let (took, a) = timed_create(
        &d,
        json!({"templateID":"base","timeout":120,"secure":true,"envVars":{"FOO":"from-a"},"metadata":{"who":"a"}}),
    )
    .await;
    let a_id = sid(&a);
    let p = pool(&d).await;
    assert_eq!(p["claimed"], 1, "{p}");
    let age = agent_age(&d, &a).await;
    assert!(
        age >= 1.0 && age > took.as_secs_f64() + 0.5,
        "agent {age:.2}s old, create took {took:?}: not booted before the request"
    );
    let token = a["envdAccessToken"]
        .as_str()
        .expect("secure sandbox has a token")
        .to_string();
    let env = out(&d, &a, "echo \"$FOO|$E2B_SANDBOX_ID\"; hostname").await;
    assert_eq!(
        env.lines().next(),
        Some(format!("from-a|{a_id}").as_str()),
        "{env}"
    );
    // wrong or missing token: 401 from the agent
    assert_eq!(sh_token(&d, &a_id, Some("wrong"), "true").await.0, 401);
    assert_eq!(sh_token(&d, &a_id, None, "true").await.0, 401);
    assert_eq!(sh_token(&d, &a_id, Some(&token), "true").await.0, 200);
    let (s, v) = d.get(&format!("/sandboxes/{a_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["metadata"], json!({"who":"a"}));
    let started = unix_secs(v["startedAt"].as_str().unwrap());
    let end = unix_secs(v["endAt"].as_str().unwrap());
    assert!((end - started - 120.0).abs() < 0.001, "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - started < age - 0.5,
        "startedAt is the claim time, not the boot time: {v}"
    );
    out(
        &d,
        &a,
        "echo secret > /home/user/secret.txt; echo t > /tmp/a-was-here; export X=1",
    )
    .await;

    // B: not secure, from the pool too; no token needed (the pooled placeholder token is gone),
    // and nothing of A is visible
    wait_ready(&d, 2).await;
    let (_, b) = timed_create(&d, json!({"templateID":"base","timeout":120})).await;
    let b_id = sid(&b);
    assert_ne!(a_id, b_id);
    assert_eq!(pool(&d).await["claimed"], 2);
    assert!(b["envdAccessToken"].is_null(), "{b}");
    let (s, body) = sh_token(&d, &b_id, None, "true").await;
    assert_eq!(s, 200, "{body}");
    let seen = out(
        &d,
        &b,
        "ls /home/user/secret.txt /tmp/a-was-here 2>&1 | wc -l; test -e /home/user/secret.txt && echo LEAK; test -e /tmp/a-was-here && echo LEAK; echo \"foo=[$FOO]\"",
    )
    .await;
    assert!(!seen.contains("LEAK") && seen.contains("foo=[]"), "{seen}");

    // refill, never above max
    wait_ready(&d, 2).await;
    let p = pool(&d).await;
    assert!(p["booted"].as_u64().unwrap() >= 4, "{p}");
    assert!(
        p["ready"].as_u64().unwrap() + p["booting"].as_u64().unwrap() <= 4,
        "{p}"
    );
    assert_eq!(listed(&d).await, BTreeSet::from([a_id.clone(), b_id.clone()]));

    // other limits: a cold boot, the pool untouched
    let claimed = pool(&d).await["claimed"].as_u64().unwrap();
    let (_, c) = timed_create(&d, json!({"templateID":"base","timeout":120,"memoryMB":1024})).await;
    let c_id = sid(&c);
    let p = pool(&d).await;
    assert_eq!(
        (p["claimed"].as_u64().unwrap(), p["limitsMismatch"].as_u64()),
        (claimed, Some(1)),
        "{p}"
    );
    assert!(agent_age(&d, &c).await < 5.0);

    // latency: POST /sandboxes -> 201 from the pool vs cold (other limits force a cold boot)
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    let mut extra = Vec::new();
    for _ in 0..7 {
        wait_ready(&d, 2).await;
        let (t, v) = timed_create(&d, json!({"templateID":"base","timeout":60})).await;
        warm.push(t);
        extra.push(sid(&v));
        let (t, v) = timed_create(&d, json!({"templateID":"base","timeout":60,"cpuCount":1})).await;
        cold.push(t);
        extra.push(sid(&v));
    }
    let (pw, pc) = (p50(warm.clone()), p50(cold.clone()));
    eprintln!("POST /sandboxes -> 201: pool p50 {pw:?} (all {warm:?}); cold p50 {pc:?} (all {cold:?})");
    assert!(pw < pc, "pool p50 {pw:?} not below cold p50 {pc:?}");
    for id in &extra {
        assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
    }

    // SIGKILL: pooled sandboxes stay on the host without registry rows; the next start removes
    // them, keeps the claimed ones and fills a new pool
    wait_ready(&d, 2).await;
    let before = dirs(&data);
    let mine = BTreeSet::from([a_id.clone(), b_id.clone(), c_id.clone()]);
    let old_pooled: BTreeSet<String> = before.difference(&mine).cloned().collect();
    assert_eq!(old_pooled.len(), 2, "{before:?}");
    let key = d.key.clone();
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let mut d2 = Daemon::start_in(
        &d.data_dir,
        Opts {
            key: Some(key),
            args: vec!["--pool".into(), "base=2:4".into()],
        },
    )
    .expect("restart");
    assert_eq!(listed(&d2).await, mine);
    wait_ready(&d2, 2).await;
    let now = dirs(&data);
    assert!(
        now.is_disjoint(&old_pooled),
        "old pooled sandboxes survived: {now:?}"
    );
    assert_eq!(now.len(), 5, "{now:?}");
    let env = out(&d2, &a, "echo \"$FOO\"").await;
    assert_eq!(env.trim(), "from-a");

    // shutdown: pooled sandboxes are destroyed, claimed ones keep running; after killing those
    // nothing is left
    for id in &mine {
        assert_eq!(d2.delete(&format!("/sandboxes/{id}")).await, 204);
    }
    assert_eq!(dirs(&data).len(), 2);
    d2.terminate();
    assert!(dirs(&data).is_empty(), "left after shutdown: {:?}", dirs(&data));
    assert!(cgroups(&data).is_empty(), "cgroups left: {:?}", cgroups(&data));
    drop(d);
}

#[tokio::test]
async fn pool_flags_are_checked() {
    // no root needed: bad flags stop the daemon before it serves
    let tmp = tempfile::tempdir().unwrap();
    for (flag, want) in [
        ("base=4:2", "min 4 is above max 2"),
        ("base", "expected TEMPLATE=MIN"),
        ("nosuchtemplate=1", "no such template"),
    ] {
        let err = Daemon::start_in(
            &tmp.path().join("data"),
            Opts {
                key: Some(common::test_key()),
                args: vec!["--pool".into(), flag.into()],
            },
        )
        .err()
        .unwrap_or_else(|| panic!("--pool {flag} was accepted"));
        assert!(err.contains(want), "--pool {flag}: {err}");
    }
    // a template with services cannot be pooled; the backend (through the network decorator)
    // says so, or why the template is missing on this host
    let err = Daemon::start_in(
        &tmp.path().join("data"),
        Opts {
            key: Some(common::test_key()),
            args: vec!["--pool".into(), "code-interpreter-v1=1".into()],
        },
    )
    .err()
    .expect("a pool of the code interpreter was accepted");
    if nix::unistd::geteuid().is_root() {
        assert!(
            err.contains("cannot be pooled") || err.contains("setup-interpreter.sh"),
            "{err}"
        );
    } else {
        assert!(err.contains("no such template"), "{err}");
    }
    // a start that fails after the backend began preparing slots leaves none of them mounted
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = tmp.path().to_string_lossy().into_owned();
    assert!(
        !mounts.lines().any(|l| l.contains(&here)),
        "a failed start left mounts under {here}:\n{mounts}"
    );
    let cfg = tmp.path().join("c.json");
    std::fs::write(&cfg, r#"{"pool":[{"template":"base","min":1,"bogus":true}]}"#).unwrap();
    let err = Daemon::start_in(
        &tmp.path().join("data"),
        Opts {
            key: Some(common::test_key()),
            args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
        },
    )
    .err()
    .expect("a bad config file was accepted");
    assert!(err.contains("bogus"), "{err}");
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn a_pooled_sandbox_gets_its_templates_bandwidth_at_the_claim() {
    require_root("a_pooled_sandbox_gets_its_templates_bandwidth_at_the_claim");
    let d = Daemon::start_with_args(&["--pool", "base=1:2"]);
    wait_ready(&d, 1).await;
    let r = d
        .api(reqwest::Method::PATCH, "/templates/base")
        .json(&json!({"bandwidth": {"egressMbps": 2.7, "ingressMbps": 1.9}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (s, v) = d.create(json!({"templateID": "base", "timeout": 60})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(pool(&d).await["claimed"], 1, "served from the pool");
    let (_, info) = d.get(&format!("/sandboxes/{}", sid(&v))).await;
    assert_eq!(
        info["network"]["bandwidth"],
        json!({"egressMbps": 2.7, "ingressMbps": 1.9}),
        "{info}"
    );
    // 2.7 and 1.9 Mbit/s, on the claimed sandbox's host link
    let rates = common::host_tbf_rates();
    assert!(rates.contains(&337_500) && rates.contains(&237_500), "{rates:?}");
    d.kill_all_sandboxes();
}
