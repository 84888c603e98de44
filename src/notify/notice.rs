//! The [`Notice`] every channel formats, and the French wording they share: a product
//! in French speaks French in Slack, in e-mails and in the text of webhooks alike.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// What a notice is about: the domain's kinds, which a brand's settings choose from.
pub use ledger_aggregates::notifications::NoticeKind;

/// One notice, whatever the channel: built from events of the log by the delivery consumer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Notice {
    /// Stable id of the notice (receivers deduplicate on the delivery id built from it), e.g. "acme:2026-11:42".
    pub id: String,
    pub kind: NoticeKind,
    pub brand_id: String,
    pub plan_id: String,
    /// The plan's display name, e.g. "Starter".
    pub plan_name: String,
    /// "YYYY-MM"
    pub period: String,
    pub metric: String,
    /// Unit label of the metric, e.g. "render".
    pub unit: String,
    /// Usage now and the effective limit (None: unlimited).
    pub current: u64,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub overage: u64,
    pub overage_cost_cents: i64,
    /// Of the effective limit, two decimals, not capped at 100 (a Decimal, serialized as a JSON number).
    // Our own `percent_number` rather than `rust_decimal::serde::float`: that module needs
    // a rust_decimal feature, and changing it would rebuild every crate of the workspace.
    #[serde(with = "percent_number")]
    pub percentage: Decimal,
    /// The threshold crossed or resolved (50, 75, 90), if any.
    pub threshold: Option<u8>,
    /// "info" (resolutions, top-ups), "warning" (< 90 %), "critical" (≥ 90 % or a refusal).
    pub severity: String,
    /// QuotaRefused: refusals coalesced into this notice (one per brand, metric and hour).
    pub refused: Option<u64>,
    /// TopUpApplied / TopUpFailed: units and price.
    pub units: Option<u64>,
    pub price_cents: Option<i64>,
    /// TopUpFailed: why.
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    /// A link to the brand's dashboard page, when one is configured.
    pub dashboard_url: Option<String>,
}

/// Cells of the text usage bar: one per ten percent, so 100 % fills it exactly.
pub const BAR_CELLS: u32 = 10;

impl Notice {
    pub fn is_critical(&self) -> bool {
        self.severity == "critical"
    }

    /// The French headline of the notice: Slack's header, the e-mail's first line.
    pub fn title(&self) -> &'static str {
        match self.kind {
            NoticeKind::ThresholdCrossed if self.is_critical() => "Quota critique",
            NoticeKind::ThresholdCrossed => "Seuil atteint",
            NoticeKind::ThresholdResolved => "Alerte résolue",
            NoticeKind::QuotaRefused => "Demande refusée",
            NoticeKind::TopUpApplied => "Crédit ajouté",
            NoticeKind::TopUpFailed => "Achat échoué",
        }
    }

    /// One sentence saying what happened, in French, for every channel's text.
    pub fn summary(&self) -> String {
        let usage = format!(
            "{} / {} {}",
            self.current,
            count_text(self.limit),
            self.unit
        );
        match self.kind {
            NoticeKind::ThresholdCrossed => format!(
                "Le seuil de {} % est atteint pour {} ({}) : {usage}, soit {}.",
                self.threshold.unwrap_or_default(),
                self.metric,
                self.plan_name,
                percent_text(self.percentage)
            ),
            NoticeKind::ThresholdResolved => format!(
                "L'alerte du seuil de {} % est levée pour {} ({}) : {usage}, soit {}.",
                self.threshold.unwrap_or_default(),
                self.metric,
                self.plan_name,
                percent_text(self.percentage)
            ),
            NoticeKind::QuotaRefused => format!(
                "{} demande(s) refusée(s) pour {} ({}) : quota épuisé, {usage}.",
                self.refused.unwrap_or(1),
                self.metric,
                self.plan_name
            ),
            NoticeKind::TopUpApplied => format!(
                "{} {} ajouté(s) à {} pour {} : {usage}.",
                self.units.unwrap_or_default(),
                self.unit,
                self.metric,
                amount_text(self.price_cents.unwrap_or_default())
            ),
            NoticeKind::TopUpFailed => format!(
                "L'achat de {} {} pour {} a échoué ({}) : {}.",
                self.units.unwrap_or_default(),
                self.unit,
                self.metric,
                amount_text(self.price_cents.unwrap_or_default()),
                self.reason.as_deref().unwrap_or("raison inconnue")
            ),
        }
    }
}

/// `▓▓▓▓▓▓▓▓▓░ 90 %`: the bar stops at [`BAR_CELLS`] cells, the number is never capped.
pub fn usage_bar(percentage: Decimal) -> String {
    let tenths = (percentage / Decimal::TEN).floor();
    let filled = tenths.clamp(Decimal::ZERO, Decimal::from(BAR_CELLS));
    // In 0..=BAR_CELLS after the clamp, so the conversion cannot fail.
    let filled = u32::try_from(filled.mantissa() / 10i128.pow(filled.scale())).unwrap_or(0);
    let bar: String = (0..BAR_CELLS)
        .map(|i| if i < filled { '▓' } else { '░' })
        .collect();
    format!("{bar} {}", percent_text(percentage))
}

/// `90 %`, `45,5 %`: French decimal comma, no trailing zeros.
pub fn percent_text(percentage: Decimal) -> String {
    let text = percentage.round_dp(2).normalize().to_string();
    format!("{} %", text.replace('.', ","))
}

/// Minor units in French notation, `1250` → `12,50`. The notice carries no currency:
/// the catalog has one for every brand, so the amount is written bare.
pub fn amount_text(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{},{:02}", cents / 100, cents % 100)
}

/// A limit or what remains of it; `None` is an unlimited quota.
pub fn count_text(count: Option<u64>) -> String {
    count.map_or_else(|| "illimité".to_owned(), |c| c.to_string())
}

/// The percentage as a JSON number (what receivers of the original system parse), read
/// back to two decimals.
mod percent_number {
    use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        // A two-decimal percentage is far inside f64's exact range of decimal digits.
        s.serialize_f64(d.to_f64().unwrap_or_default())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let f = f64::deserialize(d)?;
        Decimal::from_f64(f)
            .map(|d| d.round_dp(2))
            .ok_or_else(|| serde::de::Error::custom("the percentage is not a finite number"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A decimal from its text, as the tests write them.
    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// A critical threshold notice at 90 %, the example of every channel's tests.
    pub(crate) fn critical() -> Notice {
        Notice {
            id: "acme:2026-11:42".into(),
            kind: NoticeKind::ThresholdCrossed,
            brand_id: "acme".into(),
            plan_id: "starter".into(),
            plan_name: "Starter".into(),
            period: "2026-11".into(),
            metric: "ai_generations".into(),
            unit: "génération".into(),
            current: 900,
            limit: Some(1000),
            remaining: Some(100),
            overage: 0,
            overage_cost_cents: 0,
            percentage: dec("90.00"),
            threshold: Some(90),
            severity: "critical".into(),
            refused: None,
            units: None,
            price_cents: None,
            reason: None,
            at: "2026-11-20T10:15:00Z".parse().unwrap(),
            dashboard_url: Some("https://app.example.com/brands/acme/usage".into()),
        }
    }

    #[test]
    fn the_bar_fills_one_cell_per_ten_percent_and_stops_at_ten() {
        // Proves the bar's cells are capped while the number is not.
        assert_eq!(usage_bar(dec("0")), "░░░░░░░░░░ 0 %");
        assert_eq!(usage_bar(dec("45.00")), "▓▓▓▓░░░░░░ 45 %");
        assert_eq!(usage_bar(dec("90.00")), "▓▓▓▓▓▓▓▓▓░ 90 %");
        assert_eq!(usage_bar(dec("130.00")), "▓▓▓▓▓▓▓▓▓▓ 130 %");
        assert_eq!(usage_bar(dec("45.5")), "▓▓▓▓░░░░░░ 45,5 %");
    }

    #[test]
    fn amounts_and_limits_are_written_the_french_way() {
        // Proves minor units become a decimal comma and None reads as unlimited.
        assert_eq!(amount_text(1250), "12,50");
        assert_eq!(amount_text(5), "0,05");
        assert_eq!(amount_text(-300), "-3,00");
        assert_eq!(count_text(None), "illimité");
        assert_eq!(count_text(Some(7)), "7");
    }

    #[test]
    fn titles_follow_kind_and_severity() {
        // Proves the French headline of each kind, and the warning/critical split.
        let mut n = critical();
        assert_eq!(n.title(), "Quota critique");
        n.severity = "warning".into();
        assert_eq!(n.title(), "Seuil atteint");
        for (kind, title) in [
            (NoticeKind::ThresholdResolved, "Alerte résolue"),
            (NoticeKind::QuotaRefused, "Demande refusée"),
            (NoticeKind::TopUpApplied, "Crédit ajouté"),
            (NoticeKind::TopUpFailed, "Achat échoué"),
        ] {
            n.kind = kind;
            assert_eq!(n.title(), title);
        }
    }

    #[test]
    fn a_notice_round_trips_through_json_with_a_numeric_percentage() {
        // Proves the percentage is a JSON number and reads back to the same Decimal.
        let n = critical();
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["percentage"], serde_json::json!(90.0));
        assert_eq!(json["kind"], "threshold_crossed");
        let back: Notice = serde_json::from_value(json).unwrap();
        assert_eq!(back, n);
    }
}
