//! The hold sweeper: once a hold's time to live has run out, it asks the writer of the
//! hold's stream to append its release (`HoldReleased`, reason `expired`, dated at the
//! expiry instant). Decisions already ignore a hold past its expiry; the event is what
//! makes the expiry a fact of the log that summaries, replays and auditors see.
//!
//! It learns of holds from this engine as they are placed, from the log at start (holds
//! placed before a restart) and from the log every [`HOLD_RESCAN_EVERY`] (holds placed
//! by another instance).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use ledger_aggregates::hold::HOLD_TTL_SECONDS_MAX;
use ledger_aggregates::ids::parse_period_stream_id;
use ledger_aggregates::{BrandId, LedgerEvent, PeriodCommand, PeriodKey};
use tokio::sync::{mpsc, watch};

use super::{submit, Committed, Job, Metadata, PeriodRequest};
use crate::clock::Clock;
use crate::store::EventLog;

/// How often due holds are looked for. A hold past its expiry already holds nothing in
/// every decision; its release event may come up to this late.
pub const HOLD_SWEEP_TICK: Duration = Duration::from_secs(1);
/// How often the log is read for holds another instance placed.
pub const HOLD_RESCAN_EVERY: Duration = Duration::from_secs(30);
/// How far back a rescan reads: several rescan intervals, so a hold whose transaction
/// committed late (its `recorded_at` is its transaction's start) is still seen.
pub const HOLD_RESCAN_WINDOW: Duration = Duration::from_secs(180);
/// Holds read from the log by one scan, newest first. At start every hold placed in
/// the last day is read; past this many, the oldest are released only when their
/// stream's next command or commit finds them expired (decisions never count them).
pub const HOLD_SCAN_ROWS_MAX: i64 = 100_000;
/// Holds waiting for their expiry in this process. Each is a few dozen bytes.
pub const HOLDS_TRACKED_MAX: usize = 1_000_000;
/// Holds placed here and not yet taken by the sweeper; a full queue drops the notice,
/// and the next rescan finds the hold in the log.
pub const HOLD_NOTICES_MAX: usize = 65_536;
/// Expiries asked of the writers at once: enough to fill their batches.
pub const EXPIRIES_IN_FLIGHT_MAX: usize = 256;
/// A failed expiry (store down) is asked again this much later.
pub const EXPIRY_RETRY_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// A hold to release at `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Due {
    pub expires_at: DateTime<Utc>,
    pub brand: BrandId,
    pub period: PeriodKey,
}

/// The holds known to this process, by expiry.
#[derive(Default)]
struct Schedule {
    heap: BinaryHeap<Reverse<Due>>,
    known: HashSet<Due>,
}

impl Schedule {
    fn add(&mut self, due: Due) {
        if self.known.len() >= HOLDS_TRACKED_MAX || !self.known.insert(due.clone()) {
            return;
        }
        self.heap.push(Reverse(due));
    }

    /// The streams with a hold due at `now`, once each.
    fn take_due(&mut self, now: DateTime<Utc>) -> Vec<(BrandId, PeriodKey)> {
        let mut streams = Vec::new();
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.expires_at > now {
                break;
            }
            let Reverse(due) = self.heap.pop().expect("peeked");
            self.known.remove(&due);
            let stream = (due.brand, due.period);
            if !streams.contains(&stream) {
                streams.push(stream);
            }
        }
        streams
    }
}

/// The sweeper's handle for the engine: notices of holds placed here.
#[derive(Clone)]
pub(crate) struct Notices(mpsc::Sender<Due>);

impl Notices {
    /// Tell the sweeper of the hold an outcome placed, if it placed one.
    pub(crate) fn placed(&self, brand: &BrandId, period: PeriodKey, events: &[Committed]) {
        for c in events {
            if let LedgerEvent::QuotaReserved { expires_at, .. } = &c.event {
                let due = Due {
                    expires_at: *expires_at,
                    brand: brand.clone(),
                    period,
                };
                // Full: the next rescan reads it from the log.
                let _ = self.0.try_send(due);
            }
        }
    }
}

/// Start the sweeper. It holds the writers' queues weakly, so dropping every engine
/// handle still stops the writers, and it ends with them or when the engine closes.
pub(crate) fn start(
    log: Arc<dyn EventLog>,
    shards: Weak<[mpsc::Sender<Job>]>,
    clock: Arc<dyn Clock>,
    closing: watch::Receiver<bool>,
) -> Notices {
    let (tx, rx) = mpsc::channel(HOLD_NOTICES_MAX);
    tokio::spawn(run(log, shards, clock, rx, closing));
    Notices(tx)
}

async fn run(
    log: Arc<dyn EventLog>,
    shards: Weak<[mpsc::Sender<Job>]>,
    clock: Arc<dyn Clock>,
    mut notices: mpsc::Receiver<Due>,
    mut closing: watch::Receiver<bool>,
) {
    let mut schedule = Schedule::default();
    // Every hold placed within the longest time to live (and a rescan window for
    // late commits) may still be open.
    let since_start = Duration::from_secs(u64::from(HOLD_TTL_SECONDS_MAX)) + HOLD_RESCAN_WINDOW;
    let mut scanned = scan(log.as_ref(), since_start, &mut schedule).await;
    let mut last_scan = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(HOLD_SWEEP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            notice = notices.recv() => match notice {
                Some(due) => {
                    schedule.add(due);
                    continue;
                }
                None => return,
            },
            changed = closing.changed() => {
                if changed.is_err() || *closing.borrow() {
                    return;
                }
            }
        }
        if last_scan.elapsed() >= HOLD_RESCAN_EVERY {
            // A failed start-up scan is retried over the whole day, not the window.
            let window = if scanned {
                HOLD_RESCAN_WINDOW
            } else {
                since_start
            };
            scanned = scan(log.as_ref(), window, &mut schedule).await || scanned;
            last_scan = tokio::time::Instant::now();
        }
        let now = clock.now();
        let due = schedule.take_due(now);
        if due.is_empty() {
            continue;
        }
        let Some(queues) = shards.upgrade() else {
            return;
        };
        let failed: Vec<(BrandId, PeriodKey)> = futures::stream::iter(due)
            .map(|(brand, period)| {
                let queues = queues.clone();
                async move {
                    let done = expire(&queues, brand.clone(), period).await;
                    (brand, period, done)
                }
            })
            .buffer_unordered(EXPIRIES_IN_FLIGHT_MAX)
            .filter_map(|(brand, period, done)| async move {
                match done {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(%brand, %period, error = %e, "hold expiry failed; retrying");
                        Some((brand, period))
                    }
                }
            })
            .collect()
            .await;
        for (brand, period) in failed {
            schedule.add(Due {
                expires_at: now + EXPIRY_RETRY_AFTER,
                brand,
                period,
            });
        }
    }
}

/// Ask the stream's writer to release what has expired.
async fn expire(
    queues: &[mpsc::Sender<Job>],
    brand: BrandId,
    period: PeriodKey,
) -> Result<(), super::EngineError> {
    let req = PeriodRequest {
        brand: brand.clone(),
        period: Some(period),
        command: PeriodCommand::ExpireHolds,
        idempotency_key: None,
        metadata: Metadata::default(),
    };
    submit(queues, &brand, |reply| Job::Period {
        req,
        fingerprint: String::new(),
        logged: None,
        reply,
    })
    .await
    .map(|_| ())
}

/// Read the holds placed within `window` from the log into `schedule`; false when the
/// log could not be read.
async fn scan(log: &dyn EventLog, window: Duration, schedule: &mut Schedule) -> bool {
    let rows = match log.recent_holds(window, HOLD_SCAN_ROWS_MAX).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "reading open holds from the log failed; retrying");
            return false;
        }
    };
    if rows.len() as i64 >= HOLD_SCAN_ROWS_MAX {
        tracing::warn!(
            rows = rows.len(),
            "more recent holds than one scan reads; the oldest expire on their stream's next command"
        );
    }
    for (stream, payload) in rows {
        let parsed = parse_period_stream_id(&stream)
            .ok()
            .zip(serde_json::from_str::<LedgerEvent>(&payload).ok());
        match parsed {
            Some(((brand, period), LedgerEvent::QuotaReserved { expires_at, .. })) => {
                schedule.add(Due {
                    expires_at,
                    brand,
                    period,
                })
            }
            _ => tracing::error!(%stream, "a QuotaReserved row does not parse"),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(minute: i64, brand: &str) -> Due {
        Due {
            expires_at: DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::minutes(minute),
            brand: BrandId::parse(brand).unwrap(),
            period: PeriodKey::parse("2026-12").unwrap(),
        }
    }

    #[test]
    fn the_schedule_gives_each_due_stream_once_in_expiry_order() {
        let mut s = Schedule::default();
        for d in [
            due(3, "b"),
            due(1, "a"),
            due(2, "a"),
            due(9, "c"),
            due(1, "a"),
        ] {
            s.add(d);
        }
        let at = |m| DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::minutes(m);
        let names = |v: Vec<(BrandId, PeriodKey)>| -> Vec<String> {
            v.into_iter().map(|(b, _)| b.to_string()).collect()
        };
        assert_eq!(names(s.take_due(at(0))), Vec::<String>::new());
        assert_eq!(names(s.take_due(at(3))), vec!["a", "b"]);
        assert_eq!(names(s.take_due(at(8))), Vec::<String>::new());
        assert_eq!(names(s.take_due(at(9))), vec!["c"]);
        assert!(s.known.is_empty() && s.heap.is_empty());
    }
}
