//! Idempotent creates: a create claimed under a key (`Idempotency-Key` of the API) runs at most
//! once. The key is claimed in the registry (`sandboxd_store::IdempotencyClaim`) before the
//! create, with a fingerprint of the request; the first attempt's answer is stored and replayed.
//! A failed create frees the key. Keys are remembered for [`KEY_TTL`].

use crate::daemon::Daemon;
use crate::error::DaemonError;
use crate::params::CreateParams;
use crate::sandbox::LiveSandbox;
use sandboxd_store::IdempotencyClaim;
use std::sync::Arc;

/// How long a key is remembered.
pub const KEY_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The outcome of [`Daemon::create_once`].
#[derive(Debug)]
pub enum Idempotent {
    /// Created now; `answer` is what was recorded for replays.
    Created {
        sandbox: Arc<LiveSandbox>,
        answer: String,
    },
    /// An earlier attempt with this key and request finished: its recorded status and answer.
    Replayed { status: u16, answer: String },
}

impl Daemon {
    /// Creates the sandbox at most once per `key`. `answer` renders the created sandbox as the
    /// caller wants it replayed. Runs in its own task, so the outcome is recorded even if the
    /// caller goes away.
    pub async fn create_once(
        self: &Arc<Self>,
        key: String,
        fingerprint: String,
        params: CreateParams,
        answer: impl FnOnce(&LiveSandbox, &str) -> Result<String, String> + Send + 'static,
    ) -> Result<Idempotent, DaemonError> {
        let this = self.clone();
        match tokio::spawn(async move { this.create_once_inner(key, fingerprint, params, answer).await })
            .await
        {
            Ok(r) => r,
            Err(e) => Err(DaemonError::Internal(format!("create task failed: {e}"))),
        }
    }

    async fn create_once_inner(
        self: Arc<Self>,
        key: String,
        fingerprint: String,
        params: CreateParams,
        answer: impl FnOnce(&LiveSandbox, &str) -> Result<String, String>,
    ) -> Result<Idempotent, DaemonError> {
        let now = chrono::Utc::now();
        let (now_us, expire_us) = (now.timestamp_micros(), (now - KEY_TTL).timestamp_micros());
        let (k, run) = (key.clone(), self.run_id.clone());
        let claim = self
            .registry
            .call(move |s| s.idempotency_claim(&k, &fingerprint, &run, now_us, expire_us))
            .await?;
        match claim {
            IdempotencyClaim::Mismatch => Err(DaemonError::IdempotencyMismatch(key)),
            IdempotencyClaim::InProgress => Err(DaemonError::IdempotencyInProgress(key)),
            IdempotencyClaim::OutcomeUnknown => Err(DaemonError::IdempotencyOutcomeUnknown(key)),
            IdempotencyClaim::Done { status, body } => {
                tracing::info!(key = %key, "idempotent create replayed");
                Ok(Idempotent::Replayed { status, answer: body })
            }
            IdempotencyClaim::Claimed => match self.create(params).await {
                Ok(s) => {
                    let body = answer(&s, &self.domain)
                        .map_err(|e| DaemonError::Internal(format!("encoding response: {e}")))?;
                    let (k, b) = (key.clone(), body.clone());
                    if let Err(e) = self
                        .registry
                        .call(move |st| st.idempotency_finish(&k, 201, &b))
                        .await
                    {
                        // the sandbox exists: answer it; a retry with this key gets 409 until expiry
                        tracing::error!(key = %key, sandbox = %s.id(), "recording the idempotent create: {e}");
                    }
                    Ok(Idempotent::Created {
                        sandbox: s,
                        answer: body,
                    })
                }
                Err(e) => {
                    let k = key.clone();
                    if let Err(de) = self.registry.call(move |st| st.idempotency_release(&k)).await {
                        tracing::error!(key = %key, "releasing the key of a failed create: {de}");
                    }
                    Err(e)
                }
            },
        }
    }
}
