//! The plan catalog: which metrics exist, and for each plan its base price and quotas.
//!
//! The catalog is data (`catalog/default.toml`, embedded in the binary). Loading checks
//! it whole: every quota names a known metric, thresholds are in 1..=100 and sorted,
//! `charge` quotas have a rate, plan ids are unique. A period stream snapshots the
//! [`PlanDefinition`] it runs on, so a later catalog edit never rewrites history.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ids::{MetricKey, PlanId};
use crate::money::{rate_serde, Currency, Money};

/// The default catalog, compiled into the binary so the service runs with no files.
pub const DEFAULT_CATALOG_TOML: &str = include_str!("../catalog/default.toml");

/// The original's thresholds (50/75/90 %), used where a quota names none.
pub const DEFAULT_THRESHOLDS_PCT: [u8; 3] = [50, 75, 90];

/// A threshold at or above this percentage raises `critical` alerts; below, `warning`.
pub const CRITICAL_THRESHOLD_PCT: u8 = 90;

/// More thresholds than this per quota would be alert spam, not information.
pub const THRESHOLDS_PER_QUOTA_MAX: usize = 8;

/// How a metric accumulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Summed over the period; every period starts at zero.
    Counter,
    /// A level (seats, GB stored) that goes up and down and carries over between periods.
    Gauge,
}

/// What happens to usage above the effective limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OveragePolicy {
    /// Refused: usage never exceeds limit + top-ups.
    Block,
    /// Allowed and billed at the quota's rate.
    Charge,
}

/// The only quota period of the catalog: billing is monthly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UsagePeriod {
    #[default]
    Month,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricDefinition {
    pub key: MetricKey,
    pub kind: MetricKind,
    pub label: String,
    pub unit: String,
    pub description: String,
}

/// One quota of a plan, in the original's `PlanQuotaDefinition` shape plus the metric kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanQuota {
    pub metric: MetricKey,
    pub label: String,
    pub description: String,
    /// Units included in the base price for one period, before top-ups.
    pub limit: u64,
    pub period: UsagePeriod,
    pub overage: OveragePolicy,
    /// Minor units (cents) per unit above the effective limit; `None` for `block`.
    #[serde(with = "rate_serde", default, skip_serializing_if = "Option::is_none")]
    pub overage_rate: Option<Decimal>,
    /// Percentages of the effective limit at which an alert is raised, ascending.
    pub notification_thresholds: Vec<u8>,
    pub unit: String,
    pub kind: MetricKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanFeature {
    pub id: String,
    pub label: String,
    pub enabled: bool,
}

/// A plan as it stood in one catalog version. Serialized in the original's camelCase
/// `PlanDefinition` shape (`basePriceCents`, `quotas`, …) plus currency and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDefinition {
    pub id: PlanId,
    pub name: String,
    pub base_price_cents: Money,
    pub currency: Currency,
    pub headline: String,
    pub catalog_version: String,
    pub quotas: Vec<PlanQuota>,
    pub features: Vec<PlanFeature>,
}

impl PlanDefinition {
    pub fn quota(&self, metric: &MetricKey) -> Option<&PlanQuota> {
        self.quotas.iter().find(|q| &q.metric == metric)
    }
}

/// Why a catalog file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("catalog is inconsistent: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub version: String,
    pub currency: Currency,
    pub default_plan: PlanId,
    metrics: BTreeMap<MetricKey, MetricDefinition>,
    /// Each metric's kind, derived from `metrics` once when the catalog is loaded:
    /// every period opening snapshots this map, and rebuilding it there cost a walk of
    /// the catalog per opening.
    metric_kinds: BTreeMap<MetricKey, MetricKind>,
    /// Plans in tier order, as listed in the file.
    plans: Vec<PlanDefinition>,
}

impl Catalog {
    /// The embedded default catalog.
    pub fn default_catalog() -> Self {
        Self::from_toml(DEFAULT_CATALOG_TOML).expect("the embedded catalog is checked by tests")
    }

    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        let file: file::CatalogFile = toml::from_str(text)?;
        file.into_catalog()
    }

    pub fn plans(&self) -> &[PlanDefinition] {
        &self.plans
    }

    pub fn plan(&self, id: &PlanId) -> Option<&PlanDefinition> {
        self.plans.iter().find(|p| &p.id == id)
    }

    pub fn metrics(&self) -> impl Iterator<Item = &MetricDefinition> {
        self.metrics.values()
    }

    pub fn metric(&self, key: &MetricKey) -> Option<&MetricDefinition> {
        self.metrics.get(key)
    }

    /// Every metric with its kind: what a period opens on (`PeriodOpened` snapshots it).
    pub fn metric_kinds(&self) -> &BTreeMap<MetricKey, MetricKind> {
        &self.metric_kinds
    }
}

/// The on-disk shape, kept apart from the domain types so the file can stay terse
/// (labels, units and kinds are inherited from the metric list).
mod file {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct CatalogFile {
        version: String,
        currency: Currency,
        default_plan: PlanId,
        metrics: Vec<MetricDefinition>,
        plans: Vec<PlanFile>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PlanFile {
        id: PlanId,
        name: String,
        base_price_cents: i64,
        headline: String,
        quotas: Vec<QuotaFile>,
        #[serde(default)]
        features: Vec<PlanFeature>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct QuotaFile {
        metric: MetricKey,
        limit: u64,
        overage: OveragePolicy,
        #[serde(default, with = "rate_serde")]
        overage_rate: Option<Decimal>,
        #[serde(default)]
        notification_thresholds: Option<Vec<u8>>,
        #[serde(default)]
        description: Option<String>,
    }

    fn invalid(msg: String) -> CatalogError {
        CatalogError::Invalid(msg)
    }

    impl CatalogFile {
        pub(super) fn into_catalog(self) -> Result<Catalog, CatalogError> {
            let mut metrics = BTreeMap::new();
            for m in self.metrics {
                if metrics.insert(m.key.clone(), m.clone()).is_some() {
                    return Err(invalid(format!("metric {} is listed twice", m.key)));
                }
            }
            let mut seen = BTreeSet::new();
            let mut plans = Vec::with_capacity(self.plans.len());
            for p in self.plans {
                if !seen.insert(p.id.clone()) {
                    return Err(invalid(format!("plan {} is listed twice", p.id)));
                }
                plans.push(p.into_plan(&metrics, &self.version, self.currency)?);
            }
            if !seen.contains(&self.default_plan) {
                return Err(invalid(format!(
                    "default plan {} is not in the catalog",
                    self.default_plan
                )));
            }
            Ok(Catalog {
                version: self.version,
                currency: self.currency,
                default_plan: self.default_plan,
                metric_kinds: metrics.iter().map(|(k, m)| (k.clone(), m.kind)).collect(),
                metrics,
                plans,
            })
        }
    }

    impl PlanFile {
        fn into_plan(
            self,
            metrics: &BTreeMap<MetricKey, MetricDefinition>,
            version: &str,
            currency: Currency,
        ) -> Result<PlanDefinition, CatalogError> {
            if self.base_price_cents < 0 {
                return Err(invalid(format!("plan {}: negative base price", self.id)));
            }
            let mut quotas = Vec::with_capacity(self.quotas.len());
            for q in self.quotas {
                let what = format!("plan {} quota {}", self.id, q.metric);
                let def = metrics
                    .get(&q.metric)
                    .ok_or_else(|| invalid(format!("{what}: unknown metric")))?;
                if quotas.iter().any(|x: &PlanQuota| x.metric == q.metric) {
                    return Err(invalid(format!("{what}: listed twice")));
                }
                let thresholds = q
                    .notification_thresholds
                    .unwrap_or_else(|| DEFAULT_THRESHOLDS_PCT.to_vec());
                let sorted = thresholds.windows(2).all(|w| w[0] < w[1]);
                let in_range = thresholds.iter().all(|t| (1..=100).contains(t));
                if !sorted || !in_range || thresholds.len() > THRESHOLDS_PER_QUOTA_MAX {
                    return Err(invalid(format!(
                        "{what}: thresholds must be ascending, in 1..=100, at most {THRESHOLDS_PER_QUOTA_MAX}"
                    )));
                }
                match (q.overage, q.overage_rate) {
                    (OveragePolicy::Charge, None) => {
                        return Err(invalid(format!("{what}: charge needs an overage_rate")))
                    }
                    (OveragePolicy::Block, Some(_)) => {
                        return Err(invalid(format!("{what}: block takes no overage_rate")))
                    }
                    (_, Some(r)) if r.is_sign_negative() => {
                        return Err(invalid(format!("{what}: negative overage_rate")))
                    }
                    _ => {}
                }
                quotas.push(PlanQuota {
                    metric: q.metric,
                    label: def.label.clone(),
                    description: q.description.unwrap_or_else(|| def.description.clone()),
                    limit: q.limit,
                    period: UsagePeriod::Month,
                    overage: q.overage,
                    overage_rate: q.overage_rate,
                    notification_thresholds: thresholds,
                    unit: def.unit.clone(),
                    kind: def.kind,
                });
            }
            Ok(PlanDefinition {
                id: self.id,
                name: self.name,
                base_price_cents: Money::from_minor(self.base_price_cents),
                currency,
                headline: self.headline,
                catalog_version: version.to_owned(),
                quotas,
                features: self.features,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MetricKey {
        MetricKey::parse(s).unwrap()
    }

    #[test]
    fn the_default_catalog_has_the_originals_four_plans_and_twelve_metrics() {
        let c = Catalog::default_catalog();
        let ids: Vec<_> = c.plans().iter().map(|p| p.id.to_string()).collect();
        assert_eq!(ids, ["starter", "professional", "business", "enterprise"]);
        assert_eq!(c.metrics().count(), 12);
        assert_eq!(c.default_plan.as_str(), "starter");
        let prices: Vec<_> = c
            .plans()
            .iter()
            .map(|p| p.base_price_cents.minor())
            .collect();
        assert_eq!(prices, [2900, 9900, 29900, 99900]);
    }

    #[test]
    fn the_default_catalog_matches_the_originals_limits_and_rates() {
        // (plan, metric, limit, rate) straight from the original's table.
        let c = Catalog::default_catalog();
        type Row = (&'static str, [(u64, Option<i64>); 7]);
        let table: &[Row] = &[
            (
                "starter",
                [
                    (50, Some(50)),
                    (100, Some(20)),
                    (10, Some(100)),
                    (20, Some(75)),
                    (5, Some(50)),
                    (10_000, Some(1)),
                    (3, None),
                ],
            ),
            (
                "professional",
                [
                    (250, Some(30)),
                    (500, Some(15)),
                    (50, Some(80)),
                    (150, Some(50)),
                    (50, Some(30)),
                    (100_000, Some(1)),
                    (10, None),
                ],
            ),
            (
                "business",
                [
                    (1000, Some(30)),
                    (2000, Some(10)),
                    (200, Some(60)),
                    (500, Some(40)),
                    (100, Some(20)),
                    (200_000, Some(1)),
                    (50, None),
                ],
            ),
            (
                "enterprise",
                [
                    (99_999, Some(20)),
                    (99_999, Some(5)),
                    (99_999, Some(40)),
                    (99_999, Some(40)),
                    (500, Some(20)),
                    (9_999_999, Some(1)),
                    (999, None),
                ],
            ),
        ];
        let order = [
            "designs_created",
            "renders_2d",
            "renders_3d",
            "ai_generations",
            "storage_gb",
            "api_calls",
            "team_members",
        ];
        for (plan, rows) in table {
            let p = c.plan(&PlanId::parse(plan).unwrap()).unwrap();
            let got: Vec<_> = p.quotas.iter().map(|q| q.metric.to_string()).collect();
            assert_eq!(got, order, "{plan} quota order");
            for (metric, (limit, rate)) in order.iter().zip(rows) {
                let q = p.quota(&m(metric)).unwrap();
                assert_eq!(q.limit, *limit, "{plan}/{metric} limit");
                assert_eq!(
                    q.overage_rate,
                    rate.map(Decimal::from),
                    "{plan}/{metric} rate"
                );
                assert_eq!(q.notification_thresholds, vec![50, 75, 90]);
                let expect = if *metric == "team_members" {
                    OveragePolicy::Block
                } else {
                    OveragePolicy::Charge
                };
                assert_eq!(q.overage, expect);
            }
        }
        let tm = c
            .plan(&PlanId::parse("starter").unwrap())
            .unwrap()
            .quota(&m("team_members"))
            .unwrap();
        assert_eq!(
            (tm.kind, tm.label.as_str()),
            (MetricKind::Gauge, "Membres d’équipe")
        );
    }

    #[test]
    fn the_metric_kinds_are_those_of_the_metric_list() {
        // Proves the map built at load time says what each metric definition says.
        let c = Catalog::default_catalog();
        let listed: BTreeMap<_, _> = c.metrics().map(|m| (m.key.clone(), m.kind)).collect();
        assert_eq!(c.metric_kinds(), &listed);
        assert_eq!(c.metric_kinds()[&m("storage_gb")], MetricKind::Gauge);
        assert_eq!(c.metric_kinds()[&m("api_calls")], MetricKind::Counter);
    }

    #[test]
    fn a_catalog_with_a_charge_quota_without_rate_is_refused() {
        let bad = DEFAULT_CATALOG_TOML.replace(
            "{ metric = \"renders_2d\", limit = 100, overage = \"charge\", overage_rate = 20 }",
            "{ metric = \"renders_2d\", limit = 100, overage = \"charge\" }",
        );
        assert_ne!(bad, DEFAULT_CATALOG_TOML);
        let err = Catalog::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains("charge needs an overage_rate"), "{err}");
    }

    #[test]
    fn a_catalog_naming_an_unknown_metric_is_refused() {
        let bad = DEFAULT_CATALOG_TOML.replacen(
            "metric = \"renders_3d\", limit = 10,",
            "metric = \"renders_4d\", limit = 10,",
            1,
        );
        assert!(Catalog::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("unknown metric"));
    }
}
