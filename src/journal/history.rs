//! Event history: what the journal keeps about every event, delivered ones included, for
//! `storage.history`, and the one query interface over it that the API, the console and the CLI
//! use, whichever backend holds the journal.
//!
//! In: the outcome of each attempt, as the worker records it ([`AttemptRecord`], folded into the
//! outcome write the journal makes anyway: no second write per event), and queries
//! ([`HistoryQuery`]). Out: pages of [`EventSummary`] newest first with an opaque cursor, and
//! one event's [`EventDetail`]. Filters mean the same on both backends: the matching rules live
//! here ([`HistoryQuery::matches`] for Redis, [`HistoryQuery::sql`] for SQLite), so the two
//! backends cannot drift apart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The fetched `data` of the last attempt is kept up to this size (its JSON); a larger one is
/// left out and `data_omitted` says so. Records and entries are a few kilobytes; this bounds
/// what one odd record can cost the journal.
pub(crate) const MAX_KEPT_DATA: usize = 64 * 1024;
/// Most events a list asks for.
pub(crate) const MAX_LIMIT: usize = 500;
/// Events a list asks for when it does not say.
pub(crate) const DEFAULT_LIMIT: usize = 50;

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Accepted, not yet attempted (or attempted without a failure being recorded).
    Pending,
    /// Some sink failed; it will be tried again.
    Retrying,
    /// Every sink took it (or no route wanted it).
    Delivered,
    /// A sink used up its attempts or refused it for good: a dead letter.
    Dead,
}

impl EventStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Retrying => "retrying",
            EventStatus::Delivered => "delivered",
            EventStatus::Dead => "dead",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<EventStatus> {
        match text {
            "pending" => Some(EventStatus::Pending),
            "retrying" => Some(EventStatus::Retrying),
            "delivered" => Some(EventStatus::Delivered),
            "dead" => Some(EventStatus::Dead),
            _ => None,
        }
    }

    /// From the journal's stored state and failed attempts: a pending event that failed before
    /// is retrying.
    pub(crate) fn from_state(state: &str, attempts: u32) -> EventStatus {
        match state {
            "delivered" => EventStatus::Delivered,
            "dead" => EventStatus::Dead,
            _ if attempts > 0 => EventStatus::Retrying,
            _ => EventStatus::Pending,
        }
    }
}

/// How long history is kept (`storage.history`, `storage.dead_letter_history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delivered events older than this (by time received) are deleted.
    pub history: Duration,
    /// Dead letters and unparsed deliveries older than this are deleted; `None`: kept until
    /// replayed or deleted.
    pub dead_letters: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            history: Duration::from_secs(7 * 24 * 3600),
            dead_letters: None,
        }
    }
}

/// What one attempt learnt about an event, written with its outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// `ok`, `not_found`, `disabled`, `skipped` or `failed`; `None` when not enriched.
    pub enrichment: Option<String>,
    /// The object's slug, or its id when the slug is unknown.
    pub object: Option<String>,
    /// The list's slug, or its id when the slug is unknown.
    pub list: Option<String>,
    /// The record (or entry) the event is about, for `q`.
    pub record_id: Option<String>,
    /// The fetched `data` as JSON, when it was fetched and fits [`MAX_KEPT_DATA`].
    pub data: Option<String>,
    /// The fetched data was larger than [`MAX_KEPT_DATA`] and is not kept.
    pub data_omitted: bool,
    /// Sinks done after this attempt (earlier ones included).
    pub sinks_done: Vec<String>,
    /// The error of each sink that failed on this attempt (already scrubbed of secrets by the
    /// sink that made it).
    pub sink_errors: BTreeMap<String, String>,
    /// When each sink that took the event on this attempt took it (RFC 3339).
    pub sinks_delivered: BTreeMap<String, String>,
}

impl AttemptRecord {
    /// Keeps `data` when it is small enough.
    pub(crate) fn keep_data(&mut self, data: Option<&serde_json::Value>) {
        let Some(data) = data else {
            return;
        };
        match serde_json::to_string(data) {
            Ok(text) if text.len() <= MAX_KEPT_DATA => self.data = Some(text),
            _ => self.data_omitted = true,
        }
    }
}

/// Which events to list. Every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    pub status: Option<EventStatus>,
    /// An exact type, or a family written `record.*`.
    pub event_type: Option<String>,
    /// Slug or id, as kept for the event.
    pub object: Option<String>,
    pub list: Option<String>,
    /// Events routed to this sink (done, failed or tried).
    pub sink: Option<String>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    /// Received before.
    pub until: Option<DateTime<Utc>>,
    /// An event id, a delivery key or a record id.
    pub q: Option<String>,
    pub limit: usize,
    /// From a previous page's `next_cursor`: only events older than the last one shown.
    pub cursor: Option<u64>,
}

/// What a filter sees of one event (both backends can produce it cheaply).
#[derive(Debug, Clone, Default)]
pub(crate) struct FilterView<'a> {
    pub(crate) id: &'a str,
    pub(crate) delivery_key: &'a str,
    pub(crate) record_id: Option<&'a str>,
    pub(crate) event_type: &'a str,
    pub(crate) status: Option<EventStatus>,
    pub(crate) object: Option<&'a str>,
    pub(crate) list: Option<&'a str>,
    /// Every sink the event met (done, failed or tried).
    pub(crate) sinks: Vec<&'a str>,
    pub(crate) received_ms: i64,
}

impl HistoryQuery {
    /// The limit within bounds (0 means the default).
    pub(crate) fn page_size(&self) -> usize {
        match self.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        }
    }

    /// `record.*` is a family (prefix `record.`); anything else is an exact type.
    fn type_pattern(&self) -> Option<TypePattern<'_>> {
        let pattern = self.event_type.as_deref()?;
        Some(match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('.') || prefix.is_empty() => {
                TypePattern::Family(prefix)
            }
            _ => TypePattern::Exact(pattern),
        })
    }

    /// Whether one event passes every filter (the Redis journal filters this way).
    pub(crate) fn matches(&self, event: &FilterView<'_>) -> bool {
        if let Some(status) = self.status {
            if event.status != Some(status) {
                return false;
            }
        }
        match self.type_pattern() {
            Some(TypePattern::Exact(name)) if event.event_type != name => return false,
            Some(TypePattern::Family(prefix)) if !event.event_type.starts_with(prefix) => {
                return false
            }
            _ => {}
        }
        if self.object.is_some() && event.object != self.object.as_deref() {
            return false;
        }
        if self.list.is_some() && event.list != self.list.as_deref() {
            return false;
        }
        if let Some(sink) = &self.sink {
            if !event.sinks.iter().any(|s| s == sink) {
                return false;
            }
        }
        if let Some(since) = self.since {
            if event.received_ms < since.timestamp_millis() {
                return false;
            }
        }
        if let Some(until) = self.until {
            if event.received_ms >= until.timestamp_millis() {
                return false;
            }
        }
        if let Some(q) = &self.q {
            if event.id != q && event.delivery_key != q && event.record_id != Some(q.as_str()) {
                return false;
            }
        }
        true
    }

    /// The SQLite journal's WHERE clause and its parameters (`events` table, newest first by
    /// `seq`). Columns are those of the journal's schema.
    pub(crate) fn sql(&self) -> (String, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value;
        let mut clauses: Vec<&str> = Vec::new();
        let mut params: Vec<Value> = Vec::new();
        match self.status {
            // `state <> 'delivered'` names the index of the events not delivered (see the
            // journal's schema); delivered events are most of the table, walked newest first.
            Some(EventStatus::Pending) => {
                clauses.push("state <> 'delivered' AND state = 'pending' AND attempts = 0")
            }
            Some(EventStatus::Retrying) => {
                clauses.push("state <> 'delivered' AND state = 'pending' AND attempts > 0")
            }
            Some(EventStatus::Delivered) => clauses.push("state = 'delivered'"),
            Some(EventStatus::Dead) => clauses.push("state <> 'delivered' AND state = 'dead'"),
            None => {}
        }
        match self.type_pattern() {
            Some(TypePattern::Exact(name)) => {
                clauses.push("event_type = ?");
                params.push(Value::Text(name.to_string()));
            }
            Some(TypePattern::Family(prefix)) => {
                clauses.push("substr(event_type, 1, length(?)) = ?");
                params.push(Value::Text(prefix.to_string()));
                params.push(Value::Text(prefix.to_string()));
            }
            None => {}
        }
        if let Some(object) = &self.object {
            clauses.push("object = ?");
            params.push(Value::Text(object.clone()));
        }
        if let Some(list) = &self.list {
            clauses.push("list = ?");
            params.push(Value::Text(list.clone()));
        }
        if let Some(sink) = &self.sink {
            clauses.push(
                "(EXISTS (SELECT 1 FROM json_each(sinks_done) WHERE value = ?)
                  OR EXISTS (SELECT 1 FROM json_each(failed_sinks) WHERE value = ?)
                  OR json_type(sink_attempts, '$.' || json_quote(?)) IS NOT NULL)",
            );
            for _ in 0..3 {
                params.push(Value::Text(sink.clone()));
            }
        }
        if let Some(since) = self.since {
            clauses.push("received_unix_ms >= ?");
            params.push(Value::Integer(since.timestamp_millis()));
        }
        if let Some(until) = self.until {
            clauses.push("received_unix_ms < ?");
            params.push(Value::Integer(until.timestamp_millis()));
        }
        if let Some(q) = &self.q {
            // An event's id is `{delivery key}:{index}`, so the events of one delivery are a
            // range of the id index (';' follows ':'); the record id has an index of its own.
            clauses.push(
                "seq IN (SELECT seq FROM events WHERE id = ?
                         UNION SELECT seq FROM events WHERE id >= ? || ':' AND id < ? || ';'
                         UNION SELECT seq FROM events WHERE record_id = ?)",
            );
            for _ in 0..4 {
                params.push(Value::Text(q.clone()));
            }
        }
        if let Some(cursor) = self.cursor {
            clauses.push("seq < ?");
            params.push(Value::Integer(i64::try_from(cursor).unwrap_or(i64::MAX)));
        }
        let clause = if clauses.is_empty() {
            "1".to_string()
        } else {
            clauses.join(" AND ")
        };
        (clause, params)
    }
}

enum TypePattern<'a> {
    Exact(&'a str),
    Family(&'a str),
}

/// One event in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    pub id: String,
    pub(crate) event_type: String,
    pub status: EventStatus,
    pub(crate) received_at: String,
    /// Failed attempts so far.
    pub attempts: u32,
    pub object: Option<String>,
    pub(crate) list: Option<String>,
    pub(crate) delivery_key: String,
    /// The last error, for events that failed somewhere.
    pub last_error: Option<String>,
    /// Position in the history (newest is highest): the cursor of the page after this event.
    #[serde(skip)]
    pub(crate) seq: u64,
}

/// A page of events, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub data: Vec<EventSummary>,
    /// Pass as `cursor` for the next (older) page; `None`: this is the last page.
    pub next_cursor: Option<String>,
}

impl EventPage {
    /// A page from the events found (at most the page size, newest first). `more`: the backend
    /// saw at least one more match after them.
    pub(crate) fn from_found(data: Vec<EventSummary>, more: bool) -> EventPage {
        let next_cursor = if more {
            data.last().map(|last| last.seq.to_string())
        } else {
            None
        };
        EventPage { data, next_cursor }
    }
}

/// One sink's part in an event's delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkRecord {
    pub name: String,
    pub status: EventStatus,
    /// Failed attempts on this sink.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
}

/// Everything kept about one event.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    pub(crate) id: String,
    pub(crate) event_type: String,
    pub status: EventStatus,
    pub(crate) delivery_key: String,
    pub(crate) webhook_id: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) received_at: String,
    pub(crate) attempts: u32,
    pub(crate) last_error: Option<String>,
    pub delivered_at: Option<String>,
    pub(crate) dead_at: Option<String>,
    pub object: Option<String>,
    pub(crate) list: Option<String>,
    pub record_id: Option<String>,
    /// `ok`, `not_found`, `disabled`, `skipped`, `failed`; `None` before the first attempt.
    pub enrichment: Option<String>,
    /// The event as Attio sent it.
    pub event: Box<serde_json::value::RawValue>,
    /// What the last attempt fetched from Attio, when kept.
    pub data: Option<Box<serde_json::value::RawValue>>,
    pub(crate) data_omitted: bool,
    pub sinks: Vec<SinkRecord>,
}

/// The stored per-sink columns of one event, before they become [`SinkRecord`]s.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredSinks {
    pub(crate) done: Vec<String>,
    pub(crate) failed: Vec<String>,
    pub(crate) attempts: BTreeMap<String, u32>,
    pub(crate) errors: BTreeMap<String, String>,
    pub(crate) delivered: BTreeMap<String, String>,
}

impl StoredSinks {
    /// One record per sink the event met, in name order. A sink that took the event is
    /// delivered; one that failed is dead with the event, else retrying.
    pub(crate) fn records(&self, status: EventStatus) -> Vec<SinkRecord> {
        let mut names: Vec<&String> = self
            .done
            .iter()
            .chain(&self.failed)
            .chain(self.attempts.keys())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let attempts = self.attempts.get(name).copied().unwrap_or(0);
                let sink_status = if self.done.contains(name) {
                    EventStatus::Delivered
                } else if status == EventStatus::Dead && self.failed.contains(name) {
                    EventStatus::Dead
                } else if attempts > 0 {
                    EventStatus::Retrying
                } else {
                    EventStatus::Pending
                };
                SinkRecord {
                    name: name.clone(),
                    status: sink_status,
                    attempts,
                    last_error: self.errors.get(name).cloned(),
                    delivered_at: self.delivered.get(name).cloned(),
                }
            })
            .collect()
    }

    /// Every sink named anywhere, for the `sink` filter.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.done
            .iter()
            .chain(&self.failed)
            .chain(self.attempts.keys())
            .map(String::as_str)
            .collect()
    }
}

/// A change of an event's status, as the stream (`/api/v1/stream`) tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Change {
    pub(crate) id: String,
    pub(crate) event_type: String,
    pub(crate) status: EventStatus,
    /// RFC 3339.
    pub(crate) at: String,
}

/// Where this process announces status changes (ingress: accepted; worker: its outcomes;
/// replays). Publishing with nobody listening costs a failed send and nothing else. A replica
/// announces only what it did itself.
#[derive(Debug, Clone)]
pub(crate) struct Changes {
    sender: tokio::sync::broadcast::Sender<Change>,
    /// Counted here rather than by a listener of the stream, so that no task wakes up per event.
    throughput: std::sync::Arc<Throughput>,
}

impl Default for Changes {
    fn default() -> Changes {
        // A listener that falls further behind than this skips ahead (and is told so).
        let (sender, _) = tokio::sync::broadcast::channel(1024);
        Changes {
            sender,
            throughput: Default::default(),
        }
    }
}

impl Changes {
    pub(crate) fn publish(&self, id: &str, event_type: &str, status: EventStatus) {
        if matches!(status, EventStatus::Delivered | EventStatus::Dead) {
            self.throughput.record();
        }
        if self.sender.receiver_count() == 0 {
            return;
        }
        let _ = self.sender.send(Change {
            id: id.to_string(),
            event_type: event_type.to_string(),
            status,
            at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.sender.subscribe()
    }

    /// Events this process finished recently, for the status page's chart.
    pub(crate) fn throughput(&self) -> &Throughput {
        &self.throughput
    }
}

/// Events finished (delivered or dead) per interval over the last few minutes, counted where this
/// process announces them ([`Changes::publish`]): the status page's throughput chart.
#[derive(Debug)]
pub(crate) struct Throughput {
    started: Instant,
    buckets: std::sync::Mutex<std::collections::VecDeque<(u64, u64)>>,
}

/// Seconds per bar of the chart.
pub(crate) const THROUGHPUT_INTERVAL: u64 = 10;
/// Bars kept (5 minutes).
const THROUGHPUT_BARS: u64 = 30;

impl Default for Throughput {
    fn default() -> Throughput {
        Throughput {
            started: Instant::now(),
            buckets: std::sync::Mutex::default(),
        }
    }
}

impl Throughput {
    fn now(&self) -> u64 {
        self.started.elapsed().as_secs() / THROUGHPUT_INTERVAL
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, u64)>> {
        // One push or read at a time: a poisoned lock holds no broken state.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self) {
        let now = self.now();
        let mut buckets = self.lock();
        match buckets.back_mut() {
            Some((bucket, count)) if *bucket == now => *count += 1,
            _ => buckets.push_back((now, 1)),
        }
        while buckets
            .front()
            .is_some_and(|(bucket, _)| *bucket + THROUGHPUT_BARS <= now)
        {
            buckets.pop_front();
        }
    }

    /// The counts of the last bars, oldest first, and the seconds per bar.
    pub(crate) fn counts(&self) -> (Vec<u64>, u64) {
        let now = self.now();
        let buckets = self.lock();
        let first = (now + 1).saturating_sub(THROUGHPUT_BARS);
        let counts = (first..=now)
            .map(|bar| {
                buckets
                    .iter()
                    .find(|(bucket, _)| *bucket == bar)
                    .map_or(0, |(_, count)| *count)
            })
            .collect();
        (counts, THROUGHPUT_INTERVAL)
    }
}

/// A signed body that was not a delivery, listed without its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnparsedSummary {
    pub id: i64,
    pub key: Option<String>,
    pub received_at: String,
    pub request_id: Option<String>,
    pub reason: String,
    pub body_len: usize,
}

/// One unparsed delivery with its raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnparsedDelivery {
    pub summary: UnparsedSummary,
    pub body: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(event_type: &'a str, status: EventStatus) -> FilterView<'a> {
        FilterView {
            id: "k:0",
            delivery_key: "k",
            record_id: Some("rec"),
            event_type,
            status: Some(status),
            object: Some("deals"),
            list: None,
            sinks: vec!["out"],
            received_ms: 1_000,
        }
    }

    #[test]
    fn a_family_pattern_matches_its_types_only() {
        let query = HistoryQuery {
            event_type: Some("record.*".into()),
            ..Default::default()
        };
        assert!(query.matches(&view("record.updated", EventStatus::Delivered)));
        assert!(!query.matches(&view("note.created", EventStatus::Delivered)));
        let exact = HistoryQuery {
            event_type: Some("record.created".into()),
            ..Default::default()
        };
        assert!(!exact.matches(&view("record.updated", EventStatus::Delivered)));
    }

    #[test]
    fn q_finds_an_event_by_id_delivery_key_or_record_id() {
        for q in ["k:0", "k", "rec"] {
            let query = HistoryQuery {
                q: Some(q.into()),
                ..Default::default()
            };
            assert!(
                query.matches(&view("record.updated", EventStatus::Dead)),
                "{q}"
            );
        }
        let query = HistoryQuery {
            q: Some("other".into()),
            ..Default::default()
        };
        assert!(!query.matches(&view("record.updated", EventStatus::Dead)));
    }

    #[test]
    fn status_object_sink_and_time_filters_must_all_match() {
        let event = view("record.updated", EventStatus::Retrying);
        let query = |change: fn(&mut HistoryQuery)| {
            let mut query = HistoryQuery::default();
            change(&mut query);
            query.matches(&event)
        };
        assert!(query(|q| q.status = Some(EventStatus::Retrying)));
        assert!(!query(|q| q.status = Some(EventStatus::Pending)));
        assert!(query(|q| q.object = Some("deals".into())));
        assert!(!query(|q| q.object = Some("people".into())));
        assert!(!query(|q| q.list = Some("pipeline".into())));
        assert!(query(|q| q.sink = Some("out".into())));
        assert!(!query(|q| q.sink = Some("other".into())));
        assert!(!query(|q| q.since = DateTime::from_timestamp_millis(1_001)));
        assert!(query(|q| q.until = DateTime::from_timestamp_millis(1_001)));
        assert!(!query(|q| q.until = DateTime::from_timestamp_millis(1_000)));
    }

    #[test]
    fn large_fetched_data_is_left_out_and_said_so() {
        let mut record = AttemptRecord::default();
        let big = serde_json::Value::String("x".repeat(MAX_KEPT_DATA + 1));
        record.keep_data(Some(&big));
        assert!(record.data.is_none() && record.data_omitted);
        let mut record = AttemptRecord::default();
        record.keep_data(Some(&serde_json::json!({"a": 1})));
        assert_eq!(record.data.as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn the_limit_defaults_to_fifty_and_is_capped_at_five_hundred() {
        let query = |limit| HistoryQuery {
            limit,
            ..Default::default()
        };
        assert_eq!(query(0).page_size(), 50);
        assert_eq!(query(10_000).page_size(), 500);
    }
}
