//! The body of a Zapier catch hook: flat JSON, so every field maps to a Zap step
//! without a path. The fields are the original system's (`brandId` … `timestamp`),
//! plus `kind` and `noticeId`; a Zap built on the old payload keeps working.

use serde::Serialize;

use super::{Notice, NoticeKind};

/// What the catch hook receives.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    pub brand_id: &'a str,
    pub plan_id: &'a str,
    pub metric: &'a str,
    /// A JSON number, not capped at 100.
    pub percentage: f64,
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    pub overage: u64,
    pub severity: &'a str,
    /// When the notice happened, RFC 3339.
    pub timestamp: String,
    pub kind: NoticeKind,
    /// The notice's id (the same on every retry and every endpoint of the notice).
    pub notice_id: &'a str,
}

pub fn payload(notice: &Notice) -> Payload<'_> {
    use rust_decimal::prelude::ToPrimitive;
    Payload {
        brand_id: &notice.brand_id,
        plan_id: &notice.plan_id,
        metric: &notice.metric,
        // A two-decimal percentage is exact enough in f64; it is not money.
        percentage: notice.percentage.to_f64().unwrap_or_default(),
        remaining: notice.remaining,
        limit: notice.limit,
        overage: notice.overage,
        severity: &notice.severity,
        timestamp: notice.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        kind: notice.kind,
        notice_id: &notice.id,
    }
}

/// The JSON posted for `notice`.
pub fn body(notice: &Notice) -> Vec<u8> {
    serde_json::to_vec(&payload(notice)).expect("a flat struct serializes")
}
