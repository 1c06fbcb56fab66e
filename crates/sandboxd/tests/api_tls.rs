//! HTTPS ingress (`docs/network.md`, "HTTPS ingress"): TLS beside plain HTTP on the listener's
//! port, with the daemon's ingress CA (`--tls`) or the user's certificate (`--tls-cert`), for
//! `https://<port>-<id>.<domain>`.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use base64::Engine;
use common::{Daemon, Opts, connect_envelope, require_root, test_key, wait_until};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// Runs `bash -c script` in a sandbox over plain HTTP; returns its stdout.
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

/// A client trusting only `ca` (PEM) that resolves `names` to the daemon.
fn tls_client(ca: &[u8], names: &[String], addr: SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .tls_certs_only([reqwest::Certificate::from_pem(ca).unwrap()]);
    for n in names {
        b = b.resolve(n, addr);
    }
    b.build().unwrap()
}

fn start(data: &std::path::Path, args: &[&str]) -> Result<Daemon, String> {
    Daemon::start_in(
        data,
        Opts {
            key: Some(test_key()),
            args: args.iter().map(|s| s.to_string()).collect(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn tls_and_plain_http_share_the_port() {
    require_root("tls_and_plain_http_share_the_port");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = start(&data, &["--tls", "--domain", "sandbox.test", "--no-network"]).expect("daemon");
    // plain HTTP keeps working on the same port (the harness talks HTTP)
    let (s, v) = d.create(json!({"templateID": "base", "timeout": 120})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["domain"], "sandbox.test");
    let id = v["sandboxID"].as_str().unwrap().to_string();
    let tok = v["envdAccessToken"].as_str().unwrap_or_default().to_string();
    let ca = std::fs::read(data.join("ingress-ca/ca.pem")).unwrap();
    let envd = format!("49983-{id}.sandbox.test");
    let web = format!("8000-{id}.sandbox.test");
    let api = "api.sandbox.test".to_string();
    let client = tls_client(&ca, &[envd.clone(), web.clone(), api.clone()], d.addr);
    let port = d.addr.port();

    // envd over HTTPS by its name; HTTP/2 by ALPN
    let r = client
        .get(format!("https://{envd}:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // the control plane over HTTPS too (any name the certificate covers; the API key decides)
    let r = client
        .get(format!("https://{api}:{port}/sandboxes"))
        .header("X-API-Key", &d.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // an HTTP/1.1 client on the same TLS port
    let h1 = reqwest::Client::builder()
        .http1_only()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .resolve(&envd, d.addr)
        .build()
        .unwrap();
    let r = h1
        .get(format!("https://{envd}:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (204, reqwest::Version::HTTP_11)
    );

    // a user port: https://<port>-<id>.<domain>
    sh(
        &d,
        &id,
        &tok,
        "cd /etc && setsid nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &",
    )
    .await;
    let url = format!("https://{web}:{port}/hostname");
    let up = wait_until(Duration::from_secs(15), || async {
        client.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "the sandbox's port 8000 over HTTPS");
    let body = client.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(body.trim(), sh(&d, &id, &tok, "cat /etc/hostname").await.trim());

    // a client that does not trust the CA is refused by its own verification; a name the
    // certificate does not cover is refused too
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .resolve(&envd, d.addr)
        .build()
        .unwrap();
    let e = untrusting
        .get(format!("https://{envd}:{port}/health"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").to_lowercase().contains("certificate"), "{e:?}");
    let other = "49983-x.elsewhere.test".to_string();
    let e = tls_client(&ca, std::slice::from_ref(&other), d.addr)
        .get(format!("https://{other}:{port}/health"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").to_lowercase().contains("certificate"), "{e:?}");
    // garbage after a TLS-looking first byte costs a connection, not the daemon
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        s.write_all(b"\x16\x03\x01\x00\x05garbage").await.unwrap();
        let mut b = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
    }
    let r = client
        .get(format!("https://{envd}:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);

    // `sandboxd tls-ca` prints the same CA
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["tls-ca", "--pem", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, ca);
    d.kill_all_sandboxes();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn tls_with_the_users_certificate() {
    require_root("tls_with_the_users_certificate");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // the user's own CA and a wildcard certificate for their domain, made with openssl
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=user CA' -keyout ca.key -out ca.pem 2>/dev/null && \
             openssl req -newkey rsa:2048 -nodes -subj '/CN=*.mine.test' -keyout leaf.key -out leaf.csr 2>/dev/null && \
             printf 'subjectAltName=DNS:*.mine.test,DNS:mine.test\\nbasicConstraints=CA:FALSE\\n' > leaf.ext && \
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext -out leaf.pem 2>/dev/null && \
             openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=other' -keyout other.key -out other.pem 2>/dev/null",
        )
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success());
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    // a key that is not the certificate's, a missing file, half the pair: clear start-up errors
    let e = start(
        &dir.join("bad1"),
        &[
            "--tls-cert",
            &p("leaf.pem"),
            "--tls-key",
            &p("other.key"),
            "--no-network",
        ],
    )
    .err()
    .expect("a mismatched key must not start");
    assert!(e.contains("does not belong"), "{e}");
    let e = start(
        &dir.join("bad2"),
        &[
            "--tls-cert",
            &p("missing.pem"),
            "--tls-key",
            &p("leaf.key"),
            "--no-network",
        ],
    )
    .err()
    .expect("a missing certificate must not start");
    assert!(e.contains("missing.pem"), "{e}");
    let e = start(&dir.join("bad3"), &["--tls-cert", &p("leaf.pem"), "--no-network"])
        .err()
        .expect("a certificate without its key must not start");
    assert!(e.contains("--tls-key"), "{e}");

    let d = start(
        &dir.join("data"),
        &[
            "--tls-cert",
            &p("leaf.pem"),
            "--tls-key",
            &p("leaf.key"),
            "--domain",
            "mine.test",
            "--no-network",
        ],
    )
    .expect("daemon");
    let (s, v) = d.create(json!({"templateID": "base", "timeout": 60})).await;
    assert_eq!(s, 201, "{v}");
    let id = v["sandboxID"].as_str().unwrap();
    let envd = format!("49983-{id}.mine.test");
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let r = tls_client(&ca, std::slice::from_ref(&envd), d.addr)
        .get(format!("https://{envd}:{}/health", d.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // no ingress CA was made: the user's certificate is the only one
    assert!(!dir.join("data/ingress-ca").exists());
    d.kill_all_sandboxes();
}
