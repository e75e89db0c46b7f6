//! Sinks: where processed events leave the daemon.
//!
//! In: a [`SinkLine`] (one event, serialised once). Out: `Ok` when the sink has taken the line,
//! or a [`SinkError`] that says whether trying again can help. Every sink receives the same
//! stable event `id`, so a consumer can drop the rare repeat after a crash.

pub mod line_writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::SinkSettings;
use crate::enrich::Enrichment;
use crate::journal::JournaledEvent;

pub use line_writer::LineWriter;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    /// Trying again cannot help (for example the receiver refused the event as invalid).
    pub permanent: bool,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            permanent: false,
        }
    }
}

/// The JSON object a sink receives for one event.
#[derive(Debug, Serialize)]
pub struct SinkLineFields<'a> {
    /// The event identity: delivery key and index. Stable across retries and replays.
    pub id: &'a str,
    pub event_type: &'a str,
    pub webhook_id: Option<&'a str>,
    pub delivery_key: &'a str,
    pub received_at: &'a str,
    /// The event exactly as Attio sent it.
    pub event: &'a RawValue,
    /// The re-fetched resource (Attio's `data`); `null` when not fetched or not found.
    pub data: Option<&'a serde_json::Value>,
    /// `ok`, `not_found`, `disabled`, `skipped` or `failed`.
    pub enrichment: &'a str,
    /// Why enrichment failed (only with `enrichment: "failed"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment_error: Option<String>,
    /// Slug of the event's object (for entries, notes and comments: the parent object).
    pub object: Option<&'a str>,
    /// Slug of the event's list.
    pub list: Option<&'a str>,
    /// Slug of the attribute the event names.
    pub attribute: Option<&'a str>,
}

/// One event, serialised once and shared by every sink it goes to.
#[derive(Debug, Clone)]
pub struct SinkLine {
    pub id: Arc<str>,
    pub event_type: Arc<str>,
    pub json: Arc<[u8]>,
}

impl SinkLine {
    /// A line without enrichment (`enrichment: "skipped"`), with `data` if given.
    pub fn build(
        event: &JournaledEvent,
        data: Option<&serde_json::Value>,
    ) -> Result<SinkLine, SinkError> {
        Self::build_enriched(event, &Enrichment::skipped(data.cloned()))
    }

    /// The line for an enriched event: the fetched `data`, the slugs and the status.
    pub fn build_enriched(
        event: &JournaledEvent,
        enrichment: &Enrichment,
    ) -> Result<SinkLine, SinkError> {
        let raw: Box<RawValue> = serde_json::from_str(&event.raw).map_err(|e| SinkError {
            message: format!("stored event is not valid JSON: {e}"),
            permanent: true,
        })?;
        let fields = SinkLineFields {
            id: &event.id,
            event_type: &event.event_type,
            webhook_id: event.webhook_id.as_deref(),
            delivery_key: &event.delivery_key,
            received_at: &event.received_at,
            event: &raw,
            data: enrichment.data.as_ref(),
            enrichment: enrichment.status.as_str(),
            enrichment_error: enrichment.error.as_ref().map(|e| e.to_string()),
            object: enrichment.object.as_deref(),
            list: enrichment.list.as_deref(),
            attribute: enrichment.attribute.as_deref(),
        };
        let json = serde_json::to_vec(&fields).map_err(|e| SinkError {
            message: format!("cannot serialise the sink line: {e}"),
            permanent: true,
        })?;
        Ok(SinkLine {
            id: Arc::from(event.id.as_str()),
            event_type: Arc::from(event.event_type.as_str()),
            json: Arc::from(json),
        })
    }
}

/// One configured sink.
pub enum Sink {
    Jsonl(LineWriter),
    Stdout(LineWriter),
}

impl Sink {
    pub fn open(name: &str, settings: &SinkSettings) -> Result<Sink, SinkError> {
        match settings {
            SinkSettings::Jsonl { path } => LineWriter::append_to_file(path)
                .map(Sink::Jsonl)
                .map_err(|e| SinkError {
                    message: format!("sinks.{name}: cannot open {}: {e}", path.display()),
                    permanent: true,
                }),
            SinkSettings::Stdout {} => Ok(Sink::Stdout(LineWriter::stdout())),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Jsonl(_) => "jsonl",
            Sink::Stdout(_) => "stdout",
        }
    }

    pub async fn deliver(&self, line: &SinkLine) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(writer) | Sink::Stdout(writer) => {
                writer.write_line(line.json.clone()).await
            }
        }
    }
}

/// Every sink, by name.
pub struct Sinks {
    sinks: BTreeMap<String, Sink>,
}

impl Sinks {
    pub fn open(settings: &BTreeMap<String, SinkSettings>) -> Result<Sinks, SinkError> {
        let mut sinks = BTreeMap::new();
        for (name, sink) in settings {
            sinks.insert(name.clone(), Sink::open(name, sink)?);
        }
        Ok(Sinks { sinks })
    }

    pub fn get(&self, name: &str) -> Option<&Sink> {
        self.sinks.get(name)
    }
}
