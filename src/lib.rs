//! The usage ledger service: event log, command engine and (later) HTTP.
//!
//! # Layout
//! - [`store`]: the event log trait and its PostgreSQL and SQLite implementations.
//! - [`engine`]: the single-writer command engine with group commit and idempotency.
//! - [`clock`]: injectable time.
//! - [`config`]: service configuration (flags and environment).
//! - [`http`]: the axum router; the only module that speaks HTTP.

pub mod clock;
pub mod config;
pub mod engine;
pub mod http;
pub mod store;
