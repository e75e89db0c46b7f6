//! Circuit breaker of the Attio client: when Attio is down, stop asking it.
//!
//! In: the outcome of every request (success, outage failure, other failure). Out: whether the
//! next request may go out. After `threshold` consecutive outage failures (5xx, timeouts,
//! connection errors) the breaker opens: requests fail at once with the time left, for
//! `cooldown`. Then one probe request is let through (half-open); its success closes the
//! breaker, its failure opens it for another cooldown. The worker keeps events in the journal
//! while the breaker is open, without using up their attempts.
//!
//! Small enough to own: the crates that exist either wrap the call itself (we need the decision
//! separate from the retry loop) or do not say how long the breaker stays open.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe went out at `since`; others wait for its answer.
    HalfOpen {
        since: Instant,
    },
}

/// What the breaker says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
    /// Refused; Attio may be asked again after this long.
    Refused {
        retry_in: Duration,
    },
}

#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
    /// A probe that never reported back (its task was cancelled) is forgotten after this long.
    probe_timeout: Duration,
}

impl CircuitBreaker {
    pub(crate) fn new(
        threshold: u32,
        cooldown: Duration,
        probe_timeout: Duration,
    ) -> CircuitBreaker {
        CircuitBreaker {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
            probe_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section is a read and a write of one small value: nothing is left
        // half-updated by a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to send one request.
    pub(crate) fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                tracing::info!("Attio circuit breaker half-open: sending one probe request");
                Admission::Allowed
            }
            State::Open { until } => Admission::Refused {
                retry_in: until - now,
            },
            State::HalfOpen { since } if now.duration_since(since) >= self.probe_timeout => {
                *state = State::HalfOpen { since: now };
                Admission::Allowed
            }
            State::HalfOpen { since } => Admission::Refused {
                retry_in: self
                    .probe_timeout
                    .saturating_sub(now.duration_since(since))
                    .min(self.cooldown),
            },
        }
    }

    /// Attio answered (success or an error that proves it is up).
    pub(crate) fn record_success(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!("Attio answers again: circuit breaker closed");
        }
        *state = State::Closed { failures: 0 };
    }

    /// Attio failed in a way that suggests an outage.
    pub(crate) fn record_outage(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                tracing::warn!(
                    failures = failures + 1,
                    cooldown = ?self.cooldown,
                    "Attio keeps failing: circuit breaker open; events wait in the journal"
                );
                *state = State::Open {
                    until: now + self.cooldown,
                };
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                }
            }
            State::HalfOpen { .. } => {
                tracing::warn!(cooldown = ?self.cooldown, "probe failed: circuit breaker open again");
                *state = State::Open {
                    until: now + self.cooldown,
                };
            }
            // A request admitted before the breaker opened: the cooldown already runs.
            State::Open { .. } => {}
        }
    }

    /// Refused requests, and how long until the next probe, while the breaker is not closed.
    pub(crate) fn open_for(&self) -> Option<Duration> {
        let now = Instant::now();
        match *self.lock() {
            State::Closed { .. } => None,
            State::Open { until } => Some(until.saturating_duration_since(now)),
            State::HalfOpen { .. } => Some(Duration::ZERO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_lets_one_probe_through_after_cooldown() {
        let breaker = CircuitBreaker::new(3, Duration::from_millis(50), Duration::from_secs(10));
        for _ in 0..2 {
            breaker.record_outage();
            assert_eq!(breaker.admit(), Admission::Allowed);
        }
        breaker.record_outage();
        assert!(matches!(breaker.admit(), Admission::Refused { .. }));
        assert!(breaker.open_for().is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(breaker.admit(), Admission::Allowed, "the probe");
        assert!(
            matches!(breaker.admit(), Admission::Refused { .. }),
            "only one probe at a time"
        );
        breaker.record_success();
        assert_eq!(breaker.admit(), Admission::Allowed);
        assert_eq!(breaker.open_for(), None);
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(30), Duration::from_secs(10));
        breaker.record_outage();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.admit(), Admission::Allowed);
        breaker.record_outage();
        assert!(matches!(breaker.admit(), Admission::Refused { .. }));
    }

    #[test]
    fn a_success_resets_the_count_of_failures() {
        let breaker = CircuitBreaker::new(2, Duration::from_secs(60), Duration::from_secs(10));
        breaker.record_outage();
        breaker.record_success();
        breaker.record_outage();
        assert_eq!(breaker.admit(), Admission::Allowed);
    }
}
