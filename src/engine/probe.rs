//! Version probes of reads, batched: a pure check or a read of the engine's state
//! appends nothing, so it learns from no conflict that another process wrote first; it
//! asks the log how far its streams are before it is answered. Callers that ask while a
//! probe is in flight share the next one: one query for all of them, and none of it on
//! the writer's path.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{EventLog, StoreError};

/// Probes waiting for the prober: as many as the engine's queue holds commands.
pub const PROBE_QUEUE_MAX: usize = 65_536;
/// Probes answered by one query: at most 1,024 streams keep it one fast index walk.
pub const PROBE_BATCH_MAX: usize = 512;

/// The streams of one read: a check's registry and period, or one stream.
pub(crate) type ProbeKeys = Vec<(&'static str, String)>;
type ProbeReply = oneshot::Sender<Result<Vec<u64>, Arc<StoreError>>>;

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

    /// The versions of `keys` in the log, in their order, as committed when the probe
    /// ran (after this call began). `None` when the prober is full or gone: the caller
    /// is overloaded.
    pub(crate) async fn versions(
        &self,
        keys: ProbeKeys,
    ) -> Option<Result<Vec<u64>, Arc<StoreError>>> {
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
        // Each stream once: checks of one brand share its registry and period streams.
        // `slots` holds, key after key of the batch, where its stream is in `distinct`.
        let mut distinct: Vec<(&'static str, String)> = Vec::new();
        let mut index: HashMap<(&'static str, &str), usize> = HashMap::new();
        let slots: Vec<usize> = batch
            .iter()
            .flat_map(|(keys, _)| keys)
            .map(|(t, id)| {
                *index.entry((*t, id.as_str())).or_insert_with(|| {
                    distinct.push((*t, id.clone()));
                    distinct.len() - 1
                })
            })
            .collect();
        let found = log
            .stream_versions(&distinct)
            .await
            .and_then(|v| match v.len() {
                n if n == distinct.len() => Ok(v),
                n => Err(StoreError::Corrupt(format!(
                    "{n} stream versions for {} streams",
                    distinct.len()
                ))),
            });
        match found {
            Ok(versions) => {
                let mut slots = slots.into_iter();
                for (keys, reply) in batch {
                    let mine = slots.by_ref().take(keys.len()).map(|i| versions[i]);
                    let _ = reply.send(Ok(mine.collect()));
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
