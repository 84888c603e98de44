//! The usage ledger service: event log, command engine and (later) HTTP.
//!
//! # Layout
//! - [`store`]: the event log trait and its PostgreSQL and SQLite implementations.
//! - [`engine`]: the single-writer command engine with group commit and idempotency.
//! - [`clock`]: injectable time.

pub mod clock;
pub mod engine;
pub mod store;
