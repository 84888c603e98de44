//! Event timestamps written straight into their JSON.
//!
//! chrono's `Serialize` formats through `Display`, and serde_json escapes that output one
//! character at a time: about 2,400 instructions per timestamp, a seventh of everything the
//! engine's writer did per command (two timestamps per usage event). [`serialize`] writes
//! the same text, byte for byte (RFC 3339, `SecondsFormat::AutoSi`, `Z`), from a stack
//! buffer. Reading is unchanged: chrono parses it, as it parses every payload already
//! stored.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Serialize, Serializer};

use crate::ids::put_digits;

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, the longest text the fast path writes.
const RFC3339_BYTES_MAX: usize = 30;

/// Serialize `at` as chrono does, without going through `fmt`. Years outside 0..=9999 and
/// leap seconds, which chrono writes in special forms, are left to chrono.
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; RFC3339_BYTES_MAX];
    match write_rfc3339(at, &mut buf) {
        Some(n) => s.serialize_str(std::str::from_utf8(&buf[..n]).expect("ASCII only")),
        None => at.serialize(s),
    }
}

/// The text chrono's `Serialize` would write, into `buf`; its length, or `None` for the
/// forms left to chrono.
fn write_rfc3339(at: &DateTime<Utc>, buf: &mut [u8; RFC3339_BYTES_MAX]) -> Option<usize> {
    // The naive parts once: each accessor of a `DateTime` converts it to local time anew.
    let (date, time) = (at.date_naive(), at.time());
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let secs = time.num_seconds_from_midnight();
    put_digits(&mut buf[0..4], year);
    buf[4] = b'-';
    put_digits(&mut buf[5..7], date.month());
    buf[7] = b'-';
    put_digits(&mut buf[8..10], date.day());
    buf[10] = b'T';
    put_digits(&mut buf[11..13], secs / 3600);
    buf[13] = b':';
    put_digits(&mut buf[14..16], secs / 60 % 60);
    buf[16] = b':';
    put_digits(&mut buf[17..19], secs % 60);
    // AutoSi: no fraction, or the shortest of milli-, micro- and nanoseconds that is exact.
    let (digits, fraction) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    let mut len = 19;
    if digits > 0 {
        buf[len] = b'.';
        put_digits(&mut buf[len + 1..len + 1 + digits], fraction);
        len += 1 + digits;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    #[derive(Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    fn fast(at: DateTime<Utc>) -> String {
        serde_json::to_string(&Fast(at)).unwrap()
    }

    fn chrono(at: DateTime<Utc>) -> String {
        serde_json::to_string(&at).unwrap()
    }

    /// Sub-second parts of each AutoSi form: none, milli-, micro- and nanoseconds.
    fn nanos() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            (1u32..1_000).prop_map(|ms| ms * 1_000_000),
            (1u32..1_000_000).prop_map(|us| us * 1_000),
            1u32..1_000_000_000,
        ]
    }

    proptest! {
        // Proves the fast path writes exactly chrono's text, for every fraction form,
        // across the years chrono writes with four digits.
        #[test]
        fn writes_what_chrono_writes(secs in 0i64..253_402_300_800, nanos in nanos()) {
            let at = Utc.timestamp_opt(secs, nanos).unwrap();
            prop_assert_eq!(fast(at), chrono(at));
        }
    }

    // Proves the forms left to chrono still come out as chrono writes them: a year
    // beyond 9999, a year before 0, and a leap second.
    #[test]
    fn special_forms_are_chrono_s() {
        let far = Utc.with_ymd_and_hms(12_345, 6, 7, 8, 9, 10).unwrap();
        let before = Utc.with_ymd_and_hms(-44, 3, 15, 12, 0, 0).unwrap();
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        for at in [far, before, leap] {
            assert_eq!(fast(at), chrono(at));
        }
        assert_eq!(fast(leap), "\"2016-12-31T23:59:60.500Z\"");
    }
}
