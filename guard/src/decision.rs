//! The ledger's answers as the guard reads them: the quota decision (the fields of the
//! ledger's `DecisionView`, flattened into each answer), a check's answer, the three
//! reservation answers and the problem documents of its errors. Unknown fields are
//! ignored, so the ledger may add fields without breaking deployed guards.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The ledger's quota decision, sent back to a refused caller unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub allowed: bool,
    /// Units left under the effective limit once decided; 999999 when unlimited.
    pub remaining: u64,
    pub limit: u64,
    pub effective_limit: u64,
    pub unlimited: bool,
    pub current: u64,
    pub overage: u64,
    pub will_charge: bool,
    /// Cents: the marginal overage cost of this request.
    pub estimated_cost: i64,
    pub cumulative_overage_cost: i64,
    pub plan_id: String,
    /// `block`, `charge` or `none`.
    pub overage_policy: String,
    pub consumed: bool,
    /// Fields this guard does not know yet (a newer ledger's), kept so a refused caller
    /// gets the ledger's decision whole.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The answer to `POST /check-quota`: 200 whether allowed or not (`allowed: false` is a
/// refusal, recorded by the ledger as a denial).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckAnswer {
    #[serde(flatten)]
    pub decision: Decision,
    /// Thresholds the consumption crossed, as the ledger describes them.
    #[serde(default)]
    pub alerts: Vec<serde_json::Value>,
    /// True when the ledger answered an earlier request with the same idempotency key:
    /// nothing was counted this time.
    #[serde(default)]
    pub replayed: bool,
}

/// The answer to `POST /reservations`: 201 for a new hold, 200 (`replayed`) for a
/// repeated key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reserved {
    /// Opaque to the guard: only ever sent back to the ledger.
    pub reservation_id: String,
    pub brand_id: String,
    pub period: String,
    pub metric: String,
    pub amount: u64,
    /// RFC 3339; the ledger releases the hold by itself then.
    pub expires_at: String,
    pub status: String,
    #[serde(default)]
    pub replayed: bool,
    #[serde(flatten)]
    pub decision: Decision,
}

/// The answer to `POST /reservations/{id}/commit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    pub reservation_id: String,
    pub status: String,
    /// Units counted.
    pub committed: u64,
    /// Units of the hold given back.
    pub released: u64,
    /// True when the ledger answered an earlier commit with the same key again.
    #[serde(default)]
    pub replayed: bool,
    #[serde(flatten)]
    pub decision: Option<Decision>,
}

/// The answer to `POST /reservations/{id}/void`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Voided {
    pub reservation_id: String,
    pub status: String,
    pub released: u64,
    /// True when the ledger answered an earlier void with the same key again.
    #[serde(default)]
    pub replayed: bool,
}

/// A problem document from the ledger (RFC 9457): `type` is
/// `urn:usage-ledger:problem:<kind>`; a `quota-exceeded` one carries the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerProblem {
    #[serde(rename = "type", default)]
    pub r#type: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// The prefix of the ledger's problem types.
const LEDGER_PROBLEM_PREFIX: &str = "urn:usage-ledger:problem:";

impl LedgerProblem {
    /// The short name after the ledger's URN prefix (`quota-exceeded`), or the whole type.
    pub fn kind(&self) -> &str {
        self.r#type
            .strip_prefix(LEDGER_PROBLEM_PREFIX)
            .unwrap_or(&self.r#type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_answer_reads_the_ledgers_flattened_decision_and_ignores_new_fields() {
        // Proves the wire shape of `POST /check-quota` parses, extra fields included.
        let answer: CheckAnswer = serde_json::from_value(serde_json::json!({
            "allowed": false, "remaining": 0, "limit": 10, "effectiveLimit": 10,
            "unlimited": false, "current": 10, "overage": 1, "willCharge": false,
            "estimatedCost": 0, "cumulativeOverageCost": 0, "planId": "starter",
            "overagePolicy": "block", "consumed": false, "alerts": [], "replayed": false,
            "someFutureField": 3
        }))
        .unwrap();
        assert!(!answer.decision.allowed);
        assert_eq!(answer.decision.overage_policy, "block");
        // The unknown field is kept with the decision, and only there.
        assert_eq!(answer.decision.extra.len(), 1);
        assert_eq!(answer.decision.extra["someFutureField"], 3);
        let sent = serde_json::to_value(&answer.decision).unwrap();
        assert_eq!(sent["someFutureField"], 3);
        assert!(sent.get("alerts").is_none() && sent.get("replayed").is_none());
    }
}
