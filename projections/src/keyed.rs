//! Rows keyed by brand, then period: the shape every per-brand-period model shares.
//!
//! Nested maps rather than a map keyed by a `(brand, period)` tuple, because JSON object
//! keys are strings: serialized, a model reads `{"acme": {"2026-11": …}}`.

use std::collections::BTreeMap;

use ledger_aggregates::{BrandId, PeriodKey};
use serde::{Deserialize, Serialize};

/// One `T` per brand and period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByPeriod<T>(BTreeMap<BrandId, BTreeMap<PeriodKey, T>>);

impl<T> Default for ByPeriod<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<T> ByPeriod<T> {
    pub fn get(&self, brand: &BrandId, period: PeriodKey) -> Option<&T> {
        self.0.get(brand)?.get(&period)
    }

    pub(crate) fn get_mut(&mut self, brand: &BrandId, period: PeriodKey) -> Option<&mut T> {
        self.0.get_mut(brand)?.get_mut(&period)
    }

    /// The value of `brand` and `period`, made by `make` the first time. The brand id
    /// is cloned only then: this runs for every event, and most find their brand.
    pub(crate) fn get_or_insert_with(
        &mut self,
        brand: &BrandId,
        period: PeriodKey,
        make: impl FnOnce() -> T,
    ) -> &mut T {
        if !self.0.contains_key(brand) {
            self.0.insert(brand.clone(), BTreeMap::new());
        }
        self.0
            .get_mut(brand)
            .expect("the brand was inserted just above")
            .entry(period)
            .or_insert_with(make)
    }

    pub(crate) fn insert(&mut self, brand: &BrandId, period: PeriodKey, value: T) {
        match self.get_mut(brand, period) {
            Some(slot) => *slot = value,
            None => {
                self.get_or_insert_with(brand, period, || value);
            }
        }
    }

    /// Every brand-period in brand, then period order.
    pub fn iter(&self) -> impl Iterator<Item = (&BrandId, PeriodKey, &T)> {
        self.0
            .iter()
            .flat_map(|(b, periods)| periods.iter().map(move |(p, v)| (b, *p, v)))
    }

    /// The brands that have a value for `period`, in brand order.
    pub fn in_period(&self, period: PeriodKey) -> impl Iterator<Item = (&BrandId, &T)> {
        self.0
            .iter()
            .filter_map(move |(b, periods)| periods.get(&period).map(|v| (b, v)))
    }

    /// Number of brand-periods.
    pub fn len(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }

    pub(crate) fn inner(&self) -> &BTreeMap<BrandId, BTreeMap<PeriodKey, T>> {
        &self.0
    }
}
