//! Signed `/files` URLs (`docs/contract.md` §6.2): the one recipe the daemon (routing by
//! signature) and the agent (checking it) share.

use base64::Engine;
use sha2::{Digest, Sha256};

/// `"v1_" + base64_std_nopad(sha256("<path>:<op>:<username>:<token>[:<expiration>]"))`.
/// `path` is the raw query value, `op` is `read` or `write`, `username` is empty when the
/// request names none, and `expiration` is the decimal text of `signature_expiration`.
pub fn file_signature(path: &str, op: &str, username: &str, token: &str, expiration: Option<&str>) -> String {
    let mut s = format!("{path}:{op}:{username}:{token}");
    if let Some(exp) = expiration {
        s.push(':');
        s.push_str(exp);
    }
    let digest = Sha256::digest(s.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe() {
        let digest = Sha256::digest(b"/home/user/a.txt:read:user:tok");
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let sig = file_signature("/home/user/a.txt", "read", "user", "tok", None);
        assert_eq!(sig, format!("v1_{}", b64.trim_end_matches('=')));
        let digest = Sha256::digest(b"a:write::tok:1700000000");
        assert_eq!(
            file_signature("a", "write", "", "tok", Some("1700000000")),
            format!(
                "v1_{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
            )
        );
    }
}
