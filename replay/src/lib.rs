//! Auditor tooling of the usage ledger: rebuild the read models from the event log,
//! as they stood at any point of a stream, and export the log as a hash chain that an
//! auditor verifies offline.
//!
//! Pure and I/O-light: no database code. The service reads `LogRecord`s from its store
//! in global commit order and hands them in; the export writes to any `io::Write`.
//!
//! # Layout
//! - [`fold`]: `Replayer`, the read models folded from log records, failing on any
//!   record that does not decode or does not follow its stream; `as_of` and `Cutoff`,
//!   one brand-period's models as of a sequence or an instant.
//! - [`export`]: `ExportWriter`, the hash-chained JSON Lines export, and
//!   `verify_export`, its offline check.

pub mod export;
pub mod fold;

pub use export::{verify_export, ExportError, ExportSummary, ExportWriter, Problem};
pub use fold::{as_of, Cutoff, CutoffError, ReplayError, Replayer};
