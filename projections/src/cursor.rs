//! Deduplication, in one place for every model: the last sequence applied per stream.
//!
//! The projector delivers at least once (a crash between a batch and its checkpoint
//! redelivers the batch), so a model must take an event twice and count it once. Every
//! model keeps a [`StreamCursors`] and folds only through [`ReadModel::apply`], which
//! asks the cursors first; the fold itself needs an [`Admitted`] that only the cursors
//! hand out, so no model can fold around the check.

use std::collections::BTreeMap;

use ledger_aggregates::{BrandId, PeriodKey};
use serde::{Deserialize, Serialize};

use crate::event::{ProjectedEvent, StreamEvent};
use crate::keyed::ByPeriod;

/// The last sequence applied of every stream a model has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCursors {
    /// Brand-period streams (`brand:YYYY-MM`).
    periods: ByPeriod<u64>,
    /// Brand registry streams.
    brands: BTreeMap<BrandId, u64>,
}

/// What [`ReadModel::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The next event of its stream: folded.
    Applied,
    /// Folded, but sequences `expected..sequence` of its stream were never delivered:
    /// the log was read with a hole. The models are no longer a replay of the log; the
    /// projector must treat this as an error and rebuild.
    AppliedAfterGap { expected: u64 },
    /// Already applied (its sequence is at or below `last_applied`): ignored.
    Duplicate { last_applied: u64 },
}

impl Delivery {
    /// Whether the event changed the model.
    pub fn folded(self) -> bool {
        !matches!(self, Delivery::Duplicate { .. })
    }
}

/// Proof that the cursors admitted an event: the only way to reach [`ReadModel::fold`].
#[derive(Debug)]
pub struct Admitted {
    delivery: Delivery,
}

impl StreamCursors {
    /// The last sequence applied of a brand-period stream (0: none).
    pub fn period(&self, brand: &BrandId, period: PeriodKey) -> u64 {
        self.periods.get(brand, period).copied().unwrap_or(0)
    }

    /// The last sequence applied of a brand registry stream (0: none).
    pub fn brand(&self, brand: &BrandId) -> u64 {
        self.brands.get(brand).copied().unwrap_or(0)
    }

    /// Set the last sequence applied of a brand-period stream, for a model restored
    /// from storage.
    pub(crate) fn restore_period(&mut self, brand: &BrandId, period: PeriodKey, sequence: u64) {
        self.periods.insert(brand, period, sequence);
    }

    /// Every brand-period stream seen, with its last sequence applied.
    pub fn periods(&self) -> impl Iterator<Item = (&BrandId, PeriodKey, u64)> {
        self.periods.iter().map(|(b, p, s)| (b, p, *s))
    }

    /// Admit `event` if its sequence is above its stream's last one, and move the cursor.
    /// A known stream's cursor is found once and moved in place: this runs for every
    /// event in every model.
    pub(crate) fn admit(&mut self, event: &ProjectedEvent) -> Result<Admitted, Delivery> {
        let sequence = event.sequence;
        let last = match &event.event {
            StreamEvent::Period { brand, period, .. } => {
                match self.periods.get_mut(brand, *period) {
                    Some(cursor) => advance(cursor, sequence)?,
                    None => {
                        let last = advance(&mut 0, sequence)?;
                        self.periods.insert(brand, *period, sequence);
                        last
                    }
                }
            }
            StreamEvent::Brand { brand, .. } => match self.brands.get_mut(brand) {
                Some(cursor) => advance(cursor, sequence)?,
                None => {
                    let last = advance(&mut 0, sequence)?;
                    self.brands.insert(brand.clone(), sequence);
                    last
                }
            },
        };
        let expected = last + 1;
        let delivery = if sequence == expected {
            Delivery::Applied
        } else {
            Delivery::AppliedAfterGap { expected }
        };
        Ok(Admitted { delivery })
    }
}

/// Move `cursor` up to `sequence` and answer where it was; a `sequence` at or below it
/// is a duplicate and leaves it.
fn advance(cursor: &mut u64, sequence: u64) -> Result<u64, Delivery> {
    let last = *cursor;
    if sequence <= last {
        return Err(Delivery::Duplicate { last_applied: last });
    }
    *cursor = sequence;
    Ok(last)
}

/// A read model: a fold of the log that takes every event at least once and counts it
/// once.
pub trait ReadModel {
    fn cursors(&self) -> &StreamCursors;
    fn cursors_mut(&mut self) -> &mut StreamCursors;

    /// Fold an event the cursors admitted. Reached only through [`ReadModel::apply`].
    fn fold(&mut self, event: &ProjectedEvent, admitted: &Admitted);

    /// Fold `event` unless its stream already went past it. Idempotent: applying an
    /// event again, or any prefix of a stream again, leaves the model as it was.
    fn apply(&mut self, event: &ProjectedEvent) -> Delivery {
        match self.cursors_mut().admit(event) {
            Ok(admitted) => {
                self.fold(event, &admitted);
                admitted.delivery
            }
            Err(duplicate) => duplicate,
        }
    }
}

crate::diff::diff_fields!(StreamCursors { periods, brands });
