//! Query strings: decoded `application/x-www-form-urlencoded` pairs (`+` is a space), the one
//! parser every handler and the router use.

use std::collections::HashMap;

/// Decoded query pairs, in order.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The first value of each parameter.
pub fn first_values(raw: Option<&str>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for (k, v) in query_pairs(raw) {
        map.entry(k).or_insert(v);
    }
    map
}

/// The first value of one parameter.
pub fn param(raw: Option<&str>, name: &str) -> Option<String> {
    query_pairs(raw)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_repeated_keys() {
        let q = Some("a=1&b=x+y%21&a=2&c");
        assert_eq!(
            query_pairs(q),
            [("a", "1"), ("b", "x y!"), ("a", "2"), ("c", "")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(first_values(q)["a"], "1");
        assert_eq!(param(q, "a").as_deref(), Some("1"));
        assert_eq!(param(q, "d"), None);
        assert!(query_pairs(None).is_empty());
    }
}
