//! Name rules of the namespace backend: sandbox ids (one rule, shared with the daemon through
//! `sandboxd_protocol::ids`), template names and hostnames.

pub use sandboxd_protocol::ids::is_valid_sandbox_id;

pub(super) fn valid_template(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub(super) fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert!(is_valid_sandbox_id("abc123"));
        assert!(!is_valid_sandbox_id(""));
        assert!(!is_valid_sandbox_id("ABC"));
        assert!(!is_valid_sandbox_id("a-b"));
        assert!(!is_valid_sandbox_id("../x"));
        assert!(!is_valid_sandbox_id(&"a".repeat(65)));
        assert!(valid_template("base"));
        assert!(valid_template("code-interpreter-v1"));
        assert!(!valid_template(".stale-base-1"));
        assert!(!valid_template("a/b"));
        assert!(valid_hostname("sandbox"));
        assert!(!valid_hostname("-x"));
        assert!(!valid_hostname("a b"));
        assert!(!valid_hostname(&"h".repeat(64)));
    }
}
