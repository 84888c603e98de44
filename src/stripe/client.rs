//! The two calls the ledger makes to Stripe's API, over `reqwest`: create a Checkout
//! Session, and list events (for reconciliation). Form-encoded bodies, bearer auth,
//! an `Idempotency-Key` on every creation, as <https://docs.stripe.com/api> specifies.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::event::Event;
use crate::secret::Secret;

/// One call to Stripe, connection included: its own API answers in well under a
/// second; a caller waiting on a checkout should hear of an outage, not hang.
pub const STRIPE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Items per page of Stripe's lists (`GET /v1/events`, `GET /v1/prices`): its maximum.
pub const PAGE_ITEMS: u32 = 100;
/// Pages of prices read at most: 10,000 prices is far beyond any catalog's.
pub const PRICE_PAGES_MAX: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered and refused (a 4xx): the request is wrong or the key is.
    #[error("Stripe refused the call ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Stripe could not be reached or failed (a 5xx, a timeout): worth retrying.
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
}

/// A Checkout Session to create for one top-up order.
#[derive(Debug, Clone)]
pub struct NewCheckout {
    /// The order's public id: the session's `client_reference_id` and metadata, and
    /// the base of the idempotency key, so a retried creation returns the same session.
    pub topup_id: String,
    pub brand: String,
    pub metric: String,
    pub units: u64,
    pub amount_cents: i64,
    /// ISO 4217, lower case as Stripe writes it.
    pub currency: String,
    pub product_name: String,
    pub success_url: String,
    pub cancel_url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// What the ledger reads of a Checkout Session.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub url: Option<String>,
    pub expires_at: Option<i64>,
}

/// One page of `GET /v1/events`, newest first.
#[derive(Debug, Clone, Deserialize)]
pub struct EventPage {
    pub data: Vec<Event>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
}

impl StripeClient {
    pub fn new(base: &str, key: Secret) -> Self {
        let http = reqwest::Client::builder()
            .timeout(STRIPE_CALL_TIMEOUT)
            .build()
            .expect("a client with a timeout builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
        }
    }

    /// `POST /v1/checkout/sessions` in payment mode, one line item priced inline.
    pub async fn create_checkout(&self, c: &NewCheckout) -> Result<CheckoutSession, StripeError> {
        let mut form: Vec<(String, String)> = vec![
            ("mode".into(), "payment".into()),
            ("client_reference_id".into(), c.topup_id.clone()),
            ("success_url".into(), c.success_url.clone()),
            ("cancel_url".into(), c.cancel_url.clone()),
            ("expires_at".into(), c.expires_at.to_string()),
            ("line_items[0][quantity]".into(), "1".into()),
            (
                "line_items[0][price_data][currency]".into(),
                c.currency.clone(),
            ),
            (
                "line_items[0][price_data][unit_amount]".into(),
                c.amount_cents.to_string(),
            ),
            (
                "line_items[0][price_data][product_data][name]".into(),
                c.product_name.clone(),
            ),
        ];
        let metadata = BTreeMap::from([
            ("topup_id", c.topup_id.clone()),
            ("brand_id", c.brand.clone()),
            ("metric", c.metric.clone()),
            ("units", c.units.to_string()),
        ]);
        for (k, v) in &metadata {
            form.push((format!("metadata[{k}]"), v.clone()));
            form.push((format!("payment_intent_data[metadata][{k}]"), v.clone()));
        }
        let res = self
            .http
            .post(format!("{}/v1/checkout/sessions", self.base))
            .bearer_auth(self.key.expose())
            .header("Idempotency-Key", format!("checkout-{}", c.topup_id))
            .form(&form)
            .send()
            .await;
        answer(res).await
    }

    /// `GET /v1/events` of `types`, created at or after `created_gte` (unix seconds),
    /// the page after event `starting_after`.
    pub async fn list_events(
        &self,
        types: &[&str],
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<EventPage, StripeError> {
        let mut query: Vec<(&str, String)> =
            types.iter().map(|t| ("types[]", t.to_string())).collect();
        query.push(("created[gte]", created_gte.to_string()));
        query.push(("limit", PAGE_ITEMS.to_string()));
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        let res = self
            .http
            .get(format!("{}/v1/events", self.base))
            .bearer_auth(self.key.expose())
            .query(&query)
            .send()
            .await;
        answer(res).await
    }
}

impl StripeClient {
    /// Every active Price of the account (`GET /v1/prices`, paged).
    pub async fn active_prices(&self) -> Result<Vec<super::pricing::Price>, StripeError> {
        #[derive(Deserialize)]
        struct Page {
            data: Vec<super::pricing::Price>,
            has_more: bool,
        }
        let mut prices = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..PRICE_PAGES_MAX {
            let mut query = vec![
                ("active", "true".to_owned()),
                ("limit", PAGE_ITEMS.to_string()),
            ];
            if let Some(a) = &after {
                query.push(("starting_after", a.clone()));
            }
            let res = self
                .http
                .get(format!("{}/v1/prices", self.base))
                .bearer_auth(self.key.expose())
                .query(&query)
                .send()
                .await;
            let page: Page = answer(res).await?;
            after = page.data.last().map(|p| p.id.clone());
            prices.extend(page.data);
            if !page.has_more || after.is_none() {
                break;
            }
        }
        Ok(prices)
    }
}

async fn answer<T: serde::de::DeserializeOwned>(
    res: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, StripeError> {
    let res = res.map_err(|e| StripeError::Unavailable(e.to_string()))?;
    let status = res.status();
    let text = res
        .text()
        .await
        .map_err(|e| StripeError::Unavailable(e.to_string()))?;
    if status.is_success() {
        return serde_json::from_str(&text)
            .map_err(|e| StripeError::Unavailable(format!("unreadable answer: {e}")));
    }
    let message = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| {
            let kind = b.error.kind.unwrap_or_default();
            let message = b.error.message.unwrap_or_default();
            format!("{kind}: {message}")
        })
        .unwrap_or_else(|_| crate::engine::echo(&text).into_owned());
    match status.is_server_error() || status.as_u16() == 429 {
        true => Err(StripeError::Unavailable(format!("{status}: {message}"))),
        false => Err(StripeError::Refused {
            status: status.as_u16(),
            message,
        }),
    }
}
