//! Closing an ended period: every registered brand's invoice frozen (`PeriodClosed`).
//!
//! A close covers every brand that existed during the period, i.e. registered before
//! its end, whether or not it has an event in it (a brand without usage owes its base
//! price); a brand registered at or after the end never had the period and is skipped.
//!
//! Each brand is closed by its own `Close` command through the engine, many at once so
//! they share group commits. A brand's failure is reported beside the others' invoices,
//! never instead of them, and a retry finishes the job: a period already closed is
//! reported as such and nothing is appended for it again.

use futures::StreamExt;
use ledger_aggregates::brand::{BrandAggregate, BRAND_TYPE};
use ledger_aggregates::period::Invoice;
use ledger_aggregates::{
    BrandEvent, BrandId, LedgerError, LedgerEvent, PeriodCommand, PeriodKey, PlanDefinition,
};

use super::{Ledger, QueryError};
use crate::engine::{EngineError, Metadata, PeriodRequest};

/// Brands being closed at once. Enough to fill the engine's group commits many times
/// over (1,000 brands close in about 16 rounds), few enough that a close of every brand
/// never holds more than this many registry reads, connections and queue slots.
pub const CLOSE_BRANDS_IN_FLIGHT_MAX: usize = 64;

/// Registry events read per round trip. A brand's registry holds its plan changes, a
/// handful in practice: one page almost always suffices; longer ones are paged.
const REGISTRY_PAGE_EVENTS_MAX: i64 = 100;

/// What closing one brand came to.
#[derive(Debug)]
pub enum Closing {
    /// Frozen by this call.
    Closed(Invoice),
    /// An earlier close froze it: nothing was appended.
    AlreadyClosed,
    /// Registered at or after the period's end: the brand never had the period, so
    /// nothing is invoiced (and no usage can be in it: the engine refuses usage
    /// stamped before a registration).
    Skipped,
}

/// One brand's result, under its registry stream id (a string: it may be the very
/// thing that is corrupt).
pub type BrandClosing = (String, Result<(BrandId, Closing), QueryError>);

impl Ledger {
    /// Close `period` for every registered brand, in brand order. Refused at once when
    /// the period has not ended.
    pub async fn close_period(
        &self,
        period: PeriodKey,
        actor: &str,
    ) -> Result<Vec<BrandClosing>, QueryError> {
        self.engine.check_ended(period)?;
        let brands = self.stores.log.stream_ids(BRAND_TYPE).await?;
        let mut results: Vec<BrandClosing> = futures::stream::iter(brands)
            .map(|id| async move {
                let result = self.close_brand(&id, period, actor).await;
                (id, result)
            })
            .buffer_unordered(CLOSE_BRANDS_IN_FLIGHT_MAX)
            .collect()
            .await;
        results.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(results)
    }

    /// Close one brand's period: open it on the plan the brand ended the period on if
    /// it never was, then freeze its invoice.
    async fn close_brand(
        &self,
        id: &str,
        period: PeriodKey,
        actor: &str,
    ) -> Result<(BrandId, Closing), QueryError> {
        let brand = BrandId::parse(id)
            .map_err(|e| QueryError::Corrupt(format!("brand registry stream {id:?}: {e}")))?;
        // Registered only after the period ended: it owes nothing for it.
        let Some(plan_at_end) = self.plan_at(&brand, period).await? else {
            return Ok((brand, Closing::Skipped));
        };
        let closing = self
            .engine
            .execute(PeriodRequest {
                brand: brand.clone(),
                period: Some(period),
                command: PeriodCommand::ClosePeriod {
                    actor: actor.to_owned(),
                    plan_at_end: Some(Box::new(plan_at_end)),
                },
                idempotency_key: None,
                metadata: Metadata::default(),
            })
            .await;
        let outcome = match closing {
            Ok(outcome) => outcome,
            Err(EngineError::Ledger(LedgerError::Closed(_))) => {
                return Ok((brand, Closing::AlreadyClosed))
            }
            Err(e) => return Err(e.into()),
        };
        outcome
            .events
            .into_iter()
            .find_map(|c| match c.event {
                LedgerEvent::PeriodClosed { invoice, .. } => Some(Closing::Closed(invoice)),
                _ => None,
            })
            .map(|closing| (brand, closing))
            .ok_or_else(|| {
                QueryError::Corrupt(format!("closing {id} {period} appended no invoice"))
            })
    }

    /// The plan `brand` billed `period` on, from its registry events up to the period's
    /// end (a downgrade scheduled for it included): `None` when it registered at or
    /// after the end. Read from the log because the registry aggregate keeps only the
    /// plans of today and of the periods ahead.
    async fn plan_at(
        &self,
        brand: &BrandId,
        period: PeriodKey,
    ) -> Result<Option<PlanDefinition>, QueryError> {
        let end = period.end();
        let mut registry = BrandAggregate::default();
        let mut after = 0;
        loop {
            let page = self
                .stores
                .log
                .read_stream(BRAND_TYPE, brand.as_str(), after, REGISTRY_PAGE_EVENTS_MAX)
                .await?;
            for stored in &page {
                let event: BrandEvent = serde_json::from_str(&stored.payload).map_err(|e| {
                    QueryError::Corrupt(format!("registry event {brand}#{}: {e}", stored.sequence))
                })?;
                let at = event.at();
                if at >= end {
                    return Ok(registry.plan_for(period).cloned());
                }
                registry.fold(&event);
            }
            match page.last() {
                Some(last) if page.len() as i64 == REGISTRY_PAGE_EVENTS_MAX => {
                    after = last.sequence
                }
                _ => return Ok(registry.plan_for(period).cloned()),
            }
        }
    }
}
