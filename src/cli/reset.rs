//! `usage-ledger reset`: the runbook's `quota:reset`, done the ledger way.
//!
//! The rules (nothing deleted, the target taken on the effective limit after the top-up,
//! idempotency keys that keep a repeated reset from stacking credit or usage, gauges
//! corrected by adjustment) are the planner's, in `ledger_aggregates::reset`. This is
//! its adapter: it parses the arguments, reads the period through the engine, asks the
//! planner, prints the plan, and unless `--dry-run` submits the planned commands
//! through the engine and prints what was appended.

use std::collections::VecDeque;
use std::io::Write;

use clap::Args;
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::USAGE_PERIOD_TYPE;
use ledger_aggregates::reset::{
    self as planner, ResetPlan, ResetRefusal, ResetRequest, ResetStep, Standing,
    RESET_TARGET_PCT_DEFAULT,
};
use ledger_aggregates::{
    BrandId, IdempotencyKey, MetricKey, Money, PeriodKey, PlanDefinition, UsagePeriodAggregate,
};

use crate::engine::{Engine, EngineError, Metadata, Outcome, PeriodRequest};
use crate::store::{EventLog, StoreError};

/// `usage-ledger reset`: bring one metric of a brand's open period to a percentage of
/// its effective limit, with compensating events. `--brandId` and `--dryRun` are
/// accepted as in the original script.
#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// The brand (tenant) id.
    #[arg(long, alias = "brandId")]
    pub brand: BrandId,
    /// The metric to reset; no default, since a command that writes to the ledger
    /// names what it changes (the original defaulted to `ai_generations`).
    #[arg(long)]
    pub metric: MetricKey,
    /// The billing period `YYYY-MM` (UTC); default: the current one.
    #[arg(long)]
    pub period: Option<PeriodKey>,
    /// Target usage in percent of the effective limit after the top-up, 1 to 150.
    #[arg(long, default_value_t = RESET_TARGET_PCT_DEFAULT)]
    pub target: u32,
    /// Units of credit to add to the metric's limit for this period (0: none).
    #[arg(long, default_value_t = 0)]
    pub topup: u64,
    /// Total price of the top-up in cents; without it the credit is free.
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub price_cents: Option<i64>,
    /// Print the commands that would be appended, and append nothing.
    #[arg(long, alias = "dryRun")]
    pub dry_run: bool,
}

/// What a run appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    pub plan: ResetPlan,
    pub dry_run: bool,
    /// Sequences of the events this run appended.
    pub appended: Vec<u64>,
    /// First sequences of steps an identical run had already appended (not re-applied).
    pub replayed: Vec<u64>,
}

/// Why `reset` refused or failed. Every refusal happens before anything is appended.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The planner's refusals: the request or the period's state does not allow it.
    #[error(transparent)]
    Refused(#[from] ResetRefusal),
    #[error("brand {0} is not registered")]
    BrandNotRegistered(BrandId),
    /// The key was used with another request: another actor ran the same reset on the
    /// same state at the same time.
    #[error(
        "an identical reset by another actor was appended concurrently (key {0}); run the \
         command again to plan against the new state"
    )]
    Concurrent(IdempotencyKey),
    #[error(transparent)]
    Engine(EngineError),
    #[error("could not look up earlier resets: {0}")]
    Store(#[from] StoreError),
    #[error("could not write the report: {0}")]
    Output(#[from] std::io::Error),
}

impl From<EngineError> for ResetError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::KeyReuse(key) => ResetError::Concurrent(key),
            other => ResetError::Engine(other),
        }
    }
}

/// Reset one metric of a brand's open period: check, plan, print the plan, and unless
/// `--dry-run`, append it through the engine and print what was appended.
///
/// `log` is read for one thing: whether an identical top-up was already granted in
/// the period (its key), so that the plan, dry run included, is exact.
pub async fn run(
    engine: &Engine,
    log: &dyn EventLog,
    args: &ResetArgs,
    out: &mut impl Write,
) -> Result<ResetReport, ResetError> {
    let req = request_of(engine, args)?;
    let now = engine.now();
    let period = args.period.unwrap_or_else(|| PeriodKey::containing(now));
    let plan_now = engine
        .brand_state(args.brand.clone())
        .await?
        .and_then(|b| b.plan_for(period).cloned())
        .ok_or_else(|| ResetError::BrandNotRegistered(args.brand.clone()))?;
    planner::check_not_too_late(period, now, &engine.config().rules)?;
    let at = Scope {
        brand: &args.brand,
        period,
        plan_now: &plan_now,
    };
    let plan = plan_from_store(engine, log, &at, &req).await?;
    write!(out, "{plan}")?;
    if args.dry_run {
        writeln!(out, "dry run: nothing appended")?;
        return Ok(ResetReport {
            plan,
            dry_run: true,
            appended: Vec::new(),
            replayed: Vec::new(),
        });
    }
    execute(engine, log, &at, plan, &req, out).await
}

/// The brand and period a run resets, with the plan the brand is on.
struct Scope<'a> {
    brand: &'a BrandId,
    period: PeriodKey,
    /// What a period without events will open on.
    plan_now: &'a PlanDefinition,
}

/// The request of `args`, with the metric checked against the catalog.
fn request_of(engine: &Engine, args: &ResetArgs) -> Result<ResetRequest, ResetError> {
    planner::kind_of(engine.catalog().metric_kinds(), &args.metric)?;
    let req = ResetRequest {
        metric: args.metric.clone(),
        target_pct: args.target,
        top_up_units: args.topup,
        price: args.price_cents.map(Money::from_minor),
        actor: super::cli_actor(),
    };
    req.check()?;
    Ok(req)
}

/// Plan against the period as it stands now. The log is asked about the top-up key
/// first, then the state is read (`period_state` sees what other processes appended),
/// so a grant seen in the log is in the state too.
async fn plan_from_store(
    engine: &Engine,
    log: &dyn EventLog,
    at: &Scope<'_>,
    req: &ResetRequest,
) -> Result<ResetPlan, ResetError> {
    let granted_at = match req.top_up_key() {
        None => None,
        Some(key) => {
            let id = period_stream_id(at.brand, at.period);
            log.find_keyed(USAGE_PERIOD_TYPE, &[(id, key.to_string())])
                .await?
                .first()
                .map(|hit| hit.sequence as u64)
        }
    };
    let state = match engine.period_state(at.brand.clone(), at.period).await? {
        Some(state) => state,
        None => unopened(engine, at, &req.metric)?,
    };
    Ok(planner::plan_reset(&state, req, granted_at)?)
}

/// A period with no events yet, as the engine will open it on the first command.
fn unopened(
    engine: &Engine,
    at: &Scope<'_>,
    metric: &MetricKey,
) -> Result<UsagePeriodAggregate, ResetRefusal> {
    planner::as_it_will_open(
        at.brand,
        at.period,
        at.plan_now,
        engine.catalog().metric_kinds(),
        metric,
        engine.now(),
        &engine.config().rules,
    )
}

/// Append the plan's steps in order. If the top-up turns out to have been granted by
/// an identical run in the meantime, the adjustment is planned again on the new state
/// so the target is still reached exactly.
async fn execute(
    engine: &Engine,
    log: &dyn EventLog,
    at: &Scope<'_>,
    plan: ResetPlan,
    req: &ResetRequest,
    out: &mut impl Write,
) -> Result<ResetReport, ResetError> {
    let (mut appended, mut replayed) = (Vec::new(), Vec::new());
    match plan.steps.is_empty() {
        true => writeln!(out, "nothing to append")?,
        false => writeln!(out, "appended:")?,
    }
    let mut queue: VecDeque<ResetStep> = plan.steps.iter().cloned().collect();
    let mut replanned = false;
    while let Some(step) = queue.pop_front() {
        let outcome = submit(engine, &plan, &step, &req.actor).await?;
        report_step(&outcome, out)?;
        if !outcome.replayed {
            appended.extend(outcome.events.iter().map(|c| c.sequence));
            continue;
        }
        replayed.push(outcome.events.first().map_or(0, |c| c.sequence));
        // Planned once more at most, and without a top-up, so this always ends.
        if step.is_top_up() && !replanned {
            replanned = true;
            let again = plan_from_store(engine, log, at, req).await?;
            writeln!(out, "the top-up was granted meanwhile; planned again:")?;
            write!(out, "{again}")?;
            queue = again.steps.into_iter().filter(|s| !s.is_top_up()).collect();
        }
    }
    report_result(engine, &plan, out).await?;
    Ok(ResetReport {
        plan,
        dry_run: false,
        appended,
        replayed,
    })
}

/// The metadata key under which the HTTP layer records who sent a command; the
/// command line records its actor the same way, so the audit trail reads alike.
const ACTOR_METADATA_KEY: &str = "actor";

async fn submit(
    engine: &Engine,
    plan: &ResetPlan,
    step: &ResetStep,
    actor: &str,
) -> Result<Outcome, ResetError> {
    let mut metadata = Metadata::default();
    metadata.set(ACTOR_METADATA_KEY, actor);
    Ok(engine
        .execute(PeriodRequest {
            brand: plan.brand.clone(),
            period: Some(plan.period),
            command: step.command.clone(),
            idempotency_key: Some(step.key.clone()),
            metadata,
        })
        .await?)
}

fn report_step(outcome: &Outcome, out: &mut impl Write) -> std::io::Result<()> {
    if outcome.replayed {
        let first = outcome.events.first().map_or(0, |c| c.sequence);
        return writeln!(
            out,
            "  already appended as #{first} by an identical run: not applied again"
        );
    }
    for c in &outcome.events {
        writeln!(out, "  #{} {}", c.sequence, c.event.event_type_str())?;
    }
    Ok(())
}

/// Print where the metric stands after the run, read back from the engine.
async fn report_result(
    engine: &Engine,
    plan: &ResetPlan,
    out: &mut impl Write,
) -> Result<(), ResetError> {
    let state = engine.period_state(plan.brand.clone(), plan.period).await?;
    if let Some(standing) = state.and_then(|s| Standing::of(&s, &plan.metric)) {
        write!(out, "{standing}")?;
    }
    Ok(())
}
