//! Sandbox egress end to end (docs/network.md), against the fake internet
//! (`fake_internet/mod.rs`): default on, internet off, allow-list by IP and CIDR with deny-all,
//! allow wins over deny, DNS through the daemon's resolver, a live update cutting an open
//! connection, the host, the daemon's port, metadata and other sandboxes out of reach, bad
//! policies refused, policies kept across pause/resume (memory and filesystem-only), fork and a
//! daemon `kill -9`.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;
mod fake_internet;

use base64::Engine;
use common::{Daemon, Opts, connect_envelope, require_root, test_key};
use fake_internet::{FakeInternet, HELLO, OTHER, WEB};
use serde_json::{Value, json};
use std::time::Duration;

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().unwrap().to_string()
}

/// Runs `bash -c script` in a sandbox; returns its stdout.
async fn sh(d: &Daemon, id: &str, tok: &str, script: &str) -> String {
    let r = d
        .sandbox(reqwest::Method::POST, id, "/process.Process/Start")
        .header("X-Access-Token", tok)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .timeout(Duration::from_secs(60))
        .body(connect_envelope(
            &json!({"process": {"cmd": "/bin/bash", "args": ["-c", script]}}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.bytes().await.unwrap();
    let mut out = String::new();
    let mut i = 0;
    while i + 5 <= body.len() {
        let len = u32::from_be_bytes(body[i + 1..i + 5].try_into().unwrap()) as usize;
        let msg: Value = serde_json::from_slice(&body[i + 5..i + 5 + len]).unwrap();
        i += 5 + len;
        if let Some(d) = msg["event"]["data"]["stdout"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(d).unwrap();
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

/// `ok` if a TCP connection to `addr:port` opens within 2 s, else `refused`.
fn probe(addr: &str, port: u16) -> String {
    format!("(timeout 2 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null && echo ok || echo refused)")
}

/// The host's first global IPv4 address outside sandboxd's and the test's links.
fn host_address() -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ip -4 -o addr show scope global | grep -v -e ' sx' -e ' fkinet0' | awk '{print $4}' | cut -d/ -f1 | head -1")
        .output()
        .unwrap();
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!ip.is_empty(), "no host address");
    ip
}

async fn create(d: &Daemon, body: Value) -> (String, String) {
    let (s, v) = d.create(body).await;
    assert_eq!(s, 201, "{v}");
    (
        sid(&v),
        v["envdAccessToken"].as_str().unwrap_or_default().to_string(),
    )
}

fn start(data: &std::path::Path, key: &str) -> Daemon {
    Daemon::start_in(
        data,
        Opts {
            key: Some(key.to_string()),
            args: vec!["--dns-upstream".into(), fake_internet::DNS.into()],
        },
    )
    .expect("daemon")
}

/// `PUT /sandboxes/{id}/network` with `body`: the status and the JSON answer (`null` if none).
async fn put_network(d: &Daemon, id: &str, body: &Value) -> (u16, Value) {
    let r = d
        .api(reqwest::Method::PUT, &format!("/sandboxes/{id}/network"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A daemon whose DNS upstream is a fresh fake internet (kept alive by the returned values).
fn daemon_on_fake_internet() -> (FakeInternet, tempfile::TempDir, Daemon) {
    let inet = FakeInternet::up();
    let tmp = tempfile::tempdir().unwrap();
    let d = start(&tmp.path().join("data"), &test_key());
    (inet, tmp, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn egress_policies_against_the_fake_internet() {
    require_root("egress_policies_against_the_fake_internet");
    let _inet = FakeInternet::up();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = test_key();
    let mut d = start(&data, &key);
    let port = d.addr.port();

    // default: on, with names from the daemon's resolver
    let (open, open_tok) = create(&d, json!({"templateID": "base", "timeout": 300})).await;
    let out = sh(
        &d,
        &open,
        &open_tok,
        "curl -sS --max-time 5 http://web.test/hello.txt 2>&1",
    )
    .await;
    if out != HELLO {
        let diag = sh(&d, &open, &open_tok, "ip addr 2>&1; ip route 2>&1; cat /etc/resolv.conf; getent hosts web.test; curl -sS --max-time 3 http://198.51.100.10/hello.txt 2>&1").await;
        panic!(
            "default sandbox fetches by name: {out:?}\n{diag}\n{}",
            std::process::Command::new("nft")
                .args(["list", "ruleset"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        );
    }
    let out = sh(
        &d,
        &open,
        &open_tok,
        &format!("curl -sS --max-time 5 http://{OTHER}/hello.txt"),
    )
    .await;
    assert_eq!(out, HELLO);
    // the host, the daemon, metadata, loopback of the host, other sandboxes: never
    let (other, other_tok) = create(&d, json!({"templateID": "base", "timeout": 300})).await;
    let other_ip = sh(
        &d,
        &other,
        &other_tok,
        "ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1",
    )
    .await;
    let other_ip = other_ip.trim();
    assert!(other_ip.starts_with("10.213."), "{other_ip}");
    let (_, info) = d.get(&format!("/sandboxes/{other}")).await;
    assert_eq!(info["networkAccess"], "egress");
    assert_eq!(info["networkAddress"], other_ip);
    let host_ip = host_address();
    let script = [
        probe("10.213.0.1", port),
        probe(&host_ip, port),
        probe(&host_ip, 22),
        probe(fake_internet::HOST_TRANSIT, port),
        probe("169.254.169.254", 80),
        probe(other_ip, 49983),
        probe("10.213.0.1", 80),
    ]
    .join("; ");
    let out = sh(&d, &open, &open_tok, &script).await;
    assert_eq!(
        out,
        "refused\n".repeat(7),
        "host, daemon, metadata, neighbour must be out of reach"
    );
    // no host process opens a connection to a sandbox's address (ingress goes through the
    // daemon's proxy and its tokens); the sandbox itself reaches its listener
    sh(
        &d,
        &other,
        &other_tok,
        "nohup python3 -m http.server 8000 >/dev/null 2>&1 & sleep 1",
    )
    .await;
    assert_eq!(
        sh(&d, &other, &other_tok, &probe("127.0.0.1", 8000)).await,
        "ok\n"
    );
    let from_host = std::net::TcpStream::connect_timeout(
        &format!("{other_ip}:8000").parse().unwrap(),
        Duration::from_secs(2),
    );
    assert!(
        from_host.is_err(),
        "the host reached a sandbox's listener directly"
    );
    // names of the host are not resolvable
    let host_name = nix::unistd::gethostname().unwrap().to_string_lossy().into_owned();
    let out = sh(
        &d,
        &open,
        &open_tok,
        &format!("getent hosts {host_name} localhost.localdomain nas.local || echo none"),
    )
    .await;
    assert_eq!(out.trim(), "none", "the host's names");

    // internet off
    let (off, off_tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300, "allow_internet_access": false}),
    )
    .await;
    let out = sh(
        &d,
        &off,
        &off_tok,
        &format!("{}; {}", probe(WEB, 80), probe(OTHER, 9000)),
    )
    .await;
    assert_eq!(out, "refused\nrefused\n");

    // deny all, allow one IP and one CIDR; allow wins over deny
    let (list, list_tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"denyOut": ["0.0.0.0/0"], "allowOut": [WEB, "203.0.113.8/29"]}}),
    )
    .await;
    let out = sh(
        &d,
        &list,
        &list_tok,
        &format!(
            "{}; {}; {}",
            probe(WEB, 80),
            probe(OTHER, 80),
            probe("198.51.100.11", 80)
        ),
    )
    .await;
    assert_eq!(out, "ok\nok\nrefused\n");
    let (list2, list2_tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"denyOut": ["203.0.113.0/24"], "allowOut": [OTHER]}}),
    )
    .await;
    let out = sh(
        &d,
        &list2,
        &list2_tok,
        &format!("{}; {}", probe(OTHER, 80), probe(WEB, 80)),
    )
    .await;
    assert_eq!(out, "ok\nok\n", "allow wins over deny; the rest stays open");

    // live update: an open connection to a now-denied place is cut at once
    let d2 = &d;
    let script = format!(
        "exec 3<>/dev/tcp/{OTHER}/9000; echo a >&3; read -t 3 l <&3; echo \"$l\"; \
         touch /tmp/held; for i in $(seq 50); do [ -e /tmp/go ] && break; sleep 0.1; done; \
         echo b >&3 2>/dev/null; read -t 3 l <&3 && echo \"$l\" || echo cut"
    );
    let conn = sh(d2, &open, &open_tok, &script);
    let update = async {
        assert!(
            common::wait_until(Duration::from_secs(5), || async {
                sh(d2, &open, &open_tok, "[ -e /tmp/held ] && echo y").await == "y\n"
            })
            .await
        );
        let (status, _) = put_network(d2, &open, &json!({"denyOut": ["203.0.113.0/24"]})).await;
        assert_eq!(status, 204);
        sh(d2, &open, &open_tok, "touch /tmp/go").await;
    };
    let (out, ()) = tokio::join!(conn, update);
    assert_eq!(out, "echo a\ncut\n", "the held connection is cut by the update");
    let out = sh(
        &d,
        &open,
        &open_tok,
        &format!("{}; {}", probe(OTHER, 80), probe(WEB, 80)),
    )
    .await;
    assert_eq!(out, "refused\nok\n");

    // bad policies: clear 400s, nothing changes
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("198.51.{}.{}", i / 256 % 256, i % 256))
        .collect();
    for bad in [
        json!({"denyOut": ["10.0.0.0/33"]}),
        json!({"allowOut": many}),
        json!({"denyOut": ["web.test"]}),
    ] {
        let (status, _) = put_network(&d, &open, &bad).await;
        assert_eq!(status, 400);
    }
    let (s, _) = d
        .create(json!({"templateID": "base", "network": {"allowOut": ["1.2.3.4/40"]}}))
        .await;
    assert_eq!(s, 400);

    // pause and resume, memory and filesystem-only: the policy stays (a filesystem resume boots
    // a fresh agent on a fresh link)
    for (sbx, tok, memory) in [(&list, &list_tok, true), (&list2, &list2_tok, false)] {
        let (s, v) = d
            .post(&format!("/sandboxes/{sbx}/pause"), json!({"memory": memory}))
            .await;
        assert_eq!(s, 204, "{v}");
        let (s, v) = d
            .post(&format!("/sandboxes/{sbx}/connect"), json!({"timeout": 300}))
            .await;
        assert_eq!(s, 201, "{v}");
        let _ = tok;
    }
    let out = sh(
        &d,
        &list,
        &list_tok,
        &format!("{}; {}", probe(WEB, 80), probe("198.51.100.11", 80)),
    )
    .await;
    assert_eq!(out, "ok\nrefused\n", "after a memory pause");
    let out = sh(
        &d,
        &list2,
        &list2_tok,
        &format!("{}; {}", probe(OTHER, 80), probe("203.0.113.11", 80)),
    )
    .await;
    assert_eq!(out, "ok\nrefused\n", "after a filesystem-only pause");
    // a fork gets its source's policy
    let (s, forks) = d
        .post(&format!("/sandboxes/{list}/fork"), json!({"timeout": 60}))
        .await;
    assert_eq!(s, 201, "{forks}");
    let fork = &forks[0]["sandbox"];
    let (fork_id, fork_tok) = (
        sid(fork),
        fork["envdAccessToken"].as_str().unwrap_or_default().to_string(),
    );
    let out = sh(
        &d,
        &fork_id,
        &fork_tok,
        &format!("{}; {}", probe(WEB, 80), probe("198.51.100.11", 80)),
    )
    .await;
    assert_eq!(out, "ok\nrefused\n", "fork");

    // traffic counters in the metrics API and in Prometheus
    let mut latest = Value::Null;
    for _ in 0..40 {
        let (_, m) = d.get(&format!("/sandboxes/{open}/metrics")).await;
        if let Some(last) = m.as_array().and_then(|a| a.last()) {
            latest = last.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        latest["netRxBytes"].as_u64().unwrap_or(0) > HELLO.len() as u64,
        "{latest}"
    );
    assert!(latest["netTxPackets"].as_u64().unwrap_or(0) > 3, "{latest}");
    // packets refused by the filter (the probes after the live update), counted across the
    // table rewrites of later creates
    assert!(
        common::wait_until(Duration::from_secs(20), || async {
            let (_, m) = d.get(&format!("/sandboxes/{open}/metrics")).await;
            m.as_array()
                .and_then(|a| a.last())
                .is_some_and(|l| l["netDeniedPackets"].as_u64().unwrap_or(0) > 0)
        })
        .await,
        "denied packets in the metrics"
    );
    let prom = d
        .api(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        prom.contains(&format!(
            "sandboxd_sandbox_network_receive_bytes_total{{sandbox=\"{open}\"}}"
        )),
        "{prom}"
    );

    // kill -9 and restart: links and policies are kept
    let _ = d.child.as_mut().unwrap().kill();
    let _ = d.child.as_mut().unwrap().wait();
    d.child = None;
    let d = start(&data, &key);
    let out = sh(
        &d,
        &open,
        &open_tok,
        &format!("{}; {}", probe(OTHER, 80), probe(WEB, 80)),
    )
    .await;
    assert_eq!(out, "refused\nok\n", "live-updated policy after kill -9");
    let out = sh(
        &d,
        &list,
        &list_tok,
        &format!("{}; {}", probe(WEB, 80), probe("198.51.100.11", 80)),
    )
    .await;
    assert_eq!(out, "ok\nrefused\n", "create-time policy after kill -9");
    let out = sh(
        &d,
        &other,
        &other_tok,
        "curl -sS --max-time 5 http://web.test/hello.txt",
    )
    .await;
    assert_eq!(out, HELLO, "default sandbox after kill -9");
    let out = sh(&d, &off, &off_tok, &probe(WEB, 80)).await;
    assert_eq!(out, "refused\n");
    d.kill_all_sandboxes();
}

/// A TLS exchange from inside a sandbox: connects to `addr`:443 with SNI `sni` (no
/// certificate check: the test servers are self-signed), sends `hi`, prints the answer line
/// (`tls <server address> hi`) or `refused`.
fn tls_line(addr: &str, sni: &str) -> String {
    format!(
        "python3 -c 'import socket,ssl,sys\ntry:\n c=ssl._create_unverified_context(); s=c.wrap_socket(socket.create_connection((sys.argv[1],443),timeout=5),server_hostname=sys.argv[2]); s.sendall(b\"hi\\n\"); print(s.recv(200).decode().strip() or \"refused\")\nexcept Exception: print(\"refused\")' {addr} {sni}"
    )
}

/// The HTTP status of `curl` for `url` (`000` when no answer), with extra curl arguments.
fn http_status(url: &str, extra: &str) -> String {
    format!("curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 5 {extra} {url}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn domain_allow_lists_through_the_egress_proxy() {
    require_root("domain_allow_lists_through_the_egress_proxy");
    let _inet = FakeInternet::up();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = test_key();
    let d = start(&data, &key);

    // an allow-list by name with deny-all: HTTP by Host, TLS by SNI
    let (named, tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"allowOut": ["web.test"], "denyOut": ["0.0.0.0/0"]}}),
    )
    .await;
    let out = sh(
        &d,
        &named,
        &tok,
        "curl -sS --max-time 5 http://web.test/hello.txt 2>&1",
    )
    .await;
    assert_eq!(out, HELLO, "an allowed name over HTTP");
    let out = sh(&d, &named, &tok, &tls_line("web.test", "web.test")).await;
    assert_eq!(out, format!("tls {WEB} hi\n"), "an allowed name over TLS");
    // other names and bare addresses: 403 for HTTP (with the reason), reset for TLS
    let script = [
        http_status("http://other.test/hello.txt", ""),
        http_status(&format!("http://{OTHER}/hello.txt"), ""),
        http_status(&format!("http://{WEB}/hello.txt"), ""),
        tls_line("other.test", "other.test"),
        tls_line(OTHER, OTHER),
    ]
    .join("; ");
    let out = sh(&d, &named, &tok, &script).await;
    assert_eq!(
        out, "403\n403\n403\nrefused\nrefused\n",
        "names and addresses not allowed"
    );
    let out = sh(&d, &named, &tok, "curl -s --max-time 5 http://other.test/").await;
    assert!(
        out.contains("not allowed by this sandbox's network policy"),
        "{out}"
    );
    // forged names: the proxy connects to the allowed name's own address, never to the one
    // the sandbox chose
    let out = sh(&d, &named, &tok, &tls_line(OTHER, "web.test")).await;
    assert_eq!(
        out,
        format!("tls {WEB} hi\n"),
        "forged SNI reaches the real web.test"
    );
    let out = sh(
        &d,
        &named,
        &tok,
        &http_status(
            "http://web.test/hello.txt",
            &format!("--resolve web.test:80:{OTHER}"),
        ),
    )
    .await;
    assert_eq!(out, "200\n");
    // ports other than 80 and 443 stay with the kernel's address rules
    let out = sh(&d, &named, &tok, &probe(WEB, 9000)).await;
    assert_eq!(out, "refused\n");
    // the proxy applies the host protections to what it connects to
    let script = [
        http_status("http://169.254.169.254/", ""),
        http_status("http://10.213.0.1/", ""),
    ]
    .join("; ");
    let out = sh(&d, &named, &tok, &script).await;
    assert_eq!(out, "403\n403\n");

    // wildcards; allow wins over a deny of the name's own address
    let (wild, wild_tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"allowOut": ["*.test"], "denyOut": ["0.0.0.0/0", WEB]}}),
    )
    .await;
    let out = sh(
        &d,
        &wild,
        &wild_tok,
        &format!(
            "{}; {}",
            tls_line("other.test", "other.test"),
            tls_line("web.test", "web.test")
        ),
    )
    .await;
    assert_eq!(out, format!("tls {OTHER} hi\ntls {WEB} hi\n"));

    // a live update cuts an open proxied connection that became denied
    let held = "python3 -c 'import socket,ssl,time,os\nc=ssl._create_unverified_context(); s=c.wrap_socket(socket.create_connection((\"web.test\",443),timeout=10),server_hostname=\"web.test\")\ns.sendall(b\"a\\n\"); print(s.recv(100).decode().strip(), flush=True); open(\"/tmp/held\",\"w\").close()\nwhile not os.path.exists(\"/tmp/go\"): time.sleep(0.05)\ntime.sleep(0.5)\ntry:\n s.sendall(b\"b\\n\"); d=s.recv(100); print(\"cut\" if not d else d.decode().strip())\nexcept Exception: print(\"cut\")'";
    let conn = sh(&d, &named, &tok, held);
    let update = async {
        assert!(
            common::wait_until(Duration::from_secs(10), || async {
                sh(&d, &named, &tok, "[ -e /tmp/held ] && echo y").await == "y\n"
            })
            .await
        );
        let (status, _) = put_network(
            &d,
            &named,
            &json!({"allowOut": ["other.test"], "denyOut": ["0.0.0.0/0"]}),
        )
        .await;
        assert_eq!(status, 204);
        sh(&d, &named, &tok, "touch /tmp/go").await;
    };
    let (out, ()) = tokio::join!(conn, update);
    assert_eq!(
        out,
        format!("tls {WEB} a\ncut\n"),
        "the held connection is cut by the update"
    );
    let out = sh(
        &d,
        &named,
        &tok,
        &format!(
            "{}; {}",
            tls_line("web.test", "web.test"),
            tls_line("other.test", "other.test")
        ),
    )
    .await;
    assert_eq!(
        out,
        format!("refused\ntls {OTHER} hi\n"),
        "the new policy applies"
    );
    // the proxy's refusals are counted per sandbox
    assert!(
        common::wait_until(Duration::from_secs(20), || async {
            let (_, m) = d.get(&format!("/sandboxes/{named}/metrics")).await;
            m.as_array()
                .and_then(|a| a.last())
                .is_some_and(|l| l["netDeniedConnections"].as_u64().unwrap_or(0) >= 5)
        })
        .await,
        "denied connections in the metrics"
    );
    let prom = d
        .api(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        prom.contains(&format!(
            "sandboxd_sandbox_network_denied_connections_total{{sandbox=\"{named}\"}}"
        )),
        "{prom}"
    );
    d.kill_all_sandboxes();
}

/// The receiver's rate in Mbit/s of a 5-second `iperf3` run from the sandbox to the fake
/// internet (`reverse`: from it). The server re-opens its listener after each run, so a run
/// refused at once is retried.
async fn iperf_mbps(d: &Daemon, id: &str, tok: &str, reverse: bool) -> f64 {
    let flag = if reverse { "-R" } else { "" };
    let out = sh(
        d,
        id,
        tok,
        &format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do out=$(iperf3 -c {WEB} -p 5201 -t 5 -J {flag} 2>&1); \
             case \"$out\" in *'unable to connect'*) sleep 0.3;; *) break;; esac; done; printf %s \"$out\""
        ),
    )
    .await;
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("iperf3 output ({e}): {out}"));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no rate in {out}"))
        / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn default_bandwidth_applies_unless_the_create_sets_its_own() {
    require_root("default_bandwidth_applies_unless_the_create_sets_its_own");
    let tmp = tempfile::tempdir().unwrap();
    // a bad default stops the start, saying what is allowed
    let e = Daemon::start_in(
        &tmp.path().join("bad"),
        Opts {
            key: Some(test_key()),
            args: vec!["--default-egress-mbps".into(), "0".into()],
        },
    )
    .err()
    .expect("a zero rate was accepted");
    assert!(e.contains("Mbit/s from"), "{e}");
    let d = Daemon::start_in(
        &tmp.path().join("data"),
        Opts {
            key: Some(test_key()),
            args: vec![
                "--default-egress-mbps".into(),
                "2.2".into(),
                "--default-ingress-mbps".into(),
                "3.3".into(),
            ],
        },
    )
    .expect("daemon");
    // unusual rates (275,000 and 412,500 bytes/s), found among the host's qdiscs
    let (id, _) = create(&d, json!({"templateID": "base", "timeout": 120})).await;
    let (_, info) = d.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(
        info["network"]["bandwidth"],
        json!({"egressMbps": 2.2, "ingressMbps": 3.3}),
        "{info}"
    );
    let rates = common::host_tbf_rates();
    assert!(rates.contains(&275_000) && rates.contains(&412_500), "{rates:?}");
    // the create's own limits win; an explicit null means none
    let (own, _) = create(
        &d,
        json!({"templateID": "base", "timeout": 120,
               "network": {"bandwidth": {"egressMbps": 5.1}}}),
    )
    .await;
    let (_, info) = d.get(&format!("/sandboxes/{own}")).await;
    assert_eq!(info["network"]["bandwidth"], json!({"egressMbps": 5.1}), "{info}");
    assert!(common::host_tbf_rates().contains(&637_500));
    let (none, _) = create(
        &d,
        json!({"templateID": "base", "timeout": 120, "network": {"bandwidth": null}}),
    )
    .await;
    let (_, info) = d.get(&format!("/sandboxes/{none}")).await;
    assert!(info["network"]["bandwidth"].is_null(), "{info}");
    d.kill_all_sandboxes();

    // a template's own limits replace the daemon's for its sandboxes, also after a restart
    let r = d
        .api(reqwest::Method::PATCH, "/templates/base")
        .json(&json!({"bandwidth": {"egressMbps": 1.7, "ingressMbps": 2.9}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let data = d.data_dir.clone();
    let key = d.key.clone();
    drop(d);
    let d = Daemon::start_in(
        &data,
        Opts {
            key: Some(key),
            args: vec!["--default-egress-mbps".into(), "2.2".into()],
        },
    )
    .expect("daemon restart");
    let (id, _) = create(&d, json!({"templateID": "base", "timeout": 120})).await;
    let (_, info) = d.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(
        info["network"]["bandwidth"],
        json!({"egressMbps": 1.7, "ingressMbps": 2.9}),
        "{info}"
    );
    let rates = common::host_tbf_rates();
    assert!(rates.contains(&212_500) && rates.contains(&362_500), "{rates:?}");
    d.kill_all_sandboxes();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn bandwidth_limits_hold_within_ten_percent() {
    require_root("bandwidth_limits_hold_within_ten_percent");
    let (_inet, _tmp, d) = daemon_on_fake_internet();

    // unusual rates (912,500 and 462,500 bytes/s), so the test finds its own buckets among
    // the host's qdiscs
    let (id, tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"bandwidth": {"egressMbps": 7.3, "ingressMbps": 3.7}}}),
    )
    .await;
    let up = iperf_mbps(&d, &id, &tok, false).await;
    assert!(
        (7.3 * 0.9..=7.3 * 1.1).contains(&up),
        "egress {up:.2} Mbit/s, limit 7.3"
    );
    let down = iperf_mbps(&d, &id, &tok, true).await;
    assert!(
        (3.7 * 0.9..=3.7 * 1.1).contains(&down),
        "ingress {down:.2} Mbit/s, limit 3.7"
    );
    println!("measured: egress {up:.2} Mbit/s (limit 7.3), ingress {down:.2} Mbit/s (limit 3.7)");
    let rates = common::host_tbf_rates();
    assert!(rates.contains(&912_500) && rates.contains(&462_500), "{rates:?}");

    // an update that leaves the limits out keeps them; pause and resume keep them
    let (status, _) = put_network(&d, &id, &json!({"denyOut": ["203.0.113.0/24"]})).await;
    assert_eq!(status, 204);
    for memory in [true, false] {
        let (s, v) = d
            .post(&format!("/sandboxes/{id}/pause"), json!({"memory": memory}))
            .await;
        assert_eq!(s, 204, "{v}");
        let (s, v) = d
            .post(&format!("/sandboxes/{id}/connect"), json!({"timeout": 300}))
            .await;
        assert_eq!(s, 201, "{v}");
        let rates = common::host_tbf_rates();
        assert!(
            rates.contains(&912_500) && rates.contains(&462_500),
            "after a pause (memory: {memory}): {rates:?}"
        );
    }
    let (_, info) = d.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(info["network"]["bandwidth"]["egressMbps"], 7.3, "{info}");

    // bad limits: 400, nothing changes
    for bad in [
        json!({"bandwidth": {"egressMbps": 0}}),
        json!({"bandwidth": {"egressMbps": -1}}),
        json!({"bandwidth": {"ingressMbps": "fast"}}),
        json!({"bandwidth": {"ingressMbps": 1e9}}),
        json!({"bandwidth": {"upMbps": 1}}),
        json!({"bandwidth": 5}),
    ] {
        let (status, answer) = put_network(&d, &id, &bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            answer["message"].as_str().unwrap().contains("bandwidth"),
            "{answer}"
        );
    }
    let (s, _) = d
        .create(json!({"templateID": "base", "network": {"bandwidth": {"egressMbps": 0.001}}}))
        .await;
    assert_eq!(s, 400);
    let rates = common::host_tbf_rates();
    assert!(rates.contains(&912_500) && rates.contains(&462_500), "{rates:?}");

    // `null` removes them, shaper device included
    let (status, _) = put_network(&d, &id, &json!({"bandwidth": null})).await;
    assert_eq!(status, 204);
    let rates = common::host_tbf_rates();
    assert!(
        !rates.contains(&912_500) && !rates.contains(&462_500),
        "{rates:?}"
    );
    let up = iperf_mbps(&d, &id, &tok, false).await;
    assert!(up > 7.3 * 3.0, "unlimited egress {up:.1} Mbit/s");
    d.kill_all_sandboxes();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn header_rules_inject_secrets_the_sandbox_never_sees() {
    require_root("header_rules_inject_secrets_the_sandbox_never_sees");
    let (_inet, _tmp, d) = daemon_on_fake_internet();
    let value = format!("sk-{}", test_key());
    let (s, v) = d
        .post("/secrets", json!({"name": "web-key", "value": value}))
        .await;
    assert_eq!(s, 201, "{v}");

    let (id, tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"allowOut": ["web.test"], "denyOut": ["0.0.0.0/0"],
                           "rules": {"web.test": [{"transform": {"headers": {
                               "Authorization": "Bearer ${e2b.secrets.web-key}",
                               "X-Static": "plain"}}}]}}}),
    )
    .await;
    // every request on the connection gets the headers; a forged one is replaced
    let out = sh(
        &d,
        &id,
        &tok,
        "curl -sS --max-time 5 -H 'Authorization: Bearer forged' http://web.test/headers http://web.test/headers",
    )
    .await;
    let expected = format!("Bearer {value}");
    assert_eq!(out.matches(&expected).count(), 2, "{out}");
    assert!(
        !out.contains("forged") && out.contains("\"x-static\": \"plain\""),
        "{out}"
    );
    // a forged address for the name: the request (and the secret) still go to the name's own
    // server, also for a sandbox whose policy allows every address
    let out = sh(
        &d,
        &id,
        &tok,
        &format!("curl -sS --max-time 5 --resolve web.test:80:{OTHER} http://web.test/headers"),
    )
    .await;
    assert!(
        out.contains(&format!("\"served-by\": \"{WEB}\"")) && out.contains(&expected),
        "{out}"
    );
    let (open, open_tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"rules": {"web.test": [{"transform": {"headers": {
                   "Authorization": "Bearer ${e2b.secrets.web-key}"}}}]}}}),
    )
    .await;
    let out = sh(
        &d,
        &open,
        &open_tok,
        &format!("curl -sS --max-time 5 --resolve web.test:80:{OTHER} http://web.test/headers"),
    )
    .await;
    assert!(
        out.contains(&format!("\"served-by\": \"{WEB}\"")) && out.contains(&expected),
        "{out}"
    );
    let out = sh(
        &d,
        &open,
        &open_tok,
        &format!("curl -sS --max-time 5 -H 'Host: other.test' http://{OTHER}/headers"),
    )
    .await;
    assert!(
        out.contains(&format!("\"served-by\": \"{OTHER}\"")) && !out.contains(&value),
        "{out}"
    );
    // the files still come through the rules path
    let out = sh(&d, &id, &tok, "curl -sS --max-time 5 http://web.test/hello.txt").await;
    assert_eq!(out, HELLO);
    // nothing in the sandbox holds the value: environment, processes, the writable file system
    // (the rest is the host's read-only /usr)
    let script = format!(
        "(env; cat /proc/*/environ 2>/dev/null; grep -rsl -- '{value}' /home /root /tmp /etc /var /run /opt /srv /dev/shm 2>/dev/null) | grep -c -- '{value}' || true"
    );
    let out = sh(&d, &id, &tok, &script).await;
    assert_eq!(out.trim(), "0", "the secret is visible inside the sandbox");
    // an update of the secret applies to the next request
    let (s, _) = d.post("/secrets/web-key", json!({"value": "rotated"})).await;
    assert_eq!(s, 200);
    let out = sh(&d, &id, &tok, "curl -sS --max-time 5 http://web.test/headers").await;
    assert!(out.contains("Bearer rotated"), "{out}");
    // a deleted secret: the request is not sent, and the answer says why
    let r = d
        .api(reqwest::Method::DELETE, "/secrets/web-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let out = sh(
        &d,
        &id,
        &tok,
        "curl -s --max-time 5 -w ' %{http_code}' http://web.test/headers",
    )
    .await;
    assert!(out.contains("web-key") && out.ends_with(" 502"), "{out}");
    d.kill_all_sandboxes();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn https_header_rules_through_the_daemons_ca() {
    require_root("https_header_rules_through_the_daemons_ca");
    let inet = FakeInternet::up();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = Daemon::start_in(
        &data,
        Opts {
            key: Some(test_key()),
            args: vec![
                "--dns-upstream".into(),
                fake_internet::DNS.into(),
                "--egress-upstream-ca".into(),
                inet.ca_cert().to_string_lossy().into_owned(),
            ],
        },
    )
    .expect("daemon");
    let value = format!("sk-{}", test_key());
    let (s, v) = d
        .post("/secrets", json!({"name": "web-key", "value": value}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (id, tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"allowOut": ["web.test", "other.test", "api.web.test"], "denyOut": ["0.0.0.0/0"],
                           "rules": {
                               "web.test": [{"transform": {"headers": {
                                   "Authorization": "Bearer ${e2b.secrets.web-key}"}}}],
                               "api.web.test": [{"transform": {"headers": {"X-Static": "plain"}}}]}}}),
    )
    .await;
    let expected = format!("Bearer {value}");
    // curl verifies the certificate with the system bundle (no -k): the daemon's CA is in it;
    // a forged header is replaced on every request of the connection
    let out = sh(
        &d,
        &id,
        &tok,
        "curl -sS --max-time 10 -H 'Authorization: Bearer forged' https://web.test/headers https://web.test/headers 2>&1",
    )
    .await;
    assert_eq!(out.matches(&expected).count(), 2, "{out}");
    assert!(
        !out.contains("forged") && out.contains(&format!("\"served-by\": \"{WEB}\"")),
        "{out}"
    );
    // Python's ssl and Node.js (NODE_EXTRA_CA_CERTS, set by the agent) verify it too
    let out = sh(
        &d,
        &id,
        &tok,
        "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"https://web.test/headers\", timeout=10).read().decode())' 2>&1",
    )
    .await;
    assert!(out.contains(&expected), "python: {out}");
    let out = sh(
        &d,
        &id,
        &tok,
        "node -e 'fetch(\"https://web.test/headers\").then(r => r.text()).then(t => console.log(t), e => console.log(String(e.cause || e)))' 2>&1",
    )
    .await;
    assert!(out.contains(&expected), "node: {out}");
    // the certificate the sandbox sees is the daemon's, the one in the template's trust store
    let ca = std::fs::read_to_string(data.join("egress-ca/ca.pem")).unwrap();
    let out = sh(&d, &id, &tok, "cat /etc/sandboxd/egress-ca.pem").await;
    assert_eq!(out.trim(), ca.trim());
    let out = sh(
        &d,
        &id,
        &tok,
        "echo | openssl s_client -connect web.test:443 -servername web.test 2>/dev/null | grep -i '^issuer' ; echo",
    )
    .await;
    assert!(out.contains("sandboxd egress CA"), "{out}");
    // names without rules are spliced: the real server's certificate (signed by the test CA)
    let test_ca = std::fs::read_to_string(inet.ca_cert()).unwrap();
    let script = format!(
        "cat > /tmp/test-ca.pem <<'EOF'\n{test_ca}EOF\n\
         curl -sS --max-time 10 --cacert /tmp/test-ca.pem https://other.test/headers 2>&1; echo; \
         curl -sS --max-time 10 --cacert /tmp/test-ca.pem https://web.test/headers >/dev/null 2>&1 || echo intercepted"
    );
    let out = sh(&d, &id, &tok, &script).await;
    assert!(
        out.contains(&format!("\"served-by\": \"{OTHER}\""))
            && !out.contains("Bearer")
            && out.contains("intercepted"),
        "{out}"
    );
    // a name whose real server cannot be verified: no request reaches it, and the answer says why
    let out = sh(
        &d,
        &id,
        &tok,
        "curl -s --max-time 10 -w ' %{http_code}' https://api.web.test/headers",
    )
    .await;
    assert!(
        out.ends_with(" 502")
            && out.contains("could not reach api.web.test securely")
            && !out.contains("plain"),
        "{out}"
    );
    // the secret and the CA's key are nowhere in the sandbox
    let key = std::fs::read_to_string(data.join("egress-ca/ca.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap().to_string();
    let script = format!(
        "(env; cat /proc/*/environ 2>/dev/null; grep -rsl -e '{value}' -e '{key_line}' /home /root /tmp /etc /var /run /opt /srv /dev/shm 2>/dev/null) | grep -c -e '{value}' -e '{key_line}' || true"
    );
    let out = sh(&d, &id, &tok, &script).await;
    assert_eq!(
        out.trim(),
        "0",
        "the secret or the CA key is visible inside the sandbox"
    );
    d.kill_all_sandboxes();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn egress_chained_through_a_socks5_proxy() {
    require_root("egress_chained_through_a_socks5_proxy");
    let (inet, _tmp, d) = daemon_on_fake_internet();
    let log = inet.docroot.path().join("socks.log");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();

    // every TCP connection goes through the proxy: HTTP and another port alike
    let (open, tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"egressProxy": {"address": format!("{OTHER}:1080")}}}),
    )
    .await;
    let out = sh(&d, &open, &tok, "curl -sS --max-time 5 http://web.test/hello.txt").await;
    assert_eq!(out, HELLO);
    let out = sh(
        &d,
        &open,
        &tok,
        &format!("exec 3<>/dev/tcp/{WEB}/9000; echo hi >&3; head -1 <&3"),
    )
    .await;
    assert_eq!(out, "echo hi\n");
    let seen = logged();
    assert!(
        seen.contains(&format!("1080 {WEB}:80")) && seen.contains(&format!("1080 {WEB}:9000")),
        "{seen}"
    );
    // a protocol where the server speaks first is not held up waiting for the client's bytes
    let out = sh(
        &d,
        &open,
        &tok,
        &format!("exec 3<>/dev/tcp/{WEB}/2222 && timeout 5 head -1 <&3"),
    )
    .await;
    assert_eq!(out, "hello from the server\n");

    // an allowed name is handed to the proxy as a name; credentials are used
    let (named, named_tok) = create(
        &d,
        json!({"templateID": "base", "timeout": 300,
               "network": {"allowOut": ["web.test"], "denyOut": ["0.0.0.0/0"],
                           "egressProxy": {"address": format!("{OTHER}:1081"), "username": "u", "password": "p"}}}),
    )
    .await;
    let out = sh(
        &d,
        &named,
        &named_tok,
        "curl -sS --max-time 5 http://web.test/hello.txt",
    )
    .await;
    assert_eq!(out, HELLO);
    assert!(logged().contains("1081 web.test:80"), "{}", logged());
    // the policy still applies before the proxy: other names are refused here
    let out = sh(&d, &named, &named_tok, &http_status("http://other.test/", "")).await;
    assert_eq!(out, "403\n");

    // wrong credentials or a proxy that is down: no connection, and no direct fallback
    for (address, user) in [(format!("{OTHER}:1081"), "wrong"), (format!("{OTHER}:1089"), "u")] {
        let (status, _) = put_network(
            &d,
            &named,
            &json!({"allowOut": ["web.test"], "denyOut": ["0.0.0.0/0"],
                          "egressProxy": {"address": address, "username": user, "password": "p"}}),
        )
        .await;
        assert_eq!(status, 204);
        let out = sh(
            &d,
            &named,
            &named_tok,
            &http_status("http://web.test/hello.txt", ""),
        )
        .await;
        assert_eq!(out, "000\n", "{address} as {user}");
    }
    // a proxy at a protected address is never used
    let (status, _) = put_network(&d, &named, &json!({"egressProxy": {"address": "127.0.0.1:1080"}})).await;
    assert_eq!(status, 204);
    let out = sh(
        &d,
        &named,
        &named_tok,
        &http_status("http://web.test/hello.txt", ""),
    )
    .await;
    assert_eq!(out, "403\n");

    // TLS to the proxy (egressProxy.tls): verified against its caCert for serverName
    let test_ca = std::fs::read_to_string(inet.ca_cert()).unwrap();
    let tls_proxy = |tls: Value| {
        json!({"allowOut": ["web.test"], "denyOut": ["0.0.0.0/0"],
               "egressProxy": {"address": format!("{OTHER}:1443"), "tls": tls}})
    };
    let (status, _) = put_network(
        &d,
        &named,
        &tls_proxy(json!({"enabled": true, "serverName": "other.test", "caCert": test_ca})),
    )
    .await;
    assert_eq!(status, 204);
    let out = sh(
        &d,
        &named,
        &named_tok,
        "curl -sS --max-time 5 http://web.test/hello.txt",
    )
    .await;
    assert_eq!(out, HELLO);
    assert!(logged().contains("1443 web.test:80"), "{}", logged());
    // an unverifiable proxy is never used: the host's roots do not have the test CA, a caCert
    // that did not sign it, a serverName its certificate does not have
    // (a real CA that did not sign it: the daemon's own egress CA)
    let other_ca = std::fs::read_to_string(d.data_dir.join("egress-ca/ca.pem")).unwrap();
    for tls in [
        json!({"enabled": true, "serverName": "other.test"}),
        json!({"enabled": true, "serverName": "other.test", "caCert": other_ca}),
        json!({"enabled": true, "serverName": "wrong.test", "caCert": test_ca}),
    ] {
        let (status, body) = put_network(&d, &named, &tls_proxy(tls.clone())).await;
        assert_eq!(status, 204, "{tls}: {body}");
        let before = logged().matches("1443 ").count();
        let out = sh(
            &d,
            &named,
            &named_tok,
            &http_status("http://web.test/hello.txt", ""),
        )
        .await;
        assert_eq!(out, "000\n", "{tls}");
        assert_eq!(
            logged().matches("1443 ").count(),
            before,
            "{tls}: a CONNECT went through"
        );
    }
    // the plain SOCKS5 port is not TLS: TLS to it fails instead of falling back to clear text
    let (status, _) = put_network(
        &d,
        &named,
        &json!({"allowOut": ["web.test"], "denyOut": ["0.0.0.0/0"],
                "egressProxy": {"address": format!("{OTHER}:1080"),
                                "tls": {"enabled": true, "serverName": "other.test", "caCert": test_ca}}}),
    )
    .await;
    assert_eq!(status, 204);
    let out = sh(
        &d,
        &named,
        &named_tok,
        &http_status("http://web.test/hello.txt", ""),
    )
    .await;
    assert_eq!(out, "000\n");
    d.kill_all_sandboxes();
}

/// The host link routing to sandbox address `ip` (`sx…`).
fn host_link_of(ip: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "route", "get", ip])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let dev = out
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(dev.starts_with("sx"), "route to {ip}: {out}");
    dev
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The network namespace of the host process whose command line is exactly `argv`.
fn netns_of_process(argv: &[&str]) -> Option<std::fs::File> {
    let want = argv.join("\0") + "\0";
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline == want.as_bytes() {
            return std::fs::File::open(e.path().join("ns/net")).ok();
        }
    }
    None
}

async fn address_of(d: &Daemon, id: &str) -> String {
    let (_, info) = d.get(&format!("/sandboxes/{id}")).await;
    info["networkAddress"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn host_links_go_with_their_namespaces_and_slots_wait_for_them() {
    require_root("host_links_go_with_their_namespaces_and_slots_wait_for_them");
    let (_inet, _tmp, d) = daemon_on_fake_internet();

    // a deleted sandbox's host link goes with its namespace, without the daemon deleting it
    let (a, _) = create(&d, json!({"templateID": "base"})).await;
    let link_a = host_link_of(&address_of(&d, &a).await);
    assert_eq!(d.delete(&format!("/sandboxes/{a}")).await, 204);
    assert!(
        common::wait_until(Duration::from_secs(3), || async { !link_exists(&link_a) }).await,
        "{link_a} outlived its sandbox"
    );

    // back-to-back creates and deletes: every sandbox is connected, on a slot whose link is gone
    for round in 0..8 {
        let (id, tok) = create(&d, json!({"templateID": "base"})).await;
        let out = sh(
            &d,
            &id,
            &tok,
            "curl -sS --max-time 5 http://web.test/hello.txt 2>&1",
        )
        .await;
        assert_eq!(out, HELLO, "round {round}");
        assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
    }

    // a namespace something else still holds: its slot is not reused while the link is there,
    // and the daemon deletes the link after its deadline
    let (b, b_tok) = create(&d, json!({"templateID": "base"})).await;
    let b_ip = address_of(&d, &b).await;
    let link_b = host_link_of(&b_ip);
    sh(&d, &b, &b_tok, "nohup sleep 7654321 >/dev/null 2>&1 &").await;
    let mut held = None;
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            held = held.take().or_else(|| netns_of_process(&["sleep", "7654321"]));
            std::future::ready(held.is_some())
        })
        .await,
        "the sandbox's sleep is not visible on the host"
    );
    assert_eq!(d.delete(&format!("/sandboxes/{b}")).await, 204);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(link_exists(&link_b), "a held namespace keeps its link");
    let (c, c_tok) = create(&d, json!({"templateID": "base"})).await;
    assert_ne!(
        address_of(&d, &c).await,
        b_ip,
        "a slot reused while its link exists"
    );
    assert_eq!(
        sh(
            &d,
            &c,
            &c_tok,
            "curl -sS --max-time 5 http://web.test/hello.txt 2>&1"
        )
        .await,
        HELLO
    );
    assert!(
        common::wait_until(Duration::from_secs(10), || async { !link_exists(&link_b) }).await,
        "the daemon did not delete a link that outlived its sandbox"
    );
    assert!(d.logs().contains("outlived its sandbox"), "{}", d.logs());
    drop(held);
    d.kill_all_sandboxes();
}
