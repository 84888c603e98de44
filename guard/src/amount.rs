//! How many units a request spends: 1, a field of its JSON body, or a closure.

use std::sync::Arc;

use http::request::Parts;

use crate::error::GuardError;

/// The ledger's largest quantity per request: a larger amount would be its 422, so the
/// guard answers the caller's 422 itself instead of a 502 for a ledger refusal.
pub const AMOUNT_MAX: u64 = 1_000_000_000;

/// The amount closure: the request head and the buffered body bytes, to units or the
/// reason the request is invalid (answered 422).
pub(crate) type AmountFn = dyn Fn(&Parts, &[u8]) -> Result<u64, String> + Send + Sync;

#[derive(Clone)]
pub(crate) enum AmountSource {
    /// One unit per request (the original's default).
    One,
    /// A field of the JSON body, as a dot path (`count`, `job.frames`).
    Field(Arc<[String]>),
    Closure(Arc<AmountFn>),
}

impl AmountSource {
    pub(crate) fn field(path: &str) -> Self {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        assert!(
            segments.iter().all(|s| !s.is_empty()),
            "amount_field({path:?}): a dot path of non-empty field names"
        );
        AmountSource::Field(segments.into())
    }

    /// Whether the guard must buffer the body to know the amount.
    pub(crate) fn needs_body(&self) -> bool {
        !matches!(self, AmountSource::One)
    }

    pub(crate) fn amount(&self, parts: &Parts, body: &[u8]) -> Result<u64, GuardError> {
        let units = match self {
            AmountSource::One => return Ok(1),
            AmountSource::Field(path) => from_field(path, body)?,
            AmountSource::Closure(f) => f(parts, body).map_err(GuardError::InvalidAmount)?,
        };
        in_range(units)
    }
}

/// The integer at `path` in a JSON body. Missing, fractional, negative or non-numeric
/// values are refused, never read as 1: the route declared that the amount lives there,
/// and guessing would under-count a batch (the original fell back to 1, reference §2.5).
fn from_field(path: &[String], body: &[u8]) -> Result<u64, GuardError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| GuardError::MalformedBody(format!("the body is not JSON: {e}")))?;
    let dotted = path.join(".");
    let found = path
        .iter()
        .try_fold(&value, |v, name| v.get(name))
        .ok_or_else(|| GuardError::InvalidAmount(format!("the body has no field {dotted:?}")))?;
    found.as_u64().ok_or_else(|| {
        GuardError::InvalidAmount(format!(
            "{dotted} must be a whole number of units; got {}",
            crate::error::echo(&found.to_string())
        ))
    })
}

fn in_range(units: u64) -> Result<u64, GuardError> {
    match units {
        1..=AMOUNT_MAX => Ok(units),
        _ => Err(GuardError::InvalidAmount(format!(
            "the amount must be 1 to {AMOUNT_MAX} units; got {units}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Parts {
        http::Request::builder()
            .header("x-frames", "7")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn field(path: &str, body: &str) -> Result<u64, GuardError> {
        AmountSource::field(path).amount(&parts(), body.as_bytes())
    }

    #[test]
    fn a_route_without_an_amount_spends_one_unit_and_reads_no_body() {
        // Proves the default: 1 unit, and the body is left alone.
        assert!(!AmountSource::One.needs_body());
        assert_eq!(AmountSource::One.amount(&parts(), b"not json").unwrap(), 1);
    }

    #[test]
    fn a_field_names_the_amount_by_a_dot_path() {
        // Proves top-level and nested fields are read as whole units.
        assert_eq!(
            field("count", r#"{"count": 4, "brandId": "x"}"#).unwrap(),
            4
        );
        assert_eq!(
            field("job.frames", r#"{"job": {"frames": 12}}"#).unwrap(),
            12
        );
    }

    #[test]
    fn a_missing_or_invalid_amount_is_refused_never_read_as_one() {
        // Proves each bad amount is a 422 (or a 400 for a body that is not JSON).
        for body in [
            r#"{}"#,
            r#"{"count": 0}"#,
            r#"{"count": -2}"#,
            r#"{"count": 1.5}"#,
            r#"{"count": "3"}"#,
            r#"{"count": null}"#,
            r#"{"count": 1000000001}"#,
        ] {
            let e = field("count", body).unwrap_err();
            assert!(matches!(e, GuardError::InvalidAmount(_)), "{body}: {e:?}");
            assert_eq!(e.status(), 422, "{body}");
        }
        let e = field("count", "count=3").unwrap_err();
        assert!(matches!(e, GuardError::MalformedBody(_)), "{e:?}");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn a_closure_sees_the_head_and_the_body_and_its_result_is_bounded() {
        // Proves `.amount(|parts, body| …)`: its units are range-checked like a field's.
        let from_header = AmountSource::Closure(Arc::new(|p: &Parts, _: &[u8]| {
            p.headers
                .get("x-frames")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .ok_or_else(|| "x-frames is missing".to_owned())
        }));
        assert_eq!(from_header.amount(&parts(), b"").unwrap(), 7);
        let zero = AmountSource::Closure(Arc::new(|_: &Parts, b: &[u8]| Ok(b.len() as u64)));
        assert!(matches!(
            zero.amount(&parts(), b""),
            Err(GuardError::InvalidAmount(_))
        ));
    }
}
