//! Webhook signatures as Stripe specifies them
//! (<https://docs.stripe.com/webhooks#verify-manually>): the header
//! `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]`, where each `v1` is
//! the HMAC-SHA256, keyed with an endpoint secret, of `"{t}.{raw body}"`. A delivery is
//! genuine when one `v1` matches one of the configured secrets (two during a rotation)
//! and `t` is within the tolerance of now, in either direction: an old delivery may be a
//! replay, a future one a forged clock.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Stripe's own libraries' default: five minutes either side of now.
pub const SIGNATURE_TOLERANCE_SECONDS: i64 = 300;
/// Signatures read from one header at most: Stripe sends one per active secret (two
/// during a rotation); more is not a delivery of Stripe's.
pub const SIGNATURES_PER_HEADER_MAX: usize = 8;
/// Secrets accepted at once: the current one and the one being rotated out, with room.
pub const WEBHOOK_SECRETS_MAX: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the delivery is signed at {signed_at}, more than {SIGNATURE_TOLERANCE_SECONDS} s from now ({now})")]
    OutsideTolerance { signed_at: i64, now: i64 },
    #[error("no signature matches a configured webhook secret")]
    Mismatch,
}

/// Check `header` (the `Stripe-Signature` value, if any) over the raw `body` against
/// `secrets`, at `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&str],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let (signed_at, signatures) = parse(header)?;
    if (now - signed_at).abs() > SIGNATURE_TOLERANCE_SECONDS {
        return Err(SignatureError::OutsideTolerance { signed_at, now });
    }
    let matches = secrets.iter().take(WEBHOOK_SECRETS_MAX).any(|secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(signed_at.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // `verify_slice` compares in constant time.
        signatures
            .iter()
            .any(|s| mac.clone().verify_slice(s).is_ok())
    });
    match matches {
        true => Ok(()),
        false => Err(SignatureError::Mismatch),
    }
}

/// The timestamp and the decoded `v1` signatures of a header. Other schemes (`v0`, a
/// test-mode legacy) are ignored, as Stripe's libraries do.
fn parse(header: &str) -> Result<(i64, Vec<Vec<u8>>), SignatureError> {
    let mut signed_at = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("an item is not key=value"))?;
        match key {
            "t" => {
                let t = value
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("t is not a unix time"))?;
                if signed_at.replace(t).is_some() {
                    return Err(SignatureError::Malformed("t is given twice"));
                }
            }
            "v1" => {
                if signatures.len() == SIGNATURES_PER_HEADER_MAX {
                    return Err(SignatureError::Malformed("too many signatures"));
                }
                let bytes = hex::decode(value)
                    .map_err(|_| SignatureError::Malformed("a v1 signature is not hex"))?;
                signatures.push(bytes);
            }
            _ => {}
        }
    }
    let signed_at = signed_at.ok_or(SignatureError::Malformed("no t"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    Ok((signed_at, signatures))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_current";
    const OLD: &str = "whsec_test_previous";
    const NOW: i64 = 1_796_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;

    /// A `v1` as Stripe computes it: HMAC-SHA256 of `"{t}.{body}"`, hex.
    fn sign(secret: &str, t: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn a_genuine_delivery_verifies_with_either_secret_of_a_rotation() {
        let header = format!("t={NOW},v1={}", sign(SECRET, NOW, BODY));
        assert_eq!(verify(Some(&header), BODY, &[SECRET], NOW), Ok(()));
        assert_eq!(
            verify(Some(&header), BODY, &[OLD, SECRET], NOW + 299),
            Ok(())
        );
        // Stripe signs with both secrets during a rotation: one match is enough.
        let both = format!(
            "t={NOW},v1={},v1={},v0=ignored",
            sign(OLD, NOW, BODY),
            sign(SECRET, NOW, BODY)
        );
        assert_eq!(verify(Some(&both), BODY, &[SECRET], NOW), Ok(()));
    }

    #[test]
    fn forged_stale_future_reindented_or_unsigned_deliveries_are_refused() {
        let good = sign(SECRET, NOW, BODY);
        let header = format!("t={NOW},v1={good}");
        // Forged: another secret, or the body changed (re-indented JSON is another body).
        let forged = format!("t={NOW},v1={}", sign("whsec_attacker", NOW, BODY));
        assert_eq!(
            verify(Some(&forged), BODY, &[SECRET], NOW),
            Err(SignatureError::Mismatch)
        );
        let reindented = br#"{ "id": "evt_1", "type": "checkout.session.completed" }"#;
        assert_eq!(
            verify(Some(&header), reindented, &[SECRET], NOW),
            Err(SignatureError::Mismatch)
        );
        // A signature of the right body moved to another timestamp does not match.
        let moved = format!("t={},v1={good}", NOW + 1);
        assert_eq!(
            verify(Some(&moved), BODY, &[SECRET], NOW),
            Err(SignatureError::Mismatch)
        );
        // Stale (a replay) and future-dated, though correctly signed.
        for t in [NOW - 301, NOW + 301] {
            let h = format!("t={t},v1={}", sign(SECRET, t, BODY));
            assert_eq!(
                verify(Some(&h), BODY, &[SECRET], NOW),
                Err(SignatureError::OutsideTolerance {
                    signed_at: t,
                    now: NOW
                })
            );
        }
        // Unsigned or malformed.
        assert_eq!(
            verify(None, BODY, &[SECRET], NOW),
            Err(SignatureError::Missing)
        );
        for bad in [
            "",
            "t=abc,v1=00",
            &format!("v1={good}"),
            &format!("t={NOW}"),
            &format!("t={NOW},v1=zz"),
        ] {
            assert!(
                matches!(
                    verify(Some(bad), BODY, &[SECRET], NOW),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        // No secret configured: nothing verifies.
        assert_eq!(
            verify(Some(&header), BODY, &[], NOW),
            Err(SignatureError::Mismatch)
        );
    }
}
