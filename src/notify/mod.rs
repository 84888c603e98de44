//! Notices out: one notice (a threshold crossed or resolved, a refusal, a top-up)
//! formatted for each channel and delivered one attempt at a time ([`Sender::attempt`]);
//! the dispatcher retries them from the outbox the notices consumer fills.
//!
//! # Layout
//! - [`notice`]: the [`Notice`] itself, and the French wording every channel shares
//!   (titles, the usage bar, amounts).
//! - [`channel`]: where a delivery goes ([`Endpoint`]), how it is made ([`Sender`]),
//!   what one attempt did ([`Attempt`]).
//! - [`slack`]: the Slack incoming webhook body (Block Kit).
//! - [`zapier`]: the Zapier catch hook body (the original system's flat fields).
//! - [`webhook`]: Standard Webhooks: the body, the `webhook-*` headers, the signing secrets.
//! - [`email`]: the e-mail over SMTP (`lettre`): subject, text and HTML parts.
//! - [`settings`]: which receiver URLs a brand may configure (https, public hosts).
//! - [`dispatch`]: the outbox's deliveries attempted, retried with backoff, dead-lettered.

pub mod channel;
pub mod dispatch;
pub mod email;
pub mod notice;
pub mod settings;
pub mod slack;
pub mod webhook;
pub mod zapier;

pub use channel::{Attempt, Endpoint, Sender, SmtpSettings, SmtpTls, ATTEMPT_TIMEOUT};
pub use email::valid_email;
pub use notice::{Notice, NoticeKind};
pub use webhook::{parse_webhook_secret, WebhookSecretError};

/// The notices pipeline of a running service: the consumer that fills the outbox from
/// the log, and the dispatcher that empties it.
pub struct Notices {
    pub tail: crate::tail::Tail,
    pub dispatcher: dispatch::Dispatcher,
}

impl Notices {
    pub async fn start(
        ledger: &crate::ledger::Ledger,
        config: &crate::config::NotifyConfig,
        metrics: Option<std::sync::Arc<crate::metrics::DeliveryMetrics>>,
    ) -> Result<Self, crate::startup::StartupError> {
        let stores = &ledger.stores;
        let dispatcher = dispatch::Dispatcher::start(
            stores.outbox.clone(),
            stores.log.clone(),
            ledger.engine.clone(),
            Sender::new(config.smtp()?),
            std::time::Duration::from_secs(config.claim_lease_seconds),
            metrics,
        );
        let consumer = crate::tail::notices::NoticeConsumer::new(
            stores.projections.clone(),
            stores.log.clone(),
            stores.outbox.clone(),
            ledger.engine.clone(),
            dispatcher.wake.clone(),
            config.dashboard_url.clone(),
        );
        let tail = crate::tail::Tail::start(stores.projections.clone(), consumer).await?;
        Ok(Self { tail, dispatcher })
    }

    /// Stop following the log, then stop dispatching.
    pub async fn stop(&self) {
        self.tail.stop().await;
        self.dispatcher.stop().await;
    }
}
