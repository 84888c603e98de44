//! `replay-bench`: how fast the auditor's tools go through a realistic log held in
//! memory. Run it with
//!
//! ```sh
//! cargo run --release -p ledger-replay --example replay-bench
//! ```
//!
//! It generates the log by driving the real aggregates (tests/common: usage with
//! threshold crossings and overage, consuming quota checks, gauges, top-ups,
//! corrections, plan upgrades, closes and late usage over several months), then times,
//! on one thread, best of `--rounds`:
//!
//! - fold: already decoded `ProjectedEvent`s through `ReadModels::apply`;
//! - decode + fold: `Replayer::apply` on `LogRecord`s (payloads as JSON text);
//! - export: `ExportWriter::write` of every record, then `finish`, into memory;
//! - verify: `verify_export` of that export.
//!
//! Options: `--brands` (2000), `--periods` (3), `--steps` per brand and period (160),
//! `--rounds` (3), `--seed` (1). The defaults give about 1.2 million events.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use ledger_projections::{ProjectedEvent, ReadModels};
use ledger_replay::{verify_export, ExportWriter, Replayer};

/// The issue's target for folding in memory, events per second.
const FOLD_EVENTS_PER_S_TARGET: f64 = 1_000_000.0;

struct Options {
    brands: usize,
    periods: usize,
    steps: usize,
    rounds: usize,
    seed: u64,
}

fn options() -> Options {
    let mut o = Options {
        brands: 2000,
        periods: 3,
        steps: 160,
        rounds: 3,
        seed: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
        let value = value.unwrap_or_else(|| panic!("{} needs a whole number", pair[0]));
        match pair[0].as_str() {
            "--brands" => o.brands = value as usize,
            "--periods" => o.periods = value as usize,
            "--steps" => o.steps = value as usize,
            "--rounds" => o.rounds = (value as usize).max(1),
            "--seed" => o.seed = value,
            other => panic!("unknown option {other}; see the example's doc comment"),
        }
    }
    o
}

/// The fastest of `rounds` runs of `run`. What it answers is dropped after the clock
/// stops: freeing a million rows is not part of folding them.
fn best_of<T>(rounds: usize, mut run: impl FnMut() -> T) -> Duration {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let out = black_box(run());
            let took = start.elapsed();
            drop(out);
            took
        })
        .min()
        .expect("at least one round")
}

/// The machine's load average, when the system tells it: wall-clock rates mean little
/// on a machine busy with other work.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn report(what: &str, events: usize, took: Duration) -> f64 {
    let rate = events as f64 / took.as_secs_f64();
    println!(
        "{what:<40} {:>10.0} events/s  ({:.3} s for {events} events)",
        rate,
        took.as_secs_f64()
    );
    rate
}

fn main() {
    let o = options();
    let start = Instant::now();
    let records = common::busy_log(o.brands, o.periods, o.steps, o.seed).into_records();
    let n = records.len();
    let payload_bytes: usize = records.iter().map(|r| r.payload.len()).sum();
    println!(
        "log: {n} events, {} brands, {} periods, {:.0} MB of payload, generated in {:.1} s; {} CPUs, load average {}",
        o.brands,
        o.periods,
        payload_bytes as f64 / 1e6,
        start.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        load_average(),
    );

    let events: Vec<ProjectedEvent> = records
        .iter()
        .map(|r| r.decode().expect("generated records decode"))
        .collect();

    let fold = best_of(o.rounds, || {
        let mut models = ReadModels::new();
        models.apply_all(&events);
        models
    });
    let fold_rate = report("fold (decoded events, ReadModels::apply)", n, fold);

    let replay = best_of(o.rounds, || {
        let mut replayer = Replayer::new();
        replayer.apply_all(&records).expect("the log replays");
        replayer
    });
    report("decode + fold (Replayer::apply)", n, replay);

    let mut export = Vec::new();
    let written = best_of(o.rounds, || {
        export.clear();
        let mut writer = ExportWriter::new(&mut export);
        for record in &records {
            writer.write(record).expect("the log exports");
        }
        writer.finish().expect("writing to memory succeeds")
    });
    report("export (ExportWriter::write)", n, written);
    println!(
        "{:<40} {:>10.0} MB",
        "export size",
        export.len() as f64 / 1e6
    );

    let verified = best_of(o.rounds, || {
        verify_export(export.as_slice()).expect("the export verifies")
    });
    report("verify (verify_export)", n, verified);

    let verdict = if fold_rate >= FOLD_EVENTS_PER_S_TARGET {
        "meets"
    } else {
        "MISSES"
    };
    println!(
        "fold {verdict} the target of {FOLD_EVENTS_PER_S_TARGET:.0} events/s; load average now {}",
        load_average()
    );
}
