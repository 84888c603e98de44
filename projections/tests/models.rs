//! Given/when/then tests of each read model: given a history the real aggregate wrote,
//! when the models fold its log, then the rows read as a dashboard or finance expects.
//!
//! Starter (default catalog): base 2900 cents; renders_3d 10 at 100 cents, ai_generations
//! 20 at 75, storage_gb 5 at 50 billed on the peak, team_members 3 blocked; exports_gltf
//! has no quota. Professional: base 9900; renders_3d 50 at 80, ai_generations 150 at 50.

mod common;

use common::*;
use ledger_aggregates::period::Severity;
use ledger_aggregates::{LedgerEvent, Money};
use ledger_projections::{FinanceLine, LineKind, MetricQuota, ReadModels};

fn row<'a>(models: &'a ReadModels, brand_id: &str, key: &str) -> &'a MetricQuota {
    models
        .quota_summary
        .get(&brand(brand_id), nov(), &metric(key))
        .unwrap_or_else(|| panic!("{brand_id} has a row for {key}"))
}

fn line(
    brand_id: &str,
    key: &str,
    kind: LineKind,
    units: i64,
    rate: &str,
    amount: i64,
) -> FinanceLine {
    FinanceLine {
        brand: brand(brand_id),
        metric: metric(key),
        kind,
        units,
        rate: Some(dec(rate)),
        amount: cents(amount),
    }
}

// ---------------------------------------------------------------------------------------
// QuotaSummary.
// ---------------------------------------------------------------------------------------

#[test]
fn a_period_opens_with_one_row_per_quota_of_its_plan_at_zero() {
    // Opening alone gives the dashboard every limit of the plan, before any usage.
    // Given a brand registered on starter; when the models fold the opening:
    let mut ledger = Ledger::new();
    ledger.register("acme", "starter");
    let models = ledger.models();

    // Then every starter quota has a row, and nothing else does.
    let rows = models
        .quota_summary
        .period(&brand("acme"), nov())
        .expect("the period has rows");
    let keys: Vec<&str> = rows.keys().map(|k| k.as_str()).collect();
    let mut quotas: Vec<String> = plan("starter")
        .quotas
        .iter()
        .map(|q| q.metric.to_string())
        .collect();
    quotas.sort();
    assert_eq!(keys, quotas);
    let r3d = row(&models, "acme", R3D);
    assert_eq!(
        (
            r3d.current,
            r3d.base_limit,
            r3d.effective_limit,
            r3d.top_up_units
        ),
        (0, Some(10), Some(10), 0)
    );
    assert_eq!(r3d.percentage, Some(dec("0")));
    assert_eq!((r3d.overage_units, r3d.overage_cost), (0, Money::ZERO));
}

#[test]
fn usage_over_the_limit_shows_the_overage_units_and_their_cost() {
    // The row takes the totals the usage event carried, overage and cost included.
    // Given starter; when 12 renders_3d are recorded (limit 10, 100 cents each over):
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 12)]);
    let models = ledger.models();

    // Then 2 units are over, for 200 cents, at 120 %.
    let r3d = row(&models, "acme", R3D);
    assert_eq!((r3d.current, r3d.billable), (12, 12));
    assert_eq!((r3d.overage_units, r3d.overage_cost), (2, cents(200)));
    assert_eq!(r3d.percentage, Some(dec("120")));
}

#[test]
fn a_top_up_raises_the_effective_limit_and_leaves_the_base_limit() {
    // Top-ups count into the effective limit (and the percentage), never the plan's.
    // Given 12 renders_3d on starter; when 5 units are topped up:
    let mut ledger = Ledger::new();
    ledger.register("acme", "starter").run(
        "acme",
        vec![record(R3D, 12), top_up(R3D, 5, 500, "order-1")],
    );
    let models = ledger.models();

    // Then the limit is 10 + 5, nothing is over any more, and 12 / 15 is 80 %.
    let r3d = row(&models, "acme", R3D);
    assert_eq!(
        (r3d.base_limit, r3d.effective_limit, r3d.top_up_units),
        (Some(10), Some(15), 5)
    );
    assert_eq!((r3d.overage_units, r3d.overage_cost), (0, Money::ZERO));
    assert_eq!(r3d.percentage, Some(dec("80")));
}

#[test]
fn a_gauge_is_billed_on_its_peak_after_it_comes_down() {
    // Storage taken down before the close still bills its peak: billable is the peak.
    // Given starter (storage 5 GB, 50 cents per GB over); when it goes to 8, then 3:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![set_level(STORAGE, 8), set_level(STORAGE, 3)]);
    let models = ledger.models();

    // Then the level is 3 (60 %), and 3 GB over the peak cost 150 cents.
    let storage = row(&models, "acme", STORAGE);
    assert_eq!((storage.current, storage.billable), (3, 8));
    assert_eq!(
        (storage.overage_units, storage.overage_cost),
        (3, cents(150))
    );
    assert_eq!(storage.percentage, Some(dec("60")));
}

#[test]
fn a_gauge_level_carried_from_the_previous_period_opens_in_overage() {
    // `PeriodOpened` carries levels, not totals; the row gets them by the aggregate's rule.
    // Given a brand whose storage stood at 7 GB when October ended; when November opens:
    let mut ledger = Ledger::new();
    ledger.set_plan("acme", &plan("starter"));
    ledger.open("acme", nov(), &plan("starter"), &[(STORAGE, 7)]);
    let models = ledger.models();

    // Then November starts 2 GB over, for 100 cents.
    let storage = row(&models, "acme", STORAGE);
    assert_eq!((storage.current, storage.billable), (7, 7));
    assert_eq!(
        (storage.overage_units, storage.overage_cost),
        (2, cents(100))
    );
    let cost = models
        .period_cost
        .get(&brand("acme"), nov())
        .expect("a cost");
    assert_eq!(cost.overage, cents(100));
}

#[test]
fn a_plan_change_moves_every_row_to_the_new_limits_and_keeps_the_top_ups() {
    // `PlanApplied` re-bases every row, touched or not, and top-ups stay credited.
    // Given 12 renders_3d and a 5-unit top-up on starter; when the brand moves to
    // professional (renders_3d 50, ai_generations 150):
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run(
            "acme",
            vec![record(R3D, 12), top_up(R3D, 5, 500, "order-1")],
        )
        .change_plan("acme", &plan("professional"));
    let models = ledger.models();

    // Then renders_3d is 12 of 50 + 5 (21.82 %), and untouched ai_generations shows 150.
    let r3d = row(&models, "acme", R3D);
    assert_eq!(
        (r3d.base_limit, r3d.effective_limit, r3d.top_up_units),
        (Some(50), Some(55), 5)
    );
    assert_eq!(r3d.percentage, Some(dec("21.82")));
    assert_eq!((r3d.overage_units, r3d.overage_cost), (0, Money::ZERO));
    let ai = row(&models, "acme", AI);
    assert_eq!(
        (ai.base_limit, ai.effective_limit, ai.current),
        (Some(150), Some(150), 0)
    );
}

#[test]
fn a_metric_without_a_quota_gets_a_row_once_used_and_no_percentage() {
    // Unlimited metrics are listed when they see usage, with no limit to be a share of.
    // Given starter, which has no quota for exports_gltf:
    let mut ledger = Ledger::new();
    ledger.register("acme", "starter");
    assert!(ledger
        .models()
        .quota_summary
        .get(&brand("acme"), nov(), &metric(GLTF))
        .is_none());

    // When 3 exports are recorded:
    ledger.decide("acme", record(GLTF, 3));
    let models = ledger.models();

    // Then the row has usage, no limits, no percentage and no overage.
    let gltf = row(&models, "acme", GLTF);
    assert_eq!(gltf.current, 3);
    assert_eq!(
        (gltf.base_limit, gltf.effective_limit, gltf.percentage),
        (None, None, None)
    );
    assert_eq!(gltf.overage_cost, Money::ZERO);
}

#[test]
fn each_brand_and_period_has_rows_of_its_own() {
    // Rows are keyed by brand and period: usage of one never shows in another.
    // Given acme and globex on starter, and acme's December opened too; when acme
    // records 12 renders_3d in November and 4 in December:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .register("globex", "starter");
    ledger.open("acme", dec_period(), &plan("starter"), &[]);
    ledger.decide("acme", record(R3D, 12));
    let december = dec_period().start() + chrono::Duration::days(3);
    ledger
        .try_decide("acme", dec_period(), record_at(R3D, 4, december, december))
        .expect("December takes usage");
    let models = ledger.models();

    // Then each row shows its own usage.
    let current = |b: &str, p| {
        models
            .quota_summary
            .get(&brand(b), p, &metric(R3D))
            .map(|r| r.current)
    };
    assert_eq!(current("acme", nov()), Some(12));
    assert_eq!(current("acme", dec_period()), Some(4));
    assert_eq!(current("globex", nov()), Some(0));
    assert_eq!(current("globex", dec_period()), None);
}

#[test]
fn a_plan_without_a_quota_drops_an_unused_metrics_row_and_keeps_a_used_ones() {
    // Rows are the plan's quotas plus what saw usage, under whichever plan is in force.
    // Given starter with 4 renders_2d used and renders_3d untouched; when the brand moves
    // to a plan without quotas for either:
    let mut lean = plan("starter");
    lean.id = ledger_aggregates::PlanId::parse("lean").expect("a valid plan id");
    lean.quotas
        .retain(|q| q.metric.as_str() != R3D && q.metric.as_str() != "renders_2d");
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record("renders_2d", 4)])
        .change_plan("acme", &lean);
    let models = ledger.models();

    // Then renders_3d has no row, and renders_2d is listed as unlimited.
    let summary = &models.quota_summary;
    assert!(summary.get(&brand("acme"), nov(), &metric(R3D)).is_none());
    let r2d = row(&models, "acme", "renders_2d");
    assert_eq!(
        (r2d.current, r2d.base_limit, r2d.effective_limit),
        (4, None, None)
    );
}

// ---------------------------------------------------------------------------------------
// PeriodCost.
// ---------------------------------------------------------------------------------------

#[test]
fn an_open_periods_estimate_is_the_plan_base_plus_every_metrics_overage() {
    // Estimated cost = base + usage (0) + the sum of the metrics' overage costs.
    // Given starter; when 12 renders_3d (2 × 100) and 22 ai_generations (2 × 75) are used:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 12), record(AI, 22)]);
    let models = ledger.models();

    // Then the estimate is 2900 + 0 + 350 = 3250 cents, not invoiced.
    let cost = models
        .period_cost
        .get(&brand("acme"), nov())
        .expect("a cost");
    assert_eq!(cost.plan_id.as_str(), "starter");
    assert_eq!(
        (cost.base, cost.usage, cost.overage, cost.total),
        (cents(2900), Money::ZERO, cents(350), cents(3250))
    );
    assert_eq!((cost.invoiced, cost.adjustment), (false, Money::ZERO));
    assert_eq!(cost.overage_by_metric.get(&metric(R3D)), Some(&cents(200)));
    assert_eq!(cost.overage_by_metric.get(&metric(AI)), Some(&cents(150)));
}

#[test]
fn overage_is_rounded_once_per_metric_on_the_period_total_half_away_from_zero() {
    // The rounding rule: per metric, on the period's units, halves away from zero; the
    // period sums whole cents. Per-event rounding or one rounding of the sum would differ.
    // Given renders_3d at 0.5 cent and ai_generations at 0.3 cent; when renders_3d goes
    // 3 over one unit at a time and ai_generations 5 over in one record:
    let mut ledger = Ledger::new();
    ledger.register_on("acme", &fractional_starter()).run(
        "acme",
        vec![
            record(R3D, 10),
            record(R3D, 1),
            record(R3D, 1),
            record(R3D, 1),
            record(AI, 25),
        ],
    );
    let models = ledger.models();

    // Then renders_3d costs round(1.5) = 2 (marginals 1, 0, 1), ai_generations
    // round(1.5) = 2, and the period 2 + 2 = 4 cents, not round(3.0) = 3.
    let marginals: Vec<i64> = ledger
        .log()
        .iter()
        .filter_map(|e| match e.as_period() {
            Some((
                _,
                _,
                LedgerEvent::UsageRecorded {
                    metric,
                    marginal_cost,
                    ..
                },
            )) if metric.as_str() == R3D => Some(marginal_cost.minor()),
            _ => None,
        })
        .collect();
    assert_eq!(marginals, [0, 1, 0, 1]);
    let cost = models
        .period_cost
        .get(&brand("acme"), nov())
        .expect("a cost");
    assert_eq!(cost.overage_by_metric.get(&metric(R3D)), Some(&cents(2)));
    assert_eq!(cost.overage_by_metric.get(&metric(AI)), Some(&cents(2)));
    assert_eq!(cost.overage, cents(4));
    assert_eq!(cost.total, cents(2904));
}

#[test]
fn a_closed_period_shows_the_invoice_figures() {
    // After `PeriodClosed`, the estimate is the invoice: same base, overage and total.
    // Given 12 renders_3d on starter; when the period is closed:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 12)]);
    let closed = ledger.decide("acme", close());
    let invoice = invoice_of(&closed);
    let models = ledger.models();

    // Then the estimate reads the invoice's figures and says so.
    let cost = models
        .period_cost
        .get(&brand("acme"), nov())
        .expect("a cost");
    assert!(cost.invoiced);
    assert_eq!(
        (cost.base, cost.overage, cost.total),
        (invoice.base, invoice.overage, invoice.total)
    );
    assert_eq!((cost.overage, cost.total), (cents(200), cents(3100)));
    assert_eq!(cost.adjustment, Money::ZERO);
}

#[test]
fn usage_after_the_close_is_an_adjustment_and_leaves_the_invoice_figures_alone() {
    // Late usage within the grace window moves the overage, never the invoice.
    // Given a closed period with 12 renders_3d (200 cents invoiced); when 3 more that
    // happened on its last evening are reported an hour after its end:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 12), close(), record_late(R3D, 3)]);
    let models = ledger.models();

    // Then the invoice figures stand and the 300 cents are an adjustment.
    let cost = models
        .period_cost
        .get(&brand("acme"), nov())
        .expect("a cost");
    assert_eq!((cost.overage, cost.total), (cents(200), cents(3100)));
    assert_eq!(cost.adjustment, cents(300));
    assert_eq!(cost.overage_by_metric.get(&metric(R3D)), Some(&cents(500)));
}

#[test]
fn a_plan_change_prorates_the_base_and_keeps_the_overage_made_before_it() {
    // The base follows the plans in force, each for its share of the month; overage
    // is measured against the limits in force when the usage happened.
    // Given 12 renders_3d on starter (200 cents over); when the brand moves to
    // professional on the 15th at noon, where 12 of 50 would be under the limit:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 12)])
        .change_plan("acme", &plan("professional"));
    let models = ledger.models();

    // Then the estimate is 14.5 days of starter and 15.5 of professional (1,402 +
    // 5,115), and the 200 cents of starter overage stay.
    let cost = models
        .period_cost
        .get(&brand("acme"), nov())
        .expect("a cost");
    assert_eq!(cost.plan_id.as_str(), "professional");
    assert_eq!(
        (cost.base, cost.overage, cost.total),
        (cents(6517), cents(200), cents(6717))
    );
}

// ---------------------------------------------------------------------------------------
// ActiveAlerts.
// ---------------------------------------------------------------------------------------

#[test]
fn each_threshold_crossing_is_one_entry_in_stream_order_with_its_place_in_the_log() {
    // One entry per `ThresholdCrossed`, even when one usage crosses two thresholds.
    // Given starter (renders_3d 10); when 5 are used (50 %), then 4 more (90 %):
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 5), record(R3D, 4)]);
    let models = ledger.models();

    // Then 50 % warns at 50.00, and 75 % and 90 % both list 90.00, 90 % as critical.
    let alerts = models.active_alerts.get(&brand("acme"), nov());
    let seen: Vec<_> = alerts
        .iter()
        .map(|a| (a.metric.as_str(), a.threshold, a.severity, a.percentage))
        .collect();
    assert_eq!(
        seen,
        [
            (R3D, 50, Severity::Warning, dec("50")),
            (R3D, 75, Severity::Warning, dec("90")),
            (R3D, 90, Severity::Critical, dec("90")),
        ]
    );
    // Each entry points at its own event in the log.
    for alert in alerts {
        let event = &ledger.log()[(alert.position - 1) as usize];
        assert_eq!(event.sequence, alert.sequence);
        assert!(matches!(
            event.as_period(),
            Some((_, _, LedgerEvent::ThresholdCrossed { threshold, .. })) if *threshold == alert.threshold
        ));
    }
}

#[test]
fn a_resolution_takes_its_alert_off_and_the_next_crossing_puts_it_back() {
    // Given starter (renders_3d 10): 9 used raise 50/75/90; a top-up of 10 makes it 9 of
    // 20 = 45 %, resolving all three; 2 more (11 of 20 = 55 %) raise 50 % again.
    let mut ledger = Ledger::new();
    ledger.register("acme", "starter").run(
        "acme",
        vec![record(R3D, 9), top_up(R3D, 10, 0, "grant"), record(R3D, 2)],
    );
    let models = ledger.models();

    // Then only the new 50 % alert stands, the one raised by the last usage.
    let alerts = models.active_alerts.get(&brand("acme"), nov());
    let seen: Vec<_> = alerts
        .iter()
        .map(|a| (a.threshold, a.current, a.effective_limit))
        .collect();
    assert_eq!(seen, [(50, 11, 20)]);
    // And a model emptied by resolutions equals one that never held an alert.
    let mut quiet = Ledger::new();
    quiet
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 9), top_up(R3D, 100, 0, "grant")]);
    assert!(quiet.models().active_alerts.iter().next().is_none());
}

#[test]
fn a_period_without_crossings_has_an_empty_timeline() {
    // Usage under every threshold raises nothing.
    // Given starter; when 4 of 10 renders_3d are used:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 4)]);

    // Then the timeline is empty.
    assert!(ledger
        .models()
        .active_alerts
        .get(&brand("acme"), nov())
        .is_empty());
}

// ---------------------------------------------------------------------------------------
// TopUpHistory.
// ---------------------------------------------------------------------------------------

#[test]
fn each_top_up_is_one_entry_with_its_price_reference_and_actor() {
    // The history lists every credit as applied, with the limit it left.
    // Given starter (renders_3d 10); when 5 then 3 units are topped up:
    let mut ledger = Ledger::new();
    ledger.register("acme", "starter").run(
        "acme",
        vec![
            top_up(R3D, 5, 500, "order-1"),
            top_up(R3D, 3, 0, "goodwill"),
        ],
    );
    let models = ledger.models();

    // Then both are listed in order, with what each left as the effective limit.
    let top_ups = models.top_up_history.get(&brand("acme"), nov());
    let seen: Vec<_> = top_ups
        .iter()
        .map(|t| {
            (
                t.metric.as_str(),
                t.units,
                t.price,
                t.reference.as_str(),
                t.actor.as_str(),
                t.effective_limit,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (R3D, 5, cents(500), "order-1", "billing", Some(15)),
            (R3D, 3, cents(0), "goodwill", "billing", Some(18)),
        ]
    );
    assert!(top_ups[0].position < top_ups[1].position);
}

// ---------------------------------------------------------------------------------------
// OverageLedger.
// ---------------------------------------------------------------------------------------

#[test]
fn an_open_period_has_one_charge_line_per_brand_and_metric_over_its_limit() {
    // Finance sees units over, the plan's rate and the amount, per brand and metric.
    // Given acme and globex on starter; when acme uses 12 renders_3d and globex 22
    // ai_generations:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .register("globex", "starter");
    ledger.decide("acme", record(R3D, 12));
    ledger.decide("globex", record(AI, 22));
    let models = ledger.models();

    // Then there is one charge line each, and the totals add them up.
    assert_eq!(
        models.overage_ledger.lines(nov()),
        [
            line("acme", R3D, LineKind::Charge, 2, "100", 200),
            line("globex", AI, LineKind::Charge, 2, "75", 150),
        ]
    );
    let totals = models.overage_ledger.totals(nov());
    assert_eq!(
        (totals.charged, totals.adjustments, totals.total),
        (cents(350), Money::ZERO, cents(350))
    );
}

#[test]
fn blocked_unlimited_and_under_limit_metrics_have_no_line() {
    // Only `charge` quotas over their effective limit bill anything.
    // Given starter; when seats reach their blocked limit of 3, 100 exports (unlimited)
    // and exactly 10 renders_3d (the limit) are used:
    let mut ledger = Ledger::new();
    ledger.register("acme", "starter").run(
        "acme",
        vec![set_level(SEATS, 3), record(GLTF, 100), record(R3D, 10)],
    );
    let models = ledger.models();

    // Then finance has nothing to bill.
    assert!(models.overage_ledger.lines(nov()).is_empty());
    assert_eq!(models.overage_ledger.totals(nov()).total, Money::ZERO);
}

#[test]
fn units_over_whose_cost_rounds_to_zero_have_no_line_as_on_the_invoice() {
    // A line follows the invoice's rule (units over and a non-zero amount), so closing
    // never adds or drops one.
    // Given ai_generations at 0.3 cent; when 1 unit goes over (0.3 → 0 cents):
    let mut ledger = Ledger::new();
    ledger
        .register_on("acme", &fractional_starter())
        .run("acme", vec![record(AI, 21)]);
    assert_eq!(
        ledger
            .models()
            .quota_summary
            .get(&brand("acme"), nov(), &metric(AI))
            .map(|r| r.overage_units),
        Some(1)
    );

    // Then there is no line, before the close or after it.
    assert!(ledger.models().overage_ledger.lines(nov()).is_empty());
    let closed = ledger.decide("acme", close());
    assert!(invoice_of(&closed).lines.is_empty());
    assert!(ledger.models().overage_ledger.lines(nov()).is_empty());
}

#[test]
fn the_charge_lines_of_a_closed_period_are_the_invoice_lines() {
    // Closing freezes the lines at the invoice's, which equal what finance saw before.
    // Given 12 renders_3d and 22 ai_generations on starter:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 12), record(AI, 22)]);
    let before = ledger.models().overage_ledger.lines(nov());

    // When the period is closed:
    let closed = ledger.decide("acme", close());
    let invoice = invoice_of(&closed);
    let models = ledger.models();

    // Then the lines did not change, and they are the invoice's, to the cent.
    let after = models.overage_ledger.lines(nov());
    assert_eq!(after, before);
    let from_invoice: Vec<FinanceLine> = invoice
        .lines
        .iter()
        .map(|l| FinanceLine {
            brand: brand("acme"),
            metric: l.metric.clone(),
            kind: LineKind::Charge,
            units: l.overage_units as i64,
            rate: l.rate,
            amount: l.amount,
        })
        .collect();
    assert_eq!(after, from_invoice);
    assert_eq!(models.overage_ledger.totals(nov()).charged, invoice.overage);
    let acme = models
        .overage_ledger
        .period(nov())
        .and_then(|p| p.brand(&brand("acme")));
    assert!(acme.is_some_and(|b| b.is_closed()));
}

#[test]
fn late_usage_after_the_close_is_an_adjustment_line_at_the_invoiced_rate() {
    // `after_close` usage is billed apart from the invoice, as an adjustment line.
    // Given a closed period that invoiced 2 renders_3d over (200 cents); when 3 more are
    // reported within the grace window:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 12), close()]);
    let late = ledger.decide("acme", record_late(R3D, 3));
    assert!(matches!(
        late[0].as_period(),
        Some((
            _,
            _,
            LedgerEvent::UsageRecorded {
                after_close: true,
                ..
            }
        ))
    ));
    let models = ledger.models();

    // Then the charge line stands, and an adjustment line bills the 3 units.
    assert_eq!(
        models.overage_ledger.lines(nov()),
        [
            line("acme", R3D, LineKind::Charge, 2, "100", 200),
            line("acme", R3D, LineKind::Adjustment, 3, "100", 300),
        ]
    );
    let totals = models.overage_ledger.totals(nov());
    assert_eq!(
        (totals.charged, totals.adjustments, totals.total),
        (cents(200), cents(300), cents(500))
    );
}

#[test]
fn a_downward_correction_after_the_close_is_a_negative_adjustment() {
    // A correction after the invoice credits the brand: units and amount go negative.
    // Given a closed period that invoiced 2 renders_3d over; when support removes one:
    let mut ledger = Ledger::new();
    ledger.register("acme", "starter").run(
        "acme",
        vec![
            record(R3D, 12),
            close(),
            adjust_at(R3D, -1, after_end(nov(), 2)),
        ],
    );
    let models = ledger.models();

    // Then one adjustment line credits 1 unit, 100 cents.
    assert_eq!(
        models.overage_ledger.lines(nov())[1],
        line("acme", R3D, LineKind::Adjustment, -1, "100", -100)
    );
    assert_eq!(models.overage_ledger.totals(nov()).total, cents(100));
    let cost = models
        .period_cost
        .get(&brand("acme"), nov())
        .expect("a cost");
    assert_eq!(cost.adjustment, cents(-100));
}

#[test]
fn late_usage_corrected_away_leaves_no_adjustment_line() {
    // An adjustment is the change since the close: back to the invoice, nothing to bill.
    // Given a closed period; when 3 late renders_3d are reported, then removed again:
    let mut ledger = Ledger::new();
    ledger.register("acme", "starter").run(
        "acme",
        vec![
            record(R3D, 12),
            close(),
            record_late(R3D, 3),
            adjust_at(R3D, -3, after_end(nov(), 2)),
        ],
    );
    let models = ledger.models();

    // Then only the invoice's charge line is left.
    assert_eq!(
        models.overage_ledger.lines(nov()),
        [line("acme", R3D, LineKind::Charge, 2, "100", 200)]
    );
    assert_eq!(models.overage_ledger.totals(nov()).adjustments, Money::ZERO);
}

#[test]
fn the_ledger_totals_equal_the_sum_of_the_brands_estimates() {
    // Finance's totals reconcile, to the cent, with the per-brand estimated costs.
    // Given an open brand, a closed one and a closed one with late usage:
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .register("globex", "starter");
    ledger.register_on("initech", &fractional_starter());
    ledger.run("acme", vec![record(R3D, 13), set_level(STORAGE, 9)]);
    ledger.run("globex", vec![record(AI, 30), close()]);
    ledger.run(
        "initech",
        vec![record(R3D, 17), close(), record_late(R3D, 4)],
    );
    let models = ledger.models();

    // Then charged is the sum of their overage and adjustments of their adjustments.
    let (overage, adjustment) = models
        .period_cost
        .in_period(nov())
        .fold((Money::ZERO, Money::ZERO), |(o, a), (_, c)| {
            (o + c.overage, a + c.adjustment)
        });
    let totals = models.overage_ledger.totals(nov());
    assert_eq!((totals.charged, totals.adjustments), (overage, adjustment));
    assert_eq!(totals.total, overage + adjustment);
    let lines: Money = models
        .overage_ledger
        .lines(nov())
        .iter()
        .map(|l| l.amount)
        .sum();
    assert_eq!(lines, totals.total);
    assert!(totals.charged > Money::ZERO && totals.adjustments > Money::ZERO);
}

#[test]
fn periods_are_kept_apart_in_the_ledger() {
    // Each period has its own lines and totals.
    // Given acme over its renders_3d limit in November (2 over) and December (5 over):
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .run("acme", vec![record(R3D, 12)]);
    ledger.open("acme", dec_period(), &plan("starter"), &[]);
    let december = dec_period().start() + chrono::Duration::days(3);
    ledger
        .try_decide("acme", dec_period(), record_at(R3D, 15, december, december))
        .expect("December takes usage");
    let models = ledger.models();

    // Then each period bills its own.
    assert_eq!(models.overage_ledger.totals(nov()).total, cents(200));
    assert_eq!(models.overage_ledger.totals(dec_period()).total, cents(500));
    let periods: Vec<String> = models
        .overage_ledger
        .iter()
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(periods, ["2026-11", "2026-12"]);
}
