//! What the ledger reads of a Stripe event (<https://docs.stripe.com/api/events>) and
//! of the Checkout Session it carries; every other field is ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The event types the ledger acts on.
pub const SESSION_COMPLETED: &str = "checkout.session.completed";
pub const SESSION_ASYNC_SUCCEEDED: &str = "checkout.session.async_payment_succeeded";
pub const SESSION_ASYNC_FAILED: &str = "checkout.session.async_payment_failed";
pub const SESSION_EXPIRED: &str = "checkout.session.expired";
pub const HANDLED_TYPES: [&str; 4] = [
    SESSION_COMPLETED,
    SESSION_ASYNC_SUCCEEDED,
    SESSION_ASYNC_FAILED,
    SESSION_EXPIRED,
];

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds: when Stripe created the event, i.e. when the payment completed.
    pub created: i64,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

/// The Checkout Session of a `checkout.session.*` event.
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    pub id: String,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    /// `paid`, `unpaid` or `no_payment_required`.
    #[serde(default)]
    pub payment_status: Option<String>,
}

impl Event {
    /// The session of a `checkout.session.*` event.
    pub fn session(&self) -> Result<Session, serde_json::Error> {
        Session::deserialize(&self.data.object)
    }
}

impl Session {
    /// The ledger's order id the session was created for.
    pub fn topup_id(&self) -> Option<&str> {
        self.metadata
            .get("topup_id")
            .map(String::as_str)
            .or(self.client_reference_id.as_deref())
    }
}
