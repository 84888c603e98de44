//! `Timeline<T>`: the read models that keep a list of entries per brand-period, in
//! stream order, each added (and possibly later removed) by an event of a kind
//! (`ActiveAlerts`, `TopUpHistory`). Only the entries events stand for differ between
//! them; keeping, deduplicating and reading the lists is written once here.

use ledger_aggregates::{BrandId, PeriodKey};
use serde::{Deserialize, Serialize};

use crate::cursor::{Admitted, ReadModel, StreamCursors};
use crate::diff::{field, Diff, Differences};
use crate::event::ProjectedEvent;
use crate::keyed::ByPeriod;

/// What one event of the log does to a timeline.
pub enum Change<T: TimelineEntry> {
    /// Append this entry.
    Add(T),
    /// Remove the entries with this key.
    Remove(T::Key),
}

/// An entry of a timeline.
pub trait TimelineEntry: Sized {
    /// What a removal names an entry by.
    type Key: PartialEq;
    fn key(&self) -> Self::Key;
    /// The brand, period and change `event` stands for; `None` for other events.
    fn of(event: &ProjectedEvent) -> Option<(&BrandId, PeriodKey, Change<Self>)>;
}

/// Entries per brand and period, in the order their events were appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline<T> {
    cursors: StreamCursors,
    entries: ByPeriod<Vec<T>>,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Self {
            cursors: StreamCursors::default(),
            entries: ByPeriod::default(),
        }
    }
}

impl<T> Timeline<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries of `brand` in `period`, oldest first (empty when none).
    pub fn get(&self, brand: &BrandId, period: PeriodKey) -> &[T] {
        self.entries.get(brand, period).map_or(&[], Vec::as_slice)
    }

    /// Every brand-period with entries, in brand then period order.
    pub fn iter(&self) -> impl Iterator<Item = (&BrandId, PeriodKey, &[T])> {
        self.entries.iter().map(|(b, p, v)| (b, p, v.as_slice()))
    }

    /// Put back the entries of a brand-period stream folded up to `sequence`.
    pub(crate) fn restore(
        &mut self,
        brand: &BrandId,
        period: PeriodKey,
        sequence: u64,
        entries: Vec<T>,
    ) {
        self.cursors.restore_period(brand, period, sequence);
        if !entries.is_empty() {
            self.entries.insert(brand, period, entries);
        }
    }
}

impl<T: TimelineEntry> ReadModel for Timeline<T> {
    fn cursors(&self) -> &StreamCursors {
        &self.cursors
    }
    fn cursors_mut(&mut self) -> &mut StreamCursors {
        &mut self.cursors
    }

    fn fold(&mut self, event: &ProjectedEvent, _: &Admitted) {
        match T::of(event) {
            Some((brand, period, change @ Change::Add(_))) => {
                self.entries
                    .with(brand, period, Vec::new, |entries| change.fold(entries));
            }
            Some((brand, period, change @ Change::Remove(_))) => {
                let Some(entries) = self.entries.get_mut(brand, period) else {
                    return;
                };
                change.fold(entries);
                // An emptied list is no list, so a model equals one that never had it.
                if entries.is_empty() {
                    self.entries.remove(brand, period);
                }
            }
            None => {}
        }
    }
}

impl<T: TimelineEntry> Change<T> {
    /// Apply the change to a brand-period's list: the timelines' one rule, for
    /// [`Timeline`] and for `PeriodModels` alike.
    pub(crate) fn fold(self, entries: &mut Vec<T>) {
        match self {
            Change::Add(entry) => entries.push(entry),
            Change::Remove(key) => entries.retain(|e| e.key() != key),
        }
    }
}

impl<T: Diff> Diff for Timeline<T> {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        field(out, path, "cursors", &self.cursors, &right.cursors);
        field(out, path, "entries", &self.entries, &right.entries);
    }
}
