//! The Redis journal (`queue.backend = "redis"`): the durable queue shared by every replica.
//!
//! In: verified deliveries from ingress, outcomes from the worker, replays, exactly as for the
//! embedded journal. Out: events for this replica's worker, dead letters, the backlog. Layout
//! (every key starts with the hash tag `{prefix}`, so all of them live in one Redis Cluster slot):
//!
//! ```text
//! {prefix}:events              stream; one entry {id} per queued event; consumer group "workers"
//! {prefix}:event:{id}          hash; the event and its state (pending/dead, attempts, sinks)
//! {prefix}:pending             sorted set; every pending event by time received (ZCARD = backlog)
//! {prefix}:retry               sorted set; event id by time of the next attempt
//! {prefix}:dead                sorted set; dead-lettered event ids by time of death
//! {prefix}:delivery:{key}      delivery marker (TTL dedupe.done_ttl): a redelivery is refused
//! {prefix}:dead-delivery:{n}   hash; a signed body that was not a delivery
//! {prefix}:dead-deliveries     sorted set of those by sequence; {prefix}:dead-delivery-seq
//! {prefix}:history             sorted set; every kept event by history sequence (newest last)
//! {prefix}:history-seq         the last history sequence number given
//! ```
//!
//! An event's life: ingress stores the hash, adds a stream entry and sets the delivery marker in
//! one script, and answers 200 only after Redis answered. A worker reads the entry through the
//! consumer group (XREADGROUP), so it stays pending on that replica until the outcome is
//! recorded: done (XACK + XDEL, hash kept as delivered for `storage.history`), retry (XACK + XDEL, id into the retry schedule)
//! or dead (XACK + XDEL, id into the dead letters). Entries a crashed replica left pending longer
//! than the lease are taken over by another (XAUTOCLAIM). A retry being worked on is hidden for
//! one lease, so a crash there is recovered the same way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;

use super::backend::Backend;
use super::codec::{
    json_list, json_map, json_texts, kept_data_json, parse_list, parse_map, parse_texts, rfc3339,
    stored_event_json,
};
use super::history::{
    AttemptRecord, EventDetail, EventPage, EventStatus, EventSummary, FilterView, HistoryQuery,
    Retention, StoredSinks, UnparsedDelivery, UnparsedSummary,
};
use super::redis_scripts as scripts;
use super::{
    AppendOutcome, DeadLetter, DeadLetterQuery, JournalError, JournaledEvent, MalformedDelivery,
    NewDelivery, ReplayReport, ReplaySelection, SinkProgress, SkippedReplay, StoredEvent,
    UnparsedSelection,
};

/// The one consumer group every replica reads through.
const GROUP: &str = "workers";
/// Replicas gone this long with nothing pending are dropped from the consumer group.
const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);
/// Dead letters read or replayed per call (keeps each script short).
const PAGE: usize = 500;
/// Most events one history list looks at (see [`RedisJournal::history`]).
const HISTORY_SCAN: usize = 20_000;
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
    fn pending(&self) -> String {
        format!("{}:pending", self.tag)
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
    fn history(&self) -> String {
        format!("{}:history", self.tag)
    }
    fn history_seq(&self) -> String {
        format!("{}:history-seq", self.tag)
    }
    fn dead_delivery(&self, seq: i64) -> String {
        format!("{}:dead-delivery:{seq}", self.tag)
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
    forget_consumers: redis::Script,
    hand_back: redis::Script,
    history_batch: redis::Script,
    purge_history: redis::Script,
    purge_dead: redis::Script,
    purge_unparsed: redis::Script,
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
            forget_consumers: redis::Script::new(scripts::FORGET_CONSUMERS),
            hand_back: redis::Script::new(scripts::HAND_BACK),
            history_batch: redis::Script::new(scripts::HISTORY_BATCH),
            purge_history: redis::Script::new(scripts::PURGE_HISTORY),
            purge_dead: redis::Script::new(scripts::PURGE_DEAD),
            purge_unparsed: redis::Script::new(scripts::PURGE_UNPARSED),
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
    /// How long a delivered event stays in the history (`storage.history`).
    history: Duration,
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

/// What an outcome script does with the event.
enum Outcome {
    Complete,
    Retry { at_ms: i64 },
    Dead,
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
                history: Retention::default().history,
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

    /// Keeps delivered events for `history` (`storage.history`; 7 days unless set).
    pub(crate) fn with_history(self, history: Duration) -> RedisJournal {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            // Only called right after `new`, before any clone; a clone keeps the default.
            Err(shared) => return RedisJournal { inner: shared },
        };
        inner.history = history;
        RedisJournal {
            inner: Arc::new(inner),
        }
    }

    /// This replica's name in the consumer group.
    pub(crate) fn consumer(&self) -> &str {
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
            .key(keys.pending())
            .arg(GROUP)
            .arg(&self.inner.consumer)
            .arg(now)
            .arg(lease)
            .arg(limit)
            .arg(&cursor)
            .arg(keys.event_prefix())
            .arg(now.saturating_add(i64::try_from(lease).unwrap_or(i64::MAX)))
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
        Ok(events
            .into_iter()
            .filter_map(|fields| event_from_fields(pairs(fields)))
            .collect())
    }

    /// Runs one outcome script on a pending event. `fields` are set on its hash.
    async fn record(
        &self,
        id: &str,
        outcome: Outcome,
        fields: &[(&str, String)],
    ) -> Result<(), JournalError> {
        let keys = &self.inner.keys;
        let (script, score) = match outcome {
            Outcome::Complete => (
                &self.inner.scripts.complete,
                i64::try_from(millis(self.inner.history)).unwrap_or(i64::MAX),
            ),
            Outcome::Retry { at_ms } => (&self.inner.scripts.reschedule, at_ms),
            Outcome::Dead => (
                &self.inner.scripts.dead_letter,
                Utc::now().timestamp_millis(),
            ),
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.event(id))
            .key(keys.stream())
            .key(keys.retry())
            .key(keys.pending())
            .key(keys.dead())
            .arg(GROUP)
            .arg(id)
            .arg(score);
        for (name, value) in fields {
            invocation.arg(*name).arg(value);
        }
        let backlog: i64 = invocation.invoke_async(&mut self.connection()).await?;
        self.set_backlog(backlog);
        Ok(())
    }

    fn progress_fields(progress: &SinkProgress) -> Vec<(&'static str, String)> {
        vec![
            ("attempts", progress.attempts.to_string()),
            ("last_error", progress.last_error.clone()),
            ("sinks_done", json_list(&progress.sinks_done)),
            ("sink_attempts", json_map(&progress.sink_attempts)),
            ("failed_sinks", json_list(&progress.sinks_failed)),
        ]
    }

    /// Deletes the dead letters that died before `died_before_ms`, [`PAGE`] per script call.
    async fn purge_dead(&self, died_before_ms: i64) -> Result<u64, JournalError> {
        let mut purged = 0;
        loop {
            let deleted: u64 = self
                .inner
                .scripts
                .purge_dead
                .key(self.inner.keys.dead())
                .key(self.inner.keys.history())
                .arg(self.inner.keys.event_prefix())
                .arg(died_before_ms)
                .arg(PAGE)
                .invoke_async(&mut self.connection())
                .await?;
            purged += deleted;
            if deleted < PAGE as u64 {
                return Ok(purged);
            }
        }
    }

    /// Deletes the unparsed deliveries received before `received_before` (RFC 3339).
    async fn purge_unparsed(&self, received_before: &str) -> Result<u64, JournalError> {
        let mut purged = 0;
        loop {
            let (deleted, finished): (u64, u8) = self
                .inner
                .scripts
                .purge_unparsed
                .key(self.inner.keys.dead_deliveries())
                .arg(self.inner.keys.dead_delivery_prefix())
                .arg(received_before)
                .arg(PAGE)
                .invoke_async(&mut self.connection())
                .await?;
            purged += deleted;
            if finished == 1 {
                return Ok(purged);
            }
        }
    }

    /// Dead letters from rank `start`, oldest first, at most `count`.
    async fn dead_letter_page(
        &self,
        start: usize,
        count: usize,
    ) -> Result<Vec<DeadLetter>, JournalError> {
        let keys = &self.inner.keys;
        let rows: Vec<Vec<Option<String>>> = self
            .inner
            .scripts
            .dead_letters
            .key(keys.dead())
            .arg(start)
            .arg(start + count - 1)
            .arg(keys.event_prefix())
            .invoke_async(&mut self.connection())
            .await?;
        Ok(rows.into_iter().filter_map(dead_letter_from_row).collect())
    }
}

impl Backend for RedisJournal {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn hands_off_directly(&self) -> bool {
        false
    }

    async fn append(&self, delivery: NewDelivery) -> Result<AppendOutcome, JournalError> {
        let keys = &self.inner.keys;
        let received_at = rfc3339(delivery.received_at);
        let received_ms = delivery.received_at.timestamp_millis().to_string();
        let mut shared: Vec<&str> = vec![
            "delivery_key",
            &delivery.key,
            "received_at",
            &received_at,
            "received_ms",
            &received_ms,
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
            .key(keys.pending())
            .key(keys.history())
            .key(keys.history_seq())
            .arg(millis(self.inner.delivery_ttl))
            .arg(&received_ms)
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
                sink_attempts: BTreeMap::new(),
            });
        }
        let backlog: i64 = invocation.invoke_async(&mut self.connection()).await?;
        if backlog < 0 {
            return Ok(AppendOutcome::Duplicate);
        }
        self.set_backlog(backlog);
        Ok(AppendOutcome::Stored(stored))
    }

    async fn append_malformed(&self, delivery: MalformedDelivery) -> Result<(), JournalError> {
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

    /// Events for this replica: stale entries of crashed replicas, retries now due, new entries.
    /// Each returned event is held by this replica until its outcome is recorded (or a lease).
    async fn due(&self, limit: usize) -> Result<Vec<JournaledEvent>, JournalError> {
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

    async fn complete(&self, id: &str, record: AttemptRecord) -> Result<(), JournalError> {
        let mut fields = history_fields(&record);
        fields.push(("sinks_done", json_list(&record.sinks_done)));
        fields.push(("failed_sinks", "[]".to_string()));
        fields.push(("delivered_at", rfc3339(Utc::now())));
        self.record(id, Outcome::Complete, &fields).await
    }

    async fn reschedule(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let mut fields = vec![
            ("attempts", progress.attempts.to_string()),
            ("sinks_done", json_list(&progress.sinks_done)),
        ];
        if let Some(error) = error {
            fields.push(("last_error", error.to_string()));
        }
        let at_ms = next_attempt_at.timestamp_millis();
        self.record(id, Outcome::Retry { at_ms }, &fields).await
    }

    /// A failed attempt: due again at `next_attempt_at` for the sinks not yet done.
    async fn retry_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: DateTime<Utc>,
        record: &AttemptRecord,
    ) -> Result<(), JournalError> {
        let at_ms = next_attempt_at.timestamp_millis();
        let mut fields = Self::progress_fields(progress);
        fields.extend(history_fields(record));
        self.record(id, Outcome::Retry { at_ms }, &fields).await
    }

    /// The event joins the dead letters with the sinks that failed and why.
    async fn dead_letter_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        record: &AttemptRecord,
    ) -> Result<(), JournalError> {
        let mut fields = Self::progress_fields(progress);
        fields.extend(history_fields(record));
        fields.push(("dead_at", rfc3339(Utc::now())));
        self.record(id, Outcome::Dead, &fields).await
    }

    /// Dead letters matching `query`, oldest first.
    async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>, JournalError> {
        let mut found = Vec::new();
        let mut start = 0;
        while found.len() < query.limit {
            let page = self.dead_letter_page(start, PAGE).await?;
            let done = page.len() < PAGE;
            start += PAGE;
            found.extend(page.into_iter().filter(|letter| matches(letter, query)));
            if done {
                break;
            }
        }
        found.truncate(query.limit);
        Ok(found)
    }

    /// One event still in the journal (pending or dead), with its stored JSON.
    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, JournalError> {
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(self.inner.keys.event(id))
            .query_async(&mut self.connection())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut fields = pairs(fields);
        let take = |fields: &mut BTreeMap<String, String>, name: &str| fields.remove(name);
        let raw = take(&mut fields, "raw").unwrap_or_default();
        let event = stored_event_json(id, raw)?;
        Ok(Some(StoredEvent {
            id: id.to_string(),
            state: take(&mut fields, "state").unwrap_or_default(),
            event_type: take(&mut fields, "event_type").unwrap_or_default(),
            delivery_key: take(&mut fields, "delivery_key").unwrap_or_default(),
            webhook_id: take(&mut fields, "webhook_id"),
            received_at: take(&mut fields, "received_at").unwrap_or_default(),
            request_id: take(&mut fields, "request_id"),
            attempts: parse_number(take(&mut fields, "attempts")),
            last_error: take(&mut fields, "last_error").filter(|e| !e.is_empty()),
            sinks_done: parse_list(&take(&mut fields, "sinks_done").unwrap_or_default()),
            sink_attempts: parse_map(&take(&mut fields, "sink_attempts").unwrap_or_default()),
            failed_sinks: parse_list(&take(&mut fields, "failed_sinks").unwrap_or_default()),
            dead_at: take(&mut fields, "dead_at"),
            event,
        }))
    }

    /// Puts dead letters back in the queue, due at once, with their attempts reset. With `sink`,
    /// only events that failed on that sink, and only that sink is tried again (the other sinks
    /// that failed count as done). Same rules and report as the embedded journal.
    async fn replay(
        &self,
        selection: &ReplaySelection,
        sink: Option<&str>,
        delivered_too: bool,
    ) -> Result<ReplayReport, JournalError> {
        let keys = &self.inner.keys;
        let (ids, named) = match selection {
            ReplaySelection::Ids(ids) => (ids.clone(), true),
            ReplaySelection::All => {
                let all: Vec<String> = redis::cmd("ZRANGE")
                    .arg(keys.dead())
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.connection())
                    .await?;
                (all, false)
            }
        };
        let mut report = ReplayReport::default();
        for batch in ids.chunks(PAGE) {
            // Read what each event is now; the script re-checks that it is still dead.
            let mut pipe = redis::pipe();
            for id in batch {
                pipe.cmd("HMGET")
                    .arg(keys.event(id))
                    .arg("state")
                    .arg("failed_sinks")
                    .arg("sinks_done");
            }
            let states: Vec<(Option<String>, Option<String>, Option<String>)> =
                pipe.query_async(&mut self.connection()).await?;
            let mut wanted: Vec<(String, String, String)> = Vec::new();
            for (id, (state, failed, done)) in batch.iter().zip(states) {
                let failed = parse_list(failed.as_deref().unwrap_or("[]"));
                let done = parse_list(done.as_deref().unwrap_or("[]"));
                let plan =
                    super::plan_replay(state.as_deref(), failed, done, sink, named, delivered_too);
                let done = match plan {
                    Ok(done) => done,
                    Err(reason) => {
                        if let Some(reason) = reason {
                            report.skipped.push(SkippedReplay {
                                id: id.clone(),
                                reason,
                            });
                        }
                        continue;
                    }
                };
                wanted.push((id.clone(), json_list(&done), state.unwrap_or_default()));
            }
            if wanted.is_empty() {
                continue;
            }
            let mut invocation = self.inner.scripts.replay.prepare_invoke();
            invocation
                .key(keys.dead())
                .key(keys.retry())
                .key(keys.pending())
                .arg(keys.event_prefix())
                .arg(Utc::now().timestamp_millis());
            for (id, done, state) in &wanted {
                invocation.arg(id).arg(done).arg(state);
            }
            let replayed: Vec<String> = invocation.invoke_async(&mut self.connection()).await?;
            self.inner
                .backlog
                .fetch_add(replayed.len() as u64, Ordering::Relaxed);
            report.replayed.extend(replayed);
        }
        Ok(report)
    }

    async fn delete_unparsed(
        &self,
        selection: &UnparsedSelection,
    ) -> Result<Vec<i64>, JournalError> {
        let keys = &self.inner.keys;
        let seqs = match selection {
            UnparsedSelection::Ids(ids) => ids.clone(),
            UnparsedSelection::All => {
                let all: Vec<i64> = redis::cmd("ZRANGE")
                    .arg(keys.dead_deliveries())
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.connection())
                    .await?;
                all
            }
        };
        let mut deleted = Vec::new();
        for seq in seqs {
            // Index and hash go together, so no reader sees one without the other.
            let (removed, _): (i64, i64) = redis::pipe()
                .atomic()
                .cmd("ZREM")
                .arg(keys.dead_deliveries())
                .arg(seq)
                .cmd("DEL")
                .arg(format!("{}{seq}", keys.dead_delivery_prefix()))
                .query_async(&mut self.connection())
                .await?;
            if removed == 1 {
                deleted.push(seq);
            }
        }
        Ok(deleted)
    }

    /// Pending events across every replica, as of this replica's last exchange with Redis (each
    /// append, outcome, worker poll and probe refreshes it): cheap enough for ingress to read per
    /// request.
    fn backlog(&self) -> u64 {
        self.inner.backlog.load(Ordering::Relaxed)
    }

    /// How long the oldest pending event (on any replica) has waited, if any is pending.
    async fn oldest_pending_age(&self) -> Result<Option<Duration>, JournalError> {
        let oldest: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.inner.keys.pending())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut self.connection())
            .await?;
        Ok(oldest.first().map(|(_, received_ms)| {
            let age_ms = Utc::now().timestamp_millis() as f64 - received_ms;
            Duration::from_millis(age_ms.max(0.0) as u64)
        }))
    }

    /// A write, so readiness also fails when Redis refuses writes (read-only replica, failed
    /// persistence, out of memory), not only when it is unreachable.
    async fn probe(&self) -> Result<(), JournalError> {
        let keys = &self.inner.keys;
        let (backlog,): (i64,) = redis::pipe()
            .cmd("SET")
            .arg(keys.probe())
            .arg(rfc3339(Utc::now()))
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("ZCARD")
            .arg(keys.pending())
            .query_async(&mut self.connection())
            .await?;
        self.set_backlog(backlog);
        Ok(())
    }

    /// Delivery markers expire by themselves; this deletes history older than `retention` (dead
    /// letters by their time of death and unparsed deliveries by the time received, in their own
    /// window) and forgets replicas long gone.
    async fn purge(&self, _keep: Duration, retention: Retention) -> Result<u64, JournalError> {
        let now = Utc::now();
        let history_before = now.timestamp_millis()
            - i64::try_from(millis(retention.history)).unwrap_or(i64::MAX / 2);
        let dead_before = retention
            .dead_letters
            .map(|keep| {
                rfc3339(now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX))
            })
            .unwrap_or_default();
        let mut purged = 0;
        let mut offset = 0;
        loop {
            let (deleted, kept, finished): (u64, u64, u8) = self
                .inner
                .scripts
                .purge_history
                .key(self.inner.keys.history())
                .key(self.inner.keys.dead())
                .arg(self.inner.keys.event_prefix())
                .arg(history_before)
                .arg(&dead_before)
                .arg(PAGE)
                .arg(offset)
                .invoke_async(&mut self.connection())
                .await?;
            purged += deleted;
            offset += kept;
            if finished == 1 {
                break;
            }
        }
        if let Some(keep) = retention.dead_letters {
            let died_before =
                now.timestamp_millis() - i64::try_from(millis(keep)).unwrap_or(i64::MAX / 2);
            purged += self.purge_dead(died_before).await?;
            purged += self.purge_unparsed(&dead_before).await?;
        }
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
        Ok(purged + removed)
    }

    /// Events kept in the history matching `query`, newest first. Reads the index in batches
    /// and filters them here (with the rules both journals share), looking at no more than
    /// [`HISTORY_SCAN`] events per call: a rare filter over a long history answers a short page
    /// with a cursor to go on from.
    async fn history(&self, query: &HistoryQuery) -> Result<EventPage, JournalError> {
        let size = query.page_size();
        let mut cursor = query
            .cursor
            .map(|c| c.to_string())
            .unwrap_or_else(|| "+inf".to_string());
        let mut found = Vec::new();
        let mut scanned = 0;
        loop {
            let rows: Vec<Vec<Option<String>>> = self
                .inner
                .scripts
                .history_batch
                .key(self.inner.keys.history())
                .arg(&cursor)
                .arg(PAGE)
                .arg(self.inner.keys.event_prefix())
                .invoke_async(&mut self.connection())
                .await?;
            let exhausted = rows.len() < PAGE;
            scanned += rows.len();
            for row in rows {
                let Some(summary) = HistoryRow::parse(row) else {
                    continue;
                };
                cursor = summary.summary.seq.to_string();
                if query.matches(&summary.view()) {
                    if found.len() == size {
                        // One more match than the page: another page follows.
                        return Ok(EventPage::from_found(found, true));
                    }
                    found.push(summary.summary);
                }
            }
            if exhausted {
                return Ok(EventPage::from_found(found, false));
            }
            if scanned >= HISTORY_SCAN {
                // Not sure whether more match: the cursor goes on from the last event looked at.
                let next_cursor = Some(cursor);
                return Ok(EventPage {
                    data: found,
                    next_cursor,
                });
            }
        }
    }

    /// Everything kept about one event.
    async fn history_event(&self, id: &str) -> Result<Option<EventDetail>, JournalError> {
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(self.inner.keys.event(id))
            .query_async(&mut self.connection())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut fields = pairs(fields);
        let mut take = |name: &str| fields.remove(name);
        let attempts = parse_number(take("attempts"));
        let status = EventStatus::from_state(&take("state").unwrap_or_default(), attempts);
        let sinks = StoredSinks {
            done: parse_list(&take("sinks_done").unwrap_or_default()),
            failed: parse_list(&take("failed_sinks").unwrap_or_default()),
            attempts: parse_map(&take("sink_attempts").unwrap_or_default()),
            errors: parse_texts(&take("sink_errors").unwrap_or_default()),
            delivered: parse_texts(&take("sinks_delivered").unwrap_or_default()),
        };
        let event = take("raw").unwrap_or_default();
        let event = stored_event_json(id, event)?;
        Ok(Some(EventDetail {
            id: id.to_string(),
            event_type: take("event_type").unwrap_or_default(),
            status,
            delivery_key: take("delivery_key").unwrap_or_default(),
            webhook_id: take("webhook_id"),
            request_id: take("request_id"),
            received_at: take("received_at").unwrap_or_default(),
            attempts,
            last_error: take("last_error").filter(|e| !e.is_empty()),
            delivered_at: take("delivered_at"),
            dead_at: take("dead_at"),
            object: take("object").filter(|v| !v.is_empty()),
            list: take("list").filter(|v| !v.is_empty()),
            record_id: take("record_id").filter(|v| !v.is_empty()),
            enrichment: take("enrichment").filter(|v| !v.is_empty()),
            event,
            data: kept_data_json(take("data")),
            data_omitted: take("data_omitted").as_deref() == Some("1"),
            sinks: sinks.records(status),
        }))
    }

    /// Unparsed deliveries, newest first, below `before` when given.
    async fn unparsed(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<UnparsedSummary>, JournalError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let max = before.map_or("+inf".to_string(), |b| format!("({b}"));
        let seqs: Vec<i64> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(self.inner.keys.dead_deliveries())
            .arg(max)
            .arg("-inf")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.connection())
            .await?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for seq in &seqs {
            pipe.cmd("HMGET")
                .arg(self.inner.keys.dead_delivery(*seq))
                .arg("key")
                .arg("received_at")
                .arg("request_id")
                .arg("reason");
            pipe.cmd("HSTRLEN")
                .arg(self.inner.keys.dead_delivery(*seq))
                .arg("body");
        }
        let rows: Vec<redis::Value> = pipe.query_async(&mut self.connection()).await?;
        let mut out = Vec::with_capacity(seqs.len());
        for (seq, pair) in seqs.iter().zip(rows.chunks(2)) {
            let [fields, length] = pair else { continue };
            let unreadable = |e: redis::ParsingError| JournalError::Storage(format!("redis: {e}"));
            let fields: Vec<Option<String>> =
                redis::from_redis_value(fields.clone()).map_err(unreadable)?;
            let length: i64 = redis::from_redis_value(length.clone()).map_err(unreadable)?;
            let mut fields = fields.into_iter();
            let mut next = || fields.next().flatten();
            out.push(UnparsedSummary {
                id: *seq,
                key: next(),
                received_at: next().unwrap_or_default(),
                request_id: next(),
                reason: next().unwrap_or_default(),
                body_len: length.max(0) as usize,
            });
        }
        Ok(out)
    }

    /// One unparsed delivery with its body.
    async fn unparsed_delivery(&self, id: i64) -> Result<Option<UnparsedDelivery>, JournalError> {
        let key = self.inner.keys.dead_delivery(id);
        let (fields, body): (Vec<Option<String>>, Option<Vec<u8>>) = redis::pipe()
            .cmd("HMGET")
            .arg(&key)
            .arg("key")
            .arg("received_at")
            .arg("request_id")
            .arg("reason")
            .cmd("HGET")
            .arg(&key)
            .arg("body")
            .query_async(&mut self.connection())
            .await?;
        let Some(body) = body else {
            return Ok(None);
        };
        let mut fields = fields.into_iter();
        let mut next = || fields.next().flatten();
        Ok(Some(UnparsedDelivery {
            summary: UnparsedSummary {
                id,
                key: next(),
                received_at: next().unwrap_or_default(),
                request_id: next(),
                reason: next().unwrap_or_default(),
                body_len: body.len(),
            },
            body,
        }))
    }

    /// On shutdown, after the worker stopped: entries this replica read but did not finish go
    /// back to the end of the stream, so the other replicas take them now rather than after the
    /// lease. (An event whose processing outlived the shutdown grace may then run twice at the
    /// same time; the dedupe claim lets only one of them deliver.)
    async fn close(&self) {
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

/// What the history batch script returns for one event.
struct HistoryRow {
    summary: EventSummary,
    record_id: Option<String>,
    sinks: StoredSinks,
    received_ms: i64,
}

impl HistoryRow {
    /// From `{seq, id, event_type, state, attempts, received_at, received_ms, object, list,
    /// delivery_key, last_error, record_id, sinks_done, failed_sinks, sink_attempts}`; `None`
    /// for an index entry whose event expired.
    fn parse(row: Vec<Option<String>>) -> Option<HistoryRow> {
        let mut values = row.into_iter();
        let mut next = || values.next().flatten().filter(|v| !v.is_empty());
        let seq = next()?.parse::<f64>().ok()? as u64;
        let id = next()?;
        let event_type = next().unwrap_or_default();
        let state = next()?;
        let attempts = parse_number(next());
        let received_at = next().unwrap_or_default();
        let received_ms = next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let object = next();
        let list = next();
        let delivery_key = next().unwrap_or_default();
        let last_error = next();
        let record_id = next();
        let sinks = StoredSinks {
            done: parse_list(&next().unwrap_or_default()),
            failed: parse_list(&next().unwrap_or_default()),
            attempts: parse_map(&next().unwrap_or_default()),
            ..StoredSinks::default()
        };
        Some(HistoryRow {
            summary: EventSummary {
                id,
                event_type,
                status: EventStatus::from_state(&state, attempts),
                received_at,
                attempts,
                object,
                list,
                delivery_key,
                last_error,
                seq,
            },
            record_id,
            sinks,
            received_ms,
        })
    }

    fn view(&self) -> FilterView<'_> {
        FilterView {
            id: &self.summary.id,
            delivery_key: &self.summary.delivery_key,
            record_id: self.record_id.as_deref(),
            event_type: &self.summary.event_type,
            status: Some(self.summary.status),
            object: self.summary.object.as_deref(),
            list: self.summary.list.as_deref(),
            sinks: self.sinks.names(),
            received_ms: self.received_ms,
        }
    }
}

/// The hash fields an attempt's findings set (absent values are left as they were).
fn history_fields(record: &AttemptRecord) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
    let optional = [
        ("enrichment", &record.enrichment),
        ("object", &record.object),
        ("list", &record.list),
        ("record_id", &record.record_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            fields.push((name, value.clone()));
        }
    }
    fields.push(("data", record.data.clone().unwrap_or_default()));
    fields.push((
        "data_omitted",
        if record.data_omitted { "1" } else { "0" }.to_string(),
    ));
    fields.push(("sink_errors", json_texts(&record.sink_errors)));
    fields.push(("sinks_delivered", json_texts(&record.sinks_delivered)));
    fields
}

/// Whether a dead letter passes the `dead-letters list` filters.
fn matches(letter: &DeadLetter, query: &DeadLetterQuery) -> bool {
    let sink = query
        .sink
        .as_ref()
        .is_none_or(|sink| letter.failed_sinks.contains(sink));
    // `record.*` selects a family by prefix; anything else is an exact type.
    let event_type = match query.event_type.as_deref() {
        None => true,
        Some(pattern) => match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') => letter.event_type.starts_with(prefix),
            _ => letter.event_type == pattern,
        },
    };
    sink && event_type
}

/// A field/value list as a map.
fn pairs(fields: Vec<String>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut items = fields.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        map.insert(name, value);
    }
    map
}

/// Builds an event from its hash. A hash that lost required fields is skipped rather than
/// failing the whole batch.
fn event_from_fields(mut fields: BTreeMap<String, String>) -> Option<JournaledEvent> {
    let mut take = |name: &str| fields.remove(name);
    Some(JournaledEvent {
        id: take("id")?,
        delivery_key: take("delivery_key")?,
        index: parse_number(take("index")),
        webhook_id: take("webhook_id"),
        event_type: take("event_type")?,
        received_at: take("received_at").unwrap_or_default(),
        request_id: take("request_id"),
        raw: take("raw")?,
        attempts: parse_number(take("attempts")),
        sinks_done: parse_list(&take("sinks_done").unwrap_or_default()),
        sink_attempts: parse_map(&take("sink_attempts").unwrap_or_default()),
    })
}

/// A dead letter from the DEAD_LETTERS script's row (field/value items, values may be nil).
fn dead_letter_from_row(row: Vec<Option<String>>) -> Option<DeadLetter> {
    let mut fields = BTreeMap::new();
    let mut items = row.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        if let (Some(name), Some(value)) = (name, value) {
            fields.insert(name, value);
        }
    }
    let mut take = |name: &str| fields.remove(name);
    Some(DeadLetter {
        id: take("id")?,
        event_type: take("event_type").unwrap_or_default(),
        delivery_key: take("delivery_key").unwrap_or_default(),
        received_at: take("received_at").unwrap_or_default(),
        attempts: parse_number(take("attempts")),
        last_error: take("last_error").filter(|e| !e.is_empty()),
        failed_sinks: parse_list(&take("failed_sinks").unwrap_or_default()),
        dead_at: take("dead_at"),
        sinks_done: parse_list(&take("sinks_done").unwrap_or_default()),
        sink_attempts: parse_map(&take("sink_attempts").unwrap_or_default()),
    })
}

fn parse_number(value: Option<String>) -> u32 {
    value.and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held only to copy or replace two small values: a poisoned lock holds no broken state.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;
