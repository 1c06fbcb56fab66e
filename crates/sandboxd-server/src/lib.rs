//! The sandboxd HTTP layer (`docs/control-plane.md`): one listener, the routing decision per
//! request, the E2B REST API ([`api`], one module per resource, each handler calling one
//! [`sandboxd_daemon::Daemon`] method), the sandbox proxy ([`proxy`]) and the one place where
//! a domain error becomes a status and body ([`error`]). The domain itself is
//! `sandboxd-daemon`.
//!
//! Entry point: [`Server::bind`] with a [`ServerConfig`] and a
//! [`sandboxd_runtime::SandboxBackend`], then [`Server::run`].
#![expect(
    missing_docs,
    reason = "not every public item is documented yet (issue 10 item 4)"
)]

pub mod api;
pub mod config;
pub mod conn;
pub mod error;
pub mod fd_budget;
pub mod ids;
pub mod listing;
pub mod proxy;
pub mod query;
pub mod routing;
pub mod server;
pub mod unavailable;

pub use config::{DaemonLimits, ServerConfig, TemplateDefaults};
pub use error::{ApiError, ServerError};
pub use server::{Claim, Server};
pub use unavailable::UnavailableBackend;

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod fake_backend_tests;
