//! Notices under full ingest: how long from a threshold crossing's commit to the first
//! attempt of its delivery reaching a receiver, and what the notices pipeline costs the
//! engine's rate. The ledger is started through the service's composition root
//! (`open_ledger`, then `Notices::start`) on a fresh PostgreSQL database; every brand
//! has one signed-webhook endpoint on a receiver in this process.
//!
//! Load: `--brands` brands on `starter` (renders_3d limit 10), `--commands` records,
//! every other one a render of the brand whose turn it is (ten per brand: 50, 75 and
//! 90 % crossed, three notices per brand), the rest API calls spread over the brands.
//! The same load runs first without the notices pipeline: the ceiling of the ratio.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use ledger_aggregates::notifications::{
    ChannelKind, EndpointSetting, NoticeKind, NotificationSettings,
};
use ledger_aggregates::{BrandId, MetricKey, PeriodCommand, PlanId};
use sqlx::Row;
use usage_ledger::clock::SystemClock;
use usage_ledger::config::Settings;
use usage_ledger::engine::PeriodRequest;
use usage_ledger::ledger::Ledger;
use usage_ledger::notify::Notices;
use usage_ledger::startup::open_ledger;

use crate::db::Server;
use crate::drive::{drive, histogram, setup_ok};
use crate::report::thousands;
use crate::{one, Args, BoxError, ACTOR};

/// The plan whose small render quota makes every brand cross its thresholds.
const NOTICES_PLAN: &str = "starter";
/// Renders per brand: 10 of starter's 10 cross 50, 75 and 90 %.
const RENDERS_PER_BRAND: usize = 10;
const CROSSINGS_PER_BRAND: usize = 3;
/// How long the deliveries may trail the load before the run is reported incomplete.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(120);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Arrivals at the receiver: notice id → when its first attempt arrived.
type Arrivals = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> &'static str {
    let at = Utc::now();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
        if let Some(id) = v["data"]["id"].as_str() {
            arrivals
                .lock()
                .expect("not poisoned")
                .entry(id.to_owned())
                .or_insert(at);
        }
    }
    "ok"
}

fn settings(url: &str) -> Settings {
    let mut s = Settings::default();
    s.store.database_url = Some(url.to_owned());
    s.notify.allow_http = true;
    s.notify.allow_private_addresses = true;
    s
}

/// One run of the load: its rate in commands per second.
async fn load(ledger: &Ledger, brands: &Arc<Vec<BrandId>>, args: &Args) -> Result<f64, BoxError> {
    let renders = MetricKey::parse("renders_3d")?;
    let calls = MetricKey::parse("api_calls")?;
    let render_commands = brands.len() * RENDERS_PER_BRAND;
    let total = args.commands.max(2 * render_commands);
    let (engine, brands) = (ledger.engine.clone(), brands.clone());
    let started = Instant::now();
    let run = drive(total, args.submitters, None, move |i| {
        let (brand, metric) = match i % 2 == 0 && i / 2 < render_commands {
            true => (brands[(i / 2) % brands.len()].clone(), renders.clone()),
            false => (brands[i % brands.len()].clone(), calls.clone()),
        };
        let engine = engine.clone();
        async move {
            engine
                .execute(PeriodRequest {
                    brand,
                    period: None,
                    command: PeriodCommand::RecordUsage {
                        metric,
                        quantity: one(),
                        occurred_at: None,
                    },
                    idempotency_key: None,
                    metadata: Default::default(),
                })
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    setup_ok("notices: load", &run)?;
    Ok(run.ops as f64 / started.elapsed().as_secs_f64())
}

async fn register(
    ledger: &Ledger,
    brands: &Arc<Vec<BrandId>>,
    hook: Option<&str>,
    args: &Args,
) -> Result<(), BoxError> {
    let plan = PlanId::parse(NOTICES_PLAN)?;
    let (engine, list) = (ledger.engine.clone(), brands.clone());
    let registered = drive(list.len(), args.submitters, None, move |b| {
        let (engine, brand, plan) = (engine.clone(), list[b].clone(), plan.clone());
        async move {
            engine
                .set_plan(brand, plan, ACTOR.into())
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    setup_ok("notices: registering brands", &registered)?;
    let Some(hook) = hook else {
        return Ok(());
    };
    for brand in brands.iter() {
        ledger
            .stores
            .outbox
            .set_webhook_secrets(
                brand.as_str(),
                &[("hook".to_owned(), vec![SECRET.to_owned()])],
            )
            .await?;
    }
    let settings = NotificationSettings {
        endpoints: vec![EndpointSetting {
            id: "hook".to_owned(),
            channel: ChannelKind::Webhook,
            url: Some(hook.to_owned()),
            to: Vec::new(),
            kinds: [NoticeKind::ThresholdCrossed].into_iter().collect(),
            secret_fingerprints: vec!["0000000000000000".to_owned()],
        }],
    };
    let (engine, list) = (ledger.engine.clone(), brands.clone());
    let set = drive(list.len(), args.submitters, None, move |b| {
        let (engine, brand, settings) = (engine.clone(), list[b].clone(), settings.clone());
        async move {
            engine
                .set_notifications(brand, settings, ACTOR.into())
                .await
                .map(|_| 0)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    setup_ok("notices: settings", &set)
}

/// Run the load without and with notices, and print the rates and the latencies.
pub(crate) async fn notices_run(server: &mut Server, args: &Args) -> Result<(), BoxError> {
    let brands: Arc<Vec<BrandId>> = Arc::new(
        (0..args.brands)
            .map(|n| BrandId::parse(&format!("notice-{n:05}")))
            .collect::<Result<_, _>>()?,
    );
    // The ceiling: the same ledger and load, no notices pipeline.
    let url = server.fresh().await?;
    let ledger = open_ledger(&settings(&url), Arc::new(SystemClock)).await?;
    register(&ledger, &brands, None, args).await?;
    let without = load(&ledger, &brands, args).await?;
    ledger.stop().await;
    ledger.stores.projections.close().await;
    server.drop_last().await;

    let arrivals: Arrivals = Arc::default();
    let receiver = Router::new()
        .route("/hook", post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let url = server.fresh().await?;
    let settings = settings(&url);
    let ledger = open_ledger(&settings, Arc::new(SystemClock)).await?;
    let notices = Notices::start(&ledger, &settings.notify, None).await?;
    register(&ledger, &brands, Some(&hook), args).await?;
    let with = load(&ledger, &brands, args).await?;
    let expected = brands.len() * CROSSINGS_PER_BRAND;
    let waited = Instant::now();
    while arrivals.lock().expect("not poisoned").len() < expected
        && waited.elapsed() < DRAIN_WAIT_MAX
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each crossing's commit, by the database's clock (the transaction's start).
    let pool = sqlx::PgPool::connect(&url).await?;
    let rows = sqlx::query(
        "SELECT aggregate_id, sequence, recorded_at FROM events WHERE event_type = 'ThresholdCrossed'",
    )
    .fetch_all(&pool)
    .await?;
    let got = arrivals.lock().expect("not poisoned").clone();
    let mut latency = histogram();
    let mut matched = 0;
    for row in &rows {
        let id: String = row.try_get(0)?;
        let seq: i64 = row.try_get(1)?;
        let committed: DateTime<Utc> = row.try_get(2)?;
        if let Some(arrived) = got.get(&format!("{id}#{seq}")) {
            matched += 1;
            let us = (*arrived - committed)
                .num_microseconds()
                .unwrap_or(i64::MAX)
                .max(1);
            latency.saturating_record(us as u64);
        }
    }
    pool.close().await;
    // The consumer's own share: commit to enqueued, as its loop measures it.
    let consumer = notices.tail.status().lag_ms;
    notices.stop().await;
    ledger.stop().await;
    ledger.stores.projections.close().await;
    server.drop_last().await;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!();
    println!(
        "notices: {} brands, {} submitters, {} crossings expected",
        thousands(brands.len() as f64),
        args.submitters,
        thousands(expected as f64)
    );
    println!("| run | commands/s | / without notices |");
    println!("| --- | ---: | ---: |");
    println!(
        "| without notices (ceiling) | {} | 100 % |",
        thousands(without)
    );
    println!(
        "| with notices | {} | {:.0} % |",
        thousands(with),
        100.0 * with / without
    );
    println!();
    println!(
        "crossings committed {}, first attempts received {}, of them matched {}",
        thousands(rows.len() as f64),
        thousands(got.len() as f64),
        thousands(matched as f64)
    );
    println!(
        "commit → first attempt received: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms (target p99 < 1,000 ms)",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latency.max() as f64 / 1000.0
    );
    println!(
        "of which commit → taken in by the notices consumer (every event, not only crossings): p50 {} ms, p99 {} ms, max {} ms",
        consumer.p50, consumer.p99, consumer.max
    );
    if matched < expected {
        return Err(format!("only {matched} of {expected} crossings reached the receiver").into());
    }
    Ok(())
}
