//! A quota guard for platform services: a `tower` layer that makes an axum route spend
//! a brand's quota in the usage ledger before its handler runs, talking to the ledger
//! only over its HTTP API.
//!
//! It replaces the original's `@RequireQuota` / `QuotaGuard` (seed §3, reference §2.5)
//! without its defects (reference §7.21, §7.24, §7.14): the brand comes only from the
//! caller's authenticated identity, ledger failures are never answered as "quota
//! exceeded", and the guard runs once per request and metric however often it is layered.
//!
//! ```no_run
//! # async fn wire() -> Result<(), ledger_guard::GuardError> {
//! use axum::{routing::post, Router};
//! use ledger_guard::{Credential, Credentials, Guard, GuardConfig};
//!
//! let guard = Guard::start(GuardConfig::new(
//!     "http://127.0.0.1:3333",
//!     Credentials::one(Credential::api_key("ulk_…")),
//! ))?;
//! let app: Router = Router::new().route(
//!     "/render/3d",
//!     post(|| async { "rendered" }).layer(guard.require("renders_3d").amount_field("count")),
//! );
//! # Ok(()) }
//! ```
//!
//! The service's own authentication middleware must insert a [`BrandIdentity`] into the
//! request's extensions (or the route names a [`RequireQuota::brand_from`] closure);
//! `docs/guard.md` walks through a whole service.
//!
//! # Layout
//!
//! - `identity`: [`BrandIdentity`], the authenticated brand, and where the guard finds it.
//! - `amount`: how many units a request spends: 1, a JSON body field, or a closure.
//! - `credential`: [`Credential`] (API key or bearer JWT) and [`Credentials`], per brand.
//! - `client`: [`LedgerClient`], the ledger's HTTP API (consume, reserve, commit, void)
//!   with its timeouts and retries.
//! - `decision`: the ledger's answers as the guard reads them ([`Decision`], [`Reserved`]).
//! - `spool`: the bounded fail-open [`Spool`] and the task that replays it.
//! - `reservation`: [`Reservation`], the handle a long job commits or voids.
//! - `layer`: [`Guard`], [`RequireQuota`] (the `tower::Layer`) and its `Service`.
//! - `error`: [`GuardError`], the one error type, and its mapping to problem+json.

mod amount;
mod client;
mod credential;
mod decision;
mod error;
mod identity;
mod layer;
mod reservation;
mod spool;

pub use amount::AMOUNT_MAX;
pub use client::{
    LedgerClient, LEDGER_CALL_ATTEMPTS_MAX, LEDGER_CALL_TIMEOUT_MS_MAX,
    LEDGER_CONNECT_TIMEOUT_MS_MAX, RETRY_AFTER_S_DEFAULT, RETRY_AFTER_S_MAX,
};
pub use credential::{Credential, Credentials};
pub use decision::{CheckAnswer, Committed, Decision, LedgerProblem, Reserved, Voided};
pub use error::{GuardError, PROBLEM_TYPE_PREFIX};
pub use identity::{BrandIdentity, InvalidBrand};
pub use layer::{
    Guard, GuardConfig, QuotaGrant, QuotaService, RequireQuota, BODY_BYTES_MAX, REQUEST_ID_HEADER,
    REQUEST_ID_LEN_MAX, RESERVATION_TTL_S_MAX,
};
pub use reservation::{Reservation, SETTLE_ATTEMPTS_MAX};
pub use spool::{
    Spool, SpoolEntry, SpoolStats, REPLAY_BACKOFF_MS_MAX, REPLAY_BACKOFF_MS_MIN,
    REPLAY_REJECTIONS_MAX, SPOOL_ENTRIES_MAX,
};
