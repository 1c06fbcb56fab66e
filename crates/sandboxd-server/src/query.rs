//! Query strings: decoded `application/x-www-form-urlencoded` pairs (`+` is a space), the one
//! parser every handler and the router use.

/// Decoded query pairs, in order.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}
