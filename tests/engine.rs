//! The command engine against real PostgreSQL and real SQLite: group commit, quotas
//! under concurrency, idempotency, restarts, snapshots and plan changes.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Duration;
use ledger_aggregates::{
    BrandId, IdempotencyKey, LedgerEvent, MetricKey, Money, PeriodCommand, PeriodKey, PlanId,
    Quantity,
};
use usage_ledger::clock::SystemClock;
use usage_ledger::engine::{Engine, EngineConfig, EngineError, PeriodRequest};

fn brand(s: &str) -> BrandId {
    BrandId::parse(s).unwrap()
}
fn metric(s: &str) -> MetricKey {
    MetricKey::parse(s).unwrap()
}
fn plan(s: &str) -> PlanId {
    PlanId::parse(s).unwrap()
}
fn q(n: u64) -> Quantity {
    Quantity::new(n).unwrap()
}
fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::parse(s).unwrap()
}

fn record(b: &str, m: &str, n: u64, k: Option<&str>) -> PeriodRequest {
    PeriodRequest {
        brand: brand(b),
        period: None,
        command: PeriodCommand::RecordUsage {
            metric: metric(m),
            quantity: q(n),
            occurred_at: None,
        },
        idempotency_key: k.map(key),
        metadata: Default::default(),
    }
}

fn consume(b: &str, m: &str, n: u64) -> PeriodRequest {
    PeriodRequest {
        brand: brand(b),
        period: None,
        command: PeriodCommand::CheckQuota {
            metric: metric(m),
            requested: q(n),
            consume: true,
            occurred_at: None,
        },
        idempotency_key: None,
        metadata: Default::default(),
    }
}

fn gauge(b: &str, m: &str, level: u64) -> PeriodRequest {
    PeriodRequest {
        brand: brand(b),
        period: None,
        command: PeriodCommand::SetGaugeLevel {
            metric: metric(m),
            level,
        },
        idempotency_key: None,
        metadata: Default::default(),
    }
}

use common::{engine, stream_len};

// Proves the basic path: a registered brand records usage, the answer carries the
// running total, and a new engine on the same database rebuilds the same state.
async fn recorded_usage_survives_a_restart(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    e.set_plan(brand("acme"), plan("starter"), "test".into())
        .await
        .unwrap();
    let a = e
        .execute(record("acme", "renders_3d", 4, None))
        .await
        .unwrap();
    let b = e
        .execute(record("acme", "renders_3d", 7, None))
        .await
        .unwrap();
    match &b.events[0].event {
        LedgerEvent::UsageRecorded {
            totals,
            marginal_cost,
            ..
        } => {
            assert_eq!(totals.current, 11);
            assert_eq!(totals.overage_units, 1);
            assert_eq!(*marginal_cost, Money::from_minor(100));
        }
        other => panic!("expected UsageRecorded, got {other:?}"),
    }
    // #1 PeriodOpened (not part of the answer), #2 the first record (40 %, no alert);
    // the second record (110 %) crosses 50, 75 and 90 % in the same commit.
    let seqs =
        |o: &usage_ledger::engine::Outcome| o.events.iter().map(|c| c.sequence).collect::<Vec<_>>();
    assert_eq!(seqs(&a), vec![2]);
    assert_eq!(seqs(&b), vec![3, 4, 5, 6]);
    let before = e
        .period_state(brand("acme"), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap();
    drop(e);
    let (e2, _) = engine(db).await;
    let after = e2
        .period_state(brand("acme"), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(after.unwrap().version, 6);
    assert_eq!(stream_len(&log, "acme:2026-11").await, 6);
}
on_both_stores!(
    recorded_usage_survives_a_restart,
    recorded_usage_survives_a_restart
);

// Proves that commands for unknown brands, unknown metrics and refused decisions
// change nothing: no event, not even a PeriodOpened.
async fn refused_commands_write_nothing(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    let err = e
        .execute(record("ghost", "renders_3d", 1, None))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::BrandNotRegistered(_)), "{err}");
    e.set_plan(brand("acme"), plan("starter"), "test".into())
        .await
        .unwrap();
    let err = e
        .execute(record("acme", "renders_4d", 1, None))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::UnknownMetric(_)), "{err}");
    let adjust = PeriodRequest {
        brand: brand("acme"),
        period: None,
        command: PeriodCommand::AdjustUsage {
            metric: metric("renders_3d"),
            delta: -5,
            actor: "support".into(),
            reason: "typo".into(),
        },
        idempotency_key: None,
        metadata: Default::default(),
    };
    let err = e.execute(adjust).await.unwrap_err();
    assert!(matches!(err, EngineError::Ledger(_)), "{err}");
    let check = PeriodRequest {
        brand: brand("acme"),
        period: None,
        command: PeriodCommand::CheckQuota {
            metric: metric("renders_3d"),
            requested: q(3),
            consume: false,
            occurred_at: None,
        },
        idempotency_key: None,
        metadata: Default::default(),
    };
    let pure = e.execute(check).await.unwrap();
    assert!(pure.events.is_empty());
    assert_eq!(pure.decision.unwrap().remaining, Some(10));
    assert_eq!(
        stream_len(&log, "acme:2026-11").await,
        0,
        "no PeriodOpened for refusals or pure checks"
    );
}
on_both_stores!(
    refused_commands_write_nothing,
    refused_commands_write_nothing
);

/// The refusal events of period stream `id`, and the refusals they count.
async fn refusals(log: &Arc<dyn usage_ledger::store::EventLog>, id: &str) -> (usize, u64) {
    let events = log
        .read_stream("usage_period", id, 0, 1_000_000)
        .await
        .unwrap();
    let counts: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type == "UsageDenied")
        .map(|e| {
            let p: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            p["usage_denied"]["count"].as_u64().unwrap_or(1)
        })
        .collect();
    (counts.len(), counts.iter().sum())
}

fn consume_keyed(b: &str, m: &str, n: u64, k: &str) -> PeriodRequest {
    PeriodRequest {
        idempotency_key: Some(key(k)),
        ..consume(b, m, n)
    }
}

// 10,000 refusals of an exhausted block quota within one window: the log holds the first
// alone and one event counting the rest once the engine drains, whatever the batching.
async fn ten_thousand_refusals_append_two_events_that_count_them_all(db: &common::TestDb) {
    let (e, log) = common::blocking_engine(db).await;
    e.set_plan(brand("acme"), plan("business"), "test".into())
        .await
        .unwrap();
    e.execute(consume("acme", "renders_3d", 50)).await.unwrap();
    for _ in 0..20 {
        let calls = (0..500).map(|_| e.execute(consume("acme", "renders_3d", 1)));
        for out in futures::future::join_all(calls).await {
            assert!(out.unwrap().refused());
        }
    }
    assert_eq!(
        refusals(&log, "acme:2026-11").await,
        (1, 1),
        "counted, not appended"
    );
    e.drain().await;
    assert_eq!(refusals(&log, "acme:2026-11").await, (2, 10_000));
}
on_both_stores!(
    ten_thousand_refusals,
    ten_thousand_refusals_append_two_events_that_count_them_all
);

// A refusal after its window carries the window's count and opens the next one; a keyed
// refusal retried is answered again, not counted again.
async fn a_refusal_after_the_window_carries_its_count(db: &common::TestDb) {
    let log = db.log().await;
    let catalog = ledger_aggregates::catalog::Catalog::from_toml(&common::blocking_renders_toml())
        .expect("the catalog parses");
    let clock = common::manual_clock();
    let e = Engine::start(
        log.clone(),
        Arc::new(catalog),
        clock.clone(),
        EngineConfig::default(),
    );
    e.set_plan(brand("acme"), plan("business"), "test".into())
        .await
        .unwrap();
    e.execute(consume("acme", "renders_3d", 50)).await.unwrap();
    for k in ["a", "b", "b", "c", "c", "c"] {
        let out = e
            .execute(consume_keyed("acme", "renders_3d", 1, k))
            .await
            .unwrap();
        assert!(out.refused());
    }
    assert_eq!(refusals(&log, "acme:2026-11").await, (1, 1));
    clock.advance(Duration::seconds(61));
    e.execute(consume("acme", "renders_3d", 1)).await.unwrap();
    let events = log
        .read_stream("usage_period", "acme:2026-11", 0, 1_000)
        .await
        .unwrap();
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().payload).unwrap();
    assert_eq!(
        last["usage_denied"]["count"], 3,
        "b, c and this one: {last}"
    );
    assert_eq!(
        last["usage_denied"]["first_at"]
            .as_str()
            .map(|t| t.starts_with("2026-11-15T12:00:00")),
        Some(true),
        "{last}"
    );
    e.drain().await;
    assert_eq!(refusals(&log, "acme:2026-11").await, (2, 4));
}
on_both_stores!(
    refusal_after_the_window,
    a_refusal_after_the_window_carries_its_count
);

async fn consume_concurrently(engines: &[Engine], tasks: usize) -> usize {
    let mut handles = Vec::new();
    for i in 0..tasks {
        let e = engines[i % engines.len()].clone();
        handles.push(tokio::spawn(async move {
            e.execute(consume("acme", "renders_3d", 1)).await
        }));
    }
    let mut allowed = 0;
    for h in handles {
        let out = h.await.unwrap().unwrap();
        if out.decision.unwrap().allowed {
            allowed += 1;
        }
    }
    allowed
}

// Proves there is no check-then-act race: 64 concurrent consumers of a block quota of
// 50 (business renders_3d, blocked for the test) get exactly 50 acceptances.
async fn sixty_four_consumers_of_a_block_quota_of_fifty_get_exactly_fifty(db: &common::TestDb) {
    let (e, log) = common::blocking_engine(db).await;
    e.set_plan(brand("acme"), plan("business"), "test".into())
        .await
        .unwrap();
    assert_eq!(consume_concurrently(std::slice::from_ref(&e), 64).await, 50);
    let state = e
        .period_state(brand("acme"), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.metric(&metric("renders_3d")).unwrap().current, 50);
    let events = log
        .read_stream("usage_period", "acme:2026-11", 0, 10_000)
        .await
        .unwrap();
    let count = |t: &str| events.iter().filter(|e| e.event_type == t).count();
    assert_eq!(count("UsageRecorded"), 50);
    e.drain().await;
    let (events, refused) = refusals(&log, "acme:2026-11").await;
    assert_eq!(refused, 14, "every refusal is counted once");
    assert!(events <= 2, "{events} refusal events in one window");
}
on_both_stores!(
    sixty_four_consumers,
    sixty_four_consumers_of_a_block_quota_of_fifty_get_exactly_fifty
);

// Proves two engine instances (two processes) on one database never oversell: a
// sequence conflict reloads the aggregate and decides again.
async fn two_engines_on_one_database_still_accept_exactly_fifty(db: &common::TestDb) {
    let (e1, log) = common::blocking_engine(db).await;
    let (e2, _) = common::blocking_engine(db).await;
    e1.set_plan(brand("acme"), plan("business"), "test".into())
        .await
        .unwrap();
    assert_eq!(
        consume_concurrently(&[e1.clone(), e2.clone()], 64).await,
        50
    );
    let events = log
        .read_stream("usage_period", "acme:2026-11", 0, 10_000)
        .await
        .unwrap();
    let recorded = events
        .iter()
        .filter(|e| e.event_type == "UsageRecorded")
        .count();
    assert_eq!(recorded, 50);
    let seqs: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
}
on_both_stores!(
    two_engines,
    two_engines_on_one_database_still_accept_exactly_fifty
);

// Proves an idempotency storm (same key from 20 tasks at once) writes one event and
// answers everyone with the same outcome.
async fn an_idempotency_storm_writes_one_event(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    e.set_plan(brand("acme"), plan("starter"), "test".into())
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..20 {
        let e = e.clone();
        handles.push(tokio::spawn(async move {
            e.execute(record("acme", "api_calls", 3, Some("req-42")))
                .await
        }));
    }
    let outs: Vec<_> = futures::future::join_all(handles)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(outs.iter().filter(|o| !o.replayed).count(), 1);
    let first = outs.iter().find(|o| !o.replayed).unwrap();
    for o in &outs {
        assert_eq!(o.events[0], first.events[0]);
    }
    let events = log
        .read_stream("usage_period", "acme:2026-11", 0, 100)
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "UsageRecorded")
            .count(),
        1
    );
}
on_both_stores!(idempotency_storm, an_idempotency_storm_writes_one_event);

// Proves keys hold across restarts (recorded in the log, not only in memory) and that
// the same key with another payload is refused.
async fn idempotency_keys_survive_restarts_and_refuse_other_payloads(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    e.set_plan(brand("acme"), plan("starter"), "test".into())
        .await
        .unwrap();
    let first = e
        .execute(record("acme", "api_calls", 3, Some("k-1")))
        .await
        .unwrap();
    assert!(!first.replayed);
    drop(e);
    let (e2, _) = engine(db).await;
    let again = e2
        .execute(record("acme", "api_calls", 3, Some("k-1")))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.events[0], first.events[0]);
    assert_eq!(again.decision, first.decision);
    let err = e2
        .execute(record("acme", "api_calls", 4, Some("k-1")))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::KeyReuse(_)), "{err}");
    let recorded = log
        .read_stream("usage_period", "acme:2026-11", 0, 100)
        .await
        .unwrap();
    assert_eq!(
        recorded
            .iter()
            .filter(|e| e.event_type == "UsageRecorded")
            .count(),
        1
    );
}
on_both_stores!(
    idempotency_across_restarts,
    idempotency_keys_survive_restarts_and_refuse_other_payloads
);

// Proves a key the log holds but memory does not (here: after a restart) is still
// caught when it arrives among fresh commands: fresh keys are taken as new without a
// lookup, the unique key index refuses the old one, and the whole batch is decided
// again with its keys looked up. Every fresh command is applied exactly once.
async fn an_old_key_among_fresh_ones_replays_and_applies_the_rest_once(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    e.set_plan(brand("acme"), plan("starter"), "test".into())
        .await
        .unwrap();
    let first = e
        .execute(record("acme", "api_calls", 3, Some("old-1")))
        .await
        .unwrap();
    e.execute(record("acme", "api_calls", 5, Some("old-2")))
        .await
        .unwrap();
    drop(e);
    let (e, _) = engine(db).await;
    let mut handles = Vec::new();
    let mut offer = |req: PeriodRequest| {
        let e = e.clone();
        handles.push(tokio::spawn(async move { e.execute(req).await }));
    };
    for i in 0..20 {
        offer(record("acme", "api_calls", 1, Some(&format!("fresh-{i}"))));
        if i == 10 {
            offer(record("acme", "api_calls", 3, Some("old-1")));
            offer(record("acme", "api_calls", 7, Some("old-2")));
        }
        if i % 4 == 0 {
            offer(record("acme", "api_calls", 1, None));
        }
    }
    let outs: Vec<_> = futures::future::join_all(handles)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let replayed: Vec<_> = outs
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .filter(|o| o.replayed)
        .collect();
    assert_eq!(replayed.len(), 1, "only old-1 is a replay");
    assert_eq!(replayed[0].events[0], first.events[0]);
    let refused: Vec<_> = outs.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        matches!(refused[0], EngineError::KeyReuse(_)),
        "{}",
        refused[0]
    );
    let recorded = log
        .read_stream("usage_period", "acme:2026-11", 0, 1_000)
        .await
        .unwrap();
    let usage: Vec<_> = recorded
        .iter()
        .filter(|e| e.event_type == "UsageRecorded")
        .collect();
    // 2 before the restart, 20 fresh keys, 5 without a key.
    assert_eq!(usage.len(), 27);
    let last: LedgerEvent = serde_json::from_str(&usage.last().unwrap().payload).unwrap();
    let LedgerEvent::UsageRecorded { totals, .. } = last else {
        panic!("not a usage event: {last:?}");
    };
    assert_eq!(totals.current, 3 + 5 + 20 + 5);
}
on_both_stores!(
    old_key_among_fresh_ones,
    an_old_key_among_fresh_ones_replays_and_applies_the_rest_once
);

// Proves snapshots are written every N events and a restart from snapshot + tail
// equals the state folded from scratch.
async fn a_restart_from_a_snapshot_equals_a_full_fold(db: &common::TestDb) {
    let log = db.log().await;
    let cfg = EngineConfig {
        snapshot_every_events: 10,
        ..EngineConfig::default()
    };
    let e = common::engine_on(log.clone(), common::manual_clock(), cfg.clone());
    e.set_plan(brand("acme"), plan("starter"), "test".into())
        .await
        .unwrap();
    for _ in 0..25 {
        e.execute(record("acme", "api_calls", 1, None))
            .await
            .unwrap();
    }
    let live = e
        .period_state(brand("acme"), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap()
        .unwrap();
    drop(e);
    let loaded = log
        .load_streams(&[("usage_period", "acme:2026-11".into())])
        .await
        .unwrap();
    let (snap_seq, _) = loaded[0].snapshot.clone().expect("a snapshot was written");
    assert!(snap_seq >= 10 && snap_seq as u64 <= live.version);
    assert_eq!(
        loaded[0].events.len() as u64,
        live.version - snap_seq as u64
    );
    let e2 = common::engine_on(log, common::manual_clock(), cfg);
    let reloaded = e2
        .period_state(brand("acme"), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reloaded, live);
}
on_both_stores!(snapshots, a_restart_from_a_snapshot_equals_a_full_fold);

/// acme on starter with 2 seats and 5 renders in November, the clock then moved to
/// mid-December, with nothing recorded in it yet.
async fn november_with_seats_then_mid_december(
    db: &common::TestDb,
) -> (Arc<dyn usage_ledger::store::EventLog>, Engine) {
    let log = db.log().await;
    let clock = common::manual_clock();
    let e = common::engine_on(log.clone(), clock.clone(), EngineConfig::default());
    e.set_plan(brand("acme"), plan("starter"), "test".into())
        .await
        .unwrap();
    e.execute(gauge("acme", "team_members", 2)).await.unwrap();
    e.execute(record("acme", "renders_3d", 5, None))
        .await
        .unwrap();
    clock.advance(Duration::days(30));
    (log, e)
}

// Proves gauges (seats) carry over into the next period while counters restart at 0,
// and a plan change lands in the open period as an event.
async fn gauges_carry_over_and_plan_changes_reach_the_open_period(db: &common::TestDb) {
    let (_, e) = november_with_seats_then_mid_december(db).await;
    let change = e
        .set_plan(brand("acme"), plan("professional"), "test".into())
        .await
        .unwrap();
    assert!(change.changed);
    // December had no event yet: it opens on starter (what it ran on so far) and the
    // upgrade splits it, in the same commit.
    assert_eq!(
        change.applied_to,
        Some(PeriodKey::parse("2026-12").unwrap())
    );
    e.execute(record("acme", "renders_3d", 1, None))
        .await
        .unwrap();
    let dec = e
        .period_state(brand("acme"), PeriodKey::parse("2026-12").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        dec.metric(&metric("team_members")).unwrap().current,
        2,
        "seats carried over"
    );
    assert_eq!(
        dec.metric(&metric("renders_3d")).unwrap().current,
        1,
        "counters restart"
    );
    assert_eq!(dec.plan().unwrap().id.as_str(), "professional");
    let plans: Vec<_> = dec.segments.iter().map(|s| s.plan_id.as_str()).collect();
    assert_eq!(plans, ["starter", "professional"]);
    let change = e
        .set_plan(brand("acme"), plan("business"), "test".into())
        .await
        .unwrap();
    assert_eq!(
        change.applied_to,
        Some(PeriodKey::parse("2026-12").unwrap())
    );
    let dec = e
        .period_state(brand("acme"), PeriodKey::parse("2026-12").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dec.plan().unwrap().id.as_str(), "business");
    let nov = e
        .period_state(brand("acme"), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        nov.plan().unwrap().id.as_str(),
        "starter",
        "a closed-out month keeps its plan"
    );
    let same = e
        .set_plan(brand("acme"), plan("business"), "test".into())
        .await
        .unwrap();
    assert!(!same.changed, "setting the same plan again changes nothing");
}
on_both_stores!(
    gauges_and_plans,
    gauges_carry_over_and_plan_changes_reach_the_open_period
);

fn check(b: &str, m: &str, n: u64) -> PeriodRequest {
    PeriodRequest {
        command: PeriodCommand::CheckQuota {
            metric: metric(m),
            requested: q(n),
            consume: false,
            occurred_at: None,
        },
        ..consume(b, m, n)
    }
}

// Proves a pure check in a month not opened yet decides as its opening would: a gauge
// at the level carried from the month before, a counter from 0. Checks of both kinds in
// one batch, and the month stays unopened.
async fn pure_checks_before_a_month_opens_see_carried_gauges(db: &common::TestDb) {
    let (log, e) = november_with_seats_then_mid_december(db).await;
    let (seats, renders) = tokio::join!(
        e.execute(check("acme", "team_members", 1)),
        e.execute(check("acme", "renders_3d", 1))
    );
    let seats = seats.unwrap().decision.unwrap();
    let renders = renders.unwrap().decision.unwrap();
    assert_eq!(seats.current, 2, "the seats carried over");
    assert_eq!(seats.remaining, seats.effective_limit.map(|l| l - 2));
    assert_eq!(renders.current, 0, "the counter restarts");
    assert_eq!(renders.remaining, renders.effective_limit);
    assert_eq!(
        stream_len(&log, "acme:2026-12").await,
        0,
        "pure checks open no period"
    );
}
on_both_stores!(
    pure_checks_before_opening,
    pure_checks_before_a_month_opens_see_carried_gauges
);

// Proves the bounded queue: with room for one job, a burst gets clear Overloaded errors
// and every command that was accepted is in the log.
async fn a_full_queue_answers_overloaded_and_loses_nothing_accepted(db: &common::TestDb) {
    let log = db.log().await;
    let cfg = EngineConfig {
        queue_commands_max: 1,
        ..EngineConfig::default()
    };
    let e = common::engine_on(log.clone(), Arc::new(SystemClock), cfg);
    e.set_plan(brand("acme"), plan("enterprise"), "test".into())
        .await
        .unwrap();
    // Polled together from one task, the 200 commands are all offered to the queue in
    // one pass, faster than the writer can take them: spawned tasks could instead be
    // scheduled one after the other and never find the queue full.
    let burst = (0..200).map(|_| e.execute(record("acme", "api_calls", 1, None)));
    let mut ok = 0;
    let mut overloaded = 0;
    for answer in futures::future::join_all(burst).await {
        match answer {
            Ok(_) => ok += 1,
            Err(EngineError::Overloaded) => overloaded += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(
        overloaded > 0,
        "a queue of one must overflow under a burst of 200"
    );
    let period = PeriodKey::containing(e.now());
    let state = e
        .period_state(brand("acme"), period)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.metric(&metric("api_calls")).unwrap().current, ok);
}
on_both_stores!(
    overload,
    a_full_queue_answers_overloaded_and_loses_nothing_accepted
);

// Proves crash safety: the engine's runtime is torn down mid-load; every command that
// was acknowledged before is in the log after a restart.
async fn every_acknowledged_command_survives_an_abort(db: &common::TestDb) {
    let log = db.log().await;
    let (e, _) = engine(db).await;
    e.set_plan(brand("acme"), plan("enterprise"), "test".into())
        .await
        .unwrap();
    drop(e);
    let acked = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (log2, acked2) = (log.clone(), acked.clone());
    rt.spawn(async move {
        let e = common::engine_on(log2, common::manual_clock(), EngineConfig::default());
        for i in 0..100_000u64 {
            let (e, acked) = (e.clone(), acked2.clone());
            tokio::spawn(async move {
                let k = format!("crash-{i}");
                if e.execute(record("acme", "api_calls", 1, Some(&k)))
                    .await
                    .is_ok()
                {
                    acked.lock().unwrap().insert(k);
                }
            });
            if i % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    rt.shutdown_background(); // the "crash": tasks and in-flight appends are abandoned
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "the load ran long enough to acknowledge commands ({})",
        acked.len()
    );
    let (e2, log3) = engine(db).await;
    let events = log3
        .read_stream("usage_period", "acme:2026-11", 0, 1_000_000)
        .await
        .unwrap();
    let recorded = events
        .iter()
        .filter(|e| e.event_type == "UsageRecorded")
        .count();
    assert!(
        recorded >= acked.len(),
        "{recorded} recorded < {} acknowledged",
        acked.len()
    );
    for k in acked.iter().take(200) {
        let out = e2
            .execute(record("acme", "api_calls", 1, Some(k)))
            .await
            .unwrap();
        assert!(
            out.replayed,
            "acknowledged key {k} is missing after restart"
        );
    }
}
on_both_stores!(crash_safety, every_acknowledged_command_survives_an_abort);

// Proves the failure path of pipelined appends: while the event table is unavailable
// (renamed away on purpose), callers get store errors and nothing is acknowledged; once
// it is back, the ledger holds exactly the acknowledged commands, none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_database_fails_callers_and_never_double_applies() {
    use sqlx::Executor;
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let (e, _) = engine(&db).await;
    e.set_plan(brand("acme"), plan("enterprise"), "test".into())
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The load runs until the table is back, however fast the engine is: a fixed number of
    // commands could all be done before the outage starts.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = |n: usize| {
        let (e, acked, failed, stop) = (e.clone(), acked.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (e, acked, failed, stop) =
                        (e.clone(), acked.clone(), failed.clone(), stop.clone());
                    tokio::spawn(async move {
                        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                            match e.execute(record("acme", "api_calls", 1, None)).await {
                                Ok(_) => acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                                Err(EngineError::Store(_)) => {
                                    failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                                }
                                Err(other) => panic!("unexpected {other}"),
                            };
                        }
                    })
                })
                .collect();
            futures::future::join_all(tasks).await;
        })
    };
    let running = load(32);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    admin
        .execute("ALTER TABLE events RENAME TO events_away")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    admin
        .execute("ALTER TABLE events_away RENAME TO events")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    running.await.unwrap();
    assert!(
        failed.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the outage must be seen by callers"
    );
    // A new engine reads only what was committed.
    let (e2, log) = engine(&db).await;
    let state = e2
        .period_state(brand("acme"), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap()
        .unwrap();
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(state.metric(&metric("api_calls")).unwrap().current, acked);
    let recorded = log
        .read_stream("usage_period", "acme:2026-11", 0, 100_000)
        .await
        .unwrap();
    assert_eq!(
        recorded
            .iter()
            .filter(|e| e.event_type == "UsageRecorded")
            .count() as u64,
        acked
    );
    // And the first engine, after the outage, goes on from the committed state.
    e.execute(record("acme", "api_calls", 1, None))
        .await
        .unwrap();
    let after = e
        .period_state(brand("acme"), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.metric(&metric("api_calls")).unwrap().current,
        acked + 1
    );
    admin.close().await;
    db.cleanup().await;
}

// Proves the append connection the log keeps between batches is checked after a pause:
// the server closed every connection (a restart, an idle timeout) while the engine was
// idle, and the next command is still recorded instead of failing on a dead socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_after_the_server_dropped_its_connections_succeeds() {
    use sqlx::Executor;
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let (e, log) = engine(&db).await;
    e.set_plan(brand("acme"), plan("enterprise"), "test".into())
        .await
        .unwrap();
    e.execute(record("acme", "api_calls", 1, None))
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    let dropped = admin
        .fetch_all(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    assert!(!dropped.is_empty(), "the engine's connections were dropped");
    tokio::time::sleep(
        usage_ledger::store::postgres::PG_APPENDER_PING_IDLE_AFTER
            + std::time::Duration::from_millis(100),
    )
    .await;
    e.execute(record("acme", "api_calls", 2, None))
        .await
        .expect("recorded on a fresh connection");
    assert_eq!(stream_len(&log, "acme:2026-11").await, 3);
    admin.close().await;
    db.cleanup().await;
}

async fn reads_see_what_another_process_appended(db: &common::TestDb) {
    // The reset CLI and a second instance write to the same log as a running server:
    // a read after their commit reflects it, although this engine has the stream cached.
    let (a, _) = engine(db).await;
    let (b, _) = engine(db).await;
    a.set_plan(brand("acme"), plan("starter"), "t".into())
        .await
        .unwrap();
    a.execute(record("acme", "renders_3d", 2, None))
        .await
        .unwrap();
    let period = ledger_aggregates::PeriodKey::containing(common::t0());
    let before = a
        .period_state(brand("acme"), period)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.metric(&metric("renders_3d")).unwrap().current, 2);

    b.execute(record("acme", "renders_3d", 5, None))
        .await
        .unwrap();
    b.set_plan(brand("acme"), plan("business"), "t".into())
        .await
        .unwrap();

    let after = a
        .period_state(brand("acme"), period)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.metric(&metric("renders_3d")).unwrap().current, 7);
    assert_eq!(after.plan().unwrap().id, plan("business"));
    let registry = a.brand_state(brand("acme")).await.unwrap().unwrap();
    assert_eq!(registry.plan.unwrap().id, plan("business"));
}
on_both_stores!(
    reads_see_what_another_process_appended,
    reads_see_what_another_process_appended
);

// Proves checks asked together, many of one brand and some of another, each decide on
// what another process appended to their own streams, although this engine had them
// cached: one probe answers all of them, each stream asked once.
async fn checks_asked_together_see_another_process_s_writes(db: &common::TestDb) {
    let (a, _) = engine(db).await;
    let (b, _) = engine(db).await;
    for name in ["acme", "globex"] {
        a.set_plan(brand(name), plan("starter"), "t".into())
            .await
            .unwrap();
        a.execute(record(name, "renders_3d", 1, None))
            .await
            .unwrap();
    }
    b.execute(record("acme", "renders_3d", 5, None))
        .await
        .unwrap();
    b.execute(record("globex", "renders_3d", 2, None))
        .await
        .unwrap();
    let names: Vec<&str> = (0..24)
        .map(|i| if i % 4 == 3 { "globex" } else { "acme" })
        .collect();
    let answers =
        futures::future::join_all(names.iter().map(|n| a.execute(check(n, "renders_3d", 1)))).await;
    for (name, answer) in names.iter().zip(answers) {
        let current = answer.unwrap().decision.unwrap().current;
        let expected = if *name == "acme" { 6 } else { 3 };
        assert_eq!(current, expected, "{name} as the other process left it");
    }
}
on_both_stores!(
    checks_together_see_other_writes,
    checks_asked_together_see_another_process_s_writes
);

/// What a pure check of acme's renders answers now.
async fn renders_checked(e: &Engine) -> u64 {
    let answer = e.execute(check("acme", "renders_3d", 1)).await.unwrap();
    answer.decision.unwrap().current
}

fn probes(e: &Engine) -> (u64, u64) {
    let c = e.probe_counts().snapshot();
    (c.past_follower, c.by_stream)
}

/// An engine following the log with acme on `plan_id`, one render recorded and checked
/// through it, and a second engine on the same log: another process.
async fn following_and_other(
    db: &common::TestDb,
    plan_id: &str,
) -> (Engine, usage_ledger::tail::Tail, Engine) {
    let (a, caches) = common::engine_following(db).await;
    let (b, _) = engine(db).await;
    a.set_plan(brand("acme"), plan(plan_id), "t".into())
        .await
        .unwrap();
    a.execute(record("acme", "renders_3d", 1, None))
        .await
        .unwrap();
    assert_eq!(renders_checked(&a).await, 1);
    (a, caches, b)
}

// Proves an engine whose caches follow the log decides pure checks and reads on what
// another process appended, whether its follower has read those events yet (they are
// then past it, and read by the probe) or not (the writer was told, and dropped the
// stream it had cached), without asking any stream's version.
async fn a_following_engine_sees_another_process_s_writes(db: &common::TestDb) {
    let (a, caches, b) = following_and_other(db, "starter").await;

    b.execute(record("acme", "renders_3d", 5, None))
        .await
        .unwrap();
    assert_eq!(renders_checked(&a).await, 6, "read by the probe or told");

    b.execute(record("acme", "renders_3d", 2, None))
        .await
        .unwrap();
    b.set_plan(brand("acme"), plan("business"), "t".into())
        .await
        .unwrap();
    assert!(caches.catch_up(std::time::Duration::from_secs(5)).await);
    assert_eq!(renders_checked(&a).await, 8, "told before the check");
    let registry = a.brand_state(brand("acme")).await.unwrap().unwrap();
    assert_eq!(registry.plan.unwrap().id, plan("business"));
    let (past, by_stream) = probes(&a);
    assert!(past >= 4, "{past} probes read past the follower");
    assert_eq!(by_stream, 0, "no stream's version was asked");
    caches.stop().await;
}
on_both_stores!(
    following_engine_sees_other_writes,
    a_following_engine_sees_another_process_s_writes
);

// Proves that when the follower has stopped (or lags) by more events than a probe reads
// past it, the probe asks each stream's version instead, and the check is still exact;
// while it stands there, later probes ask by stream without reading past it again.
async fn a_probe_past_a_stalled_follower_asks_each_stream(db: &common::TestDb) {
    let (a, caches, b) = following_and_other(db, "business").await;
    caches.stop().await;

    let more = usage_ledger::engine::PROBE_UNREAD_MAX as u64 + 10;
    let written = futures::future::join_all(
        (0..more).map(|_| b.execute(record("acme", "renders_3d", 1, None))),
    )
    .await;
    assert!(written.iter().all(Result::is_ok));
    let (_, asked_before) = probes(&a);
    assert_eq!(renders_checked(&a).await, 1 + more);
    let (_, asked) = probes(&a);
    assert_eq!(asked, asked_before + 1, "each stream's version was asked");

    // The follower still stands where it was found lagging: the next probes ask by
    // stream at once, without reading its unread events again.
    b.execute(record("acme", "renders_3d", 1, None))
        .await
        .unwrap();
    assert_eq!(renders_checked(&a).await, 2 + more);
    assert_eq!(renders_checked(&a).await, 2 + more);
    let c = a.probe_counts().snapshot();
    assert_eq!(c.by_stream, asked_before + 3);
    assert_eq!(c.follower_lagged, 1, "found lagging once");
}
on_both_stores!(
    stalled_follower_probe_asks_each_stream,
    a_probe_past_a_stalled_follower_asks_each_stream
);
