//! The sandbox list query parser (`sandboxd_server::listing`): v1 and v2 queries, the
//! `metadata` filter, Go's QueryUnescape and the paging cursor. Any input is a query or a 400;
//! a parsed v2 limit is within 1..=100 (v1 has no paging); a decoded cursor encodes back to a token that decodes to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandboxd_server::ApiError;
use sandboxd_server::listing::{Cursor, ListQuery, MAX_LIMIT, decode_metadata_filter, query_unescape};

fn bad_request<T>(r: &Result<T, ApiError>) -> bool {
    matches!(r, Err(ApiError::BadRequest(_)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match ListQuery::parse_v2(Some(s)) {
        Ok(q) => assert!((1..=MAX_LIMIT).contains(&q.limit), "limit {}", q.limit),
        Err(e) => assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}"),
    }
    // v1 has no paging: everything in one page.
    match ListQuery::parse_v1(Some(s)) {
        Ok(q) => assert_eq!(q.limit, usize::MAX),
        Err(e) => assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}"),
    }
    let m = decode_metadata_filter(s);
    assert!(m.is_ok() || bad_request(&m));
    let u = query_unescape(s);
    assert!(u.is_ok() || bad_request(&u));
    match Cursor::decode(s) {
        Ok(c) => assert_eq!(Cursor::decode(&c.encode()).unwrap(), c),
        Err(e) => assert!(matches!(e, ApiError::BadRequest(_))),
    }
});
