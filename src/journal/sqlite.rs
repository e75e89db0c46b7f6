//! The embedded journal: one SQLite database (WAL, `synchronous=FULL`) under `storage.path`.
//!
//! One writer thread owns the connection. Requests queue on a channel; the thread takes
//! everything queued, applies it in one transaction and commits once, then answers every caller.
//! That is group commit: under load one disk flush covers many deliveries, and a caller is
//! answered only after the flush that holds its data.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{
    AppendOutcome, DeadDelivery, DeadLetter, JournalError, JournaledEvent, MalformedDelivery,
    NewDelivery,
};

/// Most requests applied in one transaction.
const MAX_BATCH: usize = 2048;
/// Requests that may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 16 * 1024;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,
    webhook_id TEXT,
    received_at TEXT NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    key_derived INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_age ON deliveries(received_unix_ms);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    delivery_key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    webhook_id TEXT,
    event_type TEXT NOT NULL,
    received_at TEXT NOT NULL,
    request_id TEXT,
    event TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_unix_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sinks_done TEXT NOT NULL DEFAULT '[]',
    failed_sinks TEXT NOT NULL DEFAULT '[]',
    dead_at TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events(state, next_attempt_unix_ms, seq);
CREATE TABLE IF NOT EXISTS dead_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT,
    received_at TEXT NOT NULL,
    request_id TEXT,
    reason TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dedupe_done (
    key TEXT PRIMARY KEY,
    expires_unix_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dedupe_done_expiry ON dedupe_done(expires_unix_ms);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

enum Request {
    Append(NewDelivery, Reply<AppendOutcome>),
    AppendMalformed(MalformedDelivery, Reply<()>),
    Due {
        now_ms: i64,
        limit: usize,
        reply: Reply<Vec<JournaledEvent>>,
    },
    Complete(String, Reply<()>),
    Reschedule {
        id: String,
        attempts: u32,
        next_ms: i64,
        error: Option<String>,
        sinks_done: String,
        reply: Reply<()>,
    },
    DeadLetter {
        id: String,
        attempts: u32,
        error: String,
        failed_sinks: String,
        sinks_done: String,
        reply: Reply<()>,
    },
    DeadLetters(usize, Reply<Vec<DeadLetter>>),
    DeadDeliveries(usize, Reply<Vec<DeadDelivery>>),
    DedupeIsDone {
        key: String,
        now_ms: i64,
        reply: Reply<bool>,
    },
    DedupeMarkDone {
        key: String,
        expires_ms: i64,
        reply: Reply<()>,
    },
    Probe(Reply<()>),
    OldestPending(Reply<Option<String>>),
    Purge {
        deliveries_before_ms: i64,
        now_ms: i64,
        reply: Reply<u64>,
    },
    Close(oneshot::Sender<()>),
}

/// Handle to the embedded journal. Cheap to clone.
#[derive(Clone)]
pub struct SqliteJournal {
    requests: mpsc::Sender<Request>,
    backlog: Arc<AtomicU64>,
}

impl SqliteJournal {
    /// Opens (creating if needed) the database and starts its writer thread.
    pub fn open(path: &Path) -> Result<SqliteJournal, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                JournalError::Storage(format!(
                    "cannot create storage directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let connection = Connection::open(path).map_err(|e| {
            JournalError::Storage(format!("cannot open journal {}: {e}", path.display()))
        })?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed transaction survives power loss, not only a process crash.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(SCHEMA)?;
        let pending: i64 = connection.query_row(
            "SELECT COUNT(*) FROM events WHERE state = 'pending'",
            [],
            |row| row.get(0),
        )?;
        let backlog = Arc::new(AtomicU64::new(pending.max(0) as u64));
        let (requests, receiver) = mpsc::channel(QUEUE_DEPTH);
        let writer_backlog = backlog.clone();
        std::thread::Builder::new()
            .name("journal-writer".to_string())
            .spawn(move || writer_loop(connection, receiver, writer_backlog))
            .map_err(|e| JournalError::Storage(format!("cannot start journal writer: {e}")))?;
        Ok(SqliteJournal { requests, backlog })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    pub async fn append(&self, delivery: NewDelivery) -> Result<AppendOutcome, JournalError> {
        self.call(|reply| Request::Append(delivery, reply)).await
    }

    pub async fn append_malformed(&self, delivery: MalformedDelivery) -> Result<(), JournalError> {
        self.call(|reply| Request::AppendMalformed(delivery, reply))
            .await
    }

    pub async fn due(&self, limit: usize) -> Result<Vec<JournaledEvent>, JournalError> {
        let now_ms = Utc::now().timestamp_millis();
        self.call(|reply| Request::Due {
            now_ms,
            limit,
            reply,
        })
        .await
    }

    pub async fn complete(&self, id: &str) -> Result<(), JournalError> {
        let id = id.to_string();
        self.call(|reply| Request::Complete(id, reply)).await
    }

    pub async fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: DateTime<Utc>,
        error: Option<&str>,
        sinks_done: &[String],
    ) -> Result<(), JournalError> {
        let request = |reply| Request::Reschedule {
            id: id.to_string(),
            attempts,
            next_ms: next_attempt_at.timestamp_millis(),
            error: error.map(str::to_string),
            sinks_done: json_list(sinks_done),
            reply,
        };
        self.call(request).await
    }

    pub async fn dead_letter(
        &self,
        id: &str,
        attempts: u32,
        error: &str,
        failed_sinks: &[String],
        sinks_done: &[String],
    ) -> Result<(), JournalError> {
        let request = |reply| Request::DeadLetter {
            id: id.to_string(),
            attempts,
            error: error.to_string(),
            failed_sinks: json_list(failed_sinks),
            sinks_done: json_list(sinks_done),
            reply,
        };
        self.call(request).await
    }

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, JournalError> {
        self.call(|reply| Request::DeadLetters(limit, reply)).await
    }

    pub async fn dead_deliveries(&self, limit: usize) -> Result<Vec<DeadDelivery>, JournalError> {
        self.call(|reply| Request::DeadDeliveries(limit, reply))
            .await
    }

    /// Whether the embedded dedupe store remembers `key` as done.
    pub async fn dedupe_is_done(&self, key: &str) -> Result<bool, JournalError> {
        let key = key.to_string();
        let now_ms = Utc::now().timestamp_millis();
        self.call(|reply| Request::DedupeIsDone { key, now_ms, reply })
            .await
    }

    pub async fn dedupe_mark_done(&self, key: &str, ttl: Duration) -> Result<(), JournalError> {
        let key = key.to_string();
        let expires_ms = Utc::now().timestamp_millis() + duration_ms(ttl);
        self.call(|reply| Request::DedupeMarkDone {
            key,
            expires_ms,
            reply,
        })
        .await
    }

    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    pub async fn probe(&self) -> Result<(), JournalError> {
        self.call(Request::Probe).await
    }

    pub async fn oldest_pending_age(&self) -> Result<Option<Duration>, JournalError> {
        let oldest = self.call(Request::OldestPending).await?;
        Ok(oldest
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|at| {
                (Utc::now() - at.with_timezone(&Utc))
                    .to_std()
                    .unwrap_or_default()
            }))
    }

    pub async fn purge(&self, keep: Duration) -> Result<u64, JournalError> {
        let now_ms = Utc::now().timestamp_millis();
        let deliveries_before_ms = now_ms - duration_ms(keep);
        self.call(|reply| Request::Purge {
            deliveries_before_ms,
            now_ms,
            reply,
        })
        .await
    }

    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.requests.send(Request::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2)
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

/// A reply held until the transaction it belongs to is committed.
enum Held {
    Append(
        Reply<AppendOutcome>,
        Result<AppendOutcome, JournalError>,
        u64,
    ),
    Unit(Reply<()>, Result<(), JournalError>, i64),
    Due(
        Reply<Vec<JournaledEvent>>,
        Result<Vec<JournaledEvent>, JournalError>,
    ),
    Letters(
        Reply<Vec<DeadLetter>>,
        Result<Vec<DeadLetter>, JournalError>,
    ),
    Dead(
        Reply<Vec<DeadDelivery>>,
        Result<Vec<DeadDelivery>, JournalError>,
    ),
    Bool(Reply<bool>, Result<bool, JournalError>),
    Text(Reply<Option<String>>, Result<Option<String>, JournalError>),
    Count(Reply<u64>, Result<u64, JournalError>),
}

impl Held {
    /// Answers the caller. On a failed commit every caller learns that nothing was stored.
    fn answer(self, committed: &Result<(), String>, backlog: &AtomicU64) {
        let failed = |message: &String| JournalError::Storage(format!("commit failed: {message}"));
        match self {
            Held::Append(reply, result, added) => {
                let result = match committed {
                    Ok(()) => {
                        if result.is_ok() {
                            backlog.fetch_add(added, Ordering::Relaxed);
                        }
                        result
                    }
                    Err(message) => Err(failed(message)),
                };
                let _ = reply.send(result);
            }
            Held::Unit(reply, result, backlog_change) => {
                let result = match committed {
                    Ok(()) => {
                        if result.is_ok() {
                            apply_change(backlog, backlog_change);
                        }
                        result
                    }
                    Err(message) => Err(failed(message)),
                };
                let _ = reply.send(result);
            }
            Held::Due(reply, result) => {
                let _ = reply.send(committed.clone().map_err(|m| failed(&m)).and(result));
            }
            Held::Letters(reply, result) => {
                let _ = reply.send(committed.clone().map_err(|m| failed(&m)).and(result));
            }
            Held::Dead(reply, result) => {
                let _ = reply.send(committed.clone().map_err(|m| failed(&m)).and(result));
            }
            Held::Bool(reply, result) => {
                let _ = reply.send(committed.clone().map_err(|m| failed(&m)).and(result));
            }
            Held::Count(reply, result) => {
                let _ = reply.send(committed.clone().map_err(|m| failed(&m)).and(result));
            }
            Held::Text(reply, result) => {
                let _ = reply.send(committed.clone().map_err(|m| failed(&m)).and(result));
            }
        }
    }
}

fn apply_change(backlog: &AtomicU64, change: i64) {
    if change > 0 {
        backlog.fetch_add(change as u64, Ordering::Relaxed);
    } else if change < 0 {
        let _ = backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(change.unsigned_abs()))
        });
    }
}

fn writer_loop(
    mut connection: Connection,
    mut receiver: mpsc::Receiver<Request>,
    backlog: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut held = Vec::with_capacity(batch.len());
        let mut close = None;
        let committed = match connection.transaction() {
            Ok(tx) => {
                for request in batch.drain(..) {
                    match request {
                        Request::Close(done) => close = Some(done),
                        other => held.push(apply(&tx, other)),
                    }
                }
                tx.commit().map_err(|e| e.to_string())
            }
            Err(error) => {
                let message = error.to_string();
                for request in batch.drain(..) {
                    match request {
                        Request::Close(done) => close = Some(done),
                        other => held.push(refuse(other)),
                    }
                }
                Err(message)
            }
        };
        if let Err(message) = &committed {
            tracing::error!(error = %message, "journal commit failed");
        }
        for reply in held {
            reply.answer(&committed, &backlog);
        }
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

/// Answers a request that never reached a transaction.
fn refuse(request: Request) -> Held {
    let error = || JournalError::Storage("could not begin a transaction".to_string());
    match request {
        Request::Append(_, reply) => Held::Append(reply, Err(error()), 0),
        Request::AppendMalformed(_, reply)
        | Request::Complete(_, reply)
        | Request::Reschedule { reply, .. }
        | Request::DeadLetter { reply, .. }
        | Request::DedupeMarkDone { reply, .. }
        | Request::Probe(reply) => Held::Unit(reply, Err(error()), 0),
        Request::Due { reply, .. } => Held::Due(reply, Err(error())),
        Request::DeadLetters(_, reply) => Held::Letters(reply, Err(error())),
        Request::DeadDeliveries(_, reply) => Held::Dead(reply, Err(error())),
        Request::DedupeIsDone { reply, .. } => Held::Bool(reply, Err(error())),
        Request::Purge { reply, .. } => Held::Count(reply, Err(error())),
        Request::OldestPending(reply) => Held::Text(reply, Err(error())),
        Request::Close(_) => unreachable!("handled by the caller"),
    }
}

fn apply(tx: &Transaction<'_>, request: Request) -> Held {
    match request {
        Request::Append(delivery, reply) => {
            let added = delivery.events.len() as u64;
            let result = append(tx, delivery);
            let added = match &result {
                Ok(AppendOutcome::Stored(_)) => added,
                _ => 0,
            };
            Held::Append(reply, result, added)
        }
        Request::AppendMalformed(delivery, reply) => {
            let result = tx
                .execute(
                    "INSERT INTO dead_deliveries (key, received_at, request_id, reason, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        delivery.key,
                        rfc3339(delivery.received_at),
                        delivery.request_id,
                        delivery.reason,
                        delivery.body
                    ],
                )
                .map(|_| ())
                .map_err(JournalError::from);
            Held::Unit(reply, result, 0)
        }
        Request::Due {
            now_ms,
            limit,
            reply,
        } => Held::Due(reply, due(tx, now_ms, limit)),
        Request::Complete(id, reply) => {
            let result = tx
                .execute(
                    "DELETE FROM events WHERE id = ?1 AND state = 'pending'",
                    params![id],
                )
                .map_err(JournalError::from);
            let change = match result {
                Ok(n) => -(n as i64),
                Err(_) => 0,
            };
            Held::Unit(reply, result.map(|_| ()), change)
        }
        Request::Reschedule {
            id,
            attempts,
            next_ms,
            error,
            sinks_done,
            reply,
        } => {
            let result = tx
                .execute(
                    "UPDATE events SET attempts = ?2, next_attempt_unix_ms = ?3,
                        last_error = COALESCE(?4, last_error), sinks_done = ?5
                     WHERE id = ?1 AND state = 'pending'",
                    params![id, attempts, next_ms, error, sinks_done],
                )
                .map(|_| ())
                .map_err(JournalError::from);
            Held::Unit(reply, result, 0)
        }
        Request::DeadLetter {
            id,
            attempts,
            error,
            failed_sinks,
            sinks_done,
            reply,
        } => {
            let result = tx
                .execute(
                    "UPDATE events SET state = 'dead', attempts = ?2, last_error = ?3,
                        failed_sinks = ?4, sinks_done = ?5, dead_at = ?6
                     WHERE id = ?1 AND state = 'pending'",
                    params![
                        id,
                        attempts,
                        error,
                        failed_sinks,
                        sinks_done,
                        rfc3339(Utc::now())
                    ],
                )
                .map_err(JournalError::from);
            let change = match result {
                Ok(n) => -(n as i64),
                Err(_) => 0,
            };
            Held::Unit(reply, result.map(|_| ()), change)
        }
        Request::DeadLetters(limit, reply) => Held::Letters(reply, dead_letters(tx, limit)),
        Request::DeadDeliveries(limit, reply) => Held::Dead(reply, dead_deliveries(tx, limit)),
        Request::DedupeIsDone { key, now_ms, reply } => {
            let result = tx
                .query_row(
                    "SELECT 1 FROM dedupe_done WHERE key = ?1 AND expires_unix_ms > ?2",
                    params![key, now_ms],
                    |_| Ok(()),
                )
                .optional()
                .map(|found| found.is_some())
                .map_err(JournalError::from);
            Held::Bool(reply, result)
        }
        Request::DedupeMarkDone {
            key,
            expires_ms,
            reply,
        } => {
            let result = tx
                .execute(
                    "INSERT INTO dedupe_done (key, expires_unix_ms) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET expires_unix_ms = excluded.expires_unix_ms",
                    params![key, expires_ms],
                )
                .map(|_| ())
                .map_err(JournalError::from);
            Held::Unit(reply, result, 0)
        }
        Request::Probe(reply) => {
            let result = tx
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('probe', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![rfc3339(Utc::now())],
                )
                .map(|_| ())
                .map_err(JournalError::from);
            Held::Unit(reply, result, 0)
        }
        Request::OldestPending(reply) => {
            let result = tx
                .query_row(
                    "SELECT received_at FROM events WHERE state = 'pending' ORDER BY seq LIMIT 1",
                    [],
                    |row| row.get::<_, String>(0),
                )
                .optional()
                .map_err(JournalError::from);
            Held::Text(reply, result)
        }
        Request::Purge {
            deliveries_before_ms,
            now_ms,
            reply,
        } => {
            let result = (|| {
                let deliveries = tx.execute(
                    "DELETE FROM deliveries WHERE received_unix_ms < ?1",
                    params![deliveries_before_ms],
                )?;
                let marks = tx.execute(
                    "DELETE FROM dedupe_done WHERE expires_unix_ms <= ?1",
                    params![now_ms],
                )?;
                Ok::<_, rusqlite::Error>((deliveries + marks) as u64)
            })()
            .map_err(JournalError::from);
            Held::Count(reply, result)
        }
        Request::Close(_) => unreachable!("handled by the caller"),
    }
}

fn append(tx: &Transaction<'_>, delivery: NewDelivery) -> Result<AppendOutcome, JournalError> {
    let received_at = rfc3339(delivery.received_at);
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO deliveries
            (key, webhook_id, received_at, received_unix_ms, event_count, key_derived)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            delivery.key,
            delivery.webhook_id,
            received_at,
            delivery.received_at.timestamp_millis(),
            delivery.events.len() as i64,
            delivery.key_derived
        ],
    )?;
    if inserted == 0 {
        return Ok(AppendOutcome::Duplicate);
    }
    let mut statement = tx.prepare_cached(
        "INSERT INTO events
            (id, delivery_key, idx, webhook_id, event_type, received_at, request_id, event)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut stored = Vec::with_capacity(delivery.events.len());
    for (index, event) in delivery.events.into_iter().enumerate() {
        let id = crate::event::event_id(&delivery.key, index);
        statement.execute(params![
            id,
            delivery.key,
            index as i64,
            delivery.webhook_id,
            event.event_type,
            received_at,
            delivery.request_id,
            event.raw
        ])?;
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
    Ok(AppendOutcome::Stored(stored))
}

fn due(
    tx: &Transaction<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<JournaledEvent>, JournalError> {
    let mut statement = tx.prepare_cached(
        "SELECT id, delivery_key, idx, webhook_id, event_type, received_at, request_id, event,
                attempts, sinks_done
         FROM events
         WHERE state = 'pending' AND next_attempt_unix_ms <= ?1
         ORDER BY seq LIMIT ?2",
    )?;
    let rows = statement.query_map(params![now_ms, limit as i64], |row| {
        Ok(JournaledEvent {
            id: row.get(0)?,
            delivery_key: row.get(1)?,
            index: row.get(2)?,
            webhook_id: row.get(3)?,
            event_type: row.get(4)?,
            received_at: row.get(5)?,
            request_id: row.get(6)?,
            raw: row.get(7)?,
            attempts: row.get(8)?,
            sinks_done: parse_list(&row.get::<_, String>(9)?),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn dead_letters(tx: &Transaction<'_>, limit: usize) -> Result<Vec<DeadLetter>, JournalError> {
    let mut statement = tx.prepare_cached(
        "SELECT id, event_type, delivery_key, received_at, attempts, last_error, failed_sinks,
                dead_at
         FROM events WHERE state = 'dead' ORDER BY seq LIMIT ?1",
    )?;
    let rows = statement.query_map(params![limit as i64], |row| {
        Ok(DeadLetter {
            id: row.get(0)?,
            event_type: row.get(1)?,
            delivery_key: row.get(2)?,
            received_at: row.get(3)?,
            attempts: row.get(4)?,
            last_error: row.get(5)?,
            failed_sinks: parse_list(&row.get::<_, String>(6)?),
            dead_at: row.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn dead_deliveries(tx: &Transaction<'_>, limit: usize) -> Result<Vec<DeadDelivery>, JournalError> {
    let mut statement = tx.prepare_cached(
        "SELECT seq, key, received_at, reason, length(body)
         FROM dead_deliveries ORDER BY seq LIMIT ?1",
    )?;
    let rows = statement.query_map(params![limit as i64], |row| {
        Ok(DeadDelivery {
            seq: row.get(0)?,
            key: row.get(1)?,
            received_at: row.get(2)?,
            reason: row.get(3)?,
            body_len: row.get::<_, i64>(4)? as usize,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ParsedEvent;

    fn delivery(key: &str, events: usize) -> NewDelivery {
        NewDelivery {
            key: key.to_string(),
            key_derived: false,
            webhook_id: Some("w".to_string()),
            received_at: Utc::now(),
            request_id: None,
            events: (0..events)
                .map(|i| ParsedEvent {
                    event_type: "record.updated".to_string(),
                    raw: format!("{{\"event_type\":\"record.updated\",\"n\":{i}}}"),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn appended_events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        let journal = SqliteJournal::open(&path).unwrap();
        let AppendOutcome::Stored(events) = journal.append(delivery("k1", 2)).await.unwrap() else {
            panic!("expected stored");
        };
        assert_eq!(events[1].id, "k1:1");
        journal.close().await;
        let journal = SqliteJournal::open(&path).unwrap();
        assert_eq!(journal.backlog(), 2);
        let due = journal.due(10).await.unwrap();
        assert_eq!(due, events);
    }

    #[tokio::test]
    async fn same_key_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&dir.path().join("j.sqlite3")).unwrap();
        assert!(matches!(
            journal.append(delivery("k", 1)).await.unwrap(),
            AppendOutcome::Stored(_)
        ));
        assert!(matches!(
            journal.append(delivery("k", 1)).await.unwrap(),
            AppendOutcome::Duplicate
        ));
        assert_eq!(journal.backlog(), 1);
    }

    #[tokio::test]
    async fn concurrent_appends_are_group_committed_and_all_answered() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&dir.path().join("j.sqlite3")).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let journal = journal.clone();
            tasks.push(tokio::spawn(async move {
                journal.append(delivery(&format!("k{i}"), 1)).await
            }));
        }
        for task in tasks {
            assert!(matches!(task.await.unwrap(), Ok(AppendOutcome::Stored(_))));
        }
        assert_eq!(journal.backlog(), 200);
        assert_eq!(journal.due(1000).await.unwrap().len(), 200);
    }

    #[tokio::test]
    async fn complete_reschedule_and_dead_letter_change_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&dir.path().join("j.sqlite3")).unwrap();
        journal.append(delivery("k", 3)).await.unwrap();
        journal.complete("k:0").await.unwrap();
        let later = Utc::now() + chrono::Duration::hours(1);
        journal
            .reschedule("k:1", 1, later, Some("boom"), &["a".to_string()])
            .await
            .unwrap();
        journal
            .dead_letter("k:2", 5, "gave up", &["b".to_string()], &[])
            .await
            .unwrap();
        assert_eq!(journal.backlog(), 1);
        assert!(
            journal.due(10).await.unwrap().is_empty(),
            "k:1 is not due yet"
        );
        let letters = journal.dead_letters(10).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].failed_sinks, vec!["b"]);
        assert_eq!(letters[0].last_error.as_deref(), Some("gave up"));
    }
}
