//! Backoff and exhaustion: when an event comes back, and when it is given up on.
//!
//! In: what went wrong on an attempt (the sinks that failed and why, the enrichment's error,
//! which dependency is down) and each sink's retry policy (its own `attempts` / `retry_*` keys,
//! else `[worker]`). Out: how long the event waits before its next attempt, and whether it is
//! dead: as soon as one failing sink failed permanently or used up its attempts. Outages of a
//! dependency (the dedupe store, Attio's circuit breaker) make events wait without using up
//! attempts: an outage must not dead-letter events.

use std::time::Duration;

use rand::RngExt;

use crate::config::{RetryPolicy, WorkerSettings};
use crate::enrich::{Enricher, Enrichment, EnrichmentStatus};
use crate::journal::SinkProgress;
use crate::routing::settings::RouteEnrich;
use crate::sinks::{SinkError, Sinks};

/// How soon an event is looked at again when the dedupe store could not be reached, or another
/// replica holds its claim. Such waits do not count as attempts: an outage of Redis must not
/// dead-letter events.
pub(crate) const DEDUPE_UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);

/// Shortest wait of an event while Attio's circuit breaker is open. Such waits do not count as
/// attempts either: an outage of Attio must not dead-letter events.
pub(crate) const ATTIO_UNAVAILABLE_RETRY: Duration = Duration::from_millis(200);

/// Exponential backoff from `retry_initial`, capped at `retry_max`, with jitter over the upper
/// half so that retries of many events spread out but never come back at once.
#[cfg(test)]
pub(crate) fn backoff(settings: &WorkerSettings, attempts: u32) -> Duration {
    backoff_with(
        &RetryPolicy::resolve(&Default::default(), settings),
        attempts,
    )
}

/// [`backoff`] for one sink's policy.
pub(crate) fn backoff_with(policy: &RetryPolicy, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let ceiling = policy
        .initial
        .saturating_mul(1u32 << exponent)
        .min(policy.max);
    let half = ceiling / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

/// `delay` plus up to a quarter more, so that events deferred together come back spread out.
pub(crate) fn jittered(delay: Duration) -> Duration {
    let spread = (delay.as_millis() / 4) as u64;
    delay + Duration::from_millis(rand::rng().random_range(0..=spread))
}

/// The retry rules of each sink: its own keys, unset ones from `[worker]`.
pub(crate) struct Policies<'a> {
    pub(crate) sinks: &'a Sinks,
    pub(crate) worker: &'a WorkerSettings,
}

impl Policies<'_> {
    pub(crate) fn of(&self, sink: &str) -> RetryPolicy {
        match self.sinks.retry(sink) {
            Some(retry) => RetryPolicy::resolve(retry, self.worker),
            None => RetryPolicy::resolve(&Default::default(), self.worker),
        }
    }

    /// Whether the event is dead: some sink that failed on this attempt failed permanently or
    /// used up its attempts (`progress` counts this attempt).
    pub(crate) fn exhausted(
        &self,
        failures: &[(String, SinkError)],
        progress: &SinkProgress,
    ) -> bool {
        failures.iter().any(|(sink, error)| {
            error.permanent
                || progress.sink_attempts.get(sink).copied().unwrap_or(0) >= self.of(sink).attempts
        })
    }

    /// When several sinks failed, the event comes back after the shortest of their backoffs
    /// (each at least what the sink asked for with `Retry-After`).
    pub(crate) fn retry_in(
        &self,
        failures: &[(String, SinkError)],
        progress: &SinkProgress,
    ) -> Duration {
        failures
            .iter()
            .map(|(sink, error)| {
                let attempts = progress.sink_attempts.get(sink).copied().unwrap_or(1);
                let delay = backoff_with(&self.of(sink), attempts);
                error.retry_after.map_or(delay, |asked| delay.max(asked))
            })
            .min()
            .unwrap_or(self.worker.retry_initial)
    }
}

/// While Attio's circuit breaker is open and this event failed for that reason: how long the
/// event should wait (in the journal, without using an attempt).
pub(crate) fn attio_down(enricher: &Enricher, enrichment: &Enrichment) -> Option<Duration> {
    let down = match &enrichment.error {
        Some(crate::attio::AttioError::CircuitOpen { .. }) => true,
        Some(error) => error.is_transient() && enricher.unavailable_for().is_some(),
        None => false,
    };
    down.then(|| {
        enricher
            .unavailable_for()
            .unwrap_or(ATTIO_UNAVAILABLE_RETRY)
            .max(ATTIO_UNAVAILABLE_RETRY)
    })
}

/// The failure every pending sink records when enrichment the routes require failed: permanent
/// (the event is dead) only when asking Attio again cannot help.
pub(crate) fn enrichment_failure(
    enrichment: &Enrichment,
    wanted: RouteEnrich,
) -> Option<SinkError> {
    if enrichment.status != EnrichmentStatus::Failed || wanted != RouteEnrich::Required {
        return None;
    }
    Some(match &enrichment.error {
        // Auth errors are permanent for a request, but an operator can fix the key: keep such
        // events on the retry path rather than dead-letter them at once.
        Some(error) if error.is_permanent() && !error.is_auth() => {
            SinkError::permanent(format!("enrichment: {error}"))
        }
        Some(error) => {
            let failure = SinkError::transient(format!("enrichment: {error}"));
            match error.retry_after() {
                Some(delay) => failure.with_retry_after(delay),
                None => failure,
            }
        }
        None => SinkError::transient("enrichment failed"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let settings = WorkerSettings {
            enabled: true,
            concurrency: 1,
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let first = backoff(&settings, 1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = backoff(&settings, 3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = backoff(&settings, 30);
            assert!(late >= Duration::from_secs(5) && late <= Duration::from_secs(10));
        }
    }
}
