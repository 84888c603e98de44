//! The catalog's prices against Stripe's: each plan's base price is the Stripe Price
//! with lookup key `<plan>_base`, each `charge` quota's overage rate the Price with
//! lookup key `<plan>_<metric>_overage` (its `unit_amount_decimal`, in cents, may be
//! fractional). Pure: the prices come from Stripe's API or from an exported list.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ledger_aggregates::{Catalog, OveragePolicy};
use rust_decimal::Decimal;
use serde::Deserialize;

/// What the comparison reads of a Stripe Price.
#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    pub id: String,
    #[serde(default)]
    pub lookup_key: Option<String>,
    pub currency: String,
    #[serde(default)]
    pub unit_amount: Option<i64>,
    /// The amount as a decimal string (`"0.5"`), set for fractional cents.
    #[serde(default)]
    pub unit_amount_decimal: Option<String>,
    #[serde(default = "active_default")]
    pub active: bool,
}

fn active_default() -> bool {
    true
}

/// A list of prices as Stripe answers it (`{"object": "list", "data": [...]}`) or as a
/// bare array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PriceList {
    Page { data: Vec<Price> },
    Bare(Vec<Price>),
}

impl PriceList {
    pub fn into_prices(self) -> Vec<Price> {
        match self {
            PriceList::Page { data } | PriceList::Bare(data) => data,
        }
    }
}

/// One difference between the catalog and Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Missing {
        what: String,
        lookup_key: String,
    },
    Amount {
        what: String,
        price: String,
        catalog: Decimal,
        stripe: Option<Decimal>,
    },
    Currency {
        what: String,
        price: String,
        catalog: String,
        stripe: String,
    },
    /// A price named like one of ours for a plan or metric the catalog does not have.
    Unknown {
        price: String,
        lookup_key: String,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing { what, lookup_key } => {
                write!(
                    f,
                    "{what}: no active Stripe price with lookup key {lookup_key}"
                )
            }
            Mismatch::Amount {
                what,
                price,
                catalog,
                stripe,
            } => match stripe {
                Some(s) => write!(
                    f,
                    "{what}: catalog {catalog} cents, Stripe {price} {s} cents"
                ),
                None => write!(
                    f,
                    "{what}: catalog {catalog} cents, Stripe {price} has no amount"
                ),
            },
            Mismatch::Currency {
                what,
                price,
                catalog,
                stripe,
            } => write!(
                f,
                "{what}: catalog in {catalog}, Stripe {price} in {stripe}"
            ),
            Mismatch::Unknown { price, lookup_key } => write!(
                f,
                "Stripe {price} ({lookup_key}): no such plan or charged metric in the catalog"
            ),
        }
    }
}

/// Every difference between the catalog's prices and Stripe's active `prices`.
pub fn verify(catalog: &Catalog, prices: &[Price]) -> Vec<Mismatch> {
    let by_key: BTreeMap<&str, &Price> = prices
        .iter()
        .filter(|p| p.active)
        .filter_map(|p| Some((p.lookup_key.as_deref()?, p)))
        .collect();
    let currency = catalog.currency.to_string().to_ascii_lowercase();
    let mut expected: Vec<(String, String, Decimal)> = Vec::new();
    for plan in catalog.plans() {
        expected.push((
            format!("{} base", plan.id),
            format!("{}_base", plan.id),
            Decimal::from(plan.base_price_cents.minor()),
        ));
        for q in &plan.quotas {
            if let (OveragePolicy::Charge, Some(rate)) = (q.overage, q.overage_rate) {
                expected.push((
                    format!("{}/{} overage", plan.id, q.metric),
                    format!("{}_{}_overage", plan.id, q.metric),
                    rate,
                ));
            }
        }
    }
    let mut found = Vec::new();
    for (what, key, amount) in &expected {
        let Some(price) = by_key.get(key.as_str()) else {
            found.push(Mismatch::Missing {
                what: what.clone(),
                lookup_key: key.clone(),
            });
            continue;
        };
        if price.currency != currency {
            found.push(Mismatch::Currency {
                what: what.clone(),
                price: price.id.clone(),
                catalog: currency.clone(),
                stripe: price.currency.clone(),
            });
        }
        let stripe = price
            .unit_amount_decimal
            .as_deref()
            .and_then(|d| Decimal::from_str(d).ok())
            .or(price.unit_amount.map(Decimal::from));
        if stripe.map(|s| s.normalize()) != Some(amount.normalize()) {
            found.push(Mismatch::Amount {
                what: what.clone(),
                price: price.id.clone(),
                catalog: *amount,
                stripe,
            });
        }
    }
    for (key, price) in &by_key {
        let ours = key.ends_with("_base") || key.ends_with("_overage");
        if ours && !expected.iter().any(|(_, k, _)| k == key) {
            found.push(Mismatch::Unknown {
                price: price.id.clone(),
                lookup_key: (*key).to_owned(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(key: &str, amount: &str) -> Price {
        Price {
            id: format!("price_{key}"),
            lookup_key: Some(key.to_owned()),
            currency: "eur".to_owned(),
            unit_amount: amount.parse().ok(),
            unit_amount_decimal: Some(amount.to_owned()),
            active: true,
        }
    }

    /// The catalog's own prices, as a matching Stripe account holds them.
    fn matching(catalog: &Catalog) -> Vec<Price> {
        let mut prices = Vec::new();
        for plan in catalog.plans() {
            prices.push(price(
                &format!("{}_base", plan.id),
                &plan.base_price_cents.minor().to_string(),
            ));
            for q in &plan.quotas {
                if let Some(rate) = q.overage_rate {
                    prices.push(price(
                        &format!("{}_{}_overage", plan.id, q.metric),
                        &rate.to_string(),
                    ));
                }
            }
        }
        prices
    }

    #[test]
    fn a_matching_account_has_no_mismatch_and_each_difference_is_one_line() {
        let catalog = Catalog::default_catalog();
        let mut prices = matching(&catalog);
        assert_eq!(verify(&catalog, &prices), Vec::new());
        // "100" and "100.00" are the same amount.
        prices[1].unit_amount_decimal = Some(format!(
            "{}.00",
            prices[1].unit_amount_decimal.clone().unwrap()
        ));
        assert_eq!(verify(&catalog, &prices), Vec::new());
        prices[0].unit_amount_decimal = Some("1".to_owned());
        prices[2].currency = "usd".to_owned();
        let dropped = prices.remove(3);
        prices.push(price("gold_base", "100"));
        let mut inactive = prices[4].clone();
        inactive.active = false;
        prices[4] = inactive;
        let found = verify(&catalog, &prices);
        let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 5, "{lines:#?}");
        assert!(
            matches!(&found[0], Mismatch::Amount { stripe: Some(s), .. } if *s == Decimal::ONE),
            "{lines:#?}"
        );
        assert!(found
            .iter()
            .any(|m| matches!(m, Mismatch::Currency { stripe, .. } if stripe == "usd")));
        let key = dropped.lookup_key.unwrap();
        assert!(found
            .iter()
            .any(|m| matches!(m, Mismatch::Missing { lookup_key, .. } if *lookup_key == key)));
        assert!(found.iter().any(
            |m| matches!(m, Mismatch::Unknown { lookup_key, .. } if lookup_key == "gold_base")
        ));
        // An inactive price counts as missing.
        let inactive_key = prices[4].lookup_key.clone().unwrap();
        assert!(found.iter().any(
            |m| matches!(m, Mismatch::Missing { lookup_key, .. } if *lookup_key == inactive_key)
        ));
    }
}
