//! The live feed's core: single-use tickets that open a connection, and the hub that
//! fans committed summaries out to the connections whose scope wants them.
//!
//! The hub is fed by the log consumer `tail::live` (so only committed changes reach a
//! client) and read by the WebSocket connections of `http::live`. Each connection has a
//! bounded buffer; a connection whose buffer is full is kicked, so one slow client never
//! slows the consumer or the others. Tickets and connections are held in this process's
//! memory: a ticket opens a connection only on the instance that issued it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ledger_aggregates::{BrandId, PeriodKey};
use rust_decimal::Decimal;
use tokio::sync::{mpsc, watch, Notify};

use crate::ledger::summary::PeriodSummary;
use crate::metrics::LiveMetrics;

/// Tickets waiting to be used at most: a ticket is a few hundred bytes, 10,000 of them
/// stay under a few MiB whatever the clients ask.
pub const LIVE_TICKETS_MAX: usize = 10_000;
/// A ticket opens a connection within this: long enough for a browser to open the
/// socket right after asking, short enough that a leaked one is soon worthless.
pub const LIVE_TICKET_TTL: Duration = Duration::from_secs(30);
/// Random bytes of a ticket: 256 bits cannot be guessed.
pub const LIVE_TICKET_BYTES: usize = 32;
/// Brands one ticket may follow at most: a cockpit's page of brands, not the tenant list.
pub const LIVE_TICKET_BRANDS_MAX: usize = 100;
/// Open live connections at most: each holds a task and a buffer; beyond it the
/// upgrade answers 503.
pub const LIVE_CONNECTIONS_MAX: usize = 10_000;
/// Messages waiting for one client at most: a client this far behind is dropped rather
/// than let its backlog grow or slow the others.
pub const LIVE_BUFFER_MESSAGES: usize = 64;
/// A WebSocket ping this often; a client that answered nothing since the last one is
/// closed, so dead peers do not hold connections.
pub const LIVE_HEARTBEAT: Duration = Duration::from_secs(15);
/// Brands a pressure connection's snapshot holds at most on connect: the most pressed
/// ones of memory and the stored read models; later changes are all pushed.
pub const LIVE_PRESSURE_SNAPSHOT_BRANDS_MAX: usize = 500;
/// The highest pressure threshold a feed may ask for, in percent of a limit: usage may
/// pass its limit (overage), and ten times it is past anything a quota watch needs.
pub const LIVE_PRESSURE_PERCENT_MAX: u32 = 1_000;

/// Broadcast failures in a row after which one Sentry event is sent: one slow client is
/// routine, three with no success between them is a consumer or clients in trouble.
pub const LIVE_FAILURES_REPORTED_AFTER: u32 = 3;

/// What a connection follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// These brands, every change.
    Brands(Vec<BrandId>),
    /// Every brand whose highest metric percentage is at least this ("Quotas en
    /// tension"), and a brand that falls below once more, so the client sees it leave.
    Pressure(Decimal),
}

/// Why a ticket was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("unknown, used or expired live ticket")]
    Invalid,
    #[error("too many live tickets wait to be used; retry in a few seconds")]
    Full,
}

/// A ticket as issued.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// What a valid ticket opens.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Who asked for the ticket, for the logs.
    pub subject: String,
    pub scope: Scope,
}

struct Waiting {
    grant: Grant,
    expires_at: DateTime<Utc>,
}

/// One committed change of a brand-period, as every connection sees it.
#[derive(Debug)]
pub struct Update {
    pub summary: PeriodSummary,
    /// The last sequence of the brand-period stream the summary holds.
    pub sequence: u64,
    /// The highest usage percentage of the summary's metrics (0 without limits).
    pub pressure: Decimal,
    /// The message text, rendered by the first connection that sends it.
    text: OnceLock<Arc<str>>,
}

impl Update {
    pub fn new(summary: PeriodSummary, sequence: u64) -> Self {
        let pressure = pressure_of(&summary);
        Self {
            summary,
            sequence,
            pressure,
            text: OnceLock::new(),
        }
    }

    pub fn brand(&self) -> &BrandId {
        &self.summary.brand
    }

    pub fn period(&self) -> PeriodKey {
        self.summary.period
    }

    /// The message text, rendered once for every connection that sends it.
    pub fn text(&self, render: impl FnOnce(&Update) -> String) -> Arc<str> {
        self.text.get_or_init(|| render(self).into()).clone()
    }
}

/// The highest usage percentage of a summary's metrics with a limit.
pub fn pressure_of(summary: &PeriodSummary) -> Decimal {
    summary
        .metrics
        .iter()
        .filter_map(|m| {
            let limit = m.totals.effective_limit?;
            Some(ledger_aggregates::period::percentage(
                m.totals.current,
                limit,
            ))
        })
        .max()
        .unwrap_or(Decimal::ZERO)
}

/// The brands of `period` whose highest metric percentage is at least `threshold`,
/// most pressed first, at most `max`: from the models in memory and the stored rows
/// (memory wins, it is as new or newer), what a pressure connection's snapshot holds.
/// Like every read, it holds what was committed before it: it waits for the read
/// models to take that in (bounded, then answers from what they hold).
pub async fn pressed(
    ledger: &crate::ledger::Ledger,
    period: PeriodKey,
    threshold: Decimal,
    max: usize,
) -> Result<Vec<BrandId>, crate::ledger::QueryError> {
    if !ledger
        .projector
        .catch_up(crate::tail::projector::CATCH_UP_WAIT_MAX)
        .await
    {
        tracing::warn!(status = ?ledger.projector.status(), "read models are behind the log");
    }
    let mut found: HashMap<BrandId, Decimal> = HashMap::new();
    let rows = ledger
        .stores
        .projections
        .models_in_period(&period.to_string())
        .await?;
    for row in &rows {
        let (brand, _, models) = crate::tail::rows::models_from_row(row)
            .map_err(|e| crate::ledger::QueryError::Corrupt(e.to_string()))?;
        found.insert(brand, models_pressure(&models));
    }
    let (held, _) = ledger.projector.recent(period, usize::MAX);
    for (brand, models) in held {
        found.insert(brand, models_pressure(&models));
    }
    let mut pressed: Vec<(BrandId, Decimal)> =
        found.into_iter().filter(|(_, p)| *p >= threshold).collect();
    pressed.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    pressed.truncate(max);
    Ok(pressed.into_iter().map(|(b, _)| b).collect())
}

/// The highest usage percentage of a brand-period's read models.
fn models_pressure(models: &ledger_projections::PeriodModels) -> Decimal {
    models
        .quotas
        .values()
        .filter_map(|q| {
            let limit = q.effective_limit?;
            Some(ledger_aggregates::period::percentage(q.current, limit))
        })
        .max()
        .unwrap_or(Decimal::ZERO)
}

/// A connection as the hub knows it.
struct Subscriber {
    tx: mpsc::Sender<Arc<Update>>,
    /// Notified when the hub drops the connection for being too slow.
    kicked: Arc<Notify>,
}

struct PressureSubscriber {
    threshold: Decimal,
    sub: Subscriber,
    /// Brands sent to it that stood above the threshold, so their fall is sent too.
    shown: HashSet<BrandId>,
}

#[derive(Default)]
struct Routes {
    by_brand: HashMap<BrandId, HashMap<u64, Subscriber>>,
    pressure: HashMap<u64, PressureSubscriber>,
}

/// Tickets and connections of this process.
pub struct Hub {
    tickets: Mutex<HashMap<String, Waiting>>,
    routes: Mutex<Routes>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    /// Set when the service stops: every connection closes with "going away".
    closing: watch::Sender<bool>,
    pub metrics: Arc<LiveMetrics>,
    /// Broadcast failures since the last successful hand-over.
    failures_in_row: AtomicU32,
    /// Set when `failures_in_row` reached [`LIVE_FAILURES_REPORTED_AFTER`]; reported once
    /// the routes lock is released.
    report_due: AtomicBool,
}

/// A connection's place in the hub: its buffer's receiving end, and the notice of being
/// kicked. Dropping it unregisters the connection.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    scope: Scope,
    pub updates: mpsc::Receiver<Arc<Update>>,
    pub kicked: Arc<Notify>,
}

impl Subscription {
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unregister(self.id, &self.scope);
        self.hub.connections.fetch_sub(1, Ordering::SeqCst);
        self.hub.metrics.active_connections.dec();
    }
}

impl Hub {
    pub fn new(metrics: Arc<LiveMetrics>) -> Arc<Self> {
        Arc::new(Self {
            tickets: Mutex::new(HashMap::new()),
            routes: Mutex::new(Routes::default()),
            next_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            closing: watch::Sender::new(false),
            metrics,
            failures_in_row: AtomicU32::new(0),
            report_due: AtomicBool::new(false),
        })
    }

    /// A single-use ticket for `grant`, valid [`LIVE_TICKET_TTL`] from `now`.
    pub fn issue(&self, grant: Grant, now: DateTime<Utc>) -> Result<Ticket, TicketError> {
        let mut bytes = [0u8; LIVE_TICKET_BYTES];
        getrandom::fill(&mut bytes).expect("the OS provides randomness");
        let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let ttl = chrono::Duration::from_std(LIVE_TICKET_TTL).expect("a TTL of seconds");
        let expires_at = now + ttl;
        let mut tickets = self.tickets.lock().expect("tickets lock");
        if tickets.len() >= LIVE_TICKETS_MAX {
            tickets.retain(|_, w| w.expires_at > now);
        }
        if tickets.len() >= LIVE_TICKETS_MAX {
            return Err(TicketError::Full);
        }
        tickets.insert(ticket.clone(), Waiting { grant, expires_at });
        Ok(Ticket { ticket, expires_at })
    }

    /// Use `ticket` at `now`: it opens its grant once, before it expires.
    pub fn redeem(&self, ticket: &str, now: DateTime<Utc>) -> Result<Grant, TicketError> {
        let waiting = self.tickets.lock().expect("tickets lock").remove(ticket);
        match waiting {
            Some(w) if w.expires_at > now => Ok(w.grant),
            _ => Err(TicketError::Invalid),
        }
    }

    /// Room for one more connection, or `None` at [`LIVE_CONNECTIONS_MAX`].
    pub fn reserve_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let taken = self.connections.fetch_add(1, Ordering::SeqCst);
        if taken >= LIVE_CONNECTIONS_MAX {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ConnectionSlot {
            hub: Some(self.clone()),
        })
    }

    /// Register a connection on `scope` in the slot it reserved: from now on every
    /// update it wants lands in its buffer.
    pub fn subscribe(&self, mut slot: ConnectionSlot, scope: Scope) -> Subscription {
        let hub = slot.hub.take().expect("a slot is used once");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, updates) = mpsc::channel(LIVE_BUFFER_MESSAGES);
        let kicked = Arc::new(Notify::new());
        let sub = || Subscriber {
            tx: tx.clone(),
            kicked: kicked.clone(),
        };
        let mut routes = self.routes.lock().expect("routes lock");
        match &scope {
            Scope::Brands(brands) => {
                for b in brands {
                    routes
                        .by_brand
                        .entry(b.clone())
                        .or_default()
                        .insert(id, sub());
                }
            }
            Scope::Pressure(threshold) => {
                let p = PressureSubscriber {
                    threshold: *threshold,
                    sub: sub(),
                    shown: HashSet::new(),
                };
                routes.pressure.insert(id, p);
            }
        }
        self.metrics.active_connections.inc();
        Subscription {
            hub,
            id,
            scope,
            updates,
            kicked,
        }
    }

    fn unregister(&self, id: u64, scope: &Scope) {
        let mut routes = self.routes.lock().expect("routes lock");
        match scope {
            Scope::Brands(brands) => {
                for b in brands {
                    if let Some(subs) = routes.by_brand.get_mut(b) {
                        subs.remove(&id);
                        if subs.is_empty() {
                            routes.by_brand.remove(b);
                        }
                    }
                }
            }
            Scope::Pressure(_) => {
                routes.pressure.remove(&id);
            }
        }
    }

    /// Hand `updates` to every connection that wants them, never waiting: a full
    /// buffer kicks its connection.
    /// Whether any connection would take an update of `brand`: one following it, or one
    /// following the brands under pressure. The consumer reads no summary nobody wants.
    pub fn wants(&self, brand: &BrandId) -> bool {
        let routes = self.routes.lock().expect("routes lock");
        !routes.pressure.is_empty() || routes.by_brand.contains_key(brand)
    }

    pub fn publish(&self, updates: Vec<Arc<Update>>) {
        if updates.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let mut routes = self.routes.lock().expect("routes lock");
        let mut kicked = Vec::new();
        for update in &updates {
            if let Some(subs) = routes.by_brand.get(update.brand()) {
                for (id, sub) in subs {
                    if !self.offer(sub, update) {
                        kicked.push(*id);
                    }
                }
            }
            for (id, p) in routes.pressure.iter_mut() {
                let above = update.pressure >= p.threshold;
                let wanted = match above {
                    true => {
                        p.shown.insert(update.brand().clone());
                        true
                    }
                    false => p.shown.remove(update.brand()),
                };
                if wanted && !self.offer(&p.sub, update) {
                    kicked.push(*id);
                }
            }
        }
        // A kicked connection stops being offered anything; its task closes it.
        for id in kicked {
            for subs in routes.by_brand.values_mut() {
                subs.remove(&id);
            }
            routes.pressure.remove(&id);
        }
        drop(routes);
        if self.report_due.swap(false, Ordering::Relaxed) {
            crate::telemetry::report_live_failures(LIVE_FAILURES_REPORTED_AFTER);
        }
        self.metrics.last_snapshot.set(Utc::now().timestamp());
        self.metrics
            .broadcast_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Put `update` in `sub`'s buffer; `false` (and the connection told) when it is full.
    fn offer(&self, sub: &Subscriber, update: &Arc<Update>) -> bool {
        match sub.tx.try_send(update.clone()) {
            Ok(()) => {
                // Read first: the common case (no streak) writes nothing shared.
                if self.failures_in_row.load(Ordering::Relaxed) != 0 {
                    self.failures_in_row.store(0, Ordering::Relaxed);
                }
                true
            }
            // The connection is going away on its own: nothing to count.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.broadcast_failures.inc();
                self.count_failure();
                sub.kicked.notify_one();
                false
            }
        }
    }

    /// Count one broadcast failure; the streak's [`LIVE_FAILURES_REPORTED_AFTER`]th
    /// makes a report due (once per streak).
    fn count_failure(&self) {
        let in_row = self.failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_row == LIVE_FAILURES_REPORTED_AFTER {
            self.report_due.store(true, Ordering::Relaxed);
        }
    }

    /// Changes when the service stops.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Close every connection (the service is stopping).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Open connections now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A connection counted against [`LIVE_CONNECTIONS_MAX`] before its upgrade; released
/// if the upgrade never happens.
pub struct ConnectionSlot {
    hub: Option<Arc<Hub>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Arc<Hub> {
        Hub::new(Arc::new(LiveMetrics::unregistered()))
    }

    fn grant() -> Grant {
        Grant {
            subject: "user".to_owned(),
            scope: Scope::Brands(vec![BrandId::parse("acme").unwrap()]),
        }
    }

    #[test]
    fn a_live_ticket_opens_once_and_only_before_it_expires() {
        let hub = hub();
        let now = Utc::now();
        let t = hub.issue(grant(), now).unwrap();
        assert_eq!(t.ticket.len(), 43, "32 bytes in unpadded base64url");
        assert!(hub.redeem(&t.ticket, now).is_ok());
        assert_eq!(
            hub.redeem(&t.ticket, now).unwrap_err(),
            TicketError::Invalid
        );
        let late = hub.issue(grant(), now).unwrap();
        let after = now + chrono::Duration::seconds(31);
        assert_eq!(
            hub.redeem(&late.ticket, after).unwrap_err(),
            TicketError::Invalid
        );
    }

    #[test]
    fn three_broadcast_failures_in_a_row_make_one_report_due() {
        // Proves the streak is reported once at the threshold, and a success resets it.
        let hub = hub();
        for _ in 1..LIVE_FAILURES_REPORTED_AFTER {
            hub.count_failure();
        }
        assert!(!hub.report_due.load(Ordering::Relaxed));
        hub.count_failure();
        assert!(hub.report_due.swap(false, Ordering::Relaxed));
        hub.count_failure();
        assert!(!hub.report_due.load(Ordering::Relaxed), "once per streak");
        hub.failures_in_row.store(0, Ordering::Relaxed);
        for _ in 0..LIVE_FAILURES_REPORTED_AFTER {
            hub.count_failure();
        }
        assert!(hub.report_due.load(Ordering::Relaxed), "a new streak");
    }

    #[test]
    fn live_connections_beyond_the_limit_get_no_slot() {
        let hub = hub();
        let slots: Vec<_> = (0..LIVE_CONNECTIONS_MAX)
            .map(|_| hub.reserve_connection().unwrap())
            .collect();
        assert!(hub.reserve_connection().is_none());
        drop(slots);
        assert!(hub.reserve_connection().is_some());
    }
}
