//! The contract every journal backend keeps: the operations [`super::Journal`] offers, each one
//! implemented once per backend (the embedded [`super::SqliteJournal`], the shared
//! [`super::RedisJournal`]).
//!
//! In: what ingress, the worker, the API, the console and the CLI ask of the journal. Out: the
//! same answers from either backend, which one test suite checks against both
//! (`tests/it/journal_contract.rs`). Adding an operation: a method here, its implementation in
//! each backend, and the line in `Journal` that hands it to the backend in use.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::history::{
    AttemptRecord, EventDetail, EventPage, HistoryQuery, Retention, UnparsedDelivery,
    UnparsedSummary,
};
use super::{
    AppendOutcome, DeadLetter, DeadLetterQuery, JournalError, JournaledEvent, MalformedDelivery,
    NewDelivery, ReplayReport, ReplaySelection, SinkProgress, StoredEvent, UnparsedSelection,
};

/// A journal backend. The futures are `Send`, so that callers may hold them across tasks.
pub trait Backend: Send + Sync {
    /// The backend's name, for logs and readiness.
    fn name(&self) -> &'static str;

    /// Whether ingress hands freshly stored events straight to this process's worker (see
    /// [`super::Journal::hands_off_directly`]).
    fn hands_off_directly(&self) -> bool;

    /// Stores a verified delivery, unless its key was stored before. Answers only once the
    /// delivery is durable.
    fn append(
        &self,
        delivery: NewDelivery,
    ) -> impl Future<Output = Result<AppendOutcome, JournalError>> + Send;

    /// Keeps a correctly signed body that is not a delivery, for inspection.
    fn append_malformed(
        &self,
        delivery: MalformedDelivery,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Up to `limit` pending events whose time has come, oldest first.
    fn due(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JournaledEvent>, JournalError>> + Send;

    /// The event is delivered; it stays in the history with `record` (taken: the embedded
    /// journal keeps it until its row is written).
    fn complete(
        &self,
        id: &str,
        record: AttemptRecord,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Puts the event back for a later attempt without a sink having failed (the worker defers
    /// it), with its attempts and the sinks done as they are in `progress`.
    fn reschedule(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Records a failed attempt: due again at `next_attempt_at` for the sinks not yet done.
    fn retry_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: DateTime<Utc>,
        record: &AttemptRecord,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Moves the event to the dead letters, recording which sinks failed and why.
    fn dead_letter_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        record: &AttemptRecord,
    ) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Dead letters matching `query`, oldest first.
    fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, JournalError>> + Send;

    /// The oldest `limit` dead letters.
    fn dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, JournalError>> + Send {
        let query = DeadLetterQuery {
            sink: None,
            event_type: None,
            limit,
        };
        async move { self.list_dead_letters(&query).await }
    }

    /// One event still in the journal (pending, delivered or dead), with its stored JSON.
    fn event(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<StoredEvent>, JournalError>> + Send;

    /// Puts dead letters (and with `delivered_too`, named delivered events) back to pending; see
    /// [`super::Journal::replay`].
    fn replay(
        &self,
        selection: &ReplaySelection,
        sink: Option<&str>,
        delivered_too: bool,
    ) -> impl Future<Output = Result<ReplayReport, JournalError>> + Send;

    /// Events kept in the history matching `query`, newest first.
    fn history(
        &self,
        query: &HistoryQuery,
    ) -> impl Future<Output = Result<EventPage, JournalError>> + Send;

    /// Everything kept about one event (`None`: unknown, or older than the history window).
    fn history_event(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<EventDetail>, JournalError>> + Send;

    /// Unparsed deliveries (signed bodies that were not deliveries), newest first; `before`: a
    /// previous page's last id.
    fn unparsed(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> impl Future<Output = Result<Vec<UnparsedSummary>, JournalError>> + Send;

    /// One unparsed delivery with its raw body.
    fn unparsed_delivery(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<Option<UnparsedDelivery>, JournalError>> + Send;

    /// Deletes unparsed deliveries once they have been looked at; returns the ids deleted, in
    /// ascending order for `All` (an id that is not there is left out).
    fn delete_unparsed(
        &self,
        selection: &UnparsedSelection,
    ) -> impl Future<Output = Result<Vec<i64>, JournalError>> + Send;

    /// Pending events (accepted, not yet done nor dead), as last known: cheap, no I/O.
    fn backlog(&self) -> u64;

    /// How long the oldest pending event has waited, if any is pending.
    fn oldest_pending_age(
        &self,
    ) -> impl Future<Output = Result<Option<Duration>, JournalError>> + Send;

    /// A write that proves the journal accepts data, for readiness.
    fn probe(&self) -> impl Future<Output = Result<(), JournalError>> + Send;

    /// Forgets delivery keys older than `keep` and history older than `retention`; returns how
    /// much it deleted.
    fn purge(
        &self,
        keep: Duration,
        retention: Retention,
    ) -> impl Future<Output = Result<u64, JournalError>> + Send;

    /// Stops after everything asked so far is done (and, for Redis, hands unfinished events
    /// back to the other replicas).
    fn close(&self) -> impl Future<Output = ()> + Send;
}
