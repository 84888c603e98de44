//! `usage-ledger pricing verify`: the catalog's base prices and overage rates compared
//! with Stripe's Prices, from its API or from an exported list (`stripe prices list`),
//! one line per mismatch and a non-zero exit when there is any.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ledger_aggregates::Catalog;

use crate::stripe::client::{StripeClient, StripeError};
use crate::stripe::pricing::{self, Price, PriceList};

/// A price list file larger than this is not an export of a catalog's prices.
pub const PRICE_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Args)]
pub struct PricingArgs {
    #[command(subcommand)]
    pub command: PricingCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PricingCommand {
    /// Compare the catalog with Stripe: `<plan>_base` and `<plan>_<metric>_overage`
    /// lookup keys; exits non-zero on any mismatch.
    Verify {
        /// A price list exported from Stripe (JSON: a list answer or an array) instead
        /// of the live API (which needs stripe.secret_key).
        #[arg(long)]
        prices: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("{0} mismatch(es) between the catalog and Stripe")]
    Mismatches(usize),
    #[error("cannot read {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("no price list given and stripe.secret_key is unset")]
    NoSource,
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error("could not write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// Read an exported price list.
pub fn read_prices(path: &PathBuf) -> Result<Vec<Price>, PricingError> {
    let bad = |detail: String| PricingError::File {
        path: path.clone(),
        detail,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if len > PRICE_FILE_BYTES_MAX {
        return Err(bad(format!("larger than {PRICE_FILE_BYTES_MAX} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let list: PriceList = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Ok(list.into_prices())
}

pub async fn run(
    catalog: &Catalog,
    stripe: Option<&StripeClient>,
    args: &PricingArgs,
    out: &mut impl Write,
) -> Result<(), PricingError> {
    let PricingCommand::Verify { prices } = &args.command;
    let prices = match (prices, stripe) {
        (Some(path), _) => read_prices(path)?,
        (None, Some(client)) => client.active_prices().await?,
        (None, None) => return Err(PricingError::NoSource),
    };
    let found = pricing::verify(catalog, &prices);
    for m in &found {
        writeln!(out, "{m}")?;
    }
    writeln!(
        out,
        "{} prices read, catalog {}: {} mismatch(es)",
        prices.len(),
        catalog.version,
        found.len()
    )?;
    match found.len() {
        0 => Ok(()),
        n => Err(PricingError::Mismatches(n)),
    }
}
