//! Rows keyed by brand, then period: the shape every per-brand-period model shares.
//!
//! Nested maps rather than a map keyed by a `(brand, period)` tuple, because JSON object
//! keys are strings: serialized, a model reads `{"acme": {"2026-11": …}}`.
//!
//! Brands are hashed ([`BrandMap`]), not kept in a `BTreeMap`: every event looks its
//! brand up in every model, and a B-tree of thousands of brands costs some twenty
//! string comparisons per lookup, which was most of the fold's time. Readers still see
//! brand order: iteration, serialization, `Debug` and diffs sort the brands first
//! (readers go through a model far less often than events go in).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use ledger_aggregates::{BrandId, PeriodKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::diff::{Diff, Differences};

/// One `V` per brand: looked up by hash, seen in brand order.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BrandMap<V>(HashMap<BrandId, V>);

impl<V> Default for BrandMap<V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<V> BrandMap<V> {
    pub(crate) fn get(&self, brand: &BrandId) -> Option<&V> {
        self.0.get(brand)
    }

    pub(crate) fn get_mut(&mut self, brand: &BrandId) -> Option<&mut V> {
        self.0.get_mut(brand)
    }

    pub(crate) fn contains_key(&self, brand: &BrandId) -> bool {
        self.0.contains_key(brand)
    }

    pub(crate) fn insert(&mut self, brand: BrandId, value: V) -> Option<V> {
        self.0.insert(brand, value)
    }

    pub(crate) fn remove(&mut self, brand: &BrandId) -> Option<V> {
        self.0.remove(brand)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.values()
    }

    /// Every brand in order.
    pub(crate) fn sorted(&self) -> BTreeMap<&BrandId, &V> {
        self.0.iter().collect()
    }

    /// Every brand in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&BrandId, &V)> {
        self.sorted().into_iter()
    }
}

/// As the map it stands for: brands in order.
impl<V: fmt::Debug> fmt::Debug for BrandMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.sorted().fmt(f)
    }
}

/// A JSON object, brands in order.
impl<V: Serialize> Serialize for BrandMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.sorted().serialize(s)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for BrandMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let brands = BTreeMap::<BrandId, V>::deserialize(d)?;
        Ok(Self(brands.into_iter().collect()))
    }
}

impl<V: Diff> Diff for BrandMap<V> {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        self.sorted().diff(&right.sorted(), path, out);
    }
}

/// One `T` per brand and period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByPeriod<T>(BrandMap<BTreeMap<PeriodKey, T>>);

impl<T> Default for ByPeriod<T> {
    fn default() -> Self {
        Self(BrandMap::default())
    }
}

impl<T> ByPeriod<T> {
    pub fn get(&self, brand: &BrandId, period: PeriodKey) -> Option<&T> {
        self.0.get(brand)?.get(&period)
    }

    pub(crate) fn get_mut(&mut self, brand: &BrandId, period: PeriodKey) -> Option<&mut T> {
        self.0.get_mut(brand)?.get_mut(&period)
    }

    /// The value of `brand` and `period`, made by `make` the first time; the brand id
    /// is cloned only then. Per-event folds use [`ByPeriod::with`], one lookup fewer.
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

    /// Run `f` on the value of `brand` and `period`, made by `make` the first time.
    /// For the fold's hot path: a known brand is looked up once, where
    /// [`ByPeriod::get_or_insert_with`] looks it up twice (stable Rust cannot return a
    /// borrow out of a `get_mut` that may have failed).
    pub(crate) fn with<R>(
        &mut self,
        brand: &BrandId,
        period: PeriodKey,
        make: impl FnOnce() -> T,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        match self.0.get_mut(brand) {
            Some(periods) => f(periods.entry(period).or_insert_with(make)),
            None => f(self.get_or_insert_with(brand, period, make)),
        }
    }

    pub(crate) fn insert(&mut self, brand: &BrandId, period: PeriodKey, value: T) {
        match self.get_mut(brand, period) {
            Some(slot) => *slot = value,
            None => {
                self.get_or_insert_with(brand, period, || value);
            }
        }
    }

    /// Forget the value of `brand` and `period`, and the brand once it has none left,
    /// so a model emptied by its events equals one that never held anything.
    pub(crate) fn remove(&mut self, brand: &BrandId, period: PeriodKey) {
        let Some(periods) = self.0.get_mut(brand) else {
            return;
        };
        periods.remove(&period);
        if periods.is_empty() {
            self.0.remove(brand);
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

    pub(crate) fn inner(&self) -> &BrandMap<BTreeMap<PeriodKey, T>> {
        &self.0
    }
}
