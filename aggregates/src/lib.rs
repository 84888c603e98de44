//! Pure domain of the usage ledger. No I/O: no tokio, sqlx or HTTP here.
//!
//! # Layout
//! - [`ids`]: newtypes that parse: `BrandId`, `PeriodKey`, `MetricKey`, `PlanId`,
//!   `IdempotencyKey`, `Quantity`.
//! - [`money`]: `Money` in integer minor units, the one rounding rule, rate serde.
//! - [`catalog`]: plan catalog (data file embedded in the binary) and its validation.
//! - [`period`]: the brand-period aggregate: commands, events, decision rules.
//! - [`hold`]: holds of quota for long jobs (reserve, commit or void, expiry) and their limits.
//! - [`reset`]: the quota reset planner: a period's state and a target in, the
//!   compensating commands and the operator's report out.
//! - [`brand`]: the brand registry aggregate: which plan a brand is on, its top-up orders.
//! - [`notifications`]: where a brand's notices go, and which kinds each endpoint wants.
//! - [`topup`]: purchased top-ups: pending from the checkout, then paid once or failed.
//! - [`timestamp`]: event timestamps written straight into their JSON.

pub mod brand;
pub mod catalog;
pub mod hold;
pub mod ids;
pub mod money;
pub mod notifications;
pub mod period;
pub mod reset;
pub mod timestamp;
pub mod topup;

pub use brand::{
    BeforeRegistration, BrandAggregate, BrandCommand, BrandError, BrandEvent, Effective,
};
pub use catalog::{Catalog, MetricKind, OveragePolicy, PlanDefinition, PlanQuota};
pub use hold::HoldTtl;
pub use ids::{
    BrandId, IdempotencyKey, MetricKey, ParseError, PeriodKey, PlanId, Quantity, ReservationId,
};
pub use money::{Currency, Money};
pub use period::{
    LedgerError, LedgerEvent, LedgerRules, MetricTotals, PeriodCommand, PeriodOpening,
    QuotaDecision, Stamped, StreamCommand, UsagePeriodAggregate,
};
