//! The real daemon with real namespace sandboxes: lifecycle through the control plane and
//! traffic through the proxy. Needs root (skipped otherwise; fails with CI=true).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, Opts, connect_envelope, expect_reset, read_head, require_root, test_key, wait_until};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether a process exists and is not a zombie.
fn process_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

/// Starts a process with a streaming `Process.Start` over a raw HTTP/1.1 connection and
/// returns the connection once the response head and the first envelope (`start`) arrived.
async fn start_process(d: &Daemon, id: &str, token: &str, cmd: &str, args: &[&str]) -> TcpStream {
    let env = connect_envelope(&json!({"process": {"cmd": cmd, "args": args}}));
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    let head = format!(
        "POST /process.Process/Start HTTP/1.1\r\nHost: {}\r\nE2b-Sandbox-Id: {id}\r\nX-Access-Token: {token}\r\n\
         Content-Type: application/connect+json\r\nConnect-Protocol-Version: 1\r\nContent-Length: {}\r\n\r\n",
        d.addr,
        env.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&env).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut first))
        .await
        .expect("no start event")
        .unwrap();
    let text = String::from_utf8_lossy(&first[..n]);
    assert!(text.contains("start"), "first chunk: {text:?}");
    s
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn lifecycle_create_get_list_kill() {
    require_root("lifecycle_create_get_list_kill");
    let d = Daemon::start();
    let v = {
        let (s, v) = d
            .create(
                json!({"templateID":"base","timeout":120,"secure":true,"allow_internet_access":true,
                "metadata":{"suite":"api","k=":"v&"},"envVars":{"SBX_VAR":"from-create"}}),
            )
            .await;
        assert_eq!(s, 201, "{v}\n{}", d.logs());
        v
    };
    let id = sid(&v);
    let token = v["envdAccessToken"].as_str().unwrap().to_string();
    assert!(id.starts_with('i') && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(
        (v["templateID"].as_str(), v["envdVersion"].as_str()),
        (Some("base"), Some("0.6.13"))
    );
    assert_eq!(v["domain"], format!("localhost:{}", d.addr.port()));

    // Ready when returned: envd answers at once.
    let r = d
        .sandbox(reqwest::Method::GET, &id, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The agent enforces the access token; env vars reach the sandbox.
    let r = d
        .sandbox(reqwest::Method::GET, &id, "/envs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = d
        .sandbox(reqwest::Method::GET, &id, "/envs")
        .header("X-Access-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let envs: Value = r.json().await.unwrap();
    assert_eq!(envs["SBX_VAR"], "from-create");
    assert_eq!(envs["E2B_SANDBOX_ID"], id.as_str());

    let (s, info) = d.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(info["state"], "running");
    assert_eq!(info["metadata"], json!({"suite":"api","k=":"v&"}));
    assert_eq!(info["envdAccessToken"], token.as_str());
    assert_eq!(
        (info["cpuCount"].as_i64(), info["memoryMB"].as_i64()),
        (Some(2), Some(512))
    );
    let (_, list) = d
        .get("/v2/sandboxes?metadata=suite%3Dapi%26k%25253D%3Dv%252526&state=running")
        .await;
    assert_eq!(
        list.as_array().unwrap().iter().map(sid).collect::<Vec<_>>(),
        vec![id.clone()]
    );
    let (_, list) = d.get("/v2/sandboxes?state=paused").await;
    assert_eq!(list, json!([]));

    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
    assert_eq!(d.get(&format!("/sandboxes/{id}")).await.0, 404);
    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 404);
    let r = d
        .sandbox(reqwest::Method::GET, &id, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(d.get("/v2/sandboxes").await.1, json!([]));
    // Nothing of the sandbox is left on disk.
    assert!(!d.data_dir.join("sandboxes").join(&id).exists());
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn timeouts_connect_and_expiry() {
    require_root("timeouts_connect_and_expiry");
    let d = Daemon::start();
    let (s, v) = d
        .create(json!({"templateID":"base","timeout":300,"secure":true}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = sid(&v);
    let end = |v: &Value| v["endAt"].as_str().unwrap().to_string();
    let (_, before) = d.get(&format!("/sandboxes/{id}")).await;
    let connect = |t: i64| {
        d.api(reqwest::Method::POST, &format!("/sandboxes/{id}/connect"))
            .json(&json!({ "timeout": t }))
            .send()
    };
    let r = connect(10).await.unwrap();
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["envdAccessToken"], v["envdAccessToken"]);
    assert_eq!(end(&d.get(&format!("/sandboxes/{id}")).await.1), end(&before));
    assert_eq!(connect(600).await.unwrap().status(), 200);
    assert!(end(&d.get(&format!("/sandboxes/{id}")).await.1) > end(&before));

    let set = |t: i64| {
        d.api(reqwest::Method::POST, &format!("/sandboxes/{id}/timeout"))
            .json(&json!({ "timeout": t }))
            .send()
    };
    assert_eq!(set(100).await.unwrap().status(), 204);
    let short = end(&d.get(&format!("/sandboxes/{id}")).await.1);
    assert!(short < end(&before));
    assert_eq!(set(1).await.unwrap().status(), 204);
    let gone = wait_until(Duration::from_secs(4), || async {
        d.get(&format!("/sandboxes/{id}")).await.0 == 404
    })
    .await;
    assert!(gone, "sandbox not reaped at its end time");
    let r = d
        .sandbox(reqwest::Method::GET, &id, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(set(5).await.unwrap().status(), 404);
    assert_eq!(connect(5).await.unwrap().status(), 404);
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn kill_resets_a_running_command_stream() {
    require_root("kill_resets_a_running_command_stream");
    let d = Daemon::start();
    let (s, v) = d
        .create(json!({"templateID":"base","timeout":60,"secure":true}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = sid(&v);
    let token = v["envdAccessToken"].as_str().unwrap().to_string();
    let mut stream = start_process(&d, &id, &token, "/bin/sleep", &["30"]).await;
    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
    expect_reset(&mut stream).await;
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn user_ports_go_through_the_tunnel() {
    require_root("user_ports_go_through_the_tunnel");
    let d = Daemon::start();
    let (s, v) = d
        .create(json!({"templateID":"base","timeout":60,"secure":true}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = sid(&v);
    let token = v["envdAccessToken"].as_str().unwrap().to_string();
    let closed = d
        .sandbox(reqwest::Method::GET, &id, "/")
        .header("E2b-Sandbox-Port", "8001")
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 502);
    let body: Value = closed.json().await.unwrap();
    assert_eq!(body["message"], "The sandbox is running but port is not open");
    assert_eq!(body["port"], 8001);

    let _server = start_process(
        &d,
        &id,
        &token,
        "/usr/bin/python3",
        &[
            "-m",
            "http.server",
            "8000",
            "--bind",
            "127.0.0.1",
            "--directory",
            "/etc",
        ],
    )
    .await;
    let host = format!("8000-{id}.localhost:{}", d.addr.port());
    let client = d.client();
    let up = wait_until(Duration::from_secs(15), || async {
        client
            .get(format!("{}/hostname", d.url))
            .header("Host", &host)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        up,
        "http.server inside the sandbox never answered through the proxy"
    );
    let r = client
        .get(format!("{}/hosts", d.url))
        .header("Host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("localhost"));
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn signed_file_urls_find_their_sandbox() {
    require_root("signed_file_urls_find_their_sandbox");
    let d = Daemon::start();
    let (s, a) = d
        .create(json!({"templateID":"base","timeout":60,"secure":true}))
        .await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = d
        .create(json!({"templateID":"base","timeout":60,"secure":true}))
        .await;
    assert_eq!(s, 201, "{b}");
    let token = b["envdAccessToken"].as_str().unwrap();
    let exp = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60)
        .to_string();
    let sig = sandboxd_server::routing::file_signature("/etc/hostname", "read", "user", token, Some(&exp));
    let enc = common::urlencode;
    let url = format!(
        "{}/files?path=%2Fetc%2Fhostname&username=user&signature={}&signature_expiration={exp}",
        d.url,
        enc(&sig)
    );
    let r = d.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let expired = sandboxd_server::routing::file_signature("/etc/hostname", "read", "user", token, Some("1"));
    let url = format!(
        "{}/files?path=%2Fetc%2Fhostname&username=user&signature={}&signature_expiration=1",
        d.url,
        enc(&expired)
    );
    let r = d.client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"code":401,"message":"signature is already expired","error_code":"security_denied"})
    );
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn concurrency_limit_gives_429() {
    require_root("concurrency_limit_gives_429");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(
        &tmp.path().join("data"),
        Opts {
            key: Some(test_key()),
            args: vec!["--max-sandboxes".into(), "1".into()],
        },
    )
    .unwrap();
    let (s, first) = d.create(json!({"templateID":"base","timeout":30})).await;
    assert_eq!(s, 201, "{first}");
    let (s, v) = d.create(json!({"templateID":"base","timeout":30})).await;
    assert_eq!((s, v["code"].as_i64()), (429, Some(429)));
    assert_eq!(d.delete(&format!("/sandboxes/{}", sid(&first))).await, 204);
    let (s, _) = d.create(json!({"templateID":"base","timeout":30})).await;
    assert_eq!(s, 201);
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn sigterm_leaves_sandboxes_running_and_a_restart_adopts_them() {
    require_root("sigterm_leaves_sandboxes_running_and_a_restart_adopts_them");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let opts = Opts {
        key: Some(test_key()),
        ..Opts::default()
    };
    let mut d = Daemon::start_in(&data, opts.clone()).unwrap();
    let (s, v) = d.create(json!({"templateID":"base","timeout":300})).await;
    assert_eq!(s, 201, "{v}");
    let id = sid(&v);
    let status = d.terminate().unwrap();
    assert!(status.success(), "{status:?}\n{}", d.logs());
    let row = sandboxd_store::Store::open(&data)
        .unwrap()
        .get(&id)
        .unwrap()
        .expect("registry row kept");
    let pid = row.agent_pid.expect("agent pid recorded");
    assert!(process_running(pid), "agent died with the daemon");

    // The next start re-adopts the sandbox: still listed, same agent, and it can be killed.
    let d2 = Daemon::start_in(&data, opts).unwrap();
    let (s, info) = d2.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["state"], "running");
    assert!(process_running(pid), "the restart killed the adopted agent");
    assert_eq!(d2.delete(&format!("/sandboxes/{id}")).await, 204);
    let gone = wait_until(Duration::from_secs(3), || async { !process_running(pid) }).await;
    assert!(gone, "killed sandbox's agent still running");
    assert_eq!(d2.get(&format!("/sandboxes/{id}")).await.0, 404);
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn a_burst_of_concurrent_creates_all_succeed() {
    require_root("a_burst_of_concurrent_creates_all_succeed");
    // 64 creates at once (the bench once hit "no free loop device" here): every one gets its
    // own disk quota (loop device) and agent.
    let d = Daemon::start();
    let results =
        futures::future::join_all((0..64).map(|_| d.create(json!({"templateID":"base","timeout":60})))).await;
    let ids: Vec<String> = results
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 201, "{v}");
            sid(v)
        })
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    for id in &ids {
        assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
    }
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn mask_request_host_sets_the_host_a_sandbox_server_sees() {
    require_root("mask_request_host_sets_the_host_a_sandbox_server_sees");
    let d = Daemon::start();
    let echo_host = "import http.server\nclass H(http.server.BaseHTTPRequestHandler):\n def do_GET(self):\n  b=(self.headers.get('Host') or '').encode(); self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)\n def log_message(self,*a): pass\nhttp.server.HTTPServer(('127.0.0.1', 8000), H).serve_forever()";
    let mut seen = Vec::new();
    for network in [json!({"maskRequestHost": "localhost:${PORT}"}), json!({})] {
        let (s, v) = d
            .create(json!({"templateID":"base","timeout":60,"secure":true,"network": network}))
            .await;
        assert_eq!(s, 201, "{v}");
        let id = sid(&v);
        let token = v["envdAccessToken"].as_str().unwrap().to_string();
        let _server = start_process(&d, &id, &token, "/usr/bin/python3", &["-c", echo_host]).await;
        let host = format!("8000-{id}.localhost:{}", d.addr.port());
        let client = d.client();
        let up = wait_until(Duration::from_secs(15), || async {
            client
                .get(format!("{}/", d.url))
                .header("Host", &host)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(up, "the server inside never answered");
        let got = client
            .get(format!("{}/", d.url))
            .header("Host", &host)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push((got, host));
    }
    assert_eq!(seen[0].0, "localhost:8000", "masked");
    assert_eq!(seen[1].0, seen[1].1, "unmasked: the client's Host");
}
