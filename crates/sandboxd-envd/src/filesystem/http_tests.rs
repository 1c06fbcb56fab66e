//! In-process HTTP tests of the filesystem RPCs and `/files` through the real router.

use crate::server::router;
use crate::state::AgentState;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_protocol::connect::{EnvelopeDecoder, FLAG_END_STREAM, encode_message};
use serde_json::{Value, json};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

fn agent(token: Option<&str>) -> (Arc<AgentState>, Router) {
    let mut cfg = AgentConfig::new("test", "base");
    // Tests use absolute paths and the root account, which every machine has.
    cfg.default_user = "root".into();
    cfg.default_workdir = None;
    cfg.access_token = token.map(str::to_string);
    let state = AgentState::new(cfg);
    (state.clone(), router(state))
}

async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone().oneshot(req).await.unwrap()
}

async fn body_bytes(resp: Response<Body>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

async fn json_of(resp: Response<Body>) -> Value {
    let b = body_bytes(resp).await;
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)))
}

async fn rpc(app: &Router, method: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(format!("/filesystem.Filesystem/{method}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = send(app, req).await;
    let status = resp.status();
    (status, json_of(resp).await)
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "XyZbOuNdArY42";
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).unwrap();
    out
}

#[tokio::test]
async fn multipart_upload_many_files_and_download() {
    let (_s, app) = agent(None);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let a = format!("{d}/a.txt");
    let b = format!("{d}/new1/new2/b.bin");
    let (ct, body) = multipart(&[
        ("file", &a, b"hello"),
        ("other", "ignored.txt", b"x"),
        ("file", &b, &[0u8, 1, 2, 255]),
    ]);
    let req = Request::post("/files")
        .header("content-type", ct)
        .body(Body::from(body))
        .unwrap();
    let resp = send(&app, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        json_of(resp).await,
        json!([
            {"path": a, "name": "a.txt", "type": "file"},
            {"path": b, "name": "b.bin", "type": "file"},
        ])
    );
    assert_eq!(std::fs::read(&a).unwrap(), b"hello");
    assert_eq!(std::fs::read(&b).unwrap(), [0u8, 1, 2, 255]);
    assert!(!dir.path().join("ignored.txt").exists());
    assert_eq!(
        std::fs::metadata(&a).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    assert_eq!(
        std::fs::metadata(format!("{d}/new1/new2"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );

    let resp = send(
        &app,
        Request::get(format!("/files?path={}", enc(&a)))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-disposition"],
        "inline; filename=\"a.txt\""
    );
    assert_eq!(resp.headers()["content-length"], "5");
    assert_eq!(resp.headers()["vary"], "Accept-Encoding");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(body_bytes(resp).await.as_ref(), b"hello");

    let req = Request::get(format!("/files?path={}", enc(&a)))
        .header("accept-encoding", "gzip")
        .body(Body::empty())
        .unwrap();
    let resp = send(&app, req).await;
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert_eq!(gunzip(&body_bytes(resp).await), b"hello");

    let req = Request::get(format!("/files?path={}", enc(&a)))
        .header("range", "bytes=1-3")
        .body(Body::empty())
        .unwrap();
    let resp = send(&app, req).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 1-3/5");
    assert_eq!(body_bytes(resp).await.as_ref(), b"ell");

    // An empty file downloads as an empty 200.
    std::fs::write(format!("{d}/empty"), b"").unwrap();
    let resp = send(
        &app,
        Request::get(format!("/files?path={d}/empty"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_bytes(resp).await.is_empty());
}

#[tokio::test]
async fn octet_stream_gzip_metadata_and_overwrite() {
    let (_s, app) = agent(None);
    let dir = tempfile::tempdir().unwrap();
    let p = format!("{}/data.bin", dir.path().display());
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let gz = gzip(&payload);
    // Sent in small chunks like a chunked transfer.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        gz.chunks(7000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let req = Request::post(format!("/files?path={}", enc(&p)))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .header("x-metadata-Author", "me")
        .header("x-metadata-kind", "test data")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let resp = send(&app, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json_of(resp).await;
    assert_eq!(std::fs::read(&p).unwrap(), payload);
    let xattrs_work = v[0].get("metadata").is_some();
    if xattrs_work {
        assert_eq!(v[0]["metadata"], json!({"author": "me", "kind": "test data"}));
        let (_, st) = rpc(&app, "Stat", json!({"path": p})).await;
        assert_eq!(
            st["entry"]["metadata"],
            json!({"author": "me", "kind": "test data"})
        );
    }
    // Overwrite without metadata: content replaced, metadata cleared.
    let req = Request::post(format!("/files?path={}", enc(&p)))
        .header("content-type", "application/octet-stream")
        .body(Body::from("short"))
        .unwrap();
    let v = json_of(send(&app, req).await).await;
    assert_eq!(v, json!([{"path": p, "name": "data.bin", "type": "file"}]));
    assert_eq!(std::fs::read(&p).unwrap(), b"short");
    let (_, st) = rpc(&app, "Stat", json!({"path": p})).await;
    assert!(st["entry"].get("metadata").is_none(), "{st}");
    assert_eq!(st["entry"]["size"], "5");
}

#[tokio::test]
async fn upload_and_download_errors() {
    let (_s, app) = agent(None);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let check = |resp: Response<Body>, status: StatusCode, msg: String| async move {
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["content-type"], "application/json; charset=utf-8");
        let v = json_of(resp).await;
        assert_eq!(v["code"], status.as_u16());
        let m = v["message"].as_str().unwrap().to_string();
        assert!(m.starts_with(&msg), "{m:?} does not start with {msg:?}");
    };
    let post = |q: String, ct: &'static str, body: Vec<u8>| {
        Request::post(format!("/files{q}"))
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap()
    };
    check(
        send(
            &app,
            post(String::new(), "application/octet-stream", b"x".to_vec()),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "path query parameter is required for raw body upload".into(),
    )
    .await;
    check(
        send(&app, post(format!("?path={d}/x"), "text/plain", b"x".to_vec())).await,
        StatusCode::BAD_REQUEST,
        "unsupported content type: text/plain".into(),
    )
    .await;
    // A large body with a broken gzip header: 400, and no file is left behind.
    let mut bad = vec![0x1f, 0x8b, 0x99];
    bad.resize(4 << 20, 7);
    let req = Request::post(format!("/files?path={d}/badgz"))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(Body::from(bad))
        .unwrap();
    check(
        send(&app, req).await,
        StatusCode::BAD_REQUEST,
        "error reading request body".into(),
    )
    .await;
    assert!(!dir.path().join("badgz").exists());
    let req = Request::post(format!("/files?path={d}/br"))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "br")
        .body(Body::from("x"))
        .unwrap();
    check(
        send(&app, req).await,
        StatusCode::BAD_REQUEST,
        "unsupported Content-Encoding".into(),
    )
    .await;
    // Directory target.
    check(
        send(
            &app,
            post(format!("?path={d}"), "application/octet-stream", b"x".to_vec()),
        )
        .await,
        StatusCode::BAD_REQUEST,
        format!("path is a directory: {d}"),
    )
    .await;
    // A parent that is a file: a client mistake, 400 (upstream envd answers 500).
    std::fs::write(dir.path().join("plain"), b"").unwrap();
    check(
        send(
            &app,
            post(
                format!("?path={d}/plain/x"),
                "application/octet-stream",
                b"x".to_vec(),
            ),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "error creating parent directories".into(),
    )
    .await;
    // The same path twice in one request.
    let (ct, body) = multipart(&[
        ("file", &format!("{d}/dup"), b"1"),
        ("file", &format!("{d}/dup"), b"2"),
    ]);
    let req = Request::post("/files")
        .header("content-type", ct)
        .body(Body::from(body))
        .unwrap();
    check(
        send(&app, req).await,
        StatusCode::BAD_REQUEST,
        format!("path '{d}/dup' appears more than once"),
    )
    .await;
    // Broken multipart body.
    let req = Request::post("/files")
        .header("content-type", "multipart/form-data; boundary=abc")
        .body(Body::from("garbage"))
        .unwrap();
    check(
        send(&app, req).await,
        StatusCode::BAD_REQUEST,
        "invalid multipart body".into(),
    )
    .await;
    let req = Request::post("/files")
        .header("content-type", "multipart/form-data")
        .body(Body::from("x"))
        .unwrap();
    check(
        send(&app, req).await,
        StatusCode::BAD_REQUEST,
        "invalid multipart content type".into(),
    )
    .await;
    // Metadata and user checks.
    let req = Request::post(format!("/files?path={d}/m"))
        .header("content-type", "application/octet-stream")
        .header(
            "x-metadata-k",
            axum::http::HeaderValue::from_bytes(b"\xff").unwrap(),
        )
        .body(Body::from("x"))
        .unwrap();
    check(
        send(&app, req).await,
        StatusCode::BAD_REQUEST,
        "invalid metadata:".into(),
    )
    .await;
    check(
        send(
            &app,
            post(
                format!("?path={d}/u&username=nosuchuser"),
                "application/octet-stream",
                b"x".to_vec(),
            ),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "error looking up user 'nosuchuser': ".into(),
    )
    .await;
    check(
        send(
            &app,
            post(
                "?path=~nobody/x".into(),
                "application/octet-stream",
                b"x".to_vec(),
            ),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid path".into(),
    )
    .await;
    check(
        send(
            &app,
            post(
                format!("?path={d}/a%00b"),
                "application/octet-stream",
                b"x".to_vec(),
            ),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid path".into(),
    )
    .await;
    // Downloads.
    let get = |q: String| Request::get(format!("/files{q}")).body(Body::empty()).unwrap();
    check(
        send(&app, get(format!("?path={d}/missing"))).await,
        StatusCode::NOT_FOUND,
        format!("path '{d}/missing' does not exist"),
    )
    .await;
    check(
        send(&app, get(format!("?path={d}"))).await,
        StatusCode::BAD_REQUEST,
        format!("path '{d}' is a directory"),
    )
    .await;
    check(
        send(&app, get("?path=/dev/null".into())).await,
        StatusCode::BAD_REQUEST,
        "path '/dev/null' is not a regular file".into(),
    )
    .await;
    let req = Request::get(format!("/files?path={d}/plain"))
        .header("accept-encoding", "br, identity;q=0")
        .body(Body::empty())
        .unwrap();
    check(
        send(&app, req).await,
        StatusCode::NOT_ACCEPTABLE,
        "no acceptable encoding".into(),
    )
    .await;
    let req = Request::get(format!("/files?path={d}/plain"))
        .header("range", "bytes=5-")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn secure_mode_files_and_rpcs() {
    let (_s, app) = agent(Some("secret-token"));
    let dir = tempfile::tempdir().unwrap();
    let p = format!("{}/s.txt", dir.path().display());
    std::fs::write(&p, b"sec").unwrap();
    let get = |q: String, token: Option<&str>| {
        let mut r = Request::get(format!("/files?{q}"));
        if let Some(t) = token {
            r = r.header("x-access-token", t);
        }
        r.body(Body::empty()).unwrap()
    };
    let resp = send(&app, get(format!("path={}", enc(&p)), None)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(resp).await,
        json!({"code": 401, "message": "missing signature query parameter", "error_code": "security_denied"})
    );
    let resp = send(&app, get(format!("path={}", enc(&p)), Some("wrong"))).await;
    assert_eq!(
        json_of(resp).await,
        json!({"code": 401, "message": "access token present in header but does not match", "error_code": "security_denied"})
    );
    assert_eq!(
        send(&app, get(format!("path={}", enc(&p)), Some("secret-token")))
            .await
            .status(),
        StatusCode::OK
    );
    let sig = crate::files::file_signature(&p, "read", "", "secret-token", None);
    let resp = send(
        &app,
        get(format!("path={}&signature={}", enc(&p), enc(&sig)), None),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await.as_ref(), b"sec");
    // The same signature is not valid for writing, nor with a username.
    let resp = send(
        &app,
        get(
            format!("path={}&username=root&signature={}", enc(&p), enc(&sig)),
            None,
        ),
    )
    .await;
    assert_eq!(json_of(resp).await["message"], "invalid signature");
    let exp = chrono::Utc::now().timestamp() - 120;
    let sig = crate::files::file_signature(&p, "read", "root", "secret-token", Some(exp));
    let resp = send(
        &app,
        get(
            format!(
                "path={}&username=root&signature={}&signature_expiration={exp}",
                enc(&p),
                enc(&sig)
            ),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["content-type"], "application/json; charset=utf-8");
    assert_eq!(
        body_bytes(resp).await.as_ref(),
        br#"{"code":401,"error_code":"security_denied","message":"signature is already expired"}"#
    );
    let exp = chrono::Utc::now().timestamp() + 120;
    let sig = crate::files::file_signature(&p, "write", "", "secret-token", Some(exp));
    let req = Request::post(format!(
        "/files?path={}&signature={}&signature_expiration={exp}",
        enc(&p),
        enc(&sig)
    ))
    .header("content-type", "application/octet-stream")
    .body(Body::from("new"))
    .unwrap();
    assert_eq!(send(&app, req).await.status(), StatusCode::OK);
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
    // RPCs need the header token.
    let (status, v) = rpc(&app, "Stat", json!({"path": p})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], 401);
}

/// `isSymlink` (EntryInfo field 12) from Stat and ListDir; `type` describes the target.
#[tokio::test]
async fn symlinks_show_as_symlinks() {
    let (_s, app) = agent(None);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    std::fs::write(format!("{d}/f"), b"x").unwrap();
    std::fs::create_dir(format!("{d}/sub")).unwrap();
    std::os::unix::fs::symlink(format!("{d}/f"), format!("{d}/lf")).unwrap();
    std::os::unix::fs::symlink("sub", format!("{d}/ld")).unwrap();
    let (status, v) = rpc(&app, "Stat", json!({"path": format!("{d}/lf")})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["entry"]["isSymlink"], true);
    assert_eq!(v["entry"]["type"], "FILE_TYPE_FILE");
    let (_, v) = rpc(&app, "Stat", json!({"path": format!("{d}/f")})).await;
    assert!(v["entry"].get("isSymlink").is_none(), "{v}");
    let (status, v) = rpc(&app, "ListDir", json!({"path": d, "depth": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let by_name = |n: &str| {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} not listed: {v}"))
    };
    assert_eq!(by_name("ld")["isSymlink"], true);
    assert_eq!(by_name("ld")["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(by_name("lf")["isSymlink"], true);
    assert!(by_name("sub").get("isSymlink").is_none());
}

#[tokio::test]
async fn unary_rpcs() {
    let (_s, app) = agent(None);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let (status, v) = rpc(&app, "MakeDir", json!({"path": format!("{d}/x/y")})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["entry"]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(v["entry"]["permissions"], "drwxr-xr-x");
    assert_eq!(v["entry"]["mode"], 0o755);
    assert_eq!(v["entry"]["owner"], "root");
    assert!(v["entry"].get("symlinkTarget").is_none());
    assert!(v["entry"]["modifiedTime"].as_str().unwrap().ends_with('Z'));
    let (status, v) = rpc(&app, "MakeDir", json!({"path": format!("{d}/x/y")})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );
    std::fs::write(dir.path().join("f.txt"), b"abcd").unwrap();
    let (status, v) = rpc(&app, "MakeDir", json!({"path": format!("{d}/f.txt")})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );

    let (status, v) = rpc(&app, "Stat", json!({"path": format!("{d}/f.txt")})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["entry"]["size"], "4");
    assert_eq!(v["entry"]["name"], "f.txt");
    assert_eq!(v["entry"]["path"], format!("{d}/f.txt"));
    let (status, v) = rpc(&app, "Stat", json!({"path": format!("{d}/nope")})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        v,
        json!({"code": "not_found", "message": format!("file not found: {d}/nope")})
    );

    let (status, v) = rpc(
        &app,
        "Move",
        json!({"source": format!("{d}/f.txt"), "destination": format!("{d}/m/n/g.txt")}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["entry"]["path"], format!("{d}/m/n/g.txt"));
    let (status, v) = rpc(
        &app,
        "Move",
        json!({"source": format!("{d}/f.txt"), "destination": format!("{d}/h")}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let (status, v) = rpc(&app, "ListDir", json!({"path": d, "depth": 2})).await;
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let want: Vec<String> = ["m", "m/n", "x", "x/y"]
        .iter()
        .map(|r| format!("{d}/{r}"))
        .collect();
    assert_eq!(paths, want);
    let (status, v) = rpc(&app, "ListDir", json!({"path": format!("{d}/m/n/g.txt")})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let (_, v) = rpc(&app, "ListDir", json!({"path": format!("{d}/x/y")})).await;
    assert_eq!(v, json!({}));

    let (status, v) = rpc(&app, "Remove", json!({"path": format!("{d}/m")})).await;
    assert_eq!((status, v), (StatusCode::OK, json!({})));
    let (status, v) = rpc(&app, "Remove", json!({"path": format!("{d}/m")})).await;
    assert_eq!((status, v), (StatusCode::OK, json!({})));
    assert!(!dir.path().join("m").exists());

    // Bad input.
    let (status, v) = rpc(&app, "Stat", json!({"path": 5})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let (status, v) = rpc(&app, "ListDir", json!({"path": d, "depth": -1})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let (status, v) = rpc(&app, "Stat", json!({"path": "a\u{0}b"})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let (status, v) = rpc(&app, "Stat", json!({"path": "~other/x"})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
    let (status, v) = rpc(&app, "Nope", json!({})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::NOT_IMPLEMENTED, Some("unimplemented"))
    );
    let req = Request::post("/filesystem.Filesystem/Stat")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    assert_eq!(send(&app, req).await.status(), StatusCode::BAD_REQUEST);
    let req = Request::post("/filesystem.Filesystem/Stat")
        .header("content-type", "application/json")
        .header("authorization", "Basic bm9zdWNodXNlcjo=")
        .body(Body::from("{}"))
        .unwrap();
    let resp = send(&app, req).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(resp).await["message"], "invalid username: 'nosuchuser'");
}

#[tokio::test]
async fn polling_watcher_over_http_counts_upload_events() {
    let (state, app) = agent(None);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let (status, v) = rpc(&app, "CreateWatcher", json!({"path": d, "recursive": true})).await;
    assert_eq!(status, StatusCode::OK);
    let id = v["watcherId"].as_str().unwrap().to_string();
    assert!(id.starts_with('w'));
    // A new file by upload: exactly CREATE, CHMOD, WRITE, all there when the upload returns.
    let (ct, body) = multipart(&[("file", &format!("{d}/new.txt"), b"content")]);
    let req = Request::post("/files")
        .header("content-type", ct)
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(&app, req).await.status(), StatusCode::OK);
    let (_, v) = rpc(&app, "GetWatcherEvents", json!({"watcherId": id})).await;
    assert_eq!(
        v,
        json!({"events": [
            {"name": "new.txt", "type": "EVENT_TYPE_CREATE"},
            {"name": "new.txt", "type": "EVENT_TYPE_CHMOD"},
            {"name": "new.txt", "type": "EVENT_TYPE_WRITE"},
        ]})
    );
    // A directory made by MakeDir is watched before the next request: nested upload is seen.
    rpc(&app, "MakeDir", json!({"path": format!("{d}/sub")})).await;
    let req = Request::post(format!("/files?path={d}/sub/f.txt"))
        .header("content-type", "application/octet-stream")
        .body(Body::from("x"))
        .unwrap();
    assert_eq!(send(&app, req).await.status(), StatusCode::OK);
    let (_, v) = rpc(&app, "GetWatcherEvents", json!({"watcher_id": id})).await;
    let evs: Vec<(String, String)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(evs[0], ("sub".to_string(), "EVENT_TYPE_CREATE".to_string()));
    assert_eq!(
        &evs[evs.len() - 3..],
        &[
            ("sub/f.txt".to_string(), "EVENT_TYPE_CREATE".to_string()),
            ("sub/f.txt".to_string(), "EVENT_TYPE_CHMOD".to_string()),
            ("sub/f.txt".to_string(), "EVENT_TYPE_WRITE".to_string()),
        ]
    );
    let (_, v) = rpc(&app, "GetWatcherEvents", json!({"watcherId": id})).await;
    assert_eq!(v, json!({}));
    let (status, v) = rpc(&app, "RemoveWatcher", json!({"watcherId": id})).await;
    assert_eq!((status, v), (StatusCode::OK, json!({})));
    assert_eq!(state.watchers.watch_count(), 0);
    for m in ["GetWatcherEvents", "RemoveWatcher"] {
        let (status, v) = rpc(&app, m, json!({"watcherId": id})).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{m}"
        );
    }
    let (status, v) = rpc(&app, "CreateWatcher", json!({"path": format!("{d}/none")})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, v) = rpc(&app, "CreateWatcher", json!({"path": format!("{d}/new.txt")})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
}

fn stream_req(method: &str, msg: &Value, extra: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::post(format!("/filesystem.Filesystem/{method}"))
        .header("content-type", "application/connect+json");
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    r.body(Body::from(encode_message(msg).unwrap())).unwrap()
}

/// Read envelopes until `n` have arrived (or the stream ends), each within 5 s.
async fn next_envelopes(body: &mut Body, dec: &mut EnvelopeDecoder, n: usize) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        while let Ok(Some(env)) = dec.next_envelope() {
            out.push((env.flags, serde_json::from_slice(&env.payload).unwrap()));
        }
        if out.len() >= n {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("stream stalled")
        {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    dec.push(&data);
                }
            }
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn watch_dir_stream() {
    let (state, app) = agent(None);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let resp = send(
        &app,
        stream_req(
            "WatchDir",
            &json!({"path": d, "includeEntry": true}),
            &[("keepalive-ping-interval", "1")],
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/connect+json");
    let mut body = resp.into_body();
    let mut dec = EnvelopeDecoder::new(1 << 20);
    let first = next_envelopes(&mut body, &mut dec, 1).await;
    assert_eq!(first, vec![(0, json!({"start": {}}))]);
    std::fs::write(dir.path().join("w.txt"), b"abc").unwrap();
    let evs = next_envelopes(&mut body, &mut dec, 2).await;
    assert_eq!(evs[0].1["filesystem"]["name"], "w.txt");
    assert_eq!(evs[0].1["filesystem"]["type"], "EVENT_TYPE_CREATE");
    assert_eq!(evs[0].1["filesystem"]["entry"]["path"], format!("{d}/w.txt"));
    assert!(evs[0].1["filesystem"]["entry"].get("isSymlink").is_none());
    assert_eq!(evs[1].1["filesystem"]["type"], "EVENT_TYPE_WRITE");
    // a new symlink shows as one (field 12), its type the target's
    std::os::unix::fs::symlink(dir.path().join("w.txt"), dir.path().join("l")).unwrap();
    let evs = next_envelopes(&mut body, &mut dec, 1).await;
    assert_eq!(evs[0].1["filesystem"]["name"], "l");
    assert_eq!(evs[0].1["filesystem"]["entry"]["isSymlink"], true);
    assert_eq!(evs[0].1["filesystem"]["entry"]["type"], "FILE_TYPE_FILE");
    // Idle: a keepalive after about one second.
    let ka = next_envelopes(&mut body, &mut dec, 1).await;
    assert_eq!(ka, vec![(0, json!({"keepalive": {}}))]);
    assert_eq!(state.watchers.watch_count(), 1);
    drop(body);
    // The watch is released once the stream is gone.
    for _ in 0..100 {
        if state.watchers.watch_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state.watchers.watch_count(), 0);

    // Errors go in the end-of-stream message with status 200.
    let resp = send(
        &app,
        stream_req("WatchDir", &json!({"path": format!("{d}/none")}), &[]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let end = next_envelopes(&mut body, &mut dec, 1).await;
    assert_eq!(end[0].0, FLAG_END_STREAM);
    assert_eq!(end[0].1["error"]["code"], "not_found");
    let resp = send(
        &app,
        stream_req("WatchDir", &json!({"path": format!("{d}/w.txt")}), &[]),
    )
    .await;
    let mut body = resp.into_body();
    let end = next_envelopes(&mut body, &mut dec, 1).await;
    assert_eq!(end[0].1["error"]["code"], "invalid_argument");
    // The deadline ends the stream with deadline_exceeded.
    let resp = send(
        &app,
        stream_req("WatchDir", &json!({"path": d}), &[("connect-timeout-ms", "300")]),
    )
    .await;
    let mut body = resp.into_body();
    let all = next_envelopes(&mut body, &mut dec, 2).await;
    assert_eq!(all[0].1, json!({"start": {}}));
    assert_eq!(all[1].0, FLAG_END_STREAM);
    assert_eq!(all[1].1["error"]["code"], "deadline_exceeded");
}

#[tokio::test]
async fn files_are_chowned_to_the_user() {
    // Uses `nobody`, which exists on every Debian machine.
    let Ok(nobody) = crate::users::lookup("nobody") else {
        return;
    };
    let (_s, app) = agent(None);
    let dir = tempfile::tempdir().unwrap();
    let p = format!("{}/own/f.txt", dir.path().display());
    let req = Request::post(format!("/files?path={p}&username=nobody"))
        .header("content-type", "application/octet-stream")
        .body(Body::from("x"))
        .unwrap();
    assert_eq!(send(&app, req).await.status(), StatusCode::OK);
    for path in [p.clone(), format!("{}/own", dir.path().display())] {
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!((md.uid(), md.gid()), (nobody.uid, nobody.gid), "{path}");
    }
}

#[tokio::test]
async fn no_space_is_507() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let dir = tempfile::tempdir().unwrap();
    // Needs root (or CAP_SYS_ADMIN) to mount a small tmpfs; skip quietly otherwise.
    if mount(
        Some("tmpfs"),
        dir.path(),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=256k"),
    )
    .is_err()
    {
        return;
    }
    let (_s, app) = agent(None);
    let p = format!("{}/big", dir.path().display());
    let req = Request::post(format!("/files?path={p}"))
        .header("content-type", "application/octet-stream")
        .body(Body::from(vec![7u8; 1 << 20]))
        .unwrap();
    let resp = send(&app, req).await;
    let status = resp.status();
    let v = json_of(resp).await;
    let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        v,
        json!({"code": 507, "message": "not enough disk space available", "error_code": "resource_exhausted"})
    );
}
