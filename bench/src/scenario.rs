//! The two scenarios, and which brand each command goes to.

use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::{BrandId, PeriodKey};

use crate::report::thousands;
use crate::{wants, Args, BoxError};

pub(crate) struct Scenario {
    /// `hot` or `brands`, for `--scenarios`.
    pub(crate) key: &'static str,
    /// Shown in the tables.
    pub(crate) title: String,
    pub(crate) brands: Vec<BrandId>,
    /// The period every command lands in: the current one, as the engine stamps `now`.
    pub(crate) period: PeriodKey,
}

impl Scenario {
    pub(crate) fn selected(args: &Args, period: PeriodKey) -> Result<Vec<Scenario>, BoxError> {
        let hot = Scenario {
            key: "hot",
            title: "hot brand".into(),
            brands: vec![BrandId::parse("bench-hot")?],
            period,
        };
        let many = Scenario {
            key: "brands",
            title: format!("{} brands", thousands(args.brands as f64)),
            brands: (0..args.brands.max(1))
                .map(|i| BrandId::parse(&format!("brand-{i:05}")))
                .collect::<Result<_, _>>()?,
            period,
        };
        Ok([hot, many]
            .into_iter()
            .filter(|s| wants(&args.scenarios, s.key))
            .collect())
    }

    /// The brand of the `i`-th command: a fixed pseudo-random pick, so every system
    /// sees the same sequence of brands and submitters collide as they would in life.
    pub(crate) fn brand_index(&self, i: usize) -> usize {
        (splitmix64(i as u64) % self.brands.len() as u64) as usize
    }

    /// Warm-up commands: the first touches every brand once (opening every period),
    /// then `warmup` more.
    pub(crate) fn warmup_commands(&self, warmup: usize) -> usize {
        if self.brands.len() == 1 {
            warmup
        } else {
            self.brands.len() + warmup
        }
    }

    pub(crate) fn warmup_brand_index(&self, i: usize) -> usize {
        if i < self.brands.len() {
            i
        } else {
            self.brand_index(i)
        }
    }

    pub(crate) fn stream_id(&self, brand: usize) -> String {
        period_stream_id(&self.brands[brand], self.period)
    }
}

/// A well-mixed 64-bit hash (Steele et al., SplitMix64), enough to spread brands.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
