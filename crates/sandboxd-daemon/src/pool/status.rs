//! The state of the warm pools, for `GET /pool`.

use super::PoolView;
use crate::daemon::Daemon;

impl Daemon {
    /// The state of every template's pool (counts only; pooled ids are never shown).
    pub fn pool_views(&self) -> Vec<PoolView> {
        self.pool.views()
    }
}
