//! The container and its input: how a stored row becomes a `ProjectedEvent`, what the
//! brand registry does to the models, and how two sets of models are compared (what
//! `replay verify` will print).

mod common;

use common::*;
use ledger_aggregates::{BrandEvent, LedgerEvent};
use ledger_projections::{
    Payload, ProjectedEvent, ReadModel, ReadModels, StoredEventError, StreamEvent,
    DIFFERENCES_LISTED_MAX,
};

fn a_small_history() -> Ledger {
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .register("globex", "starter");
    ledger.run(
        "acme",
        vec![record(R3D, 12), top_up(R3D, 5, 500, "order-1"), close()],
    );
    ledger.run("globex", vec![record(AI, 22), set_level(STORAGE, 8)]);
    ledger
}

#[test]
fn a_stored_row_parses_into_a_typed_event_and_names_its_stream_as_stored() {
    // The log's text columns are parsed once, and give back the same stream id and type.
    // Given a period event and a brand event as the store holds them:
    let ledger = a_small_history();
    let (period_event, brand_event) = match (&ledger.log()[1].event, &ledger.log()[0].event) {
        (StreamEvent::Period { event: p, .. }, StreamEvent::Brand { event: b, .. }) => {
            (p.clone(), b.clone())
        }
        other => panic!("the log starts with a registration and an opening: {other:?}"),
    };

    // When they are parsed from their columns:
    let period = ProjectedEvent::from_stored(
        2,
        "usage_period",
        "acme:2026-11",
        1,
        Payload::Period(period_event),
    )
    .expect("a valid period row");
    let registry = ProjectedEvent::from_stored(1, "brand", "acme", 1, Payload::Brand(brand_event))
        .expect("a valid brand row");

    // Then they carry the typed stream and name it as the store does.
    assert_eq!(period, ledger.log()[1]);
    assert_eq!(
        (period.aggregate_type(), period.stream_id()),
        ("usage_period", "acme:2026-11".to_owned())
    );
    assert_eq!(registry, ledger.log()[0]);
    assert_eq!(
        (registry.aggregate_type(), registry.stream_id()),
        ("brand", "acme".to_owned())
    );
}

#[test]
fn a_stored_row_that_cannot_be_a_stream_event_is_refused() {
    // Mismatched type and payload, unknown types, bad ids and sequence 0 are errors,
    // never a silently dropped or misfiled event.
    // Given the opening event of a period:
    let ledger = a_small_history();
    let StreamEvent::Period { event: opened, .. } = ledger.log()[1].event.clone() else {
        panic!("the second event opens the period");
    };
    let payload = || Payload::Period(opened.clone());

    // Then each broken row is refused with its reason.
    let err = ProjectedEvent::from_stored(2, "brand", "acme", 1, payload()).unwrap_err();
    assert!(
        matches!(err, StoredEventError::PayloadMismatch { .. }),
        "{err}"
    );
    let err = ProjectedEvent::from_stored(2, "invoice", "acme", 1, payload()).unwrap_err();
    assert_eq!(
        err,
        StoredEventError::UnknownAggregateType("invoice".to_owned())
    );
    let err = ProjectedEvent::from_stored(2, "usage_period", "acme", 1, payload()).unwrap_err();
    assert!(matches!(err, StoredEventError::BadStreamId(_)), "{err}");
    let err =
        ProjectedEvent::from_stored(2, "usage_period", "acme:2026-11", 0, payload()).unwrap_err();
    assert_eq!(err, StoredEventError::SequenceZero);
    assert!(err.to_string().contains("start at 1"));
}

#[test]
fn brand_registry_events_advance_the_cursors_and_change_no_row() {
    // The registry's plan changes reach periods as `PlanApplied`; the models only count
    // registry events as seen, so a redelivery of them is recognised too.
    // Given a brand registered, then moved to professional in the registry only:
    let mut ledger = Ledger::new();
    ledger.set_plan("acme", &plan("starter"));
    ledger.set_plan("acme", &plan("professional"));
    assert!(matches!(
        ledger.log()[1].event,
        StreamEvent::Brand {
            event: BrandEvent::PlanChanged { .. },
            ..
        }
    ));

    // When the models fold them:
    let models = ledger.models();

    // Then no row exists, and the registry stream is at sequence 2 in every model.
    assert!(models.quota_summary.iter().next().is_none());
    assert!(models.period_cost.iter().next().is_none());
    assert!(models.overage_ledger.iter().next().is_none());
    assert_eq!(models.quota_summary.cursors().brand(&brand("acme")), 2);
    assert_eq!(models.overage_ledger.cursors().brand(&brand("acme")), 2);
}

#[test]
fn two_replays_of_the_same_log_have_no_difference() {
    // A replay is deterministic: two folds of one log are equal and the diff says so.
    let ledger = a_small_history();
    let differences = ledger.models().diff(&ledger.models());
    assert!(differences.is_empty());
    assert_eq!(differences.to_string(), "no differences");
}

#[test]
fn a_figure_edited_by_hand_is_one_difference_with_its_path_and_both_values() {
    // `verify` must point at the edited field, not just say "different".
    // Given the models stored as JSON, with acme's renders_3d usage edited from 12 to 13:
    let ledger = a_small_history();
    let replayed = ledger.models();
    let mut stored = serde_json::to_value(&replayed).expect("the models serialize");
    let current = &mut stored["quota_summary"]["rows"]["acme"]["2026-11"]["renders_3d"]["current"];
    assert_eq!(*current, 12);
    *current = 13.into();
    let stored: ReadModels = serde_json::from_value(stored).expect("the models deserialize");

    // When the stored models are compared with a replay:
    let differences = stored.diff(&replayed);

    // Then exactly that field is listed, stored value on the left.
    assert_eq!(differences.total(), 1);
    assert_eq!(
        differences.listed()[0].to_string(),
        "quota_summary/rows/acme/2026-11/renders_3d/current: 13 on the left, 12 on the right"
    );
}

#[test]
fn a_brand_missing_on_one_side_is_listed_as_absent() {
    // A replay that lost a whole stream shows what is missing, per model.
    // Given the models of the log, and of the log without globex's events:
    let ledger = a_small_history();
    let without_globex: Vec<ProjectedEvent> = ledger
        .log()
        .iter()
        .filter(|e| !e.stream_id().starts_with("globex"))
        .cloned()
        .collect();

    // When the full models are compared with those:
    let differences = ledger.models().diff(&ReadModels::replay(&without_globex));

    // Then globex's cost estimate is listed as absent on the right.
    let listed: Vec<String> = differences.listed().iter().map(|d| d.to_string()).collect();
    let cost = listed
        .iter()
        .find(|d| d.starts_with("period_cost/rows/globex:"))
        .unwrap_or_else(|| panic!("globex's cost is listed: {listed:#?}"));
    assert!(cost.ends_with("on the left, absent on the right"), "{cost}");
    assert!(listed
        .iter()
        .any(|d| d.starts_with("quota_summary/cursors/periods/globex:")));
}

#[test]
fn the_list_of_differences_is_capped_and_the_rest_counted() {
    // Against an empty model every row differs: the report stays readable.
    // Given 200 brands with 7 quota rows each, compared with nothing:
    let mut ledger = Ledger::new();
    for i in 0..200 {
        ledger.register(&format!("brand-{i:03}"), "starter");
    }

    // When compared:
    let differences = ledger.models().diff(&ReadModels::new());

    // Then the first DIFFERENCES_LISTED_MAX are listed and all are counted.
    assert!(differences.total() > DIFFERENCES_LISTED_MAX);
    assert_eq!(differences.listed().len(), DIFFERENCES_LISTED_MAX);
    assert_eq!(
        differences.omitted(),
        differences.total() - DIFFERENCES_LISTED_MAX
    );
    let text = differences.to_string();
    assert!(text.ends_with(&format!(
        "… and {} more differences\n",
        differences.omitted()
    )));
}

#[test]
fn the_read_models_survive_a_json_round_trip() {
    // The service stores the models as JSON; what it reads back folds on identically.
    // Given the models of a history, stored and read back:
    let mut ledger = a_small_history();
    let models = ledger.models();
    let json = serde_json::to_string(&models).expect("the models serialize");
    let mut restored: ReadModels = serde_json::from_str(&json).expect("the models deserialize");
    assert_eq!(restored, models);

    // When both fold more usage:
    let more = ledger.decide("globex", record(R3D, 11));
    for event in &more {
        restored.apply(event);
    }

    // Then the restored models equal a replay of the whole log.
    assert_eq!(
        restored.diff(&ledger.models()).to_string(),
        "no differences"
    );
    assert!(more.iter().any(|e| matches!(
        e.as_period(),
        Some((_, _, LedgerEvent::UsageRecorded { .. }))
    )));
}
