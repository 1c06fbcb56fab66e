//! The sandboxd daemon: control plane, router and sandbox proxy (`docs/control-plane.md`).
//!
//! Entry point: [`Server::bind`] with a [`ServerConfig`] and a
//! [`sandboxd_runtime::SandboxBackend`], then [`Server::run`].

pub mod api;
pub mod config;
pub mod conn;
pub mod error;
pub mod fd_budget;
pub mod ids;
pub mod lifecycle;
pub mod listing;
pub mod manager;
pub mod metrics;
pub mod pool;
pub mod prometheus;
pub mod proxy;
pub mod routing;
pub mod sandbox;
pub mod server;
pub mod snapshots;
pub mod unavailable;
pub mod upstream;

pub use config::{DaemonLimits, ServerConfig, TemplateDefaults};
pub use error::{ApiError, ServerError};
pub use server::{Claim, Server};
pub use unavailable::UnavailableBackend;

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod fake_backend_tests;
