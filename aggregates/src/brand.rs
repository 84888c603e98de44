//! The brand registry aggregate: which plan a brand is on, as a stream of events.
//!
//! A plan change is a fact of the brand. One in force at once is applied by the engine
//! to the brand's open period (`PeriodCommand::ApplyPlan`) in the same commit; one
//! scheduled for a later period (a downgrade, by default) is what that period opens on.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::catalog::PlanDefinition;
use crate::ids::{BrandId, PeriodKey, PlanId};
use crate::notifications::{NotificationSettings, SettingsError};
use crate::topup::{TopUpBook, TopUpCommand, TopUpError, TopUpEvent};

/// When a plan change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effective {
    /// In the open period, from the instant of the change.
    Now,
    /// From the start of the next period.
    NextPeriod,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrandCommand {
    /// Register the brand on `plan`, or move it to `plan`. Setting the plan it already
    /// has (same id and catalog version) changes nothing, so the call is safe to retry.
    /// Without `effective`, an upgrade (a higher base price, or the same) takes effect
    /// now and a downgrade at the next period: a brand keeps what it paid for until
    /// the period ends unless an admin asks otherwise.
    SetPlan {
        brand_id: BrandId,
        plan: PlanDefinition,
        actor: String,
        at: DateTime<Utc>,
        effective: Option<Effective>,
    },
    /// A step of a purchased top-up's life (see [`crate::topup`]).
    TopUp(TopUpCommand),
    /// Replace where the brand's notices go. The same settings again change nothing.
    SetNotifications {
        settings: NotificationSettings,
        actor: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrandEvent {
    BrandRegistered {
        brand_id: BrandId,
        plan: PlanDefinition,
        actor: String,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    PlanChanged {
        previous_plan: PlanId,
        plan: PlanDefinition,
        actor: String,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
        /// The first period on `plan` when it does not take effect at once; absent for
        /// a change in force from `at` (every change recorded before it existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        effective_from: Option<PeriodKey>,
    },
    TopUp(TopUpEvent),
    NotificationsSet {
        settings: NotificationSettings,
        actor: String,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
}

pub const BRAND_EVENT_VERSION: &str = "1";

impl DomainEvent for BrandEvent {
    fn event_type(&self) -> String {
        self.event_type_str().to_owned()
    }
    fn event_version(&self) -> String {
        BRAND_EVENT_VERSION.to_owned()
    }
}

impl BrandEvent {
    pub fn event_type_str(&self) -> &'static str {
        match self {
            BrandEvent::BrandRegistered { .. } => "BrandRegistered",
            BrandEvent::PlanChanged { .. } => "PlanChanged",
            BrandEvent::TopUp(TopUpEvent::Opened { .. }) => "TopUpOpened",
            BrandEvent::TopUp(TopUpEvent::Paid { .. }) => "TopUpPaid",
            BrandEvent::TopUp(TopUpEvent::Failed { .. }) => "TopUpFailed",
            BrandEvent::NotificationsSet { .. } => "NotificationsSet",
        }
    }

    /// When the event happened.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            BrandEvent::BrandRegistered { at, .. }
            | BrandEvent::PlanChanged { at, .. }
            | BrandEvent::NotificationsSet { at, .. } => *at,
            BrandEvent::TopUp(e) => e.at(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrandError {
    #[error("command for brand {got} sent to the stream of brand {stream}")]
    WrongBrand { stream: BrandId, got: BrandId },
    #[error(transparent)]
    TopUp(#[from] TopUpError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrandAggregate {
    pub brand_id: Option<BrandId>,
    pub plan: Option<PlanDefinition>,
    /// When `BrandRegistered` happened: no usage may be stamped before it. Defaulted so
    /// a snapshot taken before it was kept still loads; a brand rebuilt from one is
    /// held to no registration instant (registries reach a snapshot only after 1,000
    /// plan changes, so in practice none is).
    #[serde(default)]
    pub registered_at: Option<DateTime<Utc>>,
    /// A plan change that takes effect at the start of a later period.
    #[serde(default)]
    pub scheduled: Option<(PeriodKey, PlanDefinition)>,
    /// Purchased top-ups, pending and remembered.
    #[serde(default)]
    pub topups: TopUpBook,
    /// Where its notices go.
    #[serde(default)]
    pub notifications: NotificationSettings,
    pub version: u64,
}

/// Why a brand refuses a command on one of its periods: the brand did not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BeforeRegistration {
    /// The whole period ended before the brand was registered: it never had it.
    #[error("period {period} ended before the brand was registered at {registered_at}")]
    Period {
        period: PeriodKey,
        registered_at: DateTime<Utc>,
    },
    /// The usage is stamped before the brand was registered.
    #[error(
        "usage at {occurred_at} is stamped before the brand was registered at {registered_at}"
    )]
    Usage {
        occurred_at: DateTime<Utc>,
        registered_at: DateTime<Utc>,
    },
}

impl BeforeRegistration {
    /// The registration instant the refusal names.
    pub fn registered_at(&self) -> DateTime<Utc> {
        match self {
            BeforeRegistration::Period { registered_at, .. }
            | BeforeRegistration::Usage { registered_at, .. } => *registered_at,
        }
    }
}

/// The aggregate type name stored in `events.aggregate_type`.
pub const BRAND_TYPE: &str = "brand";

impl Aggregate for BrandAggregate {
    const TYPE: &'static str = BRAND_TYPE;
    type Command = BrandCommand;
    type Event = BrandEvent;
    type Error = BrandError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(&command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.fold(&event);
    }
}

impl BrandAggregate {
    /// Fold one event: `Aggregate::apply` by reference.
    pub fn fold(&mut self, event: &BrandEvent) {
        self.version += 1;
        match event {
            BrandEvent::BrandRegistered {
                brand_id, plan, at, ..
            } => {
                self.brand_id = Some(brand_id.clone());
                self.plan = Some(plan.clone());
                self.registered_at = Some(*at);
            }
            BrandEvent::PlanChanged {
                plan,
                at,
                effective_from,
                ..
            } => {
                self.settle(PeriodKey::containing(*at));
                match effective_from {
                    None => {
                        self.plan = Some(plan.clone());
                        self.scheduled = None;
                    }
                    Some(from) => self.scheduled = Some((*from, plan.clone())),
                }
            }
            BrandEvent::TopUp(e) => self.topups.fold(e),
            BrandEvent::NotificationsSet { settings, .. } => self.notifications = settings.clone(),
        }
    }

    /// A scheduled change whose period has come is the plan in force.
    fn settle(&mut self, now: PeriodKey) {
        if let Some((from, plan)) = self.scheduled.take() {
            match from <= now {
                true => self.plan = Some(plan),
                false => self.scheduled = Some((from, plan)),
            }
        }
    }

    /// The plan `period` runs on: a scheduled change from its start on, else the plan
    /// in force (`None` before registration).
    pub fn plan_for(&self, period: PeriodKey) -> Option<&PlanDefinition> {
        match &self.scheduled {
            Some((from, plan)) if *from <= period => Some(plan),
            _ => self.plan.as_ref(),
        }
    }

    /// The order a top-up step concerns, and the events it takes (none for a repeat).
    pub fn decide_topup(&self, step: &TopUpCommand) -> Result<(u64, Vec<BrandEvent>), TopUpError> {
        let (number, events) = self.topups.decide(step)?;
        Ok((number, events.into_iter().map(BrandEvent::TopUp).collect()))
    }

    pub fn is_registered(&self) -> bool {
        self.plan.is_some()
    }

    /// Whether the brand existed for `period`, and at `occurred_at` if the command
    /// carries usage stamped then. A period is the brand's if it ended after the
    /// registration (the registration's own period included); usage is the brand's if
    /// it is stamped at or after the registration. Bills and quotas are the brand's
    /// from then on, so nothing before it may be metered or invoiced.
    pub fn check_existed(
        &self,
        period: PeriodKey,
        occurred_at: Option<DateTime<Utc>>,
    ) -> Result<(), BeforeRegistration> {
        let Some(registered_at) = self.registered_at else {
            return Ok(());
        };
        if period.end() <= registered_at {
            return Err(BeforeRegistration::Period {
                period,
                registered_at,
            });
        }
        match occurred_at {
            Some(occurred_at) if occurred_at < registered_at => Err(BeforeRegistration::Usage {
                occurred_at,
                registered_at,
            }),
            _ => Ok(()),
        }
    }

    pub fn decide(&self, command: &BrandCommand) -> Result<Vec<BrandEvent>, BrandError> {
        let (brand_id, plan, actor, at, effective) = match command {
            BrandCommand::SetPlan {
                brand_id,
                plan,
                actor,
                at,
                effective,
            } => (brand_id, plan, actor, at, effective),
            BrandCommand::TopUp(step) => return Ok(self.decide_topup(step)?.1),
            BrandCommand::SetNotifications {
                settings,
                actor,
                at,
            } => {
                settings.check()?;
                if *settings == self.notifications {
                    return Ok(Vec::new());
                }
                return Ok(vec![BrandEvent::NotificationsSet {
                    settings: settings.clone(),
                    actor: actor.clone(),
                    at: *at,
                }]);
            }
        };
        if let Some(stream) = &self.brand_id {
            if stream != brand_id {
                return Err(BrandError::WrongBrand {
                    stream: stream.clone(),
                    got: brand_id.clone(),
                });
            }
        }
        let now = PeriodKey::containing(*at);
        let Some(current) = self.plan_for(now) else {
            return Ok(vec![BrandEvent::BrandRegistered {
                brand_id: brand_id.clone(),
                plan: plan.clone(),
                actor: actor.clone(),
                at: *at,
            }]);
        };
        let effective =
            effective.unwrap_or(match plan.base_price_cents < current.base_price_cents {
                true => Effective::NextPeriod,
                false => Effective::Now,
            });
        let effective_from = match effective {
            Effective::Now => None,
            Effective::NextPeriod => Some(now.next()),
        };
        let scheduled = self.scheduled.as_ref().filter(|(from, _)| *from > now);
        let unchanged = match (effective_from, scheduled) {
            // The plan in force, nothing pending: a retry.
            (None, None) => current == plan,
            // The same change already scheduled: a retry.
            (Some(from), Some((at_from, pending))) => *at_from == from && pending == plan,
            // The plan of the next period already: nothing to schedule.
            (Some(_), None) => current == plan,
            // A change now while one is pending cancels it, even back to this plan.
            (None, Some(_)) => false,
        };
        if unchanged {
            return Ok(Vec::new());
        }
        Ok(vec![BrandEvent::PlanChanged {
            previous_plan: current.id.clone(),
            plan: plan.clone(),
            actor: actor.clone(),
            at: *at,
            effective_from,
        }])
    }
}
