//! `usage-ledger brands`: register a brand on a plan, change its plan, or show it.
//!
//! A plan change is a `PlanChanged` event of the brand's registry stream and, in the
//! same commit, a `PlanApplied` event in the brand's open period (see
//! `docs/architecture.md`); this command only asks the engine for it.

use std::io::Write;

use clap::{Args, Subcommand};
use ledger_aggregates::{BrandId, Catalog, PlanId};

use crate::engine::{Engine, EngineError};

/// `usage-ledger brands <set|show>`.
#[derive(Debug, Clone, Args)]
pub struct BrandsArgs {
    #[command(subcommand)]
    pub command: BrandsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BrandsCommand {
    /// Register a brand on a plan, or move it to another plan (the brand's open period
    /// switches to it at once; earlier periods keep theirs).
    Set {
        /// The brand (tenant) id.
        #[arg(long)]
        brand: BrandId,
        /// A plan id of the catalog, e.g. `starter`.
        #[arg(long)]
        plan: PlanId,
    },
    /// Print the brand's plan; fails when the brand is not registered.
    Show {
        /// The brand (tenant) id.
        #[arg(long)]
        brand: BrandId,
    },
}

/// Why `brands` failed. The binary prints the message and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum BrandsError {
    /// Refused before anything is written, with the plans the operator can choose from.
    #[error("unknown plan {plan}; the catalog has: {known}")]
    UnknownPlan { plan: PlanId, known: String },
    #[error(
        "brand {0} is not registered (register it with `brands set --brand {0} --plan <plan>`)"
    )]
    NotRegistered(BrandId),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("could not write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// Run `brands set` or `brands show` against the engine, writing the report to `out`.
/// The actor recorded on a plan change is [`super::cli_actor`].
pub async fn run(
    engine: &Engine,
    args: &BrandsArgs,
    out: &mut impl Write,
) -> Result<(), BrandsError> {
    match &args.command {
        BrandsCommand::Set { brand, plan } => set(engine, brand, plan, out).await,
        BrandsCommand::Show { brand } => show(engine, brand, out).await,
    }
}

async fn set(
    engine: &Engine,
    brand: &BrandId,
    plan: &PlanId,
    out: &mut impl Write,
) -> Result<(), BrandsError> {
    // Checked here as well as in the engine so the refusal can list the choices.
    if engine.catalog().plan(plan).is_none() {
        return Err(BrandsError::UnknownPlan {
            plan: plan.clone(),
            known: plan_ids(engine.catalog()),
        });
    }
    let change = engine
        .set_plan(brand.clone(), plan.clone(), super::cli_actor())
        .await?;
    match (change.registered, change.changed) {
        (true, _) => writeln!(out, "brand {brand} registered on plan {plan}")?,
        (false, true) => writeln!(out, "brand {brand} moved to plan {plan}")?,
        (false, false) => writeln!(
            out,
            "brand {brand} is already on plan {plan}: nothing changed"
        )?,
    }
    if let Some(period) = change.applied_to {
        writeln!(out, "plan {plan} applied to the open period {period}")?;
    }
    if let Some(period) = change.effective_from {
        writeln!(
            out,
            "a downgrade: plan {plan} takes effect from period {period}"
        )?;
    }
    Ok(())
}

async fn show(engine: &Engine, brand: &BrandId, out: &mut impl Write) -> Result<(), BrandsError> {
    let registry = engine.brand_state(brand.clone()).await?;
    let Some(plan) = registry.as_ref().and_then(|b| b.plan.as_ref()) else {
        return Err(BrandsError::NotRegistered(brand.clone()));
    };
    writeln!(out, "brand {brand}")?;
    writeln!(
        out,
        "  plan: {} ({}, catalog {})",
        plan.id, plan.name, plan.catalog_version
    )?;
    writeln!(
        out,
        "  base price: {} cents {} per period",
        plan.base_price_cents, plan.currency
    )?;
    if let Some((from, next)) = registry.as_ref().and_then(|b| b.scheduled.as_ref()) {
        writeln!(out, "  from {from}: plan {} ({})", next.id, next.name)?;
    }
    Ok(())
}

/// The catalog's plan ids in tier order, for error messages.
fn plan_ids(catalog: &Catalog) -> String {
    catalog
        .plans()
        .iter()
        .map(|p| p.id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
