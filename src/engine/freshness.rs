//! What the log holds that the writers' caches may not: a consumer of the log
//! ([`crate::tail::caches`]) tells each writer of the streams it read events of, and
//! stands at a position below which every event was told. A pure check or a read then
//! needs the log for what that consumer has not read yet, one short walk of the log's
//! order, instead of a version probe for each of its streams.
//!
//! A writer compares each told event with its cache and drops a stream the log holds
//! more of: another process wrote it. Its own commits are already cached, and cost a
//! comparison.

use std::sync::Mutex;

use ledger_aggregates::brand::BRAND_TYPE;
use ledger_aggregates::ids::period_stream_brand;
use ledger_aggregates::period::USAGE_PERIOD_TYPE;
use ledger_projections::{LogPosition, LogRecord};

/// Events told to one writer and not yet compared with its cache. A writer compares
/// them before each batch it decides; one that decides nothing for so long that more
/// wait forgets its whole cache instead, and loads again what it needs.
pub const STALE_EVENTS_MAX: usize = 65_536;

/// One told event: its stream and sequence.
pub(crate) type Told = (&'static str, String, u64);

/// What waits for one writer.
#[derive(Debug, Default)]
pub(crate) struct Stale {
    pub(crate) events: Vec<Told>,
    /// Compare nothing, forget everything cached: more waited than
    /// [`STALE_EVENTS_MAX`], or the log is followed from a position the cache was not
    /// compared with.
    pub(crate) forget_all: bool,
}

impl Stale {
    fn push(&mut self, told: Told) {
        if self.forget_all {
            return;
        }
        if self.events.len() >= STALE_EVENTS_MAX {
            self.events = Vec::new();
            self.forget_all = true;
            return;
        }
        self.events.push(told);
    }
}

/// Shared by the engine's prober and writers, and the consumer that follows the log.
#[derive(Debug)]
pub struct Freshness {
    /// Every event at or before this was told to its writer; `None` while no consumer
    /// follows the log (the prober then asks each stream's version).
    read_to: Mutex<Option<LogPosition>>,
    /// One per writer shard.
    stale: Vec<Mutex<Stale>>,
}

impl Freshness {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            read_to: Mutex::new(None),
            stale: (0..shards).map(|_| Mutex::new(Stale::default())).collect(),
        }
    }

    /// Follow the log from `end` on. What the writers cached before was never compared
    /// with the events up to `end`, so they forget it.
    pub fn follow_from(&self, end: LogPosition) {
        for stale in &self.stale {
            let mut stale = stale.lock().expect("stale lock");
            stale.events = Vec::new();
            stale.forget_all = true;
        }
        *self.read_to.lock().expect("read_to lock") = Some(end);
    }

    /// `records`, the log right after the position this stands at, were read: each
    /// writer is told of the events of its streams, then the position moves past them.
    pub fn read(&self, records: &[LogRecord]) {
        let Some(last) = records.last() else {
            return;
        };
        let shards = self.stale.len();
        let mut told: Vec<Vec<Told>> = (0..shards).map(|_| Vec::new()).collect();
        for r in records {
            let Some((aggregate_type, brand)) = owner(r) else {
                continue;
            };
            let sequence = u64::try_from(r.sequence).unwrap_or(0);
            told[super::shard_index(shards, brand)].push((
                aggregate_type,
                r.aggregate_id.clone(),
                sequence,
            ));
        }
        for (stale, told) in self.stale.iter().zip(told) {
            if told.is_empty() {
                continue;
            }
            let mut stale = stale.lock().expect("stale lock");
            for t in told {
                stale.push(t);
            }
        }
        *self.read_to.lock().expect("read_to lock") = Some(last.at);
    }

    /// Where the log has been read to, if it is followed.
    pub(crate) fn read_to(&self) -> Option<LogPosition> {
        *self.read_to.lock().expect("read_to lock")
    }

    /// What waits for writer `shard`, taken.
    pub(crate) fn take(&self, shard: usize) -> Stale {
        std::mem::take(&mut *self.stale[shard].lock().expect("stale lock"))
    }
}

/// The cache an event's stream lives in and the brand that owns it: a registry's id is
/// its brand, a period's is `brand:period`. Other streams are not cached by writers.
fn owner(r: &LogRecord) -> Option<(&'static str, &str)> {
    match r.aggregate_type.as_str() {
        USAGE_PERIOD_TYPE => Some((USAGE_PERIOD_TYPE, period_stream_brand(&r.aggregate_id)?)),
        BRAND_TYPE => Some((BRAND_TYPE, &r.aggregate_id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(position: i64, aggregate_type: &str, id: &str, sequence: i64) -> LogRecord {
        LogRecord {
            at: LogPosition::new(7, position),
            aggregate_type: aggregate_type.into(),
            aggregate_id: id.into(),
            sequence,
            event_type: "E".into(),
            event_version: "1".into(),
            payload: "{}".into(),
            metadata: "{}".into(),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn each_writer_is_told_of_its_brands_streams_then_the_position_moves() {
        let f = Freshness::new(2);
        assert_eq!(f.read_to(), None);
        f.follow_from(LogPosition::new(7, 1));
        assert!(
            (0..2).all(|s| f.take(s).forget_all),
            "the caches were never compared"
        );
        f.read(&[
            record(2, USAGE_PERIOD_TYPE, "acme:2026-11", 4),
            record(3, BRAND_TYPE, "acme", 2),
            record(4, "top_up_order", "acme:order-1", 1),
            record(5, USAGE_PERIOD_TYPE, "globex:2026-11", 9),
        ]);
        assert_eq!(f.read_to(), Some(LogPosition::new(7, 5)));
        let mut told: Vec<Told> = (0..2).flat_map(|s| f.take(s).events).collect();
        told.sort();
        assert_eq!(
            told,
            vec![
                (BRAND_TYPE, "acme".to_string(), 2),
                (USAGE_PERIOD_TYPE, "acme:2026-11".to_string(), 4),
                (USAGE_PERIOD_TYPE, "globex:2026-11".to_string(), 9),
            ]
        );
        let acme = super::super::shard_index(2, "acme");
        f.read(&[record(6, USAGE_PERIOD_TYPE, "acme:2026-12", 1)]);
        assert_eq!(f.take(acme).events.len(), 1);
        assert!(f.take(1 - acme).events.is_empty());
        assert!(f.take(acme).events.is_empty(), "taken once");
    }

    #[test]
    fn a_writer_told_more_than_it_can_hold_forgets_its_whole_cache() {
        let f = Freshness::new(1);
        let records: Vec<LogRecord> = (1..=STALE_EVENTS_MAX as i64 + 1)
            .map(|i| record(i, USAGE_PERIOD_TYPE, "acme:2026-11", i))
            .collect();
        f.read(&records[..STALE_EVENTS_MAX]);
        let full = f.take(0);
        assert_eq!(
            (full.events.len(), full.forget_all),
            (STALE_EVENTS_MAX, false)
        );
        f.read(&records);
        let over = f.take(0);
        assert!(over.forget_all);
        assert!(over.events.is_empty(), "nothing kept once all is forgotten");
        assert_eq!(
            f.read_to(),
            Some(LogPosition::new(7, STALE_EVENTS_MAX as i64 + 1))
        );
    }
}
