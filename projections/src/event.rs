//! The projector's input: one stored event with its stream and its place in the log.
//!
//! The log stores `aggregate_type`, `aggregate_id` and `sequence` as text and integers;
//! [`ProjectedEvent::from_stored`] parses them once, so a fold matches on a typed stream
//! (`BrandId` and `PeriodKey`) and never re-parses `brand:YYYY-MM` per model.

use std::fmt;

use ledger_aggregates::brand::BRAND_TYPE;
use ledger_aggregates::ids::{parse_period_stream_id, period_stream_id};
use ledger_aggregates::period::USAGE_PERIOD_TYPE;
use ledger_aggregates::{BrandEvent, BrandId, LedgerEvent, ParseError, PeriodKey};
use serde::{Deserialize, Serialize};

/// One event of the log as the folds see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectedEvent {
    /// Global log position (commit order across streams). Folds deduplicate per stream,
    /// not by position; it is kept on timeline entries so a reader can find the fact in
    /// the log.
    pub position: i64,
    /// Sequence of the event in its stream, from 1. Deduplication keys on it: an event
    /// whose sequence is not above the last one applied for its stream is a redelivery.
    pub sequence: u64,
    /// The stream, parsed, and its event.
    pub event: StreamEvent,
}

/// An event of one of the two kinds of stream, with the stream's parsed id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEvent {
    /// An event of the brand-period stream `brand:period` (`usage_period`).
    Period {
        brand: BrandId,
        period: PeriodKey,
        event: LedgerEvent,
    },
    /// An event of the brand registry stream `brand` (`brand`).
    Brand { brand: BrandId, event: BrandEvent },
}

/// A decoded payload before its stream id is checked: the store picks the event type
/// from `aggregate_type`, [`ProjectedEvent::from_stored`] checks that both agree.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Period(LedgerEvent),
    Brand(BrandEvent),
}

/// Why a stored row is not an event the folds can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEventError {
    /// The log holds an aggregate type no read model knows.
    UnknownAggregateType(String),
    /// `aggregate_type` says one kind of stream, the payload is the other's event.
    PayloadMismatch {
        aggregate_type: String,
        payload: &'static str,
    },
    /// The aggregate id is not `brand:YYYY-MM` (periods) or a brand id (registry).
    BadStreamId(ParseError),
    /// Sequences start at 1; a 0 would be taken for a redelivery and silently dropped.
    SequenceZero,
}

impl fmt::Display for StoredEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownAggregateType(t) => write!(f, "unknown aggregate type {t:?}"),
            Self::PayloadMismatch {
                aggregate_type,
                payload,
            } => write!(
                f,
                "aggregate type {aggregate_type:?} holds a {payload} event"
            ),
            Self::BadStreamId(e) => write!(f, "bad stream id: {e}"),
            Self::SequenceZero => f.write_str("sequence 0: stream sequences start at 1"),
        }
    }
}

impl std::error::Error for StoredEventError {}

impl ProjectedEvent {
    /// An event of the brand-period stream of `brand` and `period`.
    pub fn period(
        position: i64,
        sequence: u64,
        brand: BrandId,
        period: PeriodKey,
        event: LedgerEvent,
    ) -> Self {
        assert!(sequence >= 1, "stream sequences start at 1");
        Self {
            position,
            sequence,
            event: StreamEvent::Period {
                brand,
                period,
                event,
            },
        }
    }

    /// An event of the registry stream of `brand`.
    pub fn brand(position: i64, sequence: u64, brand: BrandId, event: BrandEvent) -> Self {
        assert!(sequence >= 1, "stream sequences start at 1");
        Self {
            position,
            sequence,
            event: StreamEvent::Brand { brand, event },
        }
    }

    /// Parse a row of the log (`aggregate_type`, `aggregate_id`, `sequence`) around its
    /// decoded payload.
    pub fn from_stored(
        position: i64,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        payload: Payload,
    ) -> Result<Self, StoredEventError> {
        if sequence == 0 {
            return Err(StoredEventError::SequenceZero);
        }
        let mismatch = |payload| StoredEventError::PayloadMismatch {
            aggregate_type: aggregate_type.to_owned(),
            payload,
        };
        let event = match (aggregate_type, payload) {
            (USAGE_PERIOD_TYPE, Payload::Period(event)) => {
                let (brand, period) =
                    parse_period_stream_id(aggregate_id).map_err(StoredEventError::BadStreamId)?;
                StreamEvent::Period {
                    brand,
                    period,
                    event,
                }
            }
            (BRAND_TYPE, Payload::Brand(event)) => StreamEvent::Brand {
                brand: BrandId::parse(aggregate_id).map_err(StoredEventError::BadStreamId)?,
                event,
            },
            (USAGE_PERIOD_TYPE, Payload::Brand(_)) => return Err(mismatch("brand")),
            (BRAND_TYPE, Payload::Period(_)) => return Err(mismatch("usage_period")),
            (other, _) => return Err(StoredEventError::UnknownAggregateType(other.to_owned())),
        };
        Ok(Self {
            position,
            sequence,
            event,
        })
    }

    /// `events.aggregate_type` of the stream: `usage_period` or `brand`.
    pub fn aggregate_type(&self) -> &'static str {
        match self.event {
            StreamEvent::Period { .. } => USAGE_PERIOD_TYPE,
            StreamEvent::Brand { .. } => BRAND_TYPE,
        }
    }

    /// `events.aggregate_id` of the stream: `brand:YYYY-MM` or the brand id.
    pub fn stream_id(&self) -> String {
        match &self.event {
            StreamEvent::Period { brand, period, .. } => period_stream_id(brand, *period),
            StreamEvent::Brand { brand, .. } => brand.to_string(),
        }
    }

    /// The brand, period and event when this is a brand-period event.
    pub fn as_period(&self) -> Option<(&BrandId, PeriodKey, &LedgerEvent)> {
        match &self.event {
            StreamEvent::Period {
                brand,
                period,
                event,
            } => Some((brand, *period, event)),
            StreamEvent::Brand { .. } => None,
        }
    }
}
