//! `sandboxd bench --quick --json <tmp>` as root: every section is there with sane values, the
//! Markdown table is printed, and the bench leaves nothing behind in its work dir.
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

use serde_json::Value;
use std::process::Command;

/// A privileged test without root fails (see `common::require_root`).
fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} is privileged: it needs root and cannot run here"
    );
}

fn num(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v:#}"))
}

/// A latency/throughput summary: n > 0, ordered percentiles, finite positive values.
fn check_summary(v: &Value, path: &str) {
    let n = num(v, &format!("{path}/n"));
    assert!(n >= 1.0, "{path}: n = {n}");
    let (min, p50, p90, p99, max) = (
        num(v, &format!("{path}/min")),
        num(v, &format!("{path}/p50")),
        num(v, &format!("{path}/p90")),
        num(v, &format!("{path}/p99")),
        num(v, &format!("{path}/max")),
    );
    assert!(
        min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{path}: {min} {p50} {p90} {p99} {max}"
    );
    assert!(
        v.pointer(&format!("{path}/unit"))
            .and_then(Value::as_str)
            .is_some()
    );
}

fn check_positive_latency(v: &Value, path: &str, below_ms: f64) {
    check_summary(v, path);
    let p50 = num(v, &format!("{path}/p50"));
    assert!(p50 > 0.0 && p50 < below_ms, "{path}: p50 {p50} ms");
    assert_eq!(v.pointer(&format!("{path}/unit")), Some(&Value::from("ms")));
}

#[test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
fn quick_bench_reports_every_section() {
    require_root("quick_bench_reports_every_section");
    let work = tempfile::Builder::new()
        .prefix("sandboxd-bench-test-")
        .tempdir()
        .unwrap();
    let json_path = work.path().join("bench.json");
    let scratch = work.path().join("work");
    std::fs::create_dir_all(&scratch).unwrap();
    let t0 = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["bench", "--quick", "--json"])
        .arg(&json_path)
        .arg("--work-dir")
        .arg(&scratch)
        .env_remove("SANDBOXD_API_KEY")
        .output()
        .expect("running sandboxd bench");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!("{stdout}");
    assert!(
        took.as_secs() < 120,
        "--quick took {took:?} (should be under a minute on a release build)"
    );

    // The Markdown table.
    assert!(
        stdout.contains("| measurement | n | p50 | p90 | p99 |"),
        "{stdout}"
    );
    assert!(stdout.contains("create → ready, sequential"), "{stdout}");

    let v: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["mode"], "quick");
    assert!(matches!(
        v["build"]["profile"].as_str(),
        Some("debug" | "release")
    ));
    assert!(num(&v, "/machine/nproc") >= 1.0);
    assert!(num(&v, "/machine/memory_bytes") > 0.0);
    assert!(!v["machine"]["kernel"].as_str().unwrap().is_empty());
    assert!(v["machine"]["cgroup"].as_str().unwrap().starts_with('v'));
    assert_eq!(v["errors"], Value::Array(vec![]), "{v:#}");

    // Baselines: fork+exec always; bwrap measured or skipped with a reason.
    check_positive_latency(&v, "/baselines/fork_exec/latency", 1000.0);
    check_positive_latency(&v, "/baselines/host_bash/latency", 10_000.0);
    if v["baselines"]["bwrap"]["available"] == true {
        check_positive_latency(&v, "/baselines/bwrap/latency", 10_000.0);
    } else {
        assert!(v["baselines"]["bwrap"]["skip_reason"].is_string());
    }

    // Create: sequential, kill, and the concurrency levels 4, 16, 64.
    check_positive_latency(&v, "/create/sequential", 10_000.0);
    check_positive_latency(&v, "/create/kill", 10_000.0);
    // Image templates: creates from an imported two-layer image, its builds; the pull row
    // whenever docker-registry is installed (setup.sh --tests installs it, so CI has it).
    check_positive_latency(&v, "/create_image_template/create", 10_000.0);
    assert!(
        num(&v, "/create_image_template/rebuild_unchanged_ms") < 1000.0,
        "{v:#}"
    );
    let have_registry = Command::new("sh")
        .args(["-c", "command -v docker-registry"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have_registry {
        assert!(num(&v, "/image_pull/mb_per_s") > 0.0, "{v:#}");
        assert!(stdout.contains("image pull from a loopback registry"), "{stdout}");
    } else {
        assert!(v["image_pull"].is_null());
    }
    // Egress throughput, whenever iperf3 is installed (setup.sh --tests installs it): the host
    // baseline, the NAT path and the proxy path, each a real transfer
    let have_iperf3 = Command::new("sh")
        .args(["-c", "command -v iperf3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have_iperf3 {
        for k in ["host_mbps", "nat_mbps", "proxy_mbps"] {
            assert!(num(&v, &format!("/egress/{k}")) > 10.0, "{k}: {v:#}");
        }
        assert!(
            stdout.contains("egress throughput, sandbox, through the egress proxy"),
            "{stdout}"
        );
    } else {
        assert!(v["egress"].is_null());
    }
    let levels = v["create"]["concurrency"].as_array().unwrap();
    let got: Vec<u64> = levels
        .iter()
        .map(|l| l["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![4, 16, 64]);
    for i in 0..levels.len() {
        check_positive_latency(&v, &format!("/create/concurrency/{i}/latency"), 60_000.0);
        assert!(num(&v, &format!("/create/concurrency/{i}/creates_per_s")) > 0.0);
    }
    let steps = v["create"]["breakdown"]["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "no create breakdown: {v:#}");

    // Warm pool: measured, or n/a with a reason.
    let pool = &v["create_warm_pool"];
    if pool["available"] == true {
        check_positive_latency(&v, "/create_warm_pool/latency", 10_000.0);
    } else {
        assert!(!pool["reason"].as_str().unwrap().is_empty());
    }

    check_positive_latency(&v, "/exec/direct_true", 10_000.0);
    check_positive_latency(&v, "/exec/sdk_bash_echo", 10_000.0);
    check_positive_latency(&v, "/exec/control_health", 10_000.0);
    check_positive_latency(&v, "/exec/envd_health", 10_000.0);

    assert!(num(&v, "/cycle/cycles") >= 1.0);
    assert!(num(&v, "/cycle/cycles_per_s") > 0.0);
    check_positive_latency(&v, "/cycle/latency", 60_000.0);

    // Density: 10 idle sandboxes; each charges something, and far less than its 512 MiB limit.
    assert_eq!(num(&v, "/density/sandboxes"), 10.0);
    check_summary(&v, "/density/cgroup_charge");
    let charge = num(&v, "/density/cgroup_charge/p50");
    assert!(charge > 0.0 && charge < 256.0, "cgroup charge {charge} MiB");
    let pss = num(&v, "/density/agent_pss/p50");
    assert!(pss > 0.0 && pss < 256.0, "agent PSS {pss} MiB");
    assert!(num(&v, "/density/sandboxes_in_budget") >= 1.0);

    // Files: 1 MiB and 64 MiB both ways, with memory samples.
    let transfers = v["files"]["transfers"].as_array().unwrap();
    let sizes: Vec<u64> = transfers
        .iter()
        .map(|t| t["size_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes[0], 1 << 20);
    assert!(sizes.len() == 2 && sizes[1] > 1 << 20, "{sizes:?}");
    for i in 0..transfers.len() {
        for dir in ["upload", "download"] {
            check_summary(&v, &format!("/files/transfers/{i}/{dir}"));
            assert!(num(&v, &format!("/files/transfers/{i}/{dir}/p50")) > 0.0);
        }
        assert!(num(&v, &format!("/files/transfers/{i}/daemon_peak_rss_mib")) > 0.0);
        assert!(num(&v, &format!("/files/transfers/{i}/agent_peak_rss_mib")) > 0.0);
    }

    assert!(num(&v, "/listdir/entries") >= 1.0);
    check_positive_latency(&v, "/listdir/latency", 60_000.0);
    check_summary(&v, "/listdir/entries_per_s");
    assert!(num(&v, "/watch/events") >= 1.0);
    check_summary(&v, "/watch/after_write_done");
    check_summary(&v, "/watch/after_write_start");

    // Nothing left behind in the work dir (data dir, daemon log, host baseline files).
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn bench_rejects_bad_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["bench", "--quick", "--density", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--density"));
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["bench", "--quick", "--only", "create,nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown section \"nonsense\""));
}
