//! Retry policy of the Attio client: how long to wait before trying a request again.
//!
//! In: the configured initial delay, cap per delay and cap on the whole retry time, and the
//! `Retry-After` header of an answer. Out: a [`FullJitter`] backoff that `backon` drives (each
//! delay drawn uniformly from zero to an exponentially growing ceiling, so that many clients
//! retrying at once spread out), and [`parse_retry_after`] for both forms of the header: an HTTP
//! date (what Attio sends on 429) and delta-seconds.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::RngExt;

/// Exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS architecture
/// blog): delay n is uniform in `[0, min(max_delay, initial * 2^n)]`. The exponential ceiling
/// comes from `backon`; this only draws under it. The total time is capped by the caller, which
/// also has to count `Retry-After` waits and the requests themselves.
#[derive(Debug)]
pub(crate) struct FullJitter {
    ceilings: backon::ExponentialBackoff,
}

impl FullJitter {
    pub(crate) fn new(initial: Duration, max_delay: Duration) -> FullJitter {
        FullJitter {
            ceilings: ExponentialBuilder::default()
                .with_min_delay(initial)
                .with_max_delay(max_delay)
                .with_factor(2.0)
                .without_max_times()
                .build(),
        }
    }
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let ceiling = self.ceilings.next()?;
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(rand::rng().random_range(0..=millis)))
    }
}

/// Parses `Retry-After`: delta-seconds (`"2"`) or an HTTP date (`"Tue, 23 May 2023 14:42:01
/// GMT"`), the latter relative to `now`. A date in the past means "now". None when unreadable.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_a_growing_capped_ceiling() {
        let initial = Duration::from_millis(100);
        let cap = Duration::from_millis(800);
        for _ in 0..200 {
            let delays: Vec<Duration> = FullJitter::new(initial, cap).take(6).collect();
            let ceilings = [100, 200, 400, 800, 800, 800];
            for (delay, ceiling) in delays.iter().zip(ceilings) {
                assert!(
                    *delay <= Duration::from_millis(ceiling),
                    "{delay:?} > {ceiling}ms"
                );
            }
        }
        // Full jitter really draws from the whole range, small values included.
        let smallest = (0..500)
            .filter_map(|_| FullJitter::new(initial, cap).nth(3))
            .min()
            .unwrap();
        assert!(smallest < Duration::from_millis(200), "{smallest:?}");
    }

    #[test]
    fn retry_after_accepts_delta_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Tue, 23 May 2023 14:42:00 GMT").unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Tue, 23 May 2023 14:42:01 GMT", now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_retry_after("Tue, 23 May 2023 14:41:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
