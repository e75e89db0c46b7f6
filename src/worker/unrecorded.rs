//! Outcomes the journal could not record (a full disk), kept in memory until it can, and the
//! worker's pause while it cannot write.
//!
//! In: each outcome of an event that the journal refused (which sinks took the event, its
//! attempts), each one it later recorded, and each failed or successful journal write. Out: for
//! an event found pending again, what its sinks already took, added to where the journal says it
//! stands, so no sink is sent the event again because the journal could not say it had it; and
//! for the worker loop, until when to leave the journal alone before probing it again (backing
//! off from [`PAUSE_INITIAL`] to [`PAUSE_MAX`]).
//!
//! What is kept here is lost if the process dies during the outage; the journal still holds the
//! event as pending, so it is delivered again then (the rare repeat sinks deduplicate by `id`),
//! never lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::journal::SinkProgress;

/// The first pause after a journal write failed.
pub(crate) const PAUSE_INITIAL: Duration = Duration::from_millis(500);
/// The longest pause between two probes of a journal that cannot write.
pub(crate) const PAUSE_MAX: Duration = Duration::from_secs(10);
/// An unrecorded outcome older than this is dropped when another is added: with the Redis queue
/// another replica may have finished the event, and this process would never see it again.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
pub(crate) struct Unrecorded {
    outcomes: Mutex<HashMap<String, Outcome>>,
    pause: Mutex<Option<Pause>>,
}

struct Outcome {
    attempts: u32,
    sinks_done: Vec<String>,
    sink_attempts: BTreeMap<String, u32>,
    since: Instant,
}

struct Pause {
    until: Instant,
    failures: u32,
}

impl Unrecorded {
    fn outcomes(&self) -> MutexGuard<'_, HashMap<String, Outcome>> {
        // Each change is one insert or removal: a poisoned lock holds no broken state.
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pause(&self) -> MutexGuard<'_, Option<Pause>> {
        self.pause.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The journal refused to record `progress` for the event `id`: keep it for the next attempt.
    pub(crate) fn remember(&self, id: &str, progress: &SinkProgress) {
        let now = Instant::now();
        let mut outcomes = self.outcomes();
        outcomes.retain(|_, outcome| now.duration_since(outcome.since) < FORGET_AFTER);
        let outcome = outcomes.entry(id.to_string()).or_insert_with(|| Outcome {
            attempts: 0,
            sinks_done: Vec::new(),
            sink_attempts: BTreeMap::new(),
            since: now,
        });
        outcome.attempts = outcome.attempts.max(progress.attempts);
        for sink in &progress.sinks_done {
            if !outcome.sinks_done.contains(sink) {
                outcome.sinks_done.push(sink.clone());
            }
        }
        for (sink, attempts) in &progress.sink_attempts {
            let kept = outcome.sink_attempts.entry(sink.clone()).or_insert(0);
            *kept = (*kept).max(*attempts);
        }
    }

    /// The journal recorded the event's outcome: nothing left to keep.
    pub(crate) fn forget(&self, id: &str) {
        let mut outcomes = self.outcomes();
        // Nearly always empty (it holds only what a failing journal refused): no hashing then.
        if !outcomes.is_empty() {
            outcomes.remove(id);
        }
    }

    /// Adds to `progress` (the event `id` as the journal holds it) what this process knows and
    /// could not record. Returns false when there was nothing to add.
    pub(crate) fn recall(&self, id: &str, progress: &mut SinkProgress) -> bool {
        let outcomes = self.outcomes();
        if outcomes.is_empty() {
            return false;
        }
        let Some(outcome) = outcomes.get(id) else {
            return false;
        };
        progress.attempts = progress.attempts.max(outcome.attempts);
        for sink in &outcome.sinks_done {
            if !progress.sinks_done.contains(sink) {
                progress.sinks_done.push(sink.clone());
            }
        }
        for (sink, attempts) in &outcome.sink_attempts {
            let held = progress.sink_attempts.entry(sink.clone()).or_insert(0);
            *held = (*held).max(*attempts);
        }
        true
    }

    /// Outcomes waiting for the journal.
    pub(crate) fn len(&self) -> usize {
        self.outcomes().len()
    }

    /// A journal write failed: pause (longer each time in a row) before probing it again.
    pub(crate) fn write_failed(&self) {
        let mut pause = self.pause();
        let failures = pause.as_ref().map_or(0, |p| p.failures) + 1;
        let delay = PAUSE_INITIAL
            .saturating_mul(1 << (failures - 1).min(10))
            .min(PAUSE_MAX);
        *pause = Some(Pause {
            until: Instant::now() + delay,
            failures,
        });
    }

    /// The journal can write again.
    pub(crate) fn write_succeeded(&self) {
        *self.pause() = None;
    }

    /// Until when the worker leaves the journal alone, while it cannot write.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.pause().as_ref().map(|p| p.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the event `k:0` stands as the journal holds it.
    fn journaled(sinks_done: &[&str]) -> SinkProgress {
        SinkProgress {
            attempts: 1,
            sinks_done: sinks_done.iter().map(|s| s.to_string()).collect(),
            sink_attempts: BTreeMap::from([("hook".to_string(), 1)]),
            ..SinkProgress::default()
        }
    }

    #[test]
    fn a_recalled_event_carries_the_sinks_that_took_it_until_the_journal_records_them() {
        let unrecorded = Unrecorded::default();
        assert!(!unrecorded.recall("k:0", &mut journaled(&[])));
        unrecorded.remember(
            "k:0",
            &SinkProgress {
                attempts: 2,
                last_error: "hook: 503".to_string(),
                sinks_done: vec!["file".to_string()],
                sink_attempts: BTreeMap::from([("hook".to_string(), 2)]),
                sinks_failed: vec!["hook".to_string()],
            },
        );
        let mut recalled = journaled(&["stream"]);
        assert!(unrecorded.recall("k:0", &mut recalled));
        assert_eq!(recalled.sinks_done, ["stream", "file"]);
        assert_eq!(recalled.attempts, 2);
        assert_eq!(recalled.sink_attempts["hook"], 2);
        unrecorded.forget("k:0");
        let mut forgotten = journaled(&[]);
        assert!(!unrecorded.recall("k:0", &mut forgotten));
        assert_eq!(forgotten, journaled(&[]));
    }

    #[test]
    fn the_pause_grows_with_each_failed_write_and_ends_with_a_successful_one() {
        let unrecorded = Unrecorded::default();
        assert!(unrecorded.paused_until().is_none());
        unrecorded.write_failed();
        let first = unrecorded.paused_until().unwrap();
        unrecorded.write_failed();
        let second = unrecorded.paused_until().unwrap();
        assert!(second > first + PAUSE_INITIAL / 2);
        for _ in 0..20 {
            unrecorded.write_failed();
        }
        assert!(unrecorded.paused_until().unwrap() <= Instant::now() + PAUSE_MAX);
        unrecorded.write_succeeded();
        assert!(unrecorded.paused_until().is_none());
    }
}
