//! Holds for long jobs through HTTP: a hold counts against a `block` limit until it is
//! committed (what the job used), voided, or expires by itself, also across a restart.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use usage_ledger::auth::Role;
use usage_ledger::clock::Clock;
use usage_ledger::config::Settings;
use usage_ledger::startup::Application;

use crate::common::{manual_clock, t0, TestDb};
use crate::helpers::{blocking_renders_settings, mint, spawn_app_with, TestApp};
use crate::on_both_stores;

/// Business renders are blocked at 50 in [`blocking_renders_settings`]'s catalog.
const LIMIT: u64 = 50;

async fn reserve(app: &TestApp, amount: u64, ttl: u64, key: &str) -> crate::helpers::Answer {
    let body = json!({
        "brandId": "acme", "metric": "renders_3d", "amount": amount,
        "ttlSeconds": ttl, "idempotencyKey": key
    });
    app.post("reservations", &app.admin, body).await
}

async fn renders(app: &TestApp) -> Value {
    let a = app.get("current/acme", &app.admin).await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body["usage"]["renders_3d"].clone()
}

async fn a_hold_is_counted_until_committed_or_voided(db: &TestDb) {
    // Given 50 blocked renders, a job holds 30: a check for 21 is refused, a hold of 21
    // is a 409 with the decision; the job commits 12 (18 come back), another hold is
    // voided, and only the committed 12 are usage.
    let dir = tempfile::tempdir().expect("a temp dir");
    let app = spawn_app_with(&blocking_renders_settings(db, dir.path())).await;
    app.register("acme", "business").await;

    let held = reserve(&app, 30, 600, "job-1").await;
    assert_eq!(held.status, 201, "{:#}", held.body);
    let id = held.body["reservationId"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert_eq!(id, "acme:2026-11:1");
    assert_eq!(held.body["status"], "held");
    assert_eq!(held.body["reserved"], 30);
    assert_eq!(held.body["remaining"], LIMIT - 30);
    assert_eq!(held.body["consumed"], false);
    assert_eq!(held.body["expiresAt"], "2026-11-15T12:10:00Z");
    let again = reserve(&app, 30, 600, "job-1").await;
    assert_eq!(again.status, 200, "{:#}", again.body);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["reservationId"], id.as_str());

    let check = json!({ "brandId": "acme", "metric": "renders_3d", "requestedAmount": 21 });
    let refused = app.post("check-quota", &app.admin, check).await;
    assert_eq!(refused.body["allowed"], false, "{:#}", refused.body);
    let over = reserve(&app, 21, 600, "job-2").await;
    over.assert_problem(409, "quota-exceeded");
    assert_eq!(over.body["decision"]["reserved"], 30, "{:#}", over.body);

    let too_much = app
        .post(
            &format!("reservations/{id}/commit"),
            &app.admin,
            json!({ "amount": 31 }),
        )
        .await;
    too_much.assert_problem(422, "above-reservation");
    let committed = app
        .post(
            &format!("reservations/{id}/commit"),
            &app.admin,
            json!({ "amount": 12 }),
        )
        .await;
    assert_eq!(committed.status, 200, "{:#}", committed.body);
    assert_eq!(committed.body["status"], "committed");
    assert_eq!(committed.body["committed"], 12);
    assert_eq!(committed.body["released"], 18);
    assert_eq!(committed.body["consumed"], true);
    assert_eq!(committed.body["reserved"], 0);
    assert_eq!(committed.body["remaining"], LIMIT - 12);
    app.post(&format!("reservations/{id}/commit"), &app.admin, json!({}))
        .await
        .assert_problem(409, "reservation-not-held");

    let second = reserve(&app, 38, 600, "job-3").await;
    assert_eq!(second.status, 201, "{:#}", second.body);
    let second_id = second.body["reservationId"]
        .as_str()
        .expect("an id")
        .to_owned();
    // No body at all: a void needs none.
    let voided = app
        .call(
            Method::POST,
            &format!("reservations/{second_id}/void"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(voided.status, 200, "{:#}", voided.body);
    assert_eq!(voided.body["released"], 38);
    assert_eq!(voided.body["state"]["reserved"], 0);
    app.post(
        &format!("reservations/{second_id}/void"),
        &app.admin,
        json!({}),
    )
    .await
    .assert_problem(409, "reservation-not-held");
    assert_eq!(renders(&app).await, 12);

    let summary = app.get("summary/acme", &app.admin).await;
    let metrics = summary.body["summary"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let r3d = metrics
        .iter()
        .find(|m| m["type"] == "renders_3d")
        .expect("renders");
    assert_eq!(r3d["current"], 12, "{:#}", summary.body);
    assert_eq!(r3d["reserved"], 0, "{:#}", summary.body);
}
on_both_stores!(
    a_hold_is_counted_until_committed_or_voided,
    a_hold_is_counted_until_committed_or_voided
);

async fn reservations_refuse_bad_input_and_other_tenants(db: &TestDb) {
    // A TTL out of range, a gauge, a malformed id and a hold never placed are precise
    // 4xx; another brand's credential cannot touch acme's hold; nothing is written.
    let dir = tempfile::tempdir().expect("a temp dir");
    let app = spawn_app_with(&blocking_renders_settings(db, dir.path())).await;
    app.register("acme", "business").await;
    app.register("globex", "business").await;
    let before = app.audit("acme").await.len();
    for (body, kind) in [
        (
            json!({ "brandId": "acme", "metric": "renders_3d", "amount": 1, "ttlSeconds": 0 }),
            "invalid-body",
        ),
        (
            json!({ "brandId": "acme", "metric": "renders_3d", "amount": 1, "ttlSeconds": 86_401 }),
            "invalid-body",
        ),
        (
            json!({ "brandId": "acme", "metric": "renders_3d", "amount": 0, "ttlSeconds": 60 }),
            "invalid-body",
        ),
        (
            json!({ "brandId": "acme", "metric": "team_members", "amount": 1, "ttlSeconds": 60 }),
            "gauge-is-set",
        ),
        (
            json!({ "brandId": "acme", "metric": "nope", "amount": 1, "ttlSeconds": 60 }),
            "unknown-metric",
        ),
    ] {
        app.post("reservations", &app.admin, body)
            .await
            .assert_problem(422, kind);
    }
    app.post("reservations/acme:2026-11:x/commit", &app.admin, json!({}))
        .await
        .assert_problem(400, "bad-request");
    app.post("reservations/acme:2026-11:9/commit", &app.admin, json!({}))
        .await
        .assert_problem(404, "not-found");
    assert_eq!(app.audit("acme").await.len(), before);

    let held = reserve(&app, 5, 600, "job-1").await;
    let id = held.body["reservationId"]
        .as_str()
        .expect("an id")
        .to_owned();
    let globex = mint(&app.auth, Role::Service, &["globex"]);
    app.post(&format!("reservations/{id}/commit"), &globex, json!({}))
        .await
        .assert_problem(404, "not-found");
    let body = json!({ "brandId": "acme", "metric": "renders_3d", "amount": 1, "ttlSeconds": 60 });
    app.post("reservations", &globex, body)
        .await
        .assert_problem(404, "not-found");
    assert_eq!(renders(&app).await, 0);
}
on_both_stores!(
    reservations_refuse_bad_input_and_other_tenants,
    reservations_refuse_bad_input_and_other_tenants
);

/// Wait until `brand`'s audit trail holds an event of `event_type`, or fail.
async fn await_event(app: &TestApp, event_type: &str) -> Value {
    for _ in 0..100 {
        if let Some(e) = app
            .audit("acme")
            .await
            .into_iter()
            .find(|e| e["type"] == event_type)
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {event_type} within 10 s");
}

async fn a_hold_expires_by_itself_and_its_commit_is_refused(db: &TestDb) {
    // A hold of all 50 with a 60 s TTL: at 61 s a check for 50 is allowed at once, a
    // commit is a 409 `reservation-expired`, and the sweeper appends the release dated
    // at the expiry instant.
    let dir = tempfile::tempdir().expect("a temp dir");
    let app = spawn_app_with(&blocking_renders_settings(db, dir.path())).await;
    app.register("acme", "business").await;
    let held = reserve(&app, LIMIT, 60, "job-1").await;
    assert_eq!(held.status, 201, "{:#}", held.body);
    let id = held.body["reservationId"]
        .as_str()
        .expect("an id")
        .to_owned();
    app.clock.set(t0() + chrono::TimeDelta::seconds(61));

    let check = json!({ "brandId": "acme", "metric": "renders_3d", "requestedAmount": LIMIT });
    let allowed = app.post("check-quota", &app.admin, check).await;
    assert_eq!(allowed.body["allowed"], true, "{:#}", allowed.body);
    assert_eq!(allowed.body["reserved"], 0, "{:#}", allowed.body);
    app.post(&format!("reservations/{id}/commit"), &app.admin, json!({}))
        .await
        .assert_problem(409, "reservation-expired");

    let released = await_event(&app, "HoldReleased").await;
    assert_eq!(
        released["payload"]["hold_released"]["reason"], "expired",
        "{released:#}"
    );
    assert_eq!(
        released["payload"]["hold_released"]["at"], "2026-11-15T12:01:00Z",
        "{released:#}"
    );
    assert_eq!(renders(&app).await, 0);
}
on_both_stores!(
    a_hold_expires_by_itself_and_its_commit_is_refused,
    a_hold_expires_by_itself_and_its_commit_is_refused
);

/// A service on `settings` that stops when the returned sender is dropped or fired.
async fn start(
    settings: &Settings,
) -> (
    TestApp,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let clock = manual_clock();
    let app = Application::build(settings, clock.clone())
        .await
        .expect("the service starts");
    let base = format!("http://{}", app.local_addr());
    let auth = app.auth().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        app.run_until(shutdown).await.expect("serve");
    });
    let admin = mint(&auth, Role::Admin, &[]);
    let app = TestApp {
        base,
        client: reqwest::Client::new(),
        clock,
        auth,
        admin,
    };
    (app, stop, serving)
}

async fn open_holds_survive_a_restart(db: &TestDb) {
    // Holds placed before a restart still count, commit and expire after it: the
    // state comes back from the log, and the new process finds the holds to expire.
    let dir = tempfile::tempdir().expect("a temp dir");
    let settings = blocking_renders_settings(db, dir.path());
    let (first, stop, serving) = start(&settings).await;
    first.register("acme", "business").await;
    let short = reserve(&first, 20, 120, "short").await;
    let long = reserve(&first, 25, 3_600, "long").await;
    assert_eq!((short.status.as_u16(), long.status.as_u16()), (201, 201));
    let long_id = long.body["reservationId"]
        .as_str()
        .expect("an id")
        .to_owned();
    stop.send(()).expect("the service is running");
    serving.await.expect("the service stops");

    let (second, _stop, _serving) = start(&settings).await;
    let check = json!({ "brandId": "acme", "metric": "renders_3d", "requestedAmount": 6 });
    let refused = second.post("check-quota", &second.admin, check).await;
    assert_eq!(refused.body["allowed"], false, "{:#}", refused.body);
    assert_eq!(refused.body["reserved"], 45, "{:#}", refused.body);

    second.clock.set(t0() + chrono::TimeDelta::seconds(121));
    assert_eq!(second.clock.now(), t0() + chrono::TimeDelta::seconds(121));
    let released = await_event(&second, "HoldReleased").await;
    assert_eq!(
        released["payload"]["hold_released"]["hold"], 1,
        "{released:#}"
    );
    let committed = second
        .post(
            &format!("reservations/{long_id}/commit"),
            &second.admin,
            json!({ "amount": 10 }),
        )
        .await;
    assert_eq!(committed.status, 200, "{:#}", committed.body);
    assert_eq!(committed.body["reserved"], 0, "{:#}", committed.body);
    assert_eq!(renders(&second).await, 10);
}
on_both_stores!(open_holds_survive_a_restart, open_holds_survive_a_restart);
