//! The rows of events appended in the writer's open transaction, kept back until the
//! transaction is about to commit, so that an event delivered meanwhile is written once.
//!
//! In: the daemon's appends and completions (the two writes every event makes), inside the
//! transaction the writer thread holds open over batches (`journal::embedded`). Out: the events'
//! rows, inserted in the order they were appended, either when the transaction commits or before
//! any other operation runs in it.
//!
//! Without this, each event is inserted pending (into the table, its id index and both indexes
//! of open events) and moments later updated to delivered (the row rewritten, both index entries
//! deleted again). Most events are delivered before the transaction that appended them commits,
//! so such an event is inserted once, already delivered, and never enters the indexes of open
//! events. Nothing about durability changes: both writes are answered once their redo-log
//! records are on the disk, exactly as before, and the rows wait only for the commit that they
//! would have waited for anyway. Nothing but the writer sees its open transaction, and it
//! inserts these rows before it runs any operation other than an append or a completion, so no
//! read, update or commit finds the journal without them.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{params, Transaction};

use super::super::codec::{json_list, json_texts, rfc3339};
use super::super::history::AttemptRecord;
use super::super::{AppendOutcome, JournalError, JournaledEvent, NewDelivery};
use super::insert_delivery;

/// Events appended in the open transaction and not inserted yet, in the order they came.
#[derive(Default)]
pub(in crate::journal) struct Deferred {
    rows: Vec<Row>,
    /// Where each id is in `rows`.
    by_id: HashMap<Arc<str>, usize>,
}

/// One event's row, kept back. What the events of a delivery share is kept once for them all,
/// and the id once for the row and its entry in `by_id`: these rows are made for every event,
/// beside the copy the caller is answered with.
struct Row {
    id: Arc<str>,
    index: u32,
    event_type: String,
    raw: String,
    delivery: Arc<DeliveryRow>,
    /// When and how it was delivered, if it was before the row was inserted.
    delivered: Option<(String, AttemptRecord)>,
}

/// What the rows of one delivery's events share.
struct DeliveryRow {
    key: String,
    webhook_id: Option<String>,
    received_at: String,
    request_id: Option<String>,
    received_ms: i64,
}

impl Deferred {
    pub(in crate::journal) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Forgets every row: the transaction they belonged to was rolled back (their redo-log
    /// records bring back what was answered).
    pub(in crate::journal) fn clear(&mut self) {
        self.rows.clear();
        self.by_id.clear();
    }

    /// Inserts every row kept back, in the order they were appended, and forgets them. On an
    /// error they are forgotten as well: the transaction must then be rolled back.
    pub(in crate::journal) fn insert(&mut self, tx: &Transaction<'_>) -> Result<(), JournalError> {
        self.by_id.clear();
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut statement = tx.prepare_cached(INSERT)?;
        // A pending row's history is empty: the values its columns default to.
        let none = AttemptRecord::default();
        for Row {
            id,
            index,
            event_type,
            raw,
            delivery,
            delivered,
        } in self.rows.drain(..)
        {
            let (state, delivered_at, record) = match &delivered {
                None => ("pending", None, &none),
                Some((at, record)) => ("delivered", Some(at.as_str()), record),
            };
            statement.execute(params![
                &*id,
                delivery.key,
                index as i64,
                delivery.webhook_id,
                event_type,
                delivery.received_at,
                delivery.request_id,
                raw,
                delivery.received_ms,
                state,
                delivered_at,
                json_list(&record.sinks_done),
                record.enrichment,
                record.object,
                record.list,
                record.record_id,
                record.data,
                record.data_omitted,
                json_texts(&record.sink_errors),
                json_texts(&record.sinks_delivered),
            ])?;
        }
        Ok(())
    }
}

/// An event's row: pending, as `super::append` inserts it, or delivered, as `super::append` and
/// then `super::complete` leave it.
const INSERT: &str = "INSERT INTO events
        (id, delivery_key, idx, webhook_id, event_type, received_at, request_id, event,
         received_unix_ms, state, delivered_at, sinks_done, enrichment, object, list, record_id,
         data, data_omitted, sink_errors, sinks_delivered)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
             ?19, ?20)
     ON CONFLICT(id) DO NOTHING";

/// [`super::append`], with the events' rows kept back in `deferred`.
pub(in crate::journal) fn append(
    tx: &Transaction<'_>,
    delivery: NewDelivery,
    deferred: &mut Deferred,
) -> Result<AppendOutcome, JournalError> {
    let received_at = rfc3339(delivery.received_at);
    if insert_delivery(tx, &delivery, &received_at)? == 0 {
        return Ok(AppendOutcome::Duplicate);
    }
    let NewDelivery {
        key,
        webhook_id,
        received_at: received,
        request_id,
        events,
        ..
    } = delivery;
    let shared = Arc::new(DeliveryRow {
        key,
        webhook_id,
        received_at,
        request_id,
        received_ms: received.timestamp_millis(),
    });
    let mut kept = tx.prepare_cached("SELECT 1 FROM events WHERE id = ?1")?;
    let mut stored = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        let id = crate::event::event_id(&shared.key, index);
        // An event already kept (see `super::append`) is not stored nor processed again.
        if deferred.by_id.contains_key(id.as_str()) || kept.exists(params![id])? {
            continue;
        }
        let index = index as u32;
        let row_id: Arc<str> = Arc::from(id.as_str());
        deferred.by_id.insert(row_id.clone(), deferred.rows.len());
        deferred.rows.push(Row {
            id: row_id,
            index,
            event_type: event.event_type.clone(),
            raw: event.raw.clone(),
            delivery: shared.clone(),
            delivered: None,
        });
        stored.push(JournaledEvent {
            id,
            delivery_key: shared.key.clone(),
            index,
            webhook_id: shared.webhook_id.clone(),
            event_type: event.event_type,
            received_at: shared.received_at.clone(),
            request_id: shared.request_id.clone(),
            raw: event.raw,
            attempts: 0,
            sinks_done: Vec::new(),
            sink_attempts: Default::default(),
        });
    }
    Ok(AppendOutcome::Stored(stored))
}

/// [`super::complete`]; an event whose row is still kept back is marked delivered there.
pub(in crate::journal) fn complete(
    tx: &Transaction<'_>,
    id: &str,
    delivered_at: DateTime<Utc>,
    record: AttemptRecord,
    deferred: &mut Deferred,
) -> Result<usize, JournalError> {
    let Some(&at) = deferred.by_id.get(id) else {
        return super::complete(tx, id, delivered_at, &record);
    };
    let row = &mut deferred.rows[at];
    if row.delivered.is_some() {
        // Already delivered: no longer pending, as `super::complete` would find it.
        return Ok(0);
    }
    row.delivered = Some((rfc3339(delivered_at), record));
    Ok(1)
}

#[cfg(test)]
mod tests;
