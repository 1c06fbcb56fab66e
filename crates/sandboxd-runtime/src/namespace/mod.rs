//! The Linux namespace backend (default): see `docs/namespace-backend.md`.
