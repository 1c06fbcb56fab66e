//! The control-plane router and `api/openapi.yaml` agree both ways: every route registered in
//! [`crate::api::router`] is documented and every documented path and method is routed.
//!
//! The route list is read from the router's source (the only place routes are registered, which
//! [`routes_are_registered_only_in_the_api_router`] checks), so a route added without
//! documentation fails here. `fake_backend_tests::every_documented_operation_is_routed` sends
//! each documented operation to a running daemon as the behavioural side of the same check.

use std::collections::BTreeSet;
use std::path::Path;

/// The OpenAPI document, from the repository root.
const OPENAPI: &str = include_str!("../../../api/openapi.yaml");
/// The session API's document (`/workspace/se/…` routes).
const SESSIONS_OPENAPI: &str = include_str!("../../../api/sessions.yaml");
/// Routes under this prefix are documented in [`SESSIONS_OPENAPI`], the rest in [`OPENAPI`].
const SESSIONS_PREFIX: &str = "/workspace/se/";
/// The source of the control-plane router.
const ROUTER_SOURCE: &str = include_str!("api/mod.rs");

const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

/// `(METHOD, path)` with every path parameter written `{}`.
type Operation = (String, String);

/// `{sandboxID}` and `{id}` both become `{}`: the names differ between axum and OpenAPI.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

/// The operations of `api/openapi.yaml`, as written (parameter names kept). The document keeps
/// a fixed layout — paths at two spaces under `paths:`, operations at four — and anything else
/// at those levels fails the parse, so the layout cannot drift past this reader.
pub(crate) fn documented_operations() -> Vec<(String, String)> {
    operations_of(OPENAPI)
}

/// The operations of one OpenAPI document in the layout described above.
fn operations_of(document: &str) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    for (n, line) in document.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let key = line.trim().split(':').next().unwrap_or_default();
        match indent {
            2 => {
                assert!(
                    key.starts_with('/') && line.trim_end().ends_with(':'),
                    "openapi.yaml:{n}: expected a path key, got {line:?}"
                );
                path = Some(key.to_string());
            }
            4 if METHODS.contains(&key) => {
                let p = path
                    .clone()
                    .unwrap_or_else(|| panic!("openapi.yaml:{n}: operation outside a path"));
                ops.push((key.to_ascii_uppercase(), p));
            }
            4 => assert!(
                ["parameters", "summary", "description", "servers"].contains(&key),
                "openapi.yaml:{n}: unexpected key {key:?} in a path item"
            ),
            i => assert!(i > 4, "openapi.yaml:{n}: unexpected indentation {i}"),
        }
    }
    ops
}

/// The operations registered in [`crate::api::router`], read from its source.
fn routed_operations() -> Vec<Operation> {
    let start = ROUTER_SOURCE
        .find("pub fn router(")
        .expect("api/mod.rs has `pub fn router(`");
    let body = &ROUTER_SOURCE[start..];
    let end = body
        .find(".fallback(")
        .expect("the router ends with `.fallback(`");
    let body = &body[..end];
    let mut ops = Vec::new();
    let mut rest = body;
    let mut routes = 0;
    while let Some(i) = rest.find(".route(") {
        routes += 1;
        rest = &rest[i + ".route(".len()..];
        let open = rest.find('"').expect("a route path literal");
        let close = open + 1 + rest[open + 1..].find('"').expect("end of the path literal");
        let path = &rest[open + 1..close];
        let args = &rest[close + 1..];
        let args = args
            .trim_start()
            .strip_prefix(',')
            .expect("`,` after the route path");
        let methods = top_level_calls(args);
        assert!(!methods.is_empty(), "no method routing for {path}");
        for m in methods {
            assert!(
                METHODS.contains(&m.as_str()),
                "route {path}: unrecognised method router `{m}(`; teach contract_tests.rs about it"
            );
            ops.push((m.to_ascii_uppercase(), path.to_string()));
        }
    }
    assert_eq!(
        routes,
        body.matches(".route").count(),
        "every `.route…` call of the router is a plain `.route(\"path\", …)`"
    );
    for other in [".nest", ".merge", ".route_service", ".nest_service"] {
        assert!(
            !body.contains(other),
            "the router uses {other}: the contract test cannot see those routes"
        );
    }
    ops
}

/// The function names called at the top level of the route's second argument (up to its
/// closing parenthesis): `post(a).get(b)` gives `post`, `get`; `axum::routing::delete(x)` gives
/// `delete`.
fn top_level_calls(args: &str) -> Vec<String> {
    let mut calls = Vec::new();
    let mut depth = 0usize;
    let mut ident = String::new();
    for c in args.chars() {
        match c {
            '(' => {
                if depth == 0 && !ident.is_empty() {
                    calls.push(std::mem::take(&mut ident));
                }
                depth += 1;
            }
            ')' if depth == 0 => break,
            ')' => depth -= 1,
            c if c.is_alphanumeric() || c == '_' => ident.push(c),
            _ => ident.clear(),
        }
    }
    calls
}

fn normalized(ops: &[Operation]) -> BTreeSet<Operation> {
    ops.iter().map(|(m, p)| (m.clone(), normalize(p))).collect()
}

/// Routed operations in (`true`) or outside (`false`) the session API.
fn routed_in(sessions: bool) -> Vec<Operation> {
    routed_operations()
        .into_iter()
        .filter(|(_, p)| p.starts_with(SESSIONS_PREFIX) == sessions)
        .collect()
}

#[test]
fn session_router_and_sessions_yaml_agree() {
    let documented = normalized(&operations_of(SESSIONS_OPENAPI));
    let routed = normalized(&routed_in(true));
    assert!(
        routed.len() >= 12,
        "parsed only {} session routes: {routed:?}",
        routed.len()
    );
    assert!(
        documented.iter().all(|(_, p)| p.starts_with(SESSIONS_PREFIX)),
        "api/sessions.yaml documents a path outside {SESSIONS_PREFIX}: {documented:?}"
    );
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in api/sessions.yaml: {undocumented:?}; in api/sessions.yaml but not routed: {unrouted:?}"
    );
    // the daemon serves the same document
    assert_eq!(crate::api::sessions::OPENAPI, SESSIONS_OPENAPI);
}

#[test]
fn router_and_openapi_agree() {
    let documented = normalized(&documented_operations());
    let routed = normalized(&routed_in(false));
    assert!(
        routed.len() > 20,
        "parsed only {} routes: {routed:?}",
        routed.len()
    );
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in api/openapi.yaml: {undocumented:?}; in api/openapi.yaml but not routed: {unrouted:?}"
    );
}

#[test]
fn routes_are_registered_only_in_the_api_router() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    let mut offenders = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let name = path.file_name().unwrap().to_string_lossy();
            if rel == "api/mod.rs" || name.ends_with("tests.rs") || !name.ends_with(".rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for needle in [".route(", ".nest(", ".merge(", "Router::new("] {
                if text.contains(needle) {
                    offenders.push(format!("{rel}: {needle}"));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes registered outside api/mod.rs: {offenders:?}"
    );
}

#[test]
fn the_parsers_see_what_they_must() {
    assert_eq!(normalize("/sandboxes/{sandboxID}/fork"), "/sandboxes/{}/fork");
    assert_eq!(
        top_level_calls(" get(sandboxes::get).delete(sandboxes::kill))\n .route("),
        ["get", "delete"]
    );
    assert_eq!(
        top_level_calls(" axum::routing::delete(snapshots::delete_template),\n)"),
        ["delete"]
    );
    let ops = routed_operations();
    assert!(ops.contains(&("GET".into(), "/v2/sandboxes".into())), "{ops:?}");
    assert!(ops.contains(&("POST".into(), "/v2/sandboxes".into())), "{ops:?}");
    assert!(
        ops.contains(&("DELETE".into(), "/templates/{id}".into())),
        "{ops:?}"
    );
    let docs = documented_operations();
    assert!(
        docs.contains(&("DELETE".into(), "/sandboxes/{sandboxID}".into())),
        "{docs:?}"
    );
}
