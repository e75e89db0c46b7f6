//! The Attio client's rate limits: how many requests of one kind (reads or writes) may reach
//! Attio in any one second.
//!
//! In: a request about to be sent, and Attio's 429 answers. Out: a [`Permit`] to send it, held
//! until its answer came back. [`RateLimits`] is what the client holds: a pause Attio asked for
//! with a 429's `Retry-After`, then the limit of the request's kind. Each process has its own
//! limiter ([`Limiter`]). With Redis configured the limit is also
//! shared by every replica ([`SharedRateLimit`]): a sliding window of slots in one Redis sorted
//! set, taken and freed by Lua scripts, so that N replicas together stay within Attio's limit
//! instead of sending N times it. While Redis does not answer, each process falls back to its
//! own limiter alone (logged once when it starts and once when it ends).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use redis::aio::ConnectionManager;

use crate::config::AttioSettings;

/// Added to the second a rate-limiter slot stays taken after its request's answer, for timer and
/// clock granularity.
const WINDOW_MARGIN: Duration = Duration::from_millis(10);

/// How long a slot stays taken after its request's answer.
const WINDOW: Duration = Duration::from_millis(1000 + WINDOW_MARGIN.as_millis() as u64);

/// Longest wait for one Redis call of the shared limiter before this process falls back to its
/// own limiter.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// While the shared limiter is unavailable, how often Redis is tried again.
const RETRY_SHARED_AFTER: Duration = Duration::from_secs(5);

/// Longest pause between two looks at a full shared window: slots free when other replicas'
/// answers come back, which the window's own schedule does not know in advance.
const POLL: Duration = Duration::from_millis(25);

/// KEYS[1]: the sorted set of taken slots, each scored by when it frees (ms on Redis's clock).
/// ARGV[1]: the rate; ARGV[2]: how long a new slot is held at most before its answer frees it
/// sooner (ms); ARGV[3]: the new slot's id. Returns 0 when the slot was taken, else how many ms
/// until the earliest slot frees. Redis's clock (`TIME`) is used so that replicas on machines
/// whose clocks differ still share one window.
const ACQUIRE_SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 0
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) - now)
"#;

/// KEYS[1]: the sorted set; ARGV[1]: how long a slot stays taken after its answer (ms);
/// ARGV[2]: the slot's id. The slot, if still there, frees a window after now.
const RELEASE_SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2]) == 1 then
    if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
        redis.call('PEXPIRE', KEYS[1], ARGV[1])
    end
end
return 0
"#;

/// Every wait a request makes before it goes out, apart from the circuit breaker: a pause Attio
/// asked for, then the limit of its kind (reads and writes are counted apart).
pub(crate) struct RateLimits {
    reads: RateLimit,
    writes: RateLimit,
    /// Set by a 429: no request goes out before this instant.
    paused_until: Mutex<Option<tokio::time::Instant>>,
}

impl RateLimits {
    pub(crate) fn new(settings: &AttioSettings, shared: Option<&SharedRateLimit>) -> RateLimits {
        RateLimits {
            reads: RateLimit::new("reads", settings.read_rate, settings, shared),
            writes: RateLimit::new("writes", settings.write_rate, settings, shared),
            paused_until: Mutex::new(None),
        }
    }

    /// Attio answered 429: no request goes out until `retry_after` (a second when Attio did not
    /// say) has passed.
    pub(crate) fn refused(&self, retry_after: Option<Duration>) {
        // Attio counts per workspace: every other request of ours would be refused too.
        let wait = retry_after.unwrap_or(Duration::from_secs(1));
        self.pause(wait);
    }

    fn pause(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// Waits out a pause Attio asked for, then for a slot of the shared rate limiter.
    pub(crate) async fn wait_for_turn(&self, read: bool) -> Permit<'_> {
        let started = tokio::time::Instant::now();
        let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = paused {
            if until > started {
                tokio::time::sleep_until(until).await;
            }
        }
        let limiter = if read { &self.reads } else { &self.writes };
        let permit = limiter.acquire().await;
        let waited = started.elapsed();
        if !waited.is_zero() {
            // A float total (the metrics crate's counters are integers).
            metrics::gauge!(crate::metrics::ATTIO_RATE_LIMIT_WAIT).increment(waited.as_secs_f64());
        }
        permit
    }
}

/// The limits of one kind of request: this process's, and with Redis the replicas' shared one.
struct RateLimit {
    local: Limiter,
    shared: Option<Arc<SharedWindow>>,
}

/// Where replicas share their limits: a Redis and the key prefix every replica uses.
#[derive(Clone)]
pub struct SharedRateLimit {
    pub connection: ConnectionManager,
    pub key_prefix: String,
}

/// A permission to send one request; drop it when the answer came back (or the attempt failed).
pub(crate) struct Permit<'a> {
    _slot: Slot<'a>,
    _shared: Option<SharedSlot>,
}

impl RateLimit {
    /// `kind` names the limit in Redis keys and logs (`reads`, `writes`).
    pub(crate) fn new(
        kind: &'static str,
        rate: u32,
        settings: &AttioSettings,
        shared: Option<&SharedRateLimit>,
    ) -> RateLimit {
        // A slot whose answer never comes (the process died mid-request) frees after the
        // longest a request can take, plus the window.
        let hold = settings.connect_timeout + settings.request_timeout + WINDOW;
        RateLimit {
            local: Limiter::per_second(rate),
            shared: shared.map(|shared| {
                Arc::new(SharedWindow {
                    connection: shared.connection.clone(),
                    key: format!("{}:attio-rate:{kind}", shared.key_prefix),
                    kind,
                    rate: rate.max(1),
                    hold,
                    acquire: redis::Script::new(ACQUIRE_SCRIPT),
                    release: redis::Script::new(RELEASE_SCRIPT),
                    unavailable_since: Mutex::new(None),
                })
            }),
        }
    }

    /// Waits until the request may go: its turn in this process, its spacing, a slot in this
    /// process's window and, with Redis, a slot in the replicas' shared window.
    pub(crate) async fn acquire(&self) -> Permit<'_> {
        // One waiter per process at a time, also while the shared window is full: the others
        // queue here instead of all polling Redis.
        let _turn = self.local.queue.lock().await;
        self.local.spacing.until_ready().await;
        let slot = self.local.wait_for_slot().await;
        let shared = match &self.shared {
            Some(shared) => SharedWindow::acquire(shared).await,
            None => None,
        };
        Permit {
            _slot: slot,
            _shared: shared,
        }
    }
}

/// The replicas' shared window of one kind of request, in Redis.
struct SharedWindow {
    connection: ConnectionManager,
    key: String,
    kind: &'static str,
    rate: u32,
    hold: Duration,
    acquire: redis::Script,
    release: redis::Script,
    /// Set while Redis does not answer: this process uses its own limiter alone.
    unavailable_since: Mutex<Option<tokio::time::Instant>>,
}

/// A slot in the shared window; dropping it starts the slot's last second.
struct SharedSlot {
    window: Arc<SharedWindow>,
    id: String,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        let window = self.window.clone();
        let id = std::mem::take(&mut self.id);
        // Dropped inside the runtime (a request's answer came back); without one, the slot
        // frees by itself after `hold`.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut connection = window.connection.clone();
                let mut invocation = window.release.key(&window.key);
                invocation.arg(WINDOW.as_millis() as u64).arg(&id);
                let released = invocation.invoke_async::<i64>(&mut connection);
                // A failed release only keeps the slot until `hold` runs out.
                let _ = tokio::time::timeout(REDIS_TIMEOUT, released).await;
            });
        }
    }
}

impl SharedWindow {
    /// A slot in the shared window, or `None` while Redis does not answer (the caller then
    /// goes by this process's limiter alone).
    async fn acquire(window: &Arc<SharedWindow>) -> Option<SharedSlot> {
        if let Some(since) = *window.unavailable() {
            if since.elapsed() < RETRY_SHARED_AFTER {
                return None;
            }
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        loop {
            let mut connection = window.connection.clone();
            let mut invocation = window.acquire.key(&window.key);
            invocation
                .arg(window.rate)
                .arg(window.hold.as_millis() as u64)
                .arg(&id);
            let call = invocation.invoke_async::<i64>(&mut connection);
            let wait = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok(wait)) => wait,
                Ok(Err(error)) => {
                    let _ = window.fell_back(&error.to_string());
                    return None;
                }
                Err(_) => {
                    let _ = window.fell_back(&format!(
                        "no answer within {}",
                        humantime::format_duration(REDIS_TIMEOUT)
                    ));
                    return None;
                }
            };
            let _ = window.recovered();
            if wait <= 0 {
                return Some(SharedSlot {
                    window: window.clone(),
                    id,
                });
            }
            let wait = Duration::from_millis(wait.unsigned_abs()).min(POLL);
            tokio::time::sleep(wait).await;
        }
    }

    fn unavailable(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        // A timestamp: a poisoned lock holds no broken state.
        self.unavailable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records that Redis failed; true when this starts an outage (which is then logged).
    fn fell_back(&self, problem: &str) -> bool {
        let mut since = self.unavailable();
        let starts = since.is_none();
        if starts {
            tracing::warn!(
                limit = self.kind,
                %problem,
                "the Attio rate limit shared through Redis is unavailable: this replica goes by \
                 its own limit until Redis answers (replicas together may exceed Attio's limit)"
            );
        }
        *since = Some(tokio::time::Instant::now());
        starts
    }

    /// Records that Redis answered; true when this ends an outage (which is then logged).
    fn recovered(&self) -> bool {
        let mut since = self.unavailable();
        let Some(started) = since.take() else {
            return false;
        };
        tracing::info!(
            limit = self.kind,
            unavailable_for = ?started.elapsed(),
            "the Attio rate limit is shared through Redis again"
        );
        true
    }
}

/// This process's limiter of one kind of request (reads or writes).
///
/// Three parts, each for one reason:
/// - a first-come-first-served queue (a fair mutex): one waiter at a time watches the limiter,
///   instead of a herd of hundreds waking for every free slot, and requests leave in the order
///   they asked;
/// - `governor` (GCRA) spaces requests 1/rate apart, with a burst of 2 so that a slot taken a
///   little late (timer granularity) is caught up rather than lost;
/// - a window of `rate` slots: a request holds a slot from before it is sent until a second
///   (plus a small margin) after its answer came back. That is the hard guarantee that no
///   one-second window at Attio ever holds more than `rate` requests: a request arrives at the
///   server some time between its sending and its answer (a new connection's handshakes, queues
///   on the way), so counting from the send time alone would let a late arrival share a window
///   with requests sent a second after it.
struct Limiter {
    queue: tokio::sync::Mutex<()>,
    window: Mutex<Window>,
    /// Signalled when a request in flight is answered (its slot starts its last second).
    answered: tokio::sync::Notify,
    spacing: DefaultDirectRateLimiter,
    rate: usize,
}

/// The slots of one [`Limiter`]: requests in flight, and when recent ones were answered.
struct Window {
    in_flight: usize,
    answered: VecDeque<tokio::time::Instant>,
}

/// A request's place in its limiter's window; dropping it records when the answer came back.
struct Slot<'a> {
    limiter: &'a Limiter,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut window = self.limiter.window();
        window.in_flight = window.in_flight.saturating_sub(1);
        window.answered.push_back(tokio::time::Instant::now());
        drop(window);
        self.limiter.answered.notify_one();
    }
}

impl Limiter {
    fn per_second(rate: u32) -> Limiter {
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        Limiter {
            queue: tokio::sync::Mutex::new(()),
            window: Mutex::new(Window {
                in_flight: 0,
                answered: VecDeque::with_capacity(rate.get() as usize),
            }),
            answered: tokio::sync::Notify::new(),
            spacing: RateLimiter::direct(
                Quota::per_second(rate).allow_burst(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)),
            ),
            rate: rate.get() as usize,
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        // Each update is a counter and a queue change: a poisoned lock holds no broken state.
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot (the caller holds the queue's turn); hold it until the request's
    /// answer came back.
    async fn wait_for_slot(&self) -> Slot<'_> {
        loop {
            // Registered before looking, so an answer arriving in between is not missed.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let free_at = {
                let mut window = self.window();
                let now = tokio::time::Instant::now();
                while window
                    .answered
                    .front()
                    .is_some_and(|t| *t + Duration::from_secs(1) + WINDOW_MARGIN <= now)
                {
                    window.answered.pop_front();
                }
                if window.in_flight + window.answered.len() < self.rate {
                    window.in_flight += 1;
                    return Slot { limiter: self };
                }
                window
                    .answered
                    .front()
                    .map(|t| *t + Duration::from_secs(1) + WINDOW_MARGIN)
            };
            match free_at {
                Some(at) => {
                    tokio::select! {
                        _ = &mut answered => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                // Every slot is in flight: wait for an answer.
                None => answered.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_window() -> SharedWindow {
        let settings = crate::config::Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]")
            .unwrap()
            .attio;
        let url = secrecy::SecretString::from("redis://127.0.0.1:1".to_string());
        let shared = SharedRateLimit {
            connection: crate::dedupe::redis::connect(&url).unwrap(),
            key_prefix: "unit".to_string(),
        };
        let limit = RateLimit::new("reads", 10, &settings, Some(&shared));
        let window = limit.shared.unwrap();
        Arc::try_unwrap(window).unwrap_or_else(|_| panic!("one owner"))
    }

    #[tokio::test]
    async fn an_outage_of_the_shared_limit_is_logged_once_when_it_starts_and_once_when_it_ends() {
        let window = shared_window();
        assert!(window.fell_back("connection refused"));
        assert!(!window.fell_back("connection refused"));
        assert!(!window.fell_back("timed out"));
        assert!(window.recovered());
        assert!(!window.recovered());
        assert!(window.fell_back("connection refused"), "a new outage");
    }
}
