//! The v2 control-plane routes of the newest SDKs (e2b ≥ 2.51: `POST /v2/sandboxes`,
//! `POST /v2/sandboxes/{id}/connect`) with the exact bodies they send
//! (`docs/contract.md` §2), against the real binary. The sandbox tests need root
//! (skipped otherwise; they fail with CI=true).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, require_root};
use serde_json::{Value, json};
use std::time::Duration;

async fn post_raw(d: &Daemon, path: &str, body: &str) -> (u16, Value) {
    let r = d
        .api(reqwest::Method::POST, path)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

fn secs_between(a: &Value, b: &Value) -> i64 {
    let a = chrono::DateTime::parse_from_rfc3339(a.as_str().unwrap()).unwrap();
    let b = chrono::DateTime::parse_from_rfc3339(b.as_str().unwrap()).unwrap();
    (b - a).num_seconds()
}

/// Starts `sleep 1000` in the sandbox (the stream is dropped; the process lives on).
async fn start_sleep(d: &Daemon, id: &str, token: &str) {
    let env = common::connect_envelope(&json!({"process": {"cmd": "sleep", "args": ["1000"]}}));
    let mut r = d
        .sandbox(reqwest::Method::POST, id, "/process.Process/Start")
        .header("X-Access-Token", token)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(env)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = tokio::time::timeout(Duration::from_secs(10), r.chunk()).await;
}

/// Whether `sleep 1000` runs in the sandbox (`Process.List`).
async fn sleep_runs(d: &Daemon, id: &str, token: &str) -> bool {
    d.process_list(id, token).await.contains("1000")
}

async fn write_file(d: &Daemon, id: &str, token: &str, path: &str, body: &str) {
    let r = d
        .sandbox(
            reqwest::Method::POST,
            id,
            &format!("/files?path={path}&username=user"),
        )
        .header("X-Access-Token", token)
        .header("Content-Type", "application/octet-stream")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn read_file(d: &Daemon, id: &str, token: &str, path: &str) -> String {
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
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn v2_bad_bodies_and_unknown_sandboxes() {
    let d = Daemon::start();
    for body in [
        r#"{"timeout": 5}"#,
        r#"{"templateID": 5}"#,
        r#"{"templateID":"base","timeout":0}"#,
        r#"{"templateID":"base","metadata":{"a":1}}"#,
        "",
        "{",
    ] {
        let (s, v) = post_raw(&d, "/v2/sandboxes", body).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(
            v["code"] == 400 && v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let (s, v) = post_raw(&d, "/v2/sandboxes", r#"{"templateID":"nosuchtemplate"}"#).await;
    assert_eq!(s, 404, "{v}");
    // connect: the body is optional, but what is sent must be well formed
    for body in [r#"{"memory":"no"}"#, r#"{"timeout":"x"}"#, "[]", "{"] {
        let (s, v) = post_raw(&d, "/v2/sandboxes/iunknown/connect", body).await;
        assert_eq!(s, 400, "{body}: {v}");
    }
    for body in ["", "{}", r#"{"memory":false}"#] {
        let (s, v) = post_raw(&d, "/v2/sandboxes/iunknown/connect", body).await;
        assert_eq!(s, 404, "{body}: {v}");
        assert_eq!(
            v["message"],
            "Sandbox \"iunknown\" doesn't exist or you don't have access to it"
        );
    }
    let (s, _) = post_raw(&d, "/v2/sandboxes/BAD!/connect", "{}").await;
    assert_eq!(s, 400);
    // v1 connect keeps its required timeout, and accepts `memory`
    let (s, v) = post_raw(&d, "/sandboxes/iunknown/connect", "{}").await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = post_raw(
        &d,
        "/sandboxes/iunknown/connect",
        r#"{"timeout":10,"memory":false}"#,
    )
    .await;
    assert_eq!(s, 404);
}

/// Create with the bodies of py 2.63 and js 2.51, connect with `{}` and no body, and
/// `{"memory": false}` on a running sandbox (only extends) and on a memory-paused one (a fresh
/// boot on the same files: processes gone, files kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn v2_create_and_connect_with_the_newest_sdk_bodies() {
    require_root("v2_create_and_connect_with_the_newest_sdk_bodies");
    let d = Daemon::start();
    // js 2.51 create(): no timeout, no secure, no metadata
    let (s, a) = post_raw(&d, "/v2/sandboxes", r#"{"templateID":"base"}"#).await;
    assert_eq!(s, 201, "{a}");
    let id = sid(&a);
    let token = a["envdAccessToken"]
        .as_str()
        .expect("v2 sandboxes are secured")
        .to_string();
    assert_eq!(a["templateID"], "base");
    let (s, info) = d.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(s, 200);
    let ttl = secs_between(&info["startedAt"], &info["endAt"]);
    assert!(
        (299..=300).contains(&ttl),
        "default v2 timeout is 300 s, got {ttl}: {info}"
    );
    assert_eq!(info["allowInternetAccess"], true);
    // py 2.63 create() and create(timeout=120, metadata, envs)
    let (s, b) = post_raw(
        &d,
        "/v2/sandboxes",
        r#"{"templateID":"base","metadata":{},"envVars":{}}"#,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert!(b["envdAccessToken"].is_string());
    let (s, c) = post_raw(
        &d,
        "/v2/sandboxes",
        r#"{"templateID":"base","timeout":120,"metadata":{"a":"b"},"envVars":{"X":"1"}}"#,
    )
    .await;
    assert_eq!(s, 201, "{c}");
    let (_, cinfo) = d.get(&format!("/sandboxes/{}", sid(&c))).await;
    assert!((119..=120).contains(&secs_between(&cinfo["startedAt"], &cinfo["endAt"])));
    assert_eq!(cinfo["metadata"], json!({"a":"b"}));
    for x in [&b, &c] {
        assert_eq!(d.delete(&format!("/sandboxes/{}", sid(x))).await, 204);
    }

    // connect {} and without a body: 200, same token, endAt not shortened
    let connect = format!("/v2/sandboxes/{id}/connect");
    for body in ["{}", ""] {
        let (s, v) = post_raw(&d, &connect, body).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["envdAccessToken"], token.as_str());
        assert_eq!(sid(&v), id);
    }
    let (_, after) = d.get(&format!("/sandboxes/{id}")).await;
    assert!(secs_between(&info["endAt"], &after["endAt"]) >= 0);

    // memory:false on a running sandbox only extends it: the processes stay
    start_sleep(&d, &id, &token).await;
    write_file(&d, &id, &token, "/home/user/kept.txt", "kept").await;
    assert!(sleep_runs(&d, &id, &token).await);
    let (s, v) = post_raw(&d, &connect, r#"{"timeout":600,"memory":false}"#).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        sleep_runs(&d, &id, &token).await,
        "memory:false rebooted a running sandbox"
    );
    let (_, extended) = d.get(&format!("/sandboxes/{id}")).await;
    assert!(
        secs_between(&after["endAt"], &extended["endAt"]) > 200,
        "{extended}"
    );

    // memory pause, then connect {}: memory restored (the process survives)
    let (s, v) = post_raw(&d, &format!("/sandboxes/{id}/pause"), "{}").await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = post_raw(&d, &connect, "{}").await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["envdAccessToken"], token.as_str());
    assert!(
        sleep_runs(&d, &id, &token).await,
        "connect {{}} did not restore memory"
    );

    // memory pause, then connect {"memory": false}: a fresh boot on the same files
    let (s, _) = post_raw(&d, &format!("/sandboxes/{id}/pause"), r#"{"memory":true}"#).await;
    assert_eq!(s, 204);
    let (s, v) = post_raw(&d, &connect, r#"{"memory":false}"#).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["envdAccessToken"], token.as_str());
    assert!(!sleep_runs(&d, &id, &token).await, "memory:false restored memory");
    assert_eq!(read_file(&d, &id, &token, "/home/user/kept.txt").await, "kept");
    let (_, resumed) = d.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(resumed["state"], "running");
    let ttl = secs_between(&resumed["startedAt"], &resumed["endAt"]);
    assert!(ttl >= 299, "resume timeout defaults to 300 s: {resumed}");

    // v1 resume accepts `memory` too
    start_sleep(&d, &id, &token).await;
    assert!(sleep_runs(&d, &id, &token).await);
    let (s, _) = post_raw(&d, &format!("/sandboxes/{id}/pause"), "{}").await;
    assert_eq!(s, 204);
    let (s, v) = post_raw(
        &d,
        &format!("/sandboxes/{id}/resume"),
        r#"{"timeout":60,"memory":false}"#,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(
        !sleep_runs(&d, &id, &token).await,
        "v1 resume memory:false restored memory"
    );
    assert_eq!(read_file(&d, &id, &token, "/home/user/kept.txt").await, "kept");
    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
}

async fn create_with_key(d: &Daemon, key: &str, body: &Value) -> (u16, Value, bool) {
    let r = d
        .api(reqwest::Method::POST, "/v2/sandboxes")
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (s, r.json().await.unwrap_or(Value::Null), replayed)
}

#[tokio::test]
async fn bad_idempotency_keys_are_400() {
    let d = Daemon::start();
    for key in ["UPPER", "a_b", "with space", &"a".repeat(256), ""] {
        let (s, v, _) = create_with_key(&d, key, &json!({"templateID": "base"})).await;
        assert_eq!(s, 400, "{key:?}: {v}");
        assert!(v["message"].as_str().unwrap().contains("Idempotency-Key"), "{v}");
    }
}

/// Same key and body → the same sandbox (also under concurrent retries and after a restart);
/// another body → 422; a failed create frees the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn idempotent_create_never_creates_twice() {
    require_root("idempotent_create_never_creates_twice");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = common::test_key();
    let opts = common::Opts {
        key: Some(key.clone()),
        ..Default::default()
    };
    let mut d = Daemon::start_in(&data, opts.clone()).unwrap();
    let body = json!({"templateID":"base","metadata":{"test":"idem"},"envVars":{}});

    // concurrent retries of one create: one sandbox
    let k1 = "0b6f6c1e-4c7a-4d5e-9d3e-5f1c2a3b4c5d";
    let tries = futures::future::join_all((0..4).map(|_| create_with_key(&d, k1, &body))).await;
    let mut ids = std::collections::BTreeSet::new();
    for (s, v, _) in &tries {
        match s {
            201 => {
                ids.insert(sid(v));
            }
            409 => assert_eq!(v["error_code"], "idempotency_in_progress", "{v}"),
            _ => panic!("unexpected answer {s}: {v}"),
        }
    }
    assert_eq!(ids.len(), 1, "{tries:?}");
    let id = ids.into_iter().next().unwrap();
    // the retry after completion replays the same answer
    let (s, v, replayed) = create_with_key(&d, k1, &body).await;
    assert_eq!((s, sid(&v), replayed), (201, id.clone(), true), "{v}");
    assert!(v["envdAccessToken"].is_string());
    // key order and whitespace do not matter
    let (s, v, _) = create_with_key(
        &d,
        k1,
        &serde_json::from_str(r#"{"envVars":{}, "metadata":{"test":"idem"}, "templateID":"base"}"#).unwrap(),
    )
    .await;
    assert_eq!((s, sid(&v)), (201, id.clone()));
    let (s, listed) = d.get("/v2/sandboxes?metadata=test%3Didem").await;
    assert_eq!(s, 200);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // another body with the same key
    let (s, v, _) = create_with_key(&d, k1, &json!({"templateID":"base","timeout":60})).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error_code"], "idempotency_request_mismatch");
    assert!(v["message"].as_str().unwrap().contains(k1));

    // a failed create frees its key
    let k2 = "retry-after-failure";
    let (s, _, _) = create_with_key(&d, k2, &json!({"templateID":"nosuchtemplate"})).await;
    assert_eq!(s, 404);
    let (s, v, replayed) = create_with_key(&d, k2, &json!({"templateID":"base"})).await;
    assert_eq!((s, replayed), (201, false), "{v}");
    assert_eq!(d.delete(&format!("/sandboxes/{}", sid(&v))).await, 204);

    // keys are durable: after a restart the same key still answers the same sandbox
    let status = d.terminate().unwrap();
    assert!(status.success(), "{}", d.logs());
    let d = Daemon::start_in(&data, opts).unwrap();
    let (s, v, replayed) = create_with_key(&d, k1, &body).await;
    assert_eq!((s, sid(&v), replayed), (201, id.clone(), true), "{v}");
    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
}

/// Network fields of the newest SDKs are validated and stored, secrets never come back;
/// `pauseMode` and `envdUnresponsiveAtPause` describe a paused sandbox; snapshot `memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn newest_sdk_fields_network_pause_mode_and_snapshot_memory() {
    require_root("newest_sdk_fields_network_pause_mode_and_snapshot_memory");
    let d = Daemon::start();
    let network = json!({
        "allowPublicTraffic": null,
        "allowOut": ["example.com", "203.0.113.0/24"],
        "dnsServers": ["198.51.100.53"],
        "httpsPorts": [8443],
        "egressProxy": {"address": "127.0.0.1:1080", "username": "u", "password": "secret-pw",
            "tls": {"enabled": true, "serverName": "proxy.local",
                    "caCert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}},
        "newerField": true
    });
    // bad values are refused with the field named
    for (net, field) in [
        (json!({"dnsServers": ["8.8.8"]}), "dnsServers"),
        (json!({"httpsPorts": [49983]}), "httpsPorts"),
        (json!({"allowOut": ["203.0.113.0/40"]}), "allowOut"),
        (json!({"egressProxy": {"address": "nohost"}}), "egressProxy"),
    ] {
        let (s, v) = post_raw(
            &d,
            "/v2/sandboxes",
            &json!({"templateID":"base","network":net}).to_string(),
        )
        .await;
        assert_eq!(s, 400, "{net}: {v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{v}");
    }
    let (s, a) = post_raw(
        &d,
        "/v2/sandboxes",
        &json!({"templateID":"base","network":network}).to_string(),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = sid(&a);
    assert!(
        a["trafficAccessToken"].is_null(),
        "allowPublicTraffic null is the default"
    );
    let (_, info) = d.get(&format!("/sandboxes/{id}")).await;
    let net = &info["network"];
    assert_eq!(net["dnsServers"], json!(["198.51.100.53"]));
    assert_eq!(net["httpsPorts"], json!([8443]));
    assert_eq!(net["egressProxy"]["username"], "u");
    assert_eq!(net["egressProxy"]["tls"]["serverName"], "proxy.local");
    let text = info.to_string();
    assert!(
        !text.contains("secret-pw") && !text.contains("BEGIN CERTIFICATE"),
        "{info}"
    );
    assert!(info.get("pauseMode").is_none() && info.get("envdUnresponsiveAtPause").is_none());

    // PUT: dnsServers replaced, bad ones refused, httpsPorts kept (ingress)
    let put = |body: Value| {
        d.api(reqwest::Method::PUT, &format!("/sandboxes/{id}/network"))
            .json(&body)
            .send()
    };
    let r =
        put(json!({"dnsServers": ["198.51.100.53"], "egressProxy": {"address": "h:1", "password": "pw2"}}))
            .await
            .unwrap();
    assert_eq!(r.status(), 204);
    let r = put(json!({"dnsServers": ["one.one.one.one"]})).await.unwrap();
    assert_eq!(r.status(), 400);
    let (_, info) = d.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(info["network"]["dnsServers"], json!(["198.51.100.53"]));
    assert_eq!(info["network"]["httpsPorts"], json!([8443]));
    assert!(info["network"].get("allowOut").is_none());
    assert!(!info.to_string().contains("pw2"), "{info}");

    // snapshots: filesystem only; an explicit memory snapshot is refused, permanently
    let (s, v) = post_raw(&d, &format!("/sandboxes/{id}/snapshots"), r#"{"memory":true}"#).await;
    assert_eq!(s, 501, "{v}");
    assert!(v["message"].as_str().unwrap().contains("filesystem"), "{v}");
    let (s, snap) = post_raw(
        &d,
        &format!("/sandboxes/{id}/snapshots"),
        r#"{"memory":false,"newerField":1}"#,
    )
    .await;
    assert_eq!(s, 201, "{snap}");
    let snap_id = snap["snapshotID"].as_str().unwrap().to_string();

    // pauseMode while paused; envdUnresponsiveAtPause in details and list items
    for (body, mode) in [(r#"{"memory":false}"#, "filesystem"), ("{}", "full")] {
        let (s, _) = post_raw(&d, &format!("/sandboxes/{id}/pause"), body).await;
        assert_eq!(s, 204);
        let (_, info) = d.get(&format!("/sandboxes/{id}")).await;
        assert_eq!(info["pauseMode"], mode, "{info}");
        assert_eq!(info["envdUnresponsiveAtPause"], false);
        let (_, list) = d.get("/v2/sandboxes?state=paused").await;
        let item = list
            .as_array()
            .unwrap()
            .iter()
            .find(|x| sid(x) == id)
            .unwrap()
            .clone();
        assert_eq!(item["envdUnresponsiveAtPause"], false, "{item}");
        let (s, _) = post_raw(&d, &format!("/v2/sandboxes/{id}/connect"), "{}").await;
        assert_eq!(s, 201);
        let (_, info) = d.get(&format!("/sandboxes/{id}")).await;
        assert!(info.get("pauseMode").is_none(), "{info}");
    }
    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
    let enc = common::urlencode(&snap_id);
    assert_eq!(d.delete(&format!("/templates/{enc}")).await, 204);
}
