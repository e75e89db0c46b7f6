//! How both journal backends write an event's fields as text and read them back: lists and maps
//! of sinks as JSON, times as RFC 3339, the stored event's JSON checked on its way out.
//!
//! In: the values the journal keeps (sink names, per-sink counts and texts, times, stored JSON).
//! Out: the text SQLite columns and Redis hash fields hold, and the values read back from it. A
//! value that does not read back (an older or hand-edited journal) reads as empty rather than
//! failing the whole list it is in.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;

use super::JournalError;

pub(super) fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}

pub(super) fn parse_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn json_map(map: &BTreeMap<String, u32>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

pub(super) fn parse_map(text: &str) -> BTreeMap<String, u32> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn json_texts(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

pub(super) fn parse_texts(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A time as the journal stores it (and shows it): RFC 3339 in UTC, to the microsecond.
pub(super) fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The event `id`'s stored JSON, checked: it is handed on as it is, so it must be JSON.
pub(super) fn stored_event_json(id: &str, raw: String) -> Result<Box<RawValue>, JournalError> {
    RawValue::from_string(raw)
        .map_err(|e| JournalError::Storage(format!("stored event {id} is not JSON: {e}")))
}

/// Kept fetched data: JSON this daemon wrote; if it somehow is not, the event is still shown,
/// without it. An empty text (Redis's "none") is none.
pub(super) fn kept_data_json(data: Option<String>) -> Option<Box<RawValue>> {
    data.filter(|text| !text.is_empty())
        .and_then(|text| RawValue::from_string(text).ok())
}
