//! What the log says of a brand-period, read from the log itself: the usage changes
//! (history) and the alert timeline, newest first, paged backwards; the audit trail
//! (every event as stored), paged forwards.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::Severity;
use ledger_aggregates::{BrandId, LedgerEvent, MetricKey, PeriodKey, UsagePeriodAggregate};
use rust_decimal::Decimal;

use super::{Ledger, QueryError};
use crate::store::StoredEvent;

/// Events read per round trip while paging a stream backwards.
const HISTORY_READ_EVENTS_MAX: i64 = 1_000;
/// Events one history or alert-timeline request reads at most once it has found an
/// entry. Until it has
/// found one it reads on, so a page is never empty while older entries exist; past
/// this, the page is answered short, with `next_before` to go on from.
pub const HISTORY_SCAN_EVENTS_MAX: usize = 10_000;

/// How a usage change came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Recorded,
    /// A signed correction.
    Adjusted,
    /// An absolute gauge level.
    GaugeSet,
    /// Units credited to the effective limit (a purchase or a grant).
    TopUp,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Recorded => "recorded",
            ChangeKind::Adjusted => "adjusted",
            ChangeKind::GaugeSet => "gauge_set",
            ChangeKind::TopUp => "top_up",
        }
    }
}

/// One change of a metric's usage.
#[derive(Debug, Clone)]
pub struct UsageChange {
    pub sequence: u64,
    pub metric: MetricKey,
    pub kind: ChangeKind,
    /// Units recorded, the signed delta, the new level, or the units credited.
    pub value: i64,
    pub at: DateTime<Utc>,
    /// Who made a correction or a top-up.
    pub actor: Option<String>,
    /// Why a correction was made.
    pub reason: Option<String>,
    /// The purchase or grant a top-up comes from.
    pub reference: Option<String>,
    /// The event's metadata, JSON text as stored.
    pub metadata: String,
}

/// Whether an alert was raised or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertChangeKind {
    Crossed,
    Resolved,
}

impl AlertChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertChangeKind::Crossed => "crossed",
            AlertChangeKind::Resolved => "resolved",
        }
    }
}

/// One entry of a period's alert timeline.
#[derive(Debug, Clone)]
pub struct AlertChange {
    pub sequence: u64,
    pub metric: MetricKey,
    pub kind: AlertChangeKind,
    pub threshold: u8,
    pub severity: Severity,
    /// current / effective limit × 100 at that moment, two decimals.
    pub percentage: Decimal,
    pub current: u64,
    /// `None` when a plan without a quota for the metric resolved it.
    pub effective_limit: Option<u64>,
    pub at: DateTime<Utc>,
}

/// One page of a stream read backwards, newest first.
#[derive(Debug, Clone)]
pub struct BackPage<T> {
    pub entries: Vec<T>,
    /// Pass as `before` for the next (older) page; `None` once the stream's start was read.
    pub next_before: Option<u64>,
    /// The scan limit ended the page before `limit` entries were found.
    pub truncated: bool,
}

/// One page of an audit trail, in sequence order.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<StoredEvent>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<u64>,
}

/// One page of a history.
pub type HistoryPage = BackPage<UsageChange>;

impl Ledger {
    /// Usage changes of a brand-period before sequence `before` (all when `None`),
    /// newest first, at most `limit`, only of `metric` when given.
    pub async fn history(
        &self,
        brand: &BrandId,
        period: PeriodKey,
        metric: Option<&MetricKey>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, QueryError> {
        self.scan_back(brand, period, before, limit, |stored| {
            Ok(usage_change(stored)?.filter(|c| metric.is_none_or(|m| *m == c.metric)))
        })
        .await
    }

    /// The alert timeline of a brand-period: every crossing and resolution before
    /// sequence `before` (all when `None`), newest first, at most `limit`.
    pub async fn alert_timeline(
        &self,
        brand: &BrandId,
        period: PeriodKey,
        before: Option<u64>,
        limit: usize,
    ) -> Result<BackPage<AlertChange>, QueryError> {
        self.scan_back(brand, period, before, limit, alert_change)
            .await
    }

    /// Read a brand-period's stream backwards from `before`, keeping what `pick` makes
    /// of each event, until `limit` entries are found, the stream's start is read, or
    /// (once one entry is found) [`HISTORY_SCAN_EVENTS_MAX`] events were looked at.
    async fn scan_back<T>(
        &self,
        brand: &BrandId,
        period: PeriodKey,
        before: Option<u64>,
        limit: usize,
        pick: impl Fn(&StoredEvent) -> Result<Option<T>, QueryError>,
    ) -> Result<BackPage<T>, QueryError> {
        self.registered(brand).await?;
        let id = period_stream_id(brand, period);
        let mut entries = Vec::new();
        let mut cursor = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let mut scanned = 0;
        let mut exhausted = false;
        while entries.len() < limit && (entries.is_empty() || scanned < HISTORY_SCAN_EVENTS_MAX) {
            let page = self
                .stores
                .log
                .read_stream_back(
                    UsagePeriodAggregate::TYPE,
                    &id,
                    cursor,
                    HISTORY_READ_EVENTS_MAX,
                )
                .await?;
            exhausted = (page.len() as i64) < HISTORY_READ_EVENTS_MAX;
            for stored in &page {
                cursor = stored.sequence;
                scanned += 1;
                if let Some(entry) = pick(stored)? {
                    entries.push(entry);
                    if entries.len() == limit {
                        break;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        // The stream's start was read when the last page came back short and every
        // event of it was looked at; the first sequence is 1.
        let done = cursor <= 1 || (exhausted && entries.len() < limit);
        Ok(BackPage {
            truncated: entries.len() < limit && !done,
            next_before: (!done).then_some(cursor as u64),
            entries,
        })
    }

    /// The audit trail of a brand-period: its events after sequence `after`, as stored.
    pub async fn audit_trail(
        &self,
        brand: &BrandId,
        period: PeriodKey,
        after: u64,
        limit: u32,
    ) -> Result<AuditPage, QueryError> {
        self.registered(brand).await?;
        let id = period_stream_id(brand, period);
        let events = self
            .stores
            .log
            .read_stream(
                UsagePeriodAggregate::TYPE,
                &id,
                i64::try_from(after).unwrap_or(i64::MAX),
                i64::from(limit),
            )
            .await?;
        let full = events.len() == limit as usize;
        Ok(AuditPage {
            next_after: events.last().filter(|_| full).map(|e| e.sequence as u64),
            events,
        })
    }

    /// Reads of the log need the brand to exist (else [`QueryError::UnknownBrand`]).
    async fn registered(&self, brand: &BrandId) -> Result<(), QueryError> {
        match self.engine.brand_state(brand.clone()).await? {
            Some(_) => Ok(()),
            None => Err(QueryError::UnknownBrand(brand.clone())),
        }
    }
}

fn decode(stored: &StoredEvent) -> Result<LedgerEvent, QueryError> {
    serde_json::from_str(&stored.payload).map_err(|e| {
        QueryError::Corrupt(format!(
            "event {}#{} does not decode: {e}",
            stored.aggregate_id, stored.sequence
        ))
    })
}

fn usage_change(stored: &StoredEvent) -> Result<Option<UsageChange>, QueryError> {
    let (mut actor, mut reason, mut reference) = (None, None, None);
    let (metric, kind, value, at) = match decode(stored)? {
        LedgerEvent::UsageRecorded {
            metric,
            quantity,
            occurred_at,
            ..
        } => (metric, ChangeKind::Recorded, quantity as i64, occurred_at),
        LedgerEvent::UsageAdjusted {
            metric,
            delta,
            actor: by,
            reason: why,
            at,
            ..
        } => {
            (actor, reason) = (Some(by), Some(why));
            (metric, ChangeKind::Adjusted, delta, at)
        }
        LedgerEvent::GaugeLevelSet {
            metric, totals, at, ..
        } => (metric, ChangeKind::GaugeSet, totals.current as i64, at),
        LedgerEvent::TopUpApplied {
            metric,
            units,
            actor: by,
            reference: from,
            at,
            ..
        } => {
            (actor, reference) = (Some(by), Some(from));
            (metric, ChangeKind::TopUp, units as i64, at)
        }
        _ => return Ok(None),
    };
    Ok(Some(UsageChange {
        sequence: stored.sequence as u64,
        metric,
        kind,
        value,
        at,
        actor,
        reason,
        reference,
        metadata: stored.metadata.clone(),
    }))
}

fn alert_change(stored: &StoredEvent) -> Result<Option<AlertChange>, QueryError> {
    let sequence = stored.sequence as u64;
    Ok(match decode(stored)? {
        LedgerEvent::ThresholdCrossed {
            metric,
            threshold,
            severity,
            percentage,
            current,
            effective_limit,
            at,
        } => Some(AlertChange {
            sequence,
            metric,
            kind: AlertChangeKind::Crossed,
            threshold,
            severity,
            percentage,
            current,
            effective_limit: Some(effective_limit),
            at,
        }),
        LedgerEvent::ThresholdResolved {
            metric,
            threshold,
            severity,
            percentage,
            current,
            effective_limit,
            at,
        } => Some(AlertChange {
            sequence,
            metric,
            kind: AlertChangeKind::Resolved,
            threshold,
            severity,
            percentage,
            current,
            effective_limit,
            at,
        }),
        _ => None,
    })
}
