//! The embedded journal: one SQLite database (WAL; `synchronous=FULL` by default, see
//! `storage.sync`) under `storage.path`.
//!
//! One writer thread owns the connection. Requests queue on a channel; the thread takes
//! everything queued, applies it in one transaction and commits once, then answers every caller.
//! That is group commit: under load one disk flush covers many deliveries, and a caller is
//! answered only after the flush that holds its data.
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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::config::SyncMode;

use super::history::{
    AttemptRecord, EventDetail, EventPage, EventStatus, EventSummary, HistoryQuery, Retention,
    StoredSinks, UnparsedDelivery, UnparsedSummary,
};
use super::{
    AppendOutcome, DeadDelivery, DeadDeliveryBody, DeadDeliverySelection, DeadLetter,
    DeadLetterQuery, JournalError, JournaledEvent, MalformedDelivery, NewDelivery, ReplayReport,
    ReplaySelection, SinkProgress, SkippedReplay, StoredEvent,
};

/// Most requests applied in one transaction.
const MAX_BATCH: usize = 2048;
/// Rows the purge deletes per transaction.
const PURGE_BATCH: usize = 5000;
/// Requests that may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 16 * 1024;
/// How long a failed commit keeps `probe` failing, unless a write succeeds meanwhile.
pub const WRITE_FAILURE_REMEMBERED: Duration = Duration::from_secs(5);
/// Below this much free space on the journal's filesystem, `probe` fails: the next deliveries
/// would likely not fit.
pub const MIN_FREE_BYTES: u64 = 256 * 1024;

pub(super) const SCHEMA: &str = r#"
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
CREATE INDEX IF NOT EXISTS events_due ON events(state, next_attempt_unix_ms, seq);
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

/// Indexes of the history queries (after the columns exist). A status filter walks
/// `events_state_seq` newest first; `q` looks an id, delivery key (a range of ids) or record id
/// up directly. The record id is only set when an attempt finished, so its index costs ingress
/// nothing.
const HISTORY_INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS events_state_seq ON events(state, seq);
CREATE INDEX IF NOT EXISTS events_record_id ON events(record_id) WHERE record_id IS NOT NULL;
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
    Complete(String, Box<AttemptRecord>, Reply<()>),
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
    RecordSinks {
        id: String,
        progress: SinkProgress,
        /// `None`: dead-letter the event.
        next_ms: Option<i64>,
        record: Box<AttemptRecord>,
        reply: Reply<()>,
    },
    ListDeadLetters(DeadLetterQuery, Reply<Vec<DeadLetter>>),
    Event(String, Reply<Option<StoredEvent>>),
    Replay {
        selection: ReplaySelection,
        sink: Option<String>,
        delivered_too: bool,
        reply: Reply<ReplayReport>,
    },
    DeleteUnparsed(i64, Reply<bool>),
    DeadDeliveries(usize, Reply<Vec<DeadDelivery>>),
    DeadDelivery(i64, Reply<Option<DeadDeliveryBody>>),
    DeleteDeadDeliveries(DeadDeliverySelection, Reply<Vec<i64>>),
    Probe(Reply<()>),
    OldestPending(Reply<Option<String>>),
    Purge {
        deliveries_before_ms: i64,
        history_before_ms: i64,
        dead_before: Option<String>,
        reply: Reply<u64>,
    },
    Close(oneshot::Sender<()>),
}

impl Request {
    /// Whether the request changes the database (a successful commit of it proves the journal
    /// writable again).
    fn writes(&self) -> bool {
        match self {
            Request::Append(..)
            | Request::AppendMalformed(..)
            | Request::Complete(..)
            | Request::Reschedule { .. }
            | Request::DeadLetter { .. }
            | Request::RecordSinks { .. }
            | Request::Replay { .. }
            | Request::Probe(_)
            | Request::Purge { .. }
            | Request::DeleteDeadDeliveries(..)
            | Request::DeleteUnparsed(..) => true,
            Request::Due { .. }
            | Request::DeadLetters(..)
            | Request::ListDeadLetters(..)
            | Request::Event(..)
            | Request::DeadDeliveries(..)
            | Request::DeadDelivery(..)
            | Request::OldestPending(_)
            | Request::Close(_) => false,
        }
    }
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
}

/// Proof that this process is the only daemon working on one journal: an exclusive `flock` on
/// `{journal}.lock`, released when dropped or when the process dies, however it dies.
#[derive(Debug)]
pub struct JournalLock {
    _file: std::fs::File,
}

impl JournalLock {
    /// Takes the lock of the journal at `path`, or says which process class holds it. Tools
    /// that only read or replay dead letters (which SQLite's own locking keeps safe) do not take it.
    pub fn acquire(path: &Path) -> Result<JournalLock, JournalError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = std::path::PathBuf::from(lock_path);
        if let Some(dir) = lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                JournalError::Storage(format!(
                    "cannot create storage directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                JournalError::Storage(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                JournalError::Storage(if e == rustix::io::Errno::WOULDBLOCK {
                    format!(
                        "the journal {} is in use by another attio-webhooks daemon (one daemon \
                         per storage.path; replicas share queue.backend = \"redis\" instead)",
                        path.display()
                    )
                } else {
                    format!("cannot lock {}: {e}", lock_path.display())
                })
            },
        )?;
        Ok(JournalLock { _file: file })
    }
}

impl SqliteJournal {
    /// Opens (creating if needed) the database and starts its writer thread.
    /// Opens with `synchronous=FULL`, the safe default (tools and tests).
    pub fn open(path: &Path) -> Result<SqliteJournal, JournalError> {
        Self::open_with(path, SyncMode::Full)
    }

    /// Opens with the given durability of commits (`storage.sync`).
    pub fn open_with(path: &Path, sync: SyncMode) -> Result<SqliteJournal, JournalError> {
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
        let reader = Connection::open(path).map_err(|e| {
            JournalError::Storage(format!("cannot open journal {}: {e}", path.display()))
        })?;
        reader.busy_timeout(Duration::from_secs(5))?;
        reader.pragma_update(None, "query_only", "ON")?;
        let pending = count_pending(&connection)?;
        let data_version = data_version(&connection)?;
        let backlog = Arc::new(AtomicU64::new(pending));
        let (requests, receiver) = mpsc::channel(QUEUE_DEPTH);
        let writer_backlog = backlog.clone();
        let write_failure = Arc::new(Mutex::new(None));
        let writer_failure = write_failure.clone();
        std::thread::Builder::new()
            .name("journal-writer".to_string())
            .spawn(move || {
                writer_loop(
                    connection,
                    receiver,
                    writer_backlog,
                    data_version,
                    &writer_failure,
                )
            })
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
        })
    }

    /// This journal's identity: random, made when the database was created, kept in it, and made
    /// anew when the database turns out to be a copy (see `migrate`). Redis claims carry it, so
    /// that the next run of the same journal recognises claims its killed predecessor left (see
    /// `dedupe::redis`).
    pub fn id(&self) -> &str {
        &self.id
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

    /// The event is delivered: it stays in the history with what the attempt learnt.
    pub async fn complete(&self, id: &str, record: &AttemptRecord) -> Result<(), JournalError> {
        let id = id.to_string();
        let record = Box::new(record.clone());
        self.call(|reply| Request::Complete(id, record, reply))
            .await
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

    pub async fn dead_delivery(&self, seq: i64) -> Result<Option<DeadDeliveryBody>, JournalError> {
        self.call(|reply| Request::DeadDelivery(seq, reply)).await
    }

    pub async fn delete_dead_deliveries(
        &self,
        selection: &DeadDeliverySelection,
    ) -> Result<Vec<i64>, JournalError> {
        let selection = selection.clone();
        self.call(|reply| Request::DeleteDeadDeliveries(selection, reply))
            .await
    }

    /// Records a failed attempt's per-sink state; `next_attempt_at = None` dead-letters the event.
    pub async fn record_sinks(
        &self,
        id: &str,
        progress: &SinkProgress,
        next_attempt_at: Option<DateTime<Utc>>,
        record: &AttemptRecord,
    ) -> Result<(), JournalError> {
        let request = |reply| Request::RecordSinks {
            id: id.to_string(),
            progress: progress.clone(),
            next_ms: next_attempt_at.map(|t| t.timestamp_millis()),
            record: Box::new(record.clone()),
            reply,
        };
        self.call(request).await
    }

    pub async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>, JournalError> {
        let query = query.clone();
        self.call(|reply| Request::ListDeadLetters(query, reply))
            .await
    }

    pub async fn event(&self, id: &str) -> Result<Option<StoredEvent>, JournalError> {
        let id = id.to_string();
        self.call(|reply| Request::Event(id, reply)).await
    }

    /// `delivered_too`: delivered events are replayed as well (to every sink, or to `sink`).
    pub async fn replay(
        &self,
        selection: &ReplaySelection,
        sink: Option<&str>,
        delivered_too: bool,
    ) -> Result<ReplayReport, JournalError> {
        let request = |reply| Request::Replay {
            selection: selection.clone(),
            sink: sink.map(str::to_string),
            delivered_too,
            reply,
        };
        self.call(request).await
    }

    /// Runs a read on the history connection, off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside a query leaves nothing half-written on a read-only connection.
            let connection = reader.lock().unwrap_or_else(|p| p.into_inner());
            query(&connection)
        })
        .await
        .map_err(|e| JournalError::Storage(format!("history read failed: {e}")))?
    }

    /// Events matching `query`, newest first.
    pub async fn history(&self, query: &HistoryQuery) -> Result<EventPage, JournalError> {
        let query = query.clone();
        self.read(move |connection| history_page(connection, &query))
            .await
    }

    /// Everything kept about one event.
    pub async fn history_event(&self, id: &str) -> Result<Option<EventDetail>, JournalError> {
        let id = id.to_string();
        self.read(move |connection| event_detail(connection, &id))
            .await
    }

    /// Unparsed deliveries, newest first, older than `before` when given.
    pub async fn unparsed(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> Result<Vec<UnparsedSummary>, JournalError> {
        self.read(move |connection| unparsed_list(connection, limit, before))
            .await
    }

    /// One unparsed delivery with its body.
    pub async fn unparsed_delivery(
        &self,
        id: i64,
    ) -> Result<Option<UnparsedDelivery>, JournalError> {
        self.read(move |connection| unparsed_one(connection, id))
            .await
    }

    /// Deletes one unparsed delivery; false when there was none with this id.
    pub async fn delete_unparsed(&self, id: i64) -> Result<bool, JournalError> {
        self.call(|reply| Request::DeleteUnparsed(id, reply)).await
    }

    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Whether the journal can take deliveries now: no commit failed in the last
    /// [`WRITE_FAILURE_REMEMBERED`] (unless a write succeeded since), at least
    /// [`MIN_FREE_BYTES`] free on its filesystem, and a small write commits.
    pub async fn probe(&self) -> Result<(), JournalError> {
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

    /// Forgets delivery keys older than `keep` and deletes history older than `retention`, in
    /// batches so that ingress is never held up for long.
    pub async fn purge(&self, keep: Duration, retention: Retention) -> Result<u64, JournalError> {
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
            let batch = self
                .call(|reply| Request::Purge {
                    deliveries_before_ms,
                    history_before_ms,
                    dead_before,
                    reply,
                })
                .await?;
            purged += batch;
            if batch < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }

    pub async fn close(&self) {
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

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

fn parse_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn json_map(map: &BTreeMap<String, u32>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

fn parse_map(text: &str) -> BTreeMap<String, u32> {
    serde_json::from_str(text).unwrap_or_default()
}

fn json_texts(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

fn parse_texts(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
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

/// Reads what an existing journal holds (the schema, the pending events through their index),
/// so that damage there is found before the first write.
fn read_existing(connection: &Connection) -> Result<(), rusqlite::Error> {
    let has_events = connection
        .prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'events'")?
        .exists([])?;
    if has_events {
        connection.query_row(
            "SELECT COUNT(*), MAX(seq) FROM events WHERE state = 'pending'",
            [],
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// SQLite's corruption errors become [`JournalError::Damaged`], naming the file.
fn damaged_or_storage(error: rusqlite::Error, path: &Path) -> JournalError {
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
fn migrate(connection: &mut Connection, file: &str) -> Result<(), JournalError> {
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

fn count_pending(connection: &Connection) -> Result<u64, JournalError> {
    let pending: i64 = connection.query_row(
        "SELECT COUNT(*) FROM events WHERE state = 'pending'",
        [],
        |row| row.get(0),
    )?;
    Ok(pending.max(0) as u64)
}

/// Changes whenever another connection commits to the database.
fn data_version(connection: &Connection) -> Result<i64, JournalError> {
    Ok(connection.query_row("PRAGMA data_version", [], |row| row.get(0))?)
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
    Text(Reply<Option<String>>, Result<Option<String>, JournalError>),
    Count(Reply<u64>, Result<u64, JournalError>),
    /// Any other reply: called with the commit's error, if any; the backlog change is applied
    /// only when the commit succeeded (it is 0 for a failed request).
    Other(Box<dyn FnOnce(Option<JournalError>) + Send>, i64),
}

impl Held {
    fn other<T: Send + 'static>(
        reply: Reply<T>,
        result: Result<T, JournalError>,
        backlog_change: impl FnOnce(&T) -> i64,
    ) -> Held {
        let change = result.as_ref().map(backlog_change).unwrap_or(0);
        Held::Other(
            Box::new(move |commit_error| {
                let _ = reply.send(match commit_error {
                    None => result,
                    Some(error) => Err(error),
                });
            }),
            change,
        )
    }
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
            Held::Count(reply, result) => {
                let _ = reply.send(committed.clone().map_err(|m| failed(&m)).and(result));
            }
            Held::Other(answer, change) => match committed {
                Ok(()) => {
                    apply_change(backlog, change);
                    answer(None);
                }
                Err(message) => answer(Some(failed(message))),
            },
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
    mut seen_version: i64,
    write_failure: &Mutex<Option<(Instant, String)>>,
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
        let writes = batch.iter().any(Request::writes);
        let committed = match connection.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => {
                resync_backlog(&tx, &mut seen_version, &backlog);
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
        match &committed {
            Err(message) => {
                tracing::error!(error = %message, "journal commit failed");
                *write_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), message.clone()));
            }
            Ok(()) if writes => {
                *write_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Ok(()) => {}
        }
        for reply in held {
            reply.answer(&committed, &backlog);
        }
        if let Some(done) = close {
            // Closed before answering (SQLite checkpoints the WAL and removes it), so that the
            // caller finds the database whole in its one file.
            drop(connection);
            let _ = done.send(());
            return;
        }
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

/// Answers a request that never reached a transaction.
fn refuse(request: Request) -> Held {
    let error = || JournalError::Storage("could not begin a transaction".to_string());
    match request {
        Request::Append(_, reply) => Held::Append(reply, Err(error()), 0),
        Request::AppendMalformed(_, reply)
        | Request::Complete(_, _, reply)
        | Request::Reschedule { reply, .. }
        | Request::DeadLetter { reply, .. }
        | Request::Probe(reply) => Held::Unit(reply, Err(error()), 0),
        Request::Due { reply, .. } => Held::Due(reply, Err(error())),
        Request::DeadLetters(_, reply) => Held::Letters(reply, Err(error())),
        Request::DeadDeliveries(_, reply) => Held::Dead(reply, Err(error())),
        Request::DeadDelivery(_, reply) => Held::other(reply, Err(error()), |_| 0),
        Request::DeleteDeadDeliveries(_, reply) => Held::other(reply, Err(error()), |_| 0),
        Request::Purge { reply, .. } => Held::Count(reply, Err(error())),
        Request::RecordSinks { reply, .. } => Held::Unit(reply, Err(error()), 0),
        Request::ListDeadLetters(_, reply) => Held::other(reply, Err(error()), |_| 0),
        Request::Event(_, reply) => Held::other(reply, Err(error()), |_| 0),
        Request::Replay { reply, .. } => Held::other(reply, Err(error()), |_| 0),
        Request::DeleteUnparsed(_, reply) => Held::other(reply, Err(error()), |_| 0),
        Request::OldestPending(reply) => Held::Text(reply, Err(error())),
        Request::Close(_) => unreachable!("handled by the caller"),
    }
}

fn apply(tx: &Transaction<'_>, request: Request) -> Held {
    match request {
        Request::Append(delivery, reply) => {
            let result = append(tx, delivery);
            let added = match &result {
                Ok(AppendOutcome::Stored(events)) => events.len() as u64,
                _ => 0,
            };
            Held::Append(reply, result, added)
        }
        Request::AppendMalformed(delivery, reply) => {
            let result = exec(
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
        Request::Complete(id, record, reply) => {
            // The event stays, delivered, for the history: this update is the write that used
            // to delete it, so keeping history costs no second write.
            let result = exec(
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
                    rfc3339(Utc::now()),
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
            let result = exec(
                tx,
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
            let result = exec(
                tx,
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
        Request::RecordSinks {
            id,
            progress,
            next_ms,
            record,
            reply,
        } => {
            let result = record_sinks(tx, &id, &progress, next_ms, &record);
            // Dead-lettering a pending event takes it out of the backlog.
            let change = match (&result, next_ms) {
                (Ok(changed), None) => -(*changed as i64),
                _ => 0,
            };
            Held::Unit(reply, result.map(|_| ()), change)
        }
        Request::ListDeadLetters(query, reply) => {
            Held::other(reply, list_dead_letters(tx, &query), |_| 0)
        }
        Request::Event(id, reply) => Held::other(reply, stored_event(tx, &id), |_| 0),
        Request::Replay {
            selection,
            sink,
            delivered_too,
            reply,
        } => Held::other(
            reply,
            replay(tx, &selection, sink.as_deref(), delivered_too),
            |report| report.replayed.len() as i64,
        ),
        Request::DeleteUnparsed(id, reply) => {
            let result = exec(
                tx,
                "DELETE FROM dead_deliveries WHERE seq = ?1",
                params![id],
            )
            .map(|deleted| deleted > 0)
            .map_err(JournalError::from);
            Held::other(reply, result, |_| 0)
        }
        Request::DeadDeliveries(limit, reply) => Held::Dead(reply, dead_deliveries(tx, limit)),
        Request::DeadDelivery(seq, reply) => Held::other(reply, dead_delivery(tx, seq), |_| 0),
        Request::DeleteDeadDeliveries(selection, reply) => {
            Held::other(reply, delete_dead_deliveries(tx, &selection), |_| 0)
        }
        Request::Probe(reply) => {
            let result = exec(
                tx,
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
            history_before_ms,
            dead_before,
            reply,
        } => {
            let result = purge_batch(
                tx,
                deliveries_before_ms,
                history_before_ms,
                dead_before.as_deref(),
            )
            .map_err(JournalError::from);
            Held::Count(reply, result)
        }
        Request::Close(_) => unreachable!("handled by the caller"),
    }
}

/// Runs one statement through the connection's statement cache: the hot statements run for
/// every delivery and event, and re-parsing them each time shows up in profiles.
fn exec(tx: &Transaction<'_>, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

fn append(tx: &Transaction<'_>, delivery: NewDelivery) -> Result<AppendOutcome, JournalError> {
    let received_at = rfc3339(delivery.received_at);
    let inserted = exec(
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
    )?;
    if inserted == 0 {
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

fn due(
    tx: &Transaction<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<JournaledEvent>, JournalError> {
    let mut statement = tx.prepare_cached(
        "SELECT id, delivery_key, idx, webhook_id, event_type, received_at, request_id, event,
                attempts, sinks_done, sink_attempts
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
            sink_attempts: parse_map(&row.get::<_, String>(10)?),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn dead_letters(tx: &Transaction<'_>, limit: usize) -> Result<Vec<DeadLetter>, JournalError> {
    let mut statement = tx.prepare_cached(
        "SELECT id, event_type, delivery_key, received_at, attempts, last_error, failed_sinks,
                dead_at, sinks_done, sink_attempts
         FROM events WHERE state = 'dead' ORDER BY seq LIMIT ?1",
    )?;
    let rows = statement.query_map(params![limit as i64], dead_letter_row)?;
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
fn record_sinks(
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

fn list_dead_letters(
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
    let mut statement = tx.prepare_cached(
        "SELECT id, event_type, delivery_key, received_at, attempts, last_error, failed_sinks,
                dead_at, sinks_done, sink_attempts
         FROM events
         WHERE state = 'dead'
           AND (?1 IS NULL OR EXISTS (SELECT 1 FROM json_each(failed_sinks) WHERE value = ?1))
           AND (?2 IS NULL OR event_type = ?2)
           AND (?3 IS NULL OR substr(event_type, 1, length(?3)) = ?3)
         ORDER BY seq LIMIT ?4",
    )?;
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

fn stored_event(tx: &Transaction<'_>, id: &str) -> Result<Option<StoredEvent>, JournalError> {
    let row = tx
        .query_row(
            "SELECT id, state, event_type, delivery_key, webhook_id, received_at, request_id,
                    attempts, last_error, sinks_done, sink_attempts, failed_sinks, dead_at, event
             FROM events WHERE id = ?1",
            params![id],
            |row| {
                Ok((
                    StoredEventRow {
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
                    },
                    row.get::<_, String>(13)?,
                ))
            },
        )
        .optional()?;
    let Some((row, raw)) = row else {
        return Ok(None);
    };
    let event = serde_json::value::RawValue::from_string(raw)
        .map_err(|e| JournalError::Storage(format!("stored event {id} is not JSON: {e}")))?;
    Ok(Some(StoredEvent {
        id: row.id,
        state: row.state,
        event_type: row.event_type,
        delivery_key: row.delivery_key,
        webhook_id: row.webhook_id,
        received_at: row.received_at,
        request_id: row.request_id,
        attempts: row.attempts,
        last_error: row.last_error,
        sinks_done: row.sinks_done,
        sink_attempts: row.sink_attempts,
        failed_sinks: row.failed_sinks,
        dead_at: row.dead_at,
        event,
    }))
}

/// [`StoredEvent`] before its JSON is checked.
struct StoredEventRow {
    id: String,
    state: String,
    event_type: String,
    delivery_key: String,
    webhook_id: Option<String>,
    received_at: String,
    request_id: Option<String>,
    attempts: u32,
    last_error: Option<String>,
    sinks_done: Vec<String>,
    sink_attempts: BTreeMap<String, u32>,
    failed_sinks: Vec<String>,
    dead_at: Option<String>,
}

/// (id, state if found, failed sinks, sinks done) of an event named for a replay.
type ReplayCandidate = (String, Option<String>, Vec<String>, Vec<String>);

fn replay(
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
                "SELECT id, failed_sinks, sinks_done FROM events WHERE state = 'dead' ORDER BY seq",
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

/// One purge step: forgotten delivery keys, then at most [`PURGE_BATCH`] delivered events
/// older than the history window (oldest first), dead letters and unparsed deliveries older than
/// theirs. Returns the rows deleted.
fn purge_batch(
    tx: &Transaction<'_>,
    deliveries_before_ms: i64,
    history_before_ms: i64,
    dead_before: Option<&str>,
) -> rusqlite::Result<u64> {
    let mut deleted = exec(
        tx,
        "DELETE FROM deliveries WHERE received_unix_ms < ?1",
        params![deliveries_before_ms],
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
                SELECT seq FROM events WHERE state = 'dead' AND dead_at < ?1 LIMIT ?2)",
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
fn history_page(connection: &Connection, query: &HistoryQuery) -> Result<EventPage, JournalError> {
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

fn event_detail(connection: &Connection, id: &str) -> Result<Option<EventDetail>, JournalError> {
    let row = connection
        .prepare_cached(
            "SELECT id, event_type, state, delivery_key, webhook_id, request_id, received_at,
                    attempts, last_error, delivered_at, dead_at, object, list, record_id,
                    enrichment, event, data, data_omitted, sinks_done, failed_sinks,
                    sink_attempts, sink_errors, sinks_delivered
             FROM events WHERE id = ?1",
        )?
        .query_row(params![id], |row| {
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
            Ok((
                EventDetailRow {
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
                    data_omitted: row.get(17)?,
                    sinks: sinks.records(status),
                },
                row.get::<_, String>(15)?,
                row.get::<_, Option<String>>(16)?,
            ))
        })
        .optional()?;
    let Some((row, event, data)) = row else {
        return Ok(None);
    };
    Ok(Some(row.into_detail(event, data)?))
}

/// The columns of [`EventDetail`] before its JSON is checked.
pub(super) struct EventDetailRow {
    pub id: String,
    pub event_type: String,
    pub status: EventStatus,
    pub delivery_key: String,
    pub webhook_id: Option<String>,
    pub request_id: Option<String>,
    pub received_at: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
    pub dead_at: Option<String>,
    pub object: Option<String>,
    pub list: Option<String>,
    pub record_id: Option<String>,
    pub enrichment: Option<String>,
    pub data_omitted: bool,
    pub sinks: Vec<super::history::SinkRecord>,
}

impl EventDetailRow {
    pub(super) fn into_detail(
        self,
        event: String,
        data: Option<String>,
    ) -> Result<EventDetail, JournalError> {
        let id = &self.id;
        let event = serde_json::value::RawValue::from_string(event)
            .map_err(|e| JournalError::Storage(format!("stored event {id} is not JSON: {e}")))?;
        // Kept data is JSON this daemon wrote; if it somehow is not, the event is still shown.
        let data = data.and_then(|text| serde_json::value::RawValue::from_string(text).ok());
        Ok(EventDetail {
            id: self.id,
            event_type: self.event_type,
            status: self.status,
            delivery_key: self.delivery_key,
            webhook_id: self.webhook_id,
            request_id: self.request_id,
            received_at: self.received_at,
            attempts: self.attempts,
            last_error: self.last_error,
            delivered_at: self.delivered_at,
            dead_at: self.dead_at,
            object: self.object,
            list: self.list,
            record_id: self.record_id,
            enrichment: self.enrichment,
            event,
            data,
            data_omitted: self.data_omitted,
            sinks: self.sinks,
        })
    }
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

fn unparsed_list(
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

fn unparsed_one(
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

fn dead_delivery(tx: &Transaction<'_>, seq: i64) -> Result<Option<DeadDeliveryBody>, JournalError> {
    let found = tx
        .query_row(
            "SELECT seq, key, received_at, request_id, reason, body
             FROM dead_deliveries WHERE seq = ?1",
            params![seq],
            |row| {
                Ok(DeadDeliveryBody {
                    seq: row.get(0)?,
                    key: row.get(1)?,
                    received_at: row.get(2)?,
                    request_id: row.get(3)?,
                    reason: row.get(4)?,
                    body: row.get(5)?,
                })
            },
        )
        .optional()?;
    Ok(found)
}

fn delete_dead_deliveries(
    tx: &Transaction<'_>,
    selection: &DeadDeliverySelection,
) -> Result<Vec<i64>, JournalError> {
    match selection {
        DeadDeliverySelection::All => {
            let mut statement = tx.prepare("DELETE FROM dead_deliveries RETURNING seq")?;
            let mut deleted = statement
                .query_map([], |row| row.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            deleted.sort_unstable();
            Ok(deleted)
        }
        DeadDeliverySelection::Seqs(seqs) => {
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
    async fn a_copied_journal_takes_its_own_id_and_a_moved_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("j.sqlite3");
        let journal = SqliteJournal::open(&original).unwrap();
        let id = journal.id().to_string();
        journal.close().await;

        let journal = SqliteJournal::open(&original).unwrap();
        assert_eq!(journal.id(), id, "reopening keeps the id");
        journal.close().await;

        let moved = dir.path().join("moved.sqlite3");
        std::fs::rename(&original, &moved).unwrap();
        let journal = SqliteJournal::open(&moved).unwrap();
        assert_eq!(
            journal.id(),
            id,
            "a move within the file system keeps the id"
        );
        journal.close().await;

        let copy = dir.path().join("copy.sqlite3");
        std::fs::copy(&moved, &copy).unwrap();
        let copied = SqliteJournal::open(&copy).unwrap();
        let copy_id = copied.id().to_string();
        assert_ne!(copy_id, id, "a copy takes an id of its own");
        copied.close().await;
        let journal = SqliteJournal::open(&moved).unwrap();
        assert_eq!(journal.id(), id, "the original keeps its id");
        journal.close().await;
        let copied = SqliteJournal::open(&copy).unwrap();
        assert_eq!(
            copied.id(),
            copy_id,
            "the copy keeps its new id from then on"
        );
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
        journal
            .complete("k:0", &AttemptRecord::default())
            .await
            .unwrap();
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

    fn progress(attempts: u32, done: &[&str], failed: &[&str]) -> SinkProgress {
        SinkProgress {
            attempts,
            last_error: format!("{}: boom", failed.join(",")),
            sinks_done: done.iter().map(|s| s.to_string()).collect(),
            sink_attempts: failed.iter().map(|s| (s.to_string(), attempts)).collect(),
            sinks_failed: failed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn per_sink_attempts_survive_a_retry_and_reach_the_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&dir.path().join("j.sqlite3")).unwrap();
        journal.append(delivery("k", 1)).await.unwrap();
        journal
            .record_sinks(
                "k:0",
                &progress(1, &["a"], &["b"]),
                Some(Utc::now()),
                &AttemptRecord::default(),
            )
            .await
            .unwrap();
        let due = journal.due(10).await.unwrap();
        assert_eq!(due[0].sink_attempts.get("b"), Some(&1));
        assert_eq!(due[0].sinks_done, vec!["a"]);
        journal
            .record_sinks(
                "k:0",
                &progress(2, &["a"], &["b"]),
                None,
                &AttemptRecord::default(),
            )
            .await
            .unwrap();
        assert_eq!(journal.backlog(), 0);
        let letters = journal.dead_letters(10).await.unwrap();
        assert_eq!(letters[0].sink_attempts.get("b"), Some(&2));
        assert_eq!(letters[0].sinks_done, vec!["a"]);
        assert_eq!(letters[0].failed_sinks, vec!["b"]);
    }

    #[tokio::test]
    async fn dead_letters_are_listed_by_sink_and_event_type() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&dir.path().join("j.sqlite3")).unwrap();
        journal.append(delivery("k", 3)).await.unwrap();
        journal
            .record_sinks(
                "k:0",
                &progress(1, &[], &["a"]),
                None,
                &AttemptRecord::default(),
            )
            .await
            .unwrap();
        journal
            .record_sinks(
                "k:1",
                &progress(1, &[], &["b"]),
                None,
                &AttemptRecord::default(),
            )
            .await
            .unwrap();
        journal
            .record_sinks(
                "k:2",
                &progress(1, &[], &["a", "b"]),
                None,
                &AttemptRecord::default(),
            )
            .await
            .unwrap();
        let query = |sink: Option<&str>, event_type: Option<&str>| DeadLetterQuery {
            sink: sink.map(str::to_string),
            event_type: event_type.map(str::to_string),
            limit: 10,
        };
        let ids = |letters: Vec<DeadLetter>| letters.into_iter().map(|l| l.id).collect::<Vec<_>>();
        assert_eq!(
            ids(journal.list_dead_letters(&query(None, None)).await.unwrap()).len(),
            3
        );
        assert_eq!(
            ids(journal
                .list_dead_letters(&query(Some("a"), None))
                .await
                .unwrap()),
            vec!["k:0", "k:2"]
        );
        assert_eq!(
            ids(journal
                .list_dead_letters(&query(None, Some("record.*")))
                .await
                .unwrap())
            .len(),
            3
        );
        assert!(journal
            .list_dead_letters(&query(None, Some("note.*")))
            .await
            .unwrap()
            .is_empty());
        assert!(journal
            .list_dead_letters(&query(None, Some("record.created")))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn replay_for_one_sink_marks_the_other_failed_sinks_done() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&dir.path().join("j.sqlite3")).unwrap();
        journal.append(delivery("k", 2)).await.unwrap();
        journal
            .record_sinks(
                "k:0",
                &progress(3, &["ok"], &["a", "b"]),
                None,
                &AttemptRecord::default(),
            )
            .await
            .unwrap();
        journal
            .record_sinks(
                "k:1",
                &progress(3, &[], &["b"]),
                None,
                &AttemptRecord::default(),
            )
            .await
            .unwrap();
        let report = journal
            .replay(&ReplaySelection::All, Some("a"), false)
            .await
            .unwrap();
        assert_eq!(report.replayed, vec!["k:0"], "k:1 did not fail on a");
        assert_eq!(journal.backlog(), 1);
        let due = journal.due(10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].attempts, 0);
        assert!(due[0].sink_attempts.is_empty());
        assert_eq!(due[0].sinks_done, vec!["ok", "b"]);
        let report = journal
            .replay(
                &ReplaySelection::Ids(vec!["k:0".into(), "k:1".into(), "nope".into()]),
                None,
                false,
            )
            .await
            .unwrap();
        assert_eq!(report.replayed, vec!["k:1"]);
        let reasons: Vec<&str> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert!(reasons[0].contains("pending") && reasons[1].contains("not in the journal"));
    }

    #[tokio::test]
    async fn a_replay_by_another_process_is_counted_in_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        let daemon = SqliteJournal::open(&path).unwrap();
        daemon.append(delivery("k", 1)).await.unwrap();
        daemon
            .record_sinks(
                "k:0",
                &progress(1, &[], &["a"]),
                None,
                &AttemptRecord::default(),
            )
            .await
            .unwrap();
        assert_eq!(daemon.backlog(), 0);
        // The CLI opens its own connection while the daemon's is open.
        let cli = SqliteJournal::open(&path).unwrap();
        let report = cli
            .replay(&ReplaySelection::All, None, false)
            .await
            .unwrap();
        assert_eq!(report.replayed, vec!["k:0"]);
        cli.close().await;
        let due = daemon.due(10).await.unwrap();
        assert_eq!(due.len(), 1, "the daemon sees the replayed event");
        assert_eq!(daemon.backlog(), 1, "and counts it");
        daemon
            .complete("k:0", &AttemptRecord::default())
            .await
            .unwrap();
        assert_eq!(daemon.backlog(), 0);
    }

    #[tokio::test]
    async fn a_journal_from_before_per_sink_attempts_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite3");
        let old = Connection::open(&path).unwrap();
        let old_schema = SCHEMA.replace(",\n    sink_attempts TEXT NOT NULL DEFAULT '{}'", "");
        assert!(!old_schema.contains("sink_attempts"));
        old.execute_batch(&old_schema).unwrap();
        old.execute(
            "INSERT INTO events (id, delivery_key, idx, event_type, received_at, event)
             VALUES ('k:0', 'k', 0, 'record.updated', 'now', '{}')",
            [],
        )
        .unwrap();
        drop(old);
        let journal = SqliteJournal::open(&path).unwrap();
        let due = journal.due(10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert!(due[0].sink_attempts.is_empty());
    }
}
