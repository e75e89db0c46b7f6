//! The embedded journal's redo log: what makes a delivery durable before the SQLite transaction
//! that holds it is committed.
//!
//! In: the two operations that run for every event (a delivery appended, an event completed),
//! encoded by the caller, from the writer thread (`journal::embedded`). Out: one `write` and one
//! `fdatasync` per batch of them, and, when the daemon starts after a crash, the records that the
//! database had not committed yet, to apply again.
//!
//! Why: committing SQLite once per batch rewrites, for every batch, a whole 4 KiB WAL page of each
//! B-tree the batch touched (the events table and its indexes, the delivery keys and theirs): far
//! more bytes than the half-kilobyte events themselves, and the larger part of ingress's CPU. With
//! this log the writer keeps one SQLite transaction open over many batches and commits it every
//! few tens of milliseconds (or at once for any other kind of write), while each batch is made
//! durable by appending its records here. After each commit the log starts again from its
//! beginning. See docs/architecture.md, "The embedded journal".
//!
//! The file is `{journal}.redo`. A record is `[length: u32][crc32: u32][lsn: u64][payload]` (little
//! endian; the CRC covers the LSN and the payload). Log sequence numbers grow by one per record,
//! and the database keeps the last one it has committed (`meta.redo_lsn`) in the same transaction
//! as the changes. Reading, a record counts when its CRC is right and its LSN is the next one:
//! the first above the database's, then each one more. So a torn last write ends the log, and so
//! do the older records that lie beyond the end after the log started again from the beginning
//! (their LSNs are at or below the database's). Applying a record again is harmless: an append
//! inserts nothing that exists, a completion changes only a pending event.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::history::AttemptRecord;
use super::{JournalError, NewDelivery};
use crate::event::ParsedEvent;

/// Bytes before each payload: length, CRC, LSN.
const HEADER: usize = 16;
/// A payload longer than this is not a record (a damaged length).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// Past this size the file is cut back when the log starts again, so that one burst does not keep
/// its space for good.
const KEEP_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// One change the log makes durable.
#[derive(Debug, PartialEq)]
pub(super) enum RedoRecord {
    Append(NewDelivery),
    Complete {
        id: String,
        delivered_at: DateTime<Utc>,
        record: AttemptRecord,
    },
}

/// How a payload begins: an append is written field by field (its events' JSON goes in as it
/// is, where JSON would escape every quote of it); a completion is JSON.
const APPEND: u8 = b'A';

/// The payload of an append, made by the caller (off the writer thread).
pub(super) fn encode_append(delivery: &NewDelivery) -> Vec<u8> {
    let size = delivery
        .events
        .iter()
        .map(|event| event.event_type.len() + event.raw.len() + 8)
        .sum::<usize>()
        + delivery.key.len()
        + 128;
    let mut out = Vec::with_capacity(size);
    out.push(APPEND);
    put_text(&mut out, &delivery.key);
    out.push(u8::from(delivery.key_derived));
    put_optional(&mut out, delivery.webhook_id.as_deref());
    out.extend_from_slice(
        &delivery
            .received_at
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_le_bytes(),
    );
    put_optional(&mut out, delivery.request_id.as_deref());
    out.extend_from_slice(&(delivery.events.len() as u32).to_le_bytes());
    for event in &delivery.events {
        put_text(&mut out, &event.event_type);
        put_text(&mut out, &event.raw);
    }
    out
}

/// The payload of a completion.
pub(super) fn encode_complete(
    id: &str,
    delivered_at: DateTime<Utc>,
    record: &AttemptRecord,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Complete<'a> {
        id: &'a str,
        delivered_at: DateTime<Utc>,
        record: &'a AttemptRecord,
    }
    // Serializing strings, a time and string maps cannot fail.
    serde_json::to_vec(&Complete {
        id,
        delivered_at,
        record,
    })
    .unwrap_or_default()
}

/// Reads a payload back.
pub(super) fn decode(payload: &[u8]) -> Result<RedoRecord, String> {
    if payload.first() != Some(&APPEND) {
        #[derive(Deserialize)]
        struct Complete {
            id: String,
            delivered_at: DateTime<Utc>,
            record: AttemptRecord,
        }
        let complete: Complete = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        return Ok(RedoRecord::Complete {
            id: complete.id,
            delivered_at: complete.delivered_at,
            record: complete.record,
        });
    }
    let mut input = Reader(&payload[1..]);
    let key = input.text()?;
    let key_derived = input.take(1)?[0] != 0;
    let webhook_id = input.optional()?;
    let nanos = i64::from_le_bytes(input.array()?);
    let received_at = DateTime::from_timestamp_nanos(nanos);
    let request_id = input.optional()?;
    let count = u32::from_le_bytes(input.array()?) as usize;
    let mut events = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        events.push(ParsedEvent {
            event_type: input.text()?,
            raw: input.text()?,
        });
    }
    Ok(RedoRecord::Append(NewDelivery {
        key,
        key_derived,
        webhook_id,
        received_at,
        request_id,
        events,
    }))
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            out.push(1);
            put_text(out, text);
        }
        None => out.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        if self.0.len() < count {
            return Err("record ends early".to_string());
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.take(N)?
            .try_into()
            .map_err(|_| "record ends early".to_string())
    }

    fn text(&mut self) -> Result<String, String> {
        let length = u32::from_le_bytes(self.array()?) as usize;
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "text is not UTF-8".to_string())
    }

    fn optional(&mut self) -> Result<Option<String>, String> {
        match self.take(1)?[0] {
            0 => Ok(None),
            _ => self.text().map(Some),
        }
    }
}

/// The log file, owned by the writer thread of the daemon that holds the journal's lock.
pub(super) struct RedoLog {
    file: File,
    path: PathBuf,
    /// Where the next batch is written.
    end: u64,
    /// The LSN of the next record.
    next_lsn: u64,
    /// `fdatasync` after each batch (`storage.sync = "full"`); without it a batch survives a
    /// crash of the process, not of the machine, like SQLite's `synchronous=NORMAL`.
    sync: bool,
    /// Records of the batch being made, not yet written.
    staged: Vec<u8>,
    staged_first_lsn: u64,
}

/// The log's path for the journal at `journal`.
pub(super) fn path_for(journal: &Path) -> PathBuf {
    let mut path = journal.as_os_str().to_owned();
    path.push(".redo");
    PathBuf::from(path)
}

impl RedoLog {
    /// Opens (creating if needed) the log of the journal at `journal`. Its records are read with
    /// [`RedoLog::read_after`] before anything is written.
    pub(super) fn open(journal: &Path, sync: bool) -> Result<RedoLog, JournalError> {
        let path = path_for(journal);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                JournalError::Storage(format!("cannot open the redo log {}: {e}", path.display()))
            })?;
        Ok(RedoLog {
            file,
            path,
            end: 0,
            next_lsn: 1,
            sync,
            staged: Vec::new(),
            staged_first_lsn: 1,
        })
    }

    /// The records after `committed_lsn` (the last one the database holds), to apply again.
    pub(super) fn read_after(
        &mut self,
        committed_lsn: u64,
    ) -> Result<Vec<(u64, RedoRecord)>, JournalError> {
        let bytes = std::fs::read(&self.path).map_err(|e| {
            JournalError::Storage(format!(
                "cannot read the redo log {}: {e}",
                self.path.display()
            ))
        })?;
        Ok(read_records(&bytes, committed_lsn)
            .into_iter()
            .filter_map(|(lsn, payload)| match decode(payload) {
                Ok(record) => Some((lsn, record)),
                Err(error) => {
                    // Only a bug could write a record whose CRC is right and whose JSON is not.
                    tracing::error!(lsn, %error, "redo log record cannot be read; skipped");
                    None
                }
            })
            .collect())
    }

    /// Whether records were written since the log last started again: a transaction that fails
    /// to commit then leaves acknowledged changes that only the log holds.
    pub(super) fn has_written(&self) -> bool {
        self.end > 0
    }

    /// Adds a record to the batch being made; returns its LSN.
    pub(super) fn stage(&mut self, payload: &[u8]) -> u64 {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&lsn.to_le_bytes());
        hasher.update(payload);
        self.staged.extend_from_slice(&length.to_le_bytes());
        self.staged
            .extend_from_slice(&hasher.finalize().to_le_bytes());
        self.staged.extend_from_slice(&lsn.to_le_bytes());
        self.staged.extend_from_slice(payload);
        lsn
    }

    /// Drops the staged records: the transaction that holds their changes commits now, which
    /// makes them durable without the log.
    pub(super) fn discard_staged(&mut self) {
        self.staged.clear();
        self.next_lsn = self.staged_first_lsn;
    }

    /// The LSN of the last record written (or staged and about to be committed with the
    /// transaction).
    pub(super) fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Writes the staged records and waits until they are on the disk. On failure nothing of
    /// the batch counts: its LSNs are given out again.
    pub(super) fn write_staged(&mut self) -> Result<(), JournalError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let written = self
            .file
            .write_all_at(&self.staged, self.end)
            .and_then(|()| {
                if self.sync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
        match written {
            Ok(()) => {
                self.end += self.staged.len() as u64;
                self.staged.clear();
                self.staged_first_lsn = self.next_lsn;
                Ok(())
            }
            Err(error) => {
                self.discard_staged();
                Err(JournalError::Storage(format!(
                    "cannot write the redo log {}: {error}",
                    self.path.display()
                )))
            }
        }
    }

    /// Starts again from the beginning of the file: the database has committed every record up
    /// to `committed_lsn`, the last one given out. Nothing is erased: what lies beyond the new end
    /// is not read back (see the module's notes), and overwriting blocks the file already has
    /// spares the file system a change of size at every `fdatasync`.
    pub(super) fn restart_after(&mut self, committed_lsn: u64) {
        self.end = 0;
        self.staged.clear();
        self.next_lsn = committed_lsn + 1;
        self.staged_first_lsn = self.next_lsn;
        if self
            .file
            .metadata()
            .is_ok_and(|metadata| metadata.len() > KEEP_FILE_BYTES)
        {
            let _ = self.file.set_len(0);
        }
    }
}

/// The records of `bytes` that count (see the module's notes), with their LSNs.
fn read_records(bytes: &[u8], committed_lsn: u64) -> Vec<(u64, &[u8])> {
    let mut records = Vec::new();
    let mut at = 0;
    let mut expected: Option<u64> = None;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let field = |range: std::ops::Range<usize>| header.get(range).unwrap_or_default();
        let length = u32::from_le_bytes(field(0..4).try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(field(4..8).try_into().unwrap_or_default());
        let lsn = u64::from_le_bytes(field(8..16).try_into().unwrap_or_default());
        if length > MAX_PAYLOAD {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + length) else {
            break;
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&lsn.to_le_bytes());
        hasher.update(payload);
        if hasher.finalize() != crc {
            break;
        }
        let counts = match expected {
            None => lsn > committed_lsn,
            Some(next) => lsn == next,
        };
        if !counts {
            break;
        }
        records.push((lsn, payload));
        expected = Some(lsn + 1);
        at += HEADER + length;
    }
    records
}

#[cfg(test)]
#[path = "redo_tests.rs"]
mod tests;
