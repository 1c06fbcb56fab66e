//! Snapshots and fork with the real daemon and real namespace sandboxes: `POST
//! /sandboxes/{id}/snapshots`, sandboxes from a snapshot id, `GET /snapshots`, `DELETE
//! /templates/{encoded id}`, `POST /sandboxes/{id}/fork`, bad input, and snapshots surviving a
//! daemon restart. Needs root (skipped otherwise; fails with CI=true).

mod common;

use common::{Daemon, connect_envelope, require_root};
use serde_json::{Value, json};

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

/// Runs `bash -c script` in a sandbox and returns the raw Connect stream.
async fn sh(d: &Daemon, v: &Value, script: &str) -> String {
    let r = d
        .sandbox(reqwest::Method::POST, &sid(v), "/process.Process/Start")
        .header(
            "X-Access-Token",
            v["envdAccessToken"].as_str().unwrap_or_default(),
        )
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(connect_envelope(
            &json!({"process": {"cmd": "/bin/bash", "args": ["-c", script]}}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned()
}

/// Output of a script: written to a file inside, read back through `GET /files`.
async fn out(d: &Daemon, v: &Value, script: &str) -> String {
    sh(d, v, &format!("({script}) > /tmp/.snap-test-out 2>&1")).await;
    let r = d
        .sandbox(
            reqwest::Method::GET,
            &sid(v),
            "/files?path=/tmp/.snap-test-out&username=root",
        )
        .header(
            "X-Access-Token",
            v["envdAccessToken"].as_str().unwrap_or_default(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
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

#[tokio::test]
async fn snapshot_fork_and_bad_input() {
    if !require_root("snapshot_fork_and_bad_input") {
        return;
    }
    let d = Daemon::start();
    let (s, src) = d.create(json!({"templateID":"base","timeout":120,"secure":true,"envVars":{"FOO":"bar"},"metadata":{"k":"v"}})).await;
    assert_eq!(s, 201, "{src}");
    let id = sid(&src);
    sh(&d, &src, "echo one > /home/user/a && rm /etc/hostname.x 2>/dev/null; mkdir -p /tmp/d && echo x > /tmp/d/f && rm -f /etc/motd").await;

    // bad input
    assert_eq!(
        post(
            &d,
            &format!("/sandboxes/{id}/snapshots"),
            json!({"name":"Bad Name"})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(&d, &format!("/sandboxes/{id}/snapshots"), json!({"name":"a/b"}))
            .await
            .0,
        400
    );
    assert_eq!(
        post(&d, "/sandboxes/nonexisting/snapshots", json!({})).await.0,
        404
    );
    assert_eq!(
        post(&d, &format!("/sandboxes/{id}/fork"), json!({"count":0}))
            .await
            .0,
        400
    );
    assert_eq!(
        post(&d, &format!("/sandboxes/{id}/fork"), json!({"count":101}))
            .await
            .0,
        400
    );
    assert_eq!(
        post(&d, &format!("/sandboxes/{id}/fork"), json!({"timeout":0}))
            .await
            .0,
        400
    );
    assert_eq!(post(&d, "/sandboxes/nonexisting/fork", json!({})).await.0, 404);
    assert_eq!(d.delete("/templates/base").await, 400, "built-in templates stay");
    assert_eq!(d.delete("/templates/nosuch%3Adefault").await, 404);

    // unnamed and named snapshots
    let (s, un) = post(&d, &format!("/sandboxes/{id}/snapshots"), json!({})).await;
    assert_eq!(s, 201, "{un}");
    let un_id = un["snapshotID"].as_str().unwrap().to_string();
    assert!(un_id.ends_with(":default") && un["names"] == json!([]), "{un}");
    let (s, named) = post(
        &d,
        &format!("/sandboxes/{id}/snapshots"),
        json!({"name":"my-snap"}),
    )
    .await;
    assert_eq!(s, 201, "{named}");
    assert_eq!(named, json!({"snapshotID":"my-snap:default","names":["my-snap"]}));

    // source keeps running and its later writes stay out of the snapshot
    sh(&d, &src, "echo two > /home/user/a").await;
    for tpl in [
        un_id.as_str(),
        "my-snap:default",
        "team/my-snap:default",
        "my-snap",
    ] {
        let (s, v) = d.create(json!({"templateID": tpl, "timeout": 60})).await;
        assert_eq!(s, 201, "{tpl}: {v}");
        assert_eq!(
            out(&d, &v, "cat /home/user/a /tmp/d/f").await,
            "one\nx\n",
            "{tpl}"
        );
        assert_eq!(
            out(&d, &v, "test -e /etc/motd && echo there || echo gone").await,
            "gone\n"
        );
        assert_eq!(d.delete(&format!("/sandboxes/{}", sid(&v))).await, 204);
    }

    // listing
    let (s, all) = d.get("/snapshots").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["snapshotID"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&un_id.as_str()) && ids.contains(&"my-snap:default"),
        "{all}"
    );
    assert_eq!(
        d.get(&format!("/snapshots?sandboxID={id}"))
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        d.get("/snapshots?name=team%2Fmy-snap%3Adefault").await.1,
        json!([named])
    );
    assert_eq!(d.get("/snapshots?name=unknown").await.1, json!([]));
    let r = d
        .api(reqwest::Method::GET, "/snapshots?limit=1")
        .send()
        .await
        .unwrap();
    let tok = r
        .headers()
        .get("x-next-token")
        .expect("next token")
        .to_str()
        .unwrap()
        .to_string();
    let r = d
        .api(
            reqwest::Method::GET,
            &format!("/snapshots?limit=1&nextToken={tok}"),
        )
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-next-token").is_none());
    assert_eq!(d.get("/snapshots?limit=0").await.0, 400);

    // fork: files, independence, settings, source untouched
    let (_, before) = d.get(&format!("/sandboxes/{id}")).await;
    let (s, forks) = post(
        &d,
        &format!("/sandboxes/{id}/fork"),
        json!({"timeout":60,"count":2}),
    )
    .await;
    assert_eq!(s, 201, "{forks}");
    let forks = forks.as_array().unwrap().clone();
    assert_eq!(forks.len(), 2);
    let (f0, f1) = (forks[0]["sandbox"].clone(), forks[1]["sandbox"].clone());
    assert!(f0["envdAccessToken"].is_string() && f0["envdAccessToken"] != src["envdAccessToken"]);
    assert_eq!(out(&d, &f0, "cat /home/user/a; echo $FOO").await, "two\nbar\n");
    sh(&d, &f0, "echo fork > /home/user/a").await;
    assert_eq!(out(&d, &f1, "cat /home/user/a").await, "two\n");
    assert_eq!(out(&d, &src, "cat /home/user/a").await, "two\n");
    let (_, after) = d.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(before["endAt"], after["endAt"]);
    let (_, f0info) = d.get(&format!("/sandboxes/{}", sid(&f0))).await;
    assert_eq!(f0info["metadata"], json!({"k":"v"}));

    // delete with the SDK's encoding: 204 then 404; a sandbox from it keeps working meanwhile
    let (s, user) = d
        .create(json!({"templateID": "my-snap:default", "timeout": 60}))
        .await;
    assert_eq!(s, 201);
    assert_eq!(d.delete("/templates/my-snap%3Adefault").await, 204);
    assert_eq!(d.delete("/templates/my-snap%3Adefault").await, 404);
    assert_eq!(
        d.create(json!({"templateID": "my-snap", "timeout": 60})).await.0,
        404
    );
    assert_eq!(out(&d, &user, "cat /home/user/a").await, "one\n");
    let enc = un_id.replace(':', "%3A");
    assert_eq!(d.delete(&format!("/templates/team%2F{enc}")).await, 204);
    assert_eq!(d.delete(&format!("/templates/{enc}")).await, 404);
    d.kill_all_sandboxes();
}
