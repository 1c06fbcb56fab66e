//! Percentiles and summaries of samples.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Nearest-rank percentile of sorted samples: the smallest value such that at least `p` percent
/// of the samples are less than or equal to it. `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50/p90/p99 and friends of a set of samples, in the unit given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Unit of every value: `ms`, `MB/s`, `entries/s`, ...
    pub unit: String,
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summary of `samples` (any order); `None` when there are none or one is not finite.
    pub fn of(samples: &[f64], unit: &str) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        Some(Summary {
            unit: unit.to_string(),
            n: s.len(),
            min: s[0],
            p50: percentile(&s, 50.0)?,
            p90: percentile(&s, 90.0)?,
            p99: percentile(&s, 99.0)?,
            max: s[s.len() - 1],
            mean,
        })
    }

    /// Summary of durations, in milliseconds.
    pub fn of_durations(samples: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        Summary::of(&ms, "ms")
    }
}

/// Ratio of a value to a baseline value, when both are usable.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0 && value.is_finite() && baseline.is_finite()).then(|| value / baseline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 90.0), Some(90.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&s, 100.0), Some(100.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        // Ten samples: p99 is the largest, p50 the fifth.
        let t: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&t, 99.0), Some(10.0));
        assert_eq!(percentile(&t, 50.0), Some(5.0));
        assert_eq!(percentile(&t, 91.0), Some(10.0));
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Out-of-range p is clamped.
        assert_eq!(percentile(&t, 150.0), Some(10.0));
        assert_eq!(percentile(&t, -5.0), Some(1.0));
    }

    #[test]
    fn summary_sorts_and_averages() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0], "ms").unwrap();
        assert_eq!((s.n, s.min, s.max), (5, 1.0, 5.0));
        assert_eq!((s.p50, s.p90, s.p99), (3.0, 5.0, 5.0));
        assert!((s.mean - 3.0).abs() < 1e-12);
        assert_eq!(s.unit, "ms");
        assert!(Summary::of(&[], "ms").is_none());
        assert!(Summary::of(&[1.0, f64::NAN], "ms").is_none());
    }

    #[test]
    fn durations_in_ms() {
        let s = Summary::of_durations(&[Duration::from_micros(1500), Duration::from_millis(3)]).unwrap();
        assert_eq!(s.p50, 1.5);
        assert_eq!(s.max, 3.0);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(10.0, 4.0), Some(2.5));
        assert_eq!(ratio(10.0, 0.0), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
    }
}
