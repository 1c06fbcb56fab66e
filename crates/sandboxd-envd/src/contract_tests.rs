//! envd's `.proto` files (`api/envd/`) declare exactly the RPCs the agent dispatches, and the
//! agent serves each service at the path the proto's package and service name give.

use std::collections::BTreeSet;

const PROCESS_PROTO: &str = include_str!("../../../api/envd/process/process.proto");
const FILESYSTEM_PROTO: &str = include_str!("../../../api/envd/filesystem/filesystem.proto");
const PROCESS_DISPATCH: &str = include_str!("process/mod.rs");
const FILESYSTEM_DISPATCH: &str = include_str!("filesystem/mod.rs");
const SERVER: &str = include_str!("server.rs");

/// `package.Service` and the names of its `rpc`s.
fn proto_service(proto: &str) -> (String, BTreeSet<String>) {
    let package = proto
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .and_then(|p| p.strip_suffix(';'))
        .expect("a package line");
    let service = proto
        .lines()
        .find_map(|l| l.trim().strip_prefix("service "))
        .and_then(|s| s.split_whitespace().next())
        .expect("a service");
    let rpcs = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|r| r.split('(').next().unwrap_or_default().trim().to_string())
        .collect();
    (format!("{package}.{service}"), rpcs)
}

/// The method names matched in the `dispatch` function's `match method.as_str()`.
fn dispatched(source: &str) -> BTreeSet<String> {
    let start = source
        .find("pub async fn dispatch(")
        .expect("a dispatch function");
    let body = &source[start..];
    let body = &body[body.find("match method.as_str()").expect("a match on the method")..];
    let body = &body[..body.find("other =>").expect("a catch-all arm")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix('"'))
        .filter_map(|l| l.split_once("\" =>").map(|(name, _)| name.to_string()))
        .collect()
}

fn check(proto: &str, dispatch: &str) {
    let (service, rpcs) = proto_service(proto);
    assert!(
        SERVER.contains(&format!("\"/{service}/{{method}}\"")),
        "server.rs does not route /{service}/{{method}}"
    );
    let served = dispatched(dispatch);
    assert!(rpcs.len() > 5, "{service}: parsed only {rpcs:?}");
    assert_eq!(
        rpcs, served,
        "{service}: the .proto's RPCs (left) and the agent's dispatch (right) differ"
    );
}

#[test]
fn process_proto_matches_the_dispatch() {
    check(PROCESS_PROTO, PROCESS_DISPATCH);
}

#[test]
fn filesystem_proto_matches_the_dispatch() {
    check(FILESYSTEM_PROTO, FILESYSTEM_DISPATCH);
}
