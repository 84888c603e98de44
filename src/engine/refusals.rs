//! Repeated refusals, coalesced. A caller hammering an exhausted `block` quota would
//! otherwise append one `UsageDenied` per request: the log would grow with the abuse.
//!
//! The first refusal of a (period stream, metric, way) is appended at once and opens a
//! window; the refusals after it within the window are counted in memory and appended as
//! one `UsageDenied` carrying their `count` (from `first_at` to `at`), when the window has
//! ended, when the next refusal comes after it, or when the engine drains. So the log holds
//! at most two refusal events per window and key, and every refusal's count. The counts not
//! yet appended are what a crash loses (at most one window's repeats; never a usage).
//!
//! Counts and windows change only once the batch that decided them has committed; the
//! tallies a batch takes out to append go back if its append fails.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use ledger_aggregates::period::UsageVia;
use ledger_aggregates::{LedgerEvent, MetricKey};

/// One stream's refusals of one metric by one way.
pub(crate) type RefusalKey = (String, MetricKey, UsageVia);

/// Refusals counted and not yet appended: `last` is the latest, as it was refused.
#[derive(Debug, Clone)]
struct Tally {
    count: u64,
    first_at: DateTime<Utc>,
    last: LedgerEvent,
}

#[derive(Debug)]
struct Window {
    opened: DateTime<Utc>,
    tally: Option<Tally>,
}

/// What a batch does to the windows, applied when it commits ([`Refusals::acknowledge`]) or
/// undone when it fails ([`Refusals::restore`]).
#[derive(Debug, Default)]
pub(crate) struct Staged {
    /// Windows opened by a refusal this batch appends, by key: when.
    opened: HashMap<RefusalKey, DateTime<Utc>>,
    /// Refusals counted instead of appended.
    counted: Vec<(RefusalKey, LedgerEvent)>,
    /// Tallies taken out to be appended by this batch.
    taken: Vec<(RefusalKey, Tally)>,
}

pub(crate) struct Refusals {
    window: Duration,
    windows_max: usize,
    windows: HashMap<RefusalKey, Window>,
    /// Windows opened by the batch whose append is in flight: the batch decided meanwhile
    /// counts into them rather than open its own.
    inflight: HashMap<RefusalKey, DateTime<Utc>>,
}

impl Staged {
    /// What these took out for streams in `ids`, moved into a `Staged` of its own.
    pub(crate) fn split_off(&mut self, ids: &[&str]) -> Staged {
        let (off, kept) = std::mem::take(&mut self.taken)
            .into_iter()
            .partition(|(key, _)| ids.contains(&key.0.as_str()));
        self.taken = kept;
        Staged {
            taken: off,
            ..Staged::default()
        }
    }

    /// Add `other`'s changes to these.
    pub(crate) fn absorb(&mut self, other: Staged) {
        self.opened.extend(other.opened);
        self.counted.extend(other.counted);
        self.taken.extend(other.taken);
    }
}

impl Refusals {
    /// `window` zero appends every refusal alone. At most `windows_max` windows are kept;
    /// past it a refusal is appended alone rather than counted.
    pub(crate) fn new(window: std::time::Duration, windows_max: usize) -> Self {
        Self {
            window: Duration::from_std(window).unwrap_or(Duration::MAX),
            windows_max,
            windows: HashMap::new(),
            inflight: HashMap::new(),
        }
    }

    /// Decide how the refusal `denied`, just decided on stream `id`, is kept: the event
    /// to append (it may carry earlier refusals' count), or `None` when it is counted in
    /// its window.
    pub(crate) fn decide(
        &mut self,
        id: &str,
        denied: LedgerEvent,
        staged: &mut Staged,
    ) -> Option<LedgerEvent> {
        let LedgerEvent::UsageDenied {
            metric, via, at, ..
        } = &denied
        else {
            return Some(denied);
        };
        if self.window.is_zero() {
            return Some(denied);
        }
        let (at, key) = (*at, (id.to_owned(), metric.clone(), *via));
        let in_force = |opened: &DateTime<Utc>| at < *opened + self.window;
        let open = staged.opened.get(&key).is_some_and(in_force)
            || self.inflight.get(&key).is_some_and(in_force)
            || self.windows.get(&key).is_some_and(|w| in_force(&w.opened));
        if open {
            staged.counted.push((key, denied));
            return None;
        }
        if self.windows.len() >= self.windows_max && !self.windows.contains_key(&key) {
            return Some(denied);
        }
        // The window has ended: its count goes out with this refusal, which opens the next.
        let event = match self.windows.get_mut(&key).and_then(|w| w.tally.take()) {
            Some(tally) => {
                let event = with_count(denied, tally.count + 1, tally.first_at);
                staged.taken.push((key.clone(), tally));
                event
            }
            None => denied,
        };
        staged.opened.insert(key, at);
        Some(event)
    }

    /// The tallies to append now, as events by stream: those whose window ended before
    /// `now`, or every one with `all` (the engine drains). Windows that ended with
    /// nothing counted are forgotten.
    pub(crate) fn due(
        &mut self,
        now: DateTime<Utc>,
        all: bool,
        staged: &mut Staged,
    ) -> Vec<(String, LedgerEvent)> {
        let window = self.window;
        let mut events = Vec::new();
        self.windows.retain(|key, w| {
            let ended = now >= w.opened + window;
            if !(ended || all) {
                return true;
            }
            if let Some(tally) = w.tally.take() {
                let event = with_count(tally.last.clone(), tally.count, tally.first_at);
                events.push((key.0.clone(), event));
                staged.taken.push((key.clone(), tally));
            }
            // A failed append gives its tally back to a window made anew (`restore`).
            !ended && !all
        });
        events
    }

    /// True when some refusal is counted and not yet appended.
    pub(crate) fn pending(&self) -> bool {
        self.windows.values().any(|w| w.tally.is_some())
    }

    /// `staged`'s batch is being appended.
    pub(crate) fn launching(&mut self, staged: &Staged) {
        self.inflight.clone_from(&staged.opened);
    }

    /// The batch in flight has committed or failed.
    pub(crate) fn landed(&mut self) {
        self.inflight.clear();
    }

    /// Apply what a committed batch decided.
    pub(crate) fn acknowledge(&mut self, staged: Staged) {
        self.landed();
        let window = self.window;
        for (key, at) in staged.opened {
            let w = self.windows.entry(key).or_insert(Window {
                opened: at,
                tally: None,
            });
            if at >= w.opened + window {
                w.opened = at;
            }
        }
        for (key, denied) in staged.counted {
            let at = at_of(&denied);
            let w = self.windows.entry(key).or_insert(Window {
                opened: at,
                tally: None,
            });
            match &mut w.tally {
                Some(t) => {
                    t.count += 1;
                    t.first_at = t.first_at.min(at);
                    if at >= at_of(&t.last) {
                        t.last = denied;
                    }
                }
                None => {
                    w.tally = Some(Tally {
                        count: 1,
                        first_at: at,
                        last: denied,
                    })
                }
            }
        }
    }

    /// Give back what a failed batch took out to append; its counts are decided again
    /// with its jobs.
    pub(crate) fn restore(&mut self, staged: Staged) {
        for (key, taken) in staged.taken {
            let w = self.windows.entry(key).or_insert(Window {
                opened: taken.first_at,
                tally: None,
            });
            w.tally = Some(match w.tally.take() {
                None => taken,
                Some(t) => Tally {
                    count: t.count + taken.count,
                    first_at: t.first_at.min(taken.first_at),
                    last: match at_of(&t.last) >= at_of(&taken.last) {
                        true => t.last,
                        false => taken.last,
                    },
                },
            });
        }
    }
}

fn at_of(e: &LedgerEvent) -> DateTime<Utc> {
    match e {
        LedgerEvent::UsageDenied { at, .. } => *at,
        _ => unreachable!("only refusals are tallied"),
    }
}

/// `denied` standing for `n` refusals, the first at `first`.
fn with_count(mut denied: LedgerEvent, n: u64, first: DateTime<Utc>) -> LedgerEvent {
    if let LedgerEvent::UsageDenied {
        count, first_at, ..
    } = &mut denied
    {
        *count = n;
        *first_at = (n > 1).then_some(first);
    }
    denied
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_aggregates::MetricKey;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn refusal(s: i64) -> LedgerEvent {
        refusal_by(s, UsageVia::Record)
    }

    fn refusal_by(s: i64, via: UsageVia) -> LedgerEvent {
        LedgerEvent::UsageDenied {
            metric: MetricKey::parse("renders_3d").unwrap(),
            requested: 1,
            via,
            current: 10,
            effective_limit: 10,
            at: at(s),
            held: 0,
            count: 1,
            first_at: None,
        }
    }

    fn count_of(e: &LedgerEvent) -> (u64, Option<DateTime<Utc>>) {
        match e {
            LedgerEvent::UsageDenied {
                count, first_at, ..
            } => (*count, *first_at),
            _ => unreachable!(),
        }
    }

    /// Decide refusals at `seconds` in one batch each, committed; the events appended.
    fn run(r: &mut Refusals, seconds: &[i64]) -> Vec<LedgerEvent> {
        let mut out = Vec::new();
        for s in seconds {
            let mut staged = Staged::default();
            out.extend(r.decide("acme:2027-01", refusal(*s), &mut staged));
            r.acknowledge(staged);
        }
        out
    }

    #[test]
    fn repeats_within_a_window_are_one_event_with_their_count() {
        let mut r = Refusals::new(std::time::Duration::from_secs(60), 100);
        let seconds: Vec<i64> = (0..1_000).map(|i| i % 60).collect();
        let appended = run(&mut r, &seconds);
        assert_eq!(
            appended.len(),
            1,
            "only the window's first refusal is appended"
        );
        let mut staged = Staged::default();
        assert!(
            r.due(at(59), false, &mut staged).is_empty(),
            "the window is open"
        );
        let flushed = r.due(at(60), false, &mut staged);
        assert_eq!(flushed.len(), 1);
        assert_eq!(count_of(&flushed[0].1), (999, Some(at(0))));
        r.acknowledge(staged);
        assert!(!r.pending());
        assert!(r.windows.is_empty(), "an ended window is forgotten");
    }

    #[test]
    fn a_refusal_after_the_window_carries_its_count_and_opens_the_next() {
        let mut r = Refusals::new(std::time::Duration::from_secs(60), 100);
        let appended = run(&mut r, &[0, 10, 20, 70, 80]);
        assert_eq!(appended.len(), 2);
        assert_eq!(count_of(&appended[0]), (1, None));
        assert_eq!(count_of(&appended[1]), (3, Some(at(10))), "10, 20 and 70");
        let mut staged = Staged::default();
        let flushed = r.due(at(200), true, &mut staged);
        assert_eq!(count_of(&flushed[0].1), (1, None), "80 alone");
    }

    #[test]
    fn a_failed_batch_changes_nothing_and_gives_back_what_it_took() {
        let mut r = Refusals::new(std::time::Duration::from_secs(60), 100);
        run(&mut r, &[0, 1, 2]);
        // Counted in a batch that fails: not counted.
        let mut failed = Staged::default();
        assert!(r.decide("acme:2027-01", refusal(3), &mut failed).is_none());
        r.restore(failed);
        // Taken to append by a batch that fails: given back, then appended once.
        let mut failed = Staged::default();
        assert_eq!(r.due(at(61), false, &mut failed).len(), 1);
        r.restore(failed);
        let mut staged = Staged::default();
        let flushed = r.due(at(61), false, &mut staged);
        assert_eq!(count_of(&flushed[0].1), (2, Some(at(1))));
        r.acknowledge(staged);
        assert!(!r.pending());
    }

    #[test]
    fn past_the_bound_refusals_are_appended_alone() {
        let mut r = Refusals::new(std::time::Duration::from_secs(60), 1);
        run(&mut r, &[0]);
        let mut staged = Staged::default();
        let other = refusal_by(1, UsageVia::CheckQuota);
        for _ in 0..3 {
            assert!(r
                .decide("acme:2027-01", other.clone(), &mut staged)
                .is_some());
        }
    }

    #[test]
    fn a_zero_window_appends_every_refusal() {
        let mut r = Refusals::new(std::time::Duration::ZERO, 100);
        assert_eq!(run(&mut r, &[0, 0, 0]).len(), 3);
    }
}
