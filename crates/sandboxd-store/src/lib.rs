//! The sandboxd registry (embedded SQLite): the truth about which sandboxes exist.
