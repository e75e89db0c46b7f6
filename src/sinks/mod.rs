//! Sinks: where processed events leave the daemon.
//!
//! In: a [`SinkLine`] (one event, serialised once). Out: `Ok` when the sink has taken the line,
//! or a [`SinkError`] that says whether trying again can help. Every sink receives the same
//! stable event `id`, so a consumer can drop the rare repeat after a crash. One file per kind:
//! `jsonl`/`stdout` ([`line_writer`]), [`http`], [`redis_stream`], [`command`], [`postgres`]
//! (a mirror of Attio in PostgreSQL, see `crate::mirror`).

pub mod command;
pub mod http;
pub mod line_writer;
pub mod postgres;
pub mod redis_stream;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use self::settings::{SinkKind, SinkRetrySettings, SinkSettings};
use crate::attio::AttioClient;
use crate::enrich::Enrichment;
use crate::journal::JournaledEvent;

pub use command::CommandSink;
pub use http::HttpSink;
pub use line_writer::LineWriter;
pub use postgres::PostgresSink;
pub use redis_stream::RedisStreamSink;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    /// Trying again cannot help (for example the receiver refused the event as invalid).
    pub permanent: bool,
    /// The receiver asked not to be called again before this long (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            permanent: false,
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            permanent: true,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, delay: Duration) -> SinkError {
        self.retry_after = Some(delay);
        self
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
    /// When Attio's answer (`ok` or `not_found`) was in hand, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
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
        let raw: Box<RawValue> = serde_json::from_str(&event.raw)
            .map_err(|e| SinkError::permanent(format!("stored event is not valid JSON: {e}")))?;
        let fields = SinkLineFields {
            id: &event.id,
            event_type: &event.event_type,
            webhook_id: event.webhook_id.as_deref(),
            delivery_key: &event.delivery_key,
            received_at: &event.received_at,
            event: &raw,
            data: enrichment.data.as_ref(),
            enrichment: enrichment.status.as_str(),
            fetched_at: enrichment
                .fetched_at
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            enrichment_error: enrichment.error.as_ref().map(|e| e.to_string()),
            object: enrichment.object.as_deref(),
            list: enrichment.list.as_deref(),
            attribute: enrichment.attribute.as_deref(),
        };
        let json = serde_json::to_vec(&fields)
            .map_err(|e| SinkError::permanent(format!("cannot serialise the sink line: {e}")))?;
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
    Http(HttpSink),
    RedisStream(RedisStreamSink),
    Command(CommandSink),
    Postgres(PostgresSink),
}

impl Sink {
    pub fn open(name: &str, settings: &SinkSettings) -> Result<Sink, SinkError> {
        Self::open_with(name, settings, None)
    }

    /// `attio`: the daemon's shared client, for sinks that read from Attio (`postgres`).
    pub fn open_with(
        name: &str,
        settings: &SinkSettings,
        attio: Option<&AttioClient>,
    ) -> Result<Sink, SinkError> {
        match &settings.kind {
            SinkKind::Jsonl { path } => {
                LineWriter::append_to_file(path)
                    .map(Sink::Jsonl)
                    .map_err(|e| {
                        SinkError::permanent(format!(
                            "sinks.{name}: cannot open {}: {e}",
                            path.display()
                        ))
                    })
            }
            SinkKind::Stdout {} => Ok(Sink::Stdout(LineWriter::stdout())),
            SinkKind::Http(http) => HttpSink::open(name, http).map(Sink::Http),
            SinkKind::RedisStream(stream) => {
                RedisStreamSink::open(name, stream).map(Sink::RedisStream)
            }
            SinkKind::Command(command) => Ok(Sink::Command(CommandSink::open(name, command))),
            SinkKind::Postgres(postgres) => {
                PostgresSink::open(name, postgres, attio).map(Sink::Postgres)
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Jsonl(_) => "jsonl",
            Sink::Stdout(_) => "stdout",
            Sink::Http(_) => "http",
            Sink::RedisStream(_) => "redis_stream",
            Sink::Command(_) => "command",
            Sink::Postgres(_) => "postgres",
        }
    }

    /// Delivers one event; `attempt` counts from 1 for this event at this sink.
    pub async fn deliver(&self, line: &SinkLine, attempt: u32) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(writer) | Sink::Stdout(writer) => {
                writer.write_line(line.json.clone()).await
            }
            Sink::Http(http) => http.deliver(line, attempt).await,
            Sink::RedisStream(stream) => stream.deliver(line).await,
            Sink::Command(command) => command.deliver(line, attempt).await,
            Sink::Postgres(postgres) => postgres.deliver(line).await,
        }
    }
}

/// Every sink, by name, with its retry overrides.
pub struct Sinks {
    sinks: BTreeMap<String, (Sink, SinkRetrySettings)>,
}

impl Sinks {
    pub fn open(settings: &BTreeMap<String, SinkSettings>) -> Result<Sinks, SinkError> {
        Self::open_with(settings, None)
    }

    /// `attio`: the daemon's shared client, for sinks that read from Attio (`postgres`).
    pub fn open_with(
        settings: &BTreeMap<String, SinkSettings>,
        attio: Option<&AttioClient>,
    ) -> Result<Sinks, SinkError> {
        let mut sinks = BTreeMap::new();
        for (name, sink) in settings {
            sinks.insert(
                name.clone(),
                (Sink::open_with(name, sink, attio)?, sink.retry.clone()),
            );
        }
        Ok(Sinks { sinks })
    }

    /// Readies the sinks that keep state (migrates `postgres` schemas) before events flow.
    pub async fn prepare(&self) {
        for (sink, _) in self.sinks.values() {
            if let Sink::Postgres(postgres) = sink {
                postgres.prepare().await;
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Sink> {
        self.sinks.get(name).map(|(sink, _)| sink)
    }

    /// What reopens the file sinks (on SIGHUP), apart from the sinks themselves.
    pub fn file_reopener(&self) -> FileReopener {
        FileReopener(
            self.sinks
                .values()
                .filter_map(|(sink, _)| match sink {
                    Sink::Jsonl(writer) => Some(writer.clone()),
                    _ => None,
                })
                .collect(),
        )
    }

    /// The sink's own `attempts`/`retry_*` keys (unset ones fall back to `[worker]`).
    pub fn retry(&self, name: &str) -> Option<&SinkRetrySettings> {
        self.sinks.get(name).map(|(_, retry)| retry)
    }
}

/// Reopens every `jsonl` sink's file: what SIGHUP does, so that log rotation (`mv` or `rm`, then
/// a signal) lets go of the old file at once.
#[derive(Clone, Default)]
pub struct FileReopener(Vec<LineWriter>);

impl FileReopener {
    /// Asks every file sink to reopen its path; returns how many there are.
    pub fn reopen(&self) -> usize {
        for writer in &self.0 {
            writer.reopen();
        }
        self.0.len()
    }
}
