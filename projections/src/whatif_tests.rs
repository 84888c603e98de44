//! The what-if calculators against hand-computed tables. Every row states its
//! arithmetic. Fixtures are on the default catalog: starter has renders_3d 10 @100,
//! ai_generations 20 @75, storage_gb 5 @50 (gauge), api_calls 10,000 @1, team_members 3
//! (block); base 2,900. Period 2026-11 (30 days); "now" is 2026-11-15 12:00 UTC, 14
//! whole days in.

use std::str::FromStr;

use chrono::TimeZone;

use super::*;

fn catalog() -> Catalog {
    Catalog::default_catalog()
}

fn key(m: &str) -> MetricKey {
    MetricKey::parse(m).unwrap()
}

fn plan(id: &str) -> PlanDefinition {
    catalog().plan(&PlanId::parse(id).unwrap()).unwrap().clone()
}

fn period() -> PeriodKey {
    PeriodKey::parse("2026-11").unwrap()
}

/// 2026-11-15 12:00 UTC: 14.5 days in, 14 whole days.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// One metric's usage in a fixture.
struct Usage {
    metric: &'static str,
    current: u64,
    peak: u64,
    top_ups: u64,
    reserved: u64,
}

fn used(metric: &'static str, current: u64) -> Usage {
    Usage {
        metric,
        current,
        peak: current,
        top_ups: 0,
        reserved: 0,
    }
}

impl Usage {
    fn top_ups(self, top_ups: u64) -> Self {
        Usage { top_ups, ..self }
    }
    fn peak(self, peak: u64) -> Self {
        Usage { peak, ..self }
    }
    fn reserved(self, reserved: u64) -> Self {
        Usage { reserved, ..self }
    }
}

/// The figures the read models would hold for `rows` on `plan`, with no plan change:
/// overage = billable above limit + top-ups, priced on the total (the aggregate's rule).
fn figures_on(plan: PlanDefinition, rows: Vec<Usage>) -> PeriodFigures {
    let figures_of = |quota: Option<&PlanQuota>, u: &Usage| {
        let billable = u.peak.max(u.current);
        let effective = quota.map(|q| q.limit + u.top_ups);
        let overage_units = effective.map_or(0, |l| billable.saturating_sub(l));
        let overage_cost = quota
            .and_then(charge_rate)
            .map_or(Money::ZERO, |r| cost_of(overage_units, r));
        MetricFigures {
            metric: key(u.metric),
            current: u.current,
            billable,
            base_limit: quota.map(|q| q.limit),
            effective_limit: effective,
            overage_units,
            overage_cost,
            reserved: u.reserved,
        }
    };
    let mut metrics: Vec<MetricFigures> = plan
        .quotas
        .iter()
        .map(|q| {
            let zero = used("designs_created", 0);
            let row = rows.iter().find(|u| key(u.metric) == q.metric);
            let mut f = figures_of(Some(q), row.unwrap_or(&zero));
            f.metric = q.metric.clone();
            f
        })
        .collect();
    metrics.extend(
        rows.iter()
            .filter(|u| plan.quota(&key(u.metric)).is_none())
            .map(|u| figures_of(None, u)),
    );
    PeriodFigures {
        period: period(),
        base: plan.base_price_cents,
        overage: metrics.iter().map(|m| m.overage_cost).sum(),
        plan,
        metrics,
    }
}

fn figures(plan_id: &str, rows: Vec<Usage>) -> PeriodFigures {
    figures_on(plan(plan_id), rows)
}

fn cents(n: i64) -> Money {
    Money::from_minor(n)
}

// ---------------------------------------------------------------------------------
// Days
// ---------------------------------------------------------------------------------

#[test]
fn elapsed_days_are_whole_utc_days_at_least_one_at_most_the_period() {
    let at = |d, h, m, s| Utc.with_ymd_and_hms(2026, 11, d, h, m, s).unwrap();
    assert_eq!(period_days(period()), 30);
    assert_eq!(period_days(PeriodKey::parse("2028-02").unwrap()), 29);
    // Day 1 at 05:00: 0.2 days gone, counted as 1.
    assert_eq!(elapsed_days(period(), at(1, 5, 0, 0)), 1);
    // 15 Nov 23:59:59: 14.99 days, 14 whole.
    assert_eq!(elapsed_days(period(), at(15, 23, 59, 59)), 14);
    // 16 Nov 00:00: 15 whole days.
    assert_eq!(elapsed_days(period(), at(16, 0, 0, 0)), 15);
    // 10 Dec: the period is over, all 30 days.
    let december = Utc.with_ymd_and_hms(2026, 12, 10, 0, 0, 0).unwrap();
    assert_eq!(elapsed_days(period(), december), 30);
}

// ---------------------------------------------------------------------------------
// Top-up simulation
// ---------------------------------------------------------------------------------

#[test]
fn a_simulated_top_up_without_earlier_top_ups() {
    // renders_3d 7 of 10, +5 units. Rate 7/14 = 0.5/day. Original days (10-7)/0.5 = 6,
    // simulated (15-7)/0.5 = 16, regained 10. 7/10 = 70 %, 7/15 = 46.666… → 46.67 %.
    // Cost: 5 × 100 = 500 cents.
    let f = figures("starter", vec![used("renders_3d", 7)]);
    let s = simulate_top_up(&f, &catalog(), &key("renders_3d"), 5, now()).unwrap();
    assert_eq!(
        (
            s.base_limit,
            s.bonus_units,
            s.effective_limit,
            s.simulated_limit
        ),
        (10, 0, 10, 15)
    );
    assert_eq!(s.current, 7);
    assert_eq!(s.current_percentage, dec("70"));
    assert_eq!(s.simulated_percentage, dec("46.67"));
    assert_eq!(s.original_days_to_limit, Some(dec("6")));
    assert_eq!(s.simulated_days_to_limit, Some(dec("16")));
    assert_eq!(s.regained_days, Some(dec("10")));
    assert_eq!(s.estimated_cost, Some(cents(500)));
    assert_eq!(s.overage_policy, OveragePolicy::Charge);
    assert_eq!(s.unit, "render");
}

#[test]
fn a_simulated_top_up_starts_from_the_periods_top_ups() {
    // renders_3d 7 of 10 + 4 topped up = 14; +5 → 19. 7/14 = 50 %, 7/19 = 36.842… →
    // 36.84 %. Days (14-7)/0.5 = 14 and (19-7)/0.5 = 24, regained 10.
    let f = figures("starter", vec![used("renders_3d", 7).top_ups(4)]);
    let s = simulate_top_up(&f, &catalog(), &key("renders_3d"), 5, now()).unwrap();
    assert_eq!(
        (
            s.base_limit,
            s.bonus_units,
            s.effective_limit,
            s.simulated_limit
        ),
        (10, 4, 14, 19)
    );
    assert_eq!(s.current_percentage, dec("50"));
    assert_eq!(s.simulated_percentage, dec("36.84"));
    assert_eq!(s.original_days_to_limit, Some(dec("14")));
    assert_eq!(s.simulated_days_to_limit, Some(dec("24")));
    assert_eq!(s.regained_days, Some(dec("10")));
}

#[test]
fn a_simulation_without_usage_has_no_days_to_limit() {
    // Nothing used: rate 0, the limit is never reached; 0 % both ways.
    let f = figures("starter", vec![]);
    let s = simulate_top_up(&f, &catalog(), &key("ai_generations"), 10, now()).unwrap();
    assert_eq!(s.current_percentage, Decimal::ZERO);
    assert_eq!(s.simulated_percentage, Decimal::ZERO);
    assert_eq!(s.original_days_to_limit, None);
    assert_eq!(s.simulated_days_to_limit, None);
    assert_eq!(s.regained_days, None);
    assert_eq!(s.estimated_cost, Some(cents(750))); // 10 × 75
}

#[test]
fn days_to_limit_are_negative_past_the_limit() {
    // renders_3d 21 of 10: rate 21/14 = 1.5. (10-21)/1.5 = -7.333… → -7.33; +5 units:
    // (15-21)/1.5 = -4; regained -4 - (-7.33) = 3.33. 21/10 = 210 % (not capped).
    let f = figures("starter", vec![used("renders_3d", 21)]);
    let s = simulate_top_up(&f, &catalog(), &key("renders_3d"), 5, now()).unwrap();
    assert_eq!(s.current_percentage, dec("210"));
    assert_eq!(s.original_days_to_limit, Some(dec("-7.33")));
    assert_eq!(s.simulated_days_to_limit, Some(dec("-4")));
    assert_eq!(s.regained_days, Some(dec("3.33")));
}

#[test]
fn a_simulation_of_zero_units_changes_nothing_and_block_has_no_cost() {
    // team_members 2 of 3 (block): +0 units. Rate 2/14; days (3-2)/(2/14) = 7 both ways.
    let f = figures("starter", vec![used("team_members", 2)]);
    let s = simulate_top_up(&f, &catalog(), &key("team_members"), 0, now()).unwrap();
    assert_eq!(s.simulated_limit, s.effective_limit);
    assert_eq!(s.original_days_to_limit, Some(dec("7")));
    assert_eq!(s.regained_days, Some(Decimal::ZERO));
    assert_eq!(s.estimated_cost, None);
    assert_eq!(s.overage_policy, OveragePolicy::Block);
}

#[test]
fn a_simulation_refuses_unlimited_unknown_and_out_of_range_questions() {
    let f = figures("starter", vec![]);
    let c = catalog();
    assert_eq!(
        simulate_top_up(&f, &c, &key("exports_gltf"), 1, now()),
        Err(WhatIfError::MetricNotInPlan {
            metric: key("exports_gltf"),
            plan: PlanId::parse("starter").unwrap()
        })
    );
    assert_eq!(
        simulate_top_up(&f, &c, &key("teleports"), 1, now()),
        Err(WhatIfError::UnknownMetric(key("teleports")))
    );
    let too_many = SIMULATED_TOP_UP_UNITS_MAX + 1;
    assert!(matches!(
        simulate_top_up(&f, &c, &key("renders_3d"), too_many, now()),
        Err(WhatIfError::OutOfRange { field: "units", .. })
    ));
}

// ---------------------------------------------------------------------------------
// Recommended plan
// ---------------------------------------------------------------------------------

#[test]
fn no_upgrade_is_recommended_below_85_percent() {
    // renders_3d 8 of 10 = 80 %, no overage.
    let r = recommend_plan(&figures("starter", vec![used("renders_3d", 8)]), &catalog());
    assert_eq!((r.kind, r.plan), (RecommendationKind::NotNeeded, None));
}

#[test]
fn an_upgrade_is_the_first_higher_tier_that_is_not_tense() {
    // renders_3d 9 of 10 = 90 % ≥ 85: professional has 50, 9/50 = 18 % < 90.
    let r = recommend_plan(&figures("starter", vec![used("renders_3d", 9)]), &catalog());
    assert_eq!(r.kind, RecommendationKind::Upgrade);
    assert_eq!(r.plan, Some(PlanId::parse("professional").unwrap()));
    // ai_generations 140 on professional (150, 93 %): business 500, 28 %.
    let r = recommend_plan(
        &figures("professional", vec![used("ai_generations", 140)]),
        &catalog(),
    );
    assert_eq!(r.plan, Some(PlanId::parse("business").unwrap()));
}

#[test]
fn the_candidates_limits_include_the_periods_top_ups() {
    // renders_3d 45 of 10 + 40 = 50: 90 %, needs an upgrade. Professional: 50 + 40 = 90,
    // 45/90 = 50 %: not tense. On base limits (the original) 45/50 = 90 % would have
    // sent the brand to business.
    let f = figures("starter", vec![used("renders_3d", 45).top_ups(40)]);
    let r = recommend_plan(&f, &catalog());
    assert_eq!(r.plan, Some(PlanId::parse("professional").unwrap()));
}

#[test]
fn when_every_higher_tier_is_tense_the_top_tier_is_recommended_and_said_so() {
    // api_calls 9,500,000: professional 100,000, business 200,000, enterprise
    // 9,999,999 (95 %): all tense.
    let f = figures("starter", vec![used("api_calls", 9_500_000)]);
    let r = recommend_plan(&f, &catalog());
    assert_eq!(r.kind, RecommendationKind::UpgradeStillTense);
    assert_eq!(r.plan, Some(PlanId::parse("enterprise").unwrap()));
}

#[test]
fn on_the_top_tier_the_recommendation_is_never_the_own_plan() {
    // api_calls 9,000,000 of 9,999,999 on enterprise = 90.000009 % ≥ 85: nothing higher.
    // The original recommended enterprise itself.
    let f = figures("enterprise", vec![used("api_calls", 9_000_000)]);
    let r = recommend_plan(&f, &catalog());
    assert_eq!((r.kind, r.plan), (RecommendationKind::TopTier, None));
    assert!(r.message.contains("top tier"), "{}", r.message);
    // And on any plan, whatever the usage, the answer is never the plan itself.
    for p in catalog().plans() {
        for usage in [0, 9, 45, 400, 10_000_000] {
            let f = figures_on(p.clone(), vec![used("renders_3d", usage)]);
            assert_ne!(recommend_plan(&f, &catalog()).plan.as_ref(), Some(&p.id));
        }
    }
}

// ---------------------------------------------------------------------------------
// Plan comparison
// ---------------------------------------------------------------------------------

#[test]
fn plans_are_compared_on_the_periods_usage_cheapest_first() {
    // renders_3d 30, api_calls 12,000:
    //   starter:      (30-10)×100 + (12,000-10,000)×1 = 4,000; 2,900 + 4,000 = 6,900
    //   professional: within 50 and 100,000: 9,900          (+3,000: acceptable)
    //   business:     29,900                                 (+23,000: > 5,000)
    //   enterprise:   99,900                                 (+93,000)
    let f = figures(
        "starter",
        vec![used("renders_3d", 30), used("api_calls", 12_000)],
    );
    let c = compare_plans(&f, &catalog());
    let rows: Vec<(&str, i64, i64, i64, ComparisonVerdict)> = c
        .plans
        .iter()
        .map(|p| {
            (
                p.plan.as_str(),
                p.estimated_overage.minor(),
                p.total.minor(),
                p.extra_cost_vs_cheapest.minor(),
                p.verdict,
            )
        })
        .collect();
    use ComparisonVerdict::*;
    assert_eq!(
        rows,
        vec![
            ("starter", 4_000, 6_900, 0, BestValue),
            ("professional", 0, 9_900, 3_000, Acceptable),
            ("business", 0, 29_900, 23_000, SignificantlyMoreExpensive),
            ("enterprise", 0, 99_900, 93_000, SignificantlyMoreExpensive),
        ]
    );
    assert!(c.plans[0].current && !c.plans[1].current);
    // The own plan's figure is the period's: the summary says 2,900 + 4,000 too.
    assert_eq!(c.plans[0].total, f.base + f.overage);
}

#[test]
fn a_comparison_adds_the_periods_top_ups_to_every_plans_limits() {
    // renders_3d 30 with 20 topped up: starter 10 + 20 = 30, no renders overage;
    // api_calls 12,000: 2,000. Starter: 2,900 + 2,000 = 4,900.
    let f = figures(
        "starter",
        vec![
            used("renders_3d", 30).top_ups(20),
            used("api_calls", 12_000),
        ],
    );
    let c = compare_plans(&f, &catalog());
    assert_eq!(c.plans[0].plan.as_str(), "starter");
    assert_eq!(c.plans[0].total, cents(4_900));
}

#[test]
fn a_plan_whose_block_limit_the_usage_exceeds_says_so() {
    // team_members peak 5: above starter's 3 (block), within professional's 10.
    let f = figures("professional", vec![used("team_members", 5)]);
    let c = compare_plans(&f, &catalog());
    let of = |id: &str| c.plans.iter().find(|p| p.plan.as_str() == id).unwrap();
    assert_eq!(of("starter").blocked_metrics, vec![key("team_members")]);
    assert!(of("professional").blocked_metrics.is_empty());
}

// ---------------------------------------------------------------------------------
// Projections and velocity
// ---------------------------------------------------------------------------------

#[test]
fn velocity_status_thresholds() {
    // Exact integer comparisons of projected against limit.
    assert_eq!(VelocityStatus::of(21, 20), VelocityStatus::Critical); // 105 %
    assert_eq!(VelocityStatus::of(209, 200), VelocityStatus::Warning); // 104.5 %
    assert_eq!(VelocityStatus::of(18, 20), VelocityStatus::Warning); // 90 %
    assert_eq!(VelocityStatus::of(179, 200), VelocityStatus::Ok); // 89.5 %
    assert_eq!(VelocityStatus::of(0, 0), VelocityStatus::Ok);
    assert_eq!(VelocityStatus::Critical.label(), "Action immédiate");
    assert_eq!(VelocityStatus::Warning.label(), "Sous tension");
    assert_eq!(VelocityStatus::Ok.label(), "Stable");
}

#[test]
fn projections_on_whole_days_to_the_periods_end() {
    // 14 whole days of 30:
    //   renders_3d 7:       7/14 = 0.5/day → 15 by the end, 150 % critical, (10-7)/0.5 = 6 days
    //   ai_generations 9:   9/14 = 0.642857… → 19.2857 → 19, 95 % warning,
    //                       (20-9)/0.642857… = 17.111… → 17.11 days
    //   storage_gb level 4: a gauge stands: 4 of 5, 80 % ok, no days to limit
    //   designs_created 0:  0, ok, no days to limit
    // Over a 30-day month: renders (15-10)×100 = 500 overage; ai 19 ≤ 20 nothing.
    // projectedMonthly = 2,900 + 500. Recommendations above 90 %: renders 150 %, ai 95 %.
    let f = figures(
        "starter",
        vec![
            used("renders_3d", 7),
            used("ai_generations", 9),
            used("storage_gb", 4),
        ],
    );
    let p = project(&f, 30, now()).unwrap();
    assert_eq!((p.elapsed_days, p.period_days), (14, 30));
    let v = |m: &str| p.velocity.iter().find(|v| v.metric == key(m)).unwrap();
    let r = v("renders_3d");
    assert_eq!((r.daily_rate, r.projected_units), (dec("0.5"), 15));
    assert_eq!(r.projected_percentage, dec("150"));
    assert_eq!(
        (r.days_to_limit, r.status),
        (Some(dec("6")), VelocityStatus::Critical)
    );
    let a = v("ai_generations");
    assert_eq!((a.daily_rate, a.projected_units), (dec("0.64"), 19));
    assert_eq!(
        (a.days_to_limit, a.status),
        (Some(dec("17.11")), VelocityStatus::Warning)
    );
    let s = v("storage_gb");
    assert_eq!((s.projected_units, s.days_to_limit), (4, None));
    assert_eq!(
        (s.projected_percentage, s.status),
        (dec("80"), VelocityStatus::Ok)
    );
    let d = v("designs_created");
    assert_eq!((d.projected_units, d.days_to_limit), (0, None));
    assert_eq!(p.velocity[0].metric, key("renders_3d"), "highest first");
    assert_eq!(p.projected_overage, cents(500));
    assert_eq!(p.projected_monthly, cents(3_400));
    assert_eq!(
        p.recommendations,
        vec![
            "⚠️  renders_3d will reach 150% of quota. Consider upgrading.".to_owned(),
            "⚠️  ai_generations will reach 95% of quota. Consider upgrading.".to_owned(),
        ]
    );
}

#[test]
fn on_the_first_day_the_usage_so_far_is_a_days_pace() {
    // 1 Nov 05:00, renders_3d 1: 1/day → 30 by the end, 300 %, (10-1)/1 = 9 days.
    let early = Utc.with_ymd_and_hms(2026, 11, 1, 5, 0, 0).unwrap();
    let f = figures("starter", vec![used("renders_3d", 1)]);
    let p = project(&f, 30, early).unwrap();
    let r = p
        .velocity
        .iter()
        .find(|v| v.metric == key("renders_3d"))
        .unwrap();
    assert_eq!(p.elapsed_days, 1);
    assert_eq!((r.projected_units, r.days_to_limit), (30, Some(dec("9"))));
    assert_eq!(r.status, VelocityStatus::Critical);
}

#[test]
fn the_current_daily_cost_is_the_overage_so_far_per_elapsed_day_half_up() {
    // api_calls 10,021: 21 over at 1 cent = 21 cents in 14 days = 1.5 → 2 cents a day.
    // Over 7 days at 10,021/14 = 715.79/day: 5,010.5 → 5,011 calls, no overage.
    let f = figures("starter", vec![used("api_calls", 10_021)]);
    let p = project(&f, 7, now()).unwrap();
    assert_eq!(p.current_daily, cents(2));
    assert_eq!(p.projected_overage, Money::ZERO);
    assert_eq!(p.projected_monthly, cents(2_900));
    assert!(p.recommendations.is_empty());
}

#[test]
fn projection_days_have_a_named_range() {
    let f = figures("starter", vec![]);
    for days in [0, PROJECTION_DAYS_MAX + 1] {
        assert!(matches!(
            project(&f, days, now()),
            Err(WhatIfError::OutOfRange { field: "days", .. })
        ));
    }
    assert!(project(&f, PROJECTION_DAYS_MAX, now()).is_ok());
}

// ---------------------------------------------------------------------------------
// Estimate
// ---------------------------------------------------------------------------------

#[test]
fn an_estimate_below_the_limit_costs_nothing() {
    // renders_3d 5 + 3 = 8 ≤ 10.
    let f = figures("starter", vec![used("renders_3d", 5)]);
    let e = estimate(&f, &catalog(), &key("renders_3d"), 3).unwrap();
    assert!(e.allowed && !e.will_exceed);
    assert_eq!((e.new_overage_units, e.marginal_cost), (0, Money::ZERO));
    assert_eq!(
        (e.total_before, e.total_after),
        (cents(2_900), cents(2_900))
    );
}

#[test]
fn an_estimate_crossing_the_limit_costs_only_the_units_above_it() {
    // renders_3d 8 + 5 = 13: 3 above 10, 3 × 100 = 300. Total 2,900 → 3,200.
    let f = figures("starter", vec![used("renders_3d", 8)]);
    let e = estimate(&f, &catalog(), &key("renders_3d"), 5).unwrap();
    assert!(e.allowed && e.will_exceed);
    assert_eq!((e.new_overage_units, e.marginal_cost), (3, cents(300)));
    assert_eq!(
        (e.overage_cost_before, e.overage_cost_after),
        (Money::ZERO, cents(300))
    );
    assert_eq!(e.total_after, cents(3_200));
}

#[test]
fn an_estimate_in_overage_is_marginal_not_cumulative() {
    // renders_3d 12 (2 over, 200 so far) + 1: 1 new unit, 100. The original answered
    // 3 × 100 = 300 and added it to a taxed total that held the 200 already.
    let f = figures("starter", vec![used("renders_3d", 12)]);
    let e = estimate(&f, &catalog(), &key("renders_3d"), 1).unwrap();
    assert_eq!((e.new_overage_units, e.marginal_cost), (1, cents(100)));
    assert_eq!(
        (e.overage_cost_before, e.overage_cost_after),
        (cents(200), cents(300))
    );
    assert_eq!(
        (e.total_before, e.total_after),
        (cents(3_100), cents(3_200))
    );
    // With 5 topped up (limit 15), the same 13 units are within it.
    let f = figures("starter", vec![used("renders_3d", 12).top_ups(5)]);
    let e = estimate(&f, &catalog(), &key("renders_3d"), 1).unwrap();
    assert_eq!(
        (e.effective_limit, e.marginal_cost),
        (Some(15), Money::ZERO)
    );
}

#[test]
fn a_block_quota_says_it_would_refuse_holds_included() {
    // team_members 2 of 3: +1 fits (3), +2 does not (4 > 3); with 1 held, +1 is 4 > 3.
    let f = figures("starter", vec![used("team_members", 2)]);
    let e = estimate(&f, &catalog(), &key("team_members"), 1).unwrap();
    assert!(e.allowed && !e.will_exceed);
    let e = estimate(&f, &catalog(), &key("team_members"), 2).unwrap();
    assert!(!e.allowed && e.will_exceed);
    assert_eq!(
        (e.marginal_cost, e.total_after),
        (Money::ZERO, e.total_before)
    );
    let f = figures("starter", vec![used("team_members", 2).reserved(1)]);
    assert!(
        !estimate(&f, &catalog(), &key("team_members"), 1)
            .unwrap()
            .allowed
    );
}

#[test]
fn a_gauge_estimate_is_priced_on_its_peak() {
    // storage_gb level 4, peak 6 (1 over, 50): +1 → level 5, peak stays 6: nothing new.
    // +3 → level 7, peak 7: 1 new GB, 50.
    let f = figures("starter", vec![used("storage_gb", 4).peak(6)]);
    let e = estimate(&f, &catalog(), &key("storage_gb"), 1).unwrap();
    assert_eq!((e.new_overage_units, e.marginal_cost), (0, Money::ZERO));
    let e = estimate(&f, &catalog(), &key("storage_gb"), 3).unwrap();
    assert_eq!((e.new_overage_units, e.marginal_cost), (1, cents(50)));
}

#[test]
fn a_fractional_rate_is_rounded_on_the_total_half_up() {
    // renders_3d at 0.5 cent, 11 used (1 over: round(0.5) = 1). +1 → 2 over:
    // round(1.0) - 1 = 0; +2 → 3 over: round(1.5) = 2, 2 - 1 = 1.
    let mut p = plan("starter");
    let q = p
        .quotas
        .iter_mut()
        .find(|q| q.metric == key("renders_3d"))
        .unwrap();
    q.overage_rate = Some(dec("0.5"));
    let f = figures_on(p, vec![used("renders_3d", 11)]);
    assert_eq!(f.overage, cents(1));
    let marginal = |n| {
        estimate(&f, &catalog(), &key("renders_3d"), n)
            .unwrap()
            .marginal_cost
    };
    assert_eq!(marginal(1), Money::ZERO);
    assert_eq!(marginal(2), cents(1));
}

#[test]
fn an_unlimited_metric_costs_nothing_and_bad_questions_are_refused() {
    let f = figures("starter", vec![used("exports_gltf", 40)]);
    let e = estimate(&f, &catalog(), &key("exports_gltf"), 5).unwrap();
    assert!(e.allowed && !e.will_exceed);
    assert_eq!(
        (e.current, e.effective_limit, e.overage_policy),
        (40, None, None)
    );
    assert!(matches!(
        estimate(&f, &catalog(), &key("renders_3d"), 0),
        Err(WhatIfError::OutOfRange {
            field: "quantity",
            ..
        })
    ));
    assert_eq!(
        estimate(&f, &catalog(), &key("teleports"), 1),
        Err(WhatIfError::UnknownMetric(key("teleports")))
    );
}

// ---------------------------------------------------------------------------------
// Bill
// ---------------------------------------------------------------------------------

#[test]
fn a_zero_tax_rate_is_zero() {
    // renders_3d 13: 3 over, 300. Subtotal 2,900 + 300 = 3,200; US 0 % → 3,200.
    let f = figures("starter", vec![used("renders_3d", 13)]);
    let b = current_bill(&f, "US").unwrap();
    assert_eq!(
        (b.subtotal, b.tax, b.total),
        (cents(3_200), Money::ZERO, cents(3_200))
    );
    assert_eq!(b.tax_rate, Decimal::ZERO);
}

#[test]
fn a_french_bill_is_taxed_20_percent() {
    // 3,200 × 0.20 = 640 → 3,840. Italy: 3,200 × 0.22 = 704 → 3,904.
    let f = figures("starter", vec![used("renders_3d", 13)]);
    let b = current_bill(&f, "FR").unwrap();
    assert_eq!((b.tax, b.total), (cents(640), cents(3_840)));
    assert_eq!(current_bill(&f, "IT").unwrap().tax, cents(704));
    assert_eq!(
        current_bill(&f, DEFAULT_TAX_COUNTRY).unwrap().tax,
        cents(640)
    );
}

#[test]
fn tax_is_rounded_half_up() {
    // storage_gb peak 6: 1 GB over at 50. Subtotal 2,950; Germany 2,950 × 0.19 = 560.5
    // → 561; total 3,511.
    let f = figures("starter", vec![used("storage_gb", 6)]);
    let b = current_bill(&f, "DE").unwrap();
    assert_eq!(
        (b.subtotal, b.tax, b.total),
        (cents(2_950), cents(561), cents(3_511))
    );
}

#[test]
fn a_bill_uses_the_effective_limits_and_the_read_models_overage() {
    // renders_3d 13 with 2 topped up: limit 12, 1 over, 100. The original would have
    // billed 3 over on the base limit (300).
    let f = figures("starter", vec![used("renders_3d", 13).top_ups(2)]);
    let b = current_bill(&f, "US").unwrap();
    let line = b
        .breakdown
        .iter()
        .find(|l| l.metric == key("renders_3d"))
        .unwrap();
    assert_eq!(
        (
            line.quantity,
            line.base_limit,
            line.limit,
            line.overage,
            line.cost
        ),
        (13, 10, 12, 1, cents(100))
    );
    assert_eq!(line.unit_price, Some(Decimal::from(100)));
    assert_eq!(b.total_overage_cost, cents(100));
    assert_eq!(b.overage_costs.get(&key("renders_3d")), Some(&cents(100)));
    let lines: Money = b.breakdown.iter().map(|l| l.cost).sum();
    assert_eq!(lines, b.total_overage_cost);
    assert_eq!(b.breakdown.len(), f.plan.quotas.len());
    let seats = b
        .breakdown
        .iter()
        .find(|l| l.metric == key("team_members"))
        .unwrap();
    assert_eq!(seats.unit_price, None);
    assert_eq!(
        current_bill(&f, "ZZ"),
        Err(WhatIfError::UnknownCountry("ZZ".to_owned()))
    );
}
