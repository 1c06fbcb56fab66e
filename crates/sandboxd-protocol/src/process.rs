//! Messages of the envd `process.Process` service (`api/envd/process/process.proto`).
//!
//! Encoded as Go's `protojson` does it (`docs/contract.md` §7): lowerCamelCase names,
//! default values left out, `optional` fields (`cwd`, `tag`, `stdin`, `error`) only when set,
//! `Signal` by name, bytes as padded standard base64, `exitCode` (sint32) as a number, and
//! oneof members keyed by their own field name (`{"event":{"start":{"pid":1}}}`,
//! `{"process":{"pid":12}}`). Decoders also accept snake_case names, `null` for any field,
//! numbers as strings for `pid`/`cols`/`rows`, and enum numbers.

use crate::pj;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// Decode `null` as the field's default (protojson allows `null` for every field).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// uint32 fields: JSON numbers, also accepted as decimal strings; `null` is 0.
mod u32_lenient {
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        Ok(super::opt_u32::deserialize(d)?.unwrap_or(0))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum V {
        N(i64),
        S(String),
        F(f64),
    }

    pub(super) fn convert<E: Error>(v: V) -> Result<u32, E> {
        let n: i64 = match v {
            V::N(n) => n,
            V::S(s) => s
                .trim()
                .parse()
                .map_err(|_| E::custom(format!("invalid uint32 value {s:?}")))?,
            V::F(f) if f.fract() == 0.0 && f >= 0.0 && f <= u32::MAX as f64 => f as i64,
            V::F(f) => return Err(E::custom(format!("invalid uint32 value {f}"))),
        };
        u32::try_from(n).map_err(|_| E::custom(format!("uint32 value {n} out of range")))
    }
}

/// Optional uint32 fields (oneof members): number, decimal string or `null`.
mod opt_u32 {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match Option::<super::u32_lenient::V>::deserialize(d)? {
            None => Ok(None),
            Some(v) => super::u32_lenient::convert(v).map(Some),
        }
    }
}

/// Optional `bytes` fields (oneof members): base64, `null` means unset.
mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => crate::pj::base64_bytes::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => crate::pj::base64_bytes::decode(&s)
                .map(Some)
                .map_err(|e| D::Error::custom(format!("invalid base64: {e}"))),
        }
    }
}

/// An empty message (`{}`): `ListRequest`, `UpdateResponse`, `KeepAlive`, ...
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `process.PTY.Size`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PtySize {
    #[serde(
        skip_serializing_if = "pj::is_default",
        deserialize_with = "u32_lenient::deserialize"
    )]
    pub cols: u32,
    #[serde(
        skip_serializing_if = "pj::is_default",
        deserialize_with = "u32_lenient::deserialize"
    )]
    pub rows: u32,
}

/// `process.PTY`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pty {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

/// `process.ProcessConfig`: the command as the client asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub cmd: String,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "null_default")]
    pub envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `process.ProcessSelector` (oneof `selector`: `pid` or `tag`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessSelector {
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_u32::deserialize"
    )]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A validated selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    Tag(String),
}

impl ProcessSelector {
    /// Select by pid.
    pub fn pid(pid: u32) -> Self {
        Self {
            pid: Some(pid),
            tag: None,
        }
    }

    /// The selector, or an error text when neither or both members are set.
    pub fn selector(&self) -> Result<Selector, &'static str> {
        match (&self.pid, &self.tag) {
            (Some(p), None) => Ok(Selector::Pid(*p)),
            (None, Some(t)) => Ok(Selector::Tag(t.clone())),
            (None, None) => Err("process selector needs a pid or a tag"),
            (Some(_), Some(_)) => Err("process selector has both a pid and a tag"),
        }
    }
}

/// `process.ProcessInfo` (an entry of `ListResponse`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    #[serde(
        skip_serializing_if = "pj::is_default",
        deserialize_with = "u32_lenient::deserialize"
    )]
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `process.ListResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListResponse {
    #[serde(deserialize_with = "null_default")]
    pub processes: Vec<ProcessInfo>,
}

/// `process.StartRequest`. `stdin` absent means true (a stdin pipe).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// `process.UpdateRequest` (PTY resize).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// `process.ProcessEvent.StartEvent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartEvent {
    #[serde(
        skip_serializing_if = "pj::is_default",
        deserialize_with = "u32_lenient::deserialize"
    )]
    pub pid: u32,
}

/// `process.ProcessEvent.DataEvent` (oneof `output`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataEvent {
    Stdout(#[serde(with = "pj::base64_bytes")] Vec<u8>),
    Stderr(#[serde(with = "pj::base64_bytes")] Vec<u8>),
    Pty(#[serde(with = "pj::base64_bytes")] Vec<u8>),
}

/// `process.ProcessEvent.EndEvent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndEvent {
    /// sint32: the exit code, or -1 when the process was killed by a signal.
    #[serde(
        rename = "exitCode",
        alias = "exit_code",
        skip_serializing_if = "pj::is_default"
    )]
    pub exit_code: i32,
    #[serde(skip_serializing_if = "pj::is_default")]
    pub exited: bool,
    #[serde(skip_serializing_if = "String::is_empty", deserialize_with = "null_default")]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `process.ProcessEvent` (oneof `event`), written as `{"start":{...}}`, `{"data":{...}}`,
/// `{"end":{...}}` or `{"keepalive":{}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessEvent {
    Start(StartEvent),
    Data(DataEvent),
    End(EndEvent),
    Keepalive(Empty),
}

/// `process.StartResponse` and `process.ConnectResponse` (same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResponse {
    pub event: ProcessEvent,
}

/// `process.StartResponse`.
pub type StartResponse = EventResponse;
/// `process.ConnectResponse`.
pub type ConnectResponse = EventResponse;

/// `process.ProcessInput` (oneof `input`: `stdin` or `pty` bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessInput {
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub stdin: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub pty: Option<Vec<u8>>,
}

/// A validated process input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    Pty(Vec<u8>),
}

impl ProcessInput {
    /// The input, or an error text when neither or both members are set.
    pub fn input(self) -> Result<Input, &'static str> {
        match (self.stdin, self.pty) {
            (Some(s), None) => Ok(Input::Stdin(s)),
            (None, Some(p)) => Ok(Input::Pty(p)),
            (None, None) => Err("input needs stdin or pty data"),
            (Some(_), Some(_)) => Err("input has both stdin and pty data"),
        }
    }
}

/// `process.SendInputRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SendInputRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<ProcessInput>,
}

/// `process.StreamInputRequest.StartEvent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInputStart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

/// `process.StreamInputRequest.DataEvent` (its `input` is field number 2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInputData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<ProcessInput>,
}

/// `process.StreamInputRequest` (oneof `event`: `start`, `data` or `keepalive`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamInputRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<StreamInputStart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<StreamInputData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<Empty>,
}

/// `process.Signal`. Kept as the raw number so that unknown numbers reach the handler
/// (which answers `unimplemented`, as envd does) instead of failing to decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Signal(pub i32);

impl Signal {
    pub const UNSPECIFIED: Signal = Signal(0);
    pub const SIGKILL: Signal = Signal(9);
    pub const SIGTERM: Signal = Signal(15);

    /// The enum value name, when the number is a known value.
    pub fn name(self) -> Option<&'static str> {
        match self.0 {
            0 => Some("SIGNAL_UNSPECIFIED"),
            9 => Some("SIGNAL_SIGKILL"),
            15 => Some("SIGNAL_SIGTERM"),
            _ => None,
        }
    }

    /// The value of an enum name.
    pub fn from_name(s: &str) -> Option<Signal> {
        match s {
            "SIGNAL_UNSPECIFIED" => Some(Signal::UNSPECIFIED),
            "SIGNAL_SIGKILL" => Some(Signal::SIGKILL),
            "SIGNAL_SIGTERM" => Some(Signal::SIGTERM),
            _ => None,
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(n) => s.serialize_str(n),
            None => s.serialize_i32(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            S(String),
            N(i64),
        }
        match Option::<V>::deserialize(d)? {
            None => Ok(Signal::UNSPECIFIED),
            Some(V::S(s)) => Signal::from_name(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown Signal value {s:?}"))),
            Some(V::N(n)) => i32::try_from(n)
                .map(Signal)
                .map_err(|_| serde::de::Error::custom(format!("Signal number {n} out of range"))),
        }
    }
}

/// `process.SendSignalRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SendSignalRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    #[serde(skip_serializing_if = "pj::is_default")]
    pub signal: Signal,
}

/// `process.CloseStdinRequest`, `process.ConnectRequest` (same shape: one selector).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectorRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

/// `process.ConnectRequest`.
pub type ConnectRequest = SelectorRequest;
/// `process.CloseStdinRequest`.
pub type CloseStdinRequest = SelectorRequest;

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn events_are_protojson() {
        let ev = |e| json(&EventResponse { event: e });
        assert_eq!(
            ev(ProcessEvent::Start(StartEvent { pid: 42 })),
            r#"{"event":{"start":{"pid":42}}}"#
        );
        assert_eq!(
            ev(ProcessEvent::Data(DataEvent::Stdout(b"hi\n".to_vec()))),
            r#"{"event":{"data":{"stdout":"aGkK"}}}"#
        );
        assert_eq!(
            ev(ProcessEvent::Data(DataEvent::Stderr(b"a".to_vec()))),
            r#"{"event":{"data":{"stderr":"YQ=="}}}"#
        );
        assert_eq!(
            ev(ProcessEvent::Data(DataEvent::Pty(vec![0xff]))),
            r#"{"event":{"data":{"pty":"/w=="}}}"#
        );
        assert_eq!(
            ev(ProcessEvent::End(EndEvent {
                exit_code: 0,
                exited: true,
                status: "exit status 0".into(),
                error: None
            })),
            r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#
        );
        assert_eq!(
            ev(ProcessEvent::End(EndEvent {
                exit_code: -1,
                exited: false,
                status: "signal: killed".into(),
                error: Some("signal: killed".into())
            })),
            r#"{"event":{"end":{"exitCode":-1,"status":"signal: killed","error":"signal: killed"}}}"#
        );
        assert_eq!(
            ev(ProcessEvent::Keepalive(Empty {})),
            r#"{"event":{"keepalive":{}}}"#
        );
        let back: EventResponse = serde_json::from_str(r#"{"event":{"end":{"exit_code":3}}}"#).unwrap();
        assert_eq!(
            back.event,
            ProcessEvent::End(EndEvent {
                exit_code: 3,
                ..Default::default()
            })
        );
    }

    #[test]
    fn start_requests_from_the_sdk() {
        let r: StartRequest = serde_json::from_str(
            r#"{"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"]}, "stdin": false}"#,
        )
        .unwrap();
        let p = r.process.unwrap();
        assert_eq!(p.cmd, "/bin/bash");
        assert_eq!(p.args, ["-l", "-c", "echo hi"]);
        assert_eq!(p.cwd, None);
        assert_eq!(r.stdin, Some(false));
        assert_eq!(r.pty, None);
        let r: StartRequest = serde_json::from_str(
            r#"{"process": {"cmd": "/bin/bash", "args": ["-i", "-l"], "envs": {"TERM": "xterm-256color"}, "cwd": "/"}, "pty": {"size": {"cols": 80, "rows": "24"}}, "tag": "t"}"#,
        )
        .unwrap();
        assert_eq!(r.pty.unwrap().size.unwrap(), PtySize { cols: 80, rows: 24 });
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.stdin, None);
        let p = r.process.unwrap();
        assert_eq!(p.cwd.as_deref(), Some("/"));
        assert_eq!(
            json(&p),
            r#"{"cmd":"/bin/bash","args":["-i","-l"],"envs":{"TERM":"xterm-256color"},"cwd":"/"}"#
        );
        // null means default; unknown fields are ignored.
        let r: StartRequest =
            serde_json::from_str(r#"{"process":{"cmd":"x","args":null,"envs":null},"other":1}"#).unwrap();
        assert!(r.process.unwrap().args.is_empty());
        assert!(serde_json::from_str::<StartRequest>(r#"{"process":{"cmd":5}}"#).is_err());
        assert!(serde_json::from_str::<StartRequest>(r#"{"pty":{"size":{"cols":-1}}}"#).is_err());
    }

    #[test]
    fn list_response() {
        let r = ListResponse {
            processes: vec![ProcessInfo {
                config: ProcessConfig {
                    cmd: "sleep".into(),
                    args: vec!["10".into()],
                    ..Default::default()
                },
                pid: 7,
                tag: None,
            }],
        };
        assert_eq!(
            json(&r),
            r#"{"processes":[{"config":{"cmd":"sleep","args":["10"]},"pid":7}]}"#
        );
        assert_eq!(json(&ListResponse::default()), r#"{"processes":[]}"#);
    }

    #[test]
    fn selectors_inputs_signals() {
        let r: SendSignalRequest =
            serde_json::from_str(r#"{"process": {"pid": 12}, "signal": "SIGNAL_SIGKILL"}"#).unwrap();
        assert_eq!(r.process.unwrap().selector(), Ok(Selector::Pid(12)));
        assert_eq!(r.signal, Signal::SIGKILL);
        let r: SendSignalRequest =
            serde_json::from_str(r#"{"process": {"tag": "x"}, "signal": 15}"#).unwrap();
        assert_eq!(r.process.unwrap().selector(), Ok(Selector::Tag("x".into())));
        assert_eq!(r.signal, Signal::SIGTERM);
        let r: SendSignalRequest = serde_json::from_str(r#"{"signal": 1}"#).unwrap();
        assert_eq!(r.signal, Signal(1));
        assert!(serde_json::from_str::<SendSignalRequest>(r#"{"signal": "SIGHUP"}"#).is_err());
        assert!(ProcessSelector::default().selector().is_err());
        assert!(
            ProcessSelector {
                pid: Some(1),
                tag: Some("a".into())
            }
            .selector()
            .is_err()
        );
        let r: SendInputRequest =
            serde_json::from_str(r#"{"process": {"pid": "12"}, "input": {"stdin": "aGVsbG8="}}"#).unwrap();
        assert_eq!(r.input.unwrap().input(), Ok(Input::Stdin(b"hello".to_vec())));
        assert_eq!(
            json(&SendInputRequest {
                process: Some(ProcessSelector::pid(3)),
                input: Some(ProcessInput {
                    stdin: None,
                    pty: Some(b"ls\n".to_vec())
                })
            }),
            r#"{"process":{"pid":3},"input":{"pty":"bHMK"}}"#
        );
        assert!(serde_json::from_str::<SendInputRequest>(r#"{"input": {"stdin": "@@"}}"#).is_err());
        assert!(ProcessInput::default().input().is_err());
        let r: StreamInputRequest = serde_json::from_str(r#"{"data":{"input":{"pty":"YQ=="}}}"#).unwrap();
        assert_eq!(
            r.data.unwrap().input.unwrap().input(),
            Ok(Input::Pty(b"a".to_vec()))
        );
        let r: UpdateRequest =
            serde_json::from_str(r#"{"process": {"pid": 12}, "pty": {"size": {"cols": 100, "rows": 24}}}"#)
                .unwrap();
        assert_eq!(r.pty.unwrap().size.unwrap().cols, 100);
        assert!(serde_json::from_str::<ConnectRequest>(r#"{"process":{"pid":4294967296}}"#).is_err());
    }
}
