//! The real `sandboxd serve` binary: start-up output, API key handling, and bad input on the
//! control plane and on sandbox traffic. None of this needs a sandbox (no root needed).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, Opts, test_key};
use serde_json::{Value, json};

#[tokio::test]
async fn prints_exactly_three_export_lines_and_serves_health() {
    let d = Daemon::start();
    assert_eq!(d.exports.len(), 4);
    assert_eq!(d.exports[0], format!("export E2B_API_URL=http://{}", d.addr));
    assert_eq!(d.exports[1], format!("export E2B_SANDBOX_URL=http://{}", d.addr));
    assert!(d.exports[2].starts_with("export E2B_API_KEY=e2b_"));
    assert_eq!(
        d.exports[3],
        format!("export E2B_VOLUME_API_URL=http://{}", d.addr)
    );
    assert!(d.addr.ip().is_loopback() && d.addr.port() != 0);
    let r = d.client().get(format!("{}/health", d.url)).send().await.unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 204));
}

#[tokio::test]
async fn api_key_is_required_and_compared() {
    let d = Daemon::start();
    for key in [None, Some("e2b_0000"), Some(""), Some("wrong")] {
        let mut req = d.client().get(format!("{}/v2/sandboxes", d.url));
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{key:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], 401);
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let r = d
        .client()
        .post(format!("{}/sandboxes", d.url))
        .json(&json!({"templateID":"base"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The Python client spells the header X-API-KEY: header names are case-insensitive.
    let r = d
        .client()
        .get(format!("{}/v2/sandboxes", d.url))
        .header("X-API-KEY", &d.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
}

#[tokio::test]
async fn malformed_bodies_give_400_with_code_and_message() {
    let d = Daemon::start();
    let cases: [(&str, &str); 7] = [
        ("/sandboxes", "{"),
        ("/sandboxes", "[]"),
        ("/sandboxes", r#"{"templateID": 7}"#),
        ("/sandboxes", r#"{"templateID":"base","timeout":"soon"}"#),
        ("/sandboxes", r#"{"templateID":"base","metadata":{"k":1}}"#),
        ("/sandboxes", r#"{"templateID":"base","envVars":["A"]}"#),
        ("/sandboxes", ""),
    ];
    for (path, body) in cases {
        let r = d
            .api(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], 400, "{body}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    for (body, msg) in [
        (
            json!({"templateID":"base","timeout":0}),
            "Timeout must be greater than 0",
        ),
        (
            json!({"templateID":"base","timeout":-5}),
            "Timeout must be greater than 0",
        ),
    ] {
        let (s, v) = d.create(body).await;
        assert_eq!((s, v["message"].as_str()), (400, Some(msg)));
    }
    let (s, v) = d.create(json!({"templateID":"base","timeout":10_000_000})).await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(400)));
    let (s, v) = d.create(json!({"templateID":"base","cpuCount":100_000})).await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("cpuCount"), "{v}");
    let (s, v) = d.create(json!({"templateID":"base","memoryMB":1})).await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(400)));
    let (s, v) = d
        .create(json!({"templateID":"no-such-template","timeout":30}))
        .await;
    assert_eq!((s, v["code"].as_i64()), (404, Some(404)));
    let (s, _) = d.create(json!({"templateID":"Not A Template"})).await;
    assert_eq!(s, 400);
    // A body over the limit is refused without reading it all: a 413 JSON answer, or (when the
    // client is still writing as the daemon closes) a broken write. The daemon stays healthy.
    let big = format!(
        r#"{{"templateID":"base","metadata":{{"a":"{}"}}}}"#,
        "x".repeat(3 << 19)
    );
    match d.api(reqwest::Method::POST, "/sandboxes").body(big).send().await {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            assert_eq!(r.json::<Value>().await.unwrap()["code"], 413);
        }
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let (s, _) = d.get("/v2/sandboxes").await;
    assert_eq!(s, 200);
    let r = d
        .api(reqwest::Method::POST, "/sandboxes/abc/timeout")
        .body(r#"{"timeout":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn ids_in_paths_and_unknown_sandboxes() {
    let d = Daemon::start();
    for bad in ["Bad", "a_b", "a.b", "%20", "-x"] {
        let (s, v) = d.get(&format!("/sandboxes/{bad}")).await;
        assert_eq!(
            (s, v["message"].as_str()),
            (400, Some("Invalid sandbox ID")),
            "{bad}"
        );
        assert_eq!(d.delete(&format!("/sandboxes/{bad}")).await, 400, "{bad}");
    }
    let msg = "Sandbox \"nonexistingsandbox\" doesn't exist or you don't have access to it";
    let (s, v) = d.get("/sandboxes/nonexistingsandbox").await;
    assert_eq!((s, v["message"].as_str()), (404, Some(msg)));
    assert_eq!(v["code"], 404);
    // The `-<clientID>` suffix is stripped before the lookup.
    let (s, v) = d.get("/sandboxes/nonexistingsandbox-6532622b").await;
    assert_eq!((s, v["message"].as_str()), (404, Some(msg)));
    assert_eq!(d.delete("/sandboxes/nonexistingsandbox").await, 404);
    for op in ["timeout", "connect"] {
        let r = d
            .api(
                reqwest::Method::POST,
                &format!("/sandboxes/nonexistingsandbox/{op}"),
            )
            .json(&json!({"timeout": 30}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{op}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], 404);
    }
    let (s, v) = d.get("/templates/aliases/base").await;
    assert_eq!((s, v["templateID"].as_str()), (200, Some("base")));
    let (s, v) = d.get("/templates/aliases/nope").await;
    assert_eq!((s, v["code"].as_i64()), (404, Some(404)));
    let (s, v) = d.get("/v2/sandboxes?limit=0").await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(400)));
    let (s, v) = d.get("/v2/sandboxes?metadata=novalue").await;
    assert_eq!((s, v["code"].as_i64()), (400, Some(400)));
    let (s, v) = d.get("/v2/sandboxes?template=unknown").await;
    assert_eq!((s, v), (200, json!([])));
}

#[tokio::test]
async fn sandbox_traffic_to_unknown_sandboxes_is_502_json() {
    let d = Daemon::start();
    for (id, port) in [
        ("nosuchsandbox", None),
        ("nosuchsandbox", Some("49999")),
        ("Bad-Id", Some("8000")),
    ] {
        let mut req = d.sandbox(reqwest::Method::GET, id, "/health");
        if let Some(p) = port {
            req = req.header("E2b-Sandbox-Port", p);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["content-type"], "application/json; charset=utf-8");
        assert_eq!(
            r.text().await.unwrap(),
            format!(
                r#"{{"sandboxId":"{id}","message":"The sandbox was not found","code":502,"error_code":"not_found"}}"#
            )
        );
    }
    let r = d
        .client()
        .get(format!("{}/", d.url))
        .header("Host", format!("8000-nosuchsandbox.localhost:{}", d.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    // A signed /files URL that no sandbox signed.
    let r = d
        .client()
        .get(format!("{}/files?path=a&signature=v1_abc", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 401);
}

#[tokio::test]
async fn generated_key_is_reused_and_data_dir_is_exclusive() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut first = Daemon::start_in(&data, Opts::default()).unwrap();
    let key = first.key.clone();
    assert!(key.starts_with("e2b_") && key.len() == 44, "{key}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("api-key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // A second daemon on the same data dir is refused with a clear error.
    let err = Daemon::start_in(&data, Opts::default())
        .err()
        .expect("second daemon started");
    assert!(err.contains("in use"), "{err}");
    let status = first.terminate().unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}\n{}", first.logs());
    let second = Daemon::start_in(&data, Opts::default()).unwrap();
    assert_eq!(second.key, key);
    // SANDBOXD_API_KEY wins over the stored key.
    drop(second);
    let k = test_key();
    let third = Daemon::start_in(
        &data,
        Opts {
            key: Some(k.clone()),
            ..Opts::default()
        },
    )
    .unwrap();
    assert_eq!(third.key, k);
    let r = third
        .client()
        .get(format!("{}/v2/sandboxes", third.url))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
