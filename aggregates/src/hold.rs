//! Holds: quota set aside for a long job (a render queued for minutes), then committed
//! as usage, voided, or expired at the end of its time to live. The model is
//! TigerBeetle's pending transfers: while held, the units count against a `block`
//! limit in every decision, so a job that was admitted can always record what it used.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::{MetricKey, ParseError};

/// The longest a hold may live: a day covers any render or batch job, and it is
/// shorter than the late-usage grace (72 h), so a hold placed before a period ends
/// always commits or expires while the period still accepts usage.
pub const HOLD_TTL_SECONDS_MAX: u32 = 86_400;

/// Holds open at once in one brand's period. Open holds live in the aggregate and in
/// each of its snapshots; a thousand jobs in flight is far above any brand's render
/// farm, and keeps a snapshot in the tens of kilobytes.
pub const OPEN_HOLDS_MAX: usize = 1_000;

/// How long a hold lives, 1 s to [`HOLD_TTL_SECONDS_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct HoldTtl(u32);

impl HoldTtl {
    pub fn new(seconds: u64) -> Result<Self, ParseError> {
        match u32::try_from(seconds) {
            Ok(s) if (1..=HOLD_TTL_SECONDS_MAX).contains(&s) => Ok(Self(s)),
            _ => Err(ParseError {
                field: "ttlSeconds",
                reason: format!("must be 1 to {HOLD_TTL_SECONDS_MAX} seconds"),
            }),
        }
    }

    pub fn seconds(self) -> u32 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::seconds(i64::from(self.0))
    }
}

impl<'de> Deserialize<'de> for HoldTtl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One open hold, as the aggregate keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub metric: MetricKey,
    pub amount: u64,
    /// When it was placed: the usage it commits is dated then, in the period it holds.
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub reserved_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub expires_at: DateTime<Utc>,
}

impl Hold {
    /// Whether the hold has run out at `at`: from its expiry instant on, it holds nothing.
    pub fn expired_at(&self, at: DateTime<Utc>) -> bool {
        at >= self.expires_at
    }
}

/// Why a hold ended without being committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// The caller gave it back (the job failed or was cancelled).
    Voided,
    /// Its time to live ran out.
    Expired,
}
