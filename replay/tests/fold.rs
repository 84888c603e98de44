//! The replay: read models rebuilt from log records, failing on any record that does
//! not decode or does not follow its stream, and one brand-period's models as of a
//! sequence or an instant.

mod common;

use std::collections::BTreeSet;

use common::*;
use ledger_projections::{DecodeError, LogRecord, ProjectedEvent, ReadModels};
use ledger_replay::{as_of, Cutoff, ReplayError, Replayer};

fn decoded(records: &[LogRecord]) -> Vec<ProjectedEvent> {
    records
        .iter()
        .map(|r| r.decode().expect("generated records decode"))
        .collect()
}

#[test]
fn the_generated_log_holds_every_kind_of_event() {
    // The replay and the benchmark run on a log with every event the models fold, so a
    // fold that mishandles one kind cannot pass unnoticed.
    let log = busy_log(10, 2, 40, 1);
    let kinds: BTreeSet<&str> = log
        .records()
        .iter()
        .map(|r| r.event_type.as_str())
        .collect();
    let all = [
        "BrandRegistered",
        "PlanChanged",
        "PeriodOpened",
        "PlanApplied",
        "UsageRecorded",
        "UsageDenied",
        "GaugeLevelSet",
        "UsageAdjusted",
        "TopUpApplied",
        "ThresholdCrossed",
        "ThresholdResolved",
        "PeriodClosed",
    ];
    assert_eq!(kinds, BTreeSet::from(all));
    assert!(log
        .records()
        .iter()
        .any(|r| r.payload.contains(r#""after_close":true"#)));
}

#[test]
fn a_replay_of_the_whole_log_equals_the_projectors_fold_and_counts_every_record() {
    // Decoding and folding records gives the models the projector folds from the same
    // events, brand registry records included.
    let log = busy_log(12, 2, 30, 7);
    let mut replayer = Replayer::new();
    replayer
        .apply_all(log.records())
        .expect("a complete log replays");

    assert_eq!(replayer.events(), log.records().len() as u64);
    let expected = ReadModels::replay(&decoded(log.records()));
    assert_eq!(
        replayer.models().diff(&expected).to_string(),
        "no differences"
    );
    assert_eq!(replayer.into_models(), expected);
}

#[test]
fn a_record_that_does_not_decode_stops_the_replay_at_its_position() {
    // A read error is a failure, never a short success: the replay names the record
    // and has folded only the records before it.
    let mut records = busy_log(3, 1, 10, 2).into_records();
    let bad = records.len() / 2;
    records[bad].payload = r#"{"UsageRecorded":{}}"#.to_owned();

    let mut replayer = Replayer::new();
    let error = replayer.apply_all(&records).unwrap_err();

    let ReplayError::Decode(DecodeError::Payload { at, .. }) = error else {
        panic!("expected a payload error, got {error}");
    };
    assert_eq!(at, records[bad].at);
    assert_eq!(replayer.events(), bad as u64);
}

#[test]
fn a_record_of_an_unknown_aggregate_type_stops_the_replay() {
    // The log holds only the two stream kinds; anything else is not skipped silently.
    let mut records = busy_log(2, 1, 3, 2).into_records();
    records[1].aggregate_type = "invoice".to_owned();

    let error = Replayer::new().apply_all(&records).unwrap_err();

    assert!(
        matches!(error, ReplayError::Decode(DecodeError::Row { at, .. }) if at == records[1].at),
        "{error}"
    );
}

/// The index of the record with `sequence` of the first usage stream that has more
/// events after it.
fn mid_stream(records: &[LogRecord], sequence: i64) -> usize {
    let index = records
        .iter()
        .position(|r| r.aggregate_type == "usage_period" && r.sequence == sequence)
        .expect("a stream that long");
    let id = &records[index].aggregate_id;
    assert!(records[index + 1..]
        .iter()
        .any(|r| &r.aggregate_id == id && r.sequence == sequence + 1));
    index
}

#[test]
fn a_record_missing_from_a_stream_is_a_gap() {
    // A complete log never skips a sequence; reading it with a hole is an error that
    // names the stream and the missing sequence.
    let mut records = busy_log(3, 1, 10, 3).into_records();
    let missing = records.remove(mid_stream(&records, 3));

    let error = Replayer::new().apply_all(&records).unwrap_err();

    let ReplayError::Gap {
        stream,
        expected,
        got,
        ..
    } = error
    else {
        panic!("expected a gap, got {error}");
    };
    assert_eq!(stream, format!("usage_period/{}", missing.aggregate_id));
    assert_eq!((expected, got), (3, 4));
}

#[test]
fn a_record_read_twice_is_an_error() {
    // The models would count it once, but no complete log read in order repeats a
    // record: the reading is broken and the replay says so.
    let mut records = busy_log(3, 1, 10, 4).into_records();
    let index = mid_stream(&records, 2);
    records.insert(index + 1, records[index].clone());

    let error = Replayer::new().apply_all(&records).unwrap_err();

    assert!(
        matches!(
            error,
            ReplayError::Repeated {
                got: 2,
                last_applied: 2,
                ..
            }
        ),
        "{error}"
    );
}

/// A brand-period with carried gauge levels, a plan upgrade, crossings, top-ups, a
/// close and late usage: brand 0 upgrades in every month after the first.
fn an_eventful_stream() -> (
    Log,
    ledger_aggregates::BrandId,
    ledger_aggregates::PeriodKey,
) {
    (
        busy_log(6, 2, 30, 11),
        brand("brand-00000"),
        period("2026-10"),
    )
}

/// What the models of the whole log held about the stream right after each of its
/// events: index N is after its event N, index 0 before the first.
fn live_snapshots(
    log: &Log,
    b: &ledger_aggregates::BrandId,
    p: ledger_aggregates::PeriodKey,
) -> Vec<Option<ledger_projections::PeriodModels>> {
    let id = ledger_aggregates::ids::period_stream_id(b, p);
    let mut live = Replayer::new();
    let mut snapshots = vec![None];
    for record in log.records() {
        live.apply(record).expect("a complete log replays");
        if record.aggregate_id == id {
            snapshots.push(live.models().period_models(b, p));
        }
    }
    snapshots
}

#[test]
fn as_of_sequence_n_equals_the_models_of_a_ledger_that_had_received_n_events() {
    // For every N, the stream's own first N records rebuild exactly what the models of
    // the whole interleaved log held about the stream right after its event N.
    let (log, b, p) = an_eventful_stream();
    let stream = log.stream(&b, p);
    let snapshots = live_snapshots(&log, &b, p);
    assert!(stream.iter().any(|r| r.event_type == "PlanApplied"));

    for (n, expected) in snapshots.iter().enumerate() {
        let got = as_of(&stream, &b, p, Cutoff::Sequence(n as u64)).expect("the stream replays");
        assert_eq!(&got, expected, "as of sequence {n}");
    }
    let beyond = as_of(&stream, &b, p, Cutoff::Sequence(u64::MAX)).unwrap();
    assert_eq!(&beyond, snapshots.last().unwrap());
}

#[test]
fn as_of_an_instant_includes_every_event_recorded_by_then() {
    // A cutoff at a record's `recorded_at` includes the events of its whole transaction
    // (they share the time), and nothing recorded later.
    let (log, b, p) = an_eventful_stream();
    let stream = log.stream(&b, p);
    let snapshots = live_snapshots(&log, &b, p);

    let first = stream[0].recorded_at;
    let before = as_of(
        &stream,
        &b,
        p,
        Cutoff::At(first - chrono::TimeDelta::nanoseconds(1)),
    );
    assert_eq!(before.unwrap(), None);
    for record in &stream {
        let t = record.recorded_at;
        let by_then = stream.iter().filter(|r| r.recorded_at <= t).count();
        let got = as_of(&stream, &b, p, Cutoff::At(t)).expect("the stream replays");
        assert_eq!(got, snapshots[by_then], "as of {t}");
    }
}

#[test]
fn as_of_an_instant_stops_at_the_first_event_recorded_later() {
    // `recorded_at` is a transaction's start, so a later sequence may carry an earlier
    // time. The cutoff ends a prefix: the models are a state the stream had, never one
    // with an event skipped.
    let (log, b, p) = an_eventful_stream();
    let mut stream = log.stream(&b, p);
    let snapshots = live_snapshots(&log, &b, p);
    // Three events of three transactions; the third is given the first's time.
    let i = (0..stream.len() - 2)
        .find(|&i| stream[i].recorded_at < stream[i + 1].recorded_at)
        .expect("the stream spans several transactions");
    let t = stream[i].recorded_at;
    stream[i + 2].recorded_at = t;

    let got = as_of(&stream, &b, p, Cutoff::At(t)).expect("the stream replays");

    assert_eq!(got, snapshots[i + 1]);
}

#[test]
fn as_of_refuses_a_record_of_another_stream_and_a_gap() {
    // `as_of` rebuilds one stream: a record of another one means the caller read the
    // wrong rows, and a hole means it read too few.
    let (log, b, p) = an_eventful_stream();
    let mut stream = log.stream(&b, p);
    let other = log.stream(&brand("brand-00001"), p);

    let mixed = [stream[0].clone(), other[1].clone()];
    let error = as_of(&mixed, &b, p, Cutoff::Sequence(5)).unwrap_err();
    assert!(matches!(error, ReplayError::OtherStream { .. }), "{error}");

    stream.remove(2);
    let error = as_of(&stream, &b, p, Cutoff::Sequence(5)).unwrap_err();
    assert!(
        matches!(
            error,
            ReplayError::Gap {
                expected: 3,
                got: 4,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_cutoff_parses_from_a_sequence_or_an_rfc3339_instant() {
    // Whole numbers are sequences; anything else must be an RFC 3339 instant, in any
    // offset; the error says what was expected.
    assert_eq!("42".parse(), Ok(Cutoff::Sequence(42)));
    assert_eq!("0".parse(), Ok(Cutoff::Sequence(0)));
    let utc = chrono::DateTime::parse_from_rfc3339("2026-11-30T22:59:59Z")
        .unwrap()
        .to_utc();
    assert_eq!("2026-11-30T22:59:59Z".parse(), Ok(Cutoff::At(utc)));
    assert_eq!("2026-11-30T23:59:59+01:00".parse(), Ok(Cutoff::At(utc)));
    // Displayed in the form it parses from, instants in UTC.
    assert_eq!(Cutoff::Sequence(42).to_string(), "42");
    assert_eq!(Cutoff::At(utc).to_string(), "2026-11-30T22:59:59Z");

    for bad in ["", "-3", "4.5", "yesterday", "2026-11-30"] {
        let error = bad.parse::<Cutoff>().unwrap_err();
        assert_eq!(error.input, bad);
        assert!(error.to_string().contains("RFC 3339"), "{error}");
    }
}
