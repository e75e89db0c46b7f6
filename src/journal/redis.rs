//! The Redis journal (`queue.backend = "redis"`): the durable queue shared by every replica.
//!
//! In: verified deliveries from ingress, outcomes from the worker, exactly as for the embedded
//! journal. Out: events for this replica's worker. Layout (every key starts with the hash tag
//! `{prefix}`, so all of them live in one Redis Cluster slot):
//!
//! ```text
//! {prefix}:events              stream; one entry {id} per queued event; consumer group "workers"
//! {prefix}:event:{id}          hash; the event and its state (pending/dead, attempts, sinks done)
//! {prefix}:retry               sorted set; event id by time of the next attempt
//! {prefix}:dead                sorted set; dead-lettered event ids by time of death
//! {prefix}:delivery:{key}      delivery marker (TTL dedupe.done_ttl): a redelivery is refused
//! {prefix}:backlog             counter of pending events
//! {prefix}:dead-delivery:{n}   hash; a signed body that was not a delivery
//! {prefix}:dead-deliveries     sorted set of those by sequence; {prefix}:dead-delivery-seq
//! ```
//!
//! An event's life: ingress stores the hash, adds a stream entry and sets the delivery marker in
//! one script, and answers 200 only after Redis answered. A worker reads the entry through the
//! consumer group (XREADGROUP), so it stays pending on that replica until the outcome is
//! recorded: done (XACK + XDEL, hash deleted), retry (XACK + XDEL, id into the retry schedule)
//! or dead (XACK + XDEL, id into the dead letters). Entries a crashed replica left pending longer
//! than the lease are taken over by another (XAUTOCLAIM). A retry being worked on is hidden for
//! one lease, so a crash there is recovered the same way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::ConnectionManager;

use super::redis_scripts as scripts;
use super::{
    AppendOutcome, DeadDelivery, DeadLetter, JournalError, JournaledEvent, MalformedDelivery,
    NewDelivery,
};

/// The one consumer group every replica reads through.
const GROUP: &str = "workers";
/// Replicas gone this long with nothing pending are dropped from the consumer group.
const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);
/// Dead letters replayed per script call when replaying many (keeps each call short).
const REPLAY_BATCH: usize = 500;
/// Entries handed back per script call on shutdown.
const HAND_BACK_BATCH: usize = 1000;

impl From<redis::RedisError> for JournalError {
    fn from(error: redis::RedisError) -> Self {
        // Transient for the callers: ingress answers 503 and the worker looks again later.
        JournalError::Storage(format!("redis: {error}"))
    }
}

/// The key names, all under the `{prefix}` hash tag.
#[derive(Debug, Clone)]
struct Keys {
    tag: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            tag: format!("{{{prefix}}}"),
        }
    }
    fn stream(&self) -> String {
        format!("{}:events", self.tag)
    }
    fn event_prefix(&self) -> String {
        format!("{}:event:", self.tag)
    }
    fn event(&self, id: &str) -> String {
        format!("{}:event:{id}", self.tag)
    }
    fn retry(&self) -> String {
        format!("{}:retry", self.tag)
    }
    fn dead(&self) -> String {
        format!("{}:dead", self.tag)
    }
    fn delivery(&self, key: &str) -> String {
        format!("{}:delivery:{key}", self.tag)
    }
    fn backlog(&self) -> String {
        format!("{}:backlog", self.tag)
    }
    fn dead_delivery_prefix(&self) -> String {
        format!("{}:dead-delivery:", self.tag)
    }
    fn dead_deliveries(&self) -> String {
        format!("{}:dead-deliveries", self.tag)
    }
    fn dead_delivery_seq(&self) -> String {
        format!("{}:dead-delivery-seq", self.tag)
    }
    fn probe(&self) -> String {
        format!("{}:probe", self.tag)
    }
}

struct Scripts {
    append: redis::Script,
    due: redis::Script,
    complete: redis::Script,
    reschedule: redis::Script,
    dead_letter: redis::Script,
    dead_letters: redis::Script,
    replay: redis::Script,
    append_malformed: redis::Script,
    dead_deliveries: redis::Script,
    forget_consumers: redis::Script,
    hand_back: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            append: redis::Script::new(scripts::APPEND),
            due: redis::Script::new(scripts::DUE),
            complete: redis::Script::new(&scripts::complete()),
            reschedule: redis::Script::new(&scripts::reschedule()),
            dead_letter: redis::Script::new(&scripts::dead_letter()),
            dead_letters: redis::Script::new(scripts::DEAD_LETTERS),
            replay: redis::Script::new(scripts::REPLAY),
            append_malformed: redis::Script::new(scripts::APPEND_MALFORMED),
            dead_deliveries: redis::Script::new(scripts::DEAD_DELIVERIES),
            forget_consumers: redis::Script::new(scripts::FORGET_CONSUMERS),
            hand_back: redis::Script::new(scripts::HAND_BACK),
        }
    }
}

/// Where the reclaim of stale entries stands: XAUTOCLAIM walks the pending entries with a
/// cursor; a full pass runs at most every `interval`.
struct Reclaim {
    cursor: String,
    next_pass: Instant,
    interval: Duration,
}

struct Inner {
    connection: ConnectionManager,
    keys: Keys,
    consumer: String,
    lease: Duration,
    delivery_ttl: Duration,
    backlog: AtomicU64,
    group_ready: AtomicBool,
    reclaim: Mutex<Reclaim>,
    scripts: Scripts,
}

/// Handle to the Redis journal. Cheap to clone.
#[derive(Clone)]
pub struct RedisJournal {
    inner: Arc<Inner>,
}

/// A consumer name unique to this process: the host (the pod name on Kubernetes) plus a random
/// suffix, so a restarted replica never mistakes another's entries for its own.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_string());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..12])
}

impl RedisJournal {
    /// A journal on `connection` under `prefix`. Nothing is sent to Redis yet: the daemon starts
    /// while Redis is down (and reports not ready) and the consumer group is created on first use.
    ///
    /// `lease`: how long an entry may stay unacknowledged on a replica before another takes it
    /// over, and how long a retry in progress stays hidden. `delivery_ttl`: how long a delivery
    /// key is remembered to refuse redeliveries.
    pub fn new(
        connection: ConnectionManager,
        prefix: &str,
        lease: Duration,
        delivery_ttl: Duration,
    ) -> RedisJournal {
        let interval = (lease / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        RedisJournal {
            inner: Arc::new(Inner {
                connection,
                keys: Keys::new(prefix),
                consumer: consumer_name(),
                lease,
                delivery_ttl,
                backlog: AtomicU64::new(0),
                group_ready: AtomicBool::new(false),
                reclaim: Mutex::new(Reclaim {
                    cursor: "0-0".to_string(),
                    next_pass: Instant::now(),
                    interval,
                }),
                scripts: Scripts::new(),
            }),
        }
    }

    /// This replica's name in the consumer group.
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    fn connection(&self) -> ConnectionManager {
        self.inner.connection.clone()
    }

    fn set_backlog(&self, value: i64) {
        if value >= 0 {
            self.inner.backlog.store(value as u64, Ordering::Relaxed);
        }
    }

    pub async fn append(&self, delivery: NewDelivery) -> Result<AppendOutcome, JournalError> {
        let keys = &self.inner.keys;
        let received_at = rfc3339(delivery.received_at);
        let mut shared: Vec<&str> = vec![
            "delivery_key",
            &delivery.key,
            "received_at",
            &received_at,
            "key_derived",
            if delivery.key_derived { "1" } else { "0" },
        ];
        if let Some(webhook_id) = &delivery.webhook_id {
            shared.extend(["webhook_id", webhook_id]);
        }
        if let Some(request_id) = &delivery.request_id {
            shared.extend(["request_id", request_id]);
        }
        let mut invocation = self.inner.scripts.append.prepare_invoke();
        invocation
            .key(keys.delivery(&delivery.key))
            .key(keys.stream())
            .key(keys.backlog())
            .arg(millis(self.inner.delivery_ttl))
            .arg(shared.len())
            .arg(&shared);
        let mut stored = Vec::with_capacity(delivery.events.len());
        for (index, event) in delivery.events.into_iter().enumerate() {
            let id = crate::event::event_id(&delivery.key, index);
            invocation
                .key(keys.event(&id))
                .arg(&id)
                .arg(index)
                .arg(&event.event_type)
                .arg(&event.raw);
            stored.push(JournaledEvent {
                id,
                delivery_key: delivery.key.clone(),
                index: index as u32,
                webhook_id: delivery.webhook_id.clone(),
                event_type: event.event_type,
                received_at: received_at.clone(),
                request_id: delivery.request_id.clone(),
                raw: event.raw,
                attempts: 0,
                sinks_done: Vec::new(),
            });
        }
        let backlog: i64 = invocation.invoke_async(&mut self.connection()).await?;
        if backlog < 0 {
            return Ok(AppendOutcome::Duplicate);
        }
        self.set_backlog(backlog);
        Ok(AppendOutcome::Stored(stored))
    }

    pub async fn append_malformed(&self, delivery: MalformedDelivery) -> Result<(), JournalError> {
        let keys = &self.inner.keys;
        let received_at = rfc3339(delivery.received_at);
        let mut invocation = self.inner.scripts.append_malformed.prepare_invoke();
        invocation
            .key(keys.dead_delivery_seq())
            .key(keys.dead_deliveries())
            .arg(keys.dead_delivery_prefix())
            .arg("received_at")
            .arg(&received_at)
            .arg("reason")
            .arg(&delivery.reason)
            .arg("body")
            .arg(&delivery.body[..]);
        if let Some(key) = &delivery.key {
            invocation.arg("key").arg(key);
        }
        if let Some(request_id) = &delivery.request_id {
            invocation.arg("request_id").arg(request_id);
        }
        let _: i64 = invocation.invoke_async(&mut self.connection()).await?;
        Ok(())
    }

    /// Creates the consumer group (and the stream) unless this process already did. Reading from
    /// "0" on creation: entries added before the group existed are consumed too.
    async fn ensure_group(&self) -> Result<(), JournalError> {
        if self.inner.group_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let result: redis::RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.inner.keys.stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.connection())
            .await;
        match result {
            Ok(_) => {}
            Err(error) if error.code() == Some("BUSYGROUP") => {}
            Err(error) => return Err(error.into()),
        }
        self.inner.group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Events for this replica: stale entries of crashed replicas, retries now due, new entries.
    /// Each returned event is held by this replica until its outcome is recorded (or a lease).
    pub async fn due(&self, limit: usize) -> Result<Vec<JournaledEvent>, JournalError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.ensure_group().await?;
        match self.due_once(limit).await {
            // Redis lost its data (no persistence) or someone deleted the stream: make the group
            // again and carry on with whatever is there.
            Err(error) if error.to_string().contains("NOGROUP") => {
                self.inner.group_ready.store(false, Ordering::Relaxed);
                self.ensure_group().await?;
                self.due_once(limit).await
            }
            other => other,
        }
    }

    async fn due_once(&self, limit: usize) -> Result<Vec<JournaledEvent>, JournalError> {
        let keys = &self.inner.keys;
        let cursor = {
            let reclaim = lock(&self.inner.reclaim);
            if reclaim.cursor != "0-0" || Instant::now() >= reclaim.next_pass {
                reclaim.cursor.clone()
            } else {
                String::new()
            }
        };
        let now = Utc::now().timestamp_millis();
        let lease = millis(self.inner.lease);
        let (next_cursor, backlog, events): (String, i64, Vec<Vec<String>>) = self
            .inner
            .scripts
            .due
            .key(keys.stream())
            .key(keys.retry())
            .key(keys.backlog())
            .arg(GROUP)
            .arg(&self.inner.consumer)
            .arg(now)
            .arg(lease)
            .arg(limit)
            .arg(&cursor)
            .arg(keys.event_prefix())
            .arg(now.saturating_add(lease as i64))
            .invoke_async(&mut self.connection())
            .await?;
        if !cursor.is_empty() {
            let mut reclaim = lock(&self.inner.reclaim);
            if next_cursor == "0-0" {
                reclaim.next_pass = Instant::now() + reclaim.interval;
            }
            reclaim.cursor = next_cursor;
        }
        self.set_backlog(backlog);
        Ok(events.into_iter().filter_map(event_from_fields).collect())
    }

    /// An invocation of one of the outcome scripts, with their shared keys and arguments.
    fn outcome<'s>(&self, script: &'s redis::Script, id: &str) -> redis::ScriptInvocation<'s> {
        let keys = &self.inner.keys;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.event(id))
            .key(keys.stream())
            .key(keys.retry())
            .key(keys.backlog())
            .arg(GROUP)
            .arg(id);
        invocation
    }

    pub async fn complete(&self, id: &str) -> Result<(), JournalError> {
        let invocation = self.outcome(&self.inner.scripts.complete, id);
        let backlog: i64 = invocation.invoke_async(&mut self.connection()).await?;
        self.set_backlog(backlog);
        Ok(())
    }

    pub async fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: DateTime<Utc>,
        error: Option<&str>,
        sinks_done: &[String],
    ) -> Result<(), JournalError> {
        let mut invocation = self.outcome(&self.inner.scripts.reschedule, id);
        invocation
            .arg(attempts)
            .arg(next_attempt_at.timestamp_millis())
            .arg(json_list(sinks_done))
            .arg(if error.is_some() { "1" } else { "0" })
            .arg(error.unwrap_or(""));
        let _: i64 = invocation.invoke_async(&mut self.connection()).await?;
        Ok(())
    }

    pub async fn dead_letter(
        &self,
        id: &str,
        attempts: u32,
        error: &str,
        failed_sinks: &[String],
        sinks_done: &[String],
    ) -> Result<(), JournalError> {
        let now = Utc::now();
        let mut invocation = self.outcome(&self.inner.scripts.dead_letter, id);
        invocation
            .key(self.inner.keys.dead())
            .arg(attempts)
            .arg(error)
            .arg(json_list(failed_sinks))
            .arg(json_list(sinks_done))
            .arg(rfc3339(now))
            .arg(now.timestamp_millis());
        let backlog: i64 = invocation.invoke_async(&mut self.connection()).await?;
        self.set_backlog(backlog);
        Ok(())
    }

    /// The oldest `limit` dead letters.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, JournalError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = self
            .inner
            .scripts
            .dead_letters
            .key(keys.dead())
            .arg(limit)
            .arg(keys.event_prefix())
            .invoke_async(&mut self.connection())
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(
                |(id, event_type, delivery_key, received_at, attempts, error, failed, dead_at)| {
                    Some(DeadLetter {
                        id: id?,
                        event_type: event_type.unwrap_or_default(),
                        delivery_key: delivery_key.unwrap_or_default(),
                        received_at: received_at.unwrap_or_default(),
                        attempts: attempts.and_then(|a| a.parse().ok()).unwrap_or(0),
                        last_error: error,
                        failed_sinks: parse_list(failed.as_deref().unwrap_or("[]")),
                        dead_at,
                    })
                },
            )
            .collect())
    }

    /// Puts dead letters back in the queue, due at once with their attempts reset: the ones named
    /// in `ids` (all when `None`), and with `only_sink` only those that failed on that sink.
    /// Sinks that already received an event are not repeated. Returns how many were put back.
    pub async fn replay(
        &self,
        ids: Option<Vec<String>>,
        only_sink: Option<String>,
    ) -> Result<u64, JournalError> {
        let keys = &self.inner.keys;
        let ids = match ids {
            Some(ids) => ids,
            None => {
                let all: Vec<String> = redis::cmd("ZRANGE")
                    .arg(keys.dead())
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.connection())
                    .await?;
                all
            }
        };
        let mut replayed = 0u64;
        for batch in ids.chunks(REPLAY_BATCH) {
            let mut invocation = self.inner.scripts.replay.prepare_invoke();
            invocation
                .key(keys.dead())
                .key(keys.retry())
                .key(keys.backlog())
                .arg(keys.event_prefix())
                .arg(Utc::now().timestamp_millis())
                .arg(only_sink.as_deref().unwrap_or(""))
                .arg(batch);
            let count: u64 = invocation.invoke_async(&mut self.connection()).await?;
            replayed += count;
        }
        self.inner.backlog.fetch_add(replayed, Ordering::Relaxed);
        Ok(replayed)
    }

    pub async fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeadDelivery>, JournalError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        let rows: Vec<(i64, Option<String>, String, String, i64)> = self
            .inner
            .scripts
            .dead_deliveries
            .key(keys.dead_deliveries())
            .arg(limit)
            .arg(keys.dead_delivery_prefix())
            .invoke_async(&mut self.connection())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, key, received_at, reason, body_len)| DeadDelivery {
                seq,
                key,
                received_at,
                reason,
                body_len: body_len.max(0) as usize,
            })
            .collect())
    }

    /// Pending events across every replica, as of this replica's last exchange with Redis (each
    /// append, outcome and worker poll refreshes it): cheap enough for ingress to read per request.
    pub fn backlog(&self) -> u64 {
        self.inner.backlog.load(Ordering::Relaxed)
    }

    /// A write, so readiness also fails when Redis refuses writes (read-only replica, failed
    /// persistence, out of memory), not only when it is unreachable.
    pub async fn probe(&self) -> Result<(), JournalError> {
        let keys = &self.inner.keys;
        let (backlog,): (Option<i64>,) = redis::pipe()
            .cmd("SET")
            .arg(keys.probe())
            .arg(rfc3339(Utc::now()))
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("GET")
            .arg(keys.backlog())
            .query_async(&mut self.connection())
            .await?;
        self.set_backlog(backlog.unwrap_or(0));
        Ok(())
    }

    /// Delivery markers expire by themselves; this only forgets replicas long gone.
    pub async fn purge(&self, _keep: Duration) -> Result<u64, JournalError> {
        let removed: u64 = self
            .inner
            .scripts
            .forget_consumers
            .key(self.inner.keys.stream())
            .arg(GROUP)
            .arg(&self.inner.consumer)
            .arg(millis(FORGET_CONSUMERS_AFTER))
            .invoke_async(&mut self.connection())
            .await?;
        Ok(removed)
    }

    /// On shutdown, after the worker stopped: entries this replica read but did not finish go
    /// back to the end of the stream, so the other replicas take them now rather than after the
    /// lease. (An event whose processing outlived the shutdown grace may then run twice at the
    /// same time; the dedupe claim lets only one of them deliver.)
    pub async fn close(&self) {
        loop {
            let given: Result<u64, redis::RedisError> = self
                .inner
                .scripts
                .hand_back
                .key(self.inner.keys.stream())
                .arg(GROUP)
                .arg(&self.inner.consumer)
                .arg(self.inner.keys.event_prefix())
                .arg(HAND_BACK_BATCH)
                .invoke_async(&mut self.connection())
                .await;
            match given {
                Ok(0) => return,
                Ok(count) => tracing::info!(count, "handed unfinished events back to the queue"),
                Err(error) => {
                    tracing::warn!(%error, "could not hand events back; other replicas take them after the lease");
                    return;
                }
            }
        }
    }
}

/// Builds an event from its hash (a field/value list). A hash that lost required fields is
/// skipped rather than failing the whole batch.
fn event_from_fields(fields: Vec<String>) -> Option<JournaledEvent> {
    let mut id = None;
    let mut delivery_key = None;
    let mut index = 0u32;
    let mut webhook_id = None;
    let mut event_type = None;
    let mut received_at = None;
    let mut request_id = None;
    let mut raw = None;
    let mut attempts = 0u32;
    let mut sinks_done = Vec::new();
    let mut pairs = fields.into_iter();
    while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
        match name.as_str() {
            "id" => id = Some(value),
            "delivery_key" => delivery_key = Some(value),
            "index" => index = value.parse().unwrap_or(0),
            "webhook_id" => webhook_id = Some(value),
            "event_type" => event_type = Some(value),
            "received_at" => received_at = Some(value),
            "request_id" => request_id = Some(value),
            "raw" => raw = Some(value),
            "attempts" => attempts = value.parse().unwrap_or(0),
            "sinks_done" => sinks_done = parse_list(&value),
            _ => {}
        }
    }
    let event = JournaledEvent {
        id: id?,
        delivery_key: delivery_key?,
        index,
        webhook_id,
        event_type: event_type?,
        received_at: received_at.unwrap_or_default(),
        request_id,
        raw: raw?,
        attempts,
        sinks_done,
    };
    Some(event)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held only to copy or replace two small values: a poisoned lock holds no broken state.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

fn parse_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    //! These talk to the real Redis on 127.0.0.1:6379, each under its own key prefix.

    use super::*;
    use crate::event::ParsedEvent;
    use secrecy::SecretString;

    const LEASE: Duration = Duration::from_millis(300);

    fn journal(prefix: &str) -> RedisJournal {
        let url = SecretString::from("redis://127.0.0.1:6379");
        let connection = crate::dedupe::redis::connect(&url).unwrap();
        RedisJournal::new(connection, prefix, LEASE, Duration::from_secs(3600))
    }

    fn prefix() -> String {
        format!("unit-{}", uuid::Uuid::new_v4().simple())
    }

    fn delivery(key: &str, events: usize) -> NewDelivery {
        NewDelivery {
            key: key.to_string(),
            key_derived: false,
            webhook_id: Some("w".to_string()),
            received_at: Utc::now(),
            request_id: Some("r".to_string()),
            events: (0..events)
                .map(|i| ParsedEvent {
                    event_type: "record.updated".to_string(),
                    raw: format!("{{\"event_type\":\"record.updated\",\"n\":{i}}}"),
                })
                .collect(),
        }
    }

    fn ids(events: &[JournaledEvent]) -> Vec<String> {
        let mut ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        ids
    }

    async fn stored(journal: &RedisJournal, key: &str, events: usize) -> Vec<JournaledEvent> {
        match journal.append(delivery(key, events)).await.unwrap() {
            AppendOutcome::Stored(events) => events,
            AppendOutcome::Duplicate => panic!("expected {key} to be stored"),
        }
    }

    #[tokio::test]
    async fn appended_events_are_handed_out_once_exactly_as_stored() {
        let journal = journal(&prefix());
        let events = stored(&journal, "k1", 2).await;
        assert_eq!(events[1].id, "k1:1");
        assert_eq!(journal.backlog(), 2);
        let due = journal.due(10).await.unwrap();
        assert_eq!(due, events);
        assert!(
            journal.due(10).await.unwrap().is_empty(),
            "read entries stay with this consumer until their outcome or the lease"
        );
    }

    #[tokio::test]
    async fn a_delivery_key_is_stored_once_across_replicas() {
        let prefix = prefix();
        let first = journal(&prefix);
        let second = journal(&prefix);
        stored(&first, "k", 1).await;
        assert!(matches!(
            second.append(delivery("k", 1)).await.unwrap(),
            AppendOutcome::Duplicate
        ));
        assert_eq!(ids(&second.due(10).await.unwrap()), vec!["k:0"]);
        assert!(first.due(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn replicas_share_the_queue_without_handing_out_an_event_twice() {
        let prefix = prefix();
        let first = journal(&prefix);
        let second = journal(&prefix);
        for n in 0..20 {
            stored(&first, &format!("k{n}"), 1).await;
        }
        let mut all = first.due(7).await.unwrap();
        assert_eq!(all.len(), 7);
        all.extend(second.due(100).await.unwrap());
        all.extend(first.due(100).await.unwrap());
        let mut ids = ids(&all);
        assert_eq!(ids.len(), 20);
        ids.dedup();
        assert_eq!(ids.len(), 20);
        assert_eq!(second.backlog(), 20, "backlog is shared");
    }

    #[tokio::test]
    async fn complete_removes_the_event_and_lowers_the_backlog() {
        let prefix = prefix();
        let journal = journal(&prefix);
        stored(&journal, "k", 2).await;
        journal.due(10).await.unwrap();
        journal.complete("k:0").await.unwrap();
        assert_eq!(journal.backlog(), 1);
        journal.complete("k:0").await.unwrap();
        assert_eq!(journal.backlog(), 1, "completing twice counts once");
        let mut redis = journal.connection();
        let length: u64 = redis::cmd("XLEN")
            .arg(format!("{{{prefix}}}:events"))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(length, 1, "the finished entry is deleted from the stream");
        tokio::time::sleep(LEASE * 2).await;
        assert_eq!(
            ids(&journal.due(10).await.unwrap()),
            vec!["k:1"],
            "only the unfinished one comes back after the lease"
        );
    }

    #[tokio::test]
    async fn reschedule_hides_the_event_until_its_time_and_keeps_its_progress() {
        let journal = journal(&prefix());
        stored(&journal, "k", 1).await;
        journal.due(10).await.unwrap();
        let soon = Utc::now() + chrono::Duration::milliseconds(1200);
        journal
            .reschedule("k:0", 1, soon, Some("boom"), &["a".to_string()])
            .await
            .unwrap();
        assert_eq!(journal.backlog(), 1);
        tokio::time::sleep(LEASE * 2).await;
        assert!(
            journal.due(10).await.unwrap().is_empty(),
            "a retry is not reclaimed before its time"
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        let due = journal.due(10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].attempts, 1);
        assert_eq!(due[0].sinks_done, vec!["a"]);
        assert!(
            journal.due(10).await.unwrap().is_empty(),
            "a retry being worked on is hidden"
        );
    }

    #[tokio::test]
    async fn a_retry_taken_by_a_crashed_replica_comes_back_after_the_lease() {
        let prefix = prefix();
        let crashed = journal(&prefix);
        stored(&crashed, "k", 1).await;
        crashed.due(10).await.unwrap();
        crashed
            .reschedule("k:0", 1, Utc::now(), None, &[])
            .await
            .unwrap();
        assert_eq!(crashed.due(10).await.unwrap().len(), 1);
        drop(crashed);
        let survivor = journal(&prefix);
        assert!(survivor.due(10).await.unwrap().is_empty());
        tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
        assert_eq!(ids(&survivor.due(10).await.unwrap()), vec!["k:0"]);
    }

    #[tokio::test]
    async fn entries_left_by_a_crashed_replica_are_reclaimed_after_the_lease() {
        let prefix = prefix();
        let crashed = journal(&prefix);
        stored(&crashed, "k", 3).await;
        assert_eq!(crashed.due(10).await.unwrap().len(), 3);
        drop(crashed);
        let survivor = journal(&prefix);
        assert!(
            survivor.due(10).await.unwrap().is_empty(),
            "not before the lease"
        );
        tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
        let reclaimed = survivor.due(10).await.unwrap();
        assert_eq!(ids(&reclaimed), vec!["k:0", "k:1", "k:2"]);
        for event in &reclaimed {
            survivor.complete(&event.id).await.unwrap();
        }
        assert_eq!(survivor.backlog(), 0);
    }

    #[tokio::test]
    async fn closing_hands_unfinished_entries_to_the_other_replicas_at_once() {
        let prefix = prefix();
        let leaving = journal(&prefix);
        stored(&leaving, "k", 2).await;
        assert_eq!(leaving.due(10).await.unwrap().len(), 2);
        leaving.complete("k:0").await.unwrap();
        leaving.close().await;
        let other = journal(&prefix);
        assert_eq!(ids(&other.due(10).await.unwrap()), vec!["k:1"]);
    }

    #[tokio::test]
    async fn dead_letters_are_listed_and_replayed_by_id_or_by_failed_sink() {
        let journal = journal(&prefix());
        stored(&journal, "k", 3).await;
        journal.due(10).await.unwrap();
        journal
            .dead_letter("k:0", 5, "a: down", &["a".to_string()], &[])
            .await
            .unwrap();
        journal
            .dead_letter(
                "k:1",
                5,
                "b: refused",
                &["b".to_string()],
                &["a".to_string()],
            )
            .await
            .unwrap();
        assert_eq!(journal.backlog(), 1);
        let letters = journal.dead_letters(10).await.unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(letters[0].id, "k:0");
        assert_eq!(letters[0].failed_sinks, vec!["a"]);
        assert_eq!(letters[0].last_error.as_deref(), Some("a: down"));
        assert_eq!(letters[0].attempts, 5);
        assert_eq!(letters[0].event_type, "record.updated");
        assert!(letters[0].dead_at.is_some());
        assert_eq!(journal.dead_letters(1).await.unwrap().len(), 1);

        journal.complete("k:0").await.unwrap();
        assert_eq!(
            journal.dead_letters(10).await.unwrap().len(),
            2,
            "complete does not touch a dead letter"
        );

        assert_eq!(
            journal.replay(None, Some("b".to_string())).await.unwrap(),
            1
        );
        let replayed = journal.due(10).await.unwrap();
        assert_eq!(ids(&replayed), vec!["k:1"]);
        assert_eq!(replayed[0].attempts, 0);
        assert_eq!(
            replayed[0].sinks_done,
            vec!["a"],
            "reached sinks are not repeated"
        );
        assert_eq!(
            journal
                .replay(Some(vec!["k:0".to_string(), "nope".to_string()]), None)
                .await
                .unwrap(),
            1
        );
        assert!(journal.dead_letters(10).await.unwrap().is_empty());
        assert_eq!(journal.backlog(), 3);
        assert_eq!(ids(&journal.due(10).await.unwrap()), vec!["k:0"]);
    }

    #[tokio::test]
    async fn malformed_deliveries_are_kept_and_listed_without_their_bodies() {
        let journal = journal(&prefix());
        journal
            .append_malformed(MalformedDelivery {
                key: Some("bad".to_string()),
                received_at: Utc::now(),
                request_id: None,
                reason: "no events".to_string(),
                body: b"{\"x\":1}".to_vec(),
            })
            .await
            .unwrap();
        journal
            .append_malformed(MalformedDelivery {
                key: None,
                received_at: Utc::now(),
                request_id: None,
                reason: "not json".to_string(),
                body: vec![0xff, 0x00, 0x01],
            })
            .await
            .unwrap();
        let dead = journal.dead_deliveries(10).await.unwrap();
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].seq, 1);
        assert_eq!(dead[0].key.as_deref(), Some("bad"));
        assert_eq!(dead[0].body_len, 7);
        assert_eq!(dead[1].key, None);
        assert_eq!(dead[1].reason, "not json");
        assert_eq!(dead[1].body_len, 3);
    }

    #[tokio::test]
    async fn probe_fails_while_redis_is_unreachable() {
        let url = SecretString::from("redis://127.0.0.1:1");
        let connection = crate::dedupe::redis::connect(&url).unwrap();
        let journal = RedisJournal::new(connection, &prefix(), LEASE, LEASE);
        assert!(journal.probe().await.is_err());
        assert!(journal.append(delivery("k", 1)).await.is_err());
        assert!(journal.due(10).await.is_err());
        let healthy = self::journal(&prefix());
        healthy.probe().await.unwrap();
    }

    #[tokio::test]
    async fn the_queue_comes_back_after_its_keys_were_lost() {
        let prefix = prefix();
        let journal = journal(&prefix);
        stored(&journal, "a", 1).await;
        journal.due(10).await.unwrap();
        // Redis restarted without persistence: the stream and its group are gone.
        let mut redis = journal.connection();
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{{{prefix}}}:events"))
            .query_async(&mut redis)
            .await
            .unwrap();
        stored(&journal, "b", 1).await;
        assert_eq!(ids(&journal.due(10).await.unwrap()), vec!["b:0"]);
    }

    #[test]
    fn every_key_carries_the_prefix_hash_tag() {
        let keys = Keys::new("p");
        for key in [
            keys.stream(),
            keys.event("d:0"),
            keys.retry(),
            keys.dead(),
            keys.delivery("d"),
            keys.backlog(),
            keys.dead_deliveries(),
            keys.dead_delivery_seq(),
            keys.probe(),
            format!("{}1", keys.dead_delivery_prefix()),
        ] {
            assert!(key.starts_with("{p}:"), "{key}");
        }
    }
}
