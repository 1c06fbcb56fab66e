//! End events from exit statuses, worded like Go's `os.ProcessState.String()` (as envd sends).

use crate::pid1::ExitStatus;
use sandboxd_protocol::process::EndEvent;

/// Go's text for a Linux signal number (`syscall.Signal.String()`).
pub fn signal_name(sig: i32) -> String {
    let s = match sig {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        16 => "stack fault",
        17 => "child exited",
        18 => "continued",
        19 => "stopped (signal)",
        20 => "stopped",
        21 => "stopped (tty input)",
        22 => "stopped (tty output)",
        23 => "urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "file size limit exceeded",
        26 => "virtual timer expired",
        27 => "profiling timer expired",
        28 => "window changed",
        29 => "I/O possible",
        30 => "power failure",
        31 => "bad system call",
        n => return format!("signal {n}"),
    };
    s.to_string()
}

/// The end event of a process: `exitCode` (-1 on a signal), `exited`, `status`, and `error`
/// only when the exit was not clean.
pub fn end_event(status: ExitStatus) -> EndEvent {
    match status {
        ExitStatus::Exited(code) => {
            let text = format!("exit status {code}");
            EndEvent {
                exit_code: code,
                exited: true,
                error: (code != 0).then(|| text.clone()),
                status: text,
            }
        }
        ExitStatus::Signaled { signal, core_dumped } => {
            let mut text = format!("signal: {}", signal_name(signal));
            if core_dumped {
                text.push_str(" (core dumped)");
            }
            EndEvent {
                exit_code: -1,
                exited: false,
                error: Some(text.clone()),
                status: text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_wording() {
        let e = end_event(ExitStatus::Exited(0));
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (0, true, "exit status 0")
        );
        assert_eq!(e.error, None);
        let e = end_event(ExitStatus::Exited(1));
        assert_eq!(e.error.as_deref(), Some("exit status 1"));
        let e = end_event(ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        });
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (-1, false, "signal: killed")
        );
        assert_eq!(e.error.as_deref(), Some("signal: killed"));
        let e = end_event(ExitStatus::Signaled {
            signal: 11,
            core_dumped: true,
        });
        assert_eq!(e.status, "signal: segmentation fault (core dumped)");
        assert_eq!(signal_name(15), "terminated");
        assert_eq!(signal_name(40), "signal 40");
    }
}
