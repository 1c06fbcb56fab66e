//! Checks of the numbers a request asks for: timeouts and resource limits.

use crate::config::{DaemonLimits, TemplateDefaults};
use crate::error::DaemonError;
use sandboxd_runtime::Limits;
use std::time::Duration;

/// Checks a timeout in seconds against the daemon maximum.
pub fn validate_timeout(secs: i64, limits: &DaemonLimits) -> Result<Duration, DaemonError> {
    if secs <= 0 {
        return Err(DaemonError::InvalidInput("Timeout must be greater than 0".into()));
    }
    let max = limits.max_timeout.as_secs();
    if secs as u64 > max {
        return Err(DaemonError::InvalidInput(format!(
            "Timeout cannot be greater than {max} seconds (this daemon's maximum)"
        )));
    }
    Ok(Duration::from_secs(secs as u64))
}

/// Template defaults, overridden by the request's `cpuCount`/`memoryMB`/`diskSizeMB`, capped
/// by the daemon maxima (a request above a maximum is a 400, not silently lowered).
pub fn resolve_limits(
    defaults: &TemplateDefaults,
    max: &DaemonLimits,
    cpu: Option<i64>,
    memory_mb: Option<i64>,
    disk_mb: Option<i64>,
) -> Result<Limits, DaemonError> {
    fn pick(name: &str, v: Option<i64>, default: u64, min: u64, max: u64) -> Result<u64, DaemonError> {
        let v = match v {
            None => return Ok(default.min(max)),
            Some(v) => v,
        };
        if v < min as i64 {
            return Err(DaemonError::InvalidInput(format!(
                "{name} must be at least {min}"
            )));
        }
        if v as u64 > max {
            return Err(DaemonError::InvalidInput(format!(
                "{name} {v} is above this daemon's maximum of {max}"
            )));
        }
        Ok(v as u64)
    }
    Ok(Limits {
        cpu_count: pick("cpuCount", cpu, defaults.cpu_count.into(), 1, max.max_cpu.into())? as u32,
        memory_mb: pick("memoryMB", memory_mb, defaults.memory_mb, 128, max.max_memory_mb)?,
        disk_mb: pick("diskSizeMB", disk_mb, defaults.disk_mb, 0, max.max_disk_mb)?,
        pids: defaults.pids,
    })
}

/// A `maxProcesses` request: 1 up to the template's task limit (raising it could let one
/// sandbox use up the host's pid space).
pub fn check_max_processes(n: i64, template_pids: u64) -> Result<u64, DaemonError> {
    if n < 1 || n as u64 > template_pids {
        return Err(DaemonError::InvalidInput(format!(
            "maxProcesses must be between 1 and {template_pids} (the template's limit), not {n}"
        )));
    }
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_processes_bounds() {
        assert_eq!(check_max_processes(5, 1024).unwrap(), 5);
        assert_eq!(check_max_processes(1024, 1024).unwrap(), 1024);
        for bad in [0, -1, 1025] {
            assert!(check_max_processes(bad, 1024).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts() {
        let l = DaemonLimits::default();
        assert_eq!(validate_timeout(300, &l).unwrap(), Duration::from_secs(300));
        for bad in [0, -5] {
            let e = validate_timeout(bad, &l).unwrap_err();
            assert_eq!(e.to_string(), "Timeout must be greater than 0");
        }
        assert!(matches!(
            validate_timeout(24 * 3600 + 1, &l),
            Err(DaemonError::InvalidInput(_))
        ));
    }

    #[test]
    fn limits_default_override_and_cap() {
        let d = TemplateDefaults::default();
        let m = DaemonLimits::default();
        let l = resolve_limits(&d, &m, None, None, None).unwrap();
        assert_eq!((l.cpu_count, l.memory_mb, l.disk_mb), (2, 512, 1024));
        let l = resolve_limits(&d, &m, Some(1), Some(1024), Some(0)).unwrap();
        assert_eq!((l.cpu_count, l.memory_mb, l.disk_mb), (1, 1024, 0));
        let e = resolve_limits(&d, &m, Some(9), None, None).unwrap_err();
        assert!(e.to_string().contains("cpuCount 9 is above"), "{e}");
        assert!(matches!(
            resolve_limits(&d, &m, None, Some(100), None),
            Err(DaemonError::InvalidInput(_))
        ));
        assert!(matches!(
            resolve_limits(&d, &m, Some(0), None, None),
            Err(DaemonError::InvalidInput(_))
        ));
        assert!(matches!(
            resolve_limits(&d, &m, None, None, Some(-1)),
            Err(DaemonError::InvalidInput(_))
        ));
        // Defaults above a lower daemon maximum are lowered, not refused.
        let small = DaemonLimits {
            max_cpu: 1,
            max_memory_mb: 256,
            ..m
        };
        let l = resolve_limits(&d, &small, None, None, None).unwrap();
        assert_eq!((l.cpu_count, l.memory_mb), (1, 256));
    }
}
