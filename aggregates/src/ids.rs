//! Newtypes that parse: once a value of these types exists, it is valid.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a raw value was refused. The message is shown to API callers as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ParseError {
    pub field: &'static str,
    pub reason: String,
}

impl ParseError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Brand ids are path segments and part of aggregate ids (`brand:2026-11`), so they
/// are limited to a URL- and SQL-safe alphabet without `:`.
pub const BRAND_ID_LEN_MAX: usize = 64;
/// Metric keys are Prometheus label values and JSON keys; 64 is far above the catalog's longest.
pub const METRIC_KEY_LEN_MAX: usize = 64;
/// Stripe caps idempotency keys at 255 characters; we accept the same.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;
/// One command may move a counter by at most one billion units: far above any real
/// batch (10 M api calls is the largest plan limit) and far below `i64::MAX`, so running
/// totals of a whole period can never overflow.
pub const QUANTITY_MAX: u64 = 1_000_000_000;

fn slug_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::parse(s)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A tenant. `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrandId(String);

impl BrandId {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > BRAND_ID_LEN_MAX {
            return Err(ParseError::new(
                "brandId",
                format!("must be 1 to {BRAND_ID_LEN_MAX} characters"),
            ));
        }
        if !slug_ok(s) || !s.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(ParseError::new(
                "brandId",
                "must start with a letter or digit and contain only letters, digits, '_', '-' and '.'",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(BrandId);

/// A metered feature such as `renders_3d`: `[a-z0-9_]{1,64}`. Whether the catalog
/// knows it is checked against the catalog, not here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricKey(String);

impl MetricKey {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = !s.is_empty()
            && s.len() <= METRIC_KEY_LEN_MAX
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(ParseError::new(
                "metric",
                format!("must be 1 to {METRIC_KEY_LEN_MAX} characters of [a-z0-9_]"),
            ));
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(MetricKey);

/// A plan tier id such as `starter`: `[a-z0-9_]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlanId(String);

impl PlanId {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        MetricKey::parse(s)
            .map(|m| Self(m.0))
            .map_err(|_| ParseError::new("plan", "must be 1 to 64 characters of [a-z0-9_]"))
    }
}
string_newtype!(PlanId);

/// A caller-chosen key that makes a write safe to retry: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > IDEMPOTENCY_KEY_LEN_MAX {
            return Err(ParseError::new(
                "idempotencyKey",
                format!("must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} characters"),
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError::new(
                "idempotencyKey",
                "may only contain visible ASCII characters (no spaces)",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}
string_newtype!(IdempotencyKey);

/// A strictly positive number of units, at most [`QUANTITY_MAX`]. Fractions are refused
/// at the boundary: units are integers (GB of storage are whole GB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Quantity(u64);

impl Quantity {
    pub fn new(n: u64) -> Result<Self, ParseError> {
        if n == 0 {
            return Err(ParseError::new("value", "must be at least 1"));
        }
        if n > QUANTITY_MAX {
            return Err(ParseError::new(
                "value",
                format!("must be at most {QUANTITY_MAX}"),
            ));
        }
        Ok(Self(n))
    }
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A billing period: one calendar month in UTC, written `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeriodKey {
    year: i32,
    month: u32,
}

/// Periods outside these years are typing mistakes, not billing periods.
const PERIOD_YEAR_MIN: i32 = 2000;
const PERIOD_YEAR_MAX: i32 = 9999;

impl PeriodKey {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::new("period", "must be YYYY-MM, e.g. 2026-11");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        Self::from_parts(year, month).ok_or_else(bad)
    }

    pub fn from_parts(year: i32, month: u32) -> Option<Self> {
        ((PERIOD_YEAR_MIN..=PERIOD_YEAR_MAX).contains(&year) && (1..=12).contains(&month))
            .then_some(Self { year, month })
    }

    /// The period that contains `at`.
    pub fn containing(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    pub fn year(self) -> i32 {
        self.year
    }
    pub fn month(self) -> u32 {
        self.month
    }

    /// First instant of the period (inclusive).
    pub fn start(self) -> DateTime<Utc> {
        let day = NaiveDate::from_ymd_opt(self.year, self.month, 1)
            .expect("year and month were range-checked at construction");
        Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight exists"))
    }

    /// First instant after the period (exclusive end): the start of the next one.
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Self {
        if self.month == 1 {
            Self {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Self {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    pub fn contains(self, at: DateTime<Utc>) -> bool {
        self.start() <= at && at < self.end()
    }
}

/// `YYYY-MM` on the stack.
pub(crate) struct PeriodText([u8; 7]);

impl PeriodText {
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII digits and '-'")
    }
}

impl PeriodKey {
    /// The `YYYY-MM` text; the year is within 2000..=9999, so four digits hold it.
    pub(crate) fn text(self) -> PeriodText {
        let mut buf = [b'-'; 7];
        put_digits(&mut buf[0..4], self.year.unsigned_abs());
        put_digits(&mut buf[5..7], self.month);
        PeriodText(buf)
    }
}

impl fmt::Display for PeriodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl FromStr for PeriodKey {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::parse(s)
    }
}

impl Serialize for PeriodKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeriodKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The id of one brand-period stream, `brand_x:2026-11`. `:` cannot occur in a brand
/// id, so the split is unambiguous, and the text sorts chronologically within a brand.
pub fn period_stream_id(brand: &BrandId, period: PeriodKey) -> String {
    // Built by hand: `format!` cost ~1,200 instructions, and the writer builds one id
    // per command.
    let mut id = String::with_capacity(brand.as_str().len() + 8);
    id.push_str(brand.as_str());
    id.push(':');
    id.push_str(period.text().as_str());
    id
}

/// `value` in decimal, zero-padded to fill `out` exactly (higher digits are dropped).
pub(crate) fn put_digits(out: &mut [u8], mut value: u32) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// A reservation (a hold of quota for a long job): the brand-period stream it lives in
/// and its number there, written `acme:2026-12:7`. The public id names its stream, so
/// a commit or void needs no lookup table, and a tenant's own check on the brand part
/// decides who may touch it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId {
    pub brand: BrandId,
    pub period: PeriodKey,
    /// 1, 2, … within the period, in the order the holds were placed.
    pub number: u64,
}

impl ReservationId {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::new("reservationId", "must be <brand>:<YYYY-MM>:<number>");
        let (stream, number) = s.rsplit_once(':').ok_or_else(bad)?;
        let (brand, period) = parse_period_stream_id(stream).map_err(|_| bad())?;
        let number = match number.parse::<u64>() {
            Ok(n) if n >= 1 && !number.starts_with('0') => n,
            _ => return Err(bad()),
        };
        Ok(Self {
            brand,
            period,
            number,
        })
    }

    /// The stream the hold lives in.
    pub fn stream_id(&self) -> String {
        period_stream_id(&self.brand, self.period)
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.brand, self.period, self.number)
    }
}

impl FromStr for ReservationId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::parse(s)
    }
}

impl Serialize for ReservationId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReservationId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The inverse of [`period_stream_id`].
pub fn parse_period_stream_id(id: &str) -> Result<(BrandId, PeriodKey), ParseError> {
    let (b, p) = id
        .rsplit_once(':')
        .ok_or_else(|| ParseError::new("aggregateId", "must be <brand>:<YYYY-MM>"))?;
    Ok((BrandId::parse(b)?, PeriodKey::parse(p)?))
}

/// The brand part of a period stream id, unparsed: where it must only be routed by
/// brand, per event, without building the ids.
pub fn period_stream_brand(id: &str) -> Option<&str> {
    id.rsplit_once(':').map(|(brand, _)| brand)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_name_their_stream_and_round_trip() {
        let id = ReservationId::parse("acme.eu:2026-12:7").unwrap();
        assert_eq!(id.brand.as_str(), "acme.eu");
        assert_eq!(id.period.to_string(), "2026-12");
        assert_eq!(id.number, 7);
        assert_eq!(id.stream_id(), "acme.eu:2026-12");
        assert_eq!(id.to_string(), "acme.eu:2026-12:7");
        for bad in [
            "acme:2026-12",
            "acme:2026-12:0",
            "acme:2026-12:07",
            "acme:2026-13:1",
            ":2026-12:1",
            "acme:2026-12:x",
        ] {
            assert!(ReservationId::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn period_keys_parse_only_real_months() {
        for text in ["2026-11", "2000-01", "9999-12"] {
            assert_eq!(PeriodKey::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026/11",
            "",
            "2026-11-01",
            "+026-11",
        ] {
            assert!(PeriodKey::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn a_period_spans_one_utc_month_and_december_rolls_over() {
        let dec = PeriodKey::parse("2026-12").unwrap();
        assert_eq!(dec.start().to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(dec.end().to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(dec.next().to_string(), "2027-01");
        assert_eq!(dec.next().prev(), dec);
        assert!(dec.contains(dec.start()));
        assert!(!dec.contains(dec.end()));
        let last_instant = dec.end() - chrono::Duration::nanoseconds(1);
        assert_eq!(PeriodKey::containing(last_instant), dec);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_255() {
        assert!(IdempotencyKey::parse("req-1:abc/42").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("é").is_err());
        assert!(IdempotencyKey::parse("").is_err());
    }

    #[test]
    fn brand_ids_cannot_smuggle_a_period_separator() {
        assert!(BrandId::parse("brand_x").is_ok());
        assert!(BrandId::parse("brand:x").is_err());
        assert!(BrandId::parse("../etc").is_err());
        assert!(BrandId::parse("..").is_err());
        let id = period_stream_id(
            &BrandId::parse("b-1").unwrap(),
            PeriodKey::parse("2026-11").unwrap(),
        );
        assert_eq!(id, "b-1:2026-11");
        let (b, p) = parse_period_stream_id(&id).unwrap();
        assert_eq!((b.as_str(), p.to_string().as_str()), ("b-1", "2026-11"));
    }

    #[test]
    fn quantities_are_positive_and_bounded() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(QUANTITY_MAX + 1).is_err());
        assert_eq!(Quantity::new(5).unwrap().get(), 5);
        assert!(serde_json::from_str::<Quantity>("1.5").is_err());
        assert!(serde_json::from_str::<Quantity>("-1").is_err());
    }
}
