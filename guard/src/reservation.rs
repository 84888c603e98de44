//! Reservations for routes that start long jobs: the guard holds the units before the
//! handler runs and hands the handler a [`Reservation`]; the job commits what it used or
//! voids the hold when it ends (tigerbeetle's pending transfers: reserve, post or void,
//! timeout). A hold neither committed nor voided is released by the ledger at its TTL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use http::request::Parts;

use crate::client::LedgerClient;
use crate::decision::{Committed, Reserved, Voided};
use crate::error::GuardError;
use crate::identity::BrandIdentity;
use crate::spool::REPLAY_BACKOFF_MS_MIN;

/// Attempts of a commit or a void while the ledger is unavailable, with pauses of 100,
/// 200, 400 and 800 ms between them (1.5 s, plus the calls themselves): enough for a
/// ledger restart, and a job that just finished should not hold its worker much longer;
/// past it the error goes to the job, and the hold expires at its TTL.
pub const SETTLE_ATTEMPTS_MAX: u32 = 5;

/// A hold on a brand's quota, to commit or void once the job knows what it used.
/// Cloning gives another handle on the same hold: settle it once.
#[derive(Debug, Clone)]
pub struct Reservation {
    reserved: Arc<Reserved>,
    brand: BrandIdentity,
    client: LedgerClient,
}

impl Reservation {
    pub(crate) fn new(reserved: Reserved, brand: BrandIdentity, client: LedgerClient) -> Self {
        Self {
            reserved: Arc::new(reserved),
            brand,
            client,
        }
    }

    /// The ledger's id of the hold.
    pub fn id(&self) -> &str {
        &self.reserved.reservation_id
    }

    pub fn brand(&self) -> &BrandIdentity {
        &self.brand
    }

    /// Units held.
    pub fn amount(&self) -> u64 {
        self.reserved.amount
    }

    /// The ledger's answer to the hold: expiry (RFC 3339), period, decision.
    pub fn reserved(&self) -> &Reserved {
        &self.reserved
    }

    /// Count `amount` units (at most those held) and release the rest.
    pub async fn commit(&self, amount: u64) -> Result<Committed, GuardError> {
        self.settle(|| self.client.commit(&self.brand, self.id(), Some(amount)))
            .await
    }

    /// Count every unit held.
    pub async fn commit_all(&self) -> Result<Committed, GuardError> {
        self.settle(|| self.client.commit(&self.brand, self.id(), None))
            .await
    }

    /// Release the hold: nothing is counted.
    pub async fn void(&self) -> Result<Voided, GuardError> {
        self.settle(|| self.client.void(&self.brand, self.id()))
            .await
    }

    /// Retry while the ledger is unavailable, at most [`SETTLE_ATTEMPTS_MAX`] times. Each
    /// attempt carries the same key (derived from the hold), so one that was applied but
    /// whose answer was lost is answered again, not refused as `reservation-not-held`.
    async fn settle<T, F, Fut>(&self, call: F) -> Result<T, GuardError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, GuardError>>,
    {
        let mut pause_ms = REPLAY_BACKOFF_MS_MIN;
        let mut attempt = 1;
        loop {
            match call().await {
                Err(e) if e.is_unavailable() && attempt < SETTLE_ATTEMPTS_MAX => {
                    tracing::debug!(reservation = self.id(), attempt, error = %e, "settle retried");
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    pause_ms *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Where the guard leaves the reservation for the handler, and finds it again after.
#[derive(Clone)]
pub(crate) struct ReservationSlot(Arc<SlotInner>);

struct SlotInner {
    reservation: Reservation,
    /// Set when a handler takes the handle: on a 2xx answer its job owns the hold.
    taken: AtomicBool,
}

impl ReservationSlot {
    pub(crate) fn new(reservation: Reservation) -> Self {
        Self(Arc::new(SlotInner {
            reservation,
            taken: AtomicBool::new(false),
        }))
    }

    /// The handle, once: a second take is a wiring error.
    fn take(&self) -> Option<Reservation> {
        match self.0.taken.swap(true, Ordering::AcqRel) {
            true => None,
            false => Some(self.0.reservation.clone()),
        }
    }

    /// The hold, for the guard to settle, and whether a handler took it.
    pub(crate) fn settle_view(&self) -> (&Reservation, bool) {
        (&self.0.reservation, self.0.taken.load(Ordering::Acquire))
    }
}

/// The handler's side: taking the `Reservation` makes the job responsible for it once
/// the handler answers 2xx. A handler on a route without `.reserve` is a wiring error (500).
impl<S: Send + Sync> FromRequestParts<S> for Reservation {
    type Rejection = GuardError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, GuardError> {
        parts
            .extensions
            .get::<ReservationSlot>()
            .and_then(ReservationSlot::take)
            .ok_or_else(|| {
                GuardError::Misconfigured(
                    "a handler takes a Reservation on a route without .reserve (or twice)"
                        .to_owned(),
                )
            })
    }
}
