//! The report: one table (plain, then Markdown), remarks, and the ratios to the
//! baseline and the raw ceiling against their targets.

use crate::drive::Measured;
use crate::raw::RAW_BATCH_ROWS_MAX;
use crate::Args;

/// Targets of the issue: engine throughput as a multiple of the baseline, per scenario,
/// and as a share of the raw 100-row ceiling.
const TARGET_HOT_VS_BASELINE_MIN: f64 = 100.0;
const TARGET_BRANDS_VS_BASELINE_MIN: f64 = 10.0;
const TARGET_VS_RAW_MIN: f64 = 0.5;

const HEADERS: [&str; 12] = [
    "scenario",
    "system",
    "ops",
    "s",
    "ops/s",
    "events/s",
    "events/commit",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "conflicts",
    "errors",
];

fn cells(m: &Measured) -> [String; 12] {
    [
        m.scenario.clone(),
        m.system.clone(),
        m.run.ops.to_string(),
        format!("{:.2}", m.run.elapsed.as_secs_f64()),
        thousands(m.ops_per_s()),
        thousands(m.events_per_s()),
        m.commits
            .filter(|c| *c > 0)
            .map_or("-".into(), |c| format!("{:.1}", m.events as f64 / c as f64)),
        format!("{:.2}", m.latency_ms(0.5)),
        format!("{:.2}", m.latency_ms(0.99)),
        format!("{:.2}", m.latency_ms(0.999)),
        m.conflicts.map_or("-".into(), |c| c.to_string()),
        m.run.errors.to_string(),
    ]
}

pub(crate) fn print_report(args: &Args, results: &[Measured]) {
    let rows: Vec<[String; 12]> = results.iter().map(cells).collect();
    println!();
    println!(
        "ledger-bench: {} submitters (closed loop) on {} runtime worker thread(s), {} commands per engine run, \
         {} per baseline run, {} rows per raw run, each run stopped after {} s, {}; load average at the end {}",
        args.submitters,
        args.worker_threads,
        args.commands,
        args.baseline_commands,
        args.commands,
        args.run_seconds_max,
        if args.analyze { "ANALYZE after warm-up" } else { "tables never analyzed" },
        load_average()
    );
    println!();
    print_plain(&rows);
    for m in results {
        if m.run.ops < m.run.planned {
            println!(
                "  ({}, {}: stopped at --run-seconds-max, {} of {} done)",
                m.scenario, m.system, m.run.ops, m.run.planned
            );
        }
        for remark in &m.remarks {
            println!("  ({}, {}: {remark})", m.scenario, m.system);
        }
        if let Some(e) = &m.run.first_error {
            println!("  ({}, {}: first error: {e})", m.scenario, m.system);
        }
    }
    let ratios = ratios(results);
    println!();
    for line in &ratios {
        println!("{line}");
    }
    println!();
    println!("Markdown:");
    println!();
    print_markdown(&rows);
    println!();
    for line in &ratios {
        println!("- {line}");
    }
}

fn print_plain(rows: &[[String; 12]]) {
    let mut widths = HEADERS.map(str::len);
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // Text columns left-aligned, numbers right-aligned.
                if i < 2 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(&HEADERS.map(String::from)));
    println!(
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    );
    for row in rows {
        println!("{}", line(row));
    }
}

fn print_markdown(rows: &[[String; 12]]) {
    println!("| {} |", HEADERS.join(" | "));
    let align: Vec<&str> = (0..HEADERS.len())
        .map(|i| if i < 2 { "---" } else { "---:" })
        .collect();
    println!("| {} |", align.join(" | "));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

fn ratios(results: &[Measured]) -> Vec<String> {
    let find = |scenario: &str, system: &str| {
        results
            .iter()
            .find(|m| m.scenario == scenario && m.system.starts_with(system))
    };
    let mut scenarios: Vec<&str> = Vec::new();
    for m in results {
        if !scenarios.contains(&m.scenario.as_str()) {
            scenarios.push(&m.scenario);
        }
    }
    let mut out = Vec::new();
    for scenario in scenarios {
        let baseline = find(scenario, "baseline");
        let raw = find(scenario, "raw ceiling");
        let target = if scenario == "hot brand" {
            TARGET_HOT_VS_BASELINE_MIN
        } else {
            TARGET_BRANDS_VS_BASELINE_MIN
        };
        for engine in results
            .iter()
            .filter(|m| m.scenario == scenario && m.system.starts_with("engine"))
        {
            if let Some(b) = baseline {
                let r = engine.ops_per_s() / b.ops_per_s();
                out.push(format!(
                    "{scenario}: {} / baseline = {r:.1}x (target >= {target}x: {})",
                    engine.system,
                    verdict(r >= target)
                ));
            }
            if let Some(raw) = raw {
                let (r, spread) = ratio_to_ceiling(engine, raw);
                out.push(format!(
                    "{scenario}: {} / raw {RAW_BATCH_ROWS_MAX}-row ceiling = {:.0} %{spread} (target >= {:.0} %: {})",
                    engine.system,
                    100.0 * r,
                    100.0 * TARGET_VS_RAW_MIN,
                    verdict(r >= TARGET_VS_RAW_MIN)
                ));
            }
        }
    }
    out
}

/// Engine events/s over the ceiling's: the median of the per-round ratios (each round
/// ran both one after the other), with their range; the plain ratio for one round.
fn ratio_to_ceiling(engine: &Measured, raw: &Measured) -> (f64, String) {
    if engine.rounds.len() < 2 || engine.rounds.len() != raw.rounds.len() {
        return (engine.events_per_s() / raw.events_per_s(), String::new());
    }
    let mut r: Vec<f64> = engine
        .rounds
        .iter()
        .zip(&raw.rounds)
        .map(|(e, c)| e / c)
        .collect();
    r.sort_by(f64::total_cmp);
    let spread = format!(
        " (median of {} rounds, {:.0}-{:.0} %)",
        r.len(),
        100.0 * r[0],
        100.0 * r[r.len() - 1]
    );
    (r[r.len() / 2], spread)
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The 1-, 5- and 15-minute load averages: other work on the machine skews every number.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `12345.6` as `12,346`: rates are read, not parsed.
pub(crate) fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
