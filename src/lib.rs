//! The usage ledger service: event log, command engine, read models and HTTP.
//!
//! # Layout
//! - [`store`]: the event log, read-model and API key traits; one folder per backend (PostgreSQL, SQLite).
//! - [`engine`]: the single-writer command engine with group commit and idempotency, and
//!   the sweeper that expires holds.
//! - [`tail`]: following the log: the consumer loop, the read models served from memory.
//! - [`clock`]: injectable time.
//! - [`metrics`]: the Prometheus registry of `GET /metrics`.
//! - [`telemetry`]: the log subscriber (text or JSON) and the Sentry error reports.
//! - [`auth`]: who is calling: bearer JWTs and per-brand API keys (made, hashed and limited here), resolved to a principal.
//! - [`secret`]: a string kept out of `Debug` and `Display`.
//! - [`config`]: service configuration: flags, environment, file, defaults.
//! - [`ledger`]: the application layer: use cases and queries every adapter calls.
//! - [`stripe`]: Stripe's protocols: webhook signatures (`Stripe-Signature`).
//! - [`notify`]: notices out: one threshold, refusal or top-up notice formatted for Slack,
//!   Zapier, a Standard Webhooks endpoint or an e-mail, and delivered in one attempt.
//! - [`live`]: the live feed's tickets and the hub fanning committed summaries out to connections.
//! - [`startup`]: the composition root: store, engine, consumers and router wired once.
//! - [`http`]: the axum router; the only module that speaks HTTP.
//! - [`cli`]: operator commands on the ledger (`brands`, `reset`) as library code.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod http;
pub mod ledger;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod secret;
pub mod startup;
pub mod store;
pub mod stripe;
pub mod tail;
pub mod telemetry;
