//! The body of a Slack incoming webhook
//! (<https://api.slack.com/messaging/webhooks>): Block Kit `blocks`
//! (<https://api.slack.com/reference/block-kit/blocks>) and a `text` fallback, which
//! Slack shows in notifications and where blocks cannot be drawn.

use serde_json::{json, Value};

use super::notice::{amount_text, count_text, usage_bar, Notice, NoticeKind};

/// Slack refuses a header block whose text is longer than this.
pub const HEADER_CHARS_MAX: usize = 150;

/// The JSON posted for `notice`.
pub fn body(notice: &Notice) -> Vec<u8> {
    serde_json::to_vec(&message(notice)).expect("a JSON value serializes")
}

/// The message as a JSON value (the tests read it field by field).
pub fn message(notice: &Notice) -> Value {
    let header = cut(&headline(notice), HEADER_CHARS_MAX);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": true}}),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": escape(&notice.summary())},
            "fields": fields(notice),
        }),
    ];
    if let Some(url) = &notice.dashboard_url {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Voir le tableau de bord"},
                "url": url,
            }],
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": escape(&format!(
            "{} · période {} · {}",
            notice.brand_id,
            notice.period,
            notice.at.format("%d/%m/%Y %H:%M UTC")
        ))}],
    }));
    json!({
        "text": format!("{} : {}", headline(notice), notice.summary()),
        "blocks": blocks,
    })
}

/// "Quota critique · Starter · ai_generations".
pub fn headline(notice: &Notice) -> String {
    format!(
        "{} · {} · {}",
        notice.title(),
        notice.plan_name,
        notice.metric
    )
}

/// The section's two-column fields: plan, metric, the bar, limit, remaining, overage,
/// then what the kind adds (refusals, units bought).
fn fields(n: &Notice) -> Vec<Value> {
    let mut fields = vec![
        field("Plan", &escape(&n.plan_name)),
        field("Métrique", &escape(&n.metric)),
        field("Utilisation", &format!("`{}`", usage_bar(n.percentage))),
        field(
            "Limite",
            &format!("{} {}", count_text(n.limit), escape(&n.unit)),
        ),
        field("Restant", &count_text(n.remaining)),
        field(
            "Dépassement",
            &format!("{} ({})", n.overage, amount_text(n.overage_cost_cents)),
        ),
    ];
    match n.kind {
        NoticeKind::QuotaRefused => {
            fields.push(field("Refusées", &n.refused.unwrap_or(1).to_string()));
        }
        NoticeKind::TopUpApplied | NoticeKind::TopUpFailed => {
            fields.push(field("Unités", &n.units.unwrap_or_default().to_string()));
            fields.push(field(
                "Prix",
                &amount_text(n.price_cents.unwrap_or_default()),
            ));
        }
        NoticeKind::ThresholdCrossed | NoticeKind::ThresholdResolved => {}
    }
    if let Some(reason) = &n.reason {
        fields.push(field("Raison", &escape(reason)));
    }
    fields
}

fn field(label: &str, value: &str) -> Value {
    json!({"type": "mrkdwn", "text": format!("*{label}*\n{value}")})
}

/// The three characters Slack's mrkdwn reserves
/// (<https://api.slack.com/reference/surfaces/formatting#escaping>).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cut(text: &str, chars_max: usize) -> String {
    match text.char_indices().nth(chars_max - 1) {
        Some((at, _)) if text.chars().count() > chars_max => format!("{}…", &text[..at]),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notice::tests::critical;

    #[test]
    fn a_critical_notice_has_a_header_a_bar_and_the_dashboard_button() {
        // Proves the blocks Slack draws and the fallback text.
        let m = message(&critical());
        assert_eq!(
            m["blocks"][0]["text"]["text"],
            "Quota critique · Starter · ai_generations"
        );
        let fields = m["blocks"][1]["fields"].to_string();
        assert!(fields.contains("▓▓▓▓▓▓▓▓▓░ 90 %"), "{fields}");
        assert_eq!(
            m["blocks"][2]["elements"][0]["url"],
            "https://app.example.com/brands/acme/usage"
        );
        assert!(m["text"].as_str().unwrap().starts_with("Quota critique"));
    }

    #[test]
    fn user_text_is_escaped_and_a_long_header_cut() {
        // Proves a plan name cannot inject a Slack link, nor break the header limit.
        let mut n = critical();
        n.plan_name = "<!channel> & co".into();
        let m = message(&n);
        assert!(m["blocks"][1]["fields"][0]["text"]
            .as_str()
            .unwrap()
            .contains("&lt;!channel&gt; &amp; co"));
        n.plan_name = "x".repeat(400);
        let h = message(&n)["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(h.chars().count(), HEADER_CHARS_MAX);
        assert!(message(&critical())["blocks"].as_array().unwrap().len() == 4);
    }
}
