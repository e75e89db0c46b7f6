//! Outages of what the worker depends on (the dedupe store, Attio, each sink), logged once per
//! outage instead of once per waiting event.
//!
//! In: every failure the worker meets that is about the dependency rather than the event (Redis
//! unreachable, Attio down, a sink answering 503), and every success after it. Out: three kinds
//! of log line per outage: `<dependency> unavailable` when it starts (warning, with the error),
//! `<dependency> still unavailable` while it lasts (with the first failure at least
//! [`SUMMARY_EVERY`] after the last line: no timer runs for it), and `<dependency>
//! available again` when it ends, both with how long it has been down (`down_for`) and how many
//! attempts at events failed on it meanwhile (`failed_attempts`). The lines belong to no event's
//! span: they are about the dependency. What each event did meanwhile is logged at debug level
//! by the worker.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a lasting outage is logged again.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// The outages the worker keeps track of.
pub(crate) struct Outages {
    /// Reading due events (the Redis journal lives in Redis too) and recording their outcomes.
    pub(crate) journal: Outage,
    pub(crate) dedupe: Outage,
    pub(crate) attio: Outage,
    sinks: Mutex<HashMap<String, Arc<Outage>>>,
}

impl Default for Outages {
    fn default() -> Self {
        Outages {
            journal: Outage::new("journal"),
            dedupe: Outage::new("dedupe store"),
            attio: Outage::new("Attio"),
            sinks: Mutex::default(),
        }
    }
}

impl Outages {
    /// Every sink seen so far, with how long it has been down (`None`: up).
    pub(crate) fn sinks_down(&self) -> Vec<(String, Option<Duration>)> {
        let sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        let mut states: Vec<_> = sinks
            .iter()
            .map(|(name, outage)| (name.clone(), outage.down_for()))
            .collect();
        states.sort();
        states
    }

    /// The outage tracker of the sink `name`.
    pub(crate) fn sink(&self, name: &str) -> Arc<Outage> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outage) = sinks.get(name) {
            // Looked up by name first: making the entry's key would allocate, per event.
            return outage.clone();
        }
        sinks
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Outage::new(format!("sink {name}"))))
            .clone()
    }
}

/// One dependency's state: up, or down since a moment, with what waited meanwhile.
pub(crate) struct Outage {
    name: String,
    /// Mirrors `state.down.is_some()`, so that a success while up takes no lock.
    is_down: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    down: Option<Down>,
    /// When the last outage ended. A failure of an attempt that began before then is a late
    /// answer from the outage (many events are worked on at once), not a new one.
    up_since: Option<Instant>,
}

struct Down {
    since: Instant,
    last_logged: Instant,
    failed_attempts: u64,
}

/// What one report has to say in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Started,
    Ongoing {
        down_for: Duration,
        failed_attempts: u64,
    },
    Ended {
        down_for: Duration,
        failed_attempts: u64,
    },
}

impl Outage {
    /// How long the dependency has been down, or `None` while it is up.
    pub(crate) fn down_for(&self) -> Option<Duration> {
        if !self.is_down.load(Ordering::Relaxed) {
            return None;
        }
        self.lock().down.as_ref().map(|down| down.since.elapsed())
    }

    pub(crate) fn new(name: impl Into<String>) -> Outage {
        Outage {
            name: name.into(),
            is_down: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    /// An event could not go on because this dependency failed, on an attempt that began at
    /// `started`; the event waits for a retry.
    pub(crate) fn report_failure(&self, started: Instant, error: &dyn Display) {
        let name = &self.name;
        match self.failure_at(started, Instant::now()) {
            Some(Line::Started) => tracing::warn!(parent: None, %error, "{name} unavailable"),
            Some(Line::Ongoing {
                down_for,
                failed_attempts,
            }) => tracing::warn!(
                parent: None,
                %error,
                down_for = ?down_for,
                failed_attempts,
                "{name} still unavailable"
            ),
            _ => {}
        }
    }

    /// The dependency served an event, on an attempt that began at `started`.
    pub(crate) fn report_success(&self, started: Instant) {
        if !self.is_down.load(Ordering::Relaxed) {
            return;
        }
        if let Some(Line::Ended {
            down_for,
            failed_attempts,
        }) = self.success_at(started, Instant::now())
        {
            let name = &self.name;
            tracing::info!(
                parent: None,
                down_for = ?down_for,
                failed_attempts,
                "{name} available again"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each change is one assignment: a poisoned lock holds no broken state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failure_at(&self, started: Instant, now: Instant) -> Option<Line> {
        let mut state = self.lock();
        let State { down, up_since } = &mut *state;
        match down.as_mut() {
            None if up_since.is_some_and(|up| started < up) => None,
            None => {
                *down = Some(Down {
                    since: now,
                    last_logged: now,
                    failed_attempts: 1,
                });
                self.is_down.store(true, Ordering::Relaxed);
                Some(Line::Started)
            }
            Some(down) => {
                down.failed_attempts += 1;
                if now.saturating_duration_since(down.last_logged) < SUMMARY_EVERY {
                    return None;
                }
                down.last_logged = now;
                Some(Line::Ongoing {
                    down_for: now.saturating_duration_since(down.since),
                    failed_attempts: down.failed_attempts,
                })
            }
        }
    }

    fn success_at(&self, started: Instant, now: Instant) -> Option<Line> {
        let mut state = self.lock();
        // An attempt begun before the outage started and answered late says nothing about now.
        if state.down.as_ref()?.since > started {
            return None;
        }
        let ended = state.down.take()?;
        state.up_since = Some(now);
        self.is_down.store(false, Ordering::Relaxed);
        Some(Line::Ended {
            down_for: now.saturating_duration_since(ended.since),
            failed_attempts: ended.failed_attempts,
        })
    }
}

#[cfg(test)]
mod tests;
