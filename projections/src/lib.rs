//! Read models of the usage ledger: pure folds of the event log. No I/O here: the
//! service tails the log, stores the models and their checkpoint; this crate only
//! turns events into rows.
//!
//! Every figure comes from the events: usage events carry each metric's totals after
//! them, and `PeriodOpened`/`PlanApplied` snapshot the plan, so a fold never reads
//! today's catalog and a replay of the log always rebuilds the same models. Every
//! model is idempotent per stream: the projector delivers at least once, and an event
//! applied twice is counted once.
//!
//! # Layout
//! - [`event`]: `ProjectedEvent`, the input: a log row (position, stream, sequence) with
//!   its typed event.
//! - [`cursor`]: the one deduplication of every model (last sequence per stream) and the
//!   `ReadModel` trait whose `apply` goes through it.
//! - [`keyed`]: `ByPeriod`, rows keyed by brand then period.
//! - [`quota`]: `QuotaSummary`, usage against limits per brand, period and metric.
//! - [`cost`]: `PeriodCost`, the estimated cost per brand-period, and the rounding rule.
//! - [`alerts`]: `ActiveAlerts`, the threshold alerts that stand (crossed, not resolved).
//! - [`topups`]: `TopUpHistory`, every top-up.
//! - [`timeline`]: `Timeline<T>`, the one list-per-brand-period model both are.
//! - [`overage`]: `OverageLedger`, finance's overage lines per period, brand and metric,
//!   and how late usage becomes an adjustment line.
//! - [`models`]: `ReadModels`, all of the above behind one `apply`, and `PeriodModels`,
//!   what they hold about one brand-period (the row a store keeps), folded on its own by
//!   the same rules.
//! - [`record`]: `LogRecord`, a row of the log in global order, and `LogPosition`,
//!   that order (a projector's checkpoint).
//! - [`diff`]: the differences between two `ReadModels`, in words.
//! - [`whatif`]: what-if answers (top-up simulation, plan comparison, projections,
//!   estimate, the bill with tax) as pure functions of one brand-period's figures.
//! - `totals` (private): where each event states a metric's totals.

pub mod alerts;
pub mod cost;
pub mod cursor;
pub mod diff;
pub mod event;
pub mod keyed;
pub mod models;
pub mod overage;
pub mod quota;
pub mod record;
pub mod timeline;
pub mod topups;
mod totals;
pub mod whatif;

pub use alerts::{ActiveAlerts, Alert};
pub use cost::{CostEstimate, PeriodCost};
pub use cursor::{Admitted, Delivery, ReadModel, StreamCursors};
pub use diff::{Difference, Differences, DIFFERENCES_LISTED_MAX};
pub use event::{Payload, ProjectedEvent, StoredEventError, StreamEvent};
pub use keyed::ByPeriod;
pub use models::{PeriodModels, ReadModels};
pub use overage::{
    BrandOverages, FinanceLine, LineKind, OverageLedger, OverageLine, OverageTotals, PeriodOverages,
};
pub use quota::{MetricQuota, PeriodQuotas, QuotaSummary};
pub use record::{DecodeError, LogPosition, LogRecord};
pub use timeline::{Timeline, TimelineEntry};
pub use topups::{TopUp, TopUpHistory};
