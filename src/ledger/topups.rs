//! Purchased top-ups: a Stripe Checkout for units of a `charge` metric, the payment
//! confirmed by Stripe's events (webhook deliveries or a reconciliation), the credit
//! applied once to the period open when the payment completed.
//!
//! The order is recorded first (`TopUpOpened` on the brand's registry), then the
//! Checkout Session is created with the order's id as its idempotency key, reference
//! and metadata: a crash between the two leaves an order that a retried checkout
//! finds, and a session Stripe can always tie back to its order.

use chrono::{DateTime, Duration, TimeZone, Utc};
use ledger_aggregates::money::cost_of;
use ledger_aggregates::topup::{PaymentRef, TopUpCommand, TopUpId, TopUpOrder, TopUpStatus};
use ledger_aggregates::{BrandId, Currency, MetricKey, OveragePolicy, PeriodKey, Quantity};
use ledger_projections::topups::TopUp;

use super::{Ledger, QueryError};
use crate::config::StripeConfig;
use crate::engine::{EngineError, TopUpChange};
use crate::secret::Secret;
use crate::stripe::client::{NewCheckout, StripeClient, StripeError};
use crate::stripe::event::{self, Event};

/// Stripe's smallest charge in euros (<https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts>).
pub const CHECKOUT_AMOUNT_MIN_CENTS: i64 = 50;
/// Stripe's largest Checkout amount in euros: eight digits of cents.
pub const CHECKOUT_AMOUNT_MAX_CENTS: i64 = 99_999_999;
/// A redirect URL longer than this is not a page of an application.
pub const REDIRECT_URL_CHARS_MAX: usize = 2_048;
/// Pages of events one reconciliation reads at most (100 each): 10,000 events.
pub const RECONCILE_PAGES_MAX: usize = 100;
/// Stripe keeps events for 30 days: a reconciliation cannot look further back.
pub const RECONCILE_LOOKBACK_DAYS_MAX: i64 = 30;

/// Stripe as the ledger is configured to reach it.
pub struct Payments {
    pub client: Option<StripeClient>,
    pub webhook_secrets: Vec<Secret>,
    pub origins: Vec<String>,
    pub success_url: Option<String>,
    pub cancel_url: Option<String>,
    pub checkout_ttl: Duration,
}

impl Payments {
    pub fn from_config(c: &StripeConfig) -> Self {
        Self {
            client: c
                .secret_key
                .clone()
                .map(|key| StripeClient::new(&c.api_base, key)),
            webhook_secrets: [&c.webhook_secret, &c.webhook_secret_previous]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            origins: c.origins(),
            success_url: c.success_url.clone(),
            cancel_url: c.cancel_url.clone(),
            checkout_ttl: Duration::minutes(c.checkout_ttl_minutes.into()),
        }
    }

    /// `url`, when it is an absolute URL on one of the configured origins.
    fn redirect(
        &self,
        field: &'static str,
        url: Option<&str>,
        fallback: &Option<String>,
    ) -> Result<String, TopUpFailure> {
        let url =
            url.map(str::to_owned)
                .or_else(|| fallback.clone())
                .ok_or(TopUpFailure::Redirect {
                    field,
                    reason: "is required: no default is configured".to_owned(),
                })?;
        if url.chars().count() > REDIRECT_URL_CHARS_MAX {
            return Err(TopUpFailure::Redirect {
                field,
                reason: format!("is longer than {REDIRECT_URL_CHARS_MAX} characters"),
            });
        }
        // The origin is what precedes the path; `https://app.example.com.evil.io/`
        // must not pass for `https://app.example.com`.
        let allowed = self.origins.iter().any(|o| {
            url.strip_prefix(o.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
        });
        if !allowed {
            return Err(TopUpFailure::Redirect {
                field,
                reason: match self.origins.is_empty() {
                    true => {
                        "is refused: no redirect origin is configured (stripe.redirect_origins)"
                            .to_owned()
                    }
                    false => format!(
                        "must be on one of the configured origins ({})",
                        self.origins.join(", ")
                    ),
                },
            });
        }
        Ok(url)
    }
}

/// Why a top-up could not be bought, or a payment not applied.
#[derive(Debug, thiserror::Error)]
pub enum TopUpFailure {
    #[error("Stripe is not configured on this ledger ({0} is unset)")]
    NotConfigured(&'static str),
    #[error("{metric} is not sold as a top-up: only metrics billed for overage (charge) are")]
    NotCharged { metric: MetricKey },
    #[error("{metric} is not part of plan {plan}")]
    NotInPlan { metric: MetricKey, plan: String },
    #[error("{units} units cost {amount} cents, below Stripe's minimum of {CHECKOUT_AMOUNT_MIN_CENTS} cents; buy more units")]
    BelowMinimum { units: u64, amount: i64 },
    #[error("{units} units cost {amount} cents, above Stripe's maximum of {CHECKOUT_AMOUNT_MAX_CENTS} cents")]
    AboveMaximum { units: u64, amount: i64 },
    #[error("{field} {reason}")]
    Redirect { field: &'static str, reason: String },
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A checkout asked for.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub brand: BrandId,
    pub metric: MetricKey,
    pub units: Quantity,
    pub success_url: Option<String>,
    pub cancel_url: Option<String>,
    pub actor: String,
    /// The caller's idempotency key: a retry answers the same order and session.
    pub request_key: Option<String>,
}

/// A checkout created (or found again for a retried request).
#[derive(Debug, Clone)]
pub struct Checkout {
    pub topup: TopUpId,
    pub order: TopUpOrder,
    pub checkout_url: String,
    pub session: String,
    pub replayed: bool,
}

/// What one Stripe event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEffect {
    /// The order was paid by this event and its units credited to `period`.
    Credited { topup: TopUpId, period: PeriodKey },
    /// The order was marked failed.
    Failed { topup: TopUpId },
    /// The event changed nothing: the order already stood so, or it is not one the
    /// ledger acts on (the reason says which).
    Unchanged { reason: String },
}

/// One line of a brand's top-up history.
#[derive(Debug, Clone)]
pub enum HistoryEntry {
    /// An order bought through Stripe, in whatever state it stands.
    Order { topup: TopUpId, order: TopUpOrder },
    /// A credit of the period not bought through Stripe: an admin grant, a reset.
    Credit(TopUp),
}

impl Ledger {
    /// Open a top-up order and its Stripe Checkout Session.
    pub async fn checkout(&self, req: CheckoutRequest) -> Result<Checkout, TopUpFailure> {
        let p = &self.payments;
        let client = p
            .client
            .as_ref()
            .ok_or(TopUpFailure::NotConfigured("stripe.secret_key"))?;
        let success_url = p.redirect("successUrl", req.success_url.as_deref(), &p.success_url)?;
        let cancel_url = p.redirect("cancelUrl", req.cancel_url.as_deref(), &p.cancel_url)?;
        let now = self.engine.now();
        let period = PeriodKey::containing(now);
        let summary = self.summary(req.brand.clone(), period).await?;
        let quota = summary
            .plan
            .quota(&req.metric)
            .ok_or_else(|| TopUpFailure::NotInPlan {
                metric: req.metric.clone(),
                plan: summary.plan.id.to_string(),
            })?;
        let rate = match (quota.overage, quota.overage_rate) {
            (OveragePolicy::Charge, Some(rate)) => rate,
            _ => {
                return Err(TopUpFailure::NotCharged {
                    metric: req.metric.clone(),
                })
            }
        };
        let price = cost_of(req.units.get(), rate);
        let (units, amount) = (req.units.get(), price.minor());
        if amount < CHECKOUT_AMOUNT_MIN_CENTS {
            return Err(TopUpFailure::BelowMinimum { units, amount });
        }
        if amount > CHECKOUT_AMOUNT_MAX_CENTS {
            return Err(TopUpFailure::AboveMaximum { units, amount });
        }
        let change = self
            .engine
            .topup(
                req.brand.clone(),
                TopUpCommand::Open {
                    metric: req.metric.clone(),
                    units: req.units,
                    price,
                    currency: Currency::Eur,
                    actor: req.actor.clone(),
                    at: now,
                    // Whole seconds: Stripe's `expires_at` is in seconds.
                    expires_at: Utc
                        .timestamp_opt((now + p.checkout_ttl).timestamp(), 0)
                        .single()
                        .expect("a time near now is representable"),
                    request_key: req.request_key.clone(),
                },
            )
            .await?;
        let order = change.order;
        let topup = TopUpId {
            brand: req.brand.clone(),
            number: order.number,
        };
        let session = client
            .create_checkout(&NewCheckout {
                topup_id: topup.to_string(),
                brand: req.brand.to_string(),
                metric: order.metric.to_string(),
                units: order.units,
                amount_cents: order.price.minor(),
                currency: order.currency.to_string().to_ascii_lowercase(),
                product_name: format!("{} × {} (top-up {})", order.units, order.metric, topup),
                success_url,
                cancel_url,
                expires_at: order.expires_at.timestamp(),
            })
            .await?;
        let checkout_url = session.url.ok_or_else(|| {
            StripeError::Unavailable(format!("session {} came back without a url", session.id))
        })?;
        Ok(Checkout {
            topup,
            order,
            checkout_url,
            session: session.id,
            replayed: !change.changed,
        })
    }

    /// Apply one Stripe event. Events of other types, of sessions the ledger did not
    /// create, or repeating what an order already records change nothing; a payment
    /// whose amount or currency is not the order's is not credited.
    pub async fn apply_payment_event(&self, e: &Event) -> Result<PaymentEffect, TopUpFailure> {
        let unchanged = |reason: String| Ok(PaymentEffect::Unchanged { reason });
        if !event::HANDLED_TYPES.contains(&e.kind.as_str()) {
            return unchanged(format!("{} is not an event the ledger acts on", e.kind));
        }
        let Ok(session) = e.session() else {
            return unchanged(format!("{} carries no Checkout Session", e.id));
        };
        let Some(topup) = session.topup_id().and_then(|id| TopUpId::parse(id).ok()) else {
            return unchanged(format!(
                "session {} is not a top-up of this ledger",
                session.id
            ));
        };
        let registry = self.engine.brand_state(topup.brand.clone()).await?;
        let Some(order) = registry
            .as_ref()
            .and_then(|b| b.topups.get(topup.number))
            .cloned()
        else {
            return unchanged(format!("{topup} is not an order of this ledger"));
        };
        let payment = PaymentRef {
            event: crate::engine::echo(&e.id).into_owned(),
            session: crate::engine::echo(&session.id).into_owned(),
        };
        let at = self.engine.now();
        let paid = match e.kind.as_str() {
            event::SESSION_COMPLETED => match session.payment_status.as_deref() {
                Some("paid") => true,
                other => {
                    return unchanged(format!(
                        "session {} completed with payment {}: waiting for the payment",
                        session.id,
                        other.unwrap_or("unknown")
                    ))
                }
            },
            event::SESSION_ASYNC_SUCCEEDED => true,
            _ => false,
        };
        let change = match paid {
            true => {
                let expected = order.currency.to_string().to_ascii_lowercase();
                let amount_ok = session.amount_total == Some(order.price.minor());
                let currency_ok = session.currency.as_deref() == Some(expected.as_str());
                if !(amount_ok && currency_ok) {
                    tracing::error!(%topup, session = %session.id, amount = ?session.amount_total,
                        currency = ?session.currency, expected = order.price.minor(),
                        "a payment does not match its order: not credited");
                    let reason = format!(
                        "paid {} {}, the order is {} {}: not credited, see finance",
                        session.amount_total.unwrap_or(0),
                        session.currency.as_deref().unwrap_or("?"),
                        order.price.minor(),
                        expected
                    );
                    self.fail(&topup, reason, payment, at).await?
                } else {
                    let paid_at = Utc.timestamp_opt(e.created, 0).single().unwrap_or(at);
                    self.engine
                        .pay_topup(topup.brand.clone(), topup.number, paid_at, payment)
                        .await?
                }
            }
            false => {
                let reason = match e.kind.as_str() {
                    event::SESSION_EXPIRED => "the checkout expired unpaid",
                    _ => "the payment failed",
                };
                self.fail(&topup, reason.to_owned(), payment, at).await?
            }
        };
        Ok(effect(topup, change))
    }

    async fn fail(
        &self,
        topup: &TopUpId,
        reason: String,
        payment: PaymentRef,
        at: DateTime<Utc>,
    ) -> Result<TopUpChange, EngineError> {
        self.engine
            .topup(
                topup.brand.clone(),
                TopUpCommand::Fail {
                    number: topup.number,
                    reason,
                    payment,
                    at,
                },
            )
            .await
    }

    /// Read Stripe's checkout events created since `since` (oldest first) and apply
    /// each as its webhook would have: what a lost delivery did not, this does; what
    /// it did, this repeats without effect.
    pub async fn reconcile_payments(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(Event, PaymentEffect)>, TopUpFailure> {
        let client = self
            .payments
            .client
            .as_ref()
            .ok_or(TopUpFailure::NotConfigured("stripe.secret_key"))?;
        let mut events = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..RECONCILE_PAGES_MAX {
            let page = client
                .list_events(&event::HANDLED_TYPES, since.timestamp(), after.as_deref())
                .await?;
            after = page.data.last().map(|e| e.id.clone());
            events.extend(page.data);
            if !page.has_more || after.is_none() {
                break;
            }
        }
        events.reverse();
        let mut done = Vec::with_capacity(events.len());
        for e in events {
            let effect = self.apply_payment_event(&e).await?;
            done.push((e, effect));
        }
        Ok(done)
    }

    /// A brand's top-ups touching `period`: orders opened in it or credited to it, then
    /// the period's other credits (grants, resets), oldest first.
    pub async fn topup_history(
        &self,
        brand: BrandId,
        period: PeriodKey,
    ) -> Result<Vec<HistoryEntry>, QueryError> {
        let registry = self
            .engine
            .brand_state(brand.clone())
            .await?
            .filter(|b| b.is_registered())
            .ok_or_else(|| QueryError::UnknownBrand(brand.clone()))?;
        let mut entries: Vec<HistoryEntry> = registry
            .topups
            .orders
            .values()
            .filter(|o| {
                PeriodKey::containing(o.opened_at) == period
                    || matches!(o.status, TopUpStatus::Paid { period: p, .. } if p == period)
            })
            .map(|o| HistoryEntry::Order {
                topup: TopUpId {
                    brand: brand.clone(),
                    number: o.number,
                },
                order: o.clone(),
            })
            .collect();
        let models = self.projector.period(&brand, period).await?;
        let ordered = |t: &TopUp| TopUpId::parse(&t.reference).is_ok_and(|id| id.brand == brand);
        entries.extend(
            models
                .iter()
                .flat_map(|m| m.top_ups.iter())
                .filter(|t| !ordered(t))
                .cloned()
                .map(HistoryEntry::Credit),
        );
        Ok(entries)
    }
}

fn effect(topup: TopUpId, change: TopUpChange) -> PaymentEffect {
    match (&change.order.status, change.changed) {
        (TopUpStatus::Paid { period, .. }, true) => PaymentEffect::Credited {
            topup,
            period: *period,
        },
        (TopUpStatus::Failed { .. }, true) => PaymentEffect::Failed { topup },
        (status, _) => PaymentEffect::Unchanged {
            reason: format!(
                "{topup} is already {}",
                match status {
                    TopUpStatus::Pending => "pending",
                    TopUpStatus::Paid { .. } => "paid",
                    TopUpStatus::Failed { .. } => "failed",
                }
            ),
        },
    }
}
