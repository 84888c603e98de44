//! The log as the projector and the replay read it: rows in global commit order, each
//! with its place in that order ([`LogPosition`]) and the columns an auditor exports.
//!
//! The store hands out [`LogRecord`]s as stored (payload and metadata as JSON text);
//! [`LogRecord::decode`] turns one into the [`ProjectedEvent`] the folds take.

use std::fmt;

use chrono::{DateTime, Utc};
use ledger_aggregates::brand::BRAND_TYPE;
use ledger_aggregates::period::USAGE_PERIOD_TYPE;
use serde::{Deserialize, Serialize};

use crate::event::{Payload, ProjectedEvent, StoredEventError};

/// A place in the global order of the log, and a projector's checkpoint.
///
/// On PostgreSQL the order is `(transaction_id, position)`: the writing transaction's
/// id first, because identity values are drawn before commit and a transaction that
/// holds a low `position` may commit after one holding a higher one. Readers only read
/// below the oldest running writer, so every event at or before a checkpoint was
/// committed when the checkpoint was taken. SQLite serializes writers: `transaction`
/// is always 0 there and `position` alone is commit order.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    pub transaction: u64,
    pub position: i64,
}

impl LogPosition {
    /// Before the first event.
    pub const START: LogPosition = LogPosition {
        transaction: 0,
        position: 0,
    };

    pub fn new(transaction: u64, position: i64) -> Self {
        Self {
            transaction,
            position,
        }
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction, self.position)
    }
}

/// One row of the event log, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub at: LogPosition,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The event, JSON text exactly as stored.
    pub payload: String,
    /// The metadata string map, JSON text exactly as stored.
    pub metadata: String,
    /// When the writing transaction ran, by the database's clock.
    pub recorded_at: DateTime<Utc>,
}

/// Why a record of the log could not be decoded into an event.
#[derive(Debug)]
pub enum DecodeError {
    /// The payload is not the JSON of an event of its aggregate type.
    Payload {
        at: LogPosition,
        error: serde_json::Error,
    },
    /// The row's columns do not describe a stream the folds know.
    Row {
        at: LogPosition,
        error: StoredEventError,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Payload { at, error } => write!(f, "event at {at}: bad payload: {error}"),
            Self::Row { at, error } => write!(f, "event at {at}: {error}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl LogRecord {
    /// The event this row holds, typed and with its stream parsed.
    pub fn decode(&self) -> Result<ProjectedEvent, DecodeError> {
        let at = self.at;
        let payload = match self.aggregate_type.as_str() {
            USAGE_PERIOD_TYPE => serde_json::from_str(&self.payload).map(Payload::Period),
            BRAND_TYPE => serde_json::from_str(&self.payload).map(Payload::Brand),
            other => {
                return Err(DecodeError::Row {
                    at,
                    error: StoredEventError::UnknownAggregateType(other.to_owned()),
                })
            }
        }
        .map_err(|error| DecodeError::Payload { at, error })?;
        let sequence = u64::try_from(self.sequence).unwrap_or(0);
        ProjectedEvent::from_stored(
            self.at.position,
            &self.aggregate_type,
            &self.aggregate_id,
            sequence,
            payload,
        )
        .map_err(|error| DecodeError::Row { at, error })
    }
}
