//! Render jobs: each runs in its own task with the reservation its request took, and
//! commits the frames it rendered (voids the hold when it rendered none) when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ledger_guard::{BrandIdentity, Reservation};
use serde::Serialize;

/// Jobs kept in memory, running or finished. Finished ones are forgotten first when the
/// table is full; past it with every job running, new jobs are refused (503), which
/// also bounds the holds this service keeps open.
pub const JOBS_MAX: usize = 1_000;

/// The longest job this example simulates: well inside the hold's TTL.
pub const JOB_DURATION_MS_MAX: u64 = 60_000;

/// What a job is asked to do.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub brand: BrandIdentity,
    /// Frames held.
    pub frames: u64,
    /// Frames the job renders before it stops (at most `frames`).
    pub succeed: u64,
    pub duration: Duration,
}

/// A job as its owner sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub job_id: String,
    /// `running`, `committed`, `voided` or `failed` (the hold could not be settled).
    pub state: &'static str,
    pub frames: u64,
    pub committed: Option<u64>,
    pub released: Option<u64>,
    pub error: Option<String>,
}

/// Every job is running: retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobsFull;

#[derive(Clone, Default)]
pub struct Jobs(Arc<Mutex<HashMap<String, (BrandIdentity, JobStatus)>>>);

impl Jobs {
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, (BrandIdentity, JobStatus)>> {
        // Held only for map operations, which do not panic.
        self.0.lock().expect("the job table lock is never poisoned")
    }

    /// Start a job on its reservation; its id.
    pub fn start(&self, spec: JobSpec, reservation: Reservation) -> Result<String, JobsFull> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        {
            let mut table = self.table();
            if table.len() >= JOBS_MAX {
                table.retain(|_, (_, s)| s.state == "running");
            }
            if table.len() >= JOBS_MAX {
                return Err(JobsFull);
            }
            let status = JobStatus {
                job_id: id.clone(),
                state: "running",
                frames: spec.frames,
                committed: None,
                released: None,
                error: None,
            };
            table.insert(id.clone(), (spec.brand.clone(), status));
        }
        tokio::spawn(run(self.clone(), id.clone(), spec, reservation));
        Ok(id)
    }

    /// The job, if it is `brand`'s.
    pub fn status(&self, brand: &BrandIdentity, id: &str) -> Option<JobStatus> {
        self.table()
            .get(id)
            .filter(|(owner, _)| owner == brand)
            .map(|(_, s)| s.clone())
    }

    fn finish(&self, id: &str, f: impl FnOnce(&mut JobStatus)) {
        if let Some((_, status)) = self.table().get_mut(id) {
            f(status);
        }
    }
}

/// The job: "render", then settle the hold with what it rendered.
async fn run(jobs: Jobs, id: String, spec: JobSpec, reservation: Reservation) {
    tokio::time::sleep(spec.duration).await;
    let settled = match spec.succeed {
        0 => reservation.void().await.map(|v| ("voided", 0, v.released)),
        n => reservation
            .commit(n)
            .await
            .map(|c| ("committed", c.committed, c.released)),
    };
    jobs.finish(&id, |s| match settled {
        Ok((state, committed, released)) => {
            s.state = state;
            s.committed = Some(committed);
            s.released = Some(released);
        }
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "render job could not settle its hold");
            s.state = "failed";
            s.error = Some(e.to_string());
        }
    });
}
