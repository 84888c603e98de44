//! Where a delivery goes ([`Endpoint`]), how it is made ([`Sender`]) and what one
//! attempt did ([`Attempt`]). One call is one attempt: the caller owns retries, so a
//! failure here is reported, never retried or panicked on.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{email, slack, webhook, zapier, Notice};
use crate::secret::Secret;

/// One attempt, connection included. Slack and Zapier answer in well under a second; a
/// receiver slower than this holds the delivery consumer, and the retry will come.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of an attempt's error kept (a receiver's answer quoted in it included):
/// enough to diagnose, bounded so one receiver's page of HTML cannot fill the outbox.
pub const ATTEMPT_ERROR_CHARS_MAX: usize = 300;
/// Bytes of a receiver's answer read: only quoted in an error, so the rest is dropped.
pub const ANSWER_BYTES_MAX: usize = 4096;

/// Where one delivery goes.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A Slack incoming webhook URL.
    Slack { url: String },
    /// A Zapier catch hook URL.
    Zapier { url: String },
    /// A Standard Webhooks receiver, with 1 or 2 secrets `whsec_<base64>` (two during a
    /// rotation: each signs, the receiver accepts either).
    Webhook { url: String, secrets: Vec<Secret> },
    /// Recipients of an e-mail, sent through [`Sender`]'s SMTP relay.
    Email { to: Vec<String> },
}

/// What one attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status answered, or the SMTP reply code of the relay; None when nothing answered.
    pub status: Option<u16>,
    /// Why it was not delivered, at most [`ATTEMPT_ERROR_CHARS_MAX`] characters.
    pub error: Option<String>,
    pub duration: Duration,
    /// A 2xx answer, or the relay accepted the message.
    pub delivered: bool,
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text: only for a relay on loopback (tests, a local MTA).
    None,
    /// Upgrade with STARTTLS, refusing to go on if the relay does not offer it.
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

/// The SMTP relay e-mails go through.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// The `From` address, e.g. `Alertes <alertes@example.com>`.
    pub from: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: SmtpTls,
}

/// What an attempt found, before its duration is known.
pub(crate) struct Outcome {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub delivered: bool,
}

impl Outcome {
    pub fn failed(status: Option<u16>, error: impl std::fmt::Display) -> Self {
        Self {
            status,
            error: Some(bounded(&error.to_string())),
            delivered: false,
        }
    }
}

/// How attempts are made: the HTTP client (with its timeout), the SMTP relay settings.
#[derive(Debug, Clone)]
pub struct Sender {
    http: reqwest::Client,
    smtp: Option<SmtpSettings>,
    timeout: Duration,
}

impl Sender {
    pub fn new(smtp: Option<SmtpSettings>) -> Self {
        Self::with_timeout(smtp, ATTEMPT_TIMEOUT)
    }

    /// A sender whose attempts give up after `timeout` rather than [`ATTEMPT_TIMEOUT`].
    pub fn with_timeout(smtp: Option<SmtpSettings>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // A receiver's redirect is not followed: the configured URL is the one the
            // brand vouched for, and a 3xx is reported for them to fix.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client with a timeout and no redirects builds");
        Self {
            http,
            smtp,
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One attempt of delivery `delivery_id` (stable across retries: receivers
    /// deduplicate on it) of `notice` to `endpoint`, at `now`.
    pub async fn attempt(
        &self,
        endpoint: &Endpoint,
        notice: &Notice,
        delivery_id: &str,
        now: DateTime<Utc>,
    ) -> Attempt {
        let started = Instant::now();
        let outcome = match endpoint {
            Endpoint::Slack { url } => self.post(url, &slack::body(notice), &[]).await,
            Endpoint::Zapier { url } => self.post(url, &zapier::body(notice), &[]).await,
            Endpoint::Webhook { url, secrets } => {
                match webhook::signed(notice, delivery_id, now, secrets) {
                    Ok(signed) => self.post(url, &signed.body, &signed.headers).await,
                    Err(e) => Outcome::failed(None, e),
                }
            }
            Endpoint::Email { to } => match &self.smtp {
                Some(smtp) => email::send(smtp, self.timeout, notice, delivery_id, now, to).await,
                None => Outcome::failed(None, "no SMTP relay is configured"),
            },
        };
        Attempt {
            status: outcome.status,
            error: outcome.error,
            duration: started.elapsed(),
            delivered: outcome.delivered,
        }
    }

    /// POST `body` (JSON, sent byte for byte as signed) with `headers`.
    async fn post(&self, url: &str, body: &[u8], headers: &[(&'static str, String)]) -> Outcome {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::failed(None, error_chain(&e)),
        };
        let status = response.status();
        if status.is_success() {
            return Outcome {
                status: Some(status.as_u16()),
                error: None,
                delivered: true,
            };
        }
        let answer = read_bounded(&mut response).await;
        Outcome::failed(Some(status.as_u16()), format!("{status}: {answer}"))
    }
}

/// The first [`ANSWER_BYTES_MAX`] bytes of an answer, as text.
async fn read_bounded(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ANSWER_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(ANSWER_BYTES_MAX);
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// An error with its sources (reqwest's own message is only "error sending request").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `text` cut to [`ATTEMPT_ERROR_CHARS_MAX`] characters, an ellipsis marking the cut.
pub(crate) fn bounded(text: &str) -> String {
    match text.char_indices().nth(ATTEMPT_ERROR_CHARS_MAX) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_cut_to_its_bound() {
        // Proves a long answer cannot make a long error.
        let long = "é".repeat(ATTEMPT_ERROR_CHARS_MAX + 50);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), ATTEMPT_ERROR_CHARS_MAX + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("short"), "short");
    }
}
