//! The fail-open spool: usage of requests let through while the ledger could not be
//! asked, kept in memory (bounded) and replayed in order, each with the idempotency key
//! its request was given, so a consumption whose first attempt did reach the ledger is
//! answered `replayed` and counted once.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::client::LedgerClient;
use crate::error::GuardError;
use crate::identity::BrandIdentity;

/// Entries a spool holds. One is a few hundred bytes (estimated: a brand, a metric, a
/// key and two metadata strings), so the spool stays within a few megabytes; at 100 fail-open requests a second it rides out a 100-second outage,
/// longer than a ledger restart. Past it, fail-open requests fail closed (503): letting
/// usage through that cannot be kept would be losing it.
pub const SPOOL_ENTRIES_MAX: usize = 10_000;

/// The first pause after a failed replay: short, since a restarted ledger answers fast.
pub const REPLAY_BACKOFF_MS_MIN: u64 = 100;

/// The longest pause between replays (the backoff doubles up to it): a ledger back from
/// a long outage is noticed within half a minute, without hammering it meanwhile.
pub const REPLAY_BACKOFF_MS_MAX: u64 = 30_000;

/// Replays of one entry the ledger refuses with a 4xx (a revoked credential, an unknown
/// metric) before it is dropped and logged: a refusal that repeats will not heal by
/// itself, and keeping it would block every entry behind it.
pub const REPLAY_REJECTIONS_MAX: u32 = 3;

/// One spooled consumption: what the request would have sent to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub brand: BrandIdentity,
    pub metric: String,
    pub amount: u64,
    /// The key the request was given; the replay sends it unchanged.
    pub idempotency_key: String,
    /// Sent unchanged too: the ledger compares a repeated key's whole request.
    pub metadata: BTreeMap<String, String>,
    /// The consumption's date (`occurredAt`), unchanged as well: a replay after
    /// midnight at a month's end still lands in the period the first try did.
    pub served_at: String,
}

/// What the spool did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Entries taken in.
    pub spooled: u64,
    /// Fail-open requests failed closed because the spool was full.
    pub full: u64,
    /// Entries the ledger counted on replay.
    pub counted: u64,
    /// Entries the ledger had already counted (answered `replayed`): a first attempt
    /// that reached it, or an earlier replay whose answer was lost.
    pub duplicates: u64,
    /// Entries the ledger refused on replay (a `block` quota ran out meanwhile): usage
    /// served but not counted, logged as a warning.
    pub refused: u64,
    /// Entries dropped after [`REPLAY_REJECTIONS_MAX`] 4xx answers, logged as errors.
    pub dropped: u64,
}

/// The bounded spool of one guard.
#[derive(Debug)]
pub struct Spool {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the replayer when an entry arrives in an empty spool.
    wake: Notify,
    /// The number of entries, watched by [`Spool::drained`].
    len: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct State {
    /// Entries in arrival order with the 4xx answers each has had.
    entries: VecDeque<(SpoolEntry, u32)>,
    /// Their idempotency keys: a request id sent again during an outage is one entry.
    keys: HashSet<String>,
    stats: SpoolStats,
}

/// Why an entry was not taken in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unspooled {
    /// The spool holds [`Spool::capacity`] entries.
    Full,
    /// An entry with the same key waits already (a request id reused during an outage).
    Duplicate,
}

/// How a replay ended for the entry at the front.
enum Settled {
    Counted,
    Duplicate,
    Refused,
}

impl Spool {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            capacity,
            wake: Notify::new(),
            len: watch::channel(0).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock (no calls out, no indexing).
        self.state.lock().expect("the spool lock is never poisoned")
    }

    /// Take in an entry, unless the spool is full or holds its key already.
    pub(crate) fn push(&self, entry: SpoolEntry) -> Result<(), Unspooled> {
        let mut state = self.state();
        if state.keys.contains(&entry.idempotency_key) {
            return Err(Unspooled::Duplicate);
        }
        if state.entries.len() >= self.capacity {
            state.stats.full += 1;
            return Err(Unspooled::Full);
        }
        state.keys.insert(entry.idempotency_key.clone());
        state.entries.push_back((entry, 0));
        state.stats.spooled += 1;
        self.len.send_replace(state.entries.len());
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A copy of the entries waiting, oldest first.
    pub fn entries(&self) -> Vec<SpoolEntry> {
        self.state()
            .entries
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }

    pub fn stats(&self) -> SpoolStats {
        self.state().stats
    }

    /// Wait until every entry is replayed, at most `timeout`; whether it emptied. For a
    /// graceful shutdown: the spool is in memory, and a process that exits loses it.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let mut len = self.len.subscribe();
        let emptied = tokio::time::timeout(timeout, len.wait_for(|n| *n == 0)).await;
        emptied.is_ok()
    }

    fn front(&self) -> Option<SpoolEntry> {
        self.state().entries.front().map(|(e, _)| e.clone())
    }

    /// Remove the front entry (only the replayer removes, so it is still `entry`).
    fn pop(&self, entry: &SpoolEntry) -> MutexGuard<'_, State> {
        let mut state = self.state();
        let front = state.entries.pop_front();
        debug_assert_eq!(front.map(|(e, _)| e).as_ref(), Some(entry));
        state.keys.remove(&entry.idempotency_key);
        self.len.send_replace(state.entries.len());
        state
    }

    fn settle(&self, entry: &SpoolEntry, how: Settled) {
        let mut state = self.pop(entry);
        match how {
            Settled::Counted => state.stats.counted += 1,
            Settled::Duplicate => state.stats.duplicates += 1,
            Settled::Refused => state.stats.refused += 1,
        }
        log_drained(&state);
    }

    /// Count a 4xx answer for the front entry; drop it once it has had too many.
    fn reject(&self, entry: &SpoolEntry, e: &GuardError) {
        let mut state = self.state();
        let Some((_, rejections)) = state.entries.front_mut() else {
            return;
        };
        *rejections += 1;
        if *rejections < REPLAY_REJECTIONS_MAX {
            return;
        }
        drop(state);
        tracing::error!(brand = %entry.brand, metric = %entry.metric, amount = entry.amount,
            key = %entry.idempotency_key, error = %e, "spooled usage dropped: the ledger refuses it");
        let mut state = self.pop(entry);
        state.stats.dropped += 1;
        log_drained(&state);
    }
}

/// The end of an outage, for operators: every spooled usage has been answered.
fn log_drained(state: &State) {
    if state.entries.is_empty() {
        tracing::info!(stats = ?state.stats, "spool drained");
    }
}

/// Replay the spool for as long as the guard lives: one entry at a time, oldest first,
/// pausing with a doubling backoff while the ledger is unavailable.
pub(crate) async fn replay(spool: Arc<Spool>, client: LedgerClient) {
    let mut backoff_ms = REPLAY_BACKOFF_MS_MIN;
    loop {
        let Some(entry) = spool.front() else {
            spool.wake.notified().await;
            continue;
        };
        let answer = client
            .consume(
                &entry.brand,
                &entry.metric,
                entry.amount,
                (&entry.idempotency_key, &entry.served_at),
                &entry.metadata,
            )
            .await;
        match answer {
            Ok(a) if a.replayed => spool.settle(&entry, Settled::Duplicate),
            Ok(a) if a.decision.allowed => spool.settle(&entry, Settled::Counted),
            Ok(_) => {
                tracing::warn!(brand = %entry.brand, metric = %entry.metric, amount = entry.amount,
                    "spooled usage refused on replay: served during the outage, not counted");
                spool.settle(&entry, Settled::Refused);
            }
            // The key is known with another request: the ledger holds a result for it.
            Err(GuardError::KeyReused(_)) => spool.settle(&entry, Settled::Duplicate),
            Err(e) if e.is_unavailable() => {
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(REPLAY_BACKOFF_MS_MAX);
                continue;
            }
            Err(e) => {
                spool.reject(&entry, &e);
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                continue;
            }
        }
        backoff_ms = REPLAY_BACKOFF_MS_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> SpoolEntry {
        SpoolEntry {
            brand: BrandIdentity::new("acme").unwrap(),
            metric: "api_calls".to_owned(),
            amount: 1,
            idempotency_key: format!("guard:k{n}"),
            metadata: BTreeMap::new(),
            served_at: "2026-11-30T23:58:00.000Z".to_owned(),
        }
    }

    #[test]
    fn a_full_spool_gives_the_entry_back_and_counts_it() {
        // Proves the bound: entries past the capacity are refused, never queued.
        let spool = Spool::new(3);
        for n in 0..3 {
            spool.push(entry(n)).unwrap();
        }
        assert_eq!(spool.push(entry(3)), Err(Unspooled::Full));
        assert_eq!(spool.len(), 3);
        let stats = spool.stats();
        assert_eq!((stats.spooled, stats.full), (3, 1));
        assert_eq!(spool.entries(), (0..3).map(entry).collect::<Vec<_>>());
    }

    #[test]
    fn a_key_waiting_already_is_not_spooled_twice() {
        // Proves a request id reused during an outage is one entry (and one count), and
        // that its key can be spooled again once the first entry is settled.
        let spool = Spool::new(3);
        spool.push(entry(0)).unwrap();
        assert_eq!(spool.push(entry(0)), Err(Unspooled::Duplicate));
        assert_eq!(spool.len(), 1);
        spool.settle(&entry(0), Settled::Counted);
        spool.push(entry(0)).unwrap();
    }

    #[test]
    fn settling_frees_room_in_arrival_order() {
        // Proves the replayer takes the oldest entry first and its removal makes room.
        let spool = Spool::new(2);
        spool.push(entry(0)).unwrap();
        spool.push(entry(1)).unwrap();
        assert_eq!(spool.front(), Some(entry(0)));
        spool.settle(&entry(0), Settled::Duplicate);
        spool.push(entry(2)).unwrap();
        assert_eq!(spool.entries(), vec![entry(1), entry(2)]);
        assert_eq!(spool.stats().duplicates, 1);
    }

    #[test]
    fn an_entry_refused_again_and_again_is_dropped_not_kept_forever() {
        // Proves one poisoned entry cannot block the spool: dropped at the named limit.
        let spool = Spool::new(2);
        spool.push(entry(0)).unwrap();
        spool.push(entry(1)).unwrap();
        let e = GuardError::Misconfigured("revoked".to_owned());
        for _ in 0..REPLAY_REJECTIONS_MAX - 1 {
            spool.reject(&entry(0), &e);
        }
        assert_eq!(spool.len(), 2);
        spool.reject(&entry(0), &e);
        assert_eq!(spool.entries(), vec![entry(1)]);
        assert_eq!(spool.stats().dropped, 1);
    }

    #[tokio::test]
    async fn drained_answers_once_the_spool_is_empty() {
        // Proves a graceful shutdown can wait for the replay, and gives up at its timeout.
        let spool = Spool::new(2);
        assert!(spool.drained(Duration::from_millis(1)).await);
        spool.push(entry(0)).unwrap();
        assert!(!spool.drained(Duration::from_millis(10)).await);
        spool.settle(&entry(0), Settled::Counted);
        assert!(spool.drained(Duration::from_millis(10)).await);
    }
}
