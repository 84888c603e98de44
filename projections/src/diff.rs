//! Differences between two sets of models, in words: what `replay verify` prints when the
//! stored models and a fresh replay disagree.
//!
//! Each model compares field by field and reports the path of every leaf that differs
//! (`quota_summary/rows/acme/2026-11/renders_3d/current: 12 on the left, 13 on the
//! right`). Equal subtrees are skipped on `==` before any path is built, so comparing two
//! equal ledgers costs one walk and no allocation.

use std::collections::BTreeMap;
use std::fmt::{self, Debug, Display};

use chrono::{DateTime, Utc};
use ledger_aggregates::period::{PlanSegment, Severity};
use ledger_aggregates::{Currency, MetricKey, Money, PlanDefinition, PlanId};
use rust_decimal::Decimal;

use crate::keyed::ByPeriod;
use crate::overage::LineKind;

/// How many differences are listed one by one; the rest are only counted. A model
/// rebuilt against the wrong log can differ in every row: a thousand lines are enough
/// to see the pattern and keep the report readable.
pub const DIFFERENCES_LISTED_MAX: usize = 1_000;

/// One leaf that differs, with both sides in words (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub path: String,
    pub left: Option<String>,
    pub right: Option<String>,
}

impl Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Option<String>| s.clone().unwrap_or_else(|| "absent".to_owned());
        write!(
            f,
            "{}: {} on the left, {} on the right",
            self.path,
            side(&self.left),
            side(&self.right)
        )
    }
}

/// Every difference found: the first [`DIFFERENCES_LISTED_MAX`] listed, all counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Differences {
    listed: Vec<Difference>,
    total: usize,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// How many differences there are, listed or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The differences listed, in model then key order.
    pub fn listed(&self) -> &[Difference] {
        &self.listed
    }

    /// How many were counted but not listed.
    pub fn omitted(&self) -> usize {
        self.total - self.listed.len()
    }

    pub(crate) fn push(&mut self, path: &str, left: Option<String>, right: Option<String>) {
        self.total += 1;
        if self.listed.len() < DIFFERENCES_LISTED_MAX {
            self.listed.push(Difference {
                path: path.to_owned(),
                left,
                right,
            });
        }
    }
}

impl Display for Differences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no differences");
        }
        for d in &self.listed {
            writeln!(f, "{d}")?;
        }
        if self.omitted() > 0 {
            writeln!(f, "… and {} more differences", self.omitted())?;
        }
        Ok(())
    }
}

/// A value that can say where it differs from another of its type.
pub(crate) trait Diff: PartialEq + Debug {
    /// Record every leaf where `self` (left) and `right` differ, under `path`.
    fn diff(&self, right: &Self, path: &str, out: &mut Differences);

    /// The value in words, for a side of a difference.
    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

/// `path/name`, or `name` at the root.
pub(crate) fn join(path: &str, name: &dyn Display) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}/{name}")
    }
}

/// Compare one field, building its path only when it differs.
pub(crate) fn field<T: Diff>(out: &mut Differences, path: &str, name: &str, l: &T, r: &T) {
    if l != r {
        l.diff(r, &join(path, &name), out);
    }
}

fn leaf<T: Diff>(l: &T, r: &T, path: &str, out: &mut Differences) {
    if l != r {
        out.push(path, Some(l.describe()), Some(r.describe()));
    }
}

macro_rules! leaf_display {
    ($($t:ty),* $(,)?) => {$(
        impl Diff for $t {
            fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
                leaf(self, right, path, out);
            }
            fn describe(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

macro_rules! leaf_debug {
    ($($t:ty),* $(,)?) => {$(
        impl Diff for $t {
            fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
                leaf(self, right, path, out);
            }
        }
    )*};
}

leaf_display!(
    u8,
    u64,
    i64,
    bool,
    String,
    Money,
    Decimal,
    DateTime<Utc>,
    PlanId,
    MetricKey,
    Currency
);
leaf_debug!(Severity, LineKind, PlanDefinition, PlanSegment);

/// Implement [`Diff`] for a struct by comparing the listed fields. The destructuring
/// makes the list exhaustive: a field added to the struct and not here fails to compile.
macro_rules! diff_fields {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl $crate::diff::Diff for $ty {
            fn diff(&self, right: &Self, path: &str, out: &mut $crate::diff::Differences) {
                let $ty { $($field: _),* } = self;
                $( $crate::diff::field(out, path, stringify!($field), &self.$field, &right.$field); )*
            }
        }
    };
}
pub(crate) use diff_fields;

/// A view of a value: `BrandMap` diffs its brands in order, as references.
impl<T: Diff + ?Sized> Diff for &T {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        (**self).diff(*right, path, out);
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<T: Diff + ?Sized> Diff for std::sync::Arc<T> {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        T::diff(self, right, path, out);
    }
}

impl<T: Diff> Diff for Option<T> {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        match (self, right) {
            (Some(l), Some(r)) => l.diff(r, path, out),
            _ => leaf(self, right, path, out),
        }
    }
    fn describe(&self) -> String {
        self.as_ref()
            .map_or_else(|| "none".to_owned(), Diff::describe)
    }
}

impl<K: Ord + Display + Debug, V: Diff> Diff for BTreeMap<K, V> {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        for (k, l) in self {
            match right.get(k) {
                Some(r) if l == r => {}
                Some(r) => l.diff(r, &join(path, k), out),
                None => out.push(&join(path, k), Some(l.describe()), None),
            }
        }
        for (k, r) in right {
            if !self.contains_key(k) {
                out.push(&join(path, k), None, Some(r.describe()));
            }
        }
    }
}

impl<T: Diff> Diff for Vec<T> {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        let len = self.len().max(right.len());
        for i in 0..len {
            match (self.get(i), right.get(i)) {
                (Some(l), Some(r)) if l == r => {}
                (Some(l), Some(r)) => l.diff(r, &join(path, &i), out),
                (l, r) => out.push(
                    &join(path, &i),
                    l.map(Diff::describe),
                    r.map(Diff::describe),
                ),
            }
        }
    }
}

impl<T: Diff> Diff for ByPeriod<T> {
    fn diff(&self, right: &Self, path: &str, out: &mut Differences) {
        self.inner().diff(right.inner(), path, out);
    }
}
