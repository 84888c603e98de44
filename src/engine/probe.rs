//! Version probes of pure checks, batched: a check that appends nothing learns from no
//! conflict that another process wrote first, so it asks the log how far its streams
//! are before it is decided. Callers that ask while a probe is in flight share the
//! next one: one query for all of them, and none of it on the writer's path.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{EventLog, StoreError};

/// Probes waiting for the prober: as many as the engine's queue holds commands.
pub const PROBE_QUEUE_MAX: usize = 65_536;
/// Probes answered by one query: 1,024 streams keep it one fast index walk.
pub const PROBE_BATCH_MAX: usize = 512;

/// The streams of one check, registry first, then period.
pub(crate) type ProbeKeys = [(&'static str, String); 2];
type ProbeReply = oneshot::Sender<Result<[u64; 2], Arc<StoreError>>>;

#[derive(Clone)]
pub(crate) struct Prober {
    tx: mpsc::Sender<(ProbeKeys, ProbeReply)>,
}

impl Prober {
    pub(crate) fn start(log: Arc<dyn EventLog>) -> Self {
        let (tx, rx) = mpsc::channel(PROBE_QUEUE_MAX);
        tokio::spawn(run(log, rx));
        Self { tx }
    }

    /// The versions of `keys` in the log, as committed when the probe ran (after this
    /// call began). `None` when the prober is full or gone: the caller is overloaded.
    pub(crate) async fn versions(
        &self,
        keys: ProbeKeys,
    ) -> Option<Result<[u64; 2], Arc<StoreError>>> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((keys, reply)).ok()?;
        rx.await.ok()
    }
}

async fn run(log: Arc<dyn EventLog>, mut rx: mpsc::Receiver<(ProbeKeys, ProbeReply)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < PROBE_BATCH_MAX {
            match rx.try_recv() {
                Ok(probe) => batch.push(probe),
                Err(_) => break,
            }
        }
        let keys: Vec<(&'static str, String)> = batch
            .iter()
            .flat_map(|(keys, _)| keys.iter().cloned())
            .collect();
        match log.stream_versions(&keys).await {
            Ok(versions) => {
                for ((_, reply), v) in batch.into_iter().zip(versions.chunks_exact(2)) {
                    let _ = reply.send(Ok([v[0], v[1]]));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
