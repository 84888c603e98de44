//! The projector against real PostgreSQL and real SQLite: the stored read models equal
//! a replay of the log after a random workload, after kills and redeliveries, with two
//! projectors on one database, and with a writer that commits late.

mod common;

use std::time::Duration;

use ledger_aggregates::{BrandId, MetricKey, Money, PeriodCommand, PlanId, Quantity};
use ledger_projections::LogPosition;
use ledger_projections::ReadModels;
use usage_ledger::store::READ_MODELS_PROJECTOR;
use usage_ledger::tail::projector::{
    Projector, ReadModelsConfig, CACHE_PERIODS_MIN, CATCH_UP_WAIT_MAX,
};
use usage_ledger::tail::rows::rows_of_all;

use common::workload::{assert_same, id, replay, request, stored, workload, BRANDS, COMMANDS};
use common::{engine_on, manual_clock, TestDb};

const CATCH_UP: Duration = Duration::from_secs(10);

async fn models_equal_a_replay_after_a_random_workload(db: &TestDb) {
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let projector = common::projector(store.clone()).await.expect("start");
    workload(&engine, 7, COMMANDS).await;
    assert!(projector.persist(CATCH_UP).await, "caught up");
    let (at, models) = stored(store.as_ref()).await;
    let replayed = replay(store.as_ref(), None).await;
    assert!(at > LogPosition::START, "{:?}", projector.status());
    assert!(
        replayed.periods().count() == BRANDS.len(),
        "every brand used"
    );
    assert!(
        replayed
            .overage_ledger
            .iter()
            .any(|(_, p)| p.totals().total > Money::ZERO),
        "the workload reaches overage: {:#?}",
        replayed.quota_summary
    );
    assert_same(&models, &replayed);
    let status = projector.status();
    assert_eq!(status.checkpoint, at);
    assert!(status.last_error.is_none(), "{status:?}");
    assert!(status.lag_ms.samples > 0);
}
on_both_stores!(
    models_equal_a_replay_after_a_random_workload,
    models_equal_a_replay_after_a_random_workload
);

async fn a_batch_folded_but_not_checkpointed_is_not_counted_twice(db: &TestDb) {
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    workload(&engine, 11, COMMANDS).await;
    // The state a crash leaves when rows are written and the checkpoint is not: the
    // first half of the log folded into the rows, the checkpoint still at the start.
    let head = store
        .read_log(LogPosition::START, None, 10_000)
        .await
        .unwrap();
    let half = &head[..head.len() / 2];
    let folded = half
        .iter()
        .map(|r| r.decode().expect("decodes"))
        .collect::<Vec<_>>();
    let rows = rows_of_all(&ReadModels::replay(&folded));
    store
        .replace_models(READ_MODELS_PROJECTOR, LogPosition::START, &rows)
        .await
        .expect("write rows only");
    // Restarted, the projector reads the first half again.
    let projector = common::projector(store.clone()).await.expect("start");
    assert!(projector.persist(CATCH_UP).await);
    let (_, models) = stored(store.as_ref()).await;
    assert_same(&models, &replay(store.as_ref(), None).await);
}
on_both_stores!(
    a_batch_folded_but_not_checkpointed_is_not_counted_twice,
    a_batch_folded_but_not_checkpointed_is_not_counted_twice
);

async fn projectors_killed_mid_run_and_a_rival_end_with_a_replay(db: &TestDb) {
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let load = {
        let engine = engine.clone();
        tokio::spawn(async move { workload(&engine, 23, COMMANDS).await })
    };
    // Projectors started and killed while the workload runs, each as a process of its
    // own: its own connection pool, closed when it is killed, so a transaction it had
    // open is rolled back by the server as at a process's death. And a rival projector
    // running throughout.
    let (_, rival_store) = db.stores().await;
    let rival = common::projector(rival_store).await.expect("rival");
    for _ in 0..5 {
        let (_, own) = db.stores().await;
        let p = common::projector(own.clone()).await.expect("start");
        tokio::time::sleep(Duration::from_millis(30)).await;
        p.abort();
        own.close().await;
    }
    load.await.expect("workload");
    let (_, own) = db.stores().await;
    let last = common::projector(own).await.expect("restart");
    assert!(last.persist(CATCH_UP).await);
    assert!(rival.persist(CATCH_UP).await);
    let (_, models) = stored(store.as_ref()).await;
    assert_same(&models, &replay(store.as_ref(), None).await);
}
on_both_stores!(
    projectors_killed_mid_run_and_a_rival_end_with_a_replay,
    projectors_killed_mid_run_and_a_rival_end_with_a_replay
);

/// An engine on `db` and the read models beside it, as the service wires them.
async fn engine_and_projector(
    db: &TestDb,
) -> (
    usage_ledger::engine::Engine,
    Projector,
    std::sync::Arc<dyn usage_ledger::store::ProjectionStore>,
) {
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let projector = Projector::follow(store.clone(), &engine, ReadModelsConfig::default())
        .await
        .expect("start");
    (engine, projector, store)
}

/// Every brand-period `replayed` knows reads the same from `projector`.
async fn assert_reads_equal(projector: &Projector, replayed: &ReadModels) {
    for (brand, period) in replayed.periods() {
        let read = projector.period(brand, period).await.expect("read");
        assert_eq!(
            read.as_deref(),
            replayed.period_models(brand, period).as_ref(),
            "{brand} {period}"
        );
    }
}

/// How many brand-period events the whole log holds (registry events aside).
async fn period_events_in_log(store: &dyn usage_ledger::store::ProjectionStore) -> u64 {
    let mut after = LogPosition::START;
    let mut count = 0;
    loop {
        let page = store.read_log(after, None, 1_000).await.expect("read log");
        let Some(last) = page.last() else {
            return count;
        };
        after = last.at;
        count += page
            .iter()
            .filter(|r| r.aggregate_type == "usage_period")
            .count() as u64;
    }
}

async fn reads_find_this_processs_commits_before_the_log_is_read_back(db: &TestDb) {
    // Beside its engine, the projector folds each commit of this process the moment it
    // commits. With the consumer stopped, so that nothing is read back from the log,
    // every read of a brand-period this process wrote still equals a replay of the log,
    // alerts and top-ups (which keep their log positions) included.
    let (engine, projector, store) = engine_and_projector(db).await;
    workload(&engine, 3, 40).await;
    assert!(projector.persist(CATCH_UP).await, "caught up");
    projector.abort();
    let stopped = projector.status();
    workload(&engine, 19, COMMANDS).await;
    let replayed = replay(store.as_ref(), None).await;
    assert!(
        replayed.active_alerts.iter().any(|(_, _, alerts)| alerts
            .iter()
            .any(|a| a.position > stopped.checkpoint.position)),
        "the workload raises alerts after the consumer stopped"
    );
    let started = std::time::Instant::now();
    assert_reads_equal(&projector, &replayed).await;
    // A read the lane had not taken would have waited for the stopped consumer for
    // CATCH_UP_WAIT_MAX, then answered stale (and failed above).
    assert!(
        started.elapsed() < CATCH_UP_WAIT_MAX,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(projector.reads_waited(), 0);
    assert_eq!(
        projector.status().checkpoint,
        stopped.checkpoint,
        "nothing was read back"
    );
}
on_both_stores!(
    reads_find_this_processs_commits_before_the_log_is_read_back,
    reads_find_this_processs_commits_before_the_log_is_read_back
);

async fn the_consumer_takes_its_processs_commits_as_handed_over_and_decodes_the_rest(db: &TestDb) {
    // Two processes write one log at once. The consumer beside one of them takes that
    // one's commits as its engine handed them over and decodes the other's from the
    // log; what it folds still equals a replay of the log.
    let (engine, projector, store) = engine_and_projector(db).await;
    let (other_log, _) = db.stores().await;
    let other = engine_on(other_log, manual_clock(), Default::default());
    tokio::join!(
        workload(&engine, 29, COMMANDS),
        workload(&other, 31, COMMANDS)
    );
    assert!(projector.persist(CATCH_UP).await, "caught up");
    let replayed = replay(store.as_ref(), None).await;
    let (_, models) = stored(store.as_ref()).await;
    assert_same(&models, &replayed);
    assert_reads_equal(&projector, &replayed).await;
    let handed = projector.events_handed_over();
    let period_events = period_events_in_log(store.as_ref()).await;
    assert!(
        handed > 0,
        "none of {period_events} brand-period events was taken as handed over"
    );
    assert!(
        handed < period_events,
        "the other process's events were decoded: {handed} of {period_events} handed over"
    );
}
on_both_stores!(
    the_consumer_takes_its_processs_commits_as_handed_over_and_decodes_the_rest,
    the_consumer_takes_its_processs_commits_as_handed_over_and_decodes_the_rest
);

async fn a_read_that_waits_for_the_consumer_is_counted(db: &TestDb) {
    // A read that must see a sequence the consumer has not folded yet waits for it, and
    // is counted once however long it waits; a read that finds it folded is not.
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let marks = std::sync::Arc::new(usage_ledger::tail::watermark::Watermarks::new());
    let projector = Projector::start(store.clone(), marks.clone(), ReadModelsConfig::default())
        .await
        .expect("start");
    let brand = id(BrandId::parse, "acme");
    starter_with_renders(&engine, &brand, 1).await;
    let period = ledger_aggregates::PeriodKey::containing(common::t0());
    let stream = ledger_aggregates::ids::period_stream_id(&brand, period);
    assert!(projector.catch_up(CATCH_UP).await);
    let held = projector.period(&brand, period).await.unwrap().unwrap();
    assert_eq!(projector.reads_waited(), 0);
    // As if this process had acknowledged the next record: the read waits for it.
    marks.acknowledge([(stream.as_str(), held.sequence + 1)]);
    let later = {
        let engine = engine.clone();
        let brand = brand.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let usage = PeriodCommand::RecordUsage {
                metric: id(MetricKey::parse, "renders_3d"),
                quantity: Quantity::new(1).unwrap(),
                occurred_at: None,
            };
            engine
                .execute(request(brand.as_str(), usage))
                .await
                .unwrap();
        })
    };
    let read = projector.period(&brand, period).await.unwrap().unwrap();
    later.await.unwrap();
    assert!(
        read.sequence > held.sequence,
        "{} then {}",
        held.sequence,
        read.sequence
    );
    assert_eq!(projector.reads_waited(), 1);
    projector.period(&brand, period).await.unwrap();
    assert_eq!(projector.reads_waited(), 1);
}
on_both_stores!(
    a_read_that_waits_for_the_consumer_is_counted,
    a_read_that_waits_for_the_consumer_is_counted
);

/// PostgreSQL: identity values are drawn before commit, so an event written by a
/// transaction that commits after later ones has a lower `position` than events
/// already projected. It must still be projected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_is_projected() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let projector = common::projector(store.clone()).await.expect("start");
    let record = |brand: &str| {
        request(
            brand,
            PeriodCommand::RecordUsage {
                metric: id(MetricKey::parse, "renders_3d"),
                quantity: Quantity::new(3).unwrap(),
                occurred_at: None,
            },
        )
    };
    for brand in ["source", "other"] {
        engine
            .set_plan(
                id(BrandId::parse, brand),
                id(PlanId::parse, "starter"),
                "admin".into(),
            )
            .await
            .unwrap();
        engine.execute(record(brand)).await.unwrap();
    }
    assert!(projector.persist(CATCH_UP).await);

    // A writer takes its transaction id and a position, then stalls.
    let pool = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    let mut late = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT aggregate_type, 'late:2026-11', sequence, event_type, event_version,
                replace(payload::text, '\"source\"', '\"late\"')::json, metadata
           FROM events WHERE aggregate_id = 'source:2026-11' ORDER BY sequence",
    )
    .execute(&mut *late)
    .await
    .unwrap();
    // Others commit after it started, with higher positions, and are acknowledged.
    for _ in 0..3 {
        engine.execute(record("other")).await.unwrap();
    }
    projector.catch_up(Duration::from_millis(300)).await;
    let (_, before) = stored(store.as_ref()).await;
    assert!(
        before
            .quota_summary
            .period(
                &id(BrandId::parse, "late"),
                ledger_aggregates::PeriodKey::containing(common::t0())
            )
            .is_none(),
        "not committed yet"
    );
    late.commit().await.unwrap();
    assert!(projector.persist(CATCH_UP).await);
    let (_, after) = stored(store.as_ref()).await;
    let late_rows = after
        .quota_summary
        .period(
            &id(BrandId::parse, "late"),
            ledger_aggregates::PeriodKey::containing(common::t0()),
        )
        .unwrap_or_else(|| {
            panic!(
                "the late writer's events are projected: {:?}",
                projector.status()
            )
        });
    assert_eq!(late_rows[&id(MetricKey::parse, "renders_3d")].current, 3);
    let other = after
        .quota_summary
        .period(
            &id(BrandId::parse, "other"),
            ledger_aggregates::PeriodKey::containing(common::t0()),
        )
        .unwrap();
    assert_eq!(other[&id(MetricKey::parse, "renders_3d")].current, 12);
    assert_same(&after, &replay(store.as_ref(), None).await);
    db.cleanup().await;
}

/// PostgreSQL: transaction ids are read back as text; the log must still be paged in
/// their numeric order, across a change in their number of digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_paged_in_numeric_transaction_order() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    engine
        .set_plan(
            id(BrandId::parse, "acme"),
            id(PlanId::parse, "starter"),
            "admin".into(),
        )
        .await
        .unwrap();
    // Two copies of acme's registry event, written as if by transactions 9 and 10:
    // lower than any real one, and "10" < "9" as text.
    let pool = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    for (xid, brand) in [("10", "ten"), ("9", "nine")] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, transaction_id)
             SELECT aggregate_type, $1, sequence, event_type, event_version, payload, metadata,
                    $2::text::xid8
               FROM events WHERE aggregate_id = 'acme'",
        )
        .bind(brand)
        .bind(xid)
        .execute(&pool)
        .await
        .unwrap();
    }
    let mut after = LogPosition::START;
    let mut read = Vec::new();
    // One event per page: each page must start where the previous one ended.
    while let Some(record) = store.read_log(after, None, 1).await.unwrap().pop() {
        after = record.at;
        read.push(record);
    }
    let order: Vec<u64> = read.iter().map(|r| r.at.transaction).collect();
    assert_eq!(read.len(), 3, "{order:?}");
    assert_eq!(&order[..2], &[9, 10]);
    assert_eq!(read[0].aggregate_id, "nine");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    db.cleanup().await;
}

/// Register `brand` on `starter` and record `renders` 3D renders for it.
async fn starter_with_renders(
    engine: &usage_ledger::engine::Engine,
    brand: &BrandId,
    renders: u64,
) {
    engine
        .set_plan(brand.clone(), id(PlanId::parse, "starter"), "admin".into())
        .await
        .unwrap();
    let usage = PeriodCommand::RecordUsage {
        metric: id(MetricKey::parse, "renders_3d"),
        quantity: Quantity::new(renders).unwrap(),
        occurred_at: None,
    };
    engine
        .execute(request(brand.as_str(), usage))
        .await
        .unwrap();
}

/// A projector with the smallest memory accepted, beside `engine`.
async fn smallest_projector(
    store: &std::sync::Arc<dyn usage_ledger::store::ProjectionStore>,
    engine: &usage_ledger::engine::Engine,
) -> Projector {
    let config = ReadModelsConfig {
        cache_periods_max: CACHE_PERIODS_MIN,
        ..ReadModelsConfig::default()
    };
    Projector::follow(store.clone(), engine, config)
        .await
        .expect("start")
}

async fn memory_stays_within_its_bound_and_evicted_periods_read_back_whole(db: &TestDb) {
    // More brand-periods are active than memory keeps: memory never holds more than its
    // bound, a changed brand-period is written before it is evicted, and every one, held
    // or reloaded from its row, reads back equal to a replay of the log.
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let projector = smallest_projector(&store, &engine).await;
    let brands: Vec<BrandId> = (0..CACHE_PERIODS_MIN + 700)
        .map(|i| id(BrandId::parse, &format!("brand-{i}")))
        .collect();
    futures::future::join_all(brands.iter().map(|b| starter_with_renders(&engine, b, 2))).await;
    assert!(projector.catch_up(CATCH_UP).await);
    assert!(
        projector.cached_periods() <= CACHE_PERIODS_MIN,
        "{} held",
        projector.cached_periods()
    );
    let replayed = replay(store.as_ref(), None).await;
    let period = ledger_aggregates::PeriodKey::containing(common::t0());
    for brand in &brands {
        let read = projector
            .period(brand, period)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("{brand} has models"));
        assert_eq!(
            Some(read.as_ref().clone()),
            replayed.period_models(brand, period)
        );
    }
    assert!(projector.cached_periods() <= CACHE_PERIODS_MIN);
}
on_both_stores!(
    memory_stays_within_its_bound_and_evicted_periods_read_back_whole,
    memory_stays_within_its_bound_and_evicted_periods_read_back_whole
);

async fn a_period_read_before_its_first_event_reads_its_events_after(db: &TestDb) {
    // A brand-period read while it has no event (remembered as empty) reads its first
    // events once they are written, here or by another process, also once memory has
    // evicted them.
    let (log, store) = db.stores().await;
    let (other_log, _) = db.stores().await;
    let here = engine_on(log, manual_clock(), Default::default());
    let there = engine_on(other_log, manual_clock(), Default::default());
    let projector = smallest_projector(&store, &here).await;
    let period = ledger_aggregates::PeriodKey::containing(common::t0());
    let (mine, theirs) = (id(BrandId::parse, "mine"), id(BrandId::parse, "theirs"));
    for brand in [&mine, &theirs] {
        for _ in 0..2 {
            let read = projector.period(brand, period).await.expect("read");
            assert!(read.is_none(), "{brand} has no event yet");
        }
    }
    let crowd: Vec<BrandId> = (0..CACHE_PERIODS_MIN + 10)
        .map(|i| id(BrandId::parse, &format!("crowd-{i}")))
        .collect();
    let writes = [(&here, &mine), (&there, &theirs)]
        .into_iter()
        .chain(crowd.iter().map(|b| (&here, b)));
    futures::future::join_all(writes.map(|(engine, brand)| starter_with_renders(engine, brand, 3)))
        .await;
    // Written here: the read waits for it. Written elsewhere: within the consumer's lag.
    assert!(projector.catch_up(CATCH_UP).await);
    assert!(projector.cached_periods() <= CACHE_PERIODS_MIN);
    let replayed = replay(store.as_ref(), None).await;
    for brand in [&mine, &theirs] {
        let read = projector.period(brand, period).await.expect("read");
        let read = read.unwrap_or_else(|| panic!("{brand} has models"));
        let renders = id(MetricKey::parse, "renders_3d");
        assert_eq!(read.quotas[&renders].current, 3, "{brand}");
        assert_eq!(
            Some(read.as_ref().clone()),
            replayed.period_models(brand, period)
        );
    }
}
on_both_stores!(
    a_period_read_before_its_first_event_reads_its_events_after,
    a_period_read_before_its_first_event_reads_its_events_after
);

/// PostgreSQL: a read-model write in progress holds no consumer back (it never writes
/// events), while any other transaction in progress still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_write_in_progress_does_not_hold_the_log_back() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let brand = id(BrandId::parse, "acme");
    let record = || {
        request(
            "acme",
            PeriodCommand::RecordUsage {
                metric: id(MetricKey::parse, "renders_3d"),
                quantity: Quantity::new(1).unwrap(),
                occurred_at: None,
            },
        )
    };
    engine
        .set_plan(brand, id(PlanId::parse, "starter"), "admin".into())
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    let logged = |n: usize| {
        let store = store.clone();
        async move {
            let read = store
                .read_log(LogPosition::START, None, 1_000)
                .await
                .unwrap();
            assert_eq!(read.len(), n, "{read:#?}");
        }
    };
    logged(1).await;

    // A transaction holding an id under the read-model writer's name is passed over.
    let mut writer = pool.begin().await.unwrap();
    sqlx::query(&format!(
        "SET LOCAL application_name = '{}'",
        usage_ledger::store::postgres::projection::READ_MODEL_WRITER
    ))
    .execute(&mut *writer)
    .await
    .unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *writer)
        .await
        .unwrap();
    engine.execute(record()).await.unwrap();
    logged(3).await; // PeriodOpened and UsageRecorded
    writer.rollback().await.unwrap();

    // Any other transaction in progress holds later commits back until it ends.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *other)
        .await
        .unwrap();
    engine.execute(record()).await.unwrap();
    logged(3).await;
    other.rollback().await.unwrap();
    logged(4).await;
    pool.close().await;
    db.cleanup().await;
}

/// An outbox on `db`: the same object as its log, on a new pool.
async fn outbox(db: &TestDb) -> std::sync::Arc<dyn usage_ledger::store::OutboxStore> {
    match (db.pg_url(), db.sqlite_path()) {
        (Some(url), _) => std::sync::Arc::new(
            usage_ledger::store::PostgresLog::connect(url)
                .await
                .expect("connect pg"),
        ),
        (None, Some(path)) => std::sync::Arc::new(
            usage_ledger::store::SqliteLog::open_in(path.parent().expect("a data directory"))
                .await
                .expect("open sqlite"),
        ),
        (None, None) => unreachable!("a test database is one or the other"),
    }
}

// The notices consumer writes its checkpoint with deliveries; a log with nothing to
// deliver moves it only when the consumer persists (every few seconds, or asked), not
// once per commit of the ledger.
async fn the_notices_checkpoint_moves_with_deliveries_not_with_every_commit(db: &TestDb) {
    use usage_ledger::store::NOTICES_CONSUMER;
    let (log, store) = db.stores().await;
    let engine = engine_on(log.clone(), manual_clock(), Default::default());
    engine
        .set_plan(
            id(BrandId::parse, "acme"),
            id(PlanId::parse, "starter"),
            "admin".into(),
        )
        .await
        .unwrap();
    let start = store.checkpoint(NOTICES_CONSUMER).await.unwrap();
    let consumer = usage_ledger::tail::notices::NoticeConsumer::new(
        store.clone(),
        log,
        outbox(db).await,
        engine.clone(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
        None,
    );
    let tail = usage_ledger::tail::Tail::start(store.clone(), consumer)
        .await
        .expect("start");
    for _ in 0..20 {
        // Crosses 50 %, 75 % and 90 % of starter's 100 renders: notices nobody is sent.
        let usage = PeriodCommand::RecordUsage {
            metric: id(MetricKey::parse, "renders_3d"),
            quantity: Quantity::new(5).unwrap(),
            occurred_at: None,
        };
        engine.execute(request("acme", usage)).await.unwrap();
    }
    assert!(tail.catch_up(CATCH_UP).await);
    let end = tail.status().checkpoint;
    assert!(end > start, "{:?}", tail.status());
    assert_eq!(
        store.checkpoint(NOTICES_CONSUMER).await.unwrap(),
        start,
        "no delivery, no write"
    );
    assert!(tail.persist(CATCH_UP).await);
    assert_eq!(store.checkpoint(NOTICES_CONSUMER).await.unwrap(), end);
    tail.stop().await;
}
on_both_stores!(
    notices_checkpoint,
    the_notices_checkpoint_moves_with_deliveries_not_with_every_commit
);
