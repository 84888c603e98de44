//! The hash-chained export: the writer writes what the format says, the file
//! verifies, and any change to it (a byte, a line dropped or moved, a truncation) makes
//! the verification fail, naming the line.

mod common;

use common::*;
use ledger_projections::LogRecord;
use ledger_replay::{verify_export, ExportError, ExportSummary, ExportWriter, Problem};
use sha2::{Digest, Sha256};

fn export(records: &[LogRecord]) -> (Vec<u8>, ExportSummary) {
    let mut out = Vec::new();
    let mut writer = ExportWriter::new(&mut out);
    for record in records {
        writer.write(record).expect("the log exports");
    }
    let summary = writer.finish().expect("writing to memory succeeds");
    (out, summary)
}

fn verify(bytes: &[u8]) -> Result<ExportSummary, ExportError> {
    verify_export(bytes)
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|b| *b == b'\n').collect()
}

/// A few events of one brand on a one-quota plan, so every byte of the file can be
/// tried: registration, opening, usage crossing 50 %, the close.
fn a_small_log() -> Vec<LogRecord> {
    let mut tiny = plan("starter");
    tiny.quotas.retain(|q| q.metric.as_str() == "renders_3d");
    tiny.features.clear();
    let (b, p) = (brand("acme"), period("2026-11"));
    let mut log = Log::new();
    log.set_plan(&b, &tiny, p.start());
    log.open(&b, p, &tiny);
    log.decide(
        &b,
        p,
        record_at("renders_3d", 6, p.start() + chrono::TimeDelta::days(3)),
    );
    log.decide(&b, p, close(p));
    log.into_records()
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part);
    }
    hex::encode(h.finalize())
}

#[test]
fn an_export_of_a_real_log_verifies_with_the_figures_of_its_trailer() {
    // Every record of a busy log, both stream kinds, exports and verifies; the trailer
    // counts every event and stream.
    let log = busy_log(10, 2, 20, 5);
    let (bytes, written) = export(log.records());

    let verified = verify(&bytes).expect("the export verifies");

    assert_eq!(verified, written);
    assert_eq!(written.events, log.records().len() as u64);
    assert_eq!(written.streams, 10 + 10 * 2);
    assert_eq!(lines(&bytes).len(), log.records().len() + 1);
}

#[test]
fn an_auditor_can_recompute_every_hash_and_the_digest_from_the_format_alone() {
    // The documented recipe, implemented here apart from the crate: hash = SHA-256 of
    // prev, "\n" and the event's bytes; prev = the stream's previous hash; digest =
    // SHA-256 of the sorted "type/id last-hash\n" lines.
    let records = a_small_log();
    let (bytes, summary) = export(&records);
    let text = String::from_utf8(bytes).expect("the export is UTF-8");
    let mut last = std::collections::BTreeMap::new();

    for (line, record) in text.lines().zip(&records) {
        let (head, event) = line.split_once(r#","event":"#).expect("an event line");
        let event = event
            .strip_suffix('}')
            .expect("the line closes after the event");
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let (hash, prev) = (
            value["hash"].as_str().unwrap(),
            value["prev"].as_str().unwrap(),
        );
        assert_eq!(head, format!(r#"{{"hash":"{hash}","prev":"{prev}""#));
        assert_eq!(
            hash,
            sha256_hex(&[prev.as_bytes(), b"\n", event.as_bytes()])
        );
        let stream = format!("{}/{}", record.aggregate_type, record.aggregate_id);
        let zeros = "0".repeat(64);
        assert_eq!(prev, last.get(&stream).unwrap_or(&zeros));
        last.insert(stream, hash.to_owned());

        // Every column is there, payload and metadata as JSON values.
        let e = &value["event"];
        assert_eq!(e["position"]["position"], record.at.position);
        assert_eq!(e["aggregateType"], record.aggregate_type.as_str());
        assert_eq!(e["sequence"], record.sequence);
        assert_eq!(e["eventType"], record.event_type.as_str());
        assert_eq!(e["eventVersion"], record.event_version.as_str());
        let payload: serde_json::Value = serde_json::from_str(&record.payload).unwrap();
        assert_eq!(e["payload"], payload);
        assert!(e["metadata"].is_object());
        let recorded_at = e["recordedAt"].as_str().unwrap();
        assert_eq!(recorded_at.len(), "2026-11-01T00:00:00.000000000Z".len());
    }

    let mut digest_lines: Vec<String> = last.iter().map(|(s, h)| format!("{s} {h}\n")).collect();
    digest_lines.sort();
    let digest = sha256_hex(&[digest_lines.concat().as_bytes()]);
    let trailer = text.lines().last().unwrap();
    assert_eq!(
        trailer,
        format!(r#"{{"end":{{"events":5,"streams":2,"digest":"{digest}"}}}}"#)
    );
    assert_eq!(summary.digest, digest);
}

#[test]
fn replacing_any_byte_by_any_other_printable_byte_fails_the_verification() {
    // Every byte of the file is either hashed, checked against the chain, part of the
    // trailer's figures, or structure the parser requires: no single-byte change can
    // leave a file that verifies.
    let (bytes, _) = export(&a_small_log());
    verify(&bytes).expect("the untouched export verifies");
    let mut changed = bytes.clone();

    for position in 0..bytes.len() {
        for replacement in b' '..=b'~' {
            if replacement == bytes[position] {
                continue;
            }
            changed[position] = replacement;
            assert!(
                verify(&changed).is_err(),
                "byte {position} ({:?}) replaced by {:?} still verifies",
                bytes[position] as char,
                replacement as char
            );
        }
        changed[position] = bytes[position];
    }
}

#[test]
fn dropping_any_line_fails_the_verification() {
    // A dropped event breaks its stream's sequence or, for a stream's last event, the
    // trailer's counts and digest; a dropped trailer is a truncated file.
    let (bytes, _) = export(&a_small_log());
    let all = lines(&bytes);

    for dropped in 0..all.len() {
        let mut rest = all.clone();
        rest.remove(dropped);
        assert!(
            verify(&rest.concat()).is_err(),
            "without line {}",
            dropped + 1
        );
    }
}

#[test]
fn swapping_two_lines_fails_the_verification() {
    // Lines of one stream swapped break its sequence; lines of two streams swapped
    // break the log's order, which the chains alone would not see.
    let records = busy_log(2, 1, 4, 6).into_records();
    let (bytes, _) = export(&records);
    let all = lines(&bytes);
    let events = records.len();

    for i in 0..events {
        for j in i + 1..events {
            let mut swapped = all.clone();
            swapped.swap(i, j);
            assert!(
                verify(&swapped.concat()).is_err(),
                "lines {} and {} swapped",
                i + 1,
                j + 1
            );
        }
    }
}

#[test]
fn a_truncated_file_fails_the_verification_wherever_it_is_cut() {
    // Cut anywhere, even right after a complete event line or inside the trailer, the
    // file no longer verifies.
    let (bytes, _) = export(&a_small_log());

    for length in 0..bytes.len() {
        assert!(verify(&bytes[..length]).is_err(), "cut at byte {length}");
    }
    let without_trailer = lines(&bytes)[..5].concat();
    let error = verify(&without_trailer).unwrap_err();
    assert!(
        matches!(
            error,
            ExportError::Line {
                line: 6,
                problem: Problem::NoTrailer
            }
        ),
        "{error}"
    );
}

#[test]
fn an_altered_payload_is_reported_with_its_line_number() {
    // The auditor learns where the file was altered: the line, and that its hash no
    // longer matches.
    let (bytes, _) = export(&a_small_log());
    let text = String::from_utf8(bytes).unwrap();
    let altered = text.replacen(r#""quantity":6"#, r#""quantity":7"#, 1);
    assert_ne!(altered, text);

    let error = verify(altered.as_bytes()).unwrap_err();

    assert!(
        matches!(
            error,
            ExportError::Line {
                line: 3,
                problem: Problem::Hash { .. }
            }
        ),
        "{error}"
    );
    assert!(error.to_string().starts_with("line 3: hash "), "{error}");
}

#[test]
fn a_line_after_the_trailer_fails_the_verification() {
    // The trailer seals the file: anything appended is refused.
    let (mut bytes, _) = export(&a_small_log());
    let first = lines(&bytes)[0].to_vec();
    bytes.extend_from_slice(&first);

    let error = verify(&bytes).unwrap_err();

    assert!(
        matches!(
            error,
            ExportError::Line {
                line: 7,
                problem: Problem::AfterTrailer
            }
        ),
        "{error}"
    );
}

/// `line` with its event replaced by `event` and the hash recomputed, as a forger who
/// knows the format would write it.
fn rehashed(prev: &str, event: &str) -> String {
    let hash = sha256_hex(&[prev.as_bytes(), b"\n", event.as_bytes()]);
    format!(r#"{{"hash":"{hash}","prev":"{prev}","event":{event}}}"#)
}

#[test]
fn unknown_fields_are_refused_even_with_a_matching_hash() {
    // The format is closed: a field it does not define is an error, in the line and in
    // the event, whether or not the hash was recomputed.
    let records = a_small_log();
    let (bytes, _) = export(&records[..1]);
    let text = String::from_utf8(bytes).unwrap();
    let first = text.lines().next().unwrap();
    let event = first
        .split_once(r#","event":"#)
        .unwrap()
        .1
        .strip_suffix('}')
        .unwrap();
    let zeros = "0".repeat(64);

    let extra_in_event = rehashed(&zeros, &event.replacen('{', r#"{"note":1,"#, 1));
    let extra_in_line = first.replacen('{', r#"{"note":1,"#, 1);
    for line in [extra_in_event, extra_in_line] {
        let error = verify(format!("{line}\n").as_bytes()).unwrap_err();
        assert!(
            matches!(&error, ExportError::Line { line: 1, problem: Problem::Malformed(e) } if e.to_string().contains("unknown field")),
            "{error}"
        );
    }
}

#[test]
fn a_payload_with_line_breaks_is_exported_on_one_line_with_the_same_value() {
    // JSON Lines needs one line per event: stored text with line breaks (never written
    // by the stores, but valid JSON) is exported compact, its value unchanged.
    let mut records = a_small_log();
    let value: serde_json::Value = serde_json::from_str(&records[2].payload).unwrap();
    records[2].payload = serde_json::to_string_pretty(&value).unwrap();
    records[2].metadata = "{\n  \"requestId\": \"a \\\" b\\n\"\n}".to_owned();

    let (bytes, _) = export(&records);

    verify(&bytes).expect("the export verifies");
    assert_eq!(lines(&bytes).len(), records.len() + 1);
    let line: serde_json::Value = serde_json::from_slice(lines(&bytes)[2]).unwrap();
    assert_eq!(line["event"]["payload"], value);
    assert_eq!(line["event"]["metadata"]["requestId"], "a \" b\n");
}

#[test]
fn the_writer_refuses_records_the_verifier_would_refuse() {
    // A finished export always verifies: a record out of the log's order, one that
    // skips a sequence of its stream, or one whose payload is not JSON is refused when
    // written, with its position.
    let records = busy_log(2, 1, 4, 6).into_records();
    let write_all = |records: &[LogRecord]| -> Result<(), ExportError> {
        let mut writer = ExportWriter::new(std::io::sink());
        records.iter().try_for_each(|r| writer.write(r))
    };

    let mut swapped = records.clone();
    swapped.swap(0, 1);
    let error = write_all(&swapped).unwrap_err();
    assert!(
        matches!(
            error,
            ExportError::Record {
                problem: Problem::OutOfOrder { .. },
                ..
            }
        ),
        "{error}"
    );

    let mut gap = records.clone();
    let index = gap.iter().position(|r| r.sequence == 2).unwrap();
    gap.remove(index);
    let error = write_all(&gap).unwrap_err();
    assert!(
        matches!(
            error,
            ExportError::Record {
                problem: Problem::Sequence {
                    expected: 2,
                    got: 3,
                    ..
                },
                ..
            }
        ),
        "{error}"
    );

    let mut not_json = records.clone();
    not_json[3].payload = "{\"UsageRecorded\":".to_owned();
    let error = write_all(&not_json).unwrap_err();
    assert!(
        matches!(&error, ExportError::Record { at, problem: Problem::NotJson { column: "payload", .. } } if *at == records[3].at),
        "{error}"
    );
}
