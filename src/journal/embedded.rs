//! The embedded journal: one SQLite database (WAL; `synchronous=FULL` by default, see
//! `storage.sync`) under `storage.path`, and the thread that writes it.
//!
//! In: the [`Backend`] operations, from any task. Out: their answers, each sent only once what
//! it wrote is durable. The SQL itself is in `journal::sqlite`; this module owns the
//! connections, the writer thread and the handle.
//!
//! One writer thread owns the connection. Requests queue on a channel; the thread takes
//! everything queued (a batch) and applies it in a transaction. A request is one operation of
//! any kind: a closure over the transaction with its reply ([`Operation`]), so a new operation
//! needs no new machinery here. When the batch is durable depends on who opened the journal:
//! - a tool (`SqliteJournal::open`): every batch is committed, then answered (group commit: one
//!   disk flush covers the batch);
//! - the daemon, under the journal's lock (`SqliteJournal::open_owned`): appends and
//!   completions (the writes of every event, [`Access::Logged`]) are made durable by their
//!   records in the redo log (`journal::redo`, one write and one `fdatasync` per batch) and
//!   answered then, while the transaction stays open over further batches; it is committed
//!   every [`COMMIT_INTERVAL`], when no request came for [`IDLE_COMMIT`], or at once for any
//!   other write, which is answered after that commit. This writes far fewer bytes per event:
//!   each commit writes a page once for all the batches that changed it. The events' rows wait
//!   for that commit (`sqlite::deferred`), so that an event delivered meanwhile is inserted once,
//!   delivered, rather than inserted and then updated. After a crash, or a
//!   commit that failed, the log's records the database lacks are applied again before anything
//!   else ([`Writer::recover`]). docs/architecture.md, "The embedded journal", says why and what
//!   holds.
//!
//! Other processes may write the same database (`attio-webhooks dead-letters replay` while the
//! daemon runs): every transaction begins IMMEDIATE, so writers queue on SQLite's lock (WAL,
//! `busy_timeout`) instead of failing on a stale snapshot, and the writer re-counts the backlog
//! when `PRAGMA data_version` says another connection committed.
//!
//! A write that fails (a full disk) is remembered for [`WRITE_FAILURE_REMEMBERED`], and the disk's
//! free space is checked: `probe` (readiness, and the worker's test before it resumes) reports
//! either, because a tiny probe write can still fit in the database's slack while deliveries no
//! longer do.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::config::SyncMode;

use super::backend::Backend;
use super::codec::rfc3339;
use super::history::{
    AttemptRecord, EventDetail, EventPage, HistoryQuery, Retention, UnparsedDelivery,
    UnparsedSummary,
};
use super::lock::JournalLock;
use super::redo::{self, RedoLog, RedoRecord};
use super::sqlite::deferred::{self, Deferred};
use super::sqlite::{
    self, count_pending, damaged_or_storage, data_version, migrate, read_existing, PURGE_BATCH,
    SCHEMA,
};
use super::{
    AppendOutcome, DeadLetter, DeadLetterQuery, JournalError, JournaledEvent, MalformedDelivery,
    NewDelivery, ReplayReport, ReplaySelection, SinkProgress, StoredEvent, UnparsedSelection,
};

/// Most requests applied in one transaction.
const MAX_BATCH: usize = 2048;
/// Requests that may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 16 * 1024;
/// Longest the writer keeps one transaction open over batches made durable by the redo log:
/// how far the history connection (and other processes) may lag behind what was answered.
const COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// The transaction is committed once no request came for this long, so that a quiet daemon's
/// database is as new as its answers.
const IDLE_COMMIT: Duration = Duration::from_millis(2);
/// A batch of fewer requests than this waits [`GROUP_WINDOW`] for more before its redo records
/// are written: on the benchmark machine one `fdatasync` costs the kernel about as much CPU as
/// the SQLite work of several events, whatever it holds (with bench/cpu.sh, a window of 300 us
/// used less CPU per request than none or 1,000 us, at no cost in requests/s).
const GROUP_TARGET: usize = 32;
const GROUP_WINDOW: Duration = Duration::from_micros(300);
/// Most logged operations, and most events kept back (`sqlite::deferred`), in one transaction
/// (bounds its dirty pages and the rows it holds in memory).
const MAX_LOGGED_PER_TRANSACTION: usize = 4_096;
/// How long a failed commit keeps `probe` failing, unless a write succeeds meanwhile.
const WRITE_FAILURE_REMEMBERED: Duration = Duration::from_secs(5);
/// Below this much free space on the journal's filesystem, `probe` fails: the next deliveries
/// would likely not fit.
const MIN_FREE_BYTES: u64 = 256 * 1024;

/// What the writer thread is asked.
enum Request {
    /// One operation, applied in the next batch's transaction.
    Run(Box<dyn Operation>),
    /// Stop once everything queued before is committed.
    Close(oneshot::Sender<()>),
}

/// Whether an operation changes the database: a commit that held a write proves the journal
/// writable again (and clears the remembered failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    /// A write answered only once the transaction that holds it is committed.
    Write,
    /// A write made durable by its record in the redo log (appends and completions, the writes
    /// of every event): answered once the record is on the disk, committed later.
    Logged,
    /// A read of the history connection follows: commit what the writer holds, so that it sees
    /// every write answered before.
    Commit,
}

/// One request to the writer, whatever its result type: it runs inside the batch's transaction
/// and keeps its result until the commit is known.
trait Operation: Send {
    fn access(&self) -> Access;
    /// Runs the operation in `tx`, with the rows kept back so far (`sqlite::deferred`; only an
    /// append or a completion adds to them or changes them). Returns how the backlog changes if
    /// the batch commits.
    fn apply(&mut self, tx: &Transaction<'_>, deferred: &mut Deferred) -> i64;
    /// For a [`Access::Logged`] operation that succeeded: its redo-log record.
    fn redo(&mut self) -> Option<Vec<u8>>;
    /// Answers the caller: the kept result when the batch committed, else the commit's error
    /// (every caller of a failed batch learns that nothing of it was stored).
    fn answer(self: Box<Self>, commit: Result<(), JournalError>);
}

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

/// An [`Operation`] made of a closure over the transaction, its reply, and the backlog change its
/// result makes.
struct Pending<T, F> {
    access: Access,
    run: Option<F>,
    redo: Option<Vec<u8>>,
    backlog_change: fn(&T) -> i64,
    result: Option<Result<T, JournalError>>,
    reply: Reply<T>,
}

impl<T, F> Operation for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Transaction<'_>, &mut Deferred) -> Result<T, JournalError> + Send,
{
    fn access(&self) -> Access {
        self.access
    }

    fn apply(&mut self, tx: &Transaction<'_>, deferred: &mut Deferred) -> i64 {
        let Some(run) = self.run.take() else {
            return 0;
        };
        let result = run(tx, deferred);
        let change = result.as_ref().map(self.backlog_change).unwrap_or(0);
        self.result = Some(result);
        change
    }

    fn redo(&mut self) -> Option<Vec<u8>> {
        match &self.result {
            Some(Ok(_)) => self.redo.take(),
            _ => None,
        }
    }

    fn answer(self: Box<Self>, commit: Result<(), JournalError>) {
        let result = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(JournalError::Storage(
                "the journal writer skipped a request".to_string(),
            )),
            (Err(error), _) => Err(error),
        };
        let _ = self.reply.send(result);
    }
}

/// For operations that leave the backlog as it is.
fn unchanged<T>(_: &T) -> i64 {
    0
}

/// Handle to the embedded journal. Cheap to clone.
#[derive(Clone)]
pub struct SqliteJournal {
    requests: mpsc::Sender<Request>,
    backlog: Arc<AtomicU64>,
    id: Arc<str>,
    /// A connection of its own for history reads, so that a long list never holds up the
    /// writer (WAL lets it read while the writer commits).
    reader: Arc<std::sync::Mutex<Connection>>,
    /// The last commit that failed, until a commit with a write succeeds.
    write_failure: Arc<Mutex<Option<(Instant, String)>>>,
    /// The directory of the database, whose filesystem's free space `probe` checks.
    directory: Arc<Path>,
    /// Whether the writer keeps its transaction open over batches, with the redo log
    /// (`journal::redo`) making each batch durable.
    redo: bool,
}

impl SqliteJournal {
    /// Opens (creating if needed) the database and starts its writer thread.
    /// Opens with `synchronous=FULL`, the safe default (tools and tests).
    pub fn open(path: &Path) -> Result<SqliteJournal, JournalError> {
        Self::open_with(path, SyncMode::Full)
    }

    /// Opens with the given durability of commits (`storage.sync`), for a tool that shares the
    /// journal with a running daemon: every batch is committed, and the daemon's redo log is left
    /// to the daemon.
    pub(crate) fn open_with(path: &Path, sync: SyncMode) -> Result<SqliteJournal, JournalError> {
        Self::open_inner(path, sync, None)
    }

    /// Opens the journal for the process that holds its lock (the daemon): the writer keeps its
    /// transaction open over many batches and makes each one durable with the redo log, which
    /// costs far fewer bytes written per event (see `journal::redo`). Records that a crash left
    /// in the log are applied first.
    pub(crate) fn open_owned(
        path: &Path,
        sync: SyncMode,
        _lock: &JournalLock,
    ) -> Result<SqliteJournal, JournalError> {
        Self::open_inner(path, sync, Some(CommitPolicy::default()))
    }

    /// [`Self::open_owned`] with its own commit policy, for tests that need a transaction held
    /// open.
    #[cfg(test)]
    fn open_owned_with_policy(
        path: &Path,
        policy: CommitPolicy,
    ) -> Result<SqliteJournal, JournalError> {
        Self::open_inner(path, SyncMode::Full, Some(policy))
    }

    fn open_inner(
        path: &Path,
        sync: SyncMode,
        redo: Option<CommitPolicy>,
    ) -> Result<SqliteJournal, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                JournalError::Storage(format!(
                    "cannot create storage directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let mut connection = Connection::open(path).map_err(|e| {
            JournalError::Storage(format!("cannot open journal {}: {e}", path.display()))
        })?;
        connection.busy_timeout(Duration::from_secs(5))?;
        // Read before anything is written, so that a damaged file is reported unchanged.
        read_existing(&connection).map_err(|e| damaged_or_storage(e, path))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed transaction survives power loss. NORMAL (WAL): it survives a process
        // crash, and reaches the disk at the next checkpoint.
        let synchronous = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        connection.pragma_update(None, "synchronous", synchronous)?;
        connection
            .execute_batch(SCHEMA)
            .map_err(|e| damaged_or_storage(e, path))?;
        migrate(&mut connection, &file_identity(path)?)?;
        let id: String = connection.query_row(
            "SELECT value FROM meta WHERE key = 'journal_id'",
            [],
            |row| row.get(0),
        )?;
        let mut writer = Writer {
            backlog: Arc::new(AtomicU64::new(0)),
            seen_version: 0,
            write_failure: Arc::new(Mutex::new(None)),
            redo: None,
            needs_recovery: false,
            policy: redo.unwrap_or_default(),
            deferred: Deferred::default(),
        };
        if redo.is_some() {
            writer.redo = Some(RedoLog::open(path, sync == SyncMode::Full)?);
            writer.recover(&mut connection)?;
        }
        let reader = Connection::open(path).map_err(|e| {
            JournalError::Storage(format!("cannot open journal {}: {e}", path.display()))
        })?;
        reader.busy_timeout(Duration::from_secs(5))?;
        reader.pragma_update(None, "query_only", "ON")?;
        writer
            .backlog
            .store(count_pending(&connection)?, Ordering::Relaxed);
        writer.seen_version = data_version(&connection)?;
        let backlog = writer.backlog.clone();
        let write_failure = writer.write_failure.clone();
        let (requests, receiver) = mpsc::channel(QUEUE_DEPTH);
        crate::threads::spawn_helper("journal-writer", move || writer.run(connection, receiver))
            .map_err(|e| JournalError::Storage(format!("cannot start journal writer: {e}")))?;
        let directory = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => dir.to_path_buf(),
            None => std::path::PathBuf::from("."),
        };
        Ok(SqliteJournal {
            requests,
            backlog,
            id: Arc::from(id),
            reader: Arc::new(std::sync::Mutex::new(reader)),
            write_failure,
            directory: Arc::from(directory),
            redo: redo.is_some(),
        })
    }

    /// This journal's identity: random, made when the database was created, kept in it, and made
    /// anew when the database turns out to be a copy (see `migrate`). Redis claims carry it, so
    /// that the next run of the same journal recognises claims its killed predecessor left (see
    /// `dedupe::redis`).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Runs `run` in the writer's next transaction and answers once it is committed; the backlog
    /// changes by `backlog_change` of the result, after the commit.
    async fn transact<T: Send + 'static>(
        &self,
        access: Access,
        run: impl FnOnce(&Transaction<'_>) -> Result<T, JournalError> + Send + 'static,
        backlog_change: fn(&T) -> i64,
    ) -> Result<T, JournalError> {
        self.transact_logged(access, move |tx, _| run(tx), backlog_change, None)
            .await
    }

    /// [`Self::transact`] for an operation that may keep its rows back (`sqlite::deferred`), with
    /// its redo-log record (made here, on the caller's task, rather than on the writer thread).
    async fn transact_logged<T: Send + 'static>(
        &self,
        access: Access,
        run: impl FnOnce(&Transaction<'_>, &mut Deferred) -> Result<T, JournalError> + Send + 'static,
        backlog_change: fn(&T) -> i64,
        redo: Option<Vec<u8>>,
    ) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        let operation = Pending {
            access,
            run: Some(run),
            redo,
            backlog_change,
            result: None,
            reply,
        };
        self.requests
            .send(Request::Run(Box::new(operation)))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Runs a read on the history connection, off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        // Reads-your-writes: the writer commits what it holds (answered writes may still be in
        // its open transaction, durable through the redo log) before the history is read.
        if self.redo {
            self.transact(Access::Commit, |_| Ok(()), unchanged).await?;
        }
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside a query leaves nothing half-written on a read-only connection.
            let connection = reader.lock().unwrap_or_else(|p| p.into_inner());
            query(&connection)
        })
        .await
        .map_err(|e| JournalError::Storage(format!("history read failed: {e}")))?
    }

    /// Records a failed attempt's per-sink state; `next_attempt_at = None` dead-letters the event.
    async fn record_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: Option<DateTime<Utc>>,
        record: &AttemptRecord,
    ) -> Result<(), JournalError> {
        let id = id.to_string();
        let progress = progress.clone();
        let next_ms = next_attempt_at.map(|t| t.timestamp_millis());
        let record = record.clone();
        // Dead-lettering a pending event takes it out of the backlog.
        let backlog_change = match next_ms {
            Some(_) => unchanged,
            None => |changed: &usize| -(*changed as i64),
        };
        self.transact(
            Access::Write,
            move |tx| sqlite::record_sinks(tx, &id, &progress, next_ms, &record),
            backlog_change,
        )
        .await
        .map(|_| ())
    }
}

impl Backend for SqliteJournal {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn hands_off_directly(&self) -> bool {
        true
    }

    async fn append(&self, delivery: NewDelivery) -> Result<AppendOutcome, JournalError> {
        let redo = self.redo.then(|| redo::encode_append(&delivery));
        self.transact_logged(
            Access::Logged,
            move |tx, deferred| deferred::append(tx, delivery, deferred),
            |outcome| match outcome {
                AppendOutcome::Stored(events) => events.len() as i64,
                AppendOutcome::Duplicate => 0,
            },
            redo,
        )
        .await
    }

    async fn append_malformed(&self, delivery: MalformedDelivery) -> Result<(), JournalError> {
        self.transact(
            Access::Write,
            move |tx| sqlite::append_malformed(tx, &delivery),
            unchanged,
        )
        .await
    }

    async fn due(&self, limit: usize) -> Result<Vec<JournaledEvent>, JournalError> {
        let now_ms = Utc::now().timestamp_millis();
        self.transact(
            Access::Read,
            move |tx| sqlite::due(tx, now_ms, limit),
            unchanged,
        )
        .await
    }

    /// The event is delivered: it stays in the history with what the attempt learnt.
    async fn complete(&self, id: &str, record: AttemptRecord) -> Result<(), JournalError> {
        let id = id.to_string();
        let delivered_at = Utc::now();
        let redo = self
            .redo
            .then(|| redo::encode_complete(&id, delivered_at, &record));
        self.transact_logged(
            Access::Logged,
            move |tx, deferred| deferred::complete(tx, &id, delivered_at, record, deferred),
            |completed| -(*completed as i64),
            redo,
        )
        .await
        .map(|_| ())
    }

    async fn reschedule(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let (id, attempts) = (id.to_string(), progress.attempts);
        let sinks_done = progress.sinks_done.clone();
        let next_ms = next_attempt_at.timestamp_millis();
        let error = error.map(str::to_string);
        self.transact(
            Access::Write,
            move |tx| sqlite::reschedule(tx, &id, attempts, next_ms, error.as_deref(), &sinks_done),
            unchanged,
        )
        .await
    }

    async fn retry_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: DateTime<Utc>,
        record: &AttemptRecord,
    ) -> Result<(), JournalError> {
        self.record_sinks(id, progress, Some(next_attempt_at), record)
            .await
    }

    async fn dead_letter_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        record: &AttemptRecord,
    ) -> Result<(), JournalError> {
        self.record_sinks(id, progress, None, record).await
    }

    async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>, JournalError> {
        let query = query.clone();
        self.transact(
            Access::Read,
            move |tx| sqlite::list_dead_letters(tx, &query),
            unchanged,
        )
        .await
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>, JournalError> {
        let id = id.to_string();
        self.transact(
            Access::Read,
            move |tx| sqlite::stored_event(tx, &id),
            unchanged,
        )
        .await
    }

    /// `delivered_too`: delivered events are replayed as well (to every sink, or to `sink`).
    async fn replay(
        &self,
        selection: &ReplaySelection,
        sink: Option<&str>,
        delivered_too: bool,
    ) -> Result<ReplayReport, JournalError> {
        let selection = selection.clone();
        let sink = sink.map(str::to_string);
        self.transact(
            Access::Write,
            move |tx| sqlite::replay(tx, &selection, sink.as_deref(), delivered_too),
            |report| report.replayed.len() as i64,
        )
        .await
    }

    /// Events matching `query`, newest first.
    async fn history(&self, query: &HistoryQuery) -> Result<EventPage, JournalError> {
        let query = query.clone();
        self.read(move |connection| sqlite::history_page(connection, &query))
            .await
    }

    /// Everything kept about one event.
    async fn history_event(&self, id: &str) -> Result<Option<EventDetail>, JournalError> {
        let id = id.to_string();
        self.read(move |connection| sqlite::event_detail(connection, &id))
            .await
    }

    /// Unparsed deliveries, newest first, older than `before` when given.
    async fn unparsed(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<UnparsedSummary>, JournalError> {
        self.read(move |connection| sqlite::unparsed_list(connection, limit, before))
            .await
    }

    /// One unparsed delivery with its body.
    async fn unparsed_delivery(&self, id: i64) -> Result<Option<UnparsedDelivery>, JournalError> {
        self.read(move |connection| sqlite::unparsed_one(connection, id))
            .await
    }

    async fn delete_unparsed(
        &self,
        selection: &UnparsedSelection,
    ) -> Result<Vec<i64>, JournalError> {
        let selection = selection.clone();
        self.transact(
            Access::Write,
            move |tx| sqlite::delete_unparsed(tx, &selection),
            unchanged,
        )
        .await
    }

    fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Whether the journal can take deliveries now: no commit failed in the last
    /// [`WRITE_FAILURE_REMEMBERED`] (unless a write succeeded since), at least
    /// [`MIN_FREE_BYTES`] free on its filesystem, and a small write commits.
    async fn probe(&self) -> Result<(), JournalError> {
        let failure = self
            .write_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((at, error)) = failure {
            if at.elapsed() < WRITE_FAILURE_REMEMBERED {
                return Err(JournalError::Storage(format!(
                    "a write failed {} ms ago: {error}",
                    at.elapsed().as_millis()
                )));
            }
        }
        if let Some(free) = free_bytes(&self.directory) {
            if free < MIN_FREE_BYTES {
                return Err(JournalError::Storage(format!(
                    "only {} KiB free on the journal's filesystem ({}); free some space or move \
                     storage.path",
                    free / 1024,
                    self.directory.display()
                )));
            }
        }
        self.transact(Access::Write, sqlite::probe, unchanged).await
    }

    async fn oldest_pending_age(&self) -> Result<Option<Duration>, JournalError> {
        let oldest = self
            .transact(Access::Read, sqlite::oldest_pending, unchanged)
            .await?;
        Ok(oldest
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|at| {
                (Utc::now() - at.with_timezone(&Utc))
                    .to_std()
                    .unwrap_or_default()
            }))
    }

    /// Forgets delivery keys older than `keep` and deletes history older than `retention`, in
    /// batches so that ingress is never held up for long.
    async fn purge(&self, keep: Duration, retention: Retention) -> Result<u64, JournalError> {
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let deliveries_before_ms = now_ms - duration_ms(keep);
        let history_before_ms = now_ms - duration_ms(retention.history);
        let dead_before = retention.dead_letters.map(|keep| {
            rfc3339(now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX))
        });
        let mut purged = 0;
        loop {
            let dead_before = dead_before.clone();
            let run = move |tx: &Transaction<'_>| {
                sqlite::purge_batch(
                    tx,
                    deliveries_before_ms,
                    history_before_ms,
                    dead_before.as_deref(),
                )
                .map_err(JournalError::from)
            };
            let batch = self.transact(Access::Write, run, unchanged).await?;
            purged += batch;
            if batch < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }

    async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.requests.send(Request::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `directory`, when the
/// system says.
fn free_bytes(directory: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(directory).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The database file as the file system knows it: device and inode. A rename or a move within
/// the file system keeps it; a copy (to another host, or restored from a backup) does not.
fn file_identity(path: &Path) -> Result<String, JournalError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).map_err(|e| {
        JournalError::Storage(format!("cannot read the journal {}: {e}", path.display()))
    })?;
    Ok(format!("{}:{}", metadata.dev(), metadata.ino()))
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

/// The writer thread's state.
struct Writer {
    backlog: Arc<AtomicU64>,
    /// `PRAGMA data_version` when this writer last looked (see [`resync_backlog`]).
    seen_version: i64,
    /// The last commit that failed, until a commit with a write succeeds.
    write_failure: Arc<Mutex<Option<(Instant, String)>>>,
    /// The redo log, for the daemon's journal (`None` for tools: every batch commits).
    redo: Option<RedoLog>,
    /// A transaction that held answered writes failed to commit: the database lacks what only
    /// the redo log holds, and nothing else runs until the log is applied again.
    needs_recovery: bool,
    policy: CommitPolicy,
    /// The rows of events appended in the open transaction, not inserted yet.
    deferred: Deferred,
}

/// When the writer commits a transaction held over batches.
#[derive(Debug, Clone, Copy)]
struct CommitPolicy {
    /// At the latest this long after it began.
    interval: Duration,
    /// Once no request came for this long.
    idle: Duration,
    /// A batch smaller than this waits `group_window` for more before it is written.
    group_target: usize,
    group_window: Duration,
}

impl Default for CommitPolicy {
    fn default() -> CommitPolicy {
        CommitPolicy {
            interval: COMMIT_INTERVAL,
            idle: IDLE_COMMIT,
            group_target: GROUP_TARGET,
            group_window: GROUP_WINDOW,
        }
    }
}

/// One batch applied in the open transaction.
struct Applied {
    /// The operations to answer, with the backlog change of each.
    held: Vec<(Box<dyn Operation>, i64)>,
    /// The transaction must be committed before they are answered (a write that the redo log
    /// does not cover, a history read to come, no redo log at all, or a close).
    commit_now: bool,
    close: Option<oneshot::Sender<()>>,
    /// The batch wrote: its success clears a remembered write failure.
    writes: bool,
    /// Inserting the rows kept back failed: the transaction must be rolled back, and nothing of
    /// the batch is stored.
    failed: Option<JournalError>,
}

impl Writer {
    fn run(mut self, mut connection: Connection, mut receiver: mpsc::Receiver<Request>) {
        // A runtime of the thread's own, only to wait for the next request with a deadline
        // while a transaction is open.
        let clock = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(clock) => Some(clock),
            Err(error) => {
                tracing::warn!(%error, "journal writer cannot wait with a deadline; committing every batch");
                self.redo = None;
                None
            }
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            self.gather(&mut receiver, &mut batch);
            if self.needs_recovery {
                if let Err(error) = self.recover(&mut connection) {
                    self.failed(&error.to_string());
                    answer_unapplied(&mut batch, &error);
                    continue;
                }
            }
            let tx = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
                Ok(tx) => tx,
                Err(error) => {
                    let message = error.to_string();
                    self.failed(&message);
                    let error = JournalError::Storage(format!("commit failed: {message}"));
                    answer_unapplied(&mut batch, &error);
                    continue;
                }
            };
            resync_backlog(&tx, &mut self.seen_version, &self.backlog);
            let began = Instant::now();
            let mut logged = 0;
            // Batches within one transaction until it is committed.
            let close = loop {
                let Applied {
                    held,
                    commit_now,
                    close,
                    writes,
                    failed,
                } = self.apply_batch(&tx, &mut batch, &mut logged);
                if let Some(error) = failed {
                    // As for a commit that failed: this batch's callers learn that nothing of it
                    // is stored, and what earlier batches answered is applied again from the log.
                    drop(tx);
                    if let Some(redo) = &mut self.redo {
                        redo.discard_staged();
                    }
                    self.needs_recovery = self.redo.as_ref().is_some_and(RedoLog::has_written);
                    self.failed(&error.to_string());
                    answer(held, &Err(error), &self.backlog);
                    break close;
                }
                if commit_now {
                    let committed = self.commit(tx, writes);
                    answer(held, &committed, &self.backlog);
                    break close;
                }
                // Durable through the redo log: answered now, committed later.
                let written = match &mut self.redo {
                    Some(redo) => redo.write_staged(),
                    None => Ok(()),
                };
                match written {
                    Ok(()) => {
                        if writes {
                            self.clear_failure();
                        }
                        answer(held, &Ok(()), &self.backlog);
                    }
                    Err(error) => {
                        // Nothing of this batch is stored: the transaction is rolled back, and
                        // what earlier batches answered is applied again from the log.
                        drop(tx);
                        self.deferred.clear();
                        self.needs_recovery = self.redo.as_ref().is_some_and(RedoLog::has_written);
                        self.failed(&error.to_string());
                        answer(held, &Err(error), &self.backlog);
                        break None;
                    }
                }
                if logged >= MAX_LOGGED_PER_TRANSACTION
                    || self.deferred.len() >= MAX_LOGGED_PER_TRANSACTION
                {
                    // A failure is logged and remembered by `commit`; what was answered is in
                    // the redo log and is applied again before the next batch.
                    let _ = self.commit(tx, false);
                    break None;
                }
                let wait = self
                    .policy
                    .interval
                    .saturating_sub(began.elapsed())
                    .min(self.policy.idle);
                let next = match &clock {
                    Some(clock) if !wait.is_zero() => clock
                        .block_on(async { tokio::time::timeout(wait, receiver.recv()).await })
                        .ok(),
                    _ => None,
                };
                match next {
                    Some(Some(request)) => {
                        batch.push(request);
                        self.gather(&mut receiver, &mut batch);
                    }
                    // Nothing came in time, or the channel closed: commit what is held.
                    Some(None) | None => {
                        let _ = self.commit(tx, false);
                        break None;
                    }
                }
            };
            if let Some(done) = close {
                // Closed before answering (SQLite checkpoints the WAL and removes it), so that
                // the caller finds the database whole in its one file.
                drop(connection);
                let _ = done.send(());
                return;
            }
        }
    }

    /// Takes what is queued; with the redo log, a small batch first waits a moment for more, so
    /// that one `fdatasync` covers several deliveries (each costs the kernel the same whatever
    /// it holds).
    fn gather(&self, receiver: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
        drain(receiver, batch);
        if self.redo.is_some()
            && batch.len() < self.policy.group_target
            && !self.policy.group_window.is_zero()
        {
            std::thread::sleep(self.policy.group_window);
            drain(receiver, batch);
        }
    }

    /// Applies one batch in `tx`.
    fn apply_batch(
        &mut self,
        tx: &Transaction<'_>,
        batch: &mut Vec<Request>,
        logged: &mut usize,
    ) -> Applied {
        let mut held = Vec::with_capacity(batch.len());
        let mut commit_now = self.redo.is_none();
        let mut close = None;
        let mut writes = false;
        let mut failed = None;
        for request in batch.drain(..) {
            match request {
                Request::Close(done) => close = Some(done),
                // After a failure nothing more is applied; every operation is answered with it.
                Request::Run(operation) if failed.is_some() => held.push((operation, 0)),
                Request::Run(mut operation) => {
                    let access = operation.access();
                    if access != Access::Logged {
                        // Whatever else runs sees every event appended before it.
                        if let Err(error) = self.deferred.insert(tx) {
                            failed = Some(error);
                            held.push((operation, 0));
                            continue;
                        }
                    }
                    let change = operation.apply(tx, &mut self.deferred);
                    match access {
                        Access::Read => {}
                        Access::Commit => commit_now = true,
                        Access::Write => {
                            writes = true;
                            commit_now = true;
                        }
                        Access::Logged => {
                            writes = true;
                            if let (Some(redo), Some(record)) = (&mut self.redo, operation.redo()) {
                                redo.stage(&record);
                                *logged += 1;
                            }
                        }
                    }
                    held.push((operation, change));
                }
            }
        }
        Applied {
            held,
            commit_now: commit_now || close.is_some(),
            close,
            writes,
            failed,
        }
    }

    /// Commits `tx`, recording the last redo-log record it holds; the log then starts again.
    /// Records staged for this batch are not written: the commit makes them durable.
    fn commit(&mut self, tx: Transaction<'_>, writes: bool) -> Result<(), JournalError> {
        let mut last = None;
        if let Some(redo) = &mut self.redo {
            redo.discard_staged();
            last = Some(redo.last_lsn());
        }
        let committed = self
            .deferred
            .insert(&tx)
            .and_then(|()| match last {
                Some(lsn) => sqlite::set_redo_lsn(&tx, lsn),
                None => Ok(()),
            })
            .map_err(|error| error.to_string())
            .and_then(|()| tx.commit().map_err(|error| error.to_string()));
        match &committed {
            Ok(()) => {
                if let (Some(redo), Some(lsn)) = (&mut self.redo, last) {
                    redo.restart_after(lsn);
                }
                if writes {
                    self.clear_failure();
                }
            }
            Err(message) => {
                self.needs_recovery = self.redo.as_ref().is_some_and(RedoLog::has_written);
                self.failed(message);
            }
        }
        committed.map_err(|message| JournalError::Storage(format!("commit failed: {message}")))
    }

    /// Applies the redo log's records that the database does not hold yet (after a crash, or a
    /// transaction that failed to commit), in one transaction, and starts the log again.
    fn recover(&mut self, connection: &mut Connection) -> Result<(), JournalError> {
        let Some(redo) = &mut self.redo else {
            self.needs_recovery = false;
            return Ok(());
        };
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let committed = sqlite::redo_lsn(&tx)?;
        let records = redo.read_after(committed)?;
        let mut last = committed;
        let count = records.len();
        for (lsn, record) in records {
            apply_record(&tx, record)?;
            last = lsn;
        }
        if count > 0 {
            tracing::warn!(
                records = count,
                "journal: applied again what the redo log held and the database did not (the last run stopped without committing it)"
            );
        }
        sqlite::set_redo_lsn(&tx, last)?;
        let pending = count_pending(&tx)?;
        tx.commit()?;
        redo.restart_after(last);
        self.backlog.store(pending, Ordering::Relaxed);
        self.needs_recovery = false;
        Ok(())
    }

    fn failed(&self, message: &str) {
        tracing::error!(error = %message, "journal commit failed");
        *self.write_failure.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), message.to_string()));
    }

    fn clear_failure(&self) {
        *self.write_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Applies one redo-log record again.
fn apply_record(tx: &Transaction<'_>, record: RedoRecord) -> Result<(), JournalError> {
    match record {
        RedoRecord::Append(delivery) => {
            sqlite::append(tx, delivery)?;
        }
        RedoRecord::Complete {
            id,
            delivered_at,
            record,
        } => {
            sqlite::complete(tx, &id, delivered_at, &record)?;
        }
    }
    Ok(())
}

/// Takes whatever else is queued, up to a batch.
fn drain(receiver: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

/// Answers every request of a batch that never reached a transaction with `error` (a close
/// request is put back, to be taken with the next batch).
fn answer_unapplied(batch: &mut Vec<Request>, error: &JournalError) {
    let mut keep = Vec::new();
    for request in batch.drain(..) {
        match request {
            Request::Run(operation) => operation.answer(Err(error.clone())),
            close @ Request::Close(_) => keep.push(close),
        }
    }
    batch.extend(keep);
}

/// Answers the operations of a batch once its fate is known; the backlog changes only by what
/// was stored.
fn answer(
    held: Vec<(Box<dyn Operation>, i64)>,
    stored: &Result<(), JournalError>,
    backlog: &AtomicU64,
) {
    for (operation, change) in held {
        let result = match stored {
            Ok(()) => {
                apply_change(backlog, change);
                Ok(())
            }
            Err(error) => Err(error.clone()),
        };
        operation.answer(result);
    }
}

/// Re-counts the backlog when another process (a replay) changed the database since the last
/// transaction. Inside the IMMEDIATE transaction nobody else writes, so the count is exact and
/// this batch's own changes are added to it after the commit.
fn resync_backlog(tx: &Transaction<'_>, seen_version: &mut i64, backlog: &AtomicU64) {
    let Ok(version) = data_version(tx) else {
        return;
    };
    if version == *seen_version {
        return;
    }
    *seen_version = version;
    match count_pending(tx) {
        Ok(pending) => backlog.store(pending, Ordering::Relaxed),
        Err(error) => tracing::warn!(%error, "cannot re-count the backlog"),
    }
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
