//! At-least-once delivery: the projector may hand the models an event twice (a crash
//! between a batch and its checkpoint re-reads the batch). Every model must count it
//! once, and say when the log was read with a hole.

mod common;

use common::*;
use ledger_projections::{
    ActiveAlerts, Delivery, OverageLedger, PeriodCost, ProjectedEvent, QuotaSummary, ReadModel,
    ReadModels, TopUpHistory,
};

/// Two brands, threshold crossings, top-ups, a plan change, a close and late usage:
/// every kind of event each model folds.
fn a_busy_history() -> Ledger {
    let mut ledger = Ledger::new();
    ledger
        .register("acme", "starter")
        .register("globex", "starter");
    ledger.run(
        "acme",
        vec![
            record(R3D, 9),
            top_up(R3D, 5, 500, "order-1"),
            record(R3D, 9),
            set_level(STORAGE, 8),
            set_level(STORAGE, 2),
            close(),
            record_late(R3D, 2),
        ],
    );
    ledger.run("globex", vec![record(AI, 18), record(GLTF, 4)]);
    ledger.change_plan("globex", &plan("professional"));
    ledger.run("globex", vec![record(AI, 200)]);
    ledger
}

#[test]
fn applying_every_event_twice_gives_the_models_of_applying_it_once() {
    // An immediate redelivery of each event is a no-op, and is reported as one.
    // Given a busy log; when every event is delivered twice in a row:
    let ledger = a_busy_history();
    let mut twice = ReadModels::new();
    for event in ledger.log() {
        assert_eq!(twice.apply(event), Delivery::Applied);
        assert_eq!(
            twice.apply(event),
            Delivery::Duplicate {
                last_applied: event.sequence
            }
        );
    }

    // Then the models equal a single fold of the log.
    let once = ledger.models();
    assert_eq!(twice.diff(&once).to_string(), "no differences");
    assert_eq!(twice, once);
}

#[test]
fn redelivering_a_prefix_after_the_whole_log_changes_nothing() {
    // A projector restarted from an old checkpoint re-reads events it already folded.
    // Given the models of a whole busy log; when its first half (and then all of it)
    // is delivered again:
    let ledger = a_busy_history();
    let log = ledger.log();
    let mut models = ReadModels::replay(log);
    let before = models.clone();
    for event in &log[..log.len() / 2] {
        assert!(!models.apply(event).folded());
    }
    models.apply_all(log);

    // Then nothing changed.
    assert_eq!(models.diff(&before).to_string(), "no differences");
}

#[test]
fn each_model_alone_counts_a_redelivered_event_once() {
    // The dedup lives in `ReadModel::apply`, so every model has it, not only the
    // container.
    // Given a busy log delivered to each model twice over:
    let ledger = a_busy_history();
    fn twice<M: ReadModel + Default + PartialEq + std::fmt::Debug>(log: &[ProjectedEvent]) {
        let mut once = M::default();
        let mut twice = M::default();
        for event in log {
            once.apply(event);
            twice.apply(event);
            twice.apply(event);
        }
        for event in log {
            twice.apply(event);
        }
        // Then each equals its single fold.
        assert_eq!(twice, once, "{}", std::any::type_name::<M>());
    }
    twice::<QuotaSummary>(ledger.log());
    twice::<PeriodCost>(ledger.log());
    twice::<ActiveAlerts>(ledger.log());
    twice::<TopUpHistory>(ledger.log());
    twice::<OverageLedger>(ledger.log());
}

#[test]
fn a_skipped_event_is_reported_as_a_gap_and_its_late_delivery_as_a_duplicate() {
    // A hole in the log is never silent: the next event of the stream says what was
    // expected, so the projector can fail and rebuild.
    // Given a busy log; when acme's first usage event is skipped:
    let ledger = a_busy_history();
    let log = ledger.log();
    let skipped = log
        .iter()
        .position(|e| e.stream_id() == "acme:2026-11" && e.sequence == 2)
        .expect("acme has a second event");
    let mut models = ReadModels::new();
    models.apply_all(&log[..skipped]);

    // Then the event after it is folded with a gap named, and the skipped one, arriving
    // late, is taken for a redelivery.
    assert_eq!(
        models.apply(&log[skipped + 1]),
        Delivery::AppliedAfterGap { expected: 2 }
    );
    assert_eq!(
        models.apply(&log[skipped]),
        Delivery::Duplicate { last_applied: 3 }
    );
    assert!(!models
        .diff(&ReadModels::replay(&log[..skipped + 2]))
        .is_empty());
}
