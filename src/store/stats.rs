//! When the store refreshes its tables' statistics. A planner without statistics (a
//! server without autovacuum, a young table) chose scans of whole streams: brand
//! registration fell from ~4,200/s to ~100/s as brands grew, until one `ANALYZE`. The
//! store therefore analyzes by itself each time the rows this process appended double,
//! up to every [`ANALYZE_AFTER_ROWS_MAX`] rows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The first refresh: a few thousand rows are enough for the planner to prefer the
/// indexes, and fewer are not worth a statement.
pub const ANALYZE_AFTER_ROWS_FIRST: u64 = 10_000;
/// The longest gap between two refreshes: a refresh samples a bounded number of rows
/// (30,000 on PostgreSQL by default), so it stays cheap however big the log.
pub const ANALYZE_AFTER_ROWS_MAX: u64 = 1_000_000;

#[derive(Debug)]
pub struct StatsDue {
    appended: AtomicU64,
    next: AtomicU64,
    running: AtomicBool,
}

impl Default for StatsDue {
    fn default() -> Self {
        Self {
            appended: AtomicU64::new(0),
            next: AtomicU64::new(ANALYZE_AFTER_ROWS_FIRST),
            running: AtomicBool::new(false),
        }
    }
}

impl StatsDue {
    /// Count `rows` appended; true when a refresh is due and none runs (the caller then
    /// runs one and calls [`StatsDue::done`]).
    pub fn appended(&self, rows: u64) -> bool {
        let total = self.appended.fetch_add(rows, Ordering::Relaxed) + rows;
        if total < self.next.load(Ordering::Relaxed) || self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.next
            .store(total + total.min(ANALYZE_AFTER_ROWS_MAX), Ordering::Relaxed);
        true
    }

    pub fn done(&self) {
        self.running.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_come_as_the_rows_double_then_every_million() {
        let due = StatsDue::default();
        let mut at = Vec::new();
        for batch in 1..=3_000u64 {
            if due.appended(1_000) {
                at.push(batch * 1_000);
                due.done();
            }
        }
        assert_eq!(
            at,
            [10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000, 1_280_000, 2_280_000]
        );
        // One at a time: while one runs, none more is asked for.
        let due = StatsDue::default();
        assert!(due.appended(20_000));
        assert!(!due.appended(1_000_000));
    }
}
