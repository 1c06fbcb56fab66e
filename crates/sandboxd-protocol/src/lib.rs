//! Wire types shared by the daemon, the in-sandbox agent (envd) and clients (tests, bench, CLI).
//!
//! - [`connect`]: Connect-RPC framing, error codes and error bodies (`docs/contract.md` §7).
//! - [`pj`]: serde helpers for protobuf-JSON encoding rules (int64 as strings, bytes as base64, ...).
//! - [`process`], [`filesystem`]: the envd message types (`api/envd/`, `docs/contract.md` §6).
//! - [`agent`]: the configuration the daemon hands to each sandbox's agent.
//! - [`ids`]: the sandbox-id rule.
#![expect(
    missing_docs,
    reason = "not every public item is documented yet (issue 10 item 4)"
)]

pub mod agent;
pub mod connect;
pub mod filesystem;
pub mod ids;
pub mod pj;
pub mod process;
pub mod signing;

/// The envd version advertised to SDKs (`docs/contract.md` §5).
pub const ENVD_VERSION: &str = "0.6.13";
/// The port envd listens on inside a sandbox.
pub const ENVD_PORT: u16 = 49983;
/// The port the code interpreter listens on inside a sandbox.
pub const INTERPRETER_PORT: u16 = 49999;
/// The agent service name of the code interpreter (`sandboxd interpreter`), as listed in
/// [`agent::AgentConfig::services`].
pub const INTERPRETER_SERVICE: &str = "interpreter";
