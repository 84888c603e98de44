//! The read models' consumer: folds the log into `ledger_projections` models kept in a
//! bounded memory, serves reads from there, and persists what changed in the store.
//!
//! Per batch it folds each brand-period the batch touches on its own: where memory
//! holds it (copied only while a reader or a write still holds it), or from its stored
//! row (one query for all those memory does not hold); then it keeps them as changed.
//! Changed brand-periods are written, with the checkpoint that covers them, in one
//! transaction (compare and set) at most every [`ReadModelsConfig::flush_interval`],
//! when [`ReadModelsConfig::flush_rows_max`] of them wait, when room must be made, or
//! when asked ([`Projector::persist`]): a hot brand-period folded a thousand times a
//! second is written once a second, not a thousand times. The write runs in a task of its own while folding goes on, so no
//! read waits for it. The folds deduplicate by stream sequence, so a batch folded again
//! after a crash (from the persisted checkpoint) counts once.
//!
//! Memory holds at most [`ReadModelsConfig::cache_periods_max`] brand-periods, least
//! recently used evicted; one not yet written is written before it may be evicted, so
//! a brand-period missing from memory is always its stored row.
//!
//! Beside an engine ([`Projector::follow`]), this process's own commits are handed over
//! as they commit and kept beside memory until the consumer has folded as far; a read
//! folds them in when it needs them, so a read after a write never waits for the log,
//! and the consumer takes them as they are instead of decoding the log's copy.
//!
//! Several processes on one database each fold the whole log into their own memory;
//! the stored rows are written by whichever persists first, and one that finds the
//! checkpoint moved on either finds its rows covered or writes them from there.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::USAGE_PERIOD_TYPE;
use ledger_aggregates::{BrandId, PeriodKey};
use ledger_projections::{Delivery, LogPosition, LogRecord, PeriodModels, ProjectedEvent};
use lru::LruCache;
use tokio::sync::watch;

use super::rows::{models_from_row, row_of};
use super::watermark::{Required, Watermarks};
use super::{Consumer, Tail, TailError, TailStatus};
use crate::engine::{CommitListener, Engine};
use crate::store::{ModelRow, ProjectionStore, READ_MODELS_PROJECTOR};

/// How long a read waits for the models to hold what it must see before answering
/// from what they hold; the wait is logged.
pub const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(2);
/// Times a persist retries from a checkpoint another process moved.
const PERSIST_RETRIES_MAX: u32 = 8;
/// A stream with at most this many events in a batch is folded in memory under its
/// lock (microseconds); one with more, a hot brand's, is folded on a copy, whose cost
/// its events share, so that readers never wait for the fold.
const FOLD_IN_PLACE_EVENTS_MAX: usize = 64;

/// Limits of the read models' memory and writes.
#[derive(Debug, Clone)]
pub struct ReadModelsConfig {
    /// Brand-periods kept in memory. A brand-period's models are a few KiB: 100 Ki of
    /// them stay within a few hundred MiB, and hold every brand of a busy month.
    pub cache_periods_max: usize,
    /// Changed brand-periods are written at least this often: on restart, at most
    /// this much of the log is folded again.
    pub flush_interval: Duration,
    /// Changed brand-periods written in one transaction at most: a write stays in the
    /// tens of milliseconds.
    pub flush_rows_max: usize,
}

impl Default for ReadModelsConfig {
    fn default() -> Self {
        Self {
            cache_periods_max: 100_000,
            flush_interval: Duration::from_secs(1),
            flush_rows_max: 10_000,
        }
    }
}

/// Brand-periods remembered as having no event yet, so that reading a registered
/// brand's new period (every brand, on the first of the month) asks the store once, not
/// on every read. An id is a few dozen bytes: 100 Ki of them take a few MiB.
pub const ABSENT_PERIODS_MAX: usize = 100_000;

/// Brand-periods this process committed to that the consumer has not read back yet
/// (see [`Ahead`]): each is dropped once the consumer has folded as far, within
/// milliseconds while it keeps up. Past this many (the consumer stalled), commits are
/// left to the consumer alone, and reads of them wait for it as before.
pub const AHEAD_PERIODS_MAX: usize = 10_000;
/// Committed events a brand-period keeps unfolded: past this, the commit folds them.
const AHEAD_EVENTS_MAX: usize = 256;

/// The smallest memory accepted: a batch touches up to this many brand-periods, and all
/// of them must fit at once.
pub const CACHE_PERIODS_MIN: usize = super::TAIL_BATCH_EVENTS_MAX as usize;

struct Entry {
    brand: BrandId,
    period: PeriodKey,
    models: Arc<PeriodModels>,
    /// Folded since the last write.
    changed: bool,
}

/// The memory readers and the consumer share.
struct Memory {
    entries: Mutex<LruCache<String, Entry>>,
    capacity: usize,
    /// Bumped after every folded batch: readers waiting for a stream look again.
    folded: watch::Sender<u64>,
    /// Brand-periods evicted so far. A reader's row is kept only if nothing was
    /// evicted while it was read: else the row may predate a fold written and evicted
    /// meanwhile, and memory must never hold a brand-period behind the consumer.
    evictions: AtomicU64,
    /// Brand-periods the consumer had folded no event of when a reader found no row
    /// for them. Locked only while `entries` is (in that order); the consumer removes
    /// an id when it keeps the brand-period's first models.
    absent: Mutex<LruCache<String, ()>>,
    /// This process's own commits, by stream id, handed over the moment they commit
    /// (see [`Lane`]) and dropped once the consumer has folded as far: a read takes
    /// them into account instead of waiting for the consumer, and the consumer takes
    /// them instead of decoding the log's copy. Locked after `entries` where both
    /// are, alone only to look events up. `entries` stay the consumer's alone, so what
    /// it must write before it evicts is still only what it folded.
    ahead: Mutex<HashMap<String, Ahead>>,
    /// Reads that waited for the consumer: for another process's writes they never do,
    /// so these are this process's commits memory could not take at once (a stream it
    /// no longer held), or every read while the watermarks overflowed.
    waits: AtomicU64,
    /// Events the consumer took as this process's commits handed them over, instead of
    /// decoding the log's copy.
    handed: AtomicU64,
}

/// What memory knows of a brand-period.
enum Held {
    Models(Arc<PeriodModels>),
    /// No event of it folded yet.
    Absent,
    /// Not in memory: its stored row says.
    Unknown,
}

impl Memory {
    fn get(&self, id: &str) -> Held {
        let mut entries = self.entries.lock().expect("models lock");
        let held = entries.get(id).map(|e| &e.models);
        let mut ahead = self.ahead.lock().expect("ahead lock");
        if let Some(models) = ahead.get_mut(id).and_then(|a| a.folded(held)) {
            return Held::Models(models);
        }
        drop(ahead);
        if let Some(models) = held {
            return Held::Models(models.clone());
        }
        match self.absent.lock().expect("absent lock").contains(id) {
            true => Held::Absent,
            false => Held::Unknown,
        }
    }

    /// Remember that a reader found no row for `id` (having seen `evictions` before
    /// reading), on the same conditions as [`Memory::offer`].
    fn offer_absent(&self, evictions: u64, id: String) {
        let entries = self.entries.lock().expect("models lock");
        let unchanged = self.evictions.load(Ordering::SeqCst) == evictions;
        if unchanged && !entries.contains(&id) {
            self.absent.lock().expect("absent lock").put(id, ());
        }
    }

    fn sequence(&self, id: &str) -> Option<u64> {
        let entries = self.entries.lock().expect("models lock");
        entries.peek(id).map(|e| e.models.sequence)
    }

    /// Keep a stored row a reader loaded (having seen `evictions` before reading it), if
    /// the consumer has not folded the stream meanwhile, nothing was evicted since,
    /// and there is room without evicting anything.
    fn offer(
        &self,
        evictions: u64,
        id: String,
        brand: BrandId,
        period: PeriodKey,
        models: Arc<PeriodModels>,
    ) {
        let mut entries = self.entries.lock().expect("models lock");
        let unchanged = self.evictions.load(Ordering::SeqCst) == evictions;
        if unchanged && entries.len() < self.capacity && !entries.contains(&id) {
            entries.put(
                id,
                Entry {
                    brand,
                    period,
                    models,
                    changed: false,
                },
            );
        }
    }
}

/// What this process committed to one brand-period since what memory held when it
/// did: the events, folded only when a read needs them (most are never read before the
/// consumer folds them itself), and the models they were last folded into.
#[derive(Default)]
struct Ahead {
    /// Models folded as far as a read (or a long run of commits) needed, if any.
    models: Option<Arc<PeriodModels>>,
    /// Committed events after `models` (or after what memory held), in sequence order,
    /// contiguous.
    events: Vec<ProjectedEvent>,
}

impl Ahead {
    /// The committed event at `sequence`, if it is kept here unfolded.
    fn event(&self, sequence: u64) -> Option<&ProjectedEvent> {
        let first = self.events.first()?.sequence;
        let at = usize::try_from(sequence.checked_sub(first)?).ok()?;
        self.events.get(at).filter(|e| e.sequence == sequence)
    }

    /// The last sequence committed here.
    fn tip(&self) -> u64 {
        match (self.events.last(), &self.models) {
            (Some(e), _) => e.sequence,
            (None, Some(m)) => m.sequence,
            (None, None) => 0,
        }
    }

    /// The models up to [`Ahead::tip`], folded onto the last fold or onto what `held`
    /// (memory's entry) holds, whichever is further. `None` when memory is as far
    /// (nothing to add), or when the events do not follow on either (memory lost the
    /// entry before any read needed them): the read then waits for the consumer, as
    /// for another process's write.
    fn folded(&mut self, held: Option<&Arc<PeriodModels>>) -> Option<Arc<PeriodModels>> {
        let held_at = held.map_or(0, |m| m.sequence);
        if self.tip() <= held_at {
            return None;
        }
        let own = self.models.as_ref().filter(|m| m.sequence >= held_at);
        let next = own.map_or(held_at, |m| m.sequence) + 1;
        let pending = self.events.iter().any(|e| e.sequence >= next);
        if pending && !self.events.iter().any(|e| e.sequence == next) {
            return None;
        }
        let mut base = match own {
            Some(_) => self.models.take().expect("seen just above"),
            None => held.cloned().unwrap_or_default(),
        };
        if pending {
            let models = Arc::make_mut(&mut base);
            for event in self.events.drain(..).filter(|e| e.sequence >= next) {
                models.apply(&event);
            }
        } else {
            self.events.clear();
        }
        self.models = Some(base.clone());
        Some(base)
    }
}

impl Memory {
    /// Keep the events this process just committed beside what memory holds of their
    /// brand-periods, in `ahead`: a read right after a write then finds it without
    /// waiting for the consumer. A stream is taken where its events follow on what
    /// memory (or `ahead`) holds, or start it; the rest waits for the consumer, as
    /// every commit of another process does. Runs on the writer's path: nothing is
    /// folded here unless a stream's unread events pass [`AHEAD_EVENTS_MAX`].
    fn committed(&self, events: Vec<ProjectedEvent>) {
        // Grouped by stream in the order the streams first appear, the events moved.
        let mut ids: Vec<String> = Vec::new();
        let slots: Vec<Option<usize>> = {
            let mut index: HashMap<(&BrandId, PeriodKey), usize> = HashMap::new();
            events
                .iter()
                .map(|event| {
                    let (brand, period, _) = event.as_period()?;
                    Some(*index.entry((brand, period)).or_insert_with(|| {
                        ids.push(period_stream_id(brand, period));
                        ids.len() - 1
                    }))
                })
                .collect()
        };
        let mut streams: Vec<Vec<ProjectedEvent>> = ids.iter().map(|_| Vec::new()).collect();
        for (event, slot) in events.into_iter().zip(slots) {
            if let Some(at) = slot {
                streams[at].push(event);
            }
        }
        let mut kept = false;
        let entries = self.entries.lock().expect("models lock");
        let mut ahead = self.ahead.lock().expect("ahead lock");
        for (id, events) in ids.into_iter().zip(streams) {
            let first = events[0].sequence;
            let held = entries.peek(&id).map(|e| &e.models);
            let held_at = held.map(|m| m.sequence);
            let full = ahead.len() >= AHEAD_PERIODS_MAX;
            match ahead.entry(id) {
                Slot::Occupied(mut o) if o.get().tip() >= held_at.unwrap_or(0) => {
                    let a = o.get_mut();
                    if a.tip() + 1 != first {
                        continue;
                    }
                    a.events.extend(events);
                    kept = true;
                    // Never read yet if it cannot be folded: dropping it loses nothing
                    // a reader was told.
                    if a.events.len() > AHEAD_EVENTS_MAX && a.folded(held).is_none() {
                        o.remove();
                    }
                }
                slot => {
                    // Nothing kept yet, or what was kept is behind memory: start over
                    // from what memory holds.
                    if held_at.map_or(first != 1, |at| at + 1 != first) {
                        if let Slot::Occupied(o) = slot {
                            o.remove();
                        }
                        continue;
                    }
                    let fresh = Ahead {
                        models: None,
                        events,
                    };
                    match slot {
                        Slot::Occupied(mut o) => {
                            o.insert(fresh);
                            kept = true;
                        }
                        Slot::Vacant(_) if full => {}
                        Slot::Vacant(v) => {
                            v.insert(fresh);
                            kept = true;
                        }
                    }
                }
            }
        }
        drop(ahead);
        drop(entries);
        // Readers waiting for one of these streams look again.
        if kept {
            self.folded.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Of `records`, record by record, the events this process's commits handed over
    /// that `ahead` still keeps unfolded: the same events, decoded already.
    fn handed_over(&self, records: &[LogRecord]) -> Vec<Option<ProjectedEvent>> {
        let ahead = self.ahead.lock().expect("ahead lock");
        if ahead.is_empty() {
            return vec![None; records.len()];
        }
        records
            .iter()
            .map(|record| {
                if record.aggregate_type != USAGE_PERIOD_TYPE {
                    return None;
                }
                let kept = ahead.get(&record.aggregate_id)?;
                let event = kept.event(u64::try_from(record.sequence).ok()?)?;
                (event.position == record.at.position).then(|| event.clone())
            })
            .collect()
    }

    /// Drop from `ahead` what memory now holds as far, of the streams just folded.
    fn passed(&self, streams: &[Stream]) {
        let entries = self.entries.lock().expect("models lock");
        let mut ahead = self.ahead.lock().expect("ahead lock");
        if ahead.is_empty() {
            return;
        }
        for stream in streams {
            let held = entries
                .peek(&stream.id)
                .map_or(stream.last_sequence(), |e| e.models.sequence);
            if ahead.get(&stream.id).is_some_and(|a| a.tip() <= held) {
                ahead.remove(&stream.id);
            }
        }
    }
}

/// What the engine tells the read models of this process's commits.
struct Lane(Arc<Memory>);

impl CommitListener for Lane {
    fn committed(&self, events: Vec<ProjectedEvent>) {
        self.0.committed(events);
    }
}

/// The read models' consumer and the reads it serves; cheap to clone.
#[derive(Clone)]
pub struct Projector {
    tail: Tail,
    memory: Arc<Memory>,
    marks: Arc<Watermarks>,
    store: Arc<dyn ProjectionStore>,
}

impl Projector {
    /// Start projecting `store`'s log into memory and its read-model rows. Reads wait
    /// for what `marks` says this process acknowledged.
    pub async fn start(
        store: Arc<dyn ProjectionStore>,
        marks: Arc<Watermarks>,
        config: ReadModelsConfig,
    ) -> Result<Self, TailError> {
        let capacity = config.cache_periods_max.max(CACHE_PERIODS_MIN);
        let memory = Arc::new(Memory {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).expect("at least CACHE_PERIODS_MIN"),
            )),
            capacity,
            folded: watch::Sender::new(0),
            evictions: AtomicU64::new(0),
            absent: Mutex::new(LruCache::new(
                NonZeroUsize::new(ABSENT_PERIODS_MAX).expect("the limit is not zero"),
            )),
            ahead: Mutex::new(HashMap::new()),
            waits: AtomicU64::new(0),
            handed: AtomicU64::new(0),
        });
        let consumer = ReadModelConsumer {
            store: store.clone(),
            memory: memory.clone(),
            marks: marks.clone(),
            changed: HashSet::new(),
            position: LogPosition::START,
            persisted: LogPosition::START,
            persisted_at: Instant::now(),
            pass_begun: 0,
            inflight: None,
            config,
        };
        let tail = Tail::start(store.clone(), consumer).await?;
        Ok(Self {
            tail,
            memory,
            marks,
            store,
        })
    }

    /// [`Projector::start`] beside `engine`: reads wait for what it acknowledged, and
    /// find its commits the moment they commit, before the consumer reads them back.
    pub async fn follow(
        store: Arc<dyn ProjectionStore>,
        engine: &Engine,
        config: ReadModelsConfig,
    ) -> Result<Self, TailError> {
        let projector = Self::start(store, engine.watermarks(), config).await?;
        let lane = Arc::new(Lane(projector.memory.clone()));
        if !engine.on_commit(lane) {
            tracing::warn!("the engine already tells another listener of its commits");
        }
        Ok(projector)
    }

    /// The models of one brand-period (`None` while it has no events), holding every
    /// write this process acknowledged on that stream before the call. Past
    /// [`CATCH_UP_WAIT_MAX`] the models answer as they are, and the lag is logged.
    pub async fn period(
        &self,
        brand: &BrandId,
        period: PeriodKey,
    ) -> Result<Option<Arc<PeriodModels>>, TailError> {
        let id = period_stream_id(brand, period);
        let need = match self.marks.required(&id) {
            Required::Nothing => 0,
            Required::Sequence(n) => n,
            Required::Pass => {
                self.memory.waits.fetch_add(1, Ordering::Relaxed);
                if !self.tail.catch_up(CATCH_UP_WAIT_MAX).await {
                    tracing::warn!(status = ?self.tail.status(), "read models are behind the log");
                }
                0
            }
        };
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT_MAX;
        let mut folded = self.memory.folded.subscribe();
        let mut waited = false;
        loop {
            let found = match self.memory.get(&id) {
                Held::Models(models) => Some(models),
                Held::Absent => None,
                // Not in memory: never folded here, or written and evicted, so its row.
                Held::Unknown => self.load(&id, brand, period).await?,
            };
            if found.as_ref().map_or(0, |m| m.sequence) >= need {
                if need > 0 {
                    self.marks.settle([(id.as_str(), need)]);
                }
                return Ok(found);
            }
            if !waited {
                waited = true;
                self.memory.waits.fetch_add(1, Ordering::Relaxed);
            }
            if !matches!(
                tokio::time::timeout_at(deadline, folded.changed()).await,
                Ok(Ok(()))
            ) {
                tracing::warn!(stream = id, status = ?self.tail.status(), "read models are behind the log");
                return Ok(found);
            }
        }
    }

    /// A brand-period's stored row, kept in memory if there is room.
    async fn load(
        &self,
        id: &str,
        brand: &BrandId,
        period: PeriodKey,
    ) -> Result<Option<Arc<PeriodModels>>, TailError> {
        let evictions = self.memory.evictions.load(Ordering::SeqCst);
        let rows = self
            .store
            .load_models(&[(brand.to_string(), period.to_string())])
            .await?;
        let Some(row) = rows.first() else {
            self.memory.offer_absent(evictions, id.to_owned());
            return Ok(None);
        };
        let (brand, period, models) = models_from_row(row)?;
        let models = Arc::new(models);
        self.memory
            .offer(evictions, id.to_owned(), brand, period, models.clone());
        Ok(Some(models))
    }

    /// Wait (at most `wait`) until memory holds every event committed before the call.
    pub async fn catch_up(&self, wait: Duration) -> bool {
        self.tail.catch_up(wait).await
    }

    /// [`Projector::catch_up`], then write every changed brand-period and the
    /// checkpoint: the stored rows are then those of memory.
    pub async fn persist(&self, wait: Duration) -> bool {
        self.tail.persist(wait).await
    }

    pub fn status(&self) -> TailStatus {
        self.tail.status()
    }

    /// Stop after the current batch, writing what changed.
    pub async fn stop(&self) {
        self.tail.stop().await;
    }

    /// Stop at once, as a killed process would: what was not written is folded again
    /// by the next start.
    pub fn abort(&self) {
        self.tail.abort();
    }

    pub fn reset_lag(&self) {
        self.tail.reset_lag();
    }

    /// The models of `period` held in memory, most recently folded or read first, at
    /// most `n`, and how many more there are: what per-brand metrics show, with no
    /// database round trip.
    pub fn recent(
        &self,
        period: PeriodKey,
        n: usize,
    ) -> (Vec<(BrandId, Arc<PeriodModels>)>, usize) {
        let entries = self.memory.entries.lock().expect("models lock");
        let mut of_period = entries.iter().filter(|(_, e)| e.period == period);
        let recent = of_period
            .by_ref()
            .take(n)
            .map(|(_, e)| (e.brand.clone(), e.models.clone()))
            .collect();
        (recent, of_period.count())
    }

    /// Reads since start that waited for the consumer to fold what they must see.
    pub fn reads_waited(&self) -> u64 {
        self.memory.waits.load(Ordering::Relaxed)
    }

    /// Events the consumer took as this process's commits handed them over since
    /// start; the rest of [`TailStatus::events_projected`] it decoded from the log.
    pub fn events_handed_over(&self) -> u64 {
        self.memory.handed.load(Ordering::Relaxed)
    }

    /// Brand-periods held in memory.
    pub fn cached_periods(&self) -> usize {
        self.memory.entries.lock().expect("models lock").len()
    }
}

struct ReadModelConsumer {
    store: Arc<dyn ProjectionStore>,
    memory: Arc<Memory>,
    marks: Arc<Watermarks>,
    /// Streams folded since the last write.
    changed: HashSet<String>,
    /// The last event folded into memory.
    position: LogPosition,
    /// What the stored rows and checkpoint cover.
    persisted: LogPosition,
    persisted_at: Instant,
    /// [`Watermarks::begin_pass`] when the current pass began.
    pass_begun: u64,
    /// The write of changed brand-periods in flight, if any.
    inflight: Option<Flush>,
    config: ReadModelsConfig,
}

/// One stream a batch touches, and its events in the batch, in order.
struct Stream {
    id: String,
    brand: BrandId,
    period: PeriodKey,
    events: Vec<ProjectedEvent>,
}

impl Stream {
    /// A hole between what the models hold (`sequence`) and the batch's events: the
    /// log was read wrong, and nothing of the batch may be folded.
    fn check(&self, mut sequence: u64) -> Result<(), TailError> {
        for event in &self.events {
            if event.sequence > sequence + 1 {
                return Err(TailError::Gap {
                    stream: self.id.clone(),
                    expected: sequence + 1,
                    got: event.sequence,
                });
            }
            sequence = sequence.max(event.sequence);
        }
        Ok(())
    }

    /// Fold the events, checked first ([`Stream::check`]); redeliveries count once.
    fn fold(&self, models: &mut PeriodModels) {
        for event in &self.events {
            let delivery = models.apply(event);
            debug_assert!(!matches!(delivery, Delivery::AppliedAfterGap { .. }));
        }
    }

    fn last_sequence(&self) -> u64 {
        self.events.last().map_or(0, |e| e.sequence)
    }
}

/// The batch's brand-period events, grouped by stream in the order the streams first
/// appear: this process's own as its commits handed them over (`handed`, by record),
/// the others decoded. Registry events change no read model (plans reach them as
/// period events).
fn by_stream(
    records: &[LogRecord],
    handed: Vec<Option<ProjectedEvent>>,
) -> Result<Vec<Stream>, TailError> {
    let mut streams: Vec<Stream> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (record, handed) in records.iter().zip(handed) {
        let event = match handed {
            Some(event) => event,
            None => record.decode()?,
        };
        let Some((brand, period, _)) = event.as_period() else {
            continue;
        };
        let at = *index
            .entry(record.aggregate_id.as_str())
            .or_insert_with(|| {
                streams.push(Stream {
                    id: record.aggregate_id.clone(),
                    brand: brand.clone(),
                    period,
                    events: Vec::new(),
                });
                streams.len() - 1
            });
        streams[at].events.push(event);
    }
    Ok(streams)
}

#[async_trait]
impl Consumer for ReadModelConsumer {
    fn name(&self) -> &'static str {
        READ_MODELS_PROJECTOR
    }

    async fn start(&mut self) -> Result<LogPosition, TailError> {
        let at = self.store.checkpoint(READ_MODELS_PROJECTOR).await?;
        self.position = at;
        self.persisted = at;
        self.pass_begun = self.marks.begin_pass();
        Ok(at)
    }

    async fn apply(
        &mut self,
        _from: LogPosition,
        records: &[LogRecord],
    ) -> Result<LogPosition, TailError> {
        let last = records
            .last()
            .expect("the loop hands over non-empty batches");
        let handed = self.memory.handed_over(records);
        let taken = handed.iter().flatten().count() as u64;
        let streams = by_stream(records, handed)?;
        let mut stored = self.load_missing(&streams).await?;
        // Every stream is checked before any is folded: a batch with a hole changes
        // nothing, and is read again (and refused again) on the next try.
        {
            let entries = self.memory.entries.lock().expect("models lock");
            for stream in &streams {
                let sequence = match entries.peek(&stream.id) {
                    Some(e) => e.models.sequence,
                    None => stored.get(&stream.id).map_or(0, |m| m.sequence),
                };
                stream.check(sequence)?;
            }
        }
        let folded = self.fold_held(&streams, &mut stored);
        self.keep(folded).await?;
        // Counted once folded: a batch refused and read again is not counted twice.
        self.memory.handed.fetch_add(taken, Ordering::Relaxed);
        self.memory.passed(&streams);
        self.marks
            .settle(streams.iter().map(|s| (s.id.as_str(), s.last_sequence())));
        self.memory.folded.send_modify(|n| *n = n.wrapping_add(1));
        self.position = last.at;
        // A log that never lets the consumer catch up still gets its writes on time.
        let due = self.persisted_at.elapsed() >= self.config.flush_interval;
        if due || self.changed.len() >= self.config.flush_rows_max {
            self.flush_soon().await?;
        } else if self.inflight.as_ref().is_some_and(|f| f.task.is_finished()) {
            // Marked written as soon as it is, so the next fold needs no copy.
            self.finish_flush().await?;
        }
        Ok(last.at)
    }

    async fn caught_up(&mut self, persist: bool) -> Result<(), TailError> {
        let memory = &self.memory;
        self.marks.sweep(self.pass_begun, |id| memory.sequence(id));
        self.pass_begun = self.marks.begin_pass();
        if persist {
            self.flush().await?;
        } else if self.persisted_at.elapsed() >= self.config.flush_interval {
            self.flush_soon().await?;
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), TailError> {
        self.flush().await
    }
}

impl ReadModelConsumer {
    /// The stored rows of the streams memory does not hold, in one query.
    async fn load_missing(
        &self,
        streams: &[Stream],
    ) -> Result<HashMap<String, PeriodModels>, TailError> {
        let keys: Vec<(String, String)> = {
            let entries = self.memory.entries.lock().expect("models lock");
            let absent = self.memory.absent.lock().expect("absent lock");
            streams
                .iter()
                .filter(|s| !entries.contains(&s.id) && !absent.contains(&s.id))
                .map(|s| (s.brand.to_string(), s.period.to_string()))
                .collect()
        };
        let mut stored = HashMap::with_capacity(keys.len());
        if !keys.is_empty() {
            for row in self.store.load_models(&keys).await? {
                let (brand, period, models) = models_from_row(&row)?;
                stored.insert(period_stream_id(&brand, period), models);
            }
        }
        Ok(stored)
    }

    /// Fold the streams memory holds where they are, and answer the others folded from
    /// their `stored` rows (or from nothing). A stream nobody reads (or writes) at the
    /// moment is folded in place; one still shared is copied first. A stream with more
    /// than [`FOLD_IN_PLACE_EVENTS_MAX`] events in the batch is folded on a copy,
    /// outside the lock, so readers never wait for it.
    fn fold_held<'a>(
        &mut self,
        streams: &'a [Stream],
        stored: &mut HashMap<String, PeriodModels>,
    ) -> Vec<(&'a Stream, Arc<PeriodModels>)> {
        let mut missing = Vec::new();
        let mut large = Vec::new();
        {
            let mut entries = self.memory.entries.lock().expect("models lock");
            for stream in streams {
                let Some(e) = entries.get_mut(&stream.id) else {
                    missing.push(stream);
                    continue;
                };
                if stream.events.len() > FOLD_IN_PLACE_EVENTS_MAX {
                    large.push((stream, PeriodModels::clone(&e.models)));
                    continue;
                }
                stream.fold(Arc::make_mut(&mut e.models));
                e.changed = true;
                self.changed.insert(stream.id.clone());
            }
        }
        for (stream, mut models) in large {
            stream.fold(&mut models);
            let mut entries = self.memory.entries.lock().expect("models lock");
            let e = entries
                .peek_mut(&stream.id)
                .expect("only the consumer evicts, and it is here");
            e.models = Arc::new(models);
            e.changed = true;
            self.changed.insert(stream.id.clone());
        }
        missing
            .into_iter()
            .map(|stream| {
                let mut models = stored.remove(&stream.id).unwrap_or_default();
                stream.fold(&mut models);
                (stream, Arc::new(models))
            })
            .collect()
    }

    /// Put the streams folded outside memory in it as changed, making room first.
    async fn keep(&mut self, folded: Vec<(&Stream, Arc<PeriodModels>)>) -> Result<(), TailError> {
        if folded.is_empty() {
            return Ok(());
        }
        loop {
            {
                let mut entries = self.memory.entries.lock().expect("models lock");
                let adding = folded
                    .iter()
                    .filter(|(s, _)| !entries.contains(&s.id))
                    .count();
                if make_room(&mut entries, &self.memory, adding) {
                    let mut absent = self.memory.absent.lock().expect("absent lock");
                    for (s, m) in &folded {
                        absent.pop(&s.id);
                        let entry = Entry {
                            brand: s.brand.clone(),
                            period: s.period,
                            models: m.clone(),
                            changed: true,
                        };
                        entries.put(s.id.clone(), entry);
                        self.changed.insert(s.id.clone());
                    }
                    return Ok(());
                }
            }
            // Only changed brand-periods stand in the way: write them, then evict.
            self.flush().await?;
        }
    }

    /// Write what changed now, and wait for it (and for a write in flight first).
    async fn flush(&mut self) -> Result<(), TailError> {
        self.finish_flush().await?;
        self.start_flush();
        self.finish_flush().await
    }

    /// Start a write of what changed unless one is in flight: folding goes on while it
    /// runs, so readers never wait for a write.
    async fn flush_soon(&mut self) -> Result<(), TailError> {
        if self
            .inflight
            .as_ref()
            .is_some_and(|f| !f.task.is_finished())
        {
            return Ok(());
        }
        self.finish_flush().await?;
        self.start_flush();
        Ok(())
    }

    /// Start writing every changed brand-period and the checkpoint that covers them, in
    /// a task of its own. Entries stay marked changed (not evictable) until it is done.
    fn start_flush(&mut self) {
        debug_assert!(self.inflight.is_none(), "one write at a time");
        self.persisted_at = Instant::now();
        if self.position <= self.persisted {
            // Another process persisted at least this far: its rows cover memory.
            let mut entries = self.memory.entries.lock().expect("models lock");
            for id in self.changed.drain() {
                if let Some(e) = entries.peek_mut(&id) {
                    e.changed = false;
                }
            }
            return;
        }
        let mut written = Vec::with_capacity(self.changed.len());
        let held: Vec<(BrandId, PeriodKey, Arc<PeriodModels>)> = {
            let entries = self.memory.entries.lock().expect("models lock");
            self.changed
                .drain()
                .filter_map(|id| {
                    let e = entries.peek(&id)?;
                    written.push((id, e.models.sequence));
                    Some((e.brand.clone(), e.period, e.models.clone()))
                })
                .collect()
        };
        let (store, from, to) = (self.store.clone(), self.persisted, self.position);
        let task = tokio::spawn(async move {
            // Thousands of rows take milliseconds to serialize: on a blocking thread,
            // so that the requests queued on a runtime worker do not wait for them.
            // The models are let go of before the write's round trips: the consumer
            // folds in place those nobody else holds.
            let rows: Vec<ModelRow> = tokio::task::spawn_blocking(move || {
                held.iter().map(|(b, p, m)| row_of(b, *p, m)).collect()
            })
            .await
            .map_err(write_failed)?;
            persist(store.as_ref(), from, to, &rows).await
        });
        self.inflight = Some(Flush { task, written });
    }

    /// Wait for the write in flight, if any: what it wrote is no longer changed (unless
    /// folded again since); what it failed to write is changed again.
    async fn finish_flush(&mut self) -> Result<(), TailError> {
        let Some(flush) = self.inflight.take() else {
            return Ok(());
        };
        let done = flush.task.await.unwrap_or_else(|e| Err(write_failed(e)));
        match done {
            Ok(persisted) => {
                self.persisted = self.persisted.max(persisted);
                let mut entries = self.memory.entries.lock().expect("models lock");
                for (id, sequence) in &flush.written {
                    if let Some(e) = entries.peek_mut(id) {
                        if e.models.sequence == *sequence {
                            e.changed = false;
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.changed
                    .extend(flush.written.into_iter().map(|(id, _)| id));
                Err(e)
            }
        }
    }
}

/// A read-model write (or its serialization) that panicked or was cancelled.
fn write_failed(e: tokio::task::JoinError) -> TailError {
    TailError::Store(crate::store::StoreError::Corrupt(format!(
        "read-model write task failed: {e}"
    )))
}

/// A write of changed brand-periods in flight.
struct Flush {
    task: tokio::task::JoinHandle<Result<LogPosition, TailError>>,
    /// What it writes, each stream at the sequence it was folded to: an entry still at
    /// that sequence once it is done is written (every fold moves the sequence on).
    written: Vec<(String, u64)>,
}

/// Write `rows` and move the checkpoint from `from` to `to` (compare and set). Answers
/// what the stored rows now cover: `to`, or further when another process (or a
/// rebuild) had already persisted further.
async fn persist(
    store: &dyn ProjectionStore,
    mut from: LogPosition,
    to: LogPosition,
    rows: &[ModelRow],
) -> Result<LogPosition, TailError> {
    for _ in 0..PERSIST_RETRIES_MAX {
        if store
            .save_models(READ_MODELS_PROJECTOR, from, to, rows)
            .await?
        {
            return Ok(to);
        }
        // Moved by another process (or a rebuild), only ever forwards.
        from = store.checkpoint(READ_MODELS_PROJECTOR).await?;
        if from >= to {
            return Ok(from);
        }
    }
    Err(TailError::Store(crate::store::StoreError::Conflict(
        format!("the read-model checkpoint kept moving for {PERSIST_RETRIES_MAX} attempts"),
    )))
}

/// Evict unchanged brand-periods, least recently used first, until `adding` more fit.
/// `false` when a changed one stands in the way: it must be written first.
fn make_room(entries: &mut LruCache<String, Entry>, memory: &Memory, adding: usize) -> bool {
    while entries.len() + adding > memory.capacity {
        match entries.peek_lru() {
            Some((_, e)) if !e.changed => {
                entries.pop_lru();
                memory.evictions.fetch_add(1, Ordering::SeqCst);
            }
            Some(_) => return false,
            None => return true,
        }
    }
    true
}
