//! Record, batch, check-quota and grants through HTTP.

use reqwest::Method;
use serde_json::json;
use usage_ledger::auth::Role;

use crate::common::TestDb;
use crate::helpers::{blocking_renders_settings, spawn_app, spawn_app_with};
use crate::on_both_stores;

async fn a_record_answers_the_event_and_the_new_state(db: &TestDb) {
    // A record is answered 201 with the stored event and the metric's state after it;
    // the same key again answers the first result with 200 and appends nothing; the
    // same key with another payload is a 422.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let body = json!({
        "brandId": "acme", "metric": "ai_generations", "value": 16,
        "idempotencyKey": "req-1", "metadata": { "source": "worker-7" }
    });
    let first = app.post("record", &app.admin, body.clone()).await;
    assert_eq!(first.status, 201, "{:#}", first.body);
    let b = &first.body;
    assert_eq!(b["brandId"], "acme");
    assert_eq!(b["period"], "2026-11");
    assert_eq!(b["replayed"], false);
    assert_eq!(b["event"]["metric"], "ai_generations");
    assert_eq!(b["event"]["value"], 16);
    assert_eq!(b["event"]["unit"], "generation");
    assert_eq!(b["event"]["metadata"]["source"], "worker-7");
    assert_eq!(b["event"]["metadata"]["actor"], "admin-test");
    assert_eq!(b["state"]["current"], 16);
    assert_eq!(b["state"]["limit"], 20);
    assert_eq!(b["state"]["percentage"], 80.0);
    // 16 of 20 crosses 50 % and 75 % in this very commit.
    let thresholds: Vec<_> = b["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["threshold"].as_u64().unwrap())
        .collect();
    assert_eq!(thresholds, vec![50, 75]);
    let events_after_first = app.audit("acme").await.len();

    let again = app.post("record", &app.admin, body.clone()).await;
    assert_eq!(again.status, 200, "{:#}", again.body);
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["event"], first.body["event"]);
    assert_eq!(app.audit("acme").await.len(), events_after_first);

    let mut other = body.clone();
    other["value"] = json!(3);
    app.post("record", &app.admin, other)
        .await
        .assert_problem(422, "idempotency-key-reused");
    assert_eq!(app.audit("acme").await.len(), events_after_first);
}
on_both_stores!(
    a_record_answers_the_event_and_the_new_state,
    a_record_answers_the_event_and_the_new_state
);

async fn the_idempotency_key_header_works_like_the_body_field(db: &TestDb) {
    // `Idempotency-Key` is the same key as `idempotencyKey`; both given and different
    // is refused before anything is written.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let send = |key: &'static str, body: serde_json::Value| {
        let req = app
            .client
            .post(format!("{}{}/record", app.base, crate::helpers::PREFIX))
            .bearer_auth(&app.admin)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { crate::helpers::answer(req.send().await.unwrap()).await }
    };
    let body = json!({ "brandId": "acme", "metric": "renders_3d", "value": 2 });
    assert_eq!(send("h-1", body.clone()).await.status, 201);
    assert_eq!(send("h-1", body.clone()).await.status, 200);
    let mut both = body.clone();
    both["idempotencyKey"] = json!("h-2");
    send("h-1", both)
        .await
        .assert_problem(422, "idempotency-key-mismatch");
    let usage = app.get("current/acme", &app.admin).await;
    assert_eq!(usage.body["usage"]["renders_3d"], 2);
}
on_both_stores!(
    the_idempotency_key_header_works_like_the_body_field,
    the_idempotency_key_header_works_like_the_body_field
);

async fn sixty_four_concurrent_consumes_of_a_block_quota_of_fifty_get_exactly_fifty(db: &TestDb) {
    // The original checked without consuming: all 64 would pass. Here check-and-record
    // is one decision, so exactly the 50 renders a blocking business plan allows are
    // granted.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let app = spawn_app_with(&blocking_renders_settings(db, dir.path())).await;
    app.register("acme", "business").await;
    let token = app.token(Role::Service, &["acme"]);
    let calls = (0..64).map(|_| {
        app.post(
            "check-quota",
            &token,
            json!({ "brandId": "acme", "metric": "renders_3d", "consume": true }),
        )
    });
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a.status == 200), "{answers:#?}");
    let allowed = answers
        .iter()
        .filter(|a| a.body["allowed"] == true && a.body["consumed"] == true)
        .count();
    assert_eq!(allowed, 50);
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.body["allowed"] == false)
        .collect();
    assert_eq!(refused.len(), 14);
    assert!(refused.iter().all(|a| a.body["overagePolicy"] == "block"));
    let current = app.get("current/acme", &app.admin).await;
    assert_eq!(current.body["usage"]["renders_3d"], 50);
}
on_both_stores!(
    sixty_four_concurrent_consumes_of_a_block_quota_of_fifty_get_exactly_fifty,
    sixty_four_concurrent_consumes_of_a_block_quota_of_fifty_get_exactly_fifty
);

async fn check_quota_answers_the_original_fields_and_only_consume_writes(db: &TestDb) {
    // A plain check is a pure read: the log does not grow. The decision carries every
    // field of the original's QuotaEvaluation, with marginal and cumulative cost apart.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    app.post(
        "record",
        &app.admin,
        json!({ "brandId": "acme", "metric": "renders_3d", "value": 10 }),
    )
    .await;
    let before = app.audit("acme").await.len();
    let check = app
        .post(
            "check-quota",
            &app.admin,
            json!({ "brandId": "acme", "metric": "renders_3d", "requestedAmount": 3 }),
        )
        .await;
    assert_eq!(check.status, 200, "{:#}", check.body);
    let d = &check.body;
    assert_eq!(d["allowed"], true);
    assert_eq!(d["remaining"], 0);
    assert_eq!(d["limit"], 10);
    assert_eq!(d["effectiveLimit"], 10);
    assert_eq!(d["current"], 10);
    assert_eq!(d["overage"], 3);
    assert_eq!(d["willCharge"], true);
    assert_eq!(d["estimatedCost"], 300);
    assert_eq!(d["planId"], "starter");
    assert_eq!(d["overagePolicy"], "charge");
    assert_eq!(d["consumed"], false);
    assert_eq!(app.audit("acme").await.len(), before);

    let consumed = app
        .post(
            "check-quota",
            &app.admin,
            json!({ "brandId": "acme", "metric": "renders_3d", "requestedAmount": 3, "consume": true }),
        )
        .await;
    assert_eq!(consumed.body["consumed"], true, "{:#}", consumed.body);
    assert_eq!(app.audit("acme").await.len(), before + 1);
}
on_both_stores!(
    check_quota_answers_the_original_fields_and_only_consume_writes,
    check_quota_answers_the_original_fields_and_only_consume_writes
);

async fn a_level_over_a_block_gauge_is_refused_and_the_refusal_is_kept(db: &TestDb) {
    // team_members blocks at 3 on starter: a fourth seat is a 409 quota-exceeded that
    // carries the decision, and the denial is in the audit trail.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    assert_eq!(app.set_gauge("acme", "team_members", 3).await.status, 200);
    let refused = app.set_gauge("acme", "team_members", 4).await;
    refused.assert_problem(409, "quota-exceeded");
    assert_eq!(refused.body["decision"]["allowed"], false);
    assert_eq!(refused.body["decision"]["effectiveLimit"], 3);
    assert_eq!(refused.body["decision"]["current"], 3);
    let events = app.audit("acme").await;
    assert_eq!(events.last().unwrap()["type"], "UsageDenied");
    assert_eq!(
        events.last().unwrap()["payload"]["usage_denied"]["via"],
        "gauge"
    );
}
on_both_stores!(
    a_level_over_a_block_gauge_is_refused_and_the_refusal_is_kept,
    a_level_over_a_block_gauge_is_refused_and_the_refusal_is_kept
);

async fn repeated_refusals_reach_the_audit_trail_as_one_counted_event(db: &TestDb) {
    // 200 refused seats within a minute: the first refusal is in the audit trail at once,
    // the other 199 as one event that counts them when the window ends.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    assert_eq!(app.set_gauge("acme", "team_members", 3).await.status, 200);
    for _ in 0..200 {
        app.set_gauge("acme", "team_members", 4)
            .await
            .assert_problem(409, "quota-exceeded");
    }
    let refusals = |events: Vec<serde_json::Value>| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["type"] == "UsageDenied")
            .map(|e| e["payload"]["usage_denied"]["count"].as_u64().unwrap_or(1))
            .collect()
    };
    assert_eq!(refusals(app.audit("acme").await), [1]);
    app.clock.advance(chrono::Duration::seconds(61));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let counts = refusals(app.audit("acme").await);
        if counts.len() > 1 || std::time::Instant::now() > deadline {
            assert_eq!(counts, [1, 199], "the window's count is appended once");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
on_both_stores!(
    repeated_refusals_are_counted,
    repeated_refusals_reach_the_audit_trail_as_one_counted_event
);

async fn a_batch_answers_each_item_and_commits_the_good_ones(db: &TestDb) {
    // One bad item does not sink the batch: each item gets the status and body it would
    // get alone, and only the good ones are in the log.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let batch = json!({ "events": [
        { "brandId": "acme", "metric": "renders_2d", "value": 5, "idempotencyKey": "b-1" },
        { "brandId": "acme", "metric": "no_such_metric", "value": 1 },
        { "brandId": "acme", "metric": "renders_2d", "value": 0 },
        { "brandId": "ghost", "metric": "renders_2d", "value": 1 },
        { "brandId": "acme", "metric": "renders_2d", "value": 7 }
    ]});
    let a = app.post("record/batch", &app.admin, batch.clone()).await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    let statuses: Vec<_> = a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 422, 422, 404, 201]);
    assert_eq!(a.body["accepted"], 2);
    assert_eq!(a.body["rejected"], 3);
    let current = app.get("current/acme", &app.admin).await;
    assert_eq!(current.body["usage"]["renders_2d"], 12);

    // The keyed item is a replay the second time; the unkeyed one is new usage.
    let again = app.post("record/batch", &app.admin, batch).await;
    assert_eq!(again.body["results"][0]["status"], 200);
    let current = app.get("current/acme", &app.admin).await;
    assert_eq!(current.body["usage"]["renders_2d"], 19);

    let too_many =
        json!({ "events": vec![json!({ "brandId": "acme", "metric": "renders_2d" }); 1001] });
    app.post("record/batch", &app.admin, too_many)
        .await
        .assert_problem(422, "invalid-batch");
    app.post("record/batch", &app.admin, json!({ "events": [] }))
        .await
        .assert_problem(422, "invalid-batch");
    // An item that is not an object is a malformed batch: nothing of it is recorded.
    let mixed = json!({ "events": [{ "brandId": "acme", "metric": "renders_2d" }, 7] });
    app.post("record/batch", &app.admin, mixed)
        .await
        .assert_problem(422, "invalid-batch");
    let current = app.get("current/acme", &app.admin).await;
    assert_eq!(current.body["usage"]["renders_2d"], 19);
}
on_both_stores!(
    a_batch_answers_each_item_and_commits_the_good_ones,
    a_batch_answers_each_item_and_commits_the_good_ones
);

async fn an_admin_grant_raises_the_effective_limit(db: &TestDb) {
    // A manual credit is a free top-up with who and why: the limit rises by the units.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let grant = json!({ "brandId": "acme", "metric": "ai_generations", "units": 25, "reason": "goodwill after incident 42" });
    let a = app.post("topups/grant", &app.admin, grant.clone()).await;
    assert_eq!(a.status, 201, "{:#}", a.body);
    assert_eq!(a.body["state"]["limit"], 45);
    assert_eq!(a.body["state"]["baseLimit"], 20);
    assert_eq!(a.body["state"]["topUpUnits"], 25);
    let brand_token = app.token(Role::Brand, &["acme"]);
    app.post("topups/grant", &brand_token, grant)
        .await
        .assert_problem(403, "forbidden");
    let bad = json!({ "brandId": "acme", "metric": "ai_generations", "units": 5, "reason": "  " });
    app.post("topups/grant", &app.admin, bad)
        .await
        .assert_problem(422, "invalid-reason");
    let events = app.audit("acme").await;
    let top_ups = events
        .iter()
        .filter(|e| e["type"] == "TopUpApplied")
        .count();
    assert_eq!(top_ups, 1);
}
on_both_stores!(
    an_admin_grant_raises_the_effective_limit,
    an_admin_grant_raises_the_effective_limit
);

async fn registering_twice_is_a_no_op_and_a_plan_change_takes_effect_now(db: &TestDb) {
    // PUT /brands is idempotent: 201 then 200 unchanged; a new plan applies to the open
    // period at once.
    let app = spawn_app(db).await;
    let put = |plan: &'static str| {
        app.call(
            Method::PUT,
            "brands/acme",
            Some(&app.admin),
            Some(json!({ "plan": plan })),
        )
    };
    let first = put("starter").await;
    assert_eq!(first.status, 201, "{:#}", first.body);
    assert_eq!(first.body["registered"], true);
    let again = put("starter").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["changed"], false);
    app.post(
        "record",
        &app.admin,
        json!({ "brandId": "acme", "metric": "renders_3d", "value": 12 }),
    )
    .await;
    let upgraded = put("professional").await;
    assert_eq!(upgraded.body["changed"], true);
    assert_eq!(upgraded.body["appliedTo"], "2026-11");
    let summary = app.get("summary/acme", &app.admin).await;
    assert_eq!(summary.body["plan"]["id"], "professional");
    let r3d = summary.body["summary"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "renders_3d")
        .unwrap()
        .clone();
    assert_eq!(r3d["limit"], 50);
    // The 2 renders over starter's 10 were used under starter: they stay its overage.
    assert_eq!(r3d["overage"], 2);
    put("platinum").await.assert_problem(422, "unknown-plan");
}
on_both_stores!(
    registering_twice_is_a_no_op_and_a_plan_change_takes_effect_now,
    registering_twice_is_a_no_op_and_a_plan_change_takes_effect_now
);

async fn a_dated_consumption_lands_in_its_period_and_its_retry_after_midnight_too(db: &TestDb) {
    // A platform service replays at 00:05 on 1 December a consumption it served at
    // 23:58 on 30 November: with `occurredAt` it lands in November, and the retry with
    // the same key (the first answer was lost) is recognised there, not counted again
    // in December. A pure check cannot be dated, and a date in the future is refused.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let served = "2026-11-30T23:58:00Z";
    let midnight = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:05:00Z").unwrap();
    app.clock.set(midnight.with_timezone(&chrono::Utc));
    let body = json!({
        "brandId": "acme", "metric": "ai_generations", "requestedAmount": 2,
        "consume": true, "occurredAt": served, "idempotencyKey": "served-1"
    });
    let first = app.post("check-quota", &app.admin, body.clone()).await;
    assert_eq!(first.status, 200, "{:#}", first.body);
    assert_eq!(
        (
            first.body["consumed"].clone(),
            first.body["replayed"].clone()
        ),
        (json!(true), json!(false))
    );
    let retry = app.post("check-quota", &app.admin, body).await;
    assert_eq!(retry.body["replayed"], true, "{:#}", retry.body);
    let november = app.get("current/acme?period=2026-11", &app.admin).await;
    assert_eq!(
        november.body["usage"]["ai_generations"], 2,
        "{:#}",
        november.body
    );
    let december = app.get("current/acme", &app.admin).await;
    assert_eq!(
        december.body["usage"]["ai_generations"], 0,
        "{:#}",
        december.body
    );

    let pure = json!({ "brandId": "acme", "metric": "ai_generations", "occurredAt": served });
    app.post("check-quota", &app.admin, pure)
        .await
        .assert_problem(422, "invalid-body");
    let ahead = json!({
        "brandId": "acme", "metric": "ai_generations", "consume": true,
        "occurredAt": "2026-12-01T01:00:00Z"
    });
    app.post("check-quota", &app.admin, ahead)
        .await
        .assert_problem(422, "in-future");
}
on_both_stores!(
    a_dated_consumption_lands_in_its_period_and_its_retry_after_midnight_too,
    a_dated_consumption_lands_in_its_period_and_its_retry_after_midnight_too
);
