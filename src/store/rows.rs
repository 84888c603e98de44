//! From rows to the values of the store traits, the same on both backends: each backend
//! selects the columns in the order a decoder names, and the decoder reads them by
//! position. What differs per database (PostgreSQL's `xid8` transaction ids, UUIDs that
//! SQLite keeps as text) is decoded by the backend and passed in.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use ledger_aggregates::BrandId;
use ledger_projections::{LogPosition, LogRecord};
use uuid::Uuid;

use super::{
    ApiKeyInfo, Appended, KeyedEvent, LoadedStream, ModelRow, NewApiKey, NewEvent, StoreError,
    StoredEvent,
};

/// The column reads of the decoders below, for a row of any database that decodes text,
/// integers and timestamps: sqlx's bounds for that are written here once, not on every
/// decoder.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String, sqlx::Error>;
    fn text_or_null(&self, i: usize) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, i: usize) -> Result<i64, sqlx::Error>;
    fn time(&self, i: usize) -> Result<DateTime<Utc>, sqlx::Error>;
    fn time_or_null(&self, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
}

impl<R: sqlx::Row> Columns for R
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn text(&self, i: usize) -> Result<String, sqlx::Error> {
        self.try_get(i)
    }

    fn text_or_null(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(i)
    }

    fn int(&self, i: usize) -> Result<i64, sqlx::Error> {
        self.try_get(i)
    }

    fn time(&self, i: usize) -> Result<DateTime<Utc>, sqlx::Error> {
        self.try_get(i)
    }

    fn time_or_null(&self, i: usize) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(i)
    }
}

/// Decode a row of `aggregate_type, aggregate_id, sequence, event_type, event_version,
/// payload, metadata` (payload and metadata as text).
pub(crate) fn stored_event(row: &impl Columns) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
        aggregate_type: row.text(0)?,
        aggregate_id: row.text(1)?,
        sequence: row.int(2)?,
        event_type: row.text(3)?,
        event_version: row.text(4)?,
        payload: row.text(5)?,
        metadata: row.text(6)?,
    })
}

/// Every row of a page of [`stored_event`] rows.
pub(crate) fn stored_events(rows: &[impl Columns]) -> Result<Vec<StoredEvent>, StoreError> {
    Ok(rows.iter().map(stored_event).collect::<Result<_, _>>()?)
}

/// What an append's `RETURNING aggregate_type, aggregate_id, sequence, position` gave,
/// as the positions of `events` in their order. Both databases return inserted rows in
/// insert order, but neither promises it: any other order is matched up by stream and
/// sequence.
pub(crate) fn positions_of(
    events: &[NewEvent],
    returned: Vec<(String, String, i64, i64)>,
) -> Result<Vec<i64>, StoreError> {
    if returned.len() != events.len() {
        return Err(StoreError::Corrupt(format!(
            "an append of {} events returned {} rows",
            events.len(),
            returned.len()
        )));
    }
    let same = |e: &NewEvent, (t, id, seq, _): &(String, String, i64, i64)| {
        e.aggregate_type == t && e.aggregate_id == *id && e.sequence == *seq
    };
    if events.iter().zip(&returned).all(|(e, r)| same(e, r)) {
        return Ok(returned.into_iter().map(|(_, _, _, at)| at).collect());
    }
    let mut at: HashMap<(String, String, i64), i64> = returned
        .into_iter()
        .map(|(t, id, seq, position)| ((t, id, seq), position))
        .collect();
    events
        .iter()
        .map(|e| {
            at.remove(&(
                e.aggregate_type.to_owned(),
                e.aggregate_id.clone(),
                e.sequence,
            ))
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "an append returned no position for {} {} #{}",
                    e.aggregate_type, e.aggregate_id, e.sequence
                ))
            })
        })
        .collect()
}

/// Decode a row of `aggregate_id, idempotency_key, request_hash, sequence, payload`.
pub(crate) fn keyed_event(row: &impl Columns) -> Result<KeyedEvent, sqlx::Error> {
    Ok(KeyedEvent {
        aggregate_id: row.text(0)?,
        idempotency_key: row.text(1)?,
        request_hash: row.text_or_null(2)?.unwrap_or_default(),
        sequence: row.int(3)?,
        payload: row.text(4)?,
    })
}

/// Decode a row of `snapshots`: `aggregate_type, aggregate_id, last_sequence, payload`.
pub(crate) fn snapshot_row(
    row: &impl Columns,
) -> Result<(String, String, i64, String), sqlx::Error> {
    Ok((row.text(0)?, row.text(1)?, row.int(2)?, row.text(3)?))
}

/// Group flat rows (ordered by stream then sequence) into per-stream loads.
pub(crate) fn group_streams(
    keys: &[(&'static str, String)],
    snapshots: Vec<(String, String, i64, String)>,
    events: Vec<StoredEvent>,
) -> Vec<LoadedStream> {
    let mut by_key: HashMap<(String, String), LoadedStream> = keys
        .iter()
        .map(|(t, id)| {
            let s = LoadedStream {
                aggregate_type: (*t).to_owned(),
                aggregate_id: id.clone(),
                ..Default::default()
            };
            (((*t).to_owned(), id.clone()), s)
        })
        .collect();
    for (t, id, seq, payload) in snapshots {
        if let Some(s) = by_key.get_mut(&(t, id)) {
            s.snapshot = Some((seq, payload));
        }
    }
    for e in events {
        if let Some(s) = by_key.get_mut(&(e.aggregate_type.clone(), e.aggregate_id.clone())) {
            let after = s.snapshot.as_ref().map_or(0, |(seq, _)| *seq);
            if e.sequence > after {
                s.events.push(e);
            }
        }
    }
    by_key.into_values().collect()
}

/// Decode a row of `brand_id, period, sequence, models` (models as text).
/// `(aggregate_id, payload)` of each row of a hold scan (`EventLog::recent_holds`).
pub(crate) fn hold_rows(rows: &[impl Columns]) -> Result<Vec<(String, String)>, StoreError> {
    rows.iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

pub(crate) fn model_row(row: &impl Columns) -> Result<ModelRow, sqlx::Error> {
    Ok(ModelRow {
        brand_id: row.text(0)?,
        period: row.text(1)?,
        sequence: row.int(2)?,
        models: row.text(3)?,
    })
}

/// Every row of a [`model_row`] result.
pub(crate) fn model_rows(rows: &[impl Columns]) -> Result<Vec<ModelRow>, StoreError> {
    Ok(rows.iter().map(model_row).collect::<Result<_, _>>()?)
}

/// Decode `transaction, position, aggregate_type, aggregate_id, sequence, event_type,
/// event_version, payload, metadata, recorded_at`; the transaction id, column 0, is
/// decoded by the backend (PostgreSQL's xid8 has no binary mapping in sqlx, SQLite has
/// none at all).
pub(crate) fn log_record(row: &impl Columns, transaction: u64) -> Result<LogRecord, sqlx::Error> {
    Ok(LogRecord {
        at: LogPosition::new(transaction, row.int(1)?),
        aggregate_type: row.text(2)?,
        aggregate_id: row.text(3)?,
        sequence: row.int(4)?,
        event_type: row.text(5)?,
        event_version: row.text(6)?,
        payload: row.text(7)?,
        metadata: row.text(8)?,
        recorded_at: row.time(9)?,
    })
}

/// Decode a row of `id, brand_id, label, created_at, created_by, revoked_at`; the id is
/// decoded by the backend (a `uuid` on PostgreSQL, text on SQLite).
pub(crate) fn api_key_info(row: &impl Columns, id: Uuid) -> Result<ApiKeyInfo, StoreError> {
    Ok(ApiKeyInfo {
        id,
        brand_id: BrandId::parse(&row.text(1)?).map_err(corrupt_key)?,
        label: row.text(2)?,
        created_at: row.time(3)?,
        created_by: row.text(4)?,
        revoked_at: row.time_or_null(5)?,
    })
}

/// A stored key id that is not a UUID (SQLite keeps them as text).
pub(crate) fn key_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(corrupt_key)
}

fn corrupt_key(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("api_keys: {what}"))
}

/// The row a backend inserts for `key`: a fresh id, created now.
pub(crate) fn new_key_info(key: &NewApiKey) -> ApiKeyInfo {
    ApiKeyInfo {
        id: Uuid::new_v4(),
        brand_id: key.brand_id.clone(),
        label: key.label.clone(),
        created_at: key_time_now(),
        created_by: key.created_by.clone(),
        revoked_at: None,
    }
}

/// Key timestamps keep microseconds, the precision of PostgreSQL's `timestamptz`, so what
/// a creation returns equals what a listing reads back on either store.
pub(crate) fn key_time_now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A webhook's secrets: `brand_id, endpoint, secrets` (a JSON array of strings, as text).
pub(crate) fn webhook_secrets_row(
    row: &impl Columns,
) -> Result<(String, String, Vec<String>), StoreError> {
    let brand = row.text(0)?;
    let secrets = serde_json::from_str(&row.text(2)?)
        .map_err(|e| StoreError::Corrupt(format!("webhook secrets of {brand}: {e}")))?;
    Ok((brand, row.text(1)?, secrets))
}

/// Decode rows of `aggregate_type, aggregate_id, sequence`.
pub(crate) fn appended(rows: Vec<(String, String, i64)>) -> Vec<Appended> {
    rows.into_iter()
        .map(|(aggregate_type, aggregate_id, sequence)| Appended {
            aggregate_type,
            aggregate_id,
            sequence: sequence.max(0) as u64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_event(id: &str, sequence: i64) -> NewEvent {
        NewEvent {
            aggregate_type: "usage_period",
            aggregate_id: id.to_owned(),
            sequence,
            event_type: "UsageRecorded",
            event_version: "1",
            payload: "{}".to_owned(),
            metadata: "{}".to_owned(),
            idempotency_key: None,
            request_hash: None,
        }
    }

    fn row(id: &str, sequence: i64, position: i64) -> (String, String, i64, i64) {
        ("usage_period".to_owned(), id.to_owned(), sequence, position)
    }

    #[test]
    fn positions_follow_the_events_whatever_order_the_rows_come_in() {
        let events = [
            new_event("a:2026-11", 1),
            new_event("b:2026-11", 1),
            new_event("a:2026-11", 2),
        ];
        let in_order = vec![
            row("a:2026-11", 1, 7),
            row("b:2026-11", 1, 8),
            row("a:2026-11", 2, 9),
        ];
        assert_eq!(positions_of(&events, in_order).unwrap(), [7, 8, 9]);
        let shuffled = vec![
            row("a:2026-11", 2, 9),
            row("a:2026-11", 1, 7),
            row("b:2026-11", 1, 8),
        ];
        assert_eq!(positions_of(&events, shuffled).unwrap(), [7, 8, 9]);
    }

    #[test]
    fn rows_that_do_not_match_the_events_are_corrupt() {
        let events = [new_event("a:2026-11", 1), new_event("b:2026-11", 1)];
        let short = vec![row("a:2026-11", 1, 7)];
        assert!(matches!(
            positions_of(&events, short),
            Err(StoreError::Corrupt(_))
        ));
        let other = vec![row("a:2026-11", 1, 7), row("c:2026-11", 1, 8)];
        assert!(matches!(
            positions_of(&events, other),
            Err(StoreError::Corrupt(_))
        ));
    }
}
