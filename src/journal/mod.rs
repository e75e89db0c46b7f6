//! The journal: the durable store of accepted deliveries, between ingress and the worker.
//!
//! In: verified deliveries from ingress (`append`), outcomes from the worker (`complete`,
//! `reschedule`, `retry_sinks`, `dead_letter_sinks`), replays from `dead-letters replay`. Out:
//! events due for processing (`due`), dead letters, the backlog size, and the event history
//! (delivered events stay, delivered, for `storage.history`: see [`history`]). Ingress answers
//! 2xx only after `append` returned, so nothing acknowledged lives only in memory.
//!
//! Every backend keeps one contract, [`Backend`]; [`Journal`] hands each call to the one in use.
//! The embedded backend is SQLite ([`SqliteJournal`]: its writer thread in `embedded`, its SQL
//! in `sqlite`, and the redo log that lets the daemon's writer commit many batches at once in
//! `redo`); the scale-out backend is a Redis stream read through one
//! consumer group by every replica ([`redis`], its scripts in `redis_scripts`). Both write their
//! fields through one codec (`codec`); the embedded journal's file lock is [`JournalLock`].

mod backend;
mod codec;
mod embedded;
pub mod history;
mod lock;
pub(crate) mod redis;
pub(crate) mod redis_persistence;
mod redis_scripts;
mod redo;
pub(crate) mod repair;
mod sqlite;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::ParsedEvent;

use self::history::{
    AttemptRecord, EventDetail, EventPage, HistoryQuery, Retention, UnparsedDelivery,
    UnparsedSummary,
};

pub use self::backend::Backend;
pub use self::embedded::SqliteJournal;
pub(crate) use self::lock::JournalLock;
pub use self::redis::RedisJournal;

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage error: {0}")]
    Storage(String),
    /// SQLite says the embedded journal's file is damaged (corrupt or not a database).
    #[error(
        "the journal {path} is damaged (SQLite: {cause}); nothing was changed. \
         `attio-webhooks journal check` shows what SQLite finds wrong; `attio-webhooks journal \
         recover` moves the damaged file aside (kept as it is) and keeps every event that can \
         still be read in a new journal, which the next start processes (see docs/cli.md, \
         \"Damaged journal\")"
    )]
    Damaged { path: String, cause: String },
    #[error("journal is closed")]
    Closed,
    #[error("backlog is full ({backlog} pending events, limit {limit})")]
    BacklogFull { backlog: u64, limit: u64 },
}

impl From<rusqlite::Error> for JournalError {
    fn from(error: rusqlite::Error) -> Self {
        JournalError::Storage(error.to_string())
    }
}

/// A verified delivery, as ingress hands it to the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub key: String,
    pub key_derived: bool,
    pub webhook_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub events: Vec<ParsedEvent>,
}

/// A correctly signed body that is not a delivery, kept for inspection.
#[derive(Debug, Clone)]
pub struct MalformedDelivery {
    pub key: Option<String>,
    pub received_at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub reason: String,
    pub body: Vec<u8>,
}

/// One journaled event, as the worker processes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledEvent {
    pub id: String,
    pub(crate) delivery_key: String,
    pub(crate) index: u32,
    pub(crate) webhook_id: Option<String>,
    pub event_type: String,
    /// RFC 3339, when the delivery was accepted.
    pub(crate) received_at: String,
    pub(crate) request_id: Option<String>,
    /// The event's JSON exactly as Attio sent it.
    pub raw: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Sinks that already received this event (they are not repeated on a retry).
    pub sinks_done: Vec<String>,
    /// Failed attempts per sink so far (sinks not listed have not failed).
    pub sink_attempts: BTreeMap<String, u32>,
}

/// Where one event stands with its sinks after an attempt on which some sink failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkProgress {
    /// Attempts on which some sink failed, this one included.
    pub attempts: u32,
    pub last_error: String,
    pub sinks_done: Vec<String>,
    pub sink_attempts: BTreeMap<String, u32>,
    /// Sinks that failed on this attempt.
    pub sinks_failed: Vec<String>,
}

/// Which dead letters to list.
#[derive(Debug, Clone)]
pub struct DeadLetterQuery {
    /// Only events that failed on this sink.
    pub sink: Option<String>,
    /// Only this event type, or a family written `record.*`.
    pub event_type: Option<String>,
    pub limit: usize,
}

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub enum ReplaySelection {
    All,
    Ids(Vec<String>),
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Events put back to pending, due at once.
    pub replayed: Vec<String>,
    /// Events left alone, with the reason.
    pub skipped: Vec<SkippedReplay>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedReplay {
    pub id: String,
    pub reason: String,
}

/// One stored event with everything the journal knows about it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub(crate) id: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub(crate) event_type: String,
    pub(crate) delivery_key: String,
    pub(crate) webhook_id: Option<String>,
    pub(crate) received_at: String,
    pub(crate) request_id: Option<String>,
    pub(crate) attempts: u32,
    pub last_error: Option<String>,
    pub sinks_done: Vec<String>,
    pub(crate) sink_attempts: BTreeMap<String, u32>,
    pub failed_sinks: Vec<String>,
    pub(crate) dead_at: Option<String>,
    /// The event's JSON exactly as Attio sent it.
    pub event: Box<serde_json::value::RawValue>,
}

#[derive(Debug)]
pub enum AppendOutcome {
    /// Newly stored; these events are pending.
    Stored(Vec<JournaledEvent>),
    /// The delivery key was journaled before: nothing stored.
    Duplicate,
}

/// An event that used up its attempts.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub event_type: String,
    pub delivery_key: String,
    pub(crate) received_at: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub failed_sinks: Vec<String>,
    pub dead_at: Option<String>,
    /// Sinks that did receive the event (a replay does not repeat them).
    pub sinks_done: Vec<String>,
    /// Failed attempts per sink.
    pub sink_attempts: BTreeMap<String, u32>,
}

/// Which unparsed deliveries to delete.
#[derive(Debug, Clone)]
pub enum UnparsedSelection {
    All,
    Ids(Vec<i64>),
}

/// The journal backends (`queue.backend`).
#[derive(Clone)]
pub enum Journal {
    Sqlite(SqliteJournal),
    Redis(RedisJournal),
}

/// Hands a call to the backend in use: `on_backend!(self, backend => backend.probe().await)`.
macro_rules! on_backend {
    ($journal:expr, $backend:ident => $call:expr) => {
        match $journal {
            Journal::Sqlite($backend) => $call,
            Journal::Redis($backend) => $call,
        }
    };
}

/// Every operation of the [`Backend`] contract, handed to the backend in use (their documents are
/// on [`Backend`]).
impl Journal {
    /// Whether ingress hands freshly stored events straight to this process's worker. The
    /// embedded journal does (the worker skips the journal for them). The Redis journal does not:
    /// an event must be read through the consumer group so that a crash of this replica leaves it
    /// pending for another; ingress only wakes the worker up.
    pub(crate) fn hands_off_directly(&self) -> bool {
        on_backend!(self, backend => backend.hands_off_directly())
    }

    /// The backend's name, for logs and readiness.
    pub(crate) fn name(&self) -> &'static str {
        on_backend!(self, backend => backend.name())
    }

    pub async fn append(&self, delivery: NewDelivery) -> Result<AppendOutcome, JournalError> {
        on_backend!(self, backend => backend.append(delivery).await)
    }

    pub async fn append_malformed(&self, delivery: MalformedDelivery) -> Result<(), JournalError> {
        on_backend!(self, backend => backend.append_malformed(delivery).await)
    }

    pub async fn due(&self, limit: usize) -> Result<Vec<JournaledEvent>, JournalError> {
        on_backend!(self, backend => backend.due(limit).await)
    }

    /// The event is delivered; it stays in the history (`storage.history`) with `record`.
    pub async fn complete(&self, id: &str, record: AttemptRecord) -> Result<(), JournalError> {
        on_backend!(self, backend => backend.complete(id, record).await)
    }

    /// Puts the event `id` back for a later attempt, its attempts and sinks done as in
    /// `progress`.
    pub async fn reschedule(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        on_backend!(self, backend => backend.reschedule(id, progress, next_attempt_at, error).await)
    }

    /// Records a failed attempt: the event is due again at `next_attempt_at` for the sinks
    /// that are neither done nor failed for good.
    pub async fn retry_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: DateTime<Utc>,
        record: &AttemptRecord,
    ) -> Result<(), JournalError> {
        on_backend!(self, backend => {
            backend
                .retry_sinks(id, progress, next_attempt_at, record)
                .await
        })
    }

    /// Moves the event to the dead letters, recording which sinks failed and why.
    pub async fn dead_letter_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        record: &AttemptRecord,
    ) -> Result<(), JournalError> {
        on_backend!(self, backend => backend.dead_letter_sinks(id, progress, record).await)
    }

    /// Dead letters matching `query`, oldest first.
    pub async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>, JournalError> {
        on_backend!(self, backend => backend.list_dead_letters(query).await)
    }

    /// The oldest `limit` dead letters.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, JournalError> {
        on_backend!(self, backend => backend.dead_letters(limit).await)
    }

    /// One event still in the journal (pending or dead), with its stored JSON.
    pub async fn event(&self, id: &str) -> Result<Option<StoredEvent>, JournalError> {
        on_backend!(self, backend => backend.event(id).await)
    }

    /// Puts dead letters back to pending with their attempts reset, due at once. With `sink`,
    /// only events that failed on that sink, and only that sink is tried again (the others are
    /// marked done). `delivered_too`: named delivered events are replayed as well, to every
    /// sink again, or with `sink` to that one only (the caller clears their done marks in the
    /// dedupe store first).
    pub async fn replay(
        &self,
        selection: &ReplaySelection,
        sink: Option<&str>,
        delivered_too: bool,
    ) -> Result<ReplayReport, JournalError> {
        on_backend!(self, backend => backend.replay(selection, sink, delivered_too).await)
    }

    /// Events kept in the history matching `query`, newest first.
    pub async fn history(&self, query: &HistoryQuery) -> Result<EventPage, JournalError> {
        on_backend!(self, backend => backend.history(query).await)
    }

    /// Everything kept about one event (`None`: unknown, or older than the history window).
    pub async fn history_event(&self, id: &str) -> Result<Option<EventDetail>, JournalError> {
        on_backend!(self, backend => backend.history_event(id).await)
    }

    /// Unparsed deliveries (signed bodies that were not deliveries), newest first; `before`: a
    /// previous page's last id.
    pub async fn unparsed(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<UnparsedSummary>, JournalError> {
        on_backend!(self, backend => backend.unparsed(limit, before).await)
    }

    /// One unparsed delivery with its raw body, for inspection (`unparsed show`, the API, the
    /// console).
    pub async fn unparsed_delivery(
        &self,
        id: i64,
    ) -> Result<Option<UnparsedDelivery>, JournalError> {
        on_backend!(self, backend => backend.unparsed_delivery(id).await)
    }

    /// Deletes unparsed deliveries once they have been looked at; returns the ones deleted (an
    /// id that is not there is left out).
    pub async fn delete_unparsed(
        &self,
        selection: &UnparsedSelection,
    ) -> Result<Vec<i64>, JournalError> {
        on_backend!(self, backend => backend.delete_unparsed(selection).await)
    }

    /// Pending events (accepted, not yet done nor dead).
    pub fn backlog(&self) -> u64 {
        on_backend!(self, backend => backend.backlog())
    }

    /// How long the oldest pending event has waited, if any is pending.
    pub async fn oldest_pending_age(&self) -> Result<Option<std::time::Duration>, JournalError> {
        on_backend!(self, backend => backend.oldest_pending_age().await)
    }

    /// A write that proves the journal accepts data, for readiness.
    pub async fn probe(&self) -> Result<(), JournalError> {
        on_backend!(self, backend => backend.probe().await)
    }

    /// Forgets delivery keys older than `keep` and history older than `retention`, so the
    /// journal does not grow without bound.
    pub async fn purge(
        &self,
        keep: std::time::Duration,
        retention: Retention,
    ) -> Result<u64, JournalError> {
        on_backend!(self, backend => backend.purge(keep, retention).await)
    }

    /// Stops the writer after everything queued so far is committed.
    pub async fn close(&self) {
        on_backend!(self, backend => backend.close().await)
    }
}

/// A delivery `key` of `events` `record.updated` events, for the backends' own tests.
#[cfg(test)]
pub(crate) fn test_delivery(key: &str, events: usize) -> NewDelivery {
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

/// Decides what replaying one event means, for every backend alike. `state`, `failed` and
/// `done` are what the journal holds for it; `sink` limits the replay to one sink; `named` says
/// the caller listed this id (rather than `--all`); `delivered_too` lets a delivered event be
/// replayed (to every sink again, or to `sink` only). Returns the sinks to count as done when
/// the event goes back to pending, or why it is skipped (`None`: skipped without a word, as an
/// `--all --sink` replay passes over events that did not fail on that sink).
pub(crate) fn plan_replay(
    state: Option<&str>,
    failed: Vec<String>,
    mut done: Vec<String>,
    sink: Option<&str>,
    named: bool,
    delivered_too: bool,
) -> Result<Vec<String>, Option<String>> {
    match state {
        Some("dead") => {}
        Some("delivered") if delivered_too => {
            return match sink {
                None => Ok(Vec::new()),
                Some(sink) if done.iter().any(|d| d == sink) => {
                    done.retain(|d| d != sink);
                    Ok(done)
                }
                Some(sink) => Err(Some(format!(
                    "was not delivered to sink {sink:?} (delivered to: {})",
                    done.join(", ")
                ))),
            };
        }
        Some(state) => return Err(Some(format!("not a dead letter (it is {state})"))),
        None => {
            return Err(Some(
                "not in the journal (unknown, or older than storage.history)".to_string(),
            ))
        }
    }
    if let Some(sink) = sink {
        if !failed.iter().any(|f| f == sink) {
            return Err(named.then(|| {
                format!(
                    "did not fail on sink {sink:?} (failed: {})",
                    failed.join(", ")
                )
            }));
        }
        // Only `sink` is tried again: every other sink that failed counts as done.
        for other in failed.into_iter().filter(|f| f != sink) {
            if !done.contains(&other) {
                done.push(other);
            }
        }
    }
    Ok(done)
}
