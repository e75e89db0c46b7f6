//! The embedded journal's SQL: its schema and the migration of older databases, and one function
//! per operation over a transaction (or, for the history, the reader's connection).
//!
//! In: the operation's values, inside the transaction the writer thread (`journal::embedded`)
//! opened for its batch. Out: rows changed or read, decoded into the journal's types. Nothing here
//! commits, waits or answers a caller: group commit, backlog accounting and replies are the
//! writer's.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::codec::{
    json_list, json_map, json_texts, kept_data_json, parse_list, parse_map, parse_texts, rfc3339,
    stored_event_json,
};
use super::history::{
    AttemptRecord, EventDetail, EventPage, EventStatus, EventSummary, HistoryQuery, StoredSinks,
    UnparsedDelivery, UnparsedSummary,
};
use super::{
    AppendOutcome, DeadLetter, DeadLetterQuery, JournalError, JournaledEvent, MalformedDelivery,
    NewDelivery, ReplayReport, ReplaySelection, SinkProgress, SkippedReplay, StoredEvent,
    UnparsedSelection,
};

pub(super) mod deferred;

/// Rows the purge deletes per transaction.
pub(super) const PURGE_BATCH: usize = 5000;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,
    webhook_id TEXT,
    received_at TEXT NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    key_derived INTEGER NOT NULL DEFAULT 0
);
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
    dead_at TEXT,
    sink_attempts TEXT NOT NULL DEFAULT '{}',
    received_unix_ms INTEGER NOT NULL DEFAULT 0,
    enrichment TEXT,
    object TEXT,
    list TEXT,
    record_id TEXT,
    data TEXT,
    data_omitted INTEGER NOT NULL DEFAULT 0,
    sink_errors TEXT NOT NULL DEFAULT '{}',
    sinks_delivered TEXT NOT NULL DEFAULT '{}',
    delivered_at TEXT
);
CREATE TABLE IF NOT EXISTS dead_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT,
    received_at TEXT NOT NULL,
    request_id TEXT,
    reason TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

/// Columns added since the first release, with their declarations: an older database gains them
/// when it is opened.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("sink_attempts", "TEXT NOT NULL DEFAULT '{}'"),
    ("received_unix_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("enrichment", "TEXT"),
    ("object", "TEXT"),
    ("list", "TEXT"),
    ("record_id", "TEXT"),
    ("data", "TEXT"),
    ("data_omitted", "INTEGER NOT NULL DEFAULT 0"),
    ("sink_errors", "TEXT NOT NULL DEFAULT '{}'"),
    ("sinks_delivered", "TEXT NOT NULL DEFAULT '{}'"),
    ("delivered_at", "TEXT"),
];

/// The backlog: how many events are pending.
pub(super) const COUNT_PENDING: &str =
    "SELECT COUNT(*) FROM events WHERE state <> 'delivered' AND state = 'pending'";

/// When the oldest pending event was received.
pub(super) const OLDEST_PENDING: &str = "SELECT received_at FROM events
     WHERE state <> 'delivered' AND state = 'pending' ORDER BY seq LIMIT 1";

/// The pending events due by ?1 (unix ms), oldest first, at most ?2.
pub(super) const DUE: &str =
    "SELECT id, delivery_key, idx, webhook_id, event_type, received_at, request_id, event,
            attempts, sinks_done, sink_attempts
     FROM events
     WHERE state = 'pending' AND next_attempt_unix_ms <= ?1
     ORDER BY seq LIMIT ?2";

/// The dead letters, oldest first: ?1 only those of a sink, ?2 of an event type, ?3 of types
/// starting so; at most ?4.
pub(super) const DEAD_LETTERS: &str =
    "SELECT id, event_type, delivery_key, received_at, attempts, last_error, failed_sinks,
            dead_at, sinks_done, sink_attempts
     FROM events
     WHERE state <> 'delivered' AND state = 'dead'
       AND (?1 IS NULL OR EXISTS (SELECT 1 FROM json_each(failed_sinks) WHERE value = ?1))
       AND (?2 IS NULL OR event_type = ?2)
       AND (?3 IS NULL OR substr(event_type, 1, length(?3)) = ?3)
     ORDER BY seq LIMIT ?4";

/// Indexes (after the columns exist). Both hold only the events that are not delivered: a
/// finished event leaves them (one deletion each) rather than moving to another place in them,
/// and they stay as small as the backlog and the dead letters, whatever the history keeps. A
/// query uses one only when its WHERE clause repeats the index's condition literally (SQLite's
/// rule for partial indexes), so the queries on them say `state <> 'delivered'` or
/// `state = 'pending'` in so many words.
/// - `events_pending_due`: the pending events by when they are due, for the worker's scan.
/// - `events_open`: the events not delivered by state, oldest first, for the backlog, the dead
///   letters and the history's pending, retrying and dead filters. The history of delivered
///   events walks the table itself newest first (most rows are delivered).
///
/// `q` looks an id, delivery key (a range of ids) or record id up directly. The record id is only
/// set when an attempt finished, so its index costs ingress nothing. Delivery keys have no index
/// by age (one B-tree less for every delivery): they are stored in the order they are received,
/// so the purge takes them from the front (rowid order). The indexes of earlier versions that
/// held every event are dropped.
const HISTORY_INDEXES: &str = r#"
DROP INDEX IF EXISTS events_due;
DROP INDEX IF EXISTS events_state_seq;
DROP INDEX IF EXISTS deliveries_age;
CREATE INDEX IF NOT EXISTS events_pending_due ON events(state, next_attempt_unix_ms, seq)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS events_open ON events(state, seq) WHERE state <> 'delivered';
CREATE INDEX IF NOT EXISTS events_record_id ON events(record_id) WHERE record_id IS NOT NULL;
"#;

/// Reads what an existing journal holds (the schema, the pending events through their index),
/// so that damage there is found before the first write.
pub(super) fn read_existing(connection: &Connection) -> Result<(), rusqlite::Error> {
    let has_events = connection
        .prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'events'")?
        .exists([])?;
    if has_events {
        connection.query_row(
            "SELECT COUNT(*), MAX(seq) FROM events WHERE state <> 'delivered' AND state = 'pending'",
            [],
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// SQLite's corruption errors become [`JournalError::Damaged`], naming the file.
pub(super) fn damaged_or_storage(error: rusqlite::Error, path: &Path) -> JournalError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match error.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => JournalError::Damaged {
            path: path.display().to_string(),
            cause: error.to_string(),
        },
        _ => JournalError::Storage(format!("journal {}: {error}", path.display())),
    }
}

/// Brings a database made by an older version up to this schema, and gives it its journal id:
/// a fresh one when the database is new, or when it is not the file (`file`, see
/// [`file_identity`]) the id was made in. A copy that kept its original's id would take over the
/// original's Redis claims as if it were the original's killed predecessor, and the original
/// would take over the copy's.
pub(super) fn migrate(connection: &mut Connection, file: &str) -> Result<(), JournalError> {
    // IMMEDIATE: two processes opening an old database at once must not both add the column.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (column, declaration) in ADDED_COLUMNS {
        let present = tx
            .prepare_cached("SELECT 1 FROM pragma_table_info('events') WHERE name = ?1")?
            .exists(params![column])?;
        if !present {
            tx.execute_batch(&format!(
                "ALTER TABLE events ADD COLUMN {column} {declaration}"
            ))?;
        }
    }
    tx.execute_batch(HISTORY_INDEXES)?;
    let made_in: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'journal_file'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if made_in.is_some_and(|made_in| made_in != file) {
        tracing::warn!(
            "the journal is a copy of another file (copied or restored); it takes a journal id \
             of its own, so the original's Redis claims wait out their lease"
        );
        tx.execute("DELETE FROM meta WHERE key = 'journal_id'", [])?;
    }
    tx.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', ?1)",
        params![uuid::Uuid::new_v4().simple().to_string()],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('journal_file', ?1)",
        params![file],
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn count_pending(connection: &Connection) -> Result<u64, JournalError> {
    let pending: i64 = connection.query_row(COUNT_PENDING, [], |row| row.get(0))?;
    Ok(pending.max(0) as u64)
}

/// Changes whenever another connection commits to the database.
pub(super) fn data_version(connection: &Connection) -> Result<i64, JournalError> {
    Ok(connection.query_row("PRAGMA data_version", [], |row| row.get(0))?)
}

/// Keeps a signed body that is not a delivery.
pub(super) fn append_malformed(
    tx: &Transaction<'_>,
    delivery: &MalformedDelivery,
) -> Result<(), JournalError> {
    exec(
        tx,
        "INSERT INTO dead_deliveries (key, received_at, request_id, reason, body)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            delivery.key,
            rfc3339(delivery.received_at),
            delivery.request_id,
            delivery.reason,
            delivery.body
        ],
    )?;
    Ok(())
}

/// Marks a pending event delivered; returns how many rows changed (0 when it is no longer
/// pending).
pub(super) fn complete(
    tx: &Transaction<'_>,
    id: &str,
    delivered_at: DateTime<Utc>,
    record: &AttemptRecord,
) -> Result<usize, JournalError> {
    // The event stays, delivered, for the history: this update is the write that used
    // to delete it, so keeping history costs no second write.
    let completed = exec(
        tx,
        "UPDATE events SET state = 'delivered', delivered_at = ?2, sinks_done = ?3,
                failed_sinks = '[]', enrichment = COALESCE(?4, enrichment),
                object = COALESCE(?5, object), list = COALESCE(?6, list),
                record_id = COALESCE(?7, record_id), data = ?8, data_omitted = ?9,
                sink_errors = json_patch(sink_errors, ?10),
                sinks_delivered = json_patch(sinks_delivered, ?11)
             WHERE id = ?1 AND state = 'pending'",
        params![
            id,
            rfc3339(delivered_at),
            json_list(&record.sinks_done),
            record.enrichment,
            record.object,
            record.list,
            record.record_id,
            record.data,
            record.data_omitted,
            json_texts(&record.sink_errors),
            json_texts(&record.sinks_delivered),
        ],
    )?;
    Ok(completed)
}

/// Puts a pending event back for a later attempt.
pub(super) fn reschedule(
    tx: &Transaction<'_>,
    id: &str,
    attempts: u32,
    next_ms: i64,
    error: Option<&str>,
    sinks_done: &[String],
) -> Result<(), JournalError> {
    exec(
        tx,
        "UPDATE events SET attempts = ?2, next_attempt_unix_ms = ?3,
                last_error = COALESCE(?4, last_error), sinks_done = ?5
             WHERE id = ?1 AND state = 'pending'",
        params![id, attempts, next_ms, error, json_list(sinks_done)],
    )?;
    Ok(())
}

/// The last redo-log record (`journal::redo`) whose change this database holds; 0 for none.
pub(super) fn redo_lsn(tx: &Transaction<'_>) -> Result<u64, JournalError> {
    let lsn = tx
        .query_row("SELECT value FROM meta WHERE key = 'redo_lsn'", [], |row| {
            row.get::<_, String>(0)
        })
        .optional()?;
    Ok(lsn.and_then(|text| text.parse().ok()).unwrap_or(0))
}

/// Records, in the transaction that holds their changes, the last redo-log record applied.
pub(super) fn set_redo_lsn(tx: &Transaction<'_>, lsn: u64) -> Result<(), JournalError> {
    exec(
        tx,
        "INSERT INTO meta (key, value) VALUES ('redo_lsn', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![lsn.to_string()],
    )?;
    Ok(())
}

/// The readiness write.
pub(super) fn probe(tx: &Transaction<'_>) -> Result<(), JournalError> {
    exec(
        tx,
        "INSERT INTO meta (key, value) VALUES ('probe', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![rfc3339(Utc::now())],
    )?;
    Ok(())
}

/// When the oldest pending event was received (RFC 3339), if any is pending.
pub(super) fn oldest_pending(tx: &Transaction<'_>) -> Result<Option<String>, JournalError> {
    let oldest = tx
        .query_row(OLDEST_PENDING, [], |row| row.get::<_, String>(0))
        .optional()?;
    Ok(oldest)
}

/// Runs one statement through the connection's statement cache: the hot statements run for
/// every delivery and event, and re-parsing them each time shows up in profiles.
fn exec(tx: &Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// Records the delivery's key; 0 when it is known already (a duplicate delivery).
fn insert_delivery(
    tx: &Transaction<'_>,
    delivery: &NewDelivery,
    received_at: &str,
) -> rusqlite::Result<usize> {
    exec(
        tx,
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
    )
}

pub(super) fn append(
    tx: &Transaction<'_>,
    delivery: NewDelivery,
) -> Result<AppendOutcome, JournalError> {
    let received_at = rfc3339(delivery.received_at);
    if insert_delivery(tx, &delivery, &received_at)? == 0 {
        return Ok(AppendOutcome::Duplicate);
    }
    // An event already kept (its delivery key was forgotten after `dedupe.done_ttl` while the
    // event stayed in the history) is not stored nor processed again.
    let mut statement = tx.prepare_cached(
        "INSERT INTO events
            (id, delivery_key, idx, webhook_id, event_type, received_at, request_id, event,
             received_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(id) DO NOTHING",
    )?;
    let received_ms = delivery.received_at.timestamp_millis();
    let mut stored = Vec::with_capacity(delivery.events.len());
    for (index, event) in delivery.events.into_iter().enumerate() {
        let id = crate::event::event_id(&delivery.key, index);
        let inserted = statement.execute(params![
            id,
            delivery.key,
            index as i64,
            delivery.webhook_id,
            event.event_type,
            received_at,
            delivery.request_id,
            event.raw,
            received_ms
        ])?;
        if inserted == 0 {
            continue;
        }
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
    Ok(AppendOutcome::Stored(stored))
}

pub(super) fn due(
    tx: &Transaction<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<JournaledEvent>, JournalError> {
    let mut statement = tx.prepare_cached(DUE)?;
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
            sink_attempts: parse_map(&row.get::<_, String>(10)?),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn dead_letter_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.get(0)?,
        event_type: row.get(1)?,
        delivery_key: row.get(2)?,
        received_at: row.get(3)?,
        attempts: row.get(4)?,
        last_error: row.get(5)?,
        failed_sinks: parse_list(&row.get::<_, String>(6)?),
        dead_at: row.get(7)?,
        sinks_done: parse_list(&row.get::<_, String>(8)?),
        sink_attempts: parse_map(&row.get::<_, String>(9)?),
    })
}

/// Returns how many rows changed (0 when the event is no longer pending).
pub(super) fn record_sinks(
    tx: &Transaction<'_>,
    id: &str,
    progress: &SinkProgress,
    next_ms: Option<i64>,
    record: &AttemptRecord,
) -> Result<usize, JournalError> {
    // The attempt's findings ride on the outcome's own update (?8..?15).
    const HISTORY: &str = "enrichment = COALESCE(?8, enrichment), object = COALESCE(?9, object),
        list = COALESCE(?10, list), record_id = COALESCE(?11, record_id), data = ?12,
        data_omitted = ?13, sink_errors = json_patch(sink_errors, ?14),
        sinks_delivered = json_patch(sinks_delivered, ?15)";
    let sql = match next_ms {
        Some(_) => format!(
            "UPDATE events SET attempts = ?2, next_attempt_unix_ms = ?3, last_error = ?4,
                sinks_done = ?5, sink_attempts = ?6, failed_sinks = ?7, {HISTORY}
             WHERE id = ?1 AND state = 'pending'"
        ),
        None => format!(
            "UPDATE events SET state = 'dead', dead_at = ?3, last_error = ?4, sinks_done = ?5,
                sink_attempts = ?6, failed_sinks = ?7, attempts = ?2, {HISTORY}
             WHERE id = ?1 AND state = 'pending'"
        ),
    };
    let third: rusqlite::types::Value = match next_ms {
        Some(next_ms) => next_ms.into(),
        None => rfc3339(Utc::now()).into(),
    };
    let changed = exec(
        tx,
        &sql,
        params![
            id,
            progress.attempts,
            third,
            progress.last_error,
            json_list(&progress.sinks_done),
            json_map(&progress.sink_attempts),
            json_list(&progress.sinks_failed),
            record.enrichment,
            record.object,
            record.list,
            record.record_id,
            record.data,
            record.data_omitted,
            json_texts(&record.sink_errors),
            json_texts(&record.sinks_delivered),
        ],
    )?;
    Ok(changed)
}

pub(super) fn list_dead_letters(
    tx: &Transaction<'_>,
    query: &DeadLetterQuery,
) -> Result<Vec<DeadLetter>, JournalError> {
    // `record.*` selects a family by prefix; anything else is an exact type.
    let (exact, family) = match query.event_type.as_deref() {
        Some(pattern) => match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') => (None, Some(prefix.to_string())),
            _ => (Some(pattern.to_string()), None),
        },
        None => (None, None),
    };
    let mut statement = tx.prepare_cached(DEAD_LETTERS)?;
    let rows = statement.query_map(
        params![
            query.sink,
            exact,
            family,
            query.limit.min(i64::MAX as usize) as i64
        ],
        dead_letter_row,
    )?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn stored_event(
    tx: &Transaction<'_>,
    id: &str,
) -> Result<Option<StoredEvent>, JournalError> {
    let found = tx
        .query_row(
            "SELECT id, state, event_type, delivery_key, webhook_id, received_at, request_id,
                    attempts, last_error, sinks_done, sink_attempts, failed_sinks, dead_at, event
             FROM events WHERE id = ?1",
            params![id],
            |row| {
                // A stored event that is not JSON is the journal's error, not SQLite's.
                let event = match stored_event_json(id, row.get(13)?) {
                    Ok(event) => event,
                    Err(error) => return Ok(Err(error)),
                };
                Ok(Ok(StoredEvent {
                    id: row.get(0)?,
                    state: row.get(1)?,
                    event_type: row.get(2)?,
                    delivery_key: row.get(3)?,
                    webhook_id: row.get(4)?,
                    received_at: row.get(5)?,
                    request_id: row.get(6)?,
                    attempts: row.get(7)?,
                    last_error: row.get(8)?,
                    sinks_done: parse_list(&row.get::<_, String>(9)?),
                    sink_attempts: parse_map(&row.get::<_, String>(10)?),
                    failed_sinks: parse_list(&row.get::<_, String>(11)?),
                    dead_at: row.get(12)?,
                    event,
                }))
            },
        )
        .optional()?;
    found.transpose()
}

/// (id, state if found, failed sinks, sinks done) of an event named for a replay.
type ReplayCandidate = (String, Option<String>, Vec<String>, Vec<String>);

pub(super) fn replay(
    tx: &Transaction<'_>,
    selection: &ReplaySelection,
    sink: Option<&str>,
    delivered_too: bool,
) -> Result<ReplayReport, JournalError> {
    let mut report = ReplayReport::default();
    let mut candidates: Vec<ReplayCandidate> = Vec::new();
    match selection {
        ReplaySelection::All => {
            let mut statement = tx.prepare_cached(
                "SELECT id, failed_sinks, sinks_done FROM events
                 WHERE state <> 'delivered' AND state = 'dead' ORDER BY seq",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Some("dead".to_string()),
                    parse_list(&row.get::<_, String>(1)?),
                    parse_list(&row.get::<_, String>(2)?),
                ))
            })?;
            for row in rows {
                candidates.push(row?);
            }
        }
        ReplaySelection::Ids(ids) => {
            let mut statement = tx.prepare_cached(
                "SELECT state, failed_sinks, sinks_done FROM events WHERE id = ?1",
            )?;
            for id in ids {
                let found = statement
                    .query_row(params![id], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            parse_list(&row.get::<_, String>(1)?),
                            parse_list(&row.get::<_, String>(2)?),
                        ))
                    })
                    .optional()?;
                match found {
                    Some((state, failed, done)) => {
                        candidates.push((id.clone(), Some(state), failed, done))
                    }
                    None => candidates.push((id.clone(), None, Vec::new(), Vec::new())),
                }
            }
        }
    }
    let mut update = tx.prepare_cached(
        "UPDATE events SET state = 'pending', attempts = 0, next_attempt_unix_ms = 0,
            sink_attempts = '{}', failed_sinks = '[]', dead_at = NULL, delivered_at = NULL,
            sinks_done = ?2
         WHERE id = ?1 AND state = ?3",
    )?;
    let named = matches!(selection, ReplaySelection::Ids(_));
    for (id, state, failed, done) in candidates {
        let plan = super::plan_replay(state.as_deref(), failed, done, sink, named, delivered_too);
        let done = match plan {
            Ok(done) => done,
            Err(reason) => {
                if let Some(reason) = reason {
                    report.skipped.push(SkippedReplay { id, reason });
                }
                continue;
            }
        };
        if update.execute(params![id, json_list(&done), state])? == 1 {
            report.replayed.push(id);
        }
    }
    Ok(report)
}

/// One purge step: forgotten delivery keys, then at most [`PURGE_BATCH`] delivered events
/// older than the history window (oldest first), dead letters and unparsed deliveries older than
/// theirs. Returns the rows deleted.
pub(super) fn purge_batch(
    tx: &Transaction<'_>,
    deliveries_before_ms: i64,
    history_before_ms: i64,
    dead_before: Option<&str>,
) -> rusqlite::Result<u64> {
    // The oldest keys first, by rowid (the order they were received in), as many of them as
    // are old enough: stops at the first younger one instead of reading every key.
    let mut deleted = exec(
        tx,
        "DELETE FROM deliveries WHERE rowid IN (
            SELECT rowid FROM deliveries ORDER BY rowid LIMIT ?2)
            AND rowid < COALESCE(
                (SELECT rowid FROM (SELECT rowid, received_unix_ms FROM deliveries
                                    ORDER BY rowid LIMIT ?2)
                 WHERE received_unix_ms >= ?1 LIMIT 1),
                9223372036854775807)",
        params![deliveries_before_ms, PURGE_BATCH as i64],
    )?;
    deleted += exec(
        tx,
        "DELETE FROM events WHERE seq IN (
            SELECT seq FROM events WHERE state = 'delivered' AND received_unix_ms < ?1
            ORDER BY seq LIMIT ?2)",
        params![history_before_ms, PURGE_BATCH as i64],
    )?;
    if let Some(dead_before) = dead_before {
        deleted += exec(
            tx,
            "DELETE FROM events WHERE seq IN (
                SELECT seq FROM events WHERE state <> 'delivered' AND state = 'dead'
                    AND dead_at < ?1 LIMIT ?2)",
            params![dead_before, PURGE_BATCH as i64],
        )?;
        deleted += exec(
            tx,
            "DELETE FROM dead_deliveries WHERE seq IN (
                SELECT seq FROM dead_deliveries WHERE received_at < ?1 ORDER BY seq LIMIT ?2)",
            params![dead_before, PURGE_BATCH as i64],
        )?;
    }
    Ok(deleted as u64)
}

/// A page of the history, newest first: one more row than the page is read to know whether
/// another page follows.
pub(super) fn history_page(
    connection: &Connection,
    query: &HistoryQuery,
) -> Result<EventPage, JournalError> {
    let size = query.page_size();
    let (clause, mut params) = query.sql();
    params.push(rusqlite::types::Value::Integer(size as i64 + 1));
    let sql = format!(
        "SELECT seq, id, event_type, state, received_at, attempts, object, list, delivery_key,
                last_error
         FROM events WHERE {clause} ORDER BY seq DESC LIMIT ?"
    );
    let mut statement = connection.prepare_cached(&sql)?;
    let rows = statement.query_map(rusqlite::params_from_iter(params), |row| {
        let state: String = row.get(3)?;
        let attempts: u32 = row.get(5)?;
        Ok(EventSummary {
            seq: row.get::<_, i64>(0)?.max(0) as u64,
            id: row.get(1)?,
            event_type: row.get(2)?,
            status: EventStatus::from_state(&state, attempts),
            received_at: row.get(4)?,
            attempts,
            object: row.get(6)?,
            list: row.get(7)?,
            delivery_key: row.get(8)?,
            last_error: row.get(9)?,
        })
    })?;
    let mut found = rows.collect::<Result<Vec<_>, _>>()?;
    let more = found.len() > size;
    found.truncate(size);
    Ok(EventPage::from_found(found, more))
}

pub(super) fn event_detail(
    connection: &Connection,
    id: &str,
) -> Result<Option<EventDetail>, JournalError> {
    let found = connection
        .prepare_cached(
            "SELECT id, event_type, state, delivery_key, webhook_id, request_id, received_at,
                    attempts, last_error, delivered_at, dead_at, object, list, record_id,
                    enrichment, event, data, data_omitted, sinks_done, failed_sinks,
                    sink_attempts, sink_errors, sinks_delivered
             FROM events WHERE id = ?1",
        )?
        .query_row(params![id], |row| {
            // A stored event that is not JSON is the journal's error, not SQLite's.
            let event = match stored_event_json(id, row.get(15)?) {
                Ok(event) => event,
                Err(error) => return Ok(Err(error)),
            };
            let state: String = row.get(2)?;
            let attempts: u32 = row.get(7)?;
            let status = EventStatus::from_state(&state, attempts);
            let sinks = StoredSinks {
                done: parse_list(&row.get::<_, String>(18)?),
                failed: parse_list(&row.get::<_, String>(19)?),
                attempts: parse_map(&row.get::<_, String>(20)?),
                errors: parse_texts(&row.get::<_, String>(21)?),
                delivered: parse_texts(&row.get::<_, String>(22)?),
            };
            Ok(Ok(EventDetail {
                id: row.get(0)?,
                event_type: row.get(1)?,
                status,
                delivery_key: row.get(3)?,
                webhook_id: row.get(4)?,
                request_id: row.get(5)?,
                received_at: row.get(6)?,
                attempts,
                last_error: row.get(8)?,
                delivered_at: row.get(9)?,
                dead_at: row.get(10)?,
                object: row.get(11)?,
                list: row.get(12)?,
                record_id: row.get(13)?,
                enrichment: row.get(14)?,
                event,
                data: kept_data_json(row.get(16)?),
                data_omitted: row.get(17)?,
                sinks: sinks.records(status),
            }))
        })
        .optional()?;
    found.transpose()
}

fn unparsed_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UnparsedSummary> {
    Ok(UnparsedSummary {
        id: row.get(0)?,
        key: row.get(1)?,
        received_at: row.get(2)?,
        request_id: row.get(3)?,
        reason: row.get(4)?,
        body_len: row.get::<_, i64>(5)?.max(0) as usize,
    })
}

pub(super) fn unparsed_list(
    connection: &Connection,
    limit: usize,
    before: Option<i64>,
) -> Result<Vec<UnparsedSummary>, JournalError> {
    let mut statement = connection.prepare_cached(
        "SELECT seq, key, received_at, request_id, reason, length(body)
         FROM dead_deliveries WHERE ?1 IS NULL OR seq < ?1 ORDER BY seq DESC LIMIT ?2",
    )?;
    let rows = statement.query_map(params![before, limit as i64], unparsed_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn unparsed_one(
    connection: &Connection,
    id: i64,
) -> Result<Option<UnparsedDelivery>, JournalError> {
    let found = connection
        .prepare_cached(
            "SELECT seq, key, received_at, request_id, reason, length(body), body
             FROM dead_deliveries WHERE seq = ?1",
        )?
        .query_row(params![id], |row| {
            Ok(UnparsedDelivery {
                summary: unparsed_row(row)?,
                body: row.get(6)?,
            })
        })
        .optional()?;
    Ok(found)
}

/// Deletes unparsed deliveries; returns the ids deleted (an id that is not there is left out).
pub(super) fn delete_unparsed(
    tx: &Transaction<'_>,
    selection: &UnparsedSelection,
) -> Result<Vec<i64>, JournalError> {
    match selection {
        UnparsedSelection::All => {
            let mut statement = tx.prepare("DELETE FROM dead_deliveries RETURNING seq")?;
            let mut deleted = statement
                .query_map([], |row| row.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            deleted.sort_unstable();
            Ok(deleted)
        }
        UnparsedSelection::Ids(seqs) => {
            let mut statement = tx.prepare_cached("DELETE FROM dead_deliveries WHERE seq = ?1")?;
            let mut deleted = Vec::new();
            for seq in seqs {
                if statement.execute(params![seq])? == 1 {
                    deleted.push(*seq);
                }
            }
            Ok(deleted)
        }
    }
}

#[cfg(test)]
mod tests;
