//! Notices out: one notice (a threshold crossed or resolved, a refusal, a top-up)
//! formatted for each channel and delivered in ONE attempt. Retries, the outbox,
//! scheduling and per-brand settings are built on top of [`Sender::attempt`].
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

pub mod channel;
pub mod email;
pub mod notice;
pub mod slack;
pub mod webhook;
pub mod zapier;

pub use channel::{Attempt, Endpoint, Sender, SmtpSettings, SmtpTls, ATTEMPT_TIMEOUT};
pub use email::valid_email;
pub use notice::{Notice, NoticeKind};
pub use webhook::{parse_webhook_secret, WebhookSecretError};
