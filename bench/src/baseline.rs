//! The baseline: a stock cqrs-es setup (`CqrsFramework` on postgres-es) running the
//! same aggregate, one `execute` per command.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use cqrs_es::AggregateError;
use ledger_aggregates::period::{PeriodCommand, PeriodOpening, Stamped};
use ledger_aggregates::{Catalog, LedgerRules, UsagePeriodAggregate};
use sqlx::Executor;
use usage_ledger::store::PostgresLog;

use crate::db::tally_pg;
use crate::drive::{drive, setup_ok, Measured};
use crate::scenario::Scenario;
use crate::{bench_plan, metric, one, Args, BoxError};

/// A baseline command that loses the optimistic race this many times in a row is
/// counted as failed instead of retried forever: a livelock must show up as errors,
/// not as a benchmark that never ends.
const BASELINE_CONFLICT_RETRIES_MAX: u64 = 10_000;

pub(crate) async fn baseline(
    url: &str,
    scenario: &Scenario,
    args: &Args,
) -> Result<Measured, BoxError> {
    // Our migrations: postgres-es writes its seven columns, the rest take defaults.
    let log = PostgresLog::connect(url).await?;
    let pool = log.pool().clone();
    let cqrs = Arc::new(postgres_es::postgres_cqrs::<UsagePeriodAggregate>(
        pool.clone(),
        vec![],
        LedgerRules::default(),
    ));
    let catalog = Catalog::default_catalog();
    let plan = bench_plan(&catalog)?;
    let kinds = catalog.metric_kinds().clone();

    // Untimed: open every period, as the engine does on a brand's first command.
    let ids: Arc<Vec<String>> = Arc::new(
        (0..scenario.brands.len())
            .map(|b| scenario.stream_id(b))
            .collect(),
    );
    let brands = Arc::new(scenario.brands.clone());
    let period = scenario.period;
    let open = {
        let (cqrs, ids) = (cqrs.clone(), ids.clone());
        drive(ids.len(), args.submitters, None, move |b| {
            let (cqrs, ids) = (cqrs.clone(), ids.clone());
            let opening = PeriodOpening {
                brand_id: brands[b].clone(),
                period,
                plan: plan.clone(),
                metric_kinds: kinds.clone(),
                carried_levels: BTreeMap::new(),
            };
            let command = Stamped::new(opening, Utc::now());
            async move { execute_retrying(&cqrs, &ids[b], command).await }
        })
        .await
    };
    setup_ok("baseline: opening periods", &open)?;

    let record = |index: fn(&Scenario, usize) -> usize, count: usize| {
        let brand_of: Vec<usize> = (0..count).map(|i| index(scenario, i)).collect();
        let (cqrs, ids) = (cqrs.clone(), ids.clone());
        move |i: usize| {
            let (cqrs, ids) = (cqrs.clone(), ids.clone());
            let id = brand_of[i];
            let record = PeriodCommand::RecordUsage {
                metric: metric(),
                quantity: one(),
                occurred_at: None,
            };
            let command = Stamped::new(record, Utc::now());
            async move { execute_retrying(&cqrs, &ids[id], command).await }
        }
    };
    // The baseline keeps nothing in memory and its periods are open already: one
    // command per submitter warms the connections. A longer warm-up would only
    // lengthen the hot stream every later command reloads.
    let warm = args.submitters;
    let warm_run = drive(
        warm,
        args.submitters,
        None,
        record(Scenario::warmup_brand_index, warm),
    )
    .await;
    setup_ok("baseline: warm-up", &warm_run)?;
    if args.analyze {
        pool.execute("ANALYZE").await?;
    }
    let before = tally_pg(&pool).await?;
    let n = args.baseline_commands;
    let run = drive(
        n,
        args.submitters,
        args.deadline(),
        record(Scenario::brand_index, n),
    )
    .await;
    let tally = tally_pg(&pool).await?.since(before);
    pool.close().await;
    Ok(Measured {
        scenario: scenario.title.clone(),
        system: args.label("baseline: cqrs-es + postgres-es".into()),
        conflicts: Some(run.conflicts),
        run,
        events: tally.events,
        commits: tally.commits,
        remarks: Vec::new(),
        rounds: Vec::new(),
    })
}

/// One `execute`, retried on optimistic-lock conflicts; returns how many there were.
async fn execute_retrying(
    cqrs: &postgres_es::PostgresCqrs<UsagePeriodAggregate>,
    id: &str,
    command: Stamped,
) -> Result<u64, String> {
    let mut conflicts = 0;
    loop {
        match cqrs.execute(id, command.clone()).await {
            Ok(()) => return Ok(conflicts),
            Err(AggregateError::AggregateConflict) if conflicts < BASELINE_CONFLICT_RETRIES_MAX => {
                conflicts += 1;
            }
            Err(e) => return Err(format!("{id}: {e} (after {conflicts} conflicts)")),
        }
    }
}
