//! The raw ceiling: what PostgreSQL does with the engine's rows and no application work.

use std::sync::Arc;

use chrono::Utc;
use cqrs_es::Aggregate;
use ledger_aggregates::period::UsageVia;
use ledger_aggregates::{LedgerEvent, MetricTotals, Money, UsagePeriodAggregate};
use sqlx::{Connection, PgConnection};
/// The engine's own append statement, shared so the ceiling can never drift from it.
use usage_ledger::store::postgres::INSERT_EVENTS;
use usage_ledger::store::PostgresLog;

use crate::db::tally_pg;
use crate::drive::{drive, setup_ok, Measured, Run};
use crate::scenario::Scenario;
use crate::{metric, Args, BoxError};

/// Rows per statement of the raw ceiling: the batch size the reference numbers
/// (~166,000 rows/s) were taken with. The last statement may hold fewer.
pub(crate) const RAW_BATCH_ROWS_MAX: usize = 100;
/// Connections of the single-row raw insert: the issue's ~6,800 tx/s were measured with
/// 8, about what two cores keep busy while each connection waits for its commit.
const RAW_SINGLE_ROW_CONNECTIONS: usize = 8;

/// The statement of postgres-es, one row, in autocommit.
const INSERT_EVENT: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata)
VALUES ($1, $2, $3, $4, $5, $6::json, $7::json)";

/// One prepared row of the raw ceiling.
struct RawRow {
    aggregate_id: String,
    sequence: i64,
    payload: String,
}

/// `n` rows spread over the scenario's streams like its commands, each stream's
/// sequences counting 1, 2, … so the primary key never conflicts. Payloads are real
/// serialized `UsageRecorded` events, running totals included.
fn raw_rows(scenario: &Scenario, n: usize) -> Vec<RawRow> {
    let mut next: Vec<u64> = vec![0; scenario.brands.len()];
    (0..n)
        .map(|i| {
            let b = scenario.brand_index(i);
            next[b] += 1;
            RawRow {
                aggregate_id: scenario.stream_id(b),
                sequence: next[b] as i64,
                payload: usage_payload(next[b]),
            }
        })
        .collect()
}

pub(crate) fn usage_payload(current: u64) -> String {
    let now = Utc::now();
    let event = LedgerEvent::UsageRecorded {
        metric: metric(),
        quantity: 1,
        via: UsageVia::Record,
        occurred_at: now,
        after_close: false,
        marginal_cost: Money::ZERO,
        totals: MetricTotals {
            current,
            billable: current,
            effective_limit: Some(9_999_999),
            overage_units: 0,
            overage_cost: Money::ZERO,
            held: 0,
        },
        at: now,
        hold: None,
    };
    serde_json::to_string(&event).expect("events always serialize")
}

pub(crate) async fn raw_batches(
    url: &str,
    scenario: &Scenario,
    args: &Args,
) -> Result<Measured, BoxError> {
    // Migrations through the real store, so the table is exactly the engine's.
    let pool = PostgresLog::connect(url).await?.pool().clone();
    // Warm-up rows come first in each stream, whole batches of them.
    let warm = args.warmup.div_ceil(RAW_BATCH_ROWS_MAX);
    let rows = Arc::new(raw_rows(
        scenario,
        warm * RAW_BATCH_ROWS_MAX + args.commands,
    ));
    let conn = Arc::new(tokio::sync::Mutex::new(PgConnection::connect(url).await?));
    // One submitter: sequential statements on one connection, the ceiling of one writer.
    let batch_op = |first: usize| {
        let (rows, conn) = (rows.clone(), conn.clone());
        move |b: usize| {
            let (rows, conn) = (rows.clone(), conn.clone());
            async move {
                let start = first + b * RAW_BATCH_ROWS_MAX;
                let chunk = &rows[start..(start + RAW_BATCH_ROWS_MAX).min(rows.len())];
                let mut conn = conn.lock().await;
                insert_batch(&mut conn, chunk)
                    .await
                    .map(|_| 0)
                    .map_err(|e| e.to_string())
            }
        }
    };
    setup_ok("raw: warm-up", &drive(warm, 1, None, batch_op(0)).await)?;
    let before = tally_pg(&pool).await?;
    let batches = args.commands.div_ceil(RAW_BATCH_ROWS_MAX);
    let first = warm * RAW_BATCH_ROWS_MAX;
    let run = drive(batches, 1, args.deadline(), batch_op(first)).await;
    let tally = tally_pg(&pool).await?.since(before);
    pool.close().await;
    Ok(Measured {
        scenario: scenario.title.clone(),
        system: format!("raw ceiling: {RAW_BATCH_ROWS_MAX}-row UNNEST, 1 conn"),
        // Rows, not statements: the ceiling is compared with events per second.
        run: Run {
            ops: tally.events,
            planned: args.commands as u64,
            ..run
        },
        events: tally.events,
        commits: tally.commits,
        conflicts: None,
        remarks: vec!["latency per 100-row statement".into()],
        rounds: Vec::new(),
    })
}

async fn insert_batch(conn: &mut PgConnection, chunk: &[RawRow]) -> Result<(), sqlx::Error> {
    let n = chunk.len();
    sqlx::query(INSERT_EVENTS)
        .bind(vec![UsagePeriodAggregate::TYPE; n])
        .bind(
            chunk
                .iter()
                .map(|r| r.aggregate_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(vec!["UsageRecorded"; n])
        .bind(vec!["1"; n])
        .bind(chunk.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
        .bind(vec!["{}"; n])
        .bind(vec![None::<&str>; n])
        .bind(vec![None::<&str>; n])
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn raw_single_rows(
    url: &str,
    scenario: &Scenario,
    args: &Args,
) -> Result<Measured, BoxError> {
    let pool = PostgresLog::connect(url).await?.pool().clone();
    let warm = args.warmup;
    let rows = Arc::new(raw_rows(scenario, warm + args.commands));
    let mut conns = Vec::with_capacity(RAW_SINGLE_ROW_CONNECTIONS);
    for _ in 0..RAW_SINGLE_ROW_CONNECTIONS {
        conns.push(tokio::sync::Mutex::new(PgConnection::connect(url).await?));
    }
    let conns = Arc::new(conns);
    // Submitter s owns connection s: with exactly as many submitters as connections
    // the locks are never contended, they only hand out the connection.
    let row_op = |first: usize| {
        let (rows, conns) = (rows.clone(), conns.clone());
        move |i: usize| {
            let (rows, conns) = (rows.clone(), conns.clone());
            async move {
                let r = &rows[first + i];
                let mut conn = conns[i % RAW_SINGLE_ROW_CONNECTIONS].lock().await;
                sqlx::query(INSERT_EVENT)
                    .bind(UsagePeriodAggregate::TYPE)
                    .bind(&r.aggregate_id)
                    .bind(r.sequence)
                    .bind("UsageRecorded")
                    .bind("1")
                    .bind(&r.payload)
                    .bind("{}")
                    .execute(&mut *conn)
                    .await
                    .map(|_| 0)
                    .map_err(|e| e.to_string())
            }
        }
    };
    let warm_run = drive(warm, RAW_SINGLE_ROW_CONNECTIONS, None, row_op(0)).await;
    setup_ok("raw: warm-up", &warm_run)?;
    let before = tally_pg(&pool).await?;
    let run = drive(
        args.commands,
        RAW_SINGLE_ROW_CONNECTIONS,
        args.deadline(),
        row_op(warm),
    )
    .await;
    let tally = tally_pg(&pool).await?.since(before);
    pool.close().await;
    Ok(Measured {
        scenario: scenario.title.clone(),
        system: format!("raw: single-row autocommit, {RAW_SINGLE_ROW_CONNECTIONS} conns"),
        run,
        events: tally.events,
        commits: tally.commits,
        conflicts: None,
        remarks: Vec::new(),
        rounds: Vec::new(),
    })
}
