//! Snapshots and fork with the real daemon and real namespace sandboxes: `POST
//! /sandboxes/{id}/snapshots`, sandboxes from a snapshot id, `GET /snapshots`, `DELETE
//! /templates/{encoded id}`, `POST /sandboxes/{id}/fork`, bad input, and snapshots surviving a
//! daemon restart. Needs root (skipped otherwise; fails with CI=true).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

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

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn snapshot_fork_and_bad_input() {
    require_root("snapshot_fork_and_bad_input");
    let d = Daemon::start();
    let (s, src) = d.create(json!({"templateID":"base","timeout":120,"secure":true,"envVars":{"FOO":"bar"},"metadata":{"k":"v"}})).await;
    assert_eq!(s, 201, "{src}");
    let id = sid(&src);
    sh(&d, &src, "echo one > /home/user/a && rm /etc/hostname.x 2>/dev/null; mkdir -p /tmp/d && echo x > /tmp/d/f && rm -f /etc/motd").await;

    // bad input
    assert_eq!(
        d.post(&format!("/sandboxes/{id}/snapshots"), json!({"name":"Bad Name"}))
            .await
            .0,
        400
    );
    assert_eq!(
        d.post(&format!("/sandboxes/{id}/snapshots"), json!({"name":"a/b"}))
            .await
            .0,
        400
    );
    assert_eq!(d.post("/sandboxes/nonexisting/snapshots", json!({})).await.0, 404);
    assert_eq!(
        d.post(&format!("/sandboxes/{id}/fork"), json!({"count":0}))
            .await
            .0,
        400
    );
    assert_eq!(
        d.post(&format!("/sandboxes/{id}/fork"), json!({"count":101}))
            .await
            .0,
        400
    );
    assert_eq!(
        d.post(&format!("/sandboxes/{id}/fork"), json!({"timeout":0}))
            .await
            .0,
        400
    );
    assert_eq!(d.post("/sandboxes/nonexisting/fork", json!({})).await.0, 404);
    assert_eq!(d.delete("/templates/base").await, 400, "built-in templates stay");
    assert_eq!(d.delete("/templates/nosuch%3Adefault").await, 404);

    // unnamed and named snapshots
    let (s, un) = d.post(&format!("/sandboxes/{id}/snapshots"), json!({})).await;
    assert_eq!(s, 201, "{un}");
    let un_id = un["snapshotID"].as_str().unwrap().to_string();
    assert!(un_id.ends_with(":default") && un["names"] == json!([]), "{un}");
    let (s, named) = d
        .post(&format!("/sandboxes/{id}/snapshots"), json!({"name":"my-snap"}))
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
    // a repeated parameter counts once, by its first value (as in sandbox listing)
    assert_eq!(d.get("/snapshots?limit=0&limit=5").await.0, 400);
    assert_eq!(d.get("/snapshots?limit=5&limit=0").await.0, 200);

    // fork: files, independence, settings, source untouched
    let (_, before) = d.get(&format!("/sandboxes/{id}")).await;
    let (s, forks) = d
        .post(&format!("/sandboxes/{id}/fork"), json!({"timeout":60,"count":2}))
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

/// Output of `script` run as `user` ("root" or "user").
async fn out_as(d: &Daemon, v: &Value, user: &str, script: &str) -> String {
    let auth = if user == "root" { "cm9vdDo=" } else { "dXNlcjo=" };
    let wrapped = format!("({script}) > /tmp/.snap-test-out-{user} 2>&1");
    let r = d
        .sandbox(reqwest::Method::POST, &sid(v), "/process.Process/Start")
        .header(
            "X-Access-Token",
            v["envdAccessToken"].as_str().unwrap_or_default(),
        )
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .header("Authorization", format!("Basic {auth}"))
        .body(connect_envelope(
            &json!({"process": {"cmd": "/bin/bash", "args": ["-c", wrapped]}}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().await.unwrap();
    let r = d
        .sandbox(
            reqwest::Method::GET,
            &sid(v),
            &format!("/files?path=/tmp/.snap-test-out-{user}&username=root"),
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

/// Runs `path arg` as host user nobody, without any capability (setpriv keeps its own until
/// exec, so a shell in between does the exec of `path`).
fn as_host_nobody(path: &std::path::Path, arg: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/sh",
            "-c",
        ])
        .arg("exec \"$0\" \"$1\"")
        .arg(path)
        .arg(arg)
        .output()
        .unwrap()
}

/// Every entry under `dir` (not following symlinks).
fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, std::fs::Metadata)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        if md.is_dir() {
            walk(&e.path(), out);
        }
        out.push((e.path(), md));
    }
}

/// Set-id files and file capabilities made by root inside a sandbox are kept in a snapshot
/// (inside a sandbox made from it: setuid root, capabilities effective, sudo works) but never
/// become host-root set-id files or host capabilities, and the store is closed to host users;
/// a 15 TiB sparse file is copied as sparse, quickly; a snapshot over the limit is refused
/// with 507, no host path in the message and nothing left behind.
#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn snapshots_are_safe_on_the_host_sparse_and_bounded() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_root("snapshots_are_safe_on_the_host_sparse_and_bounded");
    let d = Daemon::start_with_args(&["--max-snapshot-mb", "16"]);
    let (s, src) = d.create(json!({"templateID":"base","timeout":120})).await;
    assert_eq!(s, 201, "{src}");
    let id = sid(&src);
    let made = out_as(
        &d,
        &src,
        "root",
        "cp /usr/bin/id /tmp/suid && chmod 4755 /tmp/suid && cp /usr/bin/cat /tmp/capcat && \
         setcap cap_setuid,cap_dac_read_search+ep /tmp/capcat && truncate -s 15T /home/user/sparse && \
         echo end >> /home/user/sparse && echo ok",
    )
    .await;
    assert_eq!(made, "ok\n");
    // the attack works inside the source: a plain user gets euid 0 and reads /etc/shadow
    assert_eq!(out_as(&d, &src, "user", "/tmp/suid -u").await, "0\n");
    assert!(
        out_as(&d, &src, "user", "/tmp/capcat /etc/shadow")
            .await
            .contains("root:")
    );

    let t0 = std::time::Instant::now();
    let (s, snap) = d.post(&format!("/sandboxes/{id}/snapshots"), json!({})).await;
    assert_eq!(s, 201, "{snap}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    let snap_id = snap["snapshotID"].as_str().unwrap().to_string();
    let tpl = d
        .data_dir
        .join("templates")
        .join(snap_id.trim_end_matches(":default"));

    // on the host: nothing root-owned with set-id bits, no capability for host processes
    let mut all = Vec::new();
    walk(&d.data_dir.join("templates"), &mut all);
    for (p, md) in &all {
        assert!(
            !(md.is_file() && md.uid() == 0 && md.mode() & 0o6000 != 0),
            "host-root set-id file {}",
            p.display()
        );
    }
    assert_eq!(
        std::fs::metadata(&tpl).unwrap().mode() & 0o777,
        0o700,
        "store closed"
    );
    let host_suid = tpl.join("root/0/tmp/suid");
    let md = std::fs::metadata(&host_suid).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (100000, 0o4755));
    let host_cap = tpl.join("root/0/tmp/capcat");
    let getcap = std::process::Command::new("getcap")
        .arg(&host_cap)
        .output()
        .unwrap();
    let caps = String::from_utf8_lossy(&getcap.stdout).to_string();
    assert!(caps.contains("cap_dac_read_search,cap_setuid=ep"), "{caps}");
    // v3 (24 bytes) with the root id of the sandbox's root (100000), never v2 or root id 0
    let raw = std::process::Command::new("getfattr")
        .args(["-e", "hex", "-n", "security.capability"])
        .arg(&host_cap)
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout).to_string();
    let hex = raw
        .split("security.capability=0x")
        .nth(1)
        .unwrap_or_default()
        .trim();
    assert!(
        hex.len() == 48 && hex.ends_with("a0860100"),
        "only for the sandbox's root: {raw}"
    );
    // a host user cannot reach them at all ...
    let r = as_host_nobody(&host_suid, "-u");
    assert!(!r.status.success(), "a host user ran a snapshot's file: {r:?}");
    // ... and copies made where they can (owner, mode and xattrs kept) give them nothing
    let open = tempfile::Builder::new()
        .prefix("snap-exposed-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in [&host_suid, &host_cap] {
        let st = std::process::Command::new("cp")
            .arg("--preserve=mode,ownership,xattr")
            .arg(f)
            .arg(open.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let r = as_host_nobody(&open.path().join("suid"), "-u");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "100000\n", "{r:?}");
    let r = as_host_nobody(&open.path().join("capcat"), "/etc/shadow");
    assert!(!r.status.success(), "host /etc/shadow read: {r:?}");
    // nor the source's own copy in its upper dir (setuid for the sandbox range's root)
    let upper_suid = d.data_dir.join("sandboxes").join(&id).join("upper/root/tmp/suid");
    assert_eq!(std::fs::metadata(&upper_suid).unwrap().uid(), 100000);
    let r = as_host_nobody(&upper_suid, "-u");
    assert!(
        !r.status.success(),
        "a host user ran the sandbox's setuid file: {r:?}"
    );
    // the sparse file stays sparse on the host
    let sparse = std::fs::metadata(tpl.join("root/0/home/user/sparse")).unwrap();
    assert_eq!(sparse.len(), (15u64 << 40) + 4);
    assert!(
        sparse.blocks() * 512 <= 1 << 20,
        "allocated {} bytes",
        sparse.blocks() * 512
    );

    // inside a sandbox from the snapshot everything looks as it did
    let (s, v) = d.create(json!({"templateID": snap_id, "timeout": 60})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        out_as(&d, &v, "user", "stat -c '%u %a' /tmp/suid; /tmp/suid -u").await,
        "0 4755\n0\n"
    );
    assert!(
        out_as(&d, &v, "user", "/tmp/capcat /etc/shadow")
            .await
            .contains("root:")
    );
    assert_eq!(out_as(&d, &v, "user", "sudo -n id -u").await, "0\n");
    assert_eq!(
        out_as(
            &d,
            &v,
            "user",
            "stat -c %s /home/user/sparse; tail -c 4 /home/user/sparse"
        )
        .await,
        format!("{}\nend\n", (15u64 << 40) + 4)
    );

    // over the limit (16 MiB): 507, a clear message without host paths, nothing left
    assert_eq!(
        out_as(
            &d,
            &src,
            "root",
            "head -c 40M /dev/zero > /home/user/big && echo ok"
        )
        .await,
        "ok\n"
    );
    let before: Vec<_> = std::fs::read_dir(d.data_dir.join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let (s, e) = d.post(&format!("/sandboxes/{id}/snapshots"), json!({})).await;
    assert_eq!(s, 507, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("limit of 16 MiB"), "{msg}");
    assert!(
        !msg.contains(&*d.data_dir.to_string_lossy()),
        "host path in {msg}"
    );
    let after: Vec<_> = std::fs::read_dir(d.data_dir.join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "nothing left behind");
    assert_eq!(
        out_as(&d, &src, "user", "echo alive").await,
        "alive\n",
        "source thawed"
    );
    d.kill_all_sandboxes();
}
