//! The `idempotency_keys` table: `Idempotency-Key`s of `POST /v2/sandboxes`, so a retried
//! create answers with the sandbox of the first attempt (`docs/control-plane.md`). Rows expire
//! after a bounded time and outlive daemon restarts.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// What a claim of an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free: it is now pending for this request, which must then
    /// [`Store::idempotency_finish`] or [`Store::idempotency_release`] it.
    Claimed,
    /// The key was used with another request body.
    Mismatch,
    /// A request with this key is still being served by this daemon run.
    InProgress,
    /// A request with this key was in progress when an earlier daemon run stopped: whether it
    /// created a sandbox is not known.
    OutcomeUnknown,
    /// Done: the stored response.
    Done {
        /// HTTP status of the stored response.
        status: u16,
        /// Its body.
        body: String,
    },
}

impl Store {
    /// Claims `key` for a request with `fingerprint` (a hash of its body), served by daemon
    /// run `run_id`. Keys older than `expire_before_us` (Unix µs) are forgotten first.
    pub fn idempotency_claim(
        &self,
        key: &str,
        fingerprint: &str,
        run_id: &str,
        now_us: i64,
        expire_before_us: i64,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM idempotency_keys WHERE created_at_us < ?1",
            params![expire_before_us],
        )?;
        let row: Option<(String, String, Option<u16>, Option<String>)> = tx
            .query_row(
                "SELECT fingerprint, run_id, status, body FROM idempotency_keys WHERE key = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let claim = match row {
            None => {
                tx.execute(
                    "INSERT INTO idempotency_keys (key, fingerprint, run_id, created_at_us) VALUES (?1, ?2, ?3, ?4)",
                    params![key, fingerprint, run_id, now_us],
                )?;
                IdempotencyClaim::Claimed
            }
            Some((fp, _, _, _)) if fp != fingerprint => IdempotencyClaim::Mismatch,
            Some((_, _, Some(status), Some(body))) => IdempotencyClaim::Done { status, body },
            Some((_, run, _, _)) if run == run_id => IdempotencyClaim::InProgress,
            Some(_) => IdempotencyClaim::OutcomeUnknown,
        };
        tx.commit()?;
        Ok(claim)
    }

    /// Stores the response of a claimed key.
    pub fn idempotency_finish(&self, key: &str, status: u16, body: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE idempotency_keys SET status = ?2, body = ?3 WHERE key = ?1",
            params![key, status, body],
        )?;
        Ok(())
    }

    /// Forgets a claimed key whose request failed (a retry may try again).
    pub fn idempotency_release(&self, key: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM idempotency_keys WHERE key = ?1 AND status IS NULL",
            params![key],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_finish_replay_mismatch_release_expire() {
        let s = Store::open_in_memory().unwrap();
        let claim = |key: &str, fp: &str, run: &str, now: i64| {
            s.idempotency_claim(key, fp, run, now, now - 100).unwrap()
        };
        assert_eq!(claim("k", "a", "r1", 1000), IdempotencyClaim::Claimed);
        assert_eq!(claim("k", "a", "r1", 1001), IdempotencyClaim::InProgress);
        assert_eq!(claim("k", "b", "r1", 1001), IdempotencyClaim::Mismatch);
        // pending from an earlier run
        assert_eq!(claim("k", "a", "r2", 1002), IdempotencyClaim::OutcomeUnknown);
        s.idempotency_finish("k", 201, "{\"x\":1}").unwrap();
        assert_eq!(
            claim("k", "a", "r2", 1003),
            IdempotencyClaim::Done {
                status: 201,
                body: "{\"x\":1}".into()
            }
        );
        assert_eq!(claim("k", "b", "r2", 1003), IdempotencyClaim::Mismatch);
        // a finished key is not released
        s.idempotency_release("k").unwrap();
        assert!(matches!(
            claim("k", "a", "r2", 1004),
            IdempotencyClaim::Done { .. }
        ));
        // a failed request's key is free again
        assert_eq!(claim("f", "a", "r1", 1004), IdempotencyClaim::Claimed);
        s.idempotency_release("f").unwrap();
        assert_eq!(claim("f", "b", "r1", 1005), IdempotencyClaim::Claimed);
        // expired keys are forgotten
        assert_eq!(claim("k", "b", "r1", 1200), IdempotencyClaim::Claimed);
    }

    #[test]
    fn keys_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(
                s.idempotency_claim("k", "a", "r1", 10, 0).unwrap(),
                IdempotencyClaim::Claimed
            );
            s.idempotency_finish("k", 201, "{}").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert!(matches!(
            s.idempotency_claim("k", "a", "r2", 11, 0).unwrap(),
            IdempotencyClaim::Done { status: 201, .. }
        ));
    }
}
