//! The application layer: the ledger's use cases and queries, called by every adapter
//! (HTTP, the operator commands, the tests, the benchmark) alike. Adapters keep their
//! wire shapes; what a summary holds, or how a period is closed, is decided here.
//!
//! # Layout
//! - this file: [`Ledger`], the handle every adapter holds.
//! - [`summary`]: a brand-period's summary and current usage, from the read models.
//! - [`history`]: usage changes and the audit trail, read from the log.
//! - [`close`]: closing an ended period, every brand's invoice frozen.
//! - [`topups`]: top-ups bought through Stripe Checkout, their payments, their history.
//! - [`whatif`]: what-if queries (simulate, compare, project, estimate, bill) on the
//!   current period's figures.

pub mod close;
pub mod history;
pub mod summary;
pub mod topups;
pub mod whatif;

use ledger_aggregates::PeriodKey;
use ledger_projections::ReadModels;

use crate::engine::{Engine, EngineError};
use crate::startup::Stores;
use crate::store::StoreError;
use crate::tail::projector::{Projector, CATCH_UP_WAIT_MAX};
use crate::tail::rows::restore_all;
use crate::tail::{RowError, TailError};
use ledger_aggregates::BrandId;

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("brand {0} is not registered")]
    UnknownBrand(BrandId),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    ReadModels(#[from] TailError),
    /// What the log or the models hold does not decode: a defect or a hand edit.
    #[error("{0}")]
    Corrupt(String),
}

impl From<RowError> for QueryError {
    fn from(e: RowError) -> Self {
        QueryError::Corrupt(e.to_string())
    }
}

/// A started ledger: the engine every write goes through, the store, and the consumers
/// of the log it reads through; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    pub engine: Engine,
    pub stores: Stores,
    pub projector: Projector,
    /// What tells the engine's writers of the log's events ([`crate::tail::caches`]).
    pub caches: crate::tail::Tail,
    /// Stripe, as configured (absent keys: checkouts and webhooks answer 503).
    pub payments: std::sync::Arc<topups::Payments>,
}

impl Ledger {
    /// Answer every command queued, then stop following the log.
    pub async fn stop(&self) {
        self.engine.drain().await;
        self.projector.stop().await;
        self.caches.stop().await;
    }

    /// Every brand's read models of one period, holding every event committed before
    /// the call: the models are persisted first, then read back whole (a period spans
    /// more brands than memory need hold).
    pub async fn models_in_period(&self, period: PeriodKey) -> Result<ReadModels, QueryError> {
        if !self.projector.persist(CATCH_UP_WAIT_MAX).await {
            tracing::warn!(status = ?self.projector.status(), "read models are behind the log");
        }
        let rows = self
            .stores
            .projections
            .models_in_period(&period.to_string())
            .await?;
        Ok(restore_all(&rows)?)
    }
}
