//! Registry steps other than plan changes: top-up orders (opened before the checkout
//! is created at the payment provider, then paid, credited in the same commit, or
//! failed) and notification settings.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use ledger_aggregates::notifications::NotificationSettings;
use ledger_aggregates::topup::{PaymentRef, TopUpCommand};
use ledger_aggregates::{BrandAggregate, BrandId, LedgerError, PeriodKey};

use super::{Engine, EngineError, Job, TopUpChange};

impl Engine {
    /// Decide one step of a brand's top-up order. The registry is first compared with
    /// the log (one primary-key probe): the order may have been opened by another
    /// instance than the one its payment reaches.
    pub async fn topup(
        &self,
        brand: BrandId,
        step: TopUpCommand,
    ) -> Result<TopUpChange, EngineError> {
        let logged = self
            .probe_one(BrandAggregate::TYPE, brand.to_string())
            .await?;
        self.submit(&brand.clone(), |reply| Job::TopUp {
            brand,
            step,
            logged,
            reply,
        })
        .await
    }

    /// Replace `brand`'s notification settings (already checked by the caller for what
    /// only an adapter can check, such as addresses). `false`: they were already so.
    pub async fn set_notifications(
        &self,
        brand: BrandId,
        settings: NotificationSettings,
        actor: String,
    ) -> Result<bool, EngineError> {
        let logged = self
            .probe_one(BrandAggregate::TYPE, brand.to_string())
            .await?;
        self.submit(&brand.clone(), |reply| Job::SetNotifications {
            brand,
            settings,
            actor,
            logged,
            reply,
        })
        .await
    }

    /// Pay order `number`, whose payment completed at `paid_at`: credited to the
    /// period open then, or to the period open now when that one no longer takes
    /// changes (past its late-usage grace, or closed). A repeat changes nothing.
    pub async fn pay_topup(
        &self,
        brand: BrandId,
        number: u64,
        paid_at: DateTime<Utc>,
        payment: PaymentRef,
    ) -> Result<TopUpChange, EngineError> {
        let now = self.clock.now();
        // A provider's clock ahead of ours does not credit a period that has not begun.
        let paid_at = paid_at.min(now);
        let current = PeriodKey::containing(now);
        let paid_in = PeriodKey::containing(paid_at);
        let mut period = match now > self.config.rules.accepts_usage_until(paid_in) {
            true => current,
            false => paid_in,
        };
        loop {
            let step = TopUpCommand::Settle {
                number,
                period,
                paid_at,
                payment: payment.clone(),
                at: now,
            };
            match self.topup(brand.clone(), step).await {
                Err(EngineError::Ledger(LedgerError::Closed(closed))) if closed != current => {
                    period = current
                }
                other => return other,
            }
        }
    }
}
