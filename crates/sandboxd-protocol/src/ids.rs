//! The sandbox-id rule, shared by the daemon (ids in URLs, hosts and queries) and the runtime
//! (ids that name directories and cgroups).

/// Longest sandbox id accepted (generated ids have 21 characters).
pub const MAX_SANDBOX_ID_LEN: usize = 64;

/// Whether `id` is a valid sandbox id: `^[a-z0-9]{1,64}$`.
pub fn is_valid_sandbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SANDBOX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids() {
        assert!(is_valid_sandbox_id("i0abc"));
        assert!(is_valid_sandbox_id(&"a".repeat(64)));
        for bad in ["", "ABC", "a-b", "../x", "a b", "é"] {
            assert!(!is_valid_sandbox_id(bad), "{bad:?}");
        }
        assert!(!is_valid_sandbox_id(&"a".repeat(65)));
    }
}
