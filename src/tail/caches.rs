//! The engine's caches follow the log: this consumer tells the writers of every event
//! it reads ([`Freshness`]), so that a pure check or a read asks the log only for what
//! came after it, not for each stream's version.
//!
//! It keeps no checkpoint: it starts at the end of the log when the process starts, and
//! the writers forget what they cached before. Reading the log (not the engine's
//! answers) is what makes another process's commits reach them.

use std::sync::Arc;

use async_trait::async_trait;
use ledger_projections::{LogPosition, LogRecord};

use super::{Consumer, Tail, TailError};
use crate::engine::{Engine, Freshness};
use crate::store::ProjectionStore;

/// The consumer's name in logs and status.
pub const CACHES_CONSUMER: &str = "engine_caches";

struct CachesConsumer {
    freshness: Arc<Freshness>,
    projections: Arc<dyn ProjectionStore>,
}

#[async_trait]
impl Consumer for CachesConsumer {
    fn name(&self) -> &'static str {
        CACHES_CONSUMER
    }

    async fn start(&mut self) -> Result<LogPosition, TailError> {
        let end = self.projections.log_end().await?;
        self.freshness.follow_from(end);
        Ok(end)
    }

    async fn apply(
        &mut self,
        _from: LogPosition,
        records: &[LogRecord],
    ) -> Result<LogPosition, TailError> {
        self.freshness.read(records);
        Ok(records
            .last()
            .expect("the loop hands over non-empty batches")
            .at)
    }

    async fn caught_up(&mut self, _persist: bool) -> Result<(), TailError> {
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), TailError> {
        Ok(())
    }
}

/// Follow `projections`' log for `engine`'s writers, from its end.
pub async fn follow(
    engine: &Engine,
    projections: Arc<dyn ProjectionStore>,
) -> Result<Tail, TailError> {
    let consumer = CachesConsumer {
        freshness: engine.freshness(),
        projections: projections.clone(),
    };
    Tail::start(projections, consumer).await
}
