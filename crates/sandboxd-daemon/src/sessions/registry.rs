//! The sessions being created (a field of the [`crate::Daemon`]).

use std::collections::HashSet;
use std::sync::Mutex;

/// Sessions being created (a second create of the same id gets 409 at once).
#[derive(Debug, Default)]
pub struct SessionRegistry {
    pub(super) creating: Mutex<HashSet<String>>,
}
