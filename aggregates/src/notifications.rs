//! Where a brand's notices go: its delivery endpoints (Slack, Zapier, signed webhooks,
//! e-mail) and which kinds of notice each wants. Settings are a fact of the brand's
//! registry (`NotificationsSet`); webhook secrets are credentials, kept by the store
//! beside the API keys and named here only by their fingerprints.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Endpoints per brand: a few teams' channels and systems; more is a misconfiguration,
/// and each endpoint multiplies every notice.
pub const ENDPOINTS_PER_BRAND_MAX: usize = 10;
/// Recipients of one e-mail endpoint.
pub const EMAIL_RECIPIENTS_MAX: usize = 20;
/// An endpoint id is a short slug the deliveries name.
pub const ENDPOINT_ID_CHARS_MAX: usize = 32;
/// Secrets of one webhook at once: the current one and the one being rotated out.
pub const WEBHOOK_SECRETS_MAX: usize = 2;

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    ThresholdCrossed,
    ThresholdResolved,
    QuotaRefused,
    TopUpApplied,
    TopUpFailed,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 5] = [
        NoticeKind::ThresholdCrossed,
        NoticeKind::ThresholdResolved,
        NoticeKind::QuotaRefused,
        NoticeKind::TopUpApplied,
        NoticeKind::TopUpFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::ThresholdCrossed => "threshold_crossed",
            NoticeKind::ThresholdResolved => "threshold_resolved",
            NoticeKind::QuotaRefused => "quota_refused",
            NoticeKind::TopUpApplied => "top_up_applied",
            NoticeKind::TopUpFailed => "top_up_failed",
        }
    }
}

/// The kind of receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Slack,
    Zapier,
    Webhook,
    Email,
}

/// One endpoint as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSetting {
    /// The brand's own name for it (`ops-slack`), unique among its endpoints.
    pub id: String,
    pub channel: ChannelKind,
    /// Slack, Zapier and webhooks: where to POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// E-mail: the recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    pub kinds: BTreeSet<NoticeKind>,
    /// Webhooks: the first 16 hex digits of each secret's SHA-256, so the trail says
    /// which secrets were in force without holding them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_fingerprints: Vec<String>,
}

/// A brand's notification settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSettings {
    pub endpoints: Vec<EndpointSetting>,
}

impl NotificationSettings {
    /// The endpoints that want notices of `kind`.
    pub fn wanting(&self, kind: NoticeKind) -> impl Iterator<Item = &EndpointSetting> {
        self.endpoints
            .iter()
            .filter(move |e| e.kinds.contains(&kind))
    }
}

/// Why settings are refused (the HTTP layer checks URLs and addresses before this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("at most {ENDPOINTS_PER_BRAND_MAX} endpoints per brand")]
    TooManyEndpoints,
    #[error("endpoint id {0:?} must be 1 to {ENDPOINT_ID_CHARS_MAX} characters of a-z, 0-9, '-' and '_'")]
    BadId(String),
    #[error("endpoint id {0} is used twice")]
    DuplicateId(String),
    #[error("endpoint {id}: {reason}")]
    Endpoint { id: String, reason: String },
}

impl NotificationSettings {
    /// The rules every settings value keeps, whatever adapter built it.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.endpoints.len() > ENDPOINTS_PER_BRAND_MAX {
            return Err(SettingsError::TooManyEndpoints);
        }
        let mut ids = BTreeSet::new();
        for e in &self.endpoints {
            let slug = e
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if e.id.is_empty() || e.id.len() > ENDPOINT_ID_CHARS_MAX || !slug {
                return Err(SettingsError::BadId(e.id.chars().take(64).collect()));
            }
            if !ids.insert(e.id.as_str()) {
                return Err(SettingsError::DuplicateId(e.id.clone()));
            }
            let bad = |reason: &str| {
                Err(SettingsError::Endpoint {
                    id: e.id.clone(),
                    reason: reason.to_owned(),
                })
            };
            match (e.channel, e.url.is_some(), e.to.len()) {
                (ChannelKind::Email, _, 0) => {
                    return bad("an e-mail endpoint needs recipients (to)")
                }
                (ChannelKind::Email, true, _) => return bad("an e-mail endpoint takes no url"),
                (ChannelKind::Email, _, n) if n > EMAIL_RECIPIENTS_MAX => {
                    return bad("too many recipients")
                }
                (ChannelKind::Email, false, _) => {}
                (_, false, _) => return bad("a url is required"),
                (_, true, n) if n > 0 => return bad("only e-mail endpoints take recipients"),
                _ => {}
            }
            match (e.channel, e.secret_fingerprints.len()) {
                (ChannelKind::Webhook, 1..=WEBHOOK_SECRETS_MAX) => {}
                (ChannelKind::Webhook, _) => {
                    return bad("a webhook needs one secret, or two during a rotation")
                }
                (_, 0) => {}
                _ => return bad("only webhooks take secrets"),
            }
            if e.kinds.is_empty() {
                return bad("kinds is empty: the endpoint would receive nothing");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_named_alike_in_bodies_and_in_deliveries() {
        for kind in NoticeKind::ALL {
            let wire = serde_json::to_value(kind).unwrap();
            assert_eq!(wire.as_str(), Some(kind.as_str()), "{kind:?}");
        }
    }

    fn endpoint(id: &str, channel: ChannelKind) -> EndpointSetting {
        EndpointSetting {
            id: id.to_owned(),
            channel,
            url: (channel != ChannelKind::Email).then(|| "https://hooks.example.com/x".to_owned()),
            to: match channel {
                ChannelKind::Email => vec!["ops@acme.fr".to_owned()],
                _ => Vec::new(),
            },
            kinds: NoticeKind::ALL.into_iter().collect(),
            secret_fingerprints: match channel {
                ChannelKind::Webhook => vec!["0123456789abcdef".to_owned()],
                _ => Vec::new(),
            },
        }
    }

    #[test]
    fn settings_keep_their_rules() {
        let ok = NotificationSettings {
            endpoints: vec![
                endpoint("ops", ChannelKind::Slack),
                endpoint("zap", ChannelKind::Zapier),
                endpoint("erp", ChannelKind::Webhook),
                endpoint("mail", ChannelKind::Email),
            ],
        };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.wanting(NoticeKind::QuotaRefused).count(), 4);
        let with = |f: &dyn Fn(&mut NotificationSettings)| {
            let mut s = ok.clone();
            f(&mut s);
            s.check()
        };
        assert_eq!(
            with(&|s| s.endpoints.push(endpoint("ops", ChannelKind::Zapier))),
            Err(SettingsError::DuplicateId("ops".into()))
        );
        assert!(matches!(
            with(&|s| s.endpoints[0].id = "Ops!".into()),
            Err(SettingsError::BadId(_))
        ));
        assert!(matches!(
            with(&|s| s.endpoints[2].secret_fingerprints.clear()),
            Err(SettingsError::Endpoint { .. })
        ));
        assert!(matches!(
            with(&|s| s.endpoints[3].to.clear()),
            Err(SettingsError::Endpoint { .. })
        ));
        assert!(matches!(
            with(&|s| s.endpoints[0].url = None),
            Err(SettingsError::Endpoint { .. })
        ));
        assert!(matches!(
            with(&|s| s.endpoints[1].kinds.clear()),
            Err(SettingsError::Endpoint { .. })
        ));
        let many = with(&|s| {
            for n in 0..ENDPOINTS_PER_BRAND_MAX {
                s.endpoints
                    .push(endpoint(&format!("w{n}"), ChannelKind::Slack));
            }
        });
        assert_eq!(many, Err(SettingsError::TooManyEndpoints));
    }
}
