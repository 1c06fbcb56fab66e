//! Volumes (docs/volumes.md) with the real daemon and real namespace sandboxes: the `/volumes`
//! API, `volumeMounts` on create, sharing between sandboxes, ownership, the size quota, bad
//! input, and contents surviving sandbox kills and a daemon restart. Needs root (skipped
//! otherwise; fails with CI=true).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, Opts, connect_envelope, require_root, test_key};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

/// `Authorization` of an RPC run as `user` or `root` (`Basic base64("<name>:")`).
fn as_user(name: &str) -> &'static str {
    match name {
        "root" => "Basic cm9vdDo=",
        _ => "Basic dXNlcjo=",
    }
}

/// Runs `bash -c script` as `user` and returns its combined output (written to a file inside,
/// read back through `GET /files`).
async fn out(d: &Daemon, v: &Value, user: &str, script: &str) -> String {
    let token = v["envdAccessToken"].as_str().unwrap_or_default();
    let script = format!("({script}) > /tmp/.vol-test-out 2>&1");
    let r = d
        .sandbox(reqwest::Method::POST, &sid(v), "/process.Process/Start")
        .header("X-Access-Token", token)
        .header("Authorization", as_user(user))
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .body(connect_envelope(
            &json!({"process": {"cmd": "/bin/bash", "args": ["-c", script]}}),
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
            "/files?path=/tmp/.vol-test-out&username=root",
        )
        .header("X-Access-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}

async fn sandbox_with(d: &Daemon, mounts: Value) -> (u16, Value) {
    d.create(json!({"templateID": "base", "timeout": 120, "volumeMounts": mounts}))
        .await
}

/// Unmounts the volumes of a test data dir (they outlive the daemon by design) before the temp
/// dir is removed; declare it after the daemon so that it drops first.
struct UnmountVolumes(PathBuf);

impl Drop for UnmountVolumes {
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.0.join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = nix::mount::umount2(&e.path().join("disk"), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn volumes_api_mounts_quota_and_bad_input() {
    require_root("volumes_api_mounts_quota_and_bad_input");
    let d = Daemon::start();
    let _unmount = UnmountVolumes(d.data_dir.clone());

    // the API
    let (s, vol) = d.post("/volumes", json!({"name": "shared", "sizeMB": 16})).await;
    assert_eq!(s, 201, "{vol}");
    let vid = vol["volumeID"].as_str().unwrap().to_string();
    assert!(
        !vid.is_empty() && vol["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{vol}"
    );
    assert_eq!(
        (vol["name"].clone(), vol["sizeMB"].clone()),
        (json!("shared"), json!(16))
    );
    let (s, body) = d.post("/volumes", json!({"name": "shared"})).await;
    assert_eq!(s, 409, "duplicate name: {body}");
    for bad in [
        json!({"name": ""}),
        json!({"name": "a/b"}),
        json!({"name": "x", "sizeMB": 1}),
        json!({"name": "x", "sizeMB": 1_i64 << 40}),
        json!({}),
    ] {
        let (s, body) = d.post("/volumes", bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {body}");
    }
    let (s, list) = d.get("/volumes").await;
    assert_eq!(s, 200);
    assert_eq!(list, json!([{"volumeID": vid, "name": "shared", "sizeMB": 16}]));
    for key in [vid.as_str(), "shared"] {
        let (s, got) = d.get(&format!("/volumes/{key}")).await;
        assert_eq!(s, 200);
        assert_eq!(got, vol);
    }
    let (s, body) = d.get("/volumes/nope").await;
    assert_eq!(s, 404);
    assert!(body["message"].as_str().unwrap().contains("not found"), "{body}");
    assert_eq!(d.delete("/volumes/nope").await, 404);

    // bad mounts are refused before anything is made
    for bad in [
        json!([{"name": "shared", "path": "data"}]),
        json!([{"name": "shared", "path": "/"}]),
        json!([{"name": "shared", "path": "/proc"}]),
        json!([{"name": "shared", "path": "/usr/lib"}]),
        json!([{"name": "shared", "path": "/a/../etc"}]),
        json!([{"name": "shared", "path": "/a"}, {"name": "shared", "path": "/a/b"}]),
        json!([{"name": "shared"}]),
    ] {
        let (s, body) = sandbox_with(&d, bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {body}");
    }
    let (s, body) = sandbox_with(&d, json!([{"name": "missing", "path": "/data"}])).await;
    assert_eq!(s, 404, "{body}");
    assert!(body["message"].as_str().unwrap().contains("missing"), "{body}");

    // two sandboxes share it; user and root can write; the owner inside is user
    let (s, a) = sandbox_with(&d, json!([{"name": "shared", "path": "/data"}])).await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = sandbox_with(&d, json!([{"name": "shared", "path": "/home/user/shared"}])).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        out(&d, &a, "user", "echo hi > /data/from-a && stat -c '%U %a' /data").await,
        "user 755\n"
    );
    assert_eq!(
        out(&d, &a, "root", "echo root > /data/from-root && echo ok").await,
        "ok\n"
    );
    assert_eq!(
        out(
            &d,
            &b,
            "user",
            "cat /home/user/shared/from-a /home/user/shared/from-root"
        )
        .await,
        "hi\nroot\n"
    );
    // a set-id file made in the volume stays out of other host users' reach: the volume's
    // host directory is host root's alone (its files are owned by the sandbox range)
    assert_eq!(
        out(
            &d,
            &a,
            "root",
            "cp /usr/bin/id /data/suid && chmod 4755 /data/suid && echo ok"
        )
        .await,
        "ok\n"
    );
    for e in volume_dirs(&d.data_dir) {
        use std::os::unix::fs::PermissionsExt;
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", e.path().display());
    }
    let (_, detail) = d.get(&format!("/sandboxes/{}", sid(&a))).await;
    assert_eq!(
        detail["volumeMounts"],
        json!([{"name": "shared", "path": "/data"}])
    );

    // the quota: writes stop with ENOSPC near 16 MiB, the sandbox's own disk is unaffected
    let full = out(
        &d,
        &a,
        "user",
        "dd if=/dev/zero of=/data/big bs=1M count=64 2>&1; du -m /data/big | cut -f1",
    )
    .await;
    assert!(full.contains("No space left on device"), "{full}");
    let used: u64 = full.lines().last().unwrap().trim().parse().unwrap();
    assert!((8..=16).contains(&used), "{full}");
    assert_eq!(
        out(
            &d,
            &a,
            "user",
            "rm /data/big && echo x > /home/user/f && cat /home/user/f"
        )
        .await,
        "x\n"
    );

    // in use: refused, by id and by name, with the sandboxes named
    let r = d
        .api(reqwest::Method::DELETE, "/volumes/shared")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let msg = r.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains(&sid(&a)) && msg.contains(&sid(&b)), "{msg}");
    assert_eq!(d.delete(&format!("/volumes/{vid}")).await, 409);

    // killing one keeps it in use; killing both frees it
    assert_eq!(d.delete(&format!("/sandboxes/{}", sid(&a))).await, 204);
    assert_eq!(d.delete("/volumes/shared").await, 409);
    assert_eq!(d.delete(&format!("/sandboxes/{}", sid(&b))).await, 204);
    assert_eq!(d.delete("/volumes/shared").await, 204);
    assert_eq!(d.get(&format!("/volumes/{vid}")).await.0, 404);
    assert!(!d.data_dir.join("volumes").join(&vid).exists());
    assert_eq!(d.get("/volumes").await.1, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn volume_contents_survive_sandbox_kill_and_daemon_restart() {
    require_root("volume_contents_survive_sandbox_kill_and_daemon_restart");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let opts = Opts {
        key: Some(test_key()),
        ..Opts::default()
    };
    let mut d = Daemon::start_in(&data, opts.clone()).expect("daemon");
    let _unmount = UnmountVolumes(data.clone());
    let (s, vol) = d.post("/volumes", json!({"name": "keep", "sizeMB": 32})).await;
    assert_eq!(s, 201, "{vol}");
    let (s, a) = sandbox_with(&d, json!([{"name": "keep", "path": "/mnt/keep"}])).await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(
        out(
            &d,
            &a,
            "user",
            "mkdir /mnt/keep/dir && echo one > /mnt/keep/dir/f && echo ok"
        )
        .await,
        "ok\n"
    );
    assert_eq!(d.delete(&format!("/sandboxes/{}", sid(&a))).await, 204);

    // a second sandbox after the kill, left running across the restart
    let (s, b) = sandbox_with(&d, json!([{"name": "keep", "path": "/data"}])).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        out(&d, &b, "user", "cat /data/dir/f; echo two >> /data/dir/f").await,
        "one\n"
    );
    d.terminate();
    drop(d);
    let d = Daemon::start_in(&data, opts).expect("daemon restart");
    assert_eq!(d.get("/volumes/keep").await.1, vol, "the volume row survived");
    // the re-adopted sandbox still has it mounted, and it is still in use
    assert_eq!(out(&d, &b, "user", "cat /data/dir/f").await, "one\ntwo\n");
    assert_eq!(d.delete("/volumes/keep").await, 409);
    let (s, c) = sandbox_with(&d, json!([{"name": "keep", "path": "/data"}])).await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        out(&d, &c, "root", "cat /data/dir/f && stat -c %U /data/dir/f").await,
        "one\ntwo\nuser\n"
    );
    for v in [&b, &c] {
        assert_eq!(d.delete(&format!("/sandboxes/{}", sid(v))).await, 204);
    }
    assert_eq!(d.delete("/volumes/keep").await, 204);
    assert!(!volume_dirs(&data).any(|_| true), "nothing left on the host");
}

fn volume_dirs(data: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(data.join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
}
