//! In-process tests of the process service through the real router (run as root on the host;
//! the RPC user is `root`, processes are real children of the test process).

use crate::state::AgentState;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use sandboxd_protocol::agent::AgentConfig;
use sandboxd_protocol::connect::{EnvelopeDecoder, encode_envelope};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

fn app() -> Router {
    let mut cfg = AgentConfig::new("testsbx", "base");
    cfg.default_user = "root".into();
    cfg.default_workdir = Some("/tmp".into());
    cfg.env_vars.insert("GLOBAL_VAR".into(), "g1".into());
    crate::router(AgentState::new(cfg))
}

/// A server-stream response being read message by message.
struct Stream {
    body: Body,
    dec: EnvelopeDecoder,
}

impl Stream {
    /// Next envelope as (is_end_stream, json), or None at the end of the body.
    async fn next(&mut self) -> Option<(bool, Value)> {
        loop {
            if let Some(env) = self.dec.next_envelope().unwrap() {
                return Some((env.is_end_stream(), serde_json::from_slice(&env.payload).unwrap()));
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.dec.push(&d);
                    }
                }
                _ => return None,
            }
        }
    }

    async fn next_timeout(&mut self, d: Duration) -> Option<(bool, Value)> {
        tokio::time::timeout(d, self.next())
            .await
            .expect("stream message in time")
    }

    /// Everything until the end-stream message: (events, end-stream payload).
    async fn collect(mut self) -> (Vec<Value>, Value) {
        let mut events = Vec::new();
        while let Some((end, v)) = self.next_timeout(Duration::from_secs(20)).await {
            if end {
                return (events, v);
            }
            events.push(v);
        }
        panic!("stream ended without end-stream message; events: {events:?}");
    }
}

async fn stream_call(app: &Router, method: &str, msg: Value, headers: &[(&str, &str)]) -> Stream {
    let mut req = Request::post(format!("/process.Process/{method}"))
        .header("content-type", "application/connect+json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = encode_envelope(0, msg.to_string().as_bytes());
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/connect+json");
    Stream {
        body: resp.into_body(),
        dec: EnvelopeDecoder::new(1 << 24),
    }
}

async fn unary(app: &Router, method: &str, msg: Value) -> (StatusCode, Value) {
    let req = Request::post(format!("/process.Process/{method}"))
        .header("content-type", "application/json")
        .body(Body::from(msg.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn output(events: &[Value], key: &str) -> String {
    use base64::Engine;
    let mut s = Vec::new();
    for e in events {
        if let Some(d) = e["event"]["data"][key].as_str() {
            s.extend(base64::engine::general_purpose::STANDARD.decode(d).unwrap());
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn start_msg(cmd: &str) -> Value {
    json!({"process": {"cmd": "/bin/sh", "args": ["-c", cmd]}, "stdin": false})
}

fn pid_of(v: &Value) -> u64 {
    v["event"]["start"]["pid"].as_u64().expect("start event")
}

fn alive(pid: u64) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[tokio::test]
async fn echo_start_output_end() {
    let app = app();
    let (events, end) = stream_call(&app, "Start", start_msg("echo hi; echo err >&2"), &[])
        .await
        .collect()
        .await;
    let pid = pid_of(&events[0]);
    assert!(pid > 1);
    assert_eq!(output(&events, "stdout"), "hi\n");
    assert_eq!(output(&events, "stderr"), "err\n");
    assert_eq!(
        events.last().unwrap(),
        &json!({"event":{"end":{"exited":true,"status":"exit status 0"}}})
    );
    assert_eq!(end, json!({}));
    assert!(!alive(pid), "process was reaped");
}

#[tokio::test]
async fn exit_code_and_error() {
    let app = app();
    let (events, end) = stream_call(&app, "Start", start_msg("exit 3"), &[])
        .await
        .collect()
        .await;
    assert_eq!(
        events.last().unwrap(),
        &json!({"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"}}})
    );
    assert_eq!(end, json!({}));
}

#[tokio::test]
async fn env_cwd_user() {
    let app = app();
    let msg = json!({"process": {"cmd": "/bin/sh", "args": ["-c", "echo $FOO $GLOBAL_VAR $E2B_SANDBOX_ID $USER $HOME; pwd; id -u"], "envs": {"FOO": "bar"}}, "stdin": false});
    let (events, _) = stream_call(&app, "Start", msg, &[]).await.collect().await;
    assert_eq!(output(&events, "stdout"), "bar g1 testsbx root /root\n/tmp\n0\n");
    // Per-command envs do not leak into the next command.
    let (events, _) = stream_call(&app, "Start", start_msg("echo \"[$FOO]\""), &[])
        .await
        .collect()
        .await;
    assert_eq!(output(&events, "stdout"), "[]\n");
    // Relative cwd resolves against home.
    let msg = json!({"process": {"cmd": "/bin/pwd", "cwd": "/"}, "stdin": false});
    let (events, _) = stream_call(&app, "Start", msg, &[]).await.collect().await;
    assert_eq!(output(&events, "stdout"), "/\n");
}

#[tokio::test]
async fn bad_start_requests_end_with_errors() {
    let app = app();
    let msg = json!({"process": {"cmd": "/bin/true", "cwd": "/nonexistent-dir-xyz"}});
    let (events, end) = stream_call(&app, "Start", msg, &[]).await.collect().await;
    assert!(events.is_empty());
    assert_eq!(
        end,
        json!({"error":{"code":"invalid_argument","message":"cwd '/nonexistent-dir-xyz' does not exist"}})
    );
    let (_, end) = stream_call(&app, "Start", json!({}), &[]).await.collect().await;
    assert_eq!(end["error"]["code"], "invalid_argument");
    let (_, end) = stream_call(&app, "Start", json!({"process": {"cmd": 5}}), &[])
        .await
        .collect()
        .await;
    assert_eq!(end["error"]["code"], "invalid_argument");
    let (_, end) = stream_call(&app, "Start", json!({"process": {"cmd": "/no/such/binary"}}), &[])
        .await
        .collect()
        .await;
    assert_eq!(end["error"]["code"], "internal");
    let (_, end) = stream_call(
        &app,
        "Start",
        json!({"process": {"cmd": "/bin/true", "envs": {"A=B": "x"}}}),
        &[],
    )
    .await
    .collect()
    .await;
    assert_eq!(end["error"]["code"], "invalid_argument");
    let (_, end) = stream_call(
        &app,
        "Start",
        start_msg("true"),
        &[("authorization", "Basic bm9ib2R5eHl6Og==")],
    )
    .await
    .collect()
    .await;
    assert_eq!(
        end,
        json!({"error":{"code":"unauthenticated","message":"invalid username: 'nobodyxyz'"}})
    );
    let (_, end) = stream_call(&app, "Start", start_msg("true"), &[("connect-timeout-ms", "abc")])
        .await
        .collect()
        .await;
    assert_eq!(end["error"]["code"], "invalid_argument");
    let (status, v) = unary(&app, "NoSuchMethod", json!({})).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(v["code"], "unimplemented");
}

#[tokio::test]
async fn stdin_pipe_send_and_close() {
    let app = app();
    let msg = json!({"process": {"cmd": "/bin/cat"}, "stdin": true, "tag": "cat1"});
    let mut s = stream_call(&app, "Start", msg, &[]).await;
    let (_, first) = s.next_timeout(Duration::from_secs(5)).await.unwrap();
    let pid = pid_of(&first);
    let (st, v) = unary(
        &app,
        "SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": "aGVsbG8K"}}),
    )
    .await;
    assert_eq!((st, v), (StatusCode::OK, json!({})));
    let (_, ev) = s.next_timeout(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ev, json!({"event":{"data":{"stdout":"aGVsbG8K"}}}));
    // Pty input to a pipe process is an error.
    let (st, v) = unary(
        &app,
        "SendInput",
        json!({"process": {"pid": pid}, "input": {"pty": "YQ=="}}),
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("internal"))
    );
    // Update without a PTY is internal; CloseStdin twice is fine and gives EOF.
    let (st, _) = unary(
        &app,
        "Update",
        json!({"process": {"pid": pid}, "pty": {"size": {"cols": 10, "rows": 10}}}),
    )
    .await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    let (st, _) = unary(&app, "CloseStdin", json!({"process": {"tag": "cat1"}})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = unary(&app, "CloseStdin", json!({"process": {"pid": pid}})).await;
    assert_eq!(st, StatusCode::OK);
    let (events, end) = s.collect().await;
    assert_eq!(
        events.last().unwrap(),
        &json!({"event":{"end":{"exited":true,"status":"exit status 0"}}})
    );
    assert_eq!(end, json!({}));
    // stdin false: /dev/null, so cat ends at once; input is rejected.
    let (events, _) = stream_call(
        &app,
        "Start",
        json!({"process": {"cmd": "/bin/cat"}, "stdin": false}),
        &[],
    )
    .await
    .collect()
    .await;
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn kill_list_connect() {
    let app = app();
    let msg = json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}, "stdin": false, "tag": "sleeper"});
    let mut s = stream_call(&app, "Start", msg, &[]).await;
    let pid = pid_of(&s.next_timeout(Duration::from_secs(5)).await.unwrap().1);
    let (st, v) = unary(&app, "List", json!({})).await;
    assert_eq!(st, StatusCode::OK);
    let entry = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"].as_u64() == Some(pid))
        .cloned()
        .expect("listed");
    assert_eq!(
        entry,
        json!({"config": {"cmd": "/bin/sleep", "args": ["30"]}, "pid": pid, "tag": "sleeper"})
    );
    // Connect by tag gets the start event with the same pid.
    let mut c = stream_call(&app, "Connect", json!({"process": {"tag": "sleeper"}}), &[]).await;
    assert_eq!(
        pid_of(&c.next_timeout(Duration::from_secs(5)).await.unwrap().1),
        pid
    );
    // Signals other than TERM/KILL are unimplemented.
    let (st, v) = unary(
        &app,
        "SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_UNSPECIFIED"}),
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_IMPLEMENTED, Some("unimplemented"))
    );
    let (st, _) = unary(
        &app,
        "SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let killed = json!({"event":{"end":{"exitCode":-1,"status":"signal: killed","error":"signal: killed"}}});
    let (events, end) = s.collect().await;
    assert_eq!(events.last().unwrap(), &killed);
    assert_eq!(end, json!({}));
    let (events, _) = c.collect().await;
    assert_eq!(events.last().unwrap(), &killed);
    assert!(!alive(pid));
    // Gone from List and from signal targets; Connect still gets start + end from the cache.
    let (_, v) = unary(&app, "List", json!({})).await;
    assert!(
        !v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"].as_u64() == Some(pid))
    );
    let (st, v) = unary(
        &app,
        "SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["message"], format!("process with pid {pid} not found"));
    let (events, end) = stream_call(&app, "Connect", json!({"process": {"pid": pid}}), &[])
        .await
        .collect()
        .await;
    assert_eq!(events, vec![json!({"event":{"start":{"pid":pid}}}), killed]);
    assert_eq!(end, json!({}));
}

#[tokio::test]
async fn unknown_and_malformed_selectors() {
    let app = app();
    let (_, end) = stream_call(&app, "Connect", json!({"process": {"pid": 999999}}), &[])
        .await
        .collect()
        .await;
    assert_eq!(
        end,
        json!({"error":{"code":"not_found","message":"process with pid 999999 not found"}})
    );
    let (_, end) = stream_call(&app, "Connect", json!({}), &[]).await.collect().await;
    assert_eq!(end["error"]["code"], "invalid_argument");
    for method in ["SendInput", "CloseStdin", "SendSignal", "Update"] {
        let (st, v) = unary(
            &app,
            method,
            json!({"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL", "input": {"stdin": ""}}),
        )
        .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{method}");
        assert_eq!(v["message"], "process with pid 999999 not found");
        let (st, v) = unary(&app, method, json!({})).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_argument")),
            "{method}"
        );
        let (st, _) = unary(&app, method, json!({"process": {"pid": "x"}})).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{method}");
    }
    let (st, v) = unary(&app, "List", json!("nope")).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument"))
    );
}

#[tokio::test]
async fn deadline_kills_the_process() {
    let app = app();
    let t0 = std::time::Instant::now();
    let mut s = stream_call(
        &app,
        "Start",
        start_msg("exec sleep 30"),
        &[("connect-timeout-ms", "400")],
    )
    .await;
    let pid = pid_of(&s.next_timeout(Duration::from_secs(5)).await.unwrap().1);
    let (events, end) = s.collect().await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(end["error"]["code"], "deadline_exceeded");
    assert!(t0.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!alive(pid), "killed at the deadline");
}

#[tokio::test]
async fn disconnect_keeps_running_and_keepalive() {
    let app = app();
    let msg = json!({"process": {"cmd": "/bin/cat"}, "tag": "k"});
    let mut s = stream_call(&app, "Start", msg, &[]).await;
    let pid = pid_of(&s.next_timeout(Duration::from_secs(5)).await.unwrap().1);
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Output while nobody is attached is dropped; the process is still there.
    let (st, _) = unary(
        &app,
        "SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": "bG9zdAo="}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(alive(pid));
    let mut c = stream_call(
        &app,
        "Connect",
        json!({"process": {"pid": pid}}),
        &[("keepalive-ping-interval", "1"), ("connect-timeout-ms", "2500")],
    )
    .await;
    assert_eq!(
        pid_of(&c.next_timeout(Duration::from_secs(5)).await.unwrap().1),
        pid
    );
    let (_, v) = c.next_timeout(Duration::from_secs(3)).await.unwrap();
    assert_eq!(v, json!({"event":{"keepalive":{}}}));
    let (st, _) = unary(
        &app,
        "SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": "bmV3Cg=="}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (_, v) = c.next_timeout(Duration::from_secs(3)).await.unwrap();
    assert_eq!(v, json!({"event":{"data":{"stdout":"bmV3Cg=="}}}));
    // Connect's own deadline ends its stream but does not kill the process.
    let (_, end) = c.collect().await;
    assert_eq!(end["error"]["code"], "deadline_exceeded");
    assert!(alive(pid));
    let (st, _) = unary(
        &app,
        "SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn pty_size_input_resize() {
    let app = app();
    let msg = json!({
        "process": {"cmd": "/bin/sh", "envs": {"ABC": "123", "TERM": "xterm"}},
        "pty": {"size": {"cols": 80, "rows": 24}},
        "stdin": false
    });
    let mut s = stream_call(&app, "Start", msg, &[]).await;
    let pid = pid_of(&s.next_timeout(Duration::from_secs(5)).await.unwrap().1);
    let send = |text: &str| {
        use base64::Engine;
        json!({"process": {"pid": pid}, "input": {"pty": base64::engine::general_purpose::STANDARD.encode(text)}})
    };
    let (st, _) = unary(
        &app,
        "SendInput",
        send("echo A$ABC; stty size; tty; test -t 0 && echo ctty\n"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    // Wait until that line ran before resizing.
    let mut seen = Vec::new();
    while !output(&seen, "pty").contains("\nctty\r\n") {
        seen.push(s.next_timeout(Duration::from_secs(5)).await.unwrap().1);
    }
    // Stdin-only RPCs are refused for a PTY process.
    let (st, v) = unary(&app, "CloseStdin", json!({"process": {"pid": pid}})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("unknown"))
    );
    let (st, _) = unary(
        &app,
        "Update",
        json!({"process": {"pid": pid}, "pty": {"size": {"cols": 100, "rows": 30}}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = unary(&app, "SendInput", send("stty size; exit 0\n")).await;
    assert_eq!(st, StatusCode::OK);
    let (events, end) = s.collect().await;
    seen.extend(events.iter().cloned());
    let out = output(&seen, "pty");
    assert!(out.contains("A123"), "{out}");
    assert!(out.contains("24 80"), "{out}");
    assert!(out.contains("30 100"), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("ctty"), "{out}");
    assert_eq!(
        events.last().unwrap(),
        &json!({"event":{"end":{"exited":true,"status":"exit status 0"}}})
    );
    assert_eq!(end, json!({}));
}

#[tokio::test]
async fn stream_input_writes_in_order() {
    let app = app();
    let mut s = stream_call(&app, "Start", json!({"process": {"cmd": "/bin/cat"}}), &[]).await;
    let pid = pid_of(&s.next_timeout(Duration::from_secs(5)).await.unwrap().1);
    let mut body = Vec::new();
    for m in [
        json!({"start": {"process": {"pid": pid}}}),
        json!({"data": {"input": {"stdin": "YQ=="}}}),
        json!({"keepalive": {}}),
        json!({"data": {"input": {"stdin": "Ygo="}}}),
    ] {
        body.extend_from_slice(&encode_envelope(0, m.to_string().as_bytes()));
    }
    let req = Request::post("/process.Process/StreamInput")
        .header("content-type", "application/connect+json")
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let data = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&data[..], b"\x00\x00\x00\x00\x02{}\x02\x00\x00\x00\x02{}");
    let (st, _) = unary(&app, "CloseStdin", json!({"process": {"pid": pid}})).await;
    assert_eq!(st, StatusCode::OK);
    let (events, _) = s.collect().await;
    assert_eq!(output(&events, "stdout"), "ab\n");
    // A data message before start is an error.
    let body = encode_envelope(
        0,
        json!({"data": {"input": {"stdin": "YQ=="}}})
            .to_string()
            .as_bytes(),
    );
    let req = Request::post("/process.Process/StreamInput")
        .header("content-type", "application/connect+json")
        .body(Body::from(body))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let data = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&data[5..]).unwrap();
    assert_eq!(v["error"]["code"], "invalid_argument");
}

#[tokio::test]
async fn large_output_is_chunked_and_complete() {
    let app = app();
    let (events, _) = stream_call(&app, "Start", start_msg("head -c 300000 /dev/zero"), &[])
        .await
        .collect()
        .await;
    let mut total = 0;
    for e in &events {
        if let Some(d) = e["event"]["data"]["stdout"].as_str() {
            use base64::Engine;
            let n = base64::engine::general_purpose::STANDARD.decode(d).unwrap().len();
            assert!(n <= super::table::PIPE_CHUNK);
            total += n;
        }
    }
    assert_eq!(total, 300000);
}
