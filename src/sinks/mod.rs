//! Sinks: where processed events leave the daemon.
//!
//! In: a [`SinkLine`] (one event, serialised once). Out: `Ok` when the sink has taken the line,
//! or a [`SinkError`] that says whether trying again can help. Every sink receives the same
//! stable event `id`, so a consumer can drop the rare repeat after a crash. One file per kind:
//! `jsonl`/`stdout` ([`line_writer`]), [`http`], [`redis_stream`], [`command`], [`postgres`]
//! (a mirror of Attio in PostgreSQL, see `crate::mirror`).

pub(crate) mod command;
pub(crate) mod http;
pub(crate) mod line_writer;
pub(crate) mod postgres;
pub(crate) mod redis_stream;
pub(crate) mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use self::settings::{SinkKind, SinkRetrySettings, SinkSettings};
use crate::attio::AttioClient;
use crate::enrich::Enrichment;
use crate::event::EventView;

pub(crate) use command::CommandSink;
pub(crate) use http::HttpSink;
pub(crate) use line_writer::LineWriter;
pub use postgres::PostgresSink;
pub(crate) use redis_stream::RedisStreamSink;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    /// Trying again cannot help (for example the receiver refused the event as invalid).
    pub permanent: bool,
    /// The receiver asked not to be called again before this long (HTTP `Retry-After`).
    pub(crate) retry_after: Option<Duration>,
}

impl SinkError {
    pub(crate) fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            permanent: false,
            retry_after: None,
        }
    }

    pub(crate) fn permanent(message: impl Into<String>) -> SinkError {
        SinkError {
            message: message.into(),
            permanent: true,
            retry_after: None,
        }
    }

    pub(crate) fn with_retry_after(mut self, delay: Duration) -> SinkError {
        self.retry_after = Some(delay);
        self
    }
}

/// Who an event is: the fields of its sink line before `event`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineHead<'a> {
    /// The event identity: delivery key and index. Stable across retries and replays.
    pub(crate) id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) webhook_id: Option<&'a str>,
    pub(crate) delivery_key: &'a str,
    /// RFC 3339, when the delivery was accepted.
    pub(crate) received_at: &'a str,
}

/// One event, serialised once and shared by every sink it goes to.
#[derive(Debug, Clone)]
pub struct SinkLine {
    pub id: Arc<str>,
    pub event_type: Arc<str>,
    /// Shared, not copied, by every sink it goes to.
    pub json: Bytes,
}

impl SinkLine {
    /// The JSON object a sink receives for one event (docs/sinks.md), its keys in this order:
    /// `id`, `event_type`, `webhook_id`, `delivery_key`, `received_at`; `event`, the event
    /// exactly as Attio sent it (copied from the text the worker read, not serialised again);
    /// `data`, the re-fetched resource (`null` when not fetched or not found); `enrichment`
    /// (`ok`, `not_found`, `disabled`, `skipped` or `failed`); `fetched_at` (RFC 3339, when
    /// Attio's answer was in hand) and `enrichment_error` (with `failed`), each only when
    /// there is one; then the slugs `object` (for entries, notes and comments: the parent
    /// object), `list` and `attribute`.
    pub(crate) fn new(
        head: &LineHead<'_>,
        event: &EventView,
        enrichment: &Enrichment,
    ) -> Result<SinkLine, SinkError> {
        let data = enrichment.data.as_ref();
        let mut line = Line(Vec::with_capacity(event.raw().len() + 512));
        line.0.push(b'{');
        line.field("id", head.id)?;
        line.field("event_type", head.event_type)?;
        line.field("webhook_id", &head.webhook_id)?;
        line.field("delivery_key", head.delivery_key)?;
        line.field("received_at", head.received_at)?;
        line.key("event");
        line.0.extend_from_slice(event.raw().as_bytes());
        line.field("data", &data)?;
        line.field("enrichment", enrichment.status.as_str())?;
        if let Some(at) = enrichment.fetched_at {
            line.field(
                "fetched_at",
                &at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            )?;
        }
        if let Some(error) = &enrichment.error {
            line.field("enrichment_error", &error.to_string())?;
        }
        line.field("object", &enrichment.object)?;
        line.field("list", &enrichment.list)?;
        line.field("attribute", &enrichment.attribute)?;
        line.0.push(b'}');
        Ok(SinkLine {
            id: Arc::from(head.id),
            event_type: Arc::from(head.event_type),
            // Taken over as it is: no copy.
            json: Bytes::from(line.0),
        })
    }
}

/// A sink line being written: what serde_json writes for a struct, field by field.
struct Line(Vec<u8>);

impl Line {
    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), SinkError> {
        self.key(key);
        serde_json::to_writer(&mut self.0, value)
            .map_err(|e| SinkError::permanent(format!("cannot serialise the sink line: {e}")))
    }
}

/// One configured sink.
pub(crate) enum Sink {
    Jsonl(LineWriter),
    Stdout(LineWriter),
    Http(HttpSink),
    RedisStream(RedisStreamSink),
    Command(CommandSink),
    Postgres(PostgresSink),
}

impl Sink {
    /// `attio`: the daemon's shared client, for sinks that read from Attio (`postgres`).
    pub(crate) fn open_with(
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

    /// Delivers one event; `attempt` counts from 1 for this event at this sink.
    pub(crate) async fn deliver(&self, line: &SinkLine, attempt: u32) -> Result<(), SinkError> {
        match self {
            Sink::Jsonl(writer) | Sink::Stdout(writer) => {
                writer.write_line(line.json.clone()).await
            }
            // Boxed: these are large futures (a network client's, a child process's), and
            // without the box every event's task would carry the largest of them (and copy it
            // when spawned), whichever sink it goes to.
            Sink::Http(http) => Box::pin(http.deliver(line, attempt)).await,
            Sink::RedisStream(stream) => Box::pin(stream.deliver(line)).await,
            Sink::Command(command) => Box::pin(command.deliver(line, attempt)).await,
            Sink::Postgres(postgres) => Box::pin(postgres.deliver(line)).await,
        }
    }
}

/// Every sink, by name, with its retry overrides.
pub(crate) struct Sinks {
    sinks: BTreeMap<String, (Sink, SinkRetrySettings)>,
}

impl Sinks {
    /// `attio`: the daemon's shared client, for sinks that read from Attio (`postgres`).
    pub(crate) fn open_with(
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
    pub(crate) async fn prepare(&self) {
        for (sink, _) in self.sinks.values() {
            if let Sink::Postgres(postgres) = sink {
                postgres.prepare().await;
            }
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Sink> {
        self.sinks.get(name).map(|(sink, _)| sink)
    }

    /// What reopens the file sinks (on SIGHUP), apart from the sinks themselves.
    pub(crate) fn file_reopener(&self) -> FileReopener {
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
    pub(crate) fn retry(&self, name: &str) -> Option<&SinkRetrySettings> {
        self.sinks.get(name).map(|(_, retry)| retry)
    }
}

/// Reopens every `jsonl` sink's file: what SIGHUP does, so that log rotation (`mv` or `rm`, then
/// a signal) lets go of the old file at once.
#[derive(Clone, Default)]
pub(crate) struct FileReopener(Vec<LineWriter>);

impl FileReopener {
    /// Asks every file sink to reopen its path; returns how many there are.
    pub(crate) fn reopen(&self) -> usize {
        for writer in &self.0 {
            writer.reopen();
        }
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;
    use serde_json::{json, Value};

    use super::*;
    use crate::enrich::EnrichmentStatus;

    /// The line's shape as serde writes it: what `SinkLine::new` must keep byte for byte.
    #[derive(Serialize)]
    struct Shape<'a> {
        id: &'a str,
        event_type: &'a str,
        webhook_id: Option<&'a str>,
        delivery_key: &'a str,
        received_at: &'a str,
        event: &'a RawValue,
        data: Option<&'a Value>,
        enrichment: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        fetched_at: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        enrichment_error: Option<String>,
        object: Option<&'a str>,
        list: Option<&'a str>,
        attribute: Option<&'a str>,
    }

    fn both(head: &LineHead<'_>, raw: &str, enrichment: &Enrichment) -> (String, String) {
        let view = EventView::read(raw.to_string(), false).unwrap();
        let built = SinkLine::new(head, &view, enrichment).unwrap();
        let event: Box<RawValue> = serde_json::from_str(raw).unwrap();
        let shape = Shape {
            id: head.id,
            event_type: head.event_type,
            webhook_id: head.webhook_id,
            delivery_key: head.delivery_key,
            received_at: head.received_at,
            event: &event,
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
        (
            String::from_utf8(built.json.to_vec()).unwrap(),
            serde_json::to_string(&shape).unwrap(),
        )
    }

    #[test]
    fn the_line_is_what_serde_writes_for_its_fields_with_the_event_copied_verbatim() {
        let raw =
            r#"{"event_type":"record.updated","z":1.50,"a":"\u00e9\"\n","id":{"record_id":"r"}}"#;
        let head = LineHead {
            id: "key \"quoted\" \u{1}:0",
            event_type: "record.updated",
            webhook_id: None,
            delivery_key: "key \"quoted\" \u{1}",
            received_at: "2026-12-07T00:00:00.000000Z",
        };
        let (built, serde) = both(&head, raw, &Enrichment::skipped(None));
        assert_eq!(built, serde);
        assert!(built.contains(raw), "the event is copied as stored");

        let enriched = Enrichment {
            status: EnrichmentStatus::Failed,
            data: Some(json!({"values": {"stage": [{"status": "won"}]}, "n": 1e3})),
            fetched_at: Some(chrono::Utc::now()),
            object: Some("deals".into()),
            list: None,
            attribute: Some("stage".into()),
            error: Some(crate::attio::AttioError::InvalidRequest(
                "bad \"id\"".into(),
            )),
            shared: None,
        };
        let head = LineHead {
            webhook_id: Some("w-1"),
            ..head
        };
        let (built, serde) = both(&head, raw, &enriched);
        assert_eq!(built, serde);
        let line: Value = serde_json::from_str(&built).unwrap();
        assert_eq!(line["event"]["z"], json!(1.5));
    }
}
