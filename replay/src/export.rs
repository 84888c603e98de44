//! The log as a file an auditor can check offline: JSON Lines, one event per line,
//! each stream's events chained by SHA-256, and a trailer that seals the whole file.
//!
//! # Format
//!
//! Event lines, in the log's global order:
//!
//! ```text
//! {"hash":"<64 hex>","prev":"<64 hex>","event":{"position":{"transaction":0,"position":7},"aggregateType":"usage_period","aggregateId":"acme:2026-11","sequence":3,"eventType":"UsageRecorded","eventVersion":"1","payload":{…},"metadata":{…},"recordedAt":"2026-11-10T12:00:00.000000000Z"}}
//! ```
//!
//! - `event` holds every column of the row; payload and metadata are embedded as the
//!   JSON they are (the stored text, put on one line if it had line breaks), and
//!   `recordedAt` always has nine fractional digits, so a time has one spelling.
//! - `prev` is the `hash` of the previous event of the same stream (`aggregateType`
//!   and `aggregateId`), 64 zeros for the stream's first event.
//! - `hash` = SHA-256 of `prev` (64 lowercase hex ASCII characters), a `\n`, and the
//!   bytes of the `event` object exactly as they are in the file.
//!
//! The last line is the trailer, `{"end":{"events":N,"streams":S,"digest":"<64 hex>"}}`,
//! where `digest` is SHA-256 of the lines `<aggregateType>/<aggregateId> <hash of the
//! stream's last event>\n`, one per stream, sorted bytewise (`LC_ALL=C sort`).
//!
//! Per-stream chains let an auditor check one brand-period alone; the trailer catches
//! what chains cannot (the last events of a stream dropped, a whole stream dropped, a
//! truncated file), and positions that must grow catch lines of different streams
//! swapped. The digest, or the file's hash, is what an auditor compares with the
//! figure published through another channel: anyone can recompute a chain.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use ledger_projections::{LogPosition, LogRecord};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The longest line the verifier reads. Payloads arrive in request bodies of at most
/// 1 MiB (the service's default `http.body_bytes_max`); 8 MiB leaves room for a larger
/// configured limit and JSON escaping, and still bounds what a hostile file can make
/// the verifier hold.
pub const EXPORT_LINE_BYTES_MAX: u64 = 8 << 20;

/// The `prev` of a stream's first event.
const FIRST_PREV: [u8; 32] = [0; 32];

/// What an export holds: the trailer's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSummary {
    /// Event lines.
    pub events: u64,
    /// Distinct streams (aggregate type and id).
    pub streams: u64,
    /// SHA-256, hex, of every stream's last hash (see the module's format).
    pub digest: String,
}

/// Why an export could not be written or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The writer refused a record: the export would not verify.
    #[error("event at {at}: {problem}")]
    Record { at: LogPosition, problem: Problem },
    /// The file does not verify at this line (from 1).
    #[error("line {line}: {problem}")]
    Line { line: u64, problem: Problem },
}

/// What is wrong with a record or a line.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// A stored column that must hold JSON does not.
    #[error("{column} is not JSON: {error}")]
    NotJson {
        column: &'static str,
        error: serde_json::Error,
    },
    /// Not an event line or trailer of this format (bad JSON, unknown or missing field).
    #[error("not an export line: {0}")]
    Malformed(serde_json::Error),
    #[error("recordedAt {0:?} is not an RFC 3339 UTC instant with nine fractional digits")]
    RecordedAt(String),
    /// The log's global order goes backwards: lines moved.
    #[error("position {got} does not follow the previous event's {previous}")]
    OutOfOrder {
        previous: LogPosition,
        got: LogPosition,
    },
    /// A stream's sequences do not run 1, 2, 3…: events dropped, repeated or moved.
    #[error("stream {stream}: sequence {got} where {expected} was expected")]
    Sequence {
        stream: String,
        expected: i64,
        got: i64,
    },
    /// The line's `hash` is not the hash of its `prev` and `event`: the line was altered.
    #[error("hash {stated} is not the hash of this line's prev and event ({computed})")]
    Hash { stated: String, computed: String },
    /// The line's `prev` is not its stream's previous hash: the chain is broken.
    #[error("stream {stream}: prev {stated} is not the hash of the stream's previous event ({expected})")]
    Prev {
        stream: String,
        stated: String,
        expected: String,
    },
    #[error("longer than {EXPORT_LINE_BYTES_MAX} bytes")]
    TooLong,
    #[error("the line has no newline: the file is truncated")]
    Truncated,
    #[error("the file ends without its trailer: it is truncated")]
    NoTrailer,
    #[error("a line follows the trailer")]
    AfterTrailer,
    /// The trailer's figure disagrees with the file's.
    #[error("the trailer states {field} {stated}, the file has {found}")]
    Trailer {
        field: &'static str,
        stated: String,
        found: String,
    },
}

/// The `event` object of a line: every column of the log row.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Event<'a> {
    position: Position,
    #[serde(borrow)]
    aggregate_type: Cow<'a, str>,
    #[serde(borrow)]
    aggregate_id: Cow<'a, str>,
    sequence: i64,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    event_version: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(borrow)]
    metadata: &'a RawValue,
    #[serde(borrow)]
    recorded_at: Cow<'a, str>,
}

/// `LogPosition` on the wire. Its own type so that unknown fields are refused here
/// without changing how `LogPosition` itself deserializes.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    transaction: u64,
    position: i64,
}

/// An event line as the verifier reads it. The writer writes the same three fields by
/// hand (see [`ExportWriter::write`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    hash: &'a str,
    prev: &'a str,
    #[serde(borrow)]
    event: &'a RawValue,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    end: ExportSummary,
}

/// The trailer is told apart by its first bytes; a trailer altered there is read as
/// an event line and refused as one.
const TRAILER_START: &[u8] = b"{\"end\":";

/// `recordedAt` in its one spelling.
fn instant_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn hex64(hash: &[u8; 32]) -> [u8; 64] {
    let mut out = [0; 64];
    hex::encode_to_slice(hash, &mut out).expect("64 bytes hold 32 bytes in hex");
    out
}

/// The hash of an event line: `prev_hex` is the line's `prev`, as written.
fn chain_hash(prev_hex: &[u8], event: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hex);
    h.update(b"\n");
    h.update(event);
    h.finalize().into()
}

/// The last event of one stream.
#[derive(Clone, Copy)]
struct Link {
    sequence: i64,
    hash: [u8; 32],
}

/// Where every stream's chain stands, and the global order: the one set of rules the
/// writer enforces and the verifier checks, so a file the writer accepts verifies.
#[derive(Default)]
struct Chains {
    /// Last link per aggregate type, then aggregate id: nested so that a lookup
    /// borrows the record's strings instead of building a key per event.
    streams: HashMap<String, HashMap<String, Link>>,
    /// Position of the last event: the next must come after it.
    last_at: Option<LogPosition>,
    events: u64,
}

impl Chains {
    /// Check that `event` comes next in the log and in its stream; answers the hash
    /// its `prev` must be.
    fn prev_of(&self, event: &Event) -> Result<[u8; 32], Problem> {
        let at = LogPosition::new(event.position.transaction, event.position.position);
        if let Some(previous) = self.last_at.filter(|p| *p >= at) {
            return Err(Problem::OutOfOrder { previous, got: at });
        }
        let last = self
            .streams
            .get(event.aggregate_type.as_ref())
            .and_then(|ids| ids.get(event.aggregate_id.as_ref()));
        let expected = last.map_or(1, |l| l.sequence + 1);
        if event.sequence != expected {
            return Err(Problem::Sequence {
                stream: stream_name(event),
                expected,
                got: event.sequence,
            });
        }
        Ok(last.map_or(FIRST_PREV, |l| l.hash))
    }

    /// Make `event`, hashed `hash`, the last of its stream and of the log.
    fn push(&mut self, event: &Event, hash: [u8; 32]) {
        let link = Link {
            sequence: event.sequence,
            hash,
        };
        let ids = match self.streams.get_mut(event.aggregate_type.as_ref()) {
            Some(ids) => ids,
            None => self
                .streams
                .entry(event.aggregate_type.clone().into_owned())
                .or_default(),
        };
        match ids.get_mut(event.aggregate_id.as_ref()) {
            Some(slot) => *slot = link,
            None => {
                ids.insert(event.aggregate_id.clone().into_owned(), link);
            }
        }
        self.last_at = Some(LogPosition::new(
            event.position.transaction,
            event.position.position,
        ));
        self.events += 1;
    }

    fn summary(&self) -> ExportSummary {
        let mut lines: Vec<String> = self
            .streams
            .iter()
            .flat_map(|(t, ids)| {
                ids.iter()
                    .map(move |(id, l)| format!("{t}/{id} {}\n", hex::encode(l.hash)))
            })
            .collect();
        lines.sort_unstable();
        let mut h = Sha256::new();
        for line in &lines {
            h.update(line.as_bytes());
        }
        ExportSummary {
            events: self.events,
            streams: lines.len() as u64,
            digest: hex::encode(h.finalize()),
        }
    }
}

fn stream_name(event: &Event) -> String {
    format!("{}/{}", event.aggregate_type, event.aggregate_id)
}

/// `json` on one line. The stores hand back compact text (SQLite keeps what was
/// written, PostgreSQL's `jsonb::text` has no line breaks), which is kept byte for
/// byte; text with line breaks loses its whitespace outside strings, where JSON
/// cannot hold a raw line break, so the value is the same.
fn one_line(json: &str) -> Cow<'_, str> {
    if !json.contains(['\n', '\r']) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            (in_string, escaped) = (escaped || c != '"', !escaped && c == '\\');
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        } else {
            in_string = c == '"';
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Writes the export, one record at a time, in the log's global order.
///
/// Every stream must be exported whole, from its sequence 1: the writer refuses a
/// record the verifier would refuse (out of order, sequence not the next), so a
/// finished export always verifies. After an error the output is unusable. Each line
/// is one `write_all`: give it a `BufWriter` for a file.
pub struct ExportWriter<W: Write> {
    out: W,
    chains: Chains,
    /// The current event's bytes, reused: an export is millions of lines.
    event: Vec<u8>,
    /// The current line, reused.
    line: Vec<u8>,
}

impl<W: Write> ExportWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            chains: Chains::default(),
            event: Vec::new(),
            line: Vec::new(),
        }
    }

    /// Append `record`'s line.
    pub fn write(&mut self, record: &LogRecord) -> Result<(), ExportError> {
        let refused = |problem| ExportError::Record {
            at: record.at,
            problem,
        };
        let (payload, metadata) = (one_line(&record.payload), one_line(&record.metadata));
        let json = |column, text| {
            serde_json::from_str(text).map_err(|error| refused(Problem::NotJson { column, error }))
        };
        let event = Event {
            position: Position {
                transaction: record.at.transaction,
                position: record.at.position,
            },
            aggregate_type: Cow::Borrowed(&record.aggregate_type),
            aggregate_id: Cow::Borrowed(&record.aggregate_id),
            sequence: record.sequence,
            event_type: Cow::Borrowed(&record.event_type),
            event_version: Cow::Borrowed(&record.event_version),
            payload: json("payload", &payload)?,
            metadata: json("metadata", &metadata)?,
            recorded_at: Cow::Owned(instant_text(record.recorded_at)),
        };
        let prev = self.chains.prev_of(&event).map_err(refused)?;
        self.event.clear();
        serde_json::to_writer(&mut self.event, &event)
            .expect("serializing to memory fails only on a non-string map key; Event has none");
        let prev = hex64(&prev);
        let hash = chain_hash(&prev, &self.event);
        // By hand rather than through `Line`: serde would need the event's bytes
        // parsed again into a `RawValue` to embed them unchanged.
        self.line.clear();
        self.line.extend_from_slice(b"{\"hash\":\"");
        self.line.extend_from_slice(&hex64(&hash));
        self.line.extend_from_slice(b"\",\"prev\":\"");
        self.line.extend_from_slice(&prev);
        self.line.extend_from_slice(b"\",\"event\":");
        self.line.extend_from_slice(&self.event);
        self.line.extend_from_slice(b"}\n");
        self.out.write_all(&self.line)?;
        self.chains.push(&event, hash);
        Ok(())
    }

    /// Write the trailer and flush; answers what the export holds.
    pub fn finish(mut self) -> Result<ExportSummary, ExportError> {
        let trailer = Trailer {
            end: self.chains.summary(),
        };
        self.line.clear();
        serde_json::to_writer(&mut self.line, &trailer)
            .expect("serializing to memory fails only on a non-string map key; Trailer has none");
        self.line.push(b'\n');
        self.out.write_all(&self.line)?;
        self.out.flush()?;
        Ok(trailer.end)
    }
}

/// Check an export end to end: every line's hash, every stream's chain and sequences,
/// the global order, and the trailer (present, last, and equal to what the file holds).
/// Answers the trailer's figures; the error names the first line that is wrong.
pub fn verify_export<R: BufRead>(mut input: R) -> Result<ExportSummary, ExportError> {
    let mut chains = Chains::default();
    let mut trailer: Option<(u64, ExportSummary)> = None;
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        let read = (&mut input)
            .take(EXPORT_LINE_BYTES_MAX + 1)
            .read_until(b'\n', &mut buf)?;
        if read == 0 {
            break;
        }
        line += 1;
        let at_line = |problem| ExportError::Line { line, problem };
        let Some(body) = buf.strip_suffix(b"\n") else {
            let problem = if read as u64 > EXPORT_LINE_BYTES_MAX {
                Problem::TooLong
            } else {
                Problem::Truncated
            };
            return Err(at_line(problem));
        };
        if trailer.is_some() {
            return Err(at_line(Problem::AfterTrailer));
        }
        if body.starts_with(TRAILER_START) {
            let Trailer { end } =
                serde_json::from_slice(body).map_err(|e| at_line(Problem::Malformed(e)))?;
            trailer = Some((line, end));
        } else {
            verify_event_line(&mut chains, body).map_err(at_line)?;
        }
    }
    let Some((line, stated)) = trailer else {
        return Err(ExportError::Line {
            line: line + 1,
            problem: Problem::NoTrailer,
        });
    };
    check_trailer(&stated, &chains.summary())
        .map_err(|problem| ExportError::Line { line, problem })?;
    Ok(stated)
}

fn verify_event_line(chains: &mut Chains, body: &[u8]) -> Result<(), Problem> {
    let line: Line = serde_json::from_slice(body).map_err(Problem::Malformed)?;
    // The line against itself first: an altered line is reported as altered, not as
    // whatever its altered bytes now claim.
    let computed = chain_hash(line.prev.as_bytes(), line.event.get().as_bytes());
    if line.hash.as_bytes() != hex64(&computed) {
        return Err(Problem::Hash {
            stated: line.hash.to_owned(),
            computed: hex::encode(computed),
        });
    }
    let event: Event = serde_json::from_str(line.event.get()).map_err(Problem::Malformed)?;
    check_recorded_at(&event.recorded_at)?;
    let prev = chains.prev_of(&event)?;
    if line.prev.as_bytes() != hex64(&prev) {
        return Err(Problem::Prev {
            stream: stream_name(&event),
            stated: line.prev.to_owned(),
            expected: hex::encode(prev),
        });
    }
    chains.push(&event, computed);
    Ok(())
}

/// `recordedAt` must be the one spelling the writer gives an instant.
fn check_recorded_at(text: &str) -> Result<(), Problem> {
    let canonical = DateTime::parse_from_rfc3339(text)
        .is_ok_and(|t| instant_text(t.with_timezone(&Utc)) == text);
    if canonical {
        Ok(())
    } else {
        Err(Problem::RecordedAt(text.to_owned()))
    }
}

fn check_trailer(stated: &ExportSummary, found: &ExportSummary) -> Result<(), Problem> {
    let fields = [
        (
            "events",
            stated.events.to_string(),
            found.events.to_string(),
        ),
        (
            "streams",
            stated.streams.to_string(),
            found.streams.to_string(),
        ),
        ("digest", stated.digest.clone(), found.digest.clone()),
    ];
    match fields.into_iter().find(|(_, s, f)| s != f) {
        Some((field, stated, found)) => Err(Problem::Trailer {
            field,
            stated,
            found,
        }),
        None => Ok(()),
    }
}
