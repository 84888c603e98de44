//! `Timeline<T>`: the read models that list one entry per event of a kind, per
//! brand-period, in stream order (`AlertTimeline`, `TopUpHistory`). Only the entry an
//! event stands for differs between them; keeping, deduplicating and reading the lists
//! is written once here.

use ledger_aggregates::{BrandId, PeriodKey};
use serde::{Deserialize, Serialize};

use crate::cursor::{Admitted, ReadModel, StreamCursors};
use crate::diff::{field, Diff, Differences};
use crate::event::ProjectedEvent;
use crate::keyed::ByPeriod;

/// An entry of a timeline: what one event of the log adds to it, if anything.
pub trait TimelineEntry: Sized {
    /// The brand, period and entry `event` stands for; `None` for other events.
    fn of(event: &ProjectedEvent) -> Option<(&BrandId, PeriodKey, Self)>;
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
        if let Some((brand, period, entry)) = T::of(event) {
            self.entries
                .with(brand, period, Vec::new, |entries| entries.push(entry));
        }
    }
}

impl<T: Diff> Diff for Timeline<T> {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        field(out, path, "cursors", &self.cursors, &right.cursors);
        field(out, path, "entries", &self.entries, &right.entries);
    }
}
