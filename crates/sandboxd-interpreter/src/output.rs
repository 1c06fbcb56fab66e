//! Mapping of Jupyter messages to the NDJSON lines of `POST /execute` (code-interpreter.md §4–§5).

use serde_json::{Map, Value, json};

/// Which kernel socket a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// IOPub: outputs and status.
    IoPub,
    /// Shell: replies to our requests.
    Shell,
}

/// One message from a kernel, already matched to the request it answers (its parent).
#[derive(Debug, Clone)]
pub struct KernelMessage {
    /// The socket it came from.
    pub channel: Channel,
    /// `header.msg_type`.
    pub msg_type: String,
    /// `header.date` as the kernel sent it.
    pub date: Option<String>,
    /// `content`.
    pub content: Value,
}

/// What the mapper has seen of one execution so far.
#[derive(Debug, Default)]
pub struct ExecutionState {
    /// The kernel accepted the request (`execute_input` or a `busy` status for it).
    pub input_accepted: bool,
    /// An error line was already sent.
    pub errored: bool,
    /// Remove ANSI colour codes from `text/plain` results (Deno colours them always).
    pub strip_ansi: bool,
}

/// Result of mapping one message.
#[derive(Debug, Default, PartialEq)]
pub struct Mapped {
    /// Lines to send, in order.
    pub lines: Vec<Value>,
    /// The execution is over (nothing more to wait for).
    pub end: bool,
}

/// The last line of every `/execute` stream.
pub fn end_of_execution() -> Value {
    json!({"type": "end_of_execution"})
}

/// The line sent after a few seconds of silence.
pub fn keepalive() -> Value {
    json!({"type": "keepalive"})
}

/// An `error` line.
pub fn error_line(name: &str, value: &str, traceback: &str) -> Value {
    json!({"type": "error", "name": name, "value": value, "traceback": traceback})
}

/// Maps one kernel message of an execution to output lines.
pub fn map_message(msg: &KernelMessage, state: &mut ExecutionState) -> Mapped {
    let mut out = Mapped::default();
    let c = &msg.content;
    match (msg.channel, msg.msg_type.as_str()) {
        (Channel::IoPub, "execute_input") => {
            state.input_accepted = true;
            if let Some(n) = c.get("execution_count").and_then(Value::as_i64) {
                out.lines
                    .push(json!({"type": "number_of_executions", "execution_count": n}));
            }
        }
        (Channel::IoPub, "stream") => {
            let kind = match c.get("name").and_then(Value::as_str) {
                Some("stderr") => "stderr",
                _ => "stdout",
            };
            let text = c.get("text").and_then(Value::as_str).unwrap_or("");
            let timestamp = msg.date.clone().unwrap_or_else(now_iso);
            out.lines
                .push(json!({"type": kind, "text": text, "timestamp": timestamp}));
        }
        (Channel::IoPub, "display_data") => {
            out.lines
                .push(result_line(c.get("data"), false, state.strip_ansi));
        }
        (Channel::IoPub, "execute_result") => {
            out.lines.push(result_line(c.get("data"), true, state.strip_ansi));
        }
        (Channel::IoPub, "error") if !state.errored => {
            state.errored = true;
            out.lines.push(error_from_content(c));
        }
        (Channel::IoPub, "status") => match c.get("execution_state").and_then(Value::as_str) {
            Some("busy") => state.input_accepted = true,
            Some("idle") if state.input_accepted => out.end = true,
            Some("restarting") => {
                out.lines
                    .push(error_line("ContextRestarting", "Context was restarted", ""));
                out.end = true;
            }
            _ => {}
        },
        (Channel::Shell, "execute_reply") => match c.get("status").and_then(Value::as_str) {
            Some("error") if !state.errored => {
                state.errored = true;
                out.lines.push(error_from_content(c));
            }
            Some("abort" | "aborted") => {
                out.lines
                    .push(error_line("ExecutionAborted", "Execution was aborted", ""));
                out.end = true;
            }
            _ => {}
        },
        _ => {}
    }
    out
}

fn error_from_content(c: &Value) -> Value {
    let name = c.get("ename").and_then(Value::as_str).unwrap_or("");
    let value = c.get("evalue").and_then(Value::as_str).unwrap_or("");
    let traceback = match c.get("traceback") {
        Some(Value::Array(parts)) => parts.iter().filter_map(Value::as_str).collect::<String>(),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    error_line(name, value, &traceback)
}

/// MIME type → result field (code-interpreter.md §5).
const FIELDS: &[(&str, &str)] = &[
    ("text/html", "html"),
    ("text/markdown", "markdown"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("application/pdf", "pdf"),
    ("text/latex", "latex"),
    ("application/json", "json"),
    ("application/javascript", "javascript"),
    ("e2b/data", "data"),
    ("e2b/chart", "chart"),
];

/// Builds a `result` line from a Jupyter MIME bundle: known types move to named fields, the
/// rest goes to `extra`; null values are left out.
pub fn result_line(data: Option<&Value>, is_main_result: bool, strip_ansi: bool) -> Value {
    let mut bundle: Map<String, Value> = match data {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let mut line = Map::new();
    line.insert("type".into(), Value::String("result".into()));
    if let Some(text) = bundle.remove("text/plain") {
        let text = match text {
            Value::String(s) if strip_ansi => Value::String(strip_quotes(&strip_ansi_codes(&s)).to_string()),
            Value::String(s) => Value::String(strip_quotes(&s).to_string()),
            // Some kernels send multi-line text as a list of lines.
            Value::Array(parts) => Value::String(parts.iter().filter_map(Value::as_str).collect()),
            other => other,
        };
        if !text.is_null() {
            line.insert("text".into(), text);
        }
    }
    for (mime, field) in FIELDS {
        if let Some(v) = bundle.remove(*mime)
            && !v.is_null()
        {
            line.insert((*field).into(), v);
        }
    }
    line.insert("is_main_result".into(), Value::Bool(is_main_result));
    line.insert("extra".into(), Value::Object(bundle));
    Value::Object(line)
}

/// Removes ANSI CSI sequences (`ESC [ ... final-byte`), such as colours.
pub fn strip_ansi_codes(s: &str) -> String {
    if !s.contains('\u{1b}') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in 0x40..=0x7e.
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Strips one pair of surrounding `'…'` or `"…"` quotes.
fn strip_quotes(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iopub(msg_type: &str, content: Value) -> KernelMessage {
        KernelMessage {
            channel: Channel::IoPub,
            msg_type: msg_type.into(),
            date: Some("2025-01-02T03:04:05.678901Z".into()),
            content,
        }
    }

    #[test]
    fn stream_keeps_text_and_date() {
        let mut st = ExecutionState::default();
        let m = map_message(
            &iopub("stream", json!({"name": "stdout", "text": "Hello\n"})),
            &mut st,
        );
        assert_eq!(
            m.lines,
            vec![json!({"type": "stdout", "text": "Hello\n", "timestamp": "2025-01-02T03:04:05.678901Z"})]
        );
        let m = map_message(&iopub("stream", json!({"name": "stderr", "text": "e"})), &mut st);
        assert_eq!(m.lines[0]["type"], "stderr");
        assert!(!m.end);
    }

    #[test]
    fn execute_input_gives_count_and_idle_ends_only_after_input() {
        let mut st = ExecutionState::default();
        let idle = iopub("status", json!({"execution_state": "idle"}));
        assert!(!map_message(&idle, &mut st).end);
        let m = map_message(
            &iopub("execute_input", json!({"code": "1", "execution_count": 7})),
            &mut st,
        );
        assert_eq!(
            m.lines,
            vec![json!({"type": "number_of_executions", "execution_count": 7})]
        );
        assert!(map_message(&idle, &mut st).end);
    }

    #[test]
    fn busy_counts_as_accepted() {
        let mut st = ExecutionState::default();
        map_message(&iopub("status", json!({"execution_state": "busy"})), &mut st);
        assert!(map_message(&iopub("status", json!({"execution_state": "idle"})), &mut st).end);
    }

    #[test]
    fn only_first_error_is_sent_and_reply_error_is_deduplicated() {
        let mut st = ExecutionState::default();
        let err = iopub(
            "error",
            json!({"ename": "NameError", "evalue": "name 'x' is not defined", "traceback": ["a\n", "b"]}),
        );
        let m = map_message(&err, &mut st);
        assert_eq!(
            m.lines,
            vec![
                json!({"type": "error", "name": "NameError", "value": "name 'x' is not defined", "traceback": "a\nb"})
            ]
        );
        assert!(map_message(&err, &mut st).lines.is_empty());
        let reply = KernelMessage {
            channel: Channel::Shell,
            msg_type: "execute_reply".into(),
            date: None,
            content: json!({"status": "error", "ename": "X", "evalue": "y", "traceback": []}),
        };
        assert!(map_message(&reply, &mut st).lines.is_empty());
        let mut fresh = ExecutionState::default();
        assert_eq!(map_message(&reply, &mut fresh).lines[0]["name"], "X");
    }

    #[test]
    fn abort_and_restart_end_with_errors() {
        let mut st = ExecutionState::default();
        let reply = KernelMessage {
            channel: Channel::Shell,
            msg_type: "execute_reply".into(),
            date: None,
            content: json!({"status": "abort"}),
        };
        let m = map_message(&reply, &mut st);
        assert!(m.end);
        assert_eq!(m.lines[0]["name"], "ExecutionAborted");
        assert_eq!(m.lines[0]["value"], "Execution was aborted");
        let m = map_message(
            &iopub("status", json!({"execution_state": "restarting"})),
            &mut st,
        );
        assert!(m.end);
        assert_eq!(m.lines[0]["name"], "ContextRestarting");
        assert_eq!(m.lines[0]["value"], "Context was restarted");
    }

    #[test]
    fn result_moves_known_mime_types_and_keeps_the_rest_in_extra() {
        let data = json!({
            "text/plain": "'hi'",
            "text/html": "<b>hi</b>",
            "image/png": "iVBOR",
            "application/json": [1, 2],
            "e2b/data": {"a": [1]},
            "e2b/chart": {"type": "line"},
            "application/vnd.custom": "x",
        });
        let line = result_line(Some(&data), true, false);
        assert_eq!(
            line,
            json!({
                "type": "result",
                "text": "hi",
                "html": "<b>hi</b>",
                "png": "iVBOR",
                "json": [1, 2],
                "data": {"a": [1]},
                "chart": {"type": "line"},
                "is_main_result": true,
                "extra": {"application/vnd.custom": "x"},
            })
        );
    }

    #[test]
    fn plot_like_bundle_has_empty_extra_and_display_data_is_not_main() {
        let mut st = ExecutionState::default();
        let m = map_message(
            &iopub(
                "display_data",
                json!({"data": {"text/plain": "<Figure size 640x480 with 1 Axes>", "image/png": "AA==", "e2b/chart": {}}, "metadata": {}}),
            ),
            &mut st,
        );
        let line = &m.lines[0];
        assert_eq!(line["is_main_result"], false);
        assert_eq!(line["extra"], json!({}));
        assert_eq!(line["text"], "<Figure size 640x480 with 1 Axes>");
    }

    #[test]
    fn quotes_are_stripped_once_and_only_when_paired() {
        assert_eq!(strip_quotes("'a'"), "a");
        assert_eq!(strip_quotes("\"a\""), "a");
        assert_eq!(strip_quotes("'a\""), "'a\"");
        assert_eq!(strip_quotes("'"), "'");
        assert_eq!(strip_quotes("''x''"), "'x'");
        assert_eq!(strip_quotes("2"), "2");
    }

    #[test]
    fn deno_colours_are_removed_before_quotes() {
        let line = result_line(
            Some(&json!({"text/plain": "\u{1b}[32m\"/home/user\"\u{1b}[39m"})),
            true,
            true,
        );
        assert_eq!(line["text"], "/home/user");
        assert_eq!(strip_ansi_codes("\u{1b}[1;33m42\u{1b}[0m x"), "42 x");
        assert_eq!(strip_ansi_codes("plain"), "plain");
        let kept = result_line(Some(&json!({"text/plain": "\u{1b}[32mx\u{1b}[39m"})), true, false);
        assert_eq!(kept["text"], "\u{1b}[32mx\u{1b}[39m");
    }

    #[test]
    fn null_fields_are_left_out() {
        let line = result_line(
            Some(&json!({"text/plain": null, "text/html": null})),
            false,
            false,
        );
        assert_eq!(
            line,
            json!({"type": "result", "is_main_result": false, "extra": {}})
        );
    }
}
