//! Prometheus metrics (`GET /metrics`): the original's quota metrics under their names
//! (`luneo_quota_*`) and the service's own (`ledger_*`). One registry per service, so
//! two services in one process (the tests) count apart.
//!
//! Every series is bounded by the catalog and the code, never by the brands: counters
//! and histograms carry plan and metric, not brand, so 100,000 brands are as many
//! series as one. Checks are counted per check and crossings per crossing, never per
//! read, and usage percentages are not capped.

use std::sync::Arc;

use ledger_aggregates::BrandId;
use ledger_projections::PeriodModels;
use rust_decimal::prelude::ToPrimitive;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The original's check-latency buckets (seconds), so its dashboards keep working.
pub const CHECK_DURATION_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0];
/// Request latency buckets (seconds): from a read served from memory (~1 ms) to the
/// request timeout.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Commands per append: 1 to the engine's largest batch.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Append latency buckets (seconds): a commit is a millisecond or two when healthy.
pub const APPEND_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The engine's own metrics, recorded by the writers.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    /// Commands in each committed append.
    pub batch_commands: prometheus::Histogram,
    pub append_seconds: prometheus::Histogram,
    /// Appends that met another process's write and were decided again.
    pub conflicts: IntCounter,
    /// Commands answered from an earlier command with the same idempotency key.
    pub idempotent_replays: IntCounter,
    /// Usage refused by a `block` limit, by how it came (record, check, gauge, reservation).
    pub refusals: IntCounterVec,
    /// The original's `luneo_quota_alerts_total`: one per threshold crossed and committed.
    pub alerts: IntCounterVec,
}

/// Live feed fan-out latency buckets (seconds): handing a batch's updates to every
/// connection's buffer is microseconds when healthy.
pub const BROADCAST_DURATION_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
];

/// The live feed's metrics (the seed's `luneo_observability_ws_*` names).
#[derive(Debug, Clone)]
pub struct LiveMetrics {
    pub active_connections: IntGauge,
    /// When the last summary was handed to the connections, unix seconds.
    pub last_snapshot: IntGauge,
    pub broadcast_seconds: prometheus::Histogram,
    /// Slow clients dropped and messages that could not be sent.
    pub broadcast_failures: IntCounter,
}

impl LiveMetrics {
    fn registered(registry: &Registry) -> Self {
        let live = Self::unregistered();
        for c in [
            Box::new(live.active_connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(live.last_snapshot.clone()),
            Box::new(live.broadcast_seconds.clone()),
            Box::new(live.broadcast_failures.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        live
    }

    /// The same metrics in no registry (unit tests).
    pub fn unregistered() -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let opts = HistogramOpts::new(
            "luneo_observability_ws_broadcast_duration_seconds",
            "Time to hand one batch's live updates to every connection's buffer.",
        )
        .buckets(BROADCAST_DURATION_BUCKETS.to_vec());
        Self {
            active_connections: gauge(
                "luneo_observability_ws_active_connections",
                "Open live feed connections.",
            ),
            last_snapshot: gauge(
                "luneo_observability_ws_last_snapshot_timestamp",
                "When the live feed last pushed a summary, unix seconds.",
            ),
            broadcast_seconds: prometheus::Histogram::with_opts(opts).expect("valid metric"),
            broadcast_failures: IntCounter::new(
                "luneo_observability_ws_broadcast_failures_total",
                "Live feed clients dropped for falling behind, and messages that could not be sent.",
            )
            .expect("valid metric"),
        }
    }
}

/// The channels notices go out on: the labels of the delivery series, each created at
/// 0 at start so a first dead letter counts as an increase.
pub const DELIVERY_CHANNELS: [&str; 4] = ["slack", "zapier", "webhook", "email"];

/// Notices delivered, failed and dead-lettered, by channel.
#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    /// `ledger_delivery_attempts_total{channel,outcome}`: `delivered` or `failed`.
    pub attempts: IntCounterVec,
    /// `ledger_delivery_dead_letters_total{channel}`: deliveries that ran out of attempts.
    pub dead_letters: IntCounterVec,
}

/// Everything the service exposes.
pub struct Metrics {
    registry: Registry,
    pub engine: Arc<EngineMetrics>,
    pub live: Arc<LiveMetrics>,
    pub deliveries: Arc<DeliveryMetrics>,
    /// `luneo_quota_checks_total{plan,metric,source,outcome}`: one per check.
    pub checks: IntCounterVec,
    /// `luneo_quota_check_duration_seconds{plan,metric,source,outcome}`.
    pub check_seconds: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    queued: IntGauge,
    queue_capacity: IntGauge,
    usage_percentage: GaugeVec,
    remaining_units: IntGaugeVec,
    overage_units: IntGaugeVec,
    summary_timestamp: IntGaugeVec,
    brands_untracked: IntGauge,
    lag_seconds: GaugeVec,
    consumed: IntGaugeVec,
    read_model_waits: IntCounter,
    probe_queries: IntCounterVec,
    probes: IntCounter,
    probe_follower_lagged: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let plan_metric = ["plan", "metric", "source", "outcome"];
        let engine = EngineMetrics {
            batch_commands: histogram(
                "ledger_engine_batch_commands",
                "Commands decided and committed in one append.",
                &[],
                BATCH_SIZE_BUCKETS,
            )
            .with_label_values(&[] as &[&str]),
            append_seconds: histogram(
                "ledger_engine_append_duration_seconds",
                "Time to commit one append to the event log.",
                &[],
                APPEND_DURATION_BUCKETS,
            )
            .with_label_values(&[] as &[&str]),
            conflicts: counter(
                "ledger_engine_conflicts_total",
                "Appends that met another process's write and were decided again.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            idempotent_replays: counter(
                "ledger_engine_idempotent_replays_total",
                "Commands answered from an earlier command with the same idempotency key.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            refusals: counter(
                "ledger_engine_refusals_total",
                "Usage refused by a block limit, by how it came.",
                &["via"],
            ),
            alerts: counter(
                "luneo_quota_alerts_total",
                "Threshold crossings committed, one per crossing.",
                &["plan", "metric", "severity", "overage_policy"],
            ),
        };
        let deliveries = DeliveryMetrics {
            attempts: counter(
                "ledger_delivery_attempts_total",
                "Attempts to deliver a notice, by channel and outcome.",
                &["channel", "outcome"],
            ),
            dead_letters: counter(
                "ledger_delivery_dead_letters_total",
                "Notice deliveries that ran out of attempts, by channel.",
                &["channel"],
            ),
        };
        for channel in DELIVERY_CHANNELS {
            deliveries.dead_letters.with_label_values(&[channel]);
            for outcome in ["delivered", "failed"] {
                deliveries.attempts.with_label_values(&[channel, outcome]);
            }
        }
        Self {
            engine: Arc::new(engine),
            live: Arc::new(LiveMetrics::registered(&registry)),
            deliveries: Arc::new(deliveries),
            checks: counter(
                "luneo_quota_checks_total",
                "Quota checks answered, one per check (not per unit).",
                &plan_metric,
            ),
            check_seconds: histogram(
                "luneo_quota_check_duration_seconds",
                "Time to answer a quota check.",
                &plan_metric,
                CHECK_DURATION_BUCKETS,
            ),
            http_requests: counter(
                "ledger_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_seconds: histogram(
                "ledger_http_request_duration_seconds",
                "Time to answer an HTTP request, by route template and method.",
                &["route", "method"],
                REQUEST_DURATION_BUCKETS,
            ),
            queued: gauge(
                "ledger_engine_queue_commands",
                "Commands waiting for the writers.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            queue_capacity: gauge(
                "ledger_engine_queue_capacity_commands",
                "Commands the writers' queues hold at most (engine.queue_commands_max).",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            usage_percentage: float_gauge(
                &registry,
                "luneo_quota_usage_percentage",
                "Usage of the effective limit in percent, not capped: above 100 is overage.",
                &["brand", "plan", "metric"],
            ),
            remaining_units: gauge(
                "luneo_quota_remaining_units",
                "Units left under the effective limit, holds left out.",
                &["brand", "plan", "metric"],
            ),
            overage_units: gauge(
                "luneo_quota_overage_units",
                "Billable units above the effective limit.",
                &["brand", "plan", "metric"],
            ),
            // The original's `luneo_quota_summary_timestamp`, renamed: promtool refuses a
            // name holding the type word `summary`, and a time is in `_timestamp_seconds`.
            summary_timestamp: gauge(
                "luneo_quota_last_change_timestamp_seconds",
                "When the brand-period last changed, unix seconds.",
                &["brand", "plan"],
            ),
            brands_untracked: gauge(
                "ledger_quota_brands_untracked",
                "Active brand-periods beyond the per-brand series limit, shown in no per-brand gauge.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            lag_seconds: {
                let opts = Opts::new(
                    "ledger_consumer_lag_seconds",
                    "Commit-to-consumer lag of a log consumer's events since start (p99).",
                );
                let g = GaugeVec::new(opts, &["consumer"]).expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registered once");
                g
            },
            consumed: gauge(
                "ledger_consumer_events",
                "Events a log consumer has taken in since start.",
                &["consumer"],
            ),
            probe_queries: counter(
                "ledger_engine_probe_queries_total",
                "Queries that told pure checks and reads how far the log is, by how they answered.",
                &["answered"],
            ),
            probes: counter(
                "ledger_engine_probes_total",
                "Pure checks and reads told how far the log is.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            probe_follower_lagged: counter(
                "ledger_engine_probe_follower_lagged_total",
                "Probes that found the engine_caches consumer lagging; the next ones ask each stream until it moves.",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            read_model_waits: {
                let c = IntCounter::new(
                    "ledger_read_model_waits_total",
                    "Reads of the read models that waited for their consumer to fold this process's writes.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            registry,
        }
    }

    /// The text exposition, with the sampled gauges set from what the scrape read.
    pub fn render(&self, sampled: Sampled) -> String {
        self.queued.set(sampled.queued as i64);
        self.queue_capacity.set(sampled.queue_capacity as i64);
        self.set_brands(&sampled.brands, sampled.brands_untracked);
        raise_to(&self.read_model_waits, sampled.read_model_waits);
        let probes = sampled.probes;
        for (answered, n) in [
            ("past_follower", probes.past_follower),
            ("by_stream", probes.by_stream),
        ] {
            raise_to(&self.probe_queries.with_label_values(&[answered]), n);
        }
        raise_to(&self.probes, probes.probes);
        raise_to(&self.probe_follower_lagged, probes.follower_lagged);
        for (consumer, lag_p99_ms, events) in sampled.consumers {
            self.lag_seconds
                .with_label_values(&[consumer])
                .set(lag_p99_ms as f64 / 1000.0);
            self.consumed
                .with_label_values(&[consumer])
                .set(events as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Raise `counter` to `total`, a running total kept elsewhere (the engine's, the read
/// models'): a counter only goes up, so a scrape adds what was counted since the last.
fn raise_to(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// What a scrape reads from the running parts.
pub struct Sampled {
    pub queued: usize,
    pub queue_capacity: usize,
    /// (consumer name, p99 lag in ms, events taken in).
    pub consumers: Vec<(&'static str, u64, u64)>,
    /// Reads of the read models that waited for the consumer, since start.
    pub read_model_waits: u64,
    /// How the engine's version probes were answered, since start.
    pub probes: crate::engine::ProbeTotals,
    /// The per-brand series: the most recently active brand-periods of the current
    /// period, at most [`BRAND_SERIES_MAX`].
    pub brands: Vec<(BrandId, Arc<PeriodModels>)>,
    pub brands_untracked: usize,
}

/// Brands with series of their own by default (`metrics.brand_series_max`): the most
/// recently active ones. Each has a few series per metric of its plan; 500 brands stay
/// in the tens of thousands of series whatever the number of tenants, and the rest are
/// counted in `ledger_quota_brands_untracked`.
pub const BRAND_SERIES_MAX: usize = 500;

impl Metrics {
    /// Replace the per-brand series by those of `brands`: a brand no longer among them
    /// loses its series rather than keeping a stale value.
    fn set_brands(&self, brands: &[(BrandId, Arc<PeriodModels>)], untracked: usize) {
        self.usage_percentage.reset();
        self.remaining_units.reset();
        self.overage_units.reset();
        self.summary_timestamp.reset();
        self.brands_untracked.set(untracked as i64);
        for (brand, models) in brands {
            let Some(plan) = models.cost.as_ref().map(|c| c.plan_id.to_string()) else {
                continue;
            };
            let mut last = None;
            for (metric, q) in &models.quotas {
                let labels = [brand.as_str(), plan.as_str(), metric.as_str()];
                if let (Some(limit), Some(_)) = (q.effective_limit, q.percentage) {
                    let pct = ledger_aggregates::period::percentage(q.current, limit);
                    self.usage_percentage
                        .with_label_values(&labels)
                        .set(pct.to_f64().unwrap_or(0.0));
                    let left = limit.saturating_sub(q.current + q.reserved);
                    self.remaining_units
                        .with_label_values(&labels)
                        .set(i64::try_from(left).unwrap_or(i64::MAX));
                }
                self.overage_units
                    .with_label_values(&labels)
                    .set(i64::try_from(q.overage_units).unwrap_or(i64::MAX));
                last = last.max(Some(q.updated_at));
            }
            if let Some(at) = last {
                self.summary_timestamp
                    .with_label_values(&[brand.as_str(), plan.as_str()])
                    .set(at.timestamp());
            }
        }
    }
}

/// A gauge of floating-point values, registered.
fn float_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}
