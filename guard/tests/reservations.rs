//! Reservations end to end: the example's `POST /render/3d/jobs` holds renders before
//! its handler runs, and the job commits what it rendered or voids the hold, against the
//! real ledger.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::{Ledger, RenderService};

/// How long a test waits for a job to settle its hold.
const JOB_TIMEOUT: Duration = Duration::from_secs(10);

async fn start_job(svc: &RenderService, body: Value) -> support::Answer {
    svc.call(Method::POST, "/render/3d/jobs", Some("acme"), Some(body))
        .await
}

/// The job's status once it is no longer running.
async fn settled(svc: &RenderService, job_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + JOB_TIMEOUT;
    loop {
        let path = format!("/render/3d/jobs/{job_id}");
        let a = svc.call(Method::GET, &path, Some("acme"), None).await;
        assert_eq!(a.status, 200, "{:#}", a.body);
        if a.body["state"] != "running" {
            return a.body;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job settles");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup() -> (Ledger, RenderService) {
    let ledger = Ledger::start().await;
    let acme = ledger.brand_with_key("acme").await;
    let svc = RenderService::start(&ledger, &[("acme", &acme)]).await;
    (ledger, svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_renders_fewer_frames_than_it_held_commits_only_those() {
    // Proves reserve on request, commit from the job: 5 held, 3 rendered, 3 counted.
    let (ledger, svc) = setup().await;

    let started = start_job(&svc, json!({ "count": 5, "succeed": 3, "durationMs": 50 })).await;

    assert_eq!(started.status, 202, "{:#}", started.body);
    assert!(started.body["reservationId"].is_string());
    let job = settled(&svc, started.body["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "committed", "{job:#}");
    assert_eq!(
        (&job["committed"], &job["released"]),
        (&json!(3), &json!(2))
    );
    assert_eq!(ledger.usage("acme", "renders_3d").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_renders_nothing_voids_its_hold_and_nothing_is_counted() {
    // Proves void: the hold is released whole, so the full quota is there afterwards.
    let (ledger, svc) = setup().await;

    let started = start_job(&svc, json!({ "count": 6, "succeed": 0 })).await;

    assert_eq!(started.status, 202, "{:#}", started.body);
    let job = settled(&svc, started.body["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "voided", "{job:#}");
    assert_eq!(job["released"], 6);
    assert_eq!(ledger.usage("acme", "renders_3d").await, 0);
    assert_eq!(svc.render("acme", json!({ "count": 10 })).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_jobs_hold_counts_against_the_block_quota() {
    // Proves the hold is real: while 8 of 10 renders are held, 5 more are refused (402),
    // and once the job commits 8 the remaining 2 are still available.
    let (ledger, svc) = setup().await;
    let started = start_job(&svc, json!({ "count": 8, "durationMs": 500 })).await;
    assert_eq!(started.status, 202, "{:#}", started.body);

    let refused = svc.render("acme", json!({ "count": 5 })).await;

    refused.assert_problem(402, "quota-exceeded");
    // The ledger's decision reaches the caller whole, with the hold in it.
    assert_eq!(
        refused.body["decision"]["reserved"], 8,
        "{:#}",
        refused.body
    );
    settled(&svc, started.body["jobId"].as_str().unwrap()).await;
    assert_eq!(ledger.usage("acme", "renders_3d").await, 8);
    assert_eq!(svc.render("acme", json!({ "count": 2 })).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_does_not_fit_is_a_402_and_no_job_starts() {
    // Proves the ledger's 409 quota-exceeded on a hold reaches the caller as the guard's
    // 402 with the decision, before the handler runs.
    let (ledger, svc) = setup().await;

    let refused = start_job(&svc, json!({ "count": 11 })).await;

    refused.assert_problem(402, "quota-exceeded");
    assert_eq!(
        refused.body["decision"]["allowed"], false,
        "{:#}",
        refused.body
    );
    assert_eq!(ledger.usage("acme", "renders_3d").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_after_the_hold_leaves_it_voided() {
    // Proves the guard's rule: a non-2xx answer voids the hold, even one the handler took
    // (here its body extractor refuses a durationMs that is not a number).
    let (ledger, svc) = setup().await;

    let failed = start_job(&svc, json!({ "count": 9, "durationMs": "slow" })).await;

    assert_eq!(failed.status, 422, "{:#}", failed.body);
    assert_eq!(ledger.usage("acme", "renders_3d").await, 0);
    assert_eq!(
        svc.render("acme", json!({ "count": 10 })).await.status,
        201,
        "the 9 held are free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserving_route_fails_closed_when_the_ledger_is_down() {
    // Proves a hold is never spooled: with the ledger dead the job route answers 503.
    let (mut ledger, svc) = setup().await;
    ledger.kill();

    let a = start_job(&svc, json!({ "count": 1 })).await;

    a.assert_problem(503, "ledger-unavailable");
    assert!(svc.guard.spool().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_sent_twice_is_counted_once() {
    // Proves the key derived from the hold: a second commit (a retry whose first answer
    // was lost) gets the first answer, not reservation-not-held, and counts nothing more.
    let (ledger, svc) = setup().await;
    let client = svc.guard.client();
    let acme = ledger_guard::BrandIdentity::new("acme").unwrap();
    let held = client
        .reserve(
            &acme,
            "renders_3d",
            4,
            60,
            "test-hold-1",
            &Default::default(),
        )
        .await
        .expect("the hold fits");

    let first = client
        .commit(&acme, &held.reservation_id, Some(3))
        .await
        .unwrap();
    let second = client
        .commit(&acme, &held.reservation_id, Some(3))
        .await
        .unwrap();

    assert_eq!((first.committed, first.replayed), (3, false));
    assert_eq!((second.committed, second.replayed), (3, true));
    assert_eq!(ledger.usage("acme", "renders_3d").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_ledger_restarts_while_it_runs_still_commits() {
    // Proves the settle retries: the ledger is down when the job ends (at 500 ms; it comes
    // back after 600 ms), the job's later attempts reach it (pauses of 100, 200, 400 and
    // 800 ms), and the hold placed before the crash is committed.
    let (mut ledger, svc) = setup().await;
    let started = start_job(&svc, json!({ "count": 4, "durationMs": 500 })).await;
    assert_eq!(started.status, 202, "{:#}", started.body);

    ledger.kill();
    tokio::time::sleep(Duration::from_millis(600)).await;
    ledger.restart().await;

    let job = settled(&svc, started.body["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "committed", "{job:#}");
    assert_eq!(ledger.usage("acme", "renders_3d").await, 4);
}
