//! The live feed's consumer: per batch of the log, the brand-periods it touched, each
//! summed up once (read through the ledger, from memory) and handed to the hub. It is
//! effectful and never part of a replay.
//!
//! It keeps no checkpoint: a live feed starts live, at the end of the log when the
//! process starts, and a client that was away is sent a snapshot when it reconnects.
//! Following the log (not the engine's answers) means only committed changes are sent,
//! and that every instance sees every instance's writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ledger_aggregates::ids::parse_period_stream_id;
use ledger_aggregates::period::USAGE_PERIOD_TYPE;
use ledger_aggregates::{BrandId, PeriodKey};
use ledger_projections::{LogPosition, LogRecord};

use super::projector::CATCH_UP_WAIT_MAX;
use super::{Consumer, TailError};
use crate::ledger::summary::AsOfSummary;
use crate::ledger::{Ledger, QueryError};
use crate::live::{Hub, Update};
use crate::store::ProjectionStore;

/// The consumer's name in logs and status.
pub const LIVE_CONSUMER: &str = "live";

pub struct LiveConsumer {
    pub ledger: Ledger,
    pub projections: Arc<dyn ProjectionStore>,
    pub hub: Arc<Hub>,
}

/// The brand-periods a batch touched, each once with the last sequence it read.
pub fn touched(records: &[LogRecord]) -> BTreeMap<(BrandId, PeriodKey), u64> {
    let mut touched = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.aggregate_type == USAGE_PERIOD_TYPE)
    {
        if let Ok(key) = parse_period_stream_id(&r.aggregate_id) {
            let seen = touched.entry(key).or_insert(0);
            *seen = (*seen).max(u64::try_from(r.sequence).unwrap_or(0));
        }
    }
    touched
}

impl LiveConsumer {
    /// The summary of a brand-period holding at least sequence `seen`: the read models
    /// may not have folded what this consumer read yet (a write is acknowledged to
    /// readers after its commit), so they are caught up once when they lag.
    async fn summary_after(
        &self,
        brand: &BrandId,
        period: PeriodKey,
        seen: u64,
    ) -> Result<AsOfSummary, QueryError> {
        let summary = self.ledger.summary_sequenced(brand.clone(), period).await?;
        if summary.sequence >= seen {
            return Ok(summary);
        }
        self.ledger.projector.catch_up(CATCH_UP_WAIT_MAX).await;
        self.ledger.summary_sequenced(brand.clone(), period).await
    }
}

#[async_trait]
impl Consumer for LiveConsumer {
    fn name(&self) -> &'static str {
        LIVE_CONSUMER
    }

    /// The end of the log as committed now.
    async fn start(&mut self) -> Result<LogPosition, TailError> {
        Ok(self.projections.log_end().await?)
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
        let mut updates = Vec::new();
        for ((brand, period), seen) in touched(records) {
            if !self.hub.wants(&brand) {
                continue;
            }
            match self.summary_after(&brand, period, seen).await {
                Ok(s) => updates.push(Arc::new(Update::new(s.summary, s.sequence))),
                // A live message missed is summed up by the next one or a reconnection's
                // snapshot: never a reason to hold the feed back.
                Err(e) => {
                    tracing::warn!(%brand, %period, error = %e, "no live summary");
                    self.hub.metrics.broadcast_failures.inc();
                }
            }
        }
        self.hub.publish(updates);
        Ok(last)
    }

    async fn caught_up(&mut self, _persist: bool) -> Result<(), TailError> {
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), TailError> {
        Ok(())
    }
}

/// The live feed's moving parts: the hub and the consumer's loop.
pub struct Live {
    pub hub: Arc<Hub>,
    pub tail: super::Tail,
}

impl Live {
    /// Start following the log from its end, feeding a hub counted in `metrics`.
    pub async fn start(
        ledger: &Ledger,
        metrics: Arc<crate::metrics::LiveMetrics>,
    ) -> Result<Self, TailError> {
        let hub = Hub::new(metrics);
        let consumer = LiveConsumer {
            ledger: ledger.clone(),
            projections: ledger.stores.projections.clone(),
            hub: hub.clone(),
        };
        let tail = super::Tail::start(ledger.stores.projections.clone(), consumer).await?;
        Ok(Self { hub, tail })
    }

    /// Stop following the log and close every connection.
    pub async fn stop(&self) {
        self.tail.stop().await;
        self.hub.close_all();
    }
}
