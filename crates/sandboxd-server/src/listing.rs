//! Query parsing, filtering, ordering and paging of sandbox lists (`GET /v2/sandboxes` in `api/openapi.yaml`).

use crate::error::ApiError;
use crate::ids::parse_query_time;
use crate::query::first_values;
use base64::Engine;
use chrono::{DateTime, Utc};
use sandboxd_daemon::SandboxView;
use sandboxd_store::SandboxState;
use std::collections::BTreeMap;

/// Largest and default page size.
pub const MAX_LIMIT: usize = 100;

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` is a byte, a bad escape is an error. The
/// result must be UTF-8.
pub fn query_unescape(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::BadRequest(format!("invalid URL escape in '{s}'")))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest(format!("'{s}' is not valid UTF-8")))
}

/// Decodes the `metadata` filter as upstream does, after normal query decoding of the
/// parameter: unescape the whole string, split on `&` and each part on `=` (exactly two
/// pieces), unescape key and value again. An empty string is no filter.
pub fn decode_metadata_filter(param: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    if param.is_empty() {
        return Ok(out);
    }
    let whole = query_unescape(param)?;
    for pair in whole.split('&') {
        let parts: Vec<&str> = pair.split('=').collect();
        if parts.len() != 2 {
            return Err(ApiError::BadRequest(format!(
                "invalid metadata filter '{pair}': expected key=value"
            )));
        }
        out.insert(query_unescape(parts[0])?, query_unescape(parts[1])?);
    }
    Ok(out)
}

/// List order by `startedAt` (ties by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// A parsed `GET /v2/sandboxes` (or v1) query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub metadata: BTreeMap<String, String>,
    pub states: Vec<SandboxState>,
    pub order: Order,
    pub started_after: Option<DateTime<Utc>>,
    /// Template name (namespace stripped); resolved by the caller.
    pub template: Option<String>,
    pub limit: usize,
    pub after: Option<Cursor>,
}

/// Position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub started_at_us: i64,
    pub id: String,
}

impl Cursor {
    /// The opaque token form.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}.{}", self.started_at_us, self.id))
    }

    /// Parses a token (400 `Invalid next token` when malformed).
    pub fn decode(token: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::BadRequest("Invalid next token".into());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (us, id) = raw.split_once('.').ok_or_else(bad)?;
        let started_at_us = us.parse().map_err(|_| bad())?;
        if !crate::ids::is_valid_sandbox_id(id) {
            return Err(bad());
        }
        Ok(Self {
            started_at_us,
            id: id.to_string(),
        })
    }
}

impl ListQuery {
    /// Parses the v2 list query.
    pub fn parse_v2(query: Option<&str>) -> Result<Self, ApiError> {
        let q = first_values(query);
        let metadata = decode_metadata_filter(q.get("metadata").map_or("", String::as_str))?;
        let states = match q.get("state") {
            None => vec![SandboxState::Running, SandboxState::Paused],
            Some(s) => {
                let mut states = Vec::new();
                for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let st = match part {
                        "running" => SandboxState::Running,
                        "paused" => SandboxState::Paused,
                        other => {
                            return Err(ApiError::BadRequest(format!(
                                "invalid state '{other}': expected running or paused"
                            )));
                        }
                    };
                    if !states.contains(&st) {
                        states.push(st);
                    }
                }
                if states.is_empty() {
                    vec![SandboxState::Running, SandboxState::Paused]
                } else {
                    states
                }
            }
        };
        let order = match q.get("order").map(String::as_str) {
            None | Some("desc") => Order::Desc,
            Some("asc") => Order::Asc,
            Some(o) => {
                return Err(ApiError::BadRequest(format!(
                    "invalid order '{o}': expected asc or desc"
                )));
            }
        };
        let started_after = q.get("startedAfter").map(|s| parse_query_time(s)).transpose()?;
        let template = match q.get("template") {
            None => None,
            Some(t) if t.contains(':') => {
                return Err(ApiError::BadRequest(
                    "template filter must not contain a tag".into(),
                ));
            }
            Some(t) => Some(t.rsplit('/').next().unwrap_or_default().to_string()),
        };
        let limit = match q.get("limit") {
            None => MAX_LIMIT,
            Some(l) => match l.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "invalid limit '{l}': expected 1..{MAX_LIMIT}"
                    )));
                }
            },
        };
        let after = q
            .get("nextToken")
            .filter(|t| !t.is_empty())
            .map(|t| Cursor::decode(t))
            .transpose()?;
        Ok(Self {
            metadata,
            states,
            order,
            started_after,
            template,
            limit,
            after,
        })
    }

    /// Parses the deprecated v1 list query (`metadata` only; running sandboxes; no paging).
    pub fn parse_v1(query: Option<&str>) -> Result<Self, ApiError> {
        let q = first_values(query);
        Ok(Self {
            metadata: decode_metadata_filter(q.get("metadata").map_or("", String::as_str))?,
            states: vec![SandboxState::Running],
            order: Order::Desc,
            started_after: None,
            template: None,
            limit: usize::MAX,
            after: None,
        })
    }
}

/// What the list needs from a sandbox.
pub trait Listable {
    fn list_id(&self) -> &str;
    fn list_started_at(&self) -> DateTime<Utc>;
    fn list_state(&self) -> SandboxState;
    fn list_template(&self) -> &str;
    fn list_metadata(&self) -> &BTreeMap<String, String>;
}

/// Filters, orders and pages `items`. `template` is the resolved template id (the caller
/// answers `[]` for an unknown template). Returns the page and the token of the next page,
/// present only when more items follow.
pub fn page<T: Listable>(
    mut items: Vec<T>,
    q: &ListQuery,
    template: Option<&str>,
) -> (Vec<T>, Option<String>) {
    items.retain(|s| {
        q.states.contains(&s.list_state())
            && template.is_none_or(|t| s.list_template() == t)
            && q.started_after
                .is_none_or(|t| s.list_started_at().timestamp_micros() >= t.timestamp_micros())
            && q.metadata
                .iter()
                .all(|(k, v)| s.list_metadata().get(k) == Some(v))
    });
    let key = |s: &T| (s.list_started_at().timestamp_micros(), s.list_id().to_string());
    items.sort_by_key(key);
    if q.order == Order::Desc {
        items.reverse();
    }
    if let Some(c) = &q.after {
        let c = (c.started_at_us, c.id.clone());
        items.retain(|s| match q.order {
            Order::Asc => key(s) > c,
            Order::Desc => key(s) < c,
        });
    }
    let more = items.len() > q.limit;
    items.truncate(q.limit);
    let token = more.then(|| items.last()).flatten().map(|last| {
        Cursor {
            started_at_us: last.list_started_at().timestamp_micros(),
            id: last.list_id().to_string(),
        }
        .encode()
    });
    (items, token)
}

impl Listable for SandboxView {
    fn list_id(&self) -> &str {
        &self.rec.id
    }
    fn list_started_at(&self) -> DateTime<Utc> {
        self.rec.started_at
    }
    fn list_state(&self) -> SandboxState {
        self.state
    }
    fn list_template(&self) -> &str {
        &self.rec.template_id
    }
    fn list_metadata(&self) -> &BTreeMap<String, String> {
        &self.rec.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn metadata_layers_decode_like_upstream() {
        // Captured from SDK 2.45.1 for {"sandbox_test_id":"test_ab c","k=":"v&"}.
        let q = ListQuery::parse_v2(Some(
            "metadata=sandbox_test_id%3Dtest_ab%252520c%26k%25253D%3Dv%252526",
        ))
        .unwrap();
        assert_eq!(
            q.metadata,
            BTreeMap::from([
                ("sandbox_test_id".to_string(), "test_ab c".to_string()),
                ("k=".to_string(), "v&".to_string())
            ])
        );
    }

    #[test]
    fn metadata_errors() {
        assert!(decode_metadata_filter("").unwrap().is_empty());
        assert_eq!(decode_metadata_filter("novalue").unwrap_err().status(), 400);
        assert_eq!(decode_metadata_filter("a=b=c").unwrap_err().status(), 400);
        assert_eq!(decode_metadata_filter("a=%zz").unwrap_err().status(), 400);
        assert_eq!(decode_metadata_filter("a=%ff").unwrap_err().status(), 400);
        assert_eq!(decode_metadata_filter("a=%2").unwrap_err().status(), 400);
        assert_eq!(
            query_unescape("%+1").unwrap_err().status(),
            400,
            "sign is not a hex digit"
        );
        assert_eq!(query_unescape("%-1").unwrap_err().status(), 400);
        assert_eq!(query_unescape("%4a").unwrap(), "J");
        assert_eq!(
            decode_metadata_filter("a=x+y").unwrap(),
            BTreeMap::from([("a".to_string(), "x y".to_string())])
        );
    }

    #[test]
    fn v2_defaults_and_validation() {
        let q = ListQuery::parse_v2(None).unwrap();
        assert_eq!(q.states, [SandboxState::Running, SandboxState::Paused]);
        assert_eq!(q.order, Order::Desc);
        assert_eq!(q.limit, 100);
        assert!(q.after.is_none() && q.template.is_none() && q.started_after.is_none());

        let q = ListQuery::parse_v2(Some("state=paused&order=asc&limit=1&template=team%2Fbase")).unwrap();
        assert_eq!(q.states, [SandboxState::Paused]);
        assert_eq!(q.order, Order::Asc);
        assert_eq!(q.limit, 1);
        assert_eq!(q.template.as_deref(), Some("base"));

        for bad in [
            "state=dead",
            "order=up",
            "limit=0",
            "limit=101",
            "limit=x",
            "template=base:v1",
            "nextToken=%%%",
            "nextToken=bm90YXRva2Vu",
            "startedAfter=never",
        ] {
            assert_eq!(ListQuery::parse_v2(Some(bad)).unwrap_err().status(), 400, "{bad}");
        }
    }

    #[derive(Clone, Debug)]
    struct Item {
        id: String,
        t: DateTime<Utc>,
        state: SandboxState,
        md: BTreeMap<String, String>,
    }
    impl Listable for Item {
        fn list_id(&self) -> &str {
            &self.id
        }
        fn list_started_at(&self) -> DateTime<Utc> {
            self.t
        }
        fn list_state(&self) -> SandboxState {
            self.state
        }
        fn list_template(&self) -> &str {
            "base"
        }
        fn list_metadata(&self) -> &BTreeMap<String, String> {
            &self.md
        }
    }

    fn item(id: &str, us: i64, state: SandboxState) -> Item {
        Item {
            id: id.into(),
            t: Utc.timestamp_micros(us).unwrap(),
            state,
            md: BTreeMap::from([("tag".to_string(), "x".to_string())]),
        }
    }

    fn ids(v: &[Item]) -> Vec<&str> {
        v.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn paging_desc_then_asc_with_ties_by_id() {
        let items = vec![
            item("a", 10, SandboxState::Running),
            item("c", 20, SandboxState::Paused),
            item("b", 20, SandboxState::Running),
            item("d", 30, SandboxState::Running),
        ];
        let mut q = ListQuery::parse_v2(Some("limit=2")).unwrap();
        let (p1, t1) = page(items.clone(), &q, None);
        assert_eq!(ids(&p1), ["d", "c"]);
        q.after = Some(Cursor::decode(t1.as_deref().unwrap()).unwrap());
        let (p2, t2) = page(items.clone(), &q, None);
        assert_eq!(ids(&p2), ["b", "a"]);
        assert!(t2.is_none(), "no token on the last page");

        let q = ListQuery::parse_v2(Some("order=asc&limit=3")).unwrap();
        let (p, t) = page(items.clone(), &q, None);
        assert_eq!(ids(&p), ["a", "b", "c"]);
        let mut q2 = q.clone();
        q2.after = Some(Cursor::decode(&t.unwrap()).unwrap());
        assert_eq!(ids(&page(items.clone(), &q2, None).0), ["d"]);

        // Exactly `limit` items: no token.
        let q = ListQuery::parse_v2(Some("limit=4")).unwrap();
        assert!(page(items, &q, None).1.is_none());
    }

    #[test]
    fn filters_state_started_after_metadata_template() {
        let mut other = item("e", 40, SandboxState::Running);
        other.md.insert("tag".into(), "y".into());
        let items = vec![
            item("a", 10, SandboxState::Running),
            item("b", 20, SandboxState::Paused),
            other,
        ];
        let q = ListQuery::parse_v2(Some("state=running")).unwrap();
        assert_eq!(ids(&page(items.clone(), &q, None).0), ["e", "a"]);
        // startedAfter is inclusive at microsecond precision.
        let q = ListQuery::parse_v2(Some("startedAfter=1970-01-01T00:00:00.000020%2B00:00")).unwrap();
        assert_eq!(ids(&page(items.clone(), &q, None).0), ["e", "b"]);
        let q = ListQuery::parse_v2(Some("startedAfter=1970-01-01T00:00:00.000021Z")).unwrap();
        assert_eq!(ids(&page(items.clone(), &q, None).0), ["e"]);
        let q = ListQuery::parse_v2(Some("metadata=tag%3Dx")).unwrap();
        assert_eq!(ids(&page(items.clone(), &q, None).0), ["b", "a"]);
        let q = ListQuery::parse_v2(None).unwrap();
        assert!(page(items.clone(), &q, Some("other")).0.is_empty());
        assert_eq!(page(items, &q, Some("base")).0.len(), 3);
    }

    #[test]
    fn cursor_roundtrip() {
        let c = Cursor {
            started_at_us: 1_767_323_045_123_456,
            id: "iabc".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    }
}
