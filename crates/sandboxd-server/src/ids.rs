//! Identifiers, tokens and time formats of the E2B API.

use crate::error::ApiError;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;

/// The constant `clientID` of every `Sandbox` response (deprecated upstream, read by the SDK).
pub const CLIENT_ID: &str = "6532622b";

pub use sandboxd_daemon::ids::is_valid_sandbox_id;

/// A new API key: `e2b_` + 40 hex digits (the SDK's client-side check wants `e2b_[0-9a-f]+`).
pub fn new_api_key() -> String {
    let mut bytes = [0u8; 20];
    rand::rng().fill(&mut bytes);
    format!("e2b_{}", hex::encode(bytes))
}

/// A sandbox id from a URL path: a `-<clientID>` suffix is removed, the rest must match
/// `^[a-z0-9]{1,64}$` (else 400 `Invalid sandbox ID`).
pub fn parse_path_sandbox_id(raw: &str) -> Result<String, ApiError> {
    let id = raw.split('-').next().unwrap_or_default();
    if is_valid_sandbox_id(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::BadRequest("Invalid sandbox ID".into()))
    }
}

/// RFC 3339 in UTC with exactly six fractional digits, for example
/// `2026-01-02T03:04:05.123456Z` (`dateutil.isoparse` reads it; the SDK compares these strings).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses an RFC 3339 time from a query parameter. A `+` offset may arrive decoded as a
/// space (form decoding), which is accepted.
pub fn parse_query_time(s: &str) -> Result<DateTime<Utc>, ApiError> {
    let parse = |v: &str| DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc));
    parse(s)
        .or_else(|e| {
            if s.contains(' ') {
                parse(&s.replace(' ', "+"))
            } else {
                Err(e)
            }
        })
        .map_err(|e| ApiError::BadRequest(format!("invalid time '{s}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn api_key_format() {
        let k = new_api_key();
        assert_eq!(k.len(), 44);
        assert!(k.starts_with("e2b_"));
        assert!(
            k[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn path_ids_strip_client_suffix_and_validate() {
        assert_eq!(parse_path_sandbox_id("abc123").unwrap(), "abc123");
        assert_eq!(parse_path_sandbox_id("abc-6532622b").unwrap(), "abc");
        assert_eq!(
            parse_path_sandbox_id("nonexistingsandbox").unwrap(),
            "nonexistingsandbox"
        );
        for bad in ["", "-x", "ABC", "a_b", "a.b", "a%20b", "ü", "a b"] {
            let e = parse_path_sandbox_id(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
            assert_eq!(e.to_string(), "Invalid sandbox ID");
        }
    }

    #[test]
    fn times_have_six_fraction_digits_and_z() {
        let t = Utc.timestamp_micros(1_767_323_045_123_456).unwrap();
        assert_eq!(format_time(t), "2026-01-02T03:04:05.123456Z");
        let whole = Utc.timestamp_micros(1_767_323_045_000_000).unwrap();
        assert_eq!(format_time(whole), "2026-01-02T03:04:05.000000Z");
    }

    #[test]
    fn query_times_accept_offsets_and_decoded_plus() {
        let want = Utc.timestamp_micros(1_767_323_045_123_456).unwrap();
        assert_eq!(
            parse_query_time("2026-01-02T03:04:05.123456+00:00").unwrap(),
            want
        );
        assert_eq!(
            parse_query_time("2026-01-02T03:04:05.123456 00:00").unwrap(),
            want
        );
        assert_eq!(
            parse_query_time("2026-01-02T04:04:05.123456+01:00").unwrap(),
            want
        );
        assert_eq!(parse_query_time("2026-01-02T03:04:05.123456Z").unwrap(), want);
        assert_eq!(parse_query_time("yesterday").unwrap_err().status(), 400);
    }
}
