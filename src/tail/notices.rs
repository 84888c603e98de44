//! The notices consumer: turns threshold crossings and resolutions, refusals and
//! top-ups of the log into deliveries, one per endpoint of the brand that wants the
//! notice's kind, written to the outbox in the same transaction as its checkpoint.
//! It is never part of a replay: a rebuild of the read models sends nothing.
//!
//! Refusals are coalesced: one notice per brand, metric and hour (the first refusal
//! of the hour names it), so a refusal storm is one message per endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_aggregates::money::cost_of;
use ledger_aggregates::notifications::{NoticeKind, NotificationSettings};
use ledger_aggregates::period::Severity;
use ledger_aggregates::topup::{TopUpEvent, TopUpId};
use ledger_aggregates::{
    BrandAggregate, BrandEvent, BrandId, Catalog, LedgerEvent, MetricKey, PeriodKey,
};
use ledger_projections::{LogPosition, LogRecord, StreamEvent};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{Consumer, TailError};
use crate::engine::Engine;
use crate::notify::Notice;
use crate::store::{
    load_registries, EventLog, NewDelivery, OutboxStore, ProjectionStore, NOTICES_CONSUMER,
};

/// The delivery id of `notice_id` to `endpoint`: stable, so every attempt and every
/// re-enqueue carries the same one, and free of the characters Standard Webhooks
/// forbids in `webhook-id` (brand ids may hold a `.`).
pub fn delivery_id(notice_id: &str, endpoint: &str) -> String {
    let digest = Sha256::digest(format!("{notice_id}@{endpoint}").as_bytes());
    format!("dlv_{}", &hex::encode(digest)[..32])
}

pub struct NoticeConsumer {
    pub projections: Arc<dyn ProjectionStore>,
    /// Brands' registries (settings, plans, orders) are read from the log directly.
    pub log: Arc<dyn EventLog>,
    pub outbox: Arc<dyn OutboxStore>,
    pub engine: Engine,
    pub catalog: Arc<Catalog>,
    /// Woken when deliveries are enqueued.
    pub dispatcher: Arc<Notify>,
    /// A link to the brand's dashboard page: `{brand}` is replaced by its id.
    pub dashboard_url: Option<String>,
    /// Where the consumer stands, and the checkpoint as stored: batches without a
    /// delivery move only the first, so most commits of the ledger cost this consumer
    /// no write of its own.
    position: LogPosition,
    persisted: LogPosition,
    persisted_at: std::time::Instant,
}

/// The stored checkpoint trails the consumer by at most this long while the log holds
/// nothing to deliver: after a crash, at most this much of the log is read again (and
/// makes no delivery twice: a delivery's id is derived from its notice).
pub const NOTICES_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl NoticeConsumer {
    pub fn new(
        projections: Arc<dyn ProjectionStore>,
        log: Arc<dyn EventLog>,
        outbox: Arc<dyn OutboxStore>,
        engine: Engine,
        dispatcher: Arc<Notify>,
        dashboard_url: Option<String>,
    ) -> Self {
        let catalog = Arc::new(engine.catalog().clone());
        Self {
            projections,
            log,
            outbox,
            engine,
            catalog,
            dispatcher,
            dashboard_url,
            position: LogPosition::START,
            persisted: LogPosition::START,
            persisted_at: std::time::Instant::now(),
        }
    }

    /// Move the stored checkpoint to `to` with `deliveries`, from where it was stored.
    /// `false` when another instance's consumer went further: this one then stands
    /// where that one does.
    async fn commit(
        &mut self,
        to: LogPosition,
        deliveries: &[NewDelivery],
    ) -> Result<bool, TailError> {
        let moved = self
            .outbox
            .enqueue(NOTICES_CONSUMER, self.persisted, to, deliveries)
            .await?;
        self.position = match moved {
            true => to,
            false => self.projections.checkpoint(NOTICES_CONSUMER).await?,
        };
        self.persisted = self.position;
        self.persisted_at = std::time::Instant::now();
        Ok(moved)
    }

    /// The notice an event makes, if any, from the brand's registry as it stands.
    fn notice_of(
        &self,
        record: &LogRecord,
        event: &StreamEvent,
        registry: &BrandAggregate,
    ) -> Option<Notice> {
        let stream_notice = format!("{}#{}", record.aggregate_id, record.sequence);
        match event {
            StreamEvent::Period {
                brand,
                period,
                event,
            } => {
                let figures = |metric: &MetricKey, current: u64, limit: Option<u64>| {
                    let plan = registry.plan_for(*period);
                    let rate = plan
                        .and_then(|p| p.quota(metric))
                        .and_then(|q| q.overage_rate);
                    let overage = limit.map_or(0, |l| current.saturating_sub(l));
                    (
                        plan.map(|p| (p.id.to_string(), p.name.clone()))
                            .unwrap_or_default(),
                        rate.map_or(0, |r| cost_of(overage, r).minor()),
                        overage,
                    )
                };
                let base = |kind, metric: &MetricKey, current, limit: Option<u64>, at| {
                    let ((plan_id, plan_name), cost, overage) = figures(metric, current, limit);
                    Notice {
                        id: stream_notice.clone(),
                        kind,
                        brand_id: brand.to_string(),
                        plan_id,
                        plan_name,
                        period: period.to_string(),
                        metric: metric.to_string(),
                        unit: self
                            .catalog
                            .metric(metric)
                            .map(|m| m.unit.clone())
                            .unwrap_or_default(),
                        current,
                        limit,
                        remaining: limit.map(|l| l.saturating_sub(current)),
                        overage,
                        overage_cost_cents: cost,
                        percentage: limit.map_or(Decimal::ZERO, |l| {
                            ledger_aggregates::period::percentage(current, l)
                        }),
                        threshold: None,
                        severity: "info".to_owned(),
                        refused: None,
                        units: None,
                        price_cents: None,
                        reason: None,
                        at,
                        dashboard_url: self.dashboard(brand),
                    }
                };
                match event {
                    LedgerEvent::ThresholdCrossed {
                        metric,
                        threshold,
                        severity,
                        percentage,
                        current,
                        effective_limit,
                        at,
                    } => Some(Notice {
                        threshold: Some(*threshold),
                        severity: severity_text(*severity).to_owned(),
                        percentage: *percentage,
                        ..base(
                            NoticeKind::ThresholdCrossed,
                            metric,
                            *current,
                            Some(*effective_limit),
                            *at,
                        )
                    }),
                    LedgerEvent::ThresholdResolved {
                        metric,
                        threshold,
                        percentage,
                        current,
                        effective_limit,
                        at,
                        ..
                    } => Some(Notice {
                        threshold: Some(*threshold),
                        percentage: *percentage,
                        ..base(
                            NoticeKind::ThresholdResolved,
                            metric,
                            *current,
                            *effective_limit,
                            *at,
                        )
                    }),
                    LedgerEvent::UsageDenied {
                        metric,
                        current,
                        effective_limit,
                        at,
                        count,
                        ..
                    } => Some(Notice {
                        id: format!(
                            "{}#refused:{metric}:{}",
                            record.aggregate_id,
                            at.format("%Y-%m-%dT%H")
                        ),
                        severity: "critical".to_owned(),
                        refused: Some(*count),
                        ..base(
                            NoticeKind::QuotaRefused,
                            metric,
                            *current,
                            Some(*effective_limit),
                            *at,
                        )
                    }),
                    LedgerEvent::TopUpApplied {
                        metric,
                        units,
                        price,
                        reference,
                        totals,
                        at,
                        ..
                    } => Some(Notice {
                        units: Some(*units),
                        price_cents: Some(price.minor()),
                        reason: Some(reference.clone()),
                        ..base(
                            NoticeKind::TopUpApplied,
                            metric,
                            totals.current,
                            totals.effective_limit,
                            *at,
                        )
                    }),
                    _ => None,
                }
            }
            StreamEvent::Brand {
                brand,
                event:
                    BrandEvent::TopUp(TopUpEvent::Failed {
                        number, reason, at, ..
                    }),
            } => {
                let order = registry.topups.get(*number)?;
                let period = PeriodKey::containing(order.opened_at);
                let plan = registry.plan_for(period);
                Some(Notice {
                    id: stream_notice,
                    kind: NoticeKind::TopUpFailed,
                    brand_id: brand.to_string(),
                    plan_id: plan.map(|p| p.id.to_string()).unwrap_or_default(),
                    plan_name: plan.map(|p| p.name.clone()).unwrap_or_default(),
                    period: period.to_string(),
                    metric: order.metric.to_string(),
                    unit: self
                        .catalog
                        .metric(&order.metric)
                        .map(|m| m.unit.clone())
                        .unwrap_or_default(),
                    current: 0,
                    limit: None,
                    remaining: None,
                    overage: 0,
                    overage_cost_cents: 0,
                    percentage: Decimal::ZERO,
                    threshold: None,
                    severity: "warning".to_owned(),
                    refused: None,
                    units: Some(order.units),
                    price_cents: Some(order.price.minor()),
                    reason: Some(format!(
                        "{}: {reason}",
                        TopUpId {
                            brand: brand.clone(),
                            number: *number
                        }
                    )),
                    at: *at,
                    dashboard_url: self.dashboard(brand),
                })
            }
            StreamEvent::Brand { .. } => None,
        }
    }

    fn dashboard(&self, brand: &BrandId) -> Option<String> {
        self.dashboard_url
            .as_ref()
            .map(|u| u.replace("{brand}", brand.as_str()))
    }
}

fn severity_text(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// The deliveries of `notice` to the endpoints of `settings` that want it.
pub fn deliveries_of(
    notice: &Notice,
    settings: &NotificationSettings,
    due: DateTime<Utc>,
) -> Vec<NewDelivery> {
    let body = serde_json::to_string(notice).expect("a notice serializes");
    settings
        .wanting(notice.kind)
        .map(|e| NewDelivery {
            id: delivery_id(&notice.id, &e.id),
            notice_id: notice.id.clone(),
            brand_id: notice.brand_id.clone(),
            endpoint: e.id.clone(),
            kind: notice.kind.as_str().to_owned(),
            notice: body.clone(),
            next_attempt_at: due,
        })
        .collect()
}

#[async_trait]
impl Consumer for NoticeConsumer {
    fn name(&self) -> &'static str {
        NOTICES_CONSUMER
    }

    async fn start(&mut self) -> Result<LogPosition, TailError> {
        self.position = self.projections.checkpoint(NOTICES_CONSUMER).await?;
        self.persisted = self.position;
        Ok(self.position)
    }

    async fn apply(
        &mut self,
        _from: LogPosition,
        records: &[LogRecord],
    ) -> Result<LogPosition, TailError> {
        let last = records
            .last()
            .expect("the loop hands over non-empty batches")
            .at;
        const NOTIFYING: [&str; 5] = [
            "ThresholdCrossed",
            "ThresholdResolved",
            "UsageDenied",
            "TopUpApplied",
            "TopUpFailed",
        ];
        let mut events = Vec::new();
        for record in records {
            if NOTIFYING.contains(&record.event_type.as_str()) {
                let event = record.decode()?.event;
                let brand = match &event {
                    StreamEvent::Period { brand, .. } | StreamEvent::Brand { brand, .. } => {
                        brand.clone()
                    }
                };
                events.push((record, brand, event));
            }
        }
        // Every registry the batch needs, in one read of the log.
        let mut brands: Vec<BrandId> = events.iter().map(|(_, b, _)| b.clone()).collect();
        brands.sort();
        brands.dedup();
        let registries: HashMap<BrandId, BrandAggregate> =
            load_registries(self.log.as_ref(), &brands)
                .await?
                .into_iter()
                .collect();
        let mut deliveries = Vec::new();
        let now = self.engine.now();
        for (record, brand, event) in &events {
            let Some(registry) = registries.get(brand).filter(|r| r.is_registered()) else {
                continue;
            };
            if registry.notifications.endpoints.is_empty() {
                continue;
            }
            if let Some(notice) = self.notice_of(record, event, registry) {
                deliveries.extend(deliveries_of(&notice, &registry.notifications, now));
            }
        }
        if deliveries.is_empty() {
            self.position = last;
            return Ok(last);
        }
        if self.commit(last, &deliveries).await? {
            self.dispatcher.notify_one();
        }
        Ok(self.position)
    }

    async fn caught_up(&mut self, persist: bool) -> Result<(), TailError> {
        let due = persist || self.persisted_at.elapsed() >= NOTICES_CHECKPOINT_INTERVAL;
        if due && self.position != self.persisted {
            self.commit(self.position, &[]).await?;
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), TailError> {
        if self.position != self.persisted {
            self.commit(self.position, &[]).await?;
        }
        Ok(())
    }
}
