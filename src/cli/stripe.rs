//! `usage-ledger stripe reconcile`: read Stripe's checkout events and apply every
//! payment whose webhook never arrived, exactly as the webhook would have. What a
//! delivery already applied is repeated without effect, so it is safe to run any time.

use std::io::Write;

use chrono::{DateTime, Duration, Utc};
use clap::{Args, Subcommand};

use crate::ledger::topups::{PaymentEffect, TopUpFailure, RECONCILE_LOOKBACK_DAYS_MAX};
use crate::ledger::Ledger;

/// Stripe retries a webhook for three days: older events are lost unless reconciled.
pub const RECONCILE_SINCE_DEFAULT_HOURS: i64 = 72;

/// `usage-ledger stripe <reconcile>`.
#[derive(Debug, Clone, Args)]
pub struct StripeArgs {
    #[command(subcommand)]
    pub command: StripeCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum StripeCommand {
    /// Apply every paid checkout of the window whose webhook never arrived.
    Reconcile {
        /// Events created since: an RFC 3339 instant, or an age such as `12h` or `7d`
        /// (at most 30 days: Stripe keeps events no longer) [default: 72h]
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StripeCliError {
    #[error("--since {0}: give an RFC 3339 instant or an age such as 12h or 7d")]
    BadSince(String),
    #[error("--since reaches back more than {RECONCILE_LOOKBACK_DAYS_MAX} days: Stripe keeps events no longer")]
    TooFarBack,
    #[error(transparent)]
    TopUp(#[from] TopUpFailure),
    #[error("could not write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// Parse `--since` against `now`.
pub fn since(arg: Option<&str>, now: DateTime<Utc>) -> Result<DateTime<Utc>, StripeCliError> {
    let at = match arg {
        None => now - Duration::hours(RECONCILE_SINCE_DEFAULT_HOURS),
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                let bad = || StripeCliError::BadSince(crate::engine::echo(s).into_owned());
                let (n, unit) = s.split_at(s.len().saturating_sub(1));
                let n: i64 = n.parse().map_err(|_| bad())?;
                match unit {
                    "h" => now - Duration::hours(n),
                    "d" => now - Duration::days(n),
                    _ => return Err(bad()),
                }
            }
        },
    };
    match now - at > Duration::days(RECONCILE_LOOKBACK_DAYS_MAX) {
        true => Err(StripeCliError::TooFarBack),
        false => Ok(at),
    }
}

pub async fn run(
    ledger: &Ledger,
    args: &StripeArgs,
    out: &mut impl Write,
) -> Result<(), StripeCliError> {
    let StripeCommand::Reconcile { since: arg } = &args.command;
    let from = since(arg.as_deref(), ledger.engine.now())?;
    let done = ledger.reconcile_payments(from).await?;
    let (mut credited, mut failed) = (0, 0);
    for (event, effect) in &done {
        let what = match effect {
            PaymentEffect::Credited { topup, period } => {
                credited += 1;
                format!("credited {topup} to {period}")
            }
            PaymentEffect::Failed { topup } => {
                failed += 1;
                format!("marked {topup} failed")
            }
            PaymentEffect::Unchanged { reason } => format!("unchanged: {reason}"),
        };
        writeln!(out, "{} {} {what}", event.id, event.kind)?;
    }
    writeln!(
        out,
        "{} events since {}: {credited} credited, {failed} failed, {} unchanged",
        done.len(),
        from.to_rfc3339(),
        done.len() - credited - failed
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn since_takes_instants_and_ages_within_stripes_retention() {
        let now = Utc.with_ymd_and_hms(2026, 12, 10, 12, 0, 0).unwrap();
        assert_eq!(since(None, now).unwrap(), now - Duration::hours(72));
        assert_eq!(since(Some("12h"), now).unwrap(), now - Duration::hours(12));
        assert_eq!(since(Some("7d"), now).unwrap(), now - Duration::days(7));
        assert_eq!(
            since(Some("2026-12-01T00:00:00Z"), now).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
        assert!(matches!(
            since(Some("31d"), now),
            Err(StripeCliError::TooFarBack)
        ));
        assert!(matches!(
            since(Some("yesterday"), now),
            Err(StripeCliError::BadSince(_))
        ));
        assert!(matches!(
            since(Some(""), now),
            Err(StripeCliError::BadSince(_))
        ));
    }
}
