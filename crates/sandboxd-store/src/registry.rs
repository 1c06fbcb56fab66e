//! The registry for async callers: every call runs on tokio's blocking pool, never on an async
//! worker (SQLite calls block on disk; a `synchronous=FULL` commit waits for an fsync).

use crate::{Store, StoreError};
use std::sync::Arc;

/// An async handle on the [`Store`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<Store>,
}

impl Registry {
    /// A handle on an opened store.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// The store itself, for synchronous callers (start-up, tests).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs `f` on the blocking pool and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::TaskFailed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_off_the_async_worker() {
        let reg = Registry::new(Arc::new(Store::open_in_memory().unwrap()));
        // a current-thread runtime runs its tasks on the test's thread
        let worker = std::thread::current().id();
        let ran_on = reg.call(|_| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(ran_on, worker, "the call ran on the async worker");
        assert!(reg.call(|s| s.list()).await.unwrap().is_empty());
    }
}
