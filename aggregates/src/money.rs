//! Money: integer minor units, never floating point. Rates may be fractional cents and are
//! `Decimal`; amounts are rounded once, on the period total of a metric.

use std::fmt;
use std::ops::{Add, Sub};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// The currency of a plan. The original only ever billed in euros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Currency {
    #[default]
    Eur,
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Currency::Eur => "EUR",
        })
    }
}

/// An amount in minor units (cents) of the plan's currency. Serialized as an integer,
/// like the original's `*Cents` fields.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_minor(minor: i64) -> Self {
        Self(minor)
    }
    pub const fn minor(self) -> i64 {
        self.0
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0 + rhs.0)
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        Money(self.0 - rhs.0)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Add::add)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The cost of `units` at `rate` minor units per unit, rounded half away from zero to a
/// whole minor unit. This is the one rounding rule of the ledger: it is applied to the
/// *period total* of a metric, never per event, so the sum of marginal costs always
/// equals the cost of the total.
pub fn cost_of(units: u64, rate: Decimal) -> Money {
    let exact = Decimal::from(units) * rate;
    let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    Money(
        rounded
            .to_i64()
            .expect("units <= i64 range and rates are small, so the product fits in i64"),
    )
}

/// `amount` × `part` / `whole`, rounded by the same rule as [`cost_of`] (half away from
/// zero, to a whole minor unit): a base price prorated by the time a plan was in force.
pub fn prorate(amount: Money, part: i64, whole: i64) -> Money {
    if whole <= 0 {
        return amount;
    }
    let exact =
        Decimal::from(amount.0) * Decimal::from(part.clamp(0, whole)) / Decimal::from(whole);
    let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    Money(rounded.to_i64().expect("at most the amount itself"))
}

/// Serde for overage rates: written as a JSON number (as the original did), read from a
/// number or a string through its shortest decimal text, so `0.1` stays exactly 0.1.
pub mod rate_serde {
    use rust_decimal::prelude::ToPrimitive;
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::str::FromStr;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Text(String),
    }

    fn from_raw<E: serde::de::Error>(raw: Raw) -> Result<Decimal, E> {
        match raw {
            Raw::Int(i) => Ok(Decimal::from(i)),
            Raw::Float(f) => Decimal::from_str(&f.to_string()).map_err(E::custom),
            Raw::Text(s) => Decimal::from_str(&s).map_err(E::custom),
        }
    }

    pub fn serialize<S: Serializer>(rate: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match rate {
            None => s.serialize_none(),
            Some(r) if r.fract().is_zero() => s.serialize_i64(
                r.to_i64()
                    .ok_or_else(|| serde::ser::Error::custom("rate"))?,
            ),
            Some(r) => s.serialize_f64(
                r.to_f64()
                    .ok_or_else(|| serde::ser::Error::custom("rate"))?,
            ),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Option::<Raw>::deserialize(d)?.map(from_raw).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn cost_rounds_half_away_from_zero_on_the_total() {
        let half_cent = Decimal::from_str("0.5").unwrap();
        assert_eq!(cost_of(3, half_cent), Money::from_minor(2)); // 1.5 -> 2
        assert_eq!(cost_of(2, half_cent), Money::from_minor(1));
        assert_eq!(cost_of(0, Decimal::from(100)), Money::ZERO);
        assert_eq!(cost_of(12, Decimal::from(75)), Money::from_minor(900));
    }

    #[test]
    fn fractional_rates_survive_a_json_round_trip_exactly() {
        #[derive(Serialize, Deserialize)]
        struct R {
            #[serde(with = "rate_serde")]
            r: Option<Decimal>,
        }
        let json = serde_json::to_string(&R {
            r: Some(Decimal::from_str("0.1").unwrap()),
        })
        .unwrap();
        assert_eq!(json, r#"{"r":0.1}"#);
        let back: R = serde_json::from_str(&json).unwrap();
        assert_eq!(back.r, Some(Decimal::from_str("0.1").unwrap()));
        let int: R = serde_json::from_str(r#"{"r":75}"#).unwrap();
        assert_eq!(serde_json::to_string(&int).unwrap(), r#"{"r":75}"#);
    }
}
