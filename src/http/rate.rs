//! Per-credential request rate limits: each authenticated subject (a token's `sub`, an
//! API key's `api-key:<id>`) gets `http.requests_per_second_per_credential` with a burst
//! of twice that (GCRA, `governor`). Beyond it: 429 problem+json with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::error::ApiError;

/// Checks between two sweeps of credentials that have been quiet long enough to be at
/// their full burst again: the state then holds only credentials active lately.
pub const RATE_SWEEP_EVERY_CHECKS: u64 = 65_536;

pub struct CredentialRates {
    limiter: RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl CredentialRates {
    /// `None` when `per_second` is 0: no limit.
    pub fn new(per_second: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 is not zero"));
        let clock = DefaultClock::default();
        let limiter = RateLimiter::new(
            Quota::per_second(rate).allow_burst(burst),
            DefaultKeyedStateStore::default(),
            clock.clone(),
        );
        Some(Self {
            limiter,
            clock,
            checks: AtomicU64::new(0),
        })
    }

    /// Take one request of `subject`'s budget, or say when to retry.
    pub fn check(&self, subject: &str) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RATE_SWEEP_EVERY_CHECKS == 0 {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&subject.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(ApiError::TooManyRequests {
                    detail: format!(
                        "this credential sent more requests than its rate allows; retry in {} ms",
                        wait.as_millis().max(1)
                    ),
                    retry_after_s: wait.as_secs().max(1),
                })
            }
        }
    }
}
