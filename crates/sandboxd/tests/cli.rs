//! The client subcommands (`docs/cli.md`) against a real daemon: `run` (output, exit codes,
//! signals, env, cwd, user, the sandbox killed afterwards or kept), `exec`, `cp`, `ls`, `kill`, and
//! their errors (no key, a wrong key, an unknown sandbox, a program that does not exist, no
//! daemon).
#![allow(clippy::unwrap_used, reason = "test code: a failed unwrap is a failed test")]

mod common;

use common::{Daemon, require_root};
use std::process::Output;

/// `sandboxd <args>` with the daemon's variables (`vars` overrides them; `None` removes one).
fn cli(d: &Daemon, args: &[&str], vars: &[(&str, Option<&str>)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxd"));
    cmd.args(args)
        .env("E2B_API_URL", &d.url)
        .env("E2B_SANDBOX_URL", &d.url)
        .env("E2B_API_KEY", &d.key)
        .env_remove("RUST_BACKTRACE");
    for (k, v) in vars {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The ids `sandboxd ls` lists.
fn listed(d: &Daemon) -> Vec<String> {
    let out = cli(d, &["ls"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
#[ignore = "privileged: needs root; run with --run-ignored all (scripts/test.sh does, as root)"]
fn run_exec_ls_and_kill() {
    require_root("run_exec_ls_and_kill");
    let d = Daemon::start();

    // run: output on ours, its exit code ours, the sandbox gone afterwards
    let out = cli(
        &d,
        &["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert!(listed(&d).is_empty(), "run left a sandbox behind");
    let out = cli(
        &d,
        &[
            "run",
            "-e",
            "GREETING=hi there",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\" $(pwd) $(id -un)",
        ],
        &[],
    );
    assert_eq!(text(&out.stdout), "hi there /tmp user\n", "{}", text(&out.stderr));
    let out = cli(&d, &["run", "--user", "root", "--", "id", "-u"], &[]);
    assert_eq!(text(&out.stdout), "0\n");
    let out = cli(&d, &["run", "--", "sh", "-c", "kill -9 $$"], &[]);
    assert_eq!(out.status.code(), Some(137), "killed by SIGKILL: 128 + 9");

    // --keep: the sandbox stays, named on stderr; exec and kill it
    let out = cli(
        &d,
        &["run", "--keep", "--", "sh", "-c", "echo kept > /tmp/k"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids = listed(&d);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(text(&out.stderr).contains(&ids[0]), "{}", text(&out.stderr));
    let out = cli(&d, &["exec", &ids[0], "--", "cat", "/tmp/k"], &[]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "kept\n".to_string())
    );
    let big = cli(
        &d,
        &["exec", &ids[0], "--", "head", "-c", "3000000", "/dev/zero"],
        &[],
    );
    assert_eq!(big.stdout.len(), 3_000_000, "large output arrives whole");
    // cp: a file in and out, streamed, as it was; stdin and stdout; a failed copy leaves nothing
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = tmp.path().join("up.bin");
    std::fs::write(&local, &data).unwrap();
    let to = format!("{}:/home/user/dir/up.bin", ids[0]);
    let out = cli(&d, &["cp", local.to_str().unwrap(), &to], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(
        &d,
        &[
            "exec",
            &ids[0],
            "--",
            "stat",
            "-c",
            "%s %U",
            "/home/user/dir/up.bin",
        ],
        &[],
    );
    assert_eq!(text(&out.stdout), "2500000 user\n");
    let back = tmp.path().join("back.bin");
    let out = cli(&d, &["cp", &to, back.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the copy came back changed"
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["cp", "-", &format!("{}:/tmp/from-stdin", ids[0])])
        .env("E2B_API_URL", &d.url)
        .env("E2B_SANDBOX_URL", &d.url)
        .env("E2B_API_KEY", &d.key)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped in").unwrap();
    assert!(child.wait().unwrap().success());
    let out = cli(&d, &["cp", &format!("{}:/tmp/from-stdin", ids[0]), "-"], &[]);
    assert_eq!(text(&out.stdout), "piped in");
    let missing = tmp.path().join("missing");
    let out = cli(
        &d,
        &[
            "cp",
            &format!("{}:/no/such/file", ids[0]),
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("sandboxd: "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        2,
        "a failed copy left a file"
    );
    for args in [vec!["cp", "a", "b"], vec!["cp", &to, &to]] {
        let out = cli(&d, &args, &[]);
        assert!(
            text(&out.stderr).contains("exactly one"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    let out = cli(&d, &["exec", &ids[0], "--", "/no/such/program"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/no/such/program"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(&d, &["kill", &ids[0], "nosuchsandbox"], &[]);
    assert_eq!(out.status.code(), Some(1), "one of the two did not exist");
    assert!(
        text(&out.stderr).contains("nosuchsandbox"),
        "{}",
        text(&out.stderr)
    );
    assert!(listed(&d).is_empty());

    // errors: one line each, exit code 1
    for (args, vars, says) in [
        (vec!["ls"], vec![("E2B_API_KEY", None)], "E2B_API_KEY is not set"),
        (
            vec!["ls"],
            vec![("E2B_API_KEY", Some("e2b_wrong"))],
            "Invalid API key",
        ),
        (
            vec!["ls"],
            vec![("E2B_API_URL", Some("localhost:1"))],
            "E2B_API_URL",
        ),
        (
            vec!["ls"],
            vec![("E2B_API_URL", Some("http://127.0.0.1:1"))],
            "cannot reach sandboxd",
        ),
        (
            vec!["exec", "nosuchsandbox", "--", "true"],
            vec![],
            "doesn't exist",
        ),
        (vec!["exec", "../etc", "--", "true"], vec![], "not a sandbox id"),
        (
            vec!["run", "-t", "no-such-template", "--", "true"],
            vec![],
            "no-such-template",
        ),
        (vec!["run", "-e", "NOEQUALS", "--", "true"], vec![], "NAME=VALUE"),
    ] {
        let out = cli(&d, &args, &vars);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("sandboxd: ") && err.contains(says),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    assert!(listed(&d).is_empty(), "a failed run left a sandbox behind");
}
