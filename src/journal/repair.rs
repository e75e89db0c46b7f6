//! Repair of the embedded journal: check a database file with SQLite's own integrity check, and
//! recover what can still be read from a damaged one into a new journal.
//!
//! In: the journal's path (the daemon stopped: `journal recover` holds the journal's lock). Out:
//! a [`CheckReport`] (SQLite's findings), or a [`RecoveryReport`]: rows kept per table, where
//! reading stopped, and where the damaged file was moved, untouched. Rows are copied one by one,
//! first in order and, when a damaged page stops that, from the end backwards, so the rows on
//! either side of the damage are kept; recovered pending events are due at once, so the next
//! start processes them again (sinks deduplicate on the event id).

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OpenFlags, Transaction};

use super::sqlite::SCHEMA;
use super::JournalError;

/// The tables of the journal, in the order they are recovered.
const TABLES: [&str; 4] = ["deliveries", "events", "dead_deliveries", "meta"];

/// What SQLite's integrity check found.
#[derive(Debug, Clone)]
pub(crate) struct CheckReport {
    /// SQLite's own words, one finding a line; empty when the file is sound.
    pub(crate) problems: Vec<String>,
}

impl CheckReport {
    pub(crate) fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What `recover` kept of one table.
#[derive(Debug, Clone)]
pub(crate) struct TableRecovery {
    pub(crate) table: &'static str,
    /// Rows copied into the new journal.
    pub(crate) rows: u64,
    /// Why reading stopped before the end, if it did (rows past that point are lost unless the
    /// backwards pass reached them).
    pub(crate) stopped: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RecoveryReport {
    /// Where the damaged database (and its WAL) now is, as it was.
    pub(crate) damaged_copy: PathBuf,
    pub(crate) tables: Vec<TableRecovery>,
    /// Recovered events waiting for processing (due at once) and dead letters.
    pub(crate) pending: u64,
    pub(crate) dead: u64,
}

/// Runs SQLite's integrity check on the journal at `path`, read-only: nothing is written.
pub(crate) fn check(path: &Path) -> Result<CheckReport, JournalError> {
    if !path.is_file() {
        return Err(JournalError::Storage(format!(
            "no journal at {}",
            path.display()
        )));
    }
    let connection = read_only(path)?;
    // A damaged file may fail to even prepare the check: that is a finding, not an error.
    let findings = (|| {
        let mut statement = connection.prepare("PRAGMA integrity_check(100)")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        rows.collect::<Result<Vec<String>, _>>()
    })();
    let problems = match findings {
        Ok(rows) if rows == ["ok"] => Vec::new(),
        Ok(rows) => rows,
        Err(error) => vec![error.to_string()],
    };
    Ok(CheckReport { problems })
}

/// Moves the damaged journal at `path` aside (with its WAL) and builds a new one there from
/// every row that can still be read. The caller holds the journal's lock.
pub(crate) fn recover(path: &Path) -> Result<RecoveryReport, JournalError> {
    if !path.is_file() {
        return Err(JournalError::Storage(format!(
            "no journal at {}",
            path.display()
        )));
    }
    let damaged_copy = aside(path)?;
    let old = read_only(&damaged_copy)?;
    // A file shorter than its header says is refused outright unless the schema is "writable":
    // SQLite then reads the pages that are there (the connection is read-only all the same).
    old.pragma_update(None, "writable_schema", "ON")
        .map_err(|e| {
            JournalError::Storage(format!("cannot read {}: {e}", damaged_copy.display()))
        })?;
    let storage = |e: rusqlite::Error| {
        JournalError::Storage(format!(
            "cannot create the new journal {}: {e}",
            path.display()
        ))
    };
    let mut new = Connection::open(path).map_err(storage)?;
    new.pragma_update(None, "journal_mode", "WAL")
        .map_err(storage)?;
    new.execute_batch(SCHEMA).map_err(storage)?;
    let tx = new.transaction().map_err(storage)?;
    let mut tables = Vec::new();
    for table in TABLES {
        tables.push(copy_table(&old, &tx, table).map_err(storage)?);
    }
    // Due at once: the next start processes every recovered pending event.
    tx.execute(
        "UPDATE events SET next_attempt_unix_ms = 0 WHERE state = 'pending'",
        [],
    )
    .map_err(storage)?;
    let count = |state: &str| {
        tx.query_row(
            "SELECT COUNT(*) FROM events WHERE state = ?1",
            [state],
            |row| row.get::<_, i64>(0),
        )
        .map(|n| n.max(0) as u64)
    };
    let pending = count("pending").map_err(storage)?;
    let dead = count("dead").map_err(storage)?;
    tx.commit().map_err(storage)?;
    Ok(RecoveryReport {
        damaged_copy,
        tables,
        pending,
        dead,
    })
}

fn read_only(path: &Path) -> Result<Connection, JournalError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| JournalError::Storage(format!("cannot open {}: {e}", path.display())))
}

/// Renames the database and its WAL and shared-memory files to `{name}.damaged-{time}` (the WAL
/// holds commits not yet in the main file, and SQLite finds it by name, so they move together).
fn aside(path: &Path) -> Result<PathBuf, JournalError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut copy = path.as_os_str().to_owned();
    copy.push(format!(".damaged-{stamp}"));
    let copy = PathBuf::from(copy);
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = copy.as_os_str().to_owned();
        to.push(suffix);
        if Path::new(&from).exists() {
            std::fs::rename(&from, &to).map_err(|e| {
                JournalError::Storage(format!(
                    "cannot move {} aside: {e}",
                    Path::new(&from).display()
                ))
            })?;
        }
    }
    Ok(copy)
}

/// The columns of `table` in a database, in order; empty when it cannot be read.
fn columns(connection: &Connection, table: &str) -> Result<Vec<String>, rusqlite::Error> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = statement.query_map([table], |row| row.get::<_, String>(0))?;
    names.collect()
}

/// Copies every readable row of `table`: forwards until the damage, then backwards from the end
/// until it again. Errors are those of the new journal; the old one's only stop the reading.
fn copy_table(
    old: &Connection,
    new: &Transaction<'_>,
    table: &'static str,
) -> Result<TableRecovery, rusqlite::Error> {
    let wanted = columns(new, table)?;
    let present = match columns(old, table) {
        Ok(present) if !present.is_empty() => present,
        Ok(_) => {
            return Ok(TableRecovery {
                table,
                rows: 0,
                stopped: Some("the damaged file has no such table readable".to_string()),
            })
        }
        Err(error) => {
            return Ok(TableRecovery {
                table,
                rows: 0,
                stopped: Some(error.to_string()),
            })
        }
    };
    // Only columns both know: an older journal lacks the newer ones, which keep their defaults.
    let shared: Vec<String> = present
        .into_iter()
        .filter(|column| wanted.contains(column))
        .map(|column| format!("\"{column}\""))
        .collect();
    let list = shared.join(", ");
    let placeholders = vec!["?"; shared.len()].join(", ");
    let mut insert = new.prepare(&format!(
        "INSERT OR IGNORE INTO {table} ({list}) VALUES ({placeholders})"
    ))?;
    let mut rows = 0u64;
    let mut stopped = None;
    for order in ["ASC", "DESC"] {
        let read = (|| -> Result<(), Stop> {
            let mut select = old
                .prepare(&format!(
                    "SELECT {list} FROM {table} ORDER BY rowid {order}"
                ))
                .map_err(Stop::Read)?;
            let mut cursor = select.query([]).map_err(Stop::Read)?;
            while let Some(row) = cursor.next().map_err(Stop::Read)? {
                let values = (0..shared.len())
                    .map(|index| row.get::<_, Value>(index))
                    .collect::<Result<Vec<Value>, _>>()
                    .map_err(Stop::Read)?;
                rows += insert
                    .execute(params_from_iter(values))
                    .map_err(Stop::Write)? as u64;
            }
            Ok(())
        })();
        match read {
            // Read to the end: the backwards pass would find nothing more.
            Ok(()) if order == "ASC" => break,
            Ok(()) => {}
            Err(Stop::Write(error)) => return Err(error),
            Err(Stop::Read(error)) => {
                if stopped.is_none() {
                    stopped = Some(error.to_string());
                }
            }
        }
    }
    Ok(TableRecovery {
        table,
        rows,
        stopped,
    })
}

/// Why copying a table stopped: the damaged file could not be read further (expected), or the
/// new journal could not be written (the recovery fails).
enum Stop {
    Read(rusqlite::Error),
    Write(rusqlite::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sound_journal_passes_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite3");
        let connection = Connection::open(&path).unwrap();
        connection.execute_batch(SCHEMA).unwrap();
        drop(connection);
        assert!(check(&path).unwrap().is_sound());
    }
}
