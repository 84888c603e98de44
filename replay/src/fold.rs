//! Rebuild the read models from the log, failing loudly when the log is not whole.
//!
//! The projector forgives redeliveries: its models are idempotent per stream, because
//! it reads the log at least once. A replay is different: it reads the complete log
//! once, in commit order, so every stream arrives as 1, 2, 3… A record that does not
//! decode, a skipped sequence or a repeated one means the log, or the reading of it, is
//! broken; a replay that went on would hand the auditor the models of a log that does
//! not exist. Each is therefore an error, never a short success.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::USAGE_PERIOD_TYPE;
use ledger_aggregates::{BrandId, PeriodKey};
use ledger_projections::{DecodeError, Delivery, LogPosition, LogRecord, PeriodModels, ReadModels};

/// Why a replay stopped. After an error the models are not a replay of any log: drop
/// them.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The record is not an event of a stream the models know (unknown aggregate type,
    /// bad stream id, payload that is not its event).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Sequences `expected..got` of the stream are missing from the records read.
    #[error("event at {at}: stream {stream} jumps to sequence {got} where {expected} was expected: the log was read with a gap")]
    Gap {
        at: LogPosition,
        stream: String,
        expected: u64,
        got: u64,
    },
    /// The stream already went past this sequence: a record read twice, or out of
    /// order. Harmless to the models, which are idempotent, but no complete log read
    /// in order has one, so the reading is broken.
    #[error("event at {at}: stream {stream} repeats sequence {got} (already at {last_applied})")]
    Repeated {
        at: LogPosition,
        stream: String,
        got: u64,
        last_applied: u64,
    },
    /// [`as_of`] was handed a record of another stream than the one it rebuilds.
    #[error("event at {at}: stream {got} is not the stream {expected} being rebuilt")]
    OtherStream {
        at: LogPosition,
        expected: String,
        got: String,
    },
}

/// A stream named the way errors and the export's digest name it: `type/id`.
fn stream_name(record: &LogRecord) -> String {
    format!("{}/{}", record.aggregate_type, record.aggregate_id)
}

/// The read models folded from log records, with the number of events folded.
#[derive(Debug, Clone, Default)]
pub struct Replayer {
    /// What the records folded into so far.
    models: ReadModels,
    /// Events folded: what a report compares with the log's row count.
    events: u64,
}

impl Replayer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode `record` and fold it. Brand registry records are decoded too, so a
    /// corrupt one fails the replay; the models take them and change nothing.
    pub fn apply(&mut self, record: &LogRecord) -> Result<(), ReplayError> {
        let event = record.decode()?;
        match self.models.apply(&event) {
            Delivery::Applied => {
                self.events += 1;
                Ok(())
            }
            Delivery::AppliedAfterGap { expected } => Err(ReplayError::Gap {
                at: record.at,
                stream: stream_name(record),
                expected,
                got: event.sequence,
            }),
            Delivery::Duplicate { last_applied } => Err(ReplayError::Repeated {
                at: record.at,
                stream: stream_name(record),
                got: event.sequence,
                last_applied,
            }),
        }
    }

    /// Fold records in order, stopping at the first that fails.
    pub fn apply_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a LogRecord>,
    ) -> Result<(), ReplayError> {
        records.into_iter().try_for_each(|r| self.apply(r))
    }

    /// Events folded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn models(&self) -> &ReadModels {
        &self.models
    }

    pub fn into_models(self) -> ReadModels {
        self.models
    }
}

/// How far into a stream [`as_of`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// Up to and including this sequence of the stream.
    Sequence(u64),
    /// Up to the last event recorded (`recorded_at`, the database's commit clock) at
    /// or before this instant.
    At(DateTime<Utc>),
}

/// A cutoff that is neither a sequence nor an instant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is neither a stream sequence (a whole number such as 42) nor an RFC 3339 instant (such as 2026-11-30T23:59:59Z)")]
pub struct CutoffError {
    pub input: String,
}

/// A whole number is a sequence; anything else must be an RFC 3339 instant.
impl FromStr for Cutoff {
    type Err = CutoffError;

    fn from_str(s: &str) -> Result<Self, CutoffError> {
        if let Ok(sequence) = s.parse::<u64>() {
            return Ok(Self::Sequence(sequence));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self::At(t.with_timezone(&Utc)))
            .map_err(|_| CutoffError {
                input: s.to_owned(),
            })
    }
}

/// The form [`Cutoff::from_str`] reads: a sequence, or an RFC 3339 instant in UTC.
impl std::fmt::Display for Cutoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sequence(n) => write!(f, "{n}"),
            Self::At(t) => f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        }
    }
}

impl Cutoff {
    fn admits(&self, record: &LogRecord) -> bool {
        match *self {
            Self::Sequence(last) => u64::try_from(record.sequence).is_ok_and(|s| s <= last),
            Self::At(t) => record.recorded_at <= t,
        }
    }
}

/// The models of one brand-period stream as they stood at `cutoff`: `records` (the
/// stream's events in sequence order) are folded up to the first one past the cutoff,
/// and reading stops there. `None` when the cutoff falls before the stream's first
/// event.
///
/// The cutoff ends a prefix rather than filtering the stream: `recorded_at` is the
/// writing transaction's clock (on PostgreSQL, when the transaction started), so a
/// later sequence can carry an earlier time than the one before it. Folding every
/// event recorded by `t` could then skip an event and describe a state the stream
/// never had; a prefix is a state it had.
pub fn as_of<'a>(
    records: impl IntoIterator<Item = &'a LogRecord>,
    brand: &BrandId,
    period: PeriodKey,
    cutoff: Cutoff,
) -> Result<Option<PeriodModels>, ReplayError> {
    let stream = period_stream_id(brand, period);
    let mut replayer = Replayer::new();
    for record in records {
        if record.aggregate_type != USAGE_PERIOD_TYPE || record.aggregate_id != stream {
            return Err(ReplayError::OtherStream {
                at: record.at,
                expected: format!("{USAGE_PERIOD_TYPE}/{stream}"),
                got: stream_name(record),
            });
        }
        if !cutoff.admits(record) {
            break;
        }
        replayer.apply(record)?;
    }
    Ok(replayer.models.period_models(brand, period))
}
