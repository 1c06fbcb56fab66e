//! Resource limits with the real daemon and real namespace sandboxes (`docs/limits.md`): the
//! disk quota (a filler stops with ENOSPC at `diskSizeMB`, the host keeps its space, a `/files`
//! upload over the quota answers 507, `df` inside shows the quota, the pool's default size,
//! `diskSizeMB: 0`, bad sizes, a filesystem-only pause/resume and a daemon restart keep the
//! quota, destroy leaves no loop device, mount or image), `nproc` = `cpuCount` and
//! `free -m` = `memoryMB`, one memory limit over agent and workload (`/dev/shm` uploads).
//! Needs root (skipped otherwise; fails with CI=true).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, Opts, connect_envelope, require_root, test_key, wait_until};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn sid(v: &Value) -> String {
    v["sandboxID"].as_str().expect("sandboxID").to_string()
}

fn token(v: &Value) -> String {
    v["envdAccessToken"].as_str().unwrap_or_default().to_string()
}

/// Runs `bash -c script` as root and returns its output (stdout and stderr), written to a file
/// on the sandbox's `/dev/shm` (a tmpfs, so it works while the disk is full) and read back
/// through `/files`.
async fn out(d: &Daemon, v: &Value, script: &str) -> String {
    out_at(d, v, "/dev/shm/.limits-out", script).await
}

/// [`out`] with the output written to `file`.
async fn out_at(d: &Daemon, v: &Value, file: &str, script: &str) -> String {
    let wrapped = format!("({script}) > {file} 2>&1");
    let r = d
        .sandbox(reqwest::Method::POST, &sid(v), "/process.Process/Start")
        .header("X-Access-Token", token(v))
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .header("Authorization", "Basic cm9vdDo=") // root:
        .body(connect_envelope(&json!({
            "process": {"cmd": "/bin/bash", "args": ["-c", wrapped]},
        })))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().await.unwrap();
    let r = d
        .sandbox(
            reqwest::Method::GET,
            &sid(v),
            &format!("/files?path={file}&username=root"),
        )
        .header("X-Access-Token", token(v))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}

fn sbx_dir(d: &Daemon, id: &str) -> PathBuf {
    d.data_dir.join("sandboxes").join(id)
}

fn is_mounted(p: &Path) -> bool {
    let s = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = p.to_string_lossy().to_string();
    s.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Loop devices whose backing file is under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("losetup").arg("-a").output().unwrap();
    let dir = dir.to_string_lossy().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect()
}

fn host_free(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() * s.fragment_size()
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

async fn upload(d: &Daemon, v: &Value, path: &str, body: Vec<u8>) -> u16 {
    d.sandbox(
        reqwest::Method::POST,
        &sid(v),
        &format!("/files?path={path}&username=user"),
    )
    .header("X-Access-Token", token(v))
    .header("Content-Type", "application/octet-stream")
    .body(body)
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn disk_quota_cpus_and_memory() {
    require_root("disk_quota_cpus_and_memory");
    let d = Daemon::start();
    let (s, v) = d
        .create(json!({"templateID":"base","timeout":300,"secure":true,"cpuCount":1,"memoryMB":256,"diskSizeMB":64}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = sid(&v);
    let sbx = sbx_dir(&d, &id);
    let image = sbx.join("disk.img");
    assert!(is_mounted(&sbx.join("disk")), "quota filesystem mounted");
    assert!(image.is_file());
    assert_eq!(loops_under(&sbx).len(), 1, "{:?}", loops_under(&d.data_dir));

    // nproc = cpuCount, the cpuset on the host agrees; free -m = memoryMB
    assert_eq!(out(&d, &v, "nproc").await.trim(), "1");
    assert_eq!(
        out(
            &d,
            &v,
            "su user -c 'python3 -c \"import os; print(len(os.sched_getaffinity(0)))\"'"
        )
        .await
        .trim(),
        "1"
    );
    let total = out(&d, &v, "free -m | awk '/^Mem:/{print $2}'").await;
    assert_eq!(total.trim(), "256", "free -m");
    let meminfo = out(&d, &v, "head -3 /proc/meminfo").await;
    assert!(meminfo.contains("MemTotal:         262144 kB"), "{meminfo}");

    // df inside shows the quota
    let df = out(&d, &v, "df -m --output=size / /usr /home/user | tail -n +2").await;
    for l in df.lines() {
        let mb: u64 = l.trim().parse().unwrap_or_else(|_| panic!("df: {df}"));
        assert!((50..=64).contains(&mb), "df sizes: {df}");
    }

    // a filler stops at the quota with ENOSPC; the host loses at most the image's size
    let free0 = host_free(&d.data_dir);
    let r = out(
        &d,
        &v,
        "dd if=/dev/zero of=/home/user/fill bs=1M count=512 conv=fsync; echo rc=$?; stat -c %s /home/user/fill",
    )
    .await;
    assert!(r.contains("No space left on device"), "{r}");
    assert!(!r.contains("rc=0"), "{r}");
    let size: u64 = r.lines().last().unwrap().trim().parse().unwrap();
    assert!(size > 40 << 20 && size <= 64 << 20, "filled {size}: {r}");
    assert!(
        allocated(&image) <= (64 << 20) + (1 << 20),
        "image {}",
        allocated(&image)
    );
    let free1 = host_free(&d.data_dir);
    assert!(
        free0.saturating_sub(free1) < 256 << 20,
        "host lost {} MiB",
        (free0 - free1) >> 20
    );
    // other sandboxes and the agent keep working: writes fail, reads and processes work
    assert_eq!(out(&d, &v, "echo ok").await.trim(), "ok");

    // /files upload over the quota: 507; after freeing space a small one works
    assert_eq!(upload(&d, &v, "/home/user/up", vec![7u8; 1 << 20]).await, 507);
    out(&d, &v, "rm -f /home/user/fill /home/user/up; sync").await;
    assert_eq!(upload(&d, &v, "/home/user/up", vec![7u8; 80 << 20]).await, 507);
    out(&d, &v, "rm -f /home/user/up; sync").await;
    assert_eq!(upload(&d, &v, "/home/user/up", vec![7u8; 8 << 20]).await, 200);
    // deleting gives the space back to the host (discard)
    out(&d, &v, "rm -f /home/user/up; sync").await;
    assert!(
        allocated(&image) < 16 << 20,
        "image {} after rm",
        allocated(&image)
    );

    // sudo works on the nosuid quota filesystem (setuid binaries come from the lower /usr)
    assert_eq!(out(&d, &v, "su user -c 'sudo -n id -u'").await.trim(), "0");

    // a filesystem-only pause and resume boot on the same files, still under the quota
    out(&d, &v, "echo kept > /home/user/kept").await;
    let r = d
        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/pause"))
        .json(&json!({"memory": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(is_mounted(&sbx.join("disk")), "kept while paused");
    let r = d
        .api(reqwest::Method::POST, &format!("/sandboxes/{id}/resume"))
        .json(&json!({"timeout": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(out(&d, &v, "cat /home/user/kept").await.trim(), "kept");
    let df = out(&d, &v, "df -m --output=size / | tail -1").await;
    assert!(df.trim().parse::<u64>().is_ok_and(|m| m <= 64), "{df}");
    assert_eq!(out(&d, &v, "nproc").await.trim(), "1");

    // destroy: no loop device, mount or image left
    assert_eq!(d.delete(&format!("/sandboxes/{id}")).await, 204);
    assert!(!sbx.exists());
    assert!(!is_mounted(&sbx.join("disk")));
    assert!(
        wait_until(Duration::from_secs(10), || async { loops_under(&sbx).is_empty() }).await,
        "loop devices left: {:?}",
        loops_under(&d.data_dir)
    );
}

#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn disk_defaults_zero_and_bad_sizes() {
    require_root("disk_defaults_zero_and_bad_sizes");
    let d = Daemon::start();
    // defaults (from the pool): 1 GiB disk, 2 CPUs (all of this host's, or 2), 512 MiB
    let (s, v) = d
        .create(json!({"templateID":"base","timeout":120,"secure":true}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = sid(&v);
    assert!(is_mounted(&sbx_dir(&d, &id).join("disk")));
    let df: u64 = out(&d, &v, "df -m --output=size / | tail -1")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!((900..=1024).contains(&df), "default disk {df} MiB");
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    let n: usize = out(&d, &v, "nproc").await.trim().parse().unwrap();
    assert_eq!(n, host_cpus.min(2));
    assert_eq!(
        out(&d, &v, "free -m | awk '/^Mem:/{print $2}'").await.trim(),
        "512"
    );

    // diskSizeMB 0: no quota (the data dir's filesystem), and it says so in the log
    let (s, z) = d
        .create(json!({"templateID":"base","timeout":120,"secure":true,"diskSizeMB":0}))
        .await;
    assert_eq!(s, 201, "{z}");
    let zid = sid(&z);
    assert!(!is_mounted(&sbx_dir(&d, &zid).join("disk")));
    assert!(!sbx_dir(&d, &zid).join("disk.img").exists());
    assert_eq!(
        out(&d, &z, "echo hi > /home/user/f && cat /home/user/f")
            .await
            .trim(),
        "hi"
    );
    assert!(d.logs().contains("no disk quota"), "{}", d.logs());

    // below the minimum: a clear 400, nothing left
    let (s, b) = d
        .create(json!({"templateID":"base","timeout":120,"diskSizeMB":4}))
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("diskSizeMB"), "{b}");

    for i in [&id, &zid] {
        assert_eq!(d.delete(&format!("/sandboxes/{i}")).await, 204);
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            // only the pool's prepared slots may hold loop devices now
            loops_under(&d.data_dir.join("sandboxes"))
                .iter()
                .all(|l| l.contains("/.pool-"))
        })
        .await,
        "{:?}",
        loops_under(&d.data_dir)
    );
}

/// The quota mount is kernel state: a restarted daemon re-adopts the sandbox with its quota,
/// and a daemon that stops leaves no pool images behind. A paused sandbox whose mount is gone
/// (as after a host reboot) gets its image mounted again and resumes under its quota.
#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn quota_survives_daemon_restart() {
    require_root("quota_survives_daemon_restart");
    let tmp = tempfile::Builder::new()
        .prefix("sandboxd-limits-")
        .tempdir()
        .unwrap();
    let data = tmp.path().join("data");
    let key = test_key();
    let opts = Opts {
        key: Some(key.clone()),
        ..Opts::default()
    };
    let mut d = Daemon::start_in(&data, opts.clone()).unwrap();
    let (s, v) = d
        .create(json!({"templateID":"base","timeout":300,"secure":true,"diskSizeMB":32}))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = sid(&v);
    out(&d, &v, "echo before > /home/user/b").await;
    // a second one, paused filesystem-only: its mount is dropped below as a host reboot would
    let (s, p) = d
        .create(json!({"templateID":"base","timeout":300,"secure":true,"diskSizeMB":16}))
        .await;
    assert_eq!(s, 201, "{p}");
    let pid = sid(&p);
    out(&d, &p, "echo paused > /home/user/p").await;
    let r = d
        .api(reqwest::Method::POST, &format!("/sandboxes/{pid}/pause"))
        .json(&json!({"memory": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    d.terminate();
    let pdisk = sbx_dir(&d, &pid).join("disk");
    nix::mount::umount2(&pdisk, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(!is_mounted(&pdisk));
    assert!(
        is_mounted(&sbx_dir(&d, &id).join("disk")),
        "mount outlives the daemon"
    );
    // the stopped daemon drained its pool: only the sandbox's image is attached
    assert!(
        wait_until(Duration::from_secs(10), || async {
            loops_under(&data).len() == 1
        })
        .await,
        "{:?}",
        loops_under(&data)
    );
    let d2 = Daemon::start_in(&data, opts).unwrap();
    assert_eq!(out(&d2, &v, "cat /home/user/b").await.trim(), "before");
    // the paused one's image is mounted again (at re-adoption) and it resumes on its files
    assert!(is_mounted(&pdisk), "re-mounted at start");
    let r = d2
        .api(reqwest::Method::POST, &format!("/sandboxes/{pid}/resume"))
        .json(&json!({"timeout": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(out(&d2, &p, "cat /home/user/p").await.trim(), "paused");
    let r = out(&d2, &p, "head -c 40M /dev/zero > /home/user/z; echo rc=$?").await;
    assert!(r.contains("No space left"), "{r}");
    assert_eq!(d2.delete(&format!("/sandboxes/{pid}")).await, 204);
    let r = out(&d2, &v, "head -c 40M /dev/zero > /home/user/z; echo rc=$?").await;
    assert!(r.contains("No space left"), "{r}");
    assert_eq!(d2.delete(&format!("/sandboxes/{id}")).await, 204);
    drop(d2);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            loops_under(&data).is_empty()
        })
        .await,
        "{:?}",
        loops_under(&data)
    );
    drop(d);
}

/// The memory limit of sandbox `id`'s whole cgroup (agent and work) on the host, v1 or v2.
fn sandbox_memory_limit(id: &str) -> Option<u64> {
    for (mount, file) in [
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),
        ("/sys/fs/cgroup", "memory.max"),
    ] {
        for root in std::fs::read_dir(mount).ok()?.flatten() {
            if let Ok(t) = std::fs::read_to_string(root.path().join(id).join(file)) {
                return t.trim().parse().ok();
            }
        }
    }
    None
}

/// One memory limit covers the agent and the workload: `/dev/shm` of a 128 MiB sandbox holds at
/// most 128 MiB, so a 300 MB upload through `/files` (from the host, and from inside through
/// 127.0.0.1:49983) answers 507 instead of taking host memory; files the agent wrote there
/// count against the sandbox (a workload that would fit in `work` alone is OOM-killed while
/// they are there, and runs once they are gone); the agent and a neighbour keep answering.
#[tokio::test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
async fn shm_uploads_count_against_the_sandbox_memory() {
    require_root("shm_uploads_count_against_the_sandbox_memory");
    let d = Daemon::start();
    let body = json!({"templateID":"base","timeout":300,"secure":true,"memoryMB":128});
    let (s, v) = d.create(body.clone()).await;
    assert_eq!(s, 201, "{v}");
    let (s, n) = d.create(body).await;
    assert_eq!(s, 201, "{n}");
    let id = sid(&v);
    assert_eq!(
        sandbox_memory_limit(&id),
        Some((128 + 64) << 20),
        "memoryMB + agent reserve"
    );
    let run = |script: &'static str| out_at(&d, &v, "/tmp/.limits-out", script);
    let size = run("df -m --output=size /dev/shm | tail -1").await;
    assert!(
        size.trim().parse::<u64>().is_ok_and(|m| m <= 128),
        "/dev/shm size {size}"
    );

    // from the host: 507, the sandbox answers, nothing of it left in memory once removed
    assert_eq!(upload(&d, &v, "/dev/shm/big", vec![7u8; 300 << 20]).await, 507);
    assert_eq!(run("echo ok").await, "ok\n");
    run("rm -f /dev/shm/big").await;
    // from inside through envd's port: 507 too
    let inside = out_at(
        &d,
        &v,
        "/tmp/.limits-out",
        &format!(
            "head -c 300M /dev/zero > /home/user/big && curl -s -o /dev/null -w '%{{http_code}}' \
             -H 'X-Access-Token: {}' -F 'file=@/home/user/big' \
             'http://127.0.0.1:49983/files?path=/dev/shm/in&username=user'; rm -f /home/user/big /dev/shm/in",
            token(&v)
        ),
    )
    .await;
    assert_eq!(inside, "507", "upload from inside");

    // 110 MiB that the agent wrote into /dev/shm leave no room for a 100 MiB workload ...
    assert_eq!(upload(&d, &v, "/dev/shm/fill", vec![7u8; 110 << 20]).await, 200);
    let hog = "python3 -c \"b = b'x' * (100 << 20); print('done-' + 'alloc')\"; echo rc=$?";
    let r = out_at(&d, &v, "/tmp/.limits-out", hog).await;
    assert!(r.contains("rc=137") && !r.contains("done-alloc"), "{r}");
    assert_eq!(run("echo ok").await, "ok\n", "the agent survives the OOM kill");
    // ... which runs once they are gone; a bigger one is OOM-killed in work as before
    run("rm -f /dev/shm/fill").await;
    let r = out_at(&d, &v, "/tmp/.limits-out", hog).await;
    assert!(r.contains("done-alloc") && r.contains("rc=0"), "{r}");
    let r = run("python3 -c \"b = b'x' * (200 << 20)\"; echo rc=$?").await;
    assert!(r.contains("rc=137"), "{r}");
    assert_eq!(run("echo ok").await, "ok\n");
    // the neighbour never noticed
    assert_eq!(out_at(&d, &n, "/tmp/.limits-out", "echo fine").await, "fine\n");
    d.kill_all_sandboxes();
}
