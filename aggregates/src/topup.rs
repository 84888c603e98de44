//! Purchased credit on its way in. A top-up bought through a payment provider is an
//! order of the brand: pending from the checkout, then paid (credited once, to the
//! period open when the payment completed) or failed. Orders live on the brand's
//! registry stream, not on a period's: the payment may complete in a later period than
//! the checkout, and "already credited" must be decided once across all periods.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{BrandId, MetricKey, ParseError, PeriodKey, Quantity};
use crate::money::{Currency, Money};

/// Orders of one brand pending at once (not paid, failed nor past their checkout's
/// expiry): a person buying credit has one or two checkouts open, not dozens.
pub const TOPUPS_PENDING_MAX: usize = 20;
/// Orders a brand's registry remembers, the oldest finished ones dropped first: a late
/// or repeated delivery of a remembered order's payment is recognised, and the
/// registry's snapshot stays in the tens of kilobytes.
pub const TOPUPS_REMEMBERED_MAX: usize = 500;
/// The providers' references stored with an order (event and session ids) are short.
pub const PAYMENT_REFERENCE_CHARS_MAX: usize = 255;

/// A top-up order: the brand it belongs to and its number there, written
/// `acme:topup:3`. The public id names its brand, so a tenant's own check on the brand
/// part decides who may see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopUpId {
    pub brand: BrandId,
    pub number: u64,
}

impl TopUpId {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError {
            field: "topupId",
            reason: "must be <brand>:topup:<number>".to_owned(),
        };
        let (rest, number) = s.rsplit_once(':').ok_or_else(bad)?;
        let brand = rest.strip_suffix(":topup").ok_or_else(bad)?;
        let number = match number.parse::<u64>() {
            Ok(n) if n >= 1 && !number.starts_with('0') => n,
            _ => return Err(bad()),
        };
        Ok(Self {
            brand: BrandId::parse(brand).map_err(|_| bad())?,
            number,
        })
    }
}

impl fmt::Display for TopUpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:topup:{}", self.brand, self.number)
    }
}

impl FromStr for TopUpId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::parse(s)
    }
}

impl Serialize for TopUpId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TopUpId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// What a provider's confirmation names: its event and the checkout it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRef {
    /// The provider's event id (`evt_…`), or the reconciliation that found the payment.
    pub event: String,
    /// The provider's checkout session id (`cs_…`).
    pub session: String,
}

/// Where an order stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TopUpStatus {
    Pending,
    /// Credited to `period` (the period open when the payment completed, or the open
    /// one when that period no longer took changes).
    Paid {
        period: PeriodKey,
        paid_at: DateTime<Utc>,
        payment: PaymentRef,
        at: DateTime<Utc>,
    },
    Failed {
        reason: String,
        payment: PaymentRef,
        at: DateTime<Utc>,
    },
}

/// One order as the registry remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpOrder {
    pub number: u64,
    pub metric: MetricKey,
    pub units: u64,
    pub price: Money,
    pub currency: Currency,
    pub actor: String,
    pub opened_at: DateTime<Utc>,
    /// When the checkout stops taking a payment.
    pub expires_at: DateTime<Utc>,
    /// The caller's idempotency key: a retried checkout finds its order.
    pub request_key: Option<String>,
    #[serde(flatten)]
    pub status: TopUpStatus,
}

impl TopUpOrder {
    pub fn is_finished(&self) -> bool {
        !matches!(self.status, TopUpStatus::Pending)
    }

    /// Pending and still payable at `at`: what counts against [`TOPUPS_PENDING_MAX`].
    pub fn is_open_at(&self, at: DateTime<Utc>) -> bool {
        !self.is_finished() && at < self.expires_at
    }
}

/// A step of an order's life, decided by the brand's registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopUpCommand {
    /// Record a new order before the checkout is created at the provider.
    Open {
        metric: MetricKey,
        units: Quantity,
        price: Money,
        currency: Currency,
        actor: String,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        request_key: Option<String>,
    },
    /// The payment completed at `paid_at`; credit `period`. Repeated: nothing.
    Settle {
        number: u64,
        period: PeriodKey,
        paid_at: DateTime<Utc>,
        payment: PaymentRef,
        at: DateTime<Utc>,
    },
    /// The checkout expired or its payment failed. A paid order stays paid.
    Fail {
        number: u64,
        reason: String,
        payment: PaymentRef,
        at: DateTime<Utc>,
    },
}

/// Why the registry refuses a step of an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopUpError {
    #[error(
        "top-up {0} is not known to the brand (never opened, or forgotten long after it finished)"
    )]
    Unknown(u64),
    #[error("the brand has {TOPUPS_PENDING_MAX} checkouts pending; pay, let expire or reconcile them first")]
    TooManyPending,
    #[error("the brand remembers {TOPUPS_REMEMBERED_MAX} unfinished top-ups; reconcile them with the provider first")]
    TooManyUnfinished,
    #[error("idempotency key {0} was already used for a different top-up")]
    KeyReuse(String),
}

/// The orders of one brand, by number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpBook {
    pub orders: BTreeMap<u64, TopUpOrder>,
    /// The last number given: numbers are never reused, even after an order is dropped.
    pub last_number: u64,
}

impl TopUpBook {
    pub fn get(&self, number: u64) -> Option<&TopUpOrder> {
        self.orders.get(&number)
    }

    fn by_key(&self, key: &str) -> Option<&TopUpOrder> {
        self.orders
            .values()
            .find(|o| o.request_key.as_deref() == Some(key))
    }

    /// The order a command concerns, and the events it takes: none for a repeat.
    pub fn decide(&self, command: &TopUpCommand) -> Result<(u64, Vec<TopUpEvent>), TopUpError> {
        match command {
            TopUpCommand::Open {
                metric,
                units,
                price,
                currency,
                actor,
                at,
                expires_at,
                request_key,
            } => {
                if let Some(key) = request_key {
                    if let Some(o) = self.by_key(key) {
                        let same =
                            o.metric == *metric && o.units == units.get() && o.price == *price;
                        return match same {
                            true => Ok((o.number, Vec::new())),
                            false => Err(TopUpError::KeyReuse(key.clone())),
                        };
                    }
                }
                if self.orders.values().filter(|o| o.is_open_at(*at)).count() >= TOPUPS_PENDING_MAX
                {
                    return Err(TopUpError::TooManyPending);
                }
                if self.orders.len() >= TOPUPS_REMEMBERED_MAX
                    && self.orders.values().all(|o| !o.is_finished())
                {
                    return Err(TopUpError::TooManyUnfinished);
                }
                let number = self.last_number + 1;
                Ok((
                    number,
                    vec![TopUpEvent::Opened {
                        number,
                        metric: metric.clone(),
                        units: units.get(),
                        price: *price,
                        currency: *currency,
                        actor: actor.clone(),
                        at: *at,
                        expires_at: *expires_at,
                        request_key: request_key.clone(),
                    }],
                ))
            }
            TopUpCommand::Settle {
                number,
                period,
                paid_at,
                payment,
                at,
            } => {
                let order = self.get(*number).ok_or(TopUpError::Unknown(*number))?;
                match order.status {
                    TopUpStatus::Paid { .. } => Ok((*number, Vec::new())),
                    // A failure then a payment: the money arrived, so it is credited.
                    TopUpStatus::Pending | TopUpStatus::Failed { .. } => Ok((
                        *number,
                        vec![TopUpEvent::Paid {
                            number: *number,
                            period: *period,
                            paid_at: *paid_at,
                            payment: payment.clone(),
                            at: *at,
                        }],
                    )),
                }
            }
            TopUpCommand::Fail {
                number,
                reason,
                payment,
                at,
            } => {
                let order = self.get(*number).ok_or(TopUpError::Unknown(*number))?;
                match order.status {
                    TopUpStatus::Pending => Ok((
                        *number,
                        vec![TopUpEvent::Failed {
                            number: *number,
                            reason: reason.clone(),
                            payment: payment.clone(),
                            at: *at,
                        }],
                    )),
                    TopUpStatus::Paid { .. } | TopUpStatus::Failed { .. } => {
                        Ok((*number, Vec::new()))
                    }
                }
            }
        }
    }

    pub fn fold(&mut self, event: &TopUpEvent) {
        match event {
            TopUpEvent::Opened {
                number,
                metric,
                units,
                price,
                currency,
                actor,
                at,
                expires_at,
                request_key,
            } => {
                self.last_number = self.last_number.max(*number);
                self.orders.insert(
                    *number,
                    TopUpOrder {
                        number: *number,
                        metric: metric.clone(),
                        units: *units,
                        price: *price,
                        currency: *currency,
                        actor: actor.clone(),
                        opened_at: *at,
                        expires_at: *expires_at,
                        request_key: request_key.clone(),
                        status: TopUpStatus::Pending,
                    },
                );
            }
            TopUpEvent::Paid {
                number,
                period,
                paid_at,
                payment,
                at,
            } => {
                if let Some(o) = self.orders.get_mut(number) {
                    o.status = TopUpStatus::Paid {
                        period: *period,
                        paid_at: *paid_at,
                        payment: payment.clone(),
                        at: *at,
                    };
                }
            }
            TopUpEvent::Failed {
                number,
                reason,
                payment,
                at,
            } => {
                if let Some(o) = self.orders.get_mut(number) {
                    o.status = TopUpStatus::Failed {
                        reason: reason.clone(),
                        payment: payment.clone(),
                        at: *at,
                    };
                }
            }
        }
        while self.orders.len() > TOPUPS_REMEMBERED_MAX {
            match self
                .orders
                .values()
                .find(|o| o.is_finished())
                .map(|o| o.number)
            {
                Some(oldest) => self.orders.remove(&oldest),
                None => break,
            };
        }
    }
}

/// The facts of an order's life, stored on the brand's registry stream (inside
/// [`crate::BrandEvent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopUpEvent {
    Opened {
        number: u64,
        metric: MetricKey,
        units: u64,
        price: Money,
        currency: Currency,
        actor: String,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        expires_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_key: Option<String>,
    },
    Paid {
        number: u64,
        period: PeriodKey,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        paid_at: DateTime<Utc>,
        payment: PaymentRef,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    Failed {
        number: u64,
        reason: String,
        payment: PaymentRef,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
}

impl TopUpEvent {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            TopUpEvent::Opened { at, .. }
            | TopUpEvent::Paid { at, .. }
            | TopUpEvent::Failed { at, .. } => *at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, h, 0, 0).unwrap()
    }

    fn open(key: Option<&str>, units: u64, at: DateTime<Utc>) -> TopUpCommand {
        TopUpCommand::Open {
            metric: MetricKey::parse("ai_generations").unwrap(),
            units: Quantity::new(units).unwrap(),
            price: Money::from_minor(units as i64 * 5),
            currency: Currency::Eur,
            actor: "acme".into(),
            at,
            expires_at: at + chrono::Duration::hours(1),
            request_key: key.map(str::to_owned),
        }
    }

    fn pay(number: u64, event: &str) -> TopUpCommand {
        TopUpCommand::Settle {
            number,
            period: PeriodKey::parse("2026-11").unwrap(),
            paid_at: t(2),
            payment: PaymentRef {
                event: event.into(),
                session: "cs_1".into(),
            },
            at: t(2),
        }
    }

    fn apply(book: &mut TopUpBook, cmd: &TopUpCommand) -> Result<(u64, usize), TopUpError> {
        let (n, events) = book.decide(cmd)?;
        events.iter().for_each(|e| book.fold(e));
        Ok((n, events.len()))
    }

    #[test]
    fn given_an_order_when_paid_twice_then_it_is_paid_once() {
        let mut book = TopUpBook::default();
        assert_eq!(apply(&mut book, &open(None, 100, t(1))), Ok((1, 1)));
        assert_eq!(apply(&mut book, &pay(1, "evt_a")), Ok((1, 1)));
        // A second event of the same payment, or the same one again: no effect.
        assert_eq!(apply(&mut book, &pay(1, "evt_b")), Ok((1, 0)));
        assert_eq!(apply(&mut book, &pay(1, "evt_a")), Ok((1, 0)));
        let TopUpStatus::Paid { payment, .. } = &book.get(1).unwrap().status else {
            panic!("paid expected");
        };
        assert_eq!(payment.event, "evt_a");
    }

    #[test]
    fn given_a_paid_order_when_a_failure_arrives_late_then_it_stays_paid() {
        let mut book = TopUpBook::default();
        apply(&mut book, &open(None, 10, t(1))).unwrap();
        apply(&mut book, &pay(1, "evt_paid")).unwrap();
        let fail = TopUpCommand::Fail {
            number: 1,
            reason: "expired".into(),
            payment: PaymentRef {
                event: "evt_x".into(),
                session: "cs_1".into(),
            },
            at: t(3),
        };
        assert_eq!(apply(&mut book, &fail), Ok((1, 0)));
        assert!(matches!(
            book.get(1).unwrap().status,
            TopUpStatus::Paid { .. }
        ));
    }

    #[test]
    fn given_a_failed_order_when_its_payment_arrives_then_it_is_credited() {
        let mut book = TopUpBook::default();
        apply(&mut book, &open(None, 10, t(1))).unwrap();
        let fail = TopUpCommand::Fail {
            number: 1,
            reason: "async payment failed".into(),
            payment: PaymentRef {
                event: "evt_f".into(),
                session: "cs_1".into(),
            },
            at: t(2),
        };
        assert_eq!(apply(&mut book, &fail), Ok((1, 1)));
        assert_eq!(apply(&mut book, &pay(1, "evt_p")), Ok((1, 1)));
    }

    #[test]
    fn a_retried_checkout_finds_its_order_and_a_reused_key_is_refused() {
        let mut book = TopUpBook::default();
        assert_eq!(apply(&mut book, &open(Some("k1"), 10, t(1))), Ok((1, 1)));
        assert_eq!(apply(&mut book, &open(Some("k1"), 10, t(1))), Ok((1, 0)));
        assert_eq!(
            apply(&mut book, &open(Some("k1"), 11, t(1))),
            Err(TopUpError::KeyReuse("k1".into()))
        );
        assert_eq!(apply(&mut book, &open(Some("k2"), 10, t(1))), Ok((2, 1)));
    }

    #[test]
    fn pending_orders_are_capped_until_their_checkouts_expire() {
        let mut book = TopUpBook::default();
        for _ in 0..TOPUPS_PENDING_MAX {
            apply(&mut book, &open(None, 1, t(1))).unwrap();
        }
        assert_eq!(
            apply(&mut book, &open(None, 1, t(1))),
            Err(TopUpError::TooManyPending)
        );
        // An hour later every checkout has expired: a new one may open.
        let n = TOPUPS_PENDING_MAX as u64 + 1;
        assert_eq!(apply(&mut book, &open(None, 1, t(2))), Ok((n, 1)));
        assert_eq!(apply(&mut book, &pay(1, "evt")), Ok((1, 1)));
    }

    #[test]
    fn finished_orders_are_forgotten_oldest_first_and_numbers_never_reused() {
        let mut book = TopUpBook::default();
        let total = TOPUPS_REMEMBERED_MAX as u64 + 3;
        for n in 1..=total {
            apply(
                &mut book,
                &open(None, 1, t(1) + chrono::Duration::hours(n as i64)),
            )
            .unwrap();
            apply(&mut book, &pay(n, "evt")).unwrap();
        }
        assert_eq!(book.orders.len(), TOPUPS_REMEMBERED_MAX);
        assert!(book.get(3).is_none() && book.get(4).is_some());
        assert_eq!(
            apply(&mut book, &pay(1, "evt")),
            Err(TopUpError::Unknown(1))
        );
        let (n, _) = book.decide(&open(None, 1, t(1))).unwrap();
        assert_eq!(n, total + 1);
    }

    #[test]
    fn top_up_ids_round_trip_and_refuse_other_shapes() {
        let id = TopUpId::parse("acme-3d:topup:12").unwrap();
        assert_eq!(id.number, 12);
        assert_eq!(id.to_string(), "acme-3d:topup:12");
        for bad in [
            "acme:12",
            "acme:topup:0",
            "acme:topup:012",
            ":topup:1",
            "acme:hold:1",
        ] {
            assert!(TopUpId::parse(bad).is_err(), "{bad}");
        }
    }
}
