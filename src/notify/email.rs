//! The e-mail of a notice over SMTP (`lettre`): a French text part and its HTML twin
//! (`multipart/alternative`), the subject of the original system
//! (`[Quota CRITICAL] Starter · ai_generations`), and the delivery id in `X-Notice-Id`
//! and the `Message-ID`, so a mail filter or a ticketing tool can drop a retry.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};

use super::channel::{error_chain, Outcome, SmtpSettings, SmtpTls};
use super::notice::{amount_text, count_text, usage_bar, Notice, NoticeKind};

/// Recipients of one notice: an alert goes to a team's few addresses, not a mailing list.
pub const EMAIL_RECIPIENTS_MAX: usize = 20;

/// Whether `s` is an e-mail address the relay will be given (the settings code checks
/// recipients with it).
pub fn valid_email(s: &str) -> bool {
    s.parse::<Address>().is_ok()
}

/// Why a message could not be built: a configuration to fix, not a relay to retry.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("an e-mail endpoint needs 1 to {EMAIL_RECIPIENTS_MAX} recipients, not {0}")]
    RecipientCount(usize),
    #[error("{0:?} is not an e-mail address")]
    Recipient(String),
    #[error("the sender {0:?} is not a mailbox")]
    From(String),
    #[error("the message cannot be built: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("the SMTP transport cannot be set up: {0}")]
    Transport(#[from] lettre::transport::smtp::Error),
}

/// `[Quota CRITICAL] Starter · ai_generations`.
pub fn subject(n: &Notice) -> String {
    format!("{} {} · {}", tag(n), n.plan_name, n.metric)
}

fn tag(n: &Notice) -> &'static str {
    match n.kind {
        NoticeKind::ThresholdCrossed if n.is_critical() => "[Quota CRITICAL]",
        NoticeKind::ThresholdCrossed => "[Quota WARNING]",
        NoticeKind::ThresholdResolved => "[Quota RÉSOLU]",
        NoticeKind::QuotaRefused => "[Quota REFUSÉ]",
        NoticeKind::TopUpApplied => "[Crédit AJOUTÉ]",
        NoticeKind::TopUpFailed => "[Achat ÉCHOUÉ]",
    }
}

/// The lines both parts show, label and value.
fn lines(n: &Notice) -> Vec<(&'static str, String)> {
    let mut lines = vec![
        ("Plan", n.plan_name.clone()),
        ("Métrique", n.metric.clone()),
        ("Période", n.period.clone()),
        ("Utilisation", usage_bar(n.percentage)),
        ("Consommé", format!("{} {}", n.current, n.unit)),
        ("Limite", count_text(n.limit)),
        ("Restant", count_text(n.remaining)),
        (
            "Dépassement",
            format!("{} ({})", n.overage, amount_text(n.overage_cost_cents)),
        ),
    ];
    if let Some(r) = n.refused {
        lines.push(("Demandes refusées", r.to_string()));
    }
    if let Some(u) = n.units {
        lines.push(("Unités", u.to_string()));
    }
    if let Some(p) = n.price_cents {
        lines.push(("Prix", amount_text(p)));
    }
    if let Some(r) = &n.reason {
        lines.push(("Raison", r.clone()));
    }
    lines
}

pub fn text_body(n: &Notice) -> String {
    let mut text = format!("{}\n\n{}\n\n", n.title(), n.summary());
    for (label, value) in lines(n) {
        text.push_str(&format!("{label} : {value}\n"));
    }
    if let Some(url) = &n.dashboard_url {
        text.push_str(&format!("\nTableau de bord : {url}\n"));
    }
    text.push_str(&format!("\nMarque {} · notice {}\n", n.brand_id, n.id));
    text
}

pub fn html_body(n: &Notice) -> String {
    let mut rows = String::new();
    for (label, value) in lines(n) {
        rows.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>\n",
            escape(label),
            escape(&value)
        ));
    }
    let link = n.dashboard_url.as_deref().map_or(String::new(), |url| {
        format!(
            "<p><a href=\"{}\">Voir le tableau de bord</a></p>\n",
            escape(url)
        )
    });
    format!(
        "<!DOCTYPE html>\n<html lang=\"fr\"><body>\n<h2>{}</h2>\n<p>{}</p>\n<table>\n{rows}</table>\n{link}<p><small>Marque {} · notice {}</small></p>\n</body></html>\n",
        escape(n.title()),
        escape(&n.summary()),
        escape(&n.brand_id),
        escape(&n.id)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `X-Notice-Id: <delivery id>`: the id a receiver deduplicates on, verbatim.
#[derive(Debug, Clone)]
struct XNoticeId(String);

impl Header for XNoticeId {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Notice-Id")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The message of delivery `delivery_id`, dated `now`.
pub fn message(
    from: &str,
    to: &[String],
    n: &Notice,
    delivery_id: &str,
    now: DateTime<Utc>,
) -> Result<Message, EmailError> {
    if to.is_empty() || to.len() > EMAIL_RECIPIENTS_MAX {
        return Err(EmailError::RecipientCount(to.len()));
    }
    let from: Mailbox = from
        .parse()
        .map_err(|_| EmailError::From(from.to_owned()))?;
    // A Message-ID's left part takes few characters (RFC 5322 dot-atom), a delivery id
    // any: its digest is stable across retries and always valid.
    let digest = hex::encode(&Sha256::digest(delivery_id.as_bytes())[..16]);
    let mut builder = Message::builder()
        .message_id(Some(format!("<notice-{digest}@{}>", from.email.domain())))
        .header(XNoticeId(delivery_id.to_owned()))
        .date(SystemTime::from(now))
        .subject(subject(n))
        .from(from);
    for address in to {
        let address: Address = address
            .parse()
            .map_err(|_| EmailError::Recipient(address.clone()))?;
        builder = builder.to(Mailbox::new(None, address));
    }
    Ok(builder.multipart(MultiPart::alternative_plain_html(
        text_body(n),
        html_body(n),
    ))?)
}

fn transport(
    s: &SmtpSettings,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, EmailError> {
    let tls = match s.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::StartTls => Tls::Required(TlsParameters::new(s.host.clone())?),
        SmtpTls::Tls => Tls::Wrapper(TlsParameters::new(s.host.clone())?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
        .port(s.port)
        .timeout(Some(timeout))
        .tls(tls);
    if let Some(user) = &s.username {
        let password = s.password.as_ref().map_or("", |p| p.expose());
        builder = builder.credentials(Credentials::new(user.clone(), password.to_owned()));
    }
    Ok(builder.build())
}

/// One attempt through the relay: delivered when it accepts the message.
pub(crate) async fn send(
    s: &SmtpSettings,
    timeout: Duration,
    n: &Notice,
    delivery_id: &str,
    now: DateTime<Utc>,
    to: &[String],
) -> Outcome {
    let built =
        message(&s.from, to, n, delivery_id, now).and_then(|m| Ok((m, transport(s, timeout)?)));
    let (message, transport) = match built {
        Ok(b) => b,
        Err(e) => return Outcome::failed(None, e),
    };
    // lettre's timeout is per SMTP command; the attempt as a whole is bounded here.
    match tokio::time::timeout(timeout, transport.send(message)).await {
        Err(_) => Outcome::failed(None, format!("the SMTP relay took more than {timeout:?}")),
        Ok(Err(e)) => Outcome::failed(e.status().map(u16::from), error_chain(&e)),
        Ok(Ok(response)) => Outcome {
            status: Some(u16::from(response.code())),
            error: None,
            delivered: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notice::tests::critical;

    #[test]
    fn subjects_name_the_kind_the_plan_and_the_metric() {
        // Proves the original system's subjects, one per kind and severity.
        let mut n = critical();
        assert_eq!(subject(&n), "[Quota CRITICAL] Starter · ai_generations");
        n.severity = "warning".into();
        assert_eq!(subject(&n), "[Quota WARNING] Starter · ai_generations");
        for (kind, tag) in [
            (NoticeKind::ThresholdResolved, "[Quota RÉSOLU]"),
            (NoticeKind::QuotaRefused, "[Quota REFUSÉ]"),
            (NoticeKind::TopUpApplied, "[Crédit AJOUTÉ]"),
            (NoticeKind::TopUpFailed, "[Achat ÉCHOUÉ]"),
        ] {
            n.kind = kind;
            assert_eq!(subject(&n), format!("{tag} Starter · ai_generations"));
        }
    }

    #[test]
    fn addresses_are_checked_and_bodies_escaped() {
        // Proves the settings check and that a plan name cannot inject HTML.
        assert!(valid_email("ops@acme.example"));
        assert!(!valid_email("ops"));
        assert!(!valid_email("Ops <ops@acme.example>"));
        let mut n = critical();
        n.plan_name = "<b>Starter</b>".into();
        assert!(html_body(&n).contains("&lt;b&gt;Starter&lt;/b&gt;"));
        assert!(text_body(&n).contains("▓▓▓▓▓▓▓▓▓░ 90 %"));
        let err = message("a@b.example", &["nope".into()], &n, "d1", Utc::now()).unwrap_err();
        assert!(matches!(err, EmailError::Recipient(_)));
        let err = message("a@b.example", &[], &n, "d1", Utc::now()).unwrap_err();
        assert!(matches!(err, EmailError::RecipientCount(0)));
    }
}
