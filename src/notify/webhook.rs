//! Standard Webhooks (<https://www.standardwebhooks.com>, spec
//! `standard-webhooks/standard-webhooks` `spec/standard-webhooks.md`): a JSON body
//! `{type, timestamp, data}` and three headers, `webhook-id` (the delivery id, the
//! receiver's idempotency key), `webhook-timestamp` (the attempt, unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one
//! signature per secret, space-separated, so a receiver mid-rotation accepts either.
//! A receiver's guide is `docs/alerts.md`, "Verifying a webhook".

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use sha2::Sha256;

use super::{Notice, NoticeKind};
use crate::secret::Secret;

/// How the spec serializes a symmetric secret for people to copy.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";
/// The spec's minimum key: 24 random bytes (192 bits).
pub const WEBHOOK_SECRET_BYTES_MIN: usize = 24;
/// The spec's maximum key: 64 bytes (512 bits).
pub const WEBHOOK_SECRET_BYTES_MAX: usize = 64;
/// Secrets signing one delivery: the current one and, during a rotation, the next.
pub const WEBHOOK_SECRETS_MAX: usize = 2;
/// Characters of a delivery id: it is a header and part of the signed content.
pub const DELIVERY_ID_CHARS_MAX: usize = 200;

/// Why a webhook secret is refused (the settings code shows it to the brand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookSecretError {
    #[error("a webhook secret starts with `whsec_`")]
    MissingPrefix,
    #[error("a webhook secret is `whsec_` followed by standard base64")]
    NotBase64,
    #[error("a webhook secret holds {WEBHOOK_SECRET_BYTES_MIN} to {WEBHOOK_SECRET_BYTES_MAX} bytes, not {0}")]
    Length(usize),
}

/// Why a delivery could not be signed: a configuration to fix, not a receiver to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("the webhook endpoint has {0} secrets: 1 or {WEBHOOK_SECRETS_MAX} are needed")]
    SecretCount(usize),
    #[error(transparent)]
    Secret(#[from] WebhookSecretError),
    /// The spec forbids a `.` in the id (it delimits the signed content); a header
    /// takes visible ASCII only.
    #[error(
        "the delivery id must be 1 to {DELIVERY_ID_CHARS_MAX} visible ASCII characters without `.`"
    )]
    DeliveryId,
}

/// The key of a `whsec_<base64>` secret, or why it is not one.
pub fn parse_webhook_secret(s: &str) -> Result<Vec<u8>, WebhookSecretError> {
    let encoded = s
        .strip_prefix(WEBHOOK_SECRET_PREFIX)
        .ok_or(WebhookSecretError::MissingPrefix)?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| WebhookSecretError::NotBase64)?;
    match key.len() {
        WEBHOOK_SECRET_BYTES_MIN..=WEBHOOK_SECRET_BYTES_MAX => Ok(key),
        n => Err(WebhookSecretError::Length(n)),
    }
}

/// `v1,<base64>`: the signature of `body` sent as delivery `id` at `timestamp`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// A body and the headers that sign it.
#[derive(Debug, Clone)]
pub struct Signed {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// `notice` as delivery `delivery_id`, signed at `now` with each of `secrets`.
pub fn signed(
    notice: &Notice,
    delivery_id: &str,
    now: DateTime<Utc>,
    secrets: &[Secret],
) -> Result<Signed, SigningError> {
    if secrets.is_empty() || secrets.len() > WEBHOOK_SECRETS_MAX {
        return Err(SigningError::SecretCount(secrets.len()));
    }
    let id_ok = (1..=DELIVERY_ID_CHARS_MAX).contains(&delivery_id.len())
        && delivery_id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'.');
    if !id_ok {
        return Err(SigningError::DeliveryId);
    }
    let keys = secrets
        .iter()
        .map(|s| parse_webhook_secret(s.expose()))
        .collect::<Result<Vec<_>, _>>()?;
    let body = body(notice);
    let timestamp = now.timestamp();
    let signatures: Vec<String> = keys
        .iter()
        .map(|k| signature(k, delivery_id, timestamp, &body))
        .collect();
    Ok(Signed {
        headers: vec![
            ("webhook-id", delivery_id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signatures.join(" ")),
        ],
        body,
    })
}

/// `{"type", "timestamp", "data"}`: `timestamp` is when the notice happened (the spec's
/// event time); the attempt's time is the `webhook-timestamp` header.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub timestamp: String,
    pub data: Data<'a>,
}

/// The notice's fields in camelCase, nulls included, so a receiver's schema is fixed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Data<'a> {
    pub id: &'a str,
    pub kind: NoticeKind,
    pub brand_id: &'a str,
    pub plan_id: &'a str,
    pub plan_name: &'a str,
    pub period: &'a str,
    pub metric: &'a str,
    pub unit: &'a str,
    pub current: u64,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub overage: u64,
    pub overage_cost_cents: i64,
    /// A JSON number, two decimals, not capped at 100 (not money: f64 is exact enough).
    pub percentage: f64,
    pub threshold: Option<u8>,
    pub severity: &'a str,
    pub refused: Option<u64>,
    pub units: Option<u64>,
    pub price_cents: Option<i64>,
    pub reason: Option<&'a str>,
    pub at: String,
    pub dashboard_url: Option<&'a str>,
}

pub fn payload(n: &Notice) -> Payload<'_> {
    let at = n.at.to_rfc3339_opts(SecondsFormat::Secs, true);
    Payload {
        kind: event_type(n.kind),
        timestamp: at.clone(),
        data: Data {
            id: &n.id,
            kind: n.kind,
            brand_id: &n.brand_id,
            plan_id: &n.plan_id,
            plan_name: &n.plan_name,
            period: &n.period,
            metric: &n.metric,
            unit: &n.unit,
            current: n.current,
            limit: n.limit,
            remaining: n.remaining,
            overage: n.overage,
            overage_cost_cents: n.overage_cost_cents,
            percentage: n.percentage.to_f64().unwrap_or_default(),
            threshold: n.threshold,
            severity: &n.severity,
            refused: n.refused,
            units: n.units,
            price_cents: n.price_cents,
            reason: n.reason.as_deref(),
            at,
            dashboard_url: n.dashboard_url.as_deref(),
        },
    }
}

/// The minified JSON posted, byte for byte the content signed.
pub fn body(notice: &Notice) -> Vec<u8> {
    serde_json::to_vec(&payload(notice)).expect("a struct of plain fields serializes")
}

/// The `type` of a Standard Webhooks body: hierarchical, full-stop delimited, as the
/// spec recommends.
pub fn event_type(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::ThresholdCrossed => "quota.threshold_crossed",
        NoticeKind::ThresholdResolved => "quota.threshold_resolved",
        NoticeKind::QuotaRefused => "quota.refused",
        NoticeKind::TopUpApplied => "topup.applied",
        NoticeKind::TopUpFailed => "topup.failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notice::tests::critical;

    /// The worked example of `docs/alerts.md`, "Verifying a webhook".
    const DOC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const DOC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const DOC_TIMESTAMP: i64 = 1614265330;
    const DOC_BODY: &str = r#"{"test": 2432232314}"#;

    #[test]
    fn the_documented_example_signs_to_the_documented_signature() {
        // Proves docs/alerts.md's worked example is what the code computes.
        let key = parse_webhook_secret(DOC_SECRET).unwrap();
        assert_eq!(
            signature(&key, DOC_ID, DOC_TIMESTAMP, DOC_BODY.as_bytes()),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_documented_delivery_is_what_is_sent() {
        // Proves the webhook example of docs/alerts.md: its headers and its body.
        let now: DateTime<Utc> = "2026-11-20T10:15:30Z".parse().unwrap();
        let s = signed(
            &critical(),
            "acme:2026-11:42:hook-1",
            now,
            &[Secret::new(DOC_SECRET)],
        )
        .unwrap();
        assert_eq!(
            s.headers,
            [
                ("webhook-id", "acme:2026-11:42:hook-1".to_owned()),
                ("webhook-timestamp", "1795169730".to_owned()),
                (
                    "webhook-signature",
                    "v1,3H5RDWz/f4nbb4hNqSGRgBAOp2CIVcMs74B+G0FMfOc=".to_owned()
                ),
            ]
        );
        let body = String::from_utf8(s.body).unwrap();
        // The line of docs/alerts.md, byte for byte.
        assert_eq!(
            body,
            r#"{"type":"quota.threshold_crossed","timestamp":"2026-11-20T10:15:00Z","data":{"id":"acme:2026-11:42","kind":"threshold_crossed","brandId":"acme","planId":"starter","planName":"Starter","period":"2026-11","metric":"ai_generations","unit":"génération","current":900,"limit":1000,"remaining":100,"overage":0,"overageCostCents":0,"percentage":90.0,"threshold":90,"severity":"critical","refused":null,"units":null,"priceCents":null,"reason":null,"at":"2026-11-20T10:15:00Z","dashboardUrl":"https://app.example.com/brands/acme/usage"}}"#
        );
    }

    #[test]
    fn a_secret_is_whsec_then_base64_of_24_to_64_bytes() {
        // Proves the settings code can refuse a secret before any delivery uses it.
        let key = parse_webhook_secret(DOC_SECRET).unwrap();
        assert_eq!(key.len(), 24);
        assert_eq!(
            parse_webhook_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(WebhookSecretError::MissingPrefix)
        );
        assert_eq!(
            parse_webhook_secret("whsec_not base64!!"),
            Err(WebhookSecretError::NotBase64)
        );
        assert_eq!(
            parse_webhook_secret("whsec_c2hvcnQ="),
            Err(WebhookSecretError::Length(5))
        );
        assert_eq!(
            parse_webhook_secret("whsec_"),
            Err(WebhookSecretError::Length(0))
        );
    }

    #[test]
    fn two_secrets_give_two_signatures_of_the_same_body() {
        // Proves a rotation signs with both keys, space-separated, over the sent body.
        let now: DateTime<Utc> = "2026-11-20T10:15:30Z".parse().unwrap();
        let other = format!("whsec_{}", BASE64.encode([7u8; 32]));
        let secrets = [Secret::new(DOC_SECRET), Secret::new(other.clone())];
        let s = signed(&critical(), "acme-2026-11-42-slack", now, &secrets).unwrap();
        let header = |name: &str| {
            s.headers
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(header("webhook-id"), "acme-2026-11-42-slack");
        assert_eq!(header("webhook-timestamp"), now.timestamp().to_string());
        let expected = [DOC_SECRET, other.as_str()]
            .map(|k| {
                let key = parse_webhook_secret(k).unwrap();
                signature(&key, "acme-2026-11-42-slack", now.timestamp(), &s.body)
            })
            .join(" ");
        assert_eq!(header("webhook-signature"), expected);
        let json: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(json["type"], "quota.threshold_crossed");
        assert_eq!(json["data"]["brandId"], "acme");
    }

    #[test]
    fn a_bad_configuration_is_refused_before_sending() {
        // Proves no secret, three secrets, a bad secret or an id with a dot are errors.
        let now = Utc::now();
        let n = critical();
        let good = Secret::new(DOC_SECRET);
        assert_eq!(
            signed(&n, "d1", now, &[]).unwrap_err(),
            SigningError::SecretCount(0)
        );
        let three = [good.clone(), good.clone(), good.clone()];
        assert_eq!(
            signed(&n, "d1", now, &three).unwrap_err(),
            SigningError::SecretCount(3)
        );
        assert_eq!(
            signed(&n, "d1", now, &[Secret::new("nope")]).unwrap_err(),
            SigningError::Secret(WebhookSecretError::MissingPrefix)
        );
        for id in ["", "a.b", "a b"] {
            assert_eq!(
                signed(&n, id, now, std::slice::from_ref(&good)).unwrap_err(),
                SigningError::DeliveryId
            );
        }
    }
}
