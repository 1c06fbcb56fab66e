//! Sandbox ids and secret tokens.

use rand::Rng;

const ALNUM_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_from(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// A new sandbox id: `i` + 20 characters of `[a-z0-9]` (upstream's shape).
pub fn new_sandbox_id() -> String {
    format!("i{}", random_from(ALNUM_LOWER, 20))
}

/// A new secret token (envd access token, traffic token): 48 characters `[a-z0-9]`, ~248 bits.
pub fn new_token() -> String {
    random_from(ALNUM_LOWER, 48)
}

/// The one sandbox-id rule (`^[a-z0-9]{1,64}$`), shared with the runtime.
pub use sandboxd_protocol::ids::is_valid_sandbox_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_have_upstream_shape() {
        for _ in 0..100 {
            let id = new_sandbox_id();
            assert_eq!(id.len(), 21);
            assert!(id.starts_with('i'));
            assert!(is_valid_sandbox_id(&id));
        }
        assert_ne!(new_sandbox_id(), new_sandbox_id());
    }
}
