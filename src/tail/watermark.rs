//! What this process acknowledged, per stream, that its read models may not hold yet.
//!
//! The engine records the last sequence of each stream a committed batch wrote before
//! it answers the callers; the read-model consumer settles a stream once it has folded
//! that far. A read of a stream then waits only if this process acknowledged something
//! on that very stream that the models do not hold: a read of a quiet brand never
//! waits for a busy one, and one already folded costs a map lookup, no round trip.
//!
//! Entries live from a commit to its fold (milliseconds), so the map holds about the
//! streams written in the last moments. Should it ever reach
//! [`WATERMARK_STREAMS_MAX`], acknowledgements are no longer recorded one by one and
//! reads fall back to waiting for a whole pass of the consumer, until a pass that began
//! after the last unrecorded acknowledgement has ended.

use std::collections::HashMap;
use std::sync::Mutex;

/// Streams with an acknowledged write not yet folded. Millions would mean the consumer
/// is minutes behind: by then a read waiting for a whole pass costs no more.
pub const WATERMARK_STREAMS_MAX: usize = 1_000_000;

/// What a read of one stream must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    /// Nothing this process acknowledged is missing from the models.
    Nothing,
    /// The models must hold the stream up to this sequence.
    Sequence(u64),
    /// Acknowledgements overflowed: wait for a pass of the consumer.
    Pass,
}

#[derive(Debug, Default)]
struct Marks {
    acked: HashMap<String, u64>,
    /// Acknowledgements not recorded for want of room, counted.
    overflows: u64,
    /// Set by an unrecorded acknowledgement, cleared by a pass that began after it.
    overflowed: bool,
}

/// Shared by the engine (which acknowledges) and the read-model consumer (which settles).
#[derive(Debug, Default)]
pub struct Watermarks {
    marks: Mutex<Marks>,
}

impl Watermarks {
    pub fn new() -> Self {
        Self::default()
    }

    /// A committed batch wrote `streams` up to these sequences; called before its
    /// callers are answered.
    pub fn acknowledge<'a>(&self, streams: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut m = self.marks.lock().expect("watermark lock");
        for (stream, sequence) in streams {
            if let Some(acked) = m.acked.get_mut(stream) {
                *acked = (*acked).max(sequence);
            } else if m.acked.len() < WATERMARK_STREAMS_MAX {
                m.acked.insert(stream.to_owned(), sequence);
            } else {
                m.overflows += 1;
                m.overflowed = true;
            }
        }
    }

    /// The models now hold these streams up to these sequences.
    pub fn settle<'a>(&self, streams: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut m = self.marks.lock().expect("watermark lock");
        for (stream, folded) in streams {
            if m.acked.get(stream).is_some_and(|acked| *acked <= folded) {
                m.acked.remove(stream);
            }
        }
    }

    /// Taken when a consumer pass begins, handed back to [`Watermarks::sweep`] at its end.
    pub fn begin_pass(&self) -> u64 {
        self.marks.lock().expect("watermark lock").overflows
    }

    /// After a whole pass of the consumer that began at `begun`: every stream `holds`
    /// says is folded far enough is settled (an acknowledgement recorded just after its
    /// fold would else linger), and an overflow is over if none happened since `begun`:
    /// the pass folded everything committed before it began.
    pub fn sweep(&self, begun: u64, holds: impl Fn(&str) -> Option<u64>) {
        let mut m = self.marks.lock().expect("watermark lock");
        m.acked
            .retain(|stream, acked| holds(stream).is_none_or(|folded| folded < *acked));
        if m.overflows == begun {
            m.overflowed = false;
        }
    }

    /// What a read of `stream` must wait for.
    pub fn required(&self, stream: &str) -> Required {
        let m = self.marks.lock().expect("watermark lock");
        match (m.overflowed, m.acked.get(stream)) {
            (true, _) => Required::Pass,
            (false, Some(sequence)) => Required::Sequence(*sequence),
            (false, None) => Required::Nothing,
        }
    }

    /// Streams waiting to be folded (for status and tests).
    pub fn pending(&self) -> usize {
        self.marks.lock().expect("watermark lock").acked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_waits_only_for_what_was_acknowledged_on_its_stream() {
        // Proves acknowledgements are per stream and settle once folded far enough.
        let w = Watermarks::new();
        w.acknowledge([("a:2026-11", 3), ("b:2026-11", 7)]);
        w.acknowledge([("a:2026-11", 5)]);
        assert_eq!(w.required("a:2026-11"), Required::Sequence(5));
        assert_eq!(w.required("c:2026-11"), Required::Nothing);
        w.settle([("a:2026-11", 4)]);
        assert_eq!(
            w.required("a:2026-11"),
            Required::Sequence(5),
            "not far enough"
        );
        w.settle([("a:2026-11", 5), ("b:2026-11", 9)]);
        assert_eq!(w.required("a:2026-11"), Required::Nothing);
        assert_eq!(w.required("b:2026-11"), Required::Nothing);
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn an_acknowledgement_recorded_after_its_fold_is_swept() {
        // Proves the race of a fold that beats the engine's acknowledgement leaves
        // nothing behind after the next sweep.
        let w = Watermarks::new();
        w.settle([("a:2026-11", 5)]);
        w.acknowledge([("a:2026-11", 5), ("b:2026-11", 2)]);
        let begun = w.begin_pass();
        w.sweep(begun, |s| (s == "a:2026-11").then_some(5));
        assert_eq!(w.required("a:2026-11"), Required::Nothing);
        assert_eq!(w.required("b:2026-11"), Required::Sequence(2));
    }
}
