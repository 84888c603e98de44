//! The closed-loop driver, and what one run measured.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::BoxError;

/// Latencies above a minute are recorded as a minute: the histogram needs a bound, and
/// anything that slow is a failure whatever its exact value.
const LATENCY_US_MAX: u64 = 60_000_000;

pub(crate) struct Measured {
    pub(crate) scenario: String,
    pub(crate) system: String,
    pub(crate) run: Run,
    /// Events (rows) appended during the timed part, counted in the database.
    pub(crate) events: u64,
    /// Transactions those events were committed in (PostgreSQL only: SQLite rows carry
    /// no transaction id). Events per commit is the group-commit batch size.
    pub(crate) commits: Option<u64>,
    /// Optimistic-concurrency conflicts (baseline only).
    pub(crate) conflicts: Option<u64>,
    /// Printed under the table: what a latency sample is, checks that failed, …
    pub(crate) remarks: Vec<String>,
    /// Events/s of every round of this system, in the order they ran (empty until
    /// the rounds are gathered).
    pub(crate) rounds: Vec<f64>,
}

impl Measured {
    pub(crate) fn ops_per_s(&self) -> f64 {
        self.run.ops as f64 / self.run.elapsed.as_secs_f64()
    }
    pub(crate) fn events_per_s(&self) -> f64 {
        self.events as f64 / self.run.elapsed.as_secs_f64()
    }
    pub(crate) fn latency_ms(&self, q: f64) -> f64 {
        self.run.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// One closed-loop run.
pub(crate) struct Run {
    /// Commands (or rows) completed, failed ones included.
    pub(crate) ops: u64,
    /// Commands (or rows) asked for: more than `ops` when the deadline stopped the run.
    pub(crate) planned: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) conflicts: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("bounds 1..60 s at 3 digits are valid")
}

/// Run `ops` operations from `submitters` tasks, each sending its share (every
/// `submitters`-th index) one after the other and timing each. After `deadline` no
/// new operation starts. `op` returns the number of conflicts it retried through.
pub(crate) async fn drive<F, Fut>(
    ops: usize,
    submitters: usize,
    deadline: Option<Instant>,
    op: F,
) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let op = Arc::new(op);
    let submitters = submitters.clamp(1, ops.max(1));
    let start = Instant::now();
    let tasks: Vec<_> = (0..submitters)
        .map(|s| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut run = Run {
                    ops: 0,
                    planned: 0,
                    elapsed: Duration::ZERO,
                    latency_us: histogram(),
                    conflicts: 0,
                    errors: 0,
                    first_error: None,
                };
                for i in (s..ops).step_by(submitters) {
                    let t = Instant::now();
                    if deadline.is_some_and(|d| t >= d) {
                        break;
                    }
                    match op(i).await {
                        Ok(c) => run.conflicts += c,
                        Err(e) => {
                            run.errors += 1;
                            run.first_error.get_or_insert(e);
                        }
                    }
                    run.latency_us
                        .saturating_record(t.elapsed().as_micros() as u64);
                    run.ops += 1;
                }
                run
            })
        })
        .collect();
    let mut total = Run {
        ops: 0,
        planned: ops as u64,
        elapsed: Duration::ZERO,
        latency_us: histogram(),
        conflicts: 0,
        errors: 0,
        first_error: None,
    };
    for task in tasks {
        let run = task.await.expect("submitter tasks do not panic");
        total.ops += run.ops;
        total.conflicts += run.conflicts;
        total.errors += run.errors;
        total
            .latency_us
            .add(&run.latency_us)
            .expect("histograms share their bounds");
        if total.first_error.is_none() {
            total.first_error = run.first_error;
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Fail the benchmark on the first error of an untimed setup step.
pub(crate) fn setup_ok(what: &str, run: &Run) -> Result<(), BoxError> {
    match &run.first_error {
        None => Ok(()),
        Some(e) => Err(format!("{what}: {} of {} failed, first: {e}", run.errors, run.ops).into()),
    }
}
