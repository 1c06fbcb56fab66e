//! Per-step cost of a create, from the timing lines the namespace runtime prints to the
//! daemon's stderr when `SANDBOXD_RUNTIME_TIMING` is set:
//!
//! ```text
//! timing <id>: dirs 769.067µs spawn 4.625259ms
//! timing <id>: cgroups 964.199µs
//! spawn helper: <id>: cloned at 983.984µs
//! spawn helper: maps written at 1.066206ms
//! sandbox init: overlays at 2.289352ms          (cumulative, same clock as "cloned at")
//! spawn helper: <id>: go sent at 1.08ms, exec done at 3.70ms
//! timing <id>: total spawn 5.769172ms ready 6.230951ms
//! ```
//!
//! The format is the runtime's debug output, not a contract: lines that do not parse are
//! ignored, and an empty breakdown is reported as such.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Parses a Rust `Debug` duration (`12ns`, `3.5µs`, `4.62ms`, `1.2s`) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches(',');
    let (num, mul) = if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("µs").or_else(|| s.strip_suffix("us")) {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    v.is_finite().then_some(v * mul)
}

/// One step of the breakdown: its median over the parsed creates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub step: String,
    pub p50_ms: f64,
    pub n: usize,
}

/// The per-step medians, in the order the steps happen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Creates with a complete set of timing lines.
    pub creates: usize,
    pub steps: Vec<Step>,
    /// Median of the runtime's "total spawn" + "ready" (the backend's whole create).
    pub backend_total_p50_ms: Option<f64>,
}

#[derive(Default)]
struct PerSandbox {
    /// Cumulative marks on the spawn helper's clock.
    marks: Vec<(String, f64)>,
    dirs: Option<f64>,
    cgroups: Option<f64>,
    spawn: Option<f64>,
    total_spawn: Option<f64>,
    ready: Option<f64>,
}

fn touch<'a>(
    by_id: &'a mut HashMap<String, PerSandbox>,
    order: &mut Vec<String>,
    id: &str,
) -> &'a mut PerSandbox {
    if !by_id.contains_key(id) {
        order.push(id.to_string());
    }
    by_id.entry(id.to_string()).or_default()
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    crate::stats::percentile(v, 50.0)
}

/// Parses the daemon's stderr text.
pub fn parse(log: &str) -> Breakdown {
    let mut by_id: HashMap<String, PerSandbox> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut cur: Option<String> = None;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("timing ") {
            let Some((id, what)) = rest.split_once(": ") else {
                continue;
            };
            let w: Vec<&str> = what.split_whitespace().collect();
            let s = touch(&mut by_id, &mut order, id);
            match w.as_slice() {
                ["dirs", a, "spawn", b] => {
                    s.dirs = parse_duration_ms(a);
                    s.spawn = parse_duration_ms(b);
                }
                ["cgroups", c] => s.cgroups = parse_duration_ms(c),
                ["total", "spawn", a, "ready", b] => {
                    s.total_spawn = parse_duration_ms(a);
                    s.ready = parse_duration_ms(b);
                }
                _ => {}
            }
        } else if let Some(rest) = line.strip_prefix("spawn helper: ") {
            if let Some(t) = rest.strip_prefix("maps written at ") {
                if let (Some(id), Some(t)) = (cur.as_deref(), parse_duration_ms(t))
                    && let Some(s) = by_id.get_mut(id)
                {
                    s.marks.push(("helper: uid/gid maps, OOM score".into(), t));
                }
                continue;
            }
            let Some((id, what)) = rest.split_once(": ") else {
                continue;
            };
            let s = touch(&mut by_id, &mut order, id);
            if let Some(t) = what.strip_prefix("cloned at ") {
                cur = Some(id.to_string());
                if let Some(t) = parse_duration_ms(t) {
                    s.marks.push(("helper: clone into new namespaces".into(), t));
                }
            } else if let Some((_, e)) = what.split_once("exec done at ")
                && let Some(t) = parse_duration_ms(e)
            {
                s.marks
                    .push(("init: exec of the agent (until exec succeeded)".into(), t));
            }
        } else if let Some(rest) = line.strip_prefix("sandbox init: ")
            && let Some((label, t)) = rest.rsplit_once(" at ")
            && let (Some(id), Some(t)) = (cur.as_deref(), parse_duration_ms(t))
            && let Some(s) = by_id.get_mut(id)
        {
            s.marks.push((format!("init: {label}"), t));
        }
    }

    let mut deltas: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
    let mut simple: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut backend = Vec::new();
    let mut creates = 0;
    for id in &order {
        let Some(s) = by_id.get_mut(id) else { continue };
        let (Some(total), Some(ready)) = (s.total_spawn, s.ready) else {
            continue;
        };
        creates += 1;
        backend.push(total + ready);
        s.marks.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut prev = 0.0;
        for (label, t) in &s.marks {
            let d = deltas.entry(label.clone()).or_default();
            d.0.push(t - prev);
            d.1.push(*t);
            prev = *t;
        }
        let helper_end = s.marks.last().map(|m| m.1);
        if let Some(v) = s.dirs {
            simple
                .entry("daemon: sandbox dirs, hosts/hostname/boot_id files")
                .or_default()
                .push(v);
        }
        if let Some(v) = s.cgroups {
            simple
                .entry("daemon: create cgroups, write limits")
                .or_default()
                .push(v);
        }
        if let (Some(sp), Some(cg), Some(he)) = (s.spawn, s.cgroups, helper_end) {
            simple
                .entry("daemon: helper round trip, fds, config memfd (rest of spawn)")
                .or_default()
                .push((sp - cg - he).max(0.0));
        }
        if let (Some(ts), Some(d), Some(sp)) = (s.total_spawn, s.dirs, s.spawn) {
            simple
                .entry("daemon: blocking-task hop around spawn")
                .or_default()
                .push((ts - d - sp).max(0.0));
        }
        simple
            .entry("agent: boot until it answers on its socket")
            .or_default()
            .push(ready);
    }

    let mut steps: Vec<(f64, Step)> = Vec::new();
    let mut push_simple = |name: &'static str, pos: f64, steps: &mut Vec<(f64, Step)>| {
        if let Some(v) = simple.get_mut(name)
            && let Some(m) = median(v)
        {
            steps.push((
                pos,
                Step {
                    step: name.to_string(),
                    p50_ms: m,
                    n: v.len(),
                },
            ));
        }
    };
    push_simple(
        "daemon: sandbox dirs, hosts/hostname/boot_id files",
        -3.0,
        &mut steps,
    );
    push_simple("daemon: create cgroups, write limits", -2.0, &mut steps);
    for (label, (d, t)) in deltas.iter_mut() {
        if let (Some(m), Some(pos)) = (median(d), median(t)) {
            steps.push((
                pos,
                Step {
                    step: label.clone(),
                    p50_ms: m,
                    n: d.len(),
                },
            ));
        }
    }
    push_simple(
        "daemon: helper round trip, fds, config memfd (rest of spawn)",
        1e9,
        &mut steps,
    );
    push_simple("daemon: blocking-task hop around spawn", 1e9 + 1.0, &mut steps);
    push_simple(
        "agent: boot until it answers on its socket",
        1e9 + 2.0,
        &mut steps,
    );
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    Breakdown {
        creates,
        steps: steps.into_iter().map(|(_, s)| s).collect(),
        backend_total_p50_ms: median(&mut backend),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let close = |s: &str, want: f64| {
            let got = parse_duration_ms(s).unwrap();
            assert!((got - want).abs() < 1e-9, "{s}: {got} != {want}");
        };
        close("769.067µs", 0.769067);
        close("4.5ms", 4.5);
        close("1.25s", 1250.0);
        close("500ns", 0.0005);
        close("12us", 0.012);
        close("3.0ms,", 3.0);
        assert_eq!(parse_duration_ms("fast"), None);
        assert_eq!(parse_duration_ms("ms"), None);
    }

    const LOG: &str = "\
timing iaaa: cgroups 1ms
spawn helper: iaaa: cloned at 1ms
spawn helper: maps written at 1.5ms
sandbox init: go at 1.6ms
sandbox init: overlays at 2.6ms
sandbox init: pivot at 3ms
spawn helper: iaaa: go sent at 1.55ms, exec done at 4ms
timing iaaa: dirs 0.5ms spawn 6ms
\x1b[2m2026-11-22T03:39:14Z\x1b[0m INFO sandbox created
timing iaaa: total spawn 7ms ready 5ms
timing ibbb: cgroups 3ms
spawn helper: ibbb: cloned at 1ms
spawn helper: maps written at 1.5ms
sandbox init: go at 1.6ms
sandbox init: overlays at 4.6ms
sandbox init: pivot at 5ms
spawn helper: ibbb: go sent at 1.55ms, exec done at 6ms
timing ibbb: dirs 1.5ms spawn 10ms
timing ibbb: total spawn 12ms ready 7ms
timing iccc: cgroups 3ms
";

    #[test]
    fn breakdown_from_log() {
        let b = parse(LOG);
        assert_eq!(b.creates, 2, "iccc has no total line");
        let get = |name: &str| {
            b.steps
                .iter()
                .find(|s| s.step == name)
                .unwrap_or_else(|| panic!("{name} missing in {:?}", b.steps))
                .p50_ms
        };
        // Nearest-rank median of two samples is the smaller one.
        assert_eq!(get("daemon: create cgroups, write limits"), 1.0);
        assert_eq!(get("helper: clone into new namespaces"), 1.0);
        assert!((get("helper: uid/gid maps, OOM score") - 0.5).abs() < 1e-9);
        assert!((get("init: overlays") - 1.0).abs() < 1e-9);
        assert!((get("init: exec of the agent (until exec succeeded)") - 1.0).abs() < 1e-9);
        assert_eq!(get("agent: boot until it answers on its socket"), 5.0);
        // spawn - cgroups - helper end: iaaa 6-1-4 = 1, ibbb 10-3-6 = 1
        assert!((get("daemon: helper round trip, fds, config memfd (rest of spawn)") - 1.0).abs() < 1e-9);
        assert_eq!(b.backend_total_p50_ms, Some(12.0));
        // In order of occurrence: dirs and cgroups first, agent boot last.
        assert_eq!(
            b.steps[0].step,
            "daemon: sandbox dirs, hosts/hostname/boot_id files"
        );
        assert_eq!(
            b.steps.last().unwrap().step,
            "agent: boot until it answers on its socket"
        );
        let clone = b
            .steps
            .iter()
            .position(|s| s.step.starts_with("helper: clone"))
            .unwrap();
        let pivot = b.steps.iter().position(|s| s.step == "init: pivot").unwrap();
        assert!(clone < pivot);
    }

    #[test]
    fn garbage_gives_empty() {
        let b = parse("hello\ntiming x\nsandbox init: nothing\n");
        assert_eq!(b.creates, 0);
        assert!(b.steps.is_empty());
        assert_eq!(b.backend_total_p50_ms, None);
    }
}
