//! The dispatcher: claims due deliveries from the outbox for a lease, makes one attempt
//! each through the [`Sender`], and records it: delivered, retried later with
//! exponential backoff and jitter, or dead after [`ATTEMPTS_MAX`]. Each endpoint has a
//! few attempts in flight at most, so one slow receiver never delays the others; a
//! process that dies mid-attempt leaves the delivery due again when its lease ends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger_aggregates::notifications::ChannelKind;
use ledger_aggregates::BrandId;
use tokio::sync::{watch, Notify};

use super::{Endpoint, Notice, Sender};
use crate::engine::Engine;
use crate::metrics::DeliveryMetrics;
use crate::secret::Secret;
use crate::store::{load_registries, AfterAttempt, AttemptRow, DeliveryRow, EventLog, OutboxStore};

/// Attempts before a delivery is dead-lettered: with the backoff below, a receiver
/// down for two to four hours still gets it.
pub const ATTEMPTS_MAX: i64 = 15;
/// The first retry's delay; each later one doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// No retry waits longer than this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Attempts in flight per endpoint at most.
pub const ENDPOINT_IN_FLIGHT_MAX: usize = 4;
/// Attempts in flight in the whole process at most.
pub const IN_FLIGHT_MAX: usize = 64;
/// Deliveries claimed per pass at most.
pub const CLAIM_BATCH_MAX: i64 = 64;
/// A claim holds a delivery this long by default (`notify.claim_lease_seconds`): longer
/// than an attempt, so a live dispatcher finishes first, short enough that a dead one's
/// deliveries come back soon.
pub const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// A pass without a wake-up: retries come due, other instances enqueue.
pub const DISPATCH_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The wait before attempt `attempts + 1`, with "equal jitter": half the exponential
/// delay, plus a random part up to the other half, so receivers coming back are not hit
/// by every sender at once.
pub fn backoff(attempts: i64, random: f64) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << attempts.clamp(0, 20) as u32)
        .min(BACKOFF_MAX);
    let half = exp / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source answers");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// A running dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    pub wake: Arc<Notify>,
    stopping: watch::Sender<bool>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

struct Inner {
    outbox: Arc<dyn OutboxStore>,
    /// Where a brand's settings are read at each attempt: the log, not the engine's queue.
    log: Arc<dyn EventLog>,
    /// The clock.
    engine: Engine,
    sender: Sender,
    lease: Duration,
    metrics: Option<Arc<DeliveryMetrics>>,
    /// The dispatcher's own wake-up, rung when an attempt ends.
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<String>>,
    per_endpoint: Mutex<HashMap<(String, String), usize>>,
}

impl Dispatcher {
    pub fn start(
        outbox: Arc<dyn OutboxStore>,
        log: Arc<dyn EventLog>,
        engine: Engine,
        sender: Sender,
        lease: Duration,
        metrics: Option<Arc<DeliveryMetrics>>,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let (stopping, mut stop) = watch::channel(false);
        let inner = Arc::new(Inner {
            outbox,
            log,
            engine,
            sender,
            lease,
            metrics,
            wake: wake.clone(),
            in_flight: Mutex::default(),
            per_endpoint: Mutex::default(),
        });
        let woken = wake.clone();
        let task = tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    break;
                }
                let claimed = match inner.pass().await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "dispatching notices failed; retrying");
                        0
                    }
                };
                if claimed == 0 {
                    tokio::select! {
                        _ = woken.notified() => {}
                        _ = tokio::time::sleep(DISPATCH_POLL_INTERVAL) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        });
        Self {
            wake,
            stopping,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Stop claiming; attempts in flight finish on their own (their deliveries' leases
    /// bring back any that does not).
    pub async fn stop(&self) {
        let _ = self.stopping.send(true);
        let task = self.task.lock().expect("not poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Inner {
    /// Claim what is due and start an attempt for each; answers how many it claimed.
    async fn pass(self: &Arc<Self>) -> Result<usize, crate::store::StoreError> {
        let free = IN_FLIGHT_MAX.saturating_sub(self.in_flight.lock().expect("not poisoned").len());
        if free == 0 {
            return Ok(0);
        }
        let now = self.engine.now();
        let lease = now + chrono::Duration::from_std(self.lease).expect("an hour fits");
        // Endpoints with as many attempts in flight as they may are not claimed from.
        let busy: Vec<(String, String)> = self
            .per_endpoint
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, n)| **n >= ENDPOINT_IN_FLIGHT_MAX)
            .map(|(k, _)| k.clone())
            .collect();
        let claimed = self
            .outbox
            .claim_due(now, lease, CLAIM_BATCH_MAX.min(free as i64), &busy)
            .await?;
        let n = claimed.len();
        let mut taken = Vec::with_capacity(n);
        for d in claimed {
            let key = (d.brand_id.clone(), d.endpoint.clone());
            let free_slot = {
                let mut in_flight = self.in_flight.lock().expect("not poisoned");
                let mut per_endpoint = self.per_endpoint.lock().expect("not poisoned");
                let count = per_endpoint.entry(key).or_default();
                match in_flight.contains(&d.id) || *count >= ENDPOINT_IN_FLIGHT_MAX {
                    true => false,
                    false => {
                        *count += 1;
                        in_flight.insert(d.id.clone());
                        true
                    }
                }
            };
            match free_slot {
                true => taken.push(d),
                // One claim can hold more of an endpoint's deliveries than it may
                // attempt at once: the rest are due again, and wait for a free slot.
                false => self.outbox.release(&d.id, now).await?,
            }
        }
        // The brands' settings and secrets as they stand, read once for the claim.
        let resolved = self.endpoints(&taken).await;
        for (d, target) in taken.into_iter().zip(resolved) {
            let me = self.clone();
            tokio::spawn(async move {
                let id = d.id.clone();
                let key = (d.brand_id.clone(), d.endpoint.clone());
                if let Err(e) = me.attempt(d, target).await {
                    tracing::warn!(delivery = %id, error = %e, "recording a delivery attempt failed");
                }
                me.in_flight.lock().expect("not poisoned").remove(&id);
                {
                    let mut per_endpoint = me.per_endpoint.lock().expect("not poisoned");
                    if let Some(c) = per_endpoint.get_mut(&key) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            per_endpoint.remove(&key);
                        }
                    }
                }
                // A slot is free: what waited for it may be claimed now.
                me.wake.notify_one();
            });
        }
        Ok(n)
    }

    async fn attempt(
        &self,
        d: DeliveryRow,
        target: Result<(Endpoint, Notice), String>,
    ) -> Result<(), crate::store::StoreError> {
        let number = d.attempts + 1;
        let now = self.engine.now();
        let channel = match &target {
            Ok((Endpoint::Slack { .. }, _)) => Some("slack"),
            Ok((Endpoint::Zapier { .. }, _)) => Some("zapier"),
            Ok((Endpoint::Webhook { .. }, _)) => Some("webhook"),
            Ok((Endpoint::Email { .. }, _)) => Some("email"),
            // A removed endpoint or missing secrets: no channel to count it under.
            Err(_) => None,
        };
        let (status_code, error, duration, delivered) = match target {
            Ok((endpoint, notice)) => {
                let a = self.sender.attempt(&endpoint, &notice, &d.id, now).await;
                (a.status, a.error, a.duration, a.delivered)
            }
            Err(why) => (None, Some(why), Duration::ZERO, false),
        };
        // A revived dead letter starts a new round of attempts; numbers keep counting.
        let after = match (delivered, number % ATTEMPTS_MAX == 0) {
            (true, _) => AfterAttempt::Delivered,
            (false, true) => AfterAttempt::Dead,
            (false, false) => AfterAttempt::RetryAt(
                now + chrono::Duration::from_std(backoff(
                    (number - 1) % ATTEMPTS_MAX,
                    random_unit(),
                ))
                .expect("an hour fits"),
            ),
        };
        if let (Some(m), Some(channel)) = (&self.metrics, channel) {
            let outcome = if delivered { "delivered" } else { "failed" };
            m.attempts.with_label_values(&[channel, outcome]).inc();
            if after == AfterAttempt::Dead {
                m.dead_letters.with_label_values(&[channel]).inc();
            }
        }
        let attempt = AttemptRow {
            number,
            at: now,
            status_code: status_code.map(i64::from),
            error,
            duration_ms: duration.as_millis() as i64,
        };
        self.outbox.record_attempt(&d.id, &attempt, after).await
    }

    /// Where each delivery goes now, from its brand's settings as they stand (a removed
    /// endpoint is an error of its attempt), with its notice: one read of the brands'
    /// registries and one of their webhook secrets for the whole claim.
    async fn endpoints(&self, claimed: &[DeliveryRow]) -> Vec<Result<(Endpoint, Notice), String>> {
        let mut brands: Vec<BrandId> = claimed
            .iter()
            .filter_map(|d| BrandId::parse(&d.brand_id).ok())
            .collect();
        brands.sort();
        brands.dedup();
        let ids: Vec<String> = brands.iter().map(|b| b.to_string()).collect();
        let (registries, secrets) = match (
            load_registries(self.log.as_ref(), &brands).await,
            self.outbox.webhook_secrets(&ids).await,
        ) {
            (Ok(r), Ok(s)) => (r, s),
            (Err(e), _) | (_, Err(e)) => {
                return claimed.iter().map(|_| Err(e.to_string())).collect();
            }
        };
        let registries: HashMap<String, _> = registries
            .into_iter()
            .map(|(b, r)| (b.to_string(), r))
            .collect();
        claimed
            .iter()
            .map(|d| {
                let notice: Notice = serde_json::from_str(&d.notice)
                    .map_err(|e| format!("unreadable notice: {e}"))?;
                let registry = registries
                    .get(&d.brand_id)
                    .filter(|r| r.is_registered())
                    .ok_or("the brand is not registered")?;
                let setting = registry
                    .notifications
                    .endpoints
                    .iter()
                    .find(|e| e.id == d.endpoint)
                    .ok_or_else(|| {
                        format!(
                            "endpoint {} was removed from the brand's settings",
                            d.endpoint
                        )
                    })?;
                let url = || setting.url.clone().unwrap_or_default();
                let endpoint = match setting.channel {
                    ChannelKind::Slack => Endpoint::Slack { url: url() },
                    ChannelKind::Zapier => Endpoint::Zapier { url: url() },
                    ChannelKind::Email => Endpoint::Email {
                        to: setting.to.clone(),
                    },
                    ChannelKind::Webhook => {
                        let own = secrets
                            .iter()
                            .find(|(b, e, _)| *b == d.brand_id && *e == d.endpoint)
                            .map(|(_, _, s)| s.iter().cloned().map(Secret::new).collect())
                            .ok_or("the webhook's secrets are missing")?;
                        Endpoint::Webhook {
                            url: url(),
                            secrets: own,
                        }
                    }
                };
                Ok((endpoint, notice))
            })
            .collect()
    }
}

/// When a delivery's next attempt is, for a reader: `None` once it is finished.
pub fn next_attempt(d: &DeliveryRow) -> Option<DateTime<Utc>> {
    (d.status == crate::store::DELIVERY_PENDING).then_some(d.next_attempt_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_its_ceiling() {
        assert_eq!(backoff(0, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(0, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(16));
        assert_eq!(backoff(30, 1.0), BACKOFF_MAX);
        assert_eq!(backoff(30, 0.0), BACKOFF_MAX / 2);
        // The attempts span hours, not days.
        let total: Duration = (0..ATTEMPTS_MAX - 1).map(|n| backoff(n, 1.0)).sum();
        assert!(
            total > Duration::from_secs(3 * 3600) && total < Duration::from_secs(5 * 3600),
            "{total:?}"
        );
    }

    #[test]
    fn random_units_stay_in_the_unit_interval() {
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
