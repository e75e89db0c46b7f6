//! The Attio event model: the delivery envelope, the event kinds, and the identity of an event.
//!
//! In: a verified raw body. Out: a [`ParsedDelivery`] whose events keep their original JSON text
//! verbatim, or a [`MalformedBody`] saying why the body is not a delivery. Unknown keys and
//! unknown event types are kept (docs/attio.md §2): Attio adds both over time.

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Every event type Attio documents. Routing and enrichment `match` on this exhaustively, so a
/// new variant cannot be forgotten; anything else is [`EventKind::Unknown`] and still flows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum EventKind {
    RecordCreated,
    RecordUpdated,
    RecordDeleted,
    RecordMerged,
    ListEntryCreated,
    ListEntryUpdated,
    ListEntryDeleted,
    NoteCreated,
    NoteUpdated,
    NoteDeleted,
    NoteContentUpdated,
    TaskCreated,
    TaskUpdated,
    TaskDeleted,
    CommentCreated,
    CommentResolved,
    CommentUnresolved,
    CommentDeleted,
    ListCreated,
    ListUpdated,
    ListDeleted,
    ListAttributeCreated,
    ListAttributeUpdated,
    ObjectAttributeCreated,
    ObjectAttributeUpdated,
    WorkspaceMemberCreated,
    CallRecordingCreated,
    /// Documented, not yet in the subscribable enum.
    ActivityAttributeCreated,
    ActivityAttributeUpdated,
    /// An event type this build does not know. Accepted, stored and routable by name.
    Unknown(String),
}

/// The 27 event types a webhook can subscribe to (Attio's OpenAPI enum).
pub(crate) const SUBSCRIBABLE_EVENT_TYPES: [&str; 27] = [
    "call-recording.created",
    "comment.created",
    "comment.resolved",
    "comment.unresolved",
    "comment.deleted",
    "list.created",
    "list.updated",
    "list.deleted",
    "list-attribute.created",
    "list-attribute.updated",
    "list-entry.created",
    "list-entry.updated",
    "list-entry.deleted",
    "object-attribute.created",
    "object-attribute.updated",
    "note.created",
    "note-content.updated",
    "note.updated",
    "note.deleted",
    "record.created",
    "record.merged",
    "record.updated",
    "record.deleted",
    "task.created",
    "task.updated",
    "task.deleted",
    "workspace-member.created",
];

impl EventKind {
    pub(crate) fn parse(event_type: &str) -> EventKind {
        match event_type {
            "record.created" => EventKind::RecordCreated,
            "record.updated" => EventKind::RecordUpdated,
            "record.deleted" => EventKind::RecordDeleted,
            "record.merged" => EventKind::RecordMerged,
            "list-entry.created" => EventKind::ListEntryCreated,
            "list-entry.updated" => EventKind::ListEntryUpdated,
            "list-entry.deleted" => EventKind::ListEntryDeleted,
            "note.created" => EventKind::NoteCreated,
            "note.updated" => EventKind::NoteUpdated,
            "note.deleted" => EventKind::NoteDeleted,
            "note-content.updated" => EventKind::NoteContentUpdated,
            "task.created" => EventKind::TaskCreated,
            "task.updated" => EventKind::TaskUpdated,
            "task.deleted" => EventKind::TaskDeleted,
            "comment.created" => EventKind::CommentCreated,
            "comment.resolved" => EventKind::CommentResolved,
            "comment.unresolved" => EventKind::CommentUnresolved,
            "comment.deleted" => EventKind::CommentDeleted,
            "list.created" => EventKind::ListCreated,
            "list.updated" => EventKind::ListUpdated,
            "list.deleted" => EventKind::ListDeleted,
            "list-attribute.created" => EventKind::ListAttributeCreated,
            "list-attribute.updated" => EventKind::ListAttributeUpdated,
            "object-attribute.created" => EventKind::ObjectAttributeCreated,
            "object-attribute.updated" => EventKind::ObjectAttributeUpdated,
            "workspace-member.created" => EventKind::WorkspaceMemberCreated,
            "call-recording.created" => EventKind::CallRecordingCreated,
            "activity-attribute.created" => EventKind::ActivityAttributeCreated,
            "activity-attribute.updated" => EventKind::ActivityAttributeUpdated,
            other => EventKind::Unknown(other.to_string()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            EventKind::Unknown(other) => other,
            known => known.label(),
        }
    }

    /// The name of a known kind, and `"unknown"` for every other: the label metrics count by,
    /// so a flood of odd names cannot blow up the series count (and no label is allocated).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            EventKind::RecordCreated => "record.created",
            EventKind::RecordUpdated => "record.updated",
            EventKind::RecordDeleted => "record.deleted",
            EventKind::RecordMerged => "record.merged",
            EventKind::ListEntryCreated => "list-entry.created",
            EventKind::ListEntryUpdated => "list-entry.updated",
            EventKind::ListEntryDeleted => "list-entry.deleted",
            EventKind::NoteCreated => "note.created",
            EventKind::NoteUpdated => "note.updated",
            EventKind::NoteDeleted => "note.deleted",
            EventKind::NoteContentUpdated => "note-content.updated",
            EventKind::TaskCreated => "task.created",
            EventKind::TaskUpdated => "task.updated",
            EventKind::TaskDeleted => "task.deleted",
            EventKind::CommentCreated => "comment.created",
            EventKind::CommentResolved => "comment.resolved",
            EventKind::CommentUnresolved => "comment.unresolved",
            EventKind::CommentDeleted => "comment.deleted",
            EventKind::ListCreated => "list.created",
            EventKind::ListUpdated => "list.updated",
            EventKind::ListDeleted => "list.deleted",
            EventKind::ListAttributeCreated => "list-attribute.created",
            EventKind::ListAttributeUpdated => "list-attribute.updated",
            EventKind::ObjectAttributeCreated => "object-attribute.created",
            EventKind::ObjectAttributeUpdated => "object-attribute.updated",
            EventKind::WorkspaceMemberCreated => "workspace-member.created",
            EventKind::CallRecordingCreated => "call-recording.created",
            EventKind::ActivityAttributeCreated => "activity-attribute.created",
            EventKind::ActivityAttributeUpdated => "activity-attribute.updated",
            EventKind::Unknown(_) => "unknown",
        }
    }

    pub(crate) fn is_known(&self) -> bool {
        !matches!(self, EventKind::Unknown(_))
    }

    /// Where events of this kind carry their object, list or attribute id, as the dot path
    /// Attio's webhook filters take (docs/attio.md §2, §4); `None` when they have none. The same
    /// ids enrichment names (`enrich::plan`; a unit test keeps the two in step).
    pub(crate) fn dimension_field(&self, dimension: Dimension) -> Option<&'static str> {
        use Dimension::{Attribute, List, Object};
        match self {
            EventKind::RecordCreated | EventKind::RecordDeleted | EventKind::RecordMerged => {
                (dimension == Object).then_some("id.object_id")
            }
            EventKind::RecordUpdated => match dimension {
                Object => Some("id.object_id"),
                Attribute => Some("id.attribute_id"),
                List => None,
            },
            EventKind::ListEntryCreated | EventKind::ListEntryDeleted => match dimension {
                Object => Some("parent_object_id"),
                List => Some("id.list_id"),
                Attribute => None,
            },
            EventKind::ListEntryUpdated => Some(match dimension {
                Object => "parent_object_id",
                List => "id.list_id",
                Attribute => "id.attribute_id",
            }),
            EventKind::NoteCreated
            | EventKind::NoteUpdated
            | EventKind::NoteDeleted
            | EventKind::NoteContentUpdated => (dimension == Object).then_some("parent_object_id"),
            EventKind::CommentCreated
            | EventKind::CommentResolved
            | EventKind::CommentUnresolved
            | EventKind::CommentDeleted => match dimension {
                Object => Some("object_id"),
                List => Some("list_id"),
                Attribute => None,
            },
            EventKind::ListCreated | EventKind::ListUpdated | EventKind::ListDeleted => {
                (dimension == List).then_some("id.list_id")
            }
            EventKind::ListAttributeCreated | EventKind::ListAttributeUpdated => match dimension {
                List => Some("id.list_id"),
                Attribute => Some("id.attribute_id"),
                Object => None,
            },
            EventKind::ObjectAttributeCreated | EventKind::ObjectAttributeUpdated => {
                match dimension {
                    Object => Some("id.object_id"),
                    Attribute => Some("id.attribute_id"),
                    List => None,
                }
            }
            EventKind::TaskCreated
            | EventKind::TaskUpdated
            | EventKind::TaskDeleted
            | EventKind::WorkspaceMemberCreated
            | EventKind::CallRecordingCreated
            // Not subscribable, and enrichment cannot read them either.
            | EventKind::ActivityAttributeCreated
            | EventKind::ActivityAttributeUpdated
            | EventKind::Unknown(_) => None,
        }
    }
}

/// What an event can be about besides its own id: an object, a list, an attribute. Route keys
/// (`object = "deals"`) and the `webhooks` commands' flags (`--object deals`) narrow by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dimension {
    Object,
    List,
    Attribute,
}

impl Dimension {
    pub(crate) const ALL: [Dimension; 3] =
        [Dimension::Object, Dimension::List, Dimension::Attribute];

    /// The route key and flag name.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Dimension::Object => "object",
            Dimension::List => "list",
            Dimension::Attribute => "attribute",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of a delivery, its JSON kept exactly as Attio sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    pub event_type: String,
    pub raw: String,
}

/// A verified body that has the shape of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedDelivery {
    pub(crate) webhook_id: Option<String>,
    pub(crate) events: Vec<ParsedEvent>,
}

/// Why a correctly signed body is not a delivery. Such bodies are kept as dead deliveries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MalformedBody {
    #[error("body is not valid UTF-8")]
    NotUtf8,
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not a delivery: {0}")]
    NotAnEnvelope(String),
}

#[derive(Deserialize)]
struct EnvelopeProbe<'a> {
    #[serde(default)]
    webhook_id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    events: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    event_type: Option<serde_json::Value>,
}

/// Parses a verified body: `{webhook_id, events: [...]}`, or a bare single event.
pub(crate) fn parse_delivery(body: &[u8]) -> Result<ParsedDelivery, MalformedBody> {
    let text = std::str::from_utf8(body).map_err(|_| MalformedBody::NotUtf8)?;
    let probe: EnvelopeProbe<'_> = match serde_json::from_str(text) {
        Ok(probe) => probe,
        Err(error) if error.is_data() => {
            return Err(MalformedBody::NotAnEnvelope(
                "expected an object with an `events` array".to_string(),
            ))
        }
        Err(error) => return Err(MalformedBody::NotJson(error.to_string())),
    };
    // serde's derived structs also read a JSON array as their fields in order, so
    // `[null, [{...}]]` would pass as an envelope: only an object is one.
    if !is_object(text) {
        return Err(MalformedBody::NotAnEnvelope(
            "expected an object with an `events` array, not an array".to_string(),
        ));
    }
    let webhook_id = match probe.webhook_id {
        Some(serde_json::Value::String(id)) => Some(id),
        _ => None,
    };
    match probe.events {
        Some(raw_events) => {
            let mut events = Vec::with_capacity(raw_events.len());
            for (index, raw) in raw_events.into_iter().enumerate() {
                events.push(parse_event(raw.get()).map_err(|problem| {
                    MalformedBody::NotAnEnvelope(format!("events[{index}]: {problem}"))
                })?);
            }
            Ok(ParsedDelivery { webhook_id, events })
        }
        None if probe.event_type.is_some() => {
            // A bare event, as some older documentation pages show it.
            let event = parse_event(text.trim()).map_err(MalformedBody::NotAnEnvelope)?;
            Ok(ParsedDelivery {
                webhook_id,
                events: vec![event],
            })
        }
        None => Err(MalformedBody::NotAnEnvelope(
            "no `events` array and no `event_type`".to_string(),
        )),
    }
}

fn parse_event(raw: &str) -> Result<ParsedEvent, String> {
    const NOT_AN_EVENT: &str = "an event must be an object with an `event_type`";
    let read: check::Event = match serde_json::from_str(raw) {
        Ok(read) => read,
        // Not an object (an array, a string...), or `event_type` twice.
        Err(error) if error.is_data() => return Err(NOT_AN_EVENT.to_string()),
        Err(error) => return Err(format!("event is not valid JSON: {error}")),
    };
    match read.event_type {
        None => Err(NOT_AN_EVENT.to_string()),
        Some(Some(event_type)) if !event_type.is_empty() => Ok(ParsedEvent {
            event_type,
            raw: strip_white_space(raw),
        }),
        Some(_) => Err("`event_type` must be a non-empty string".to_string()),
    }
}

/// Whether a JSON text that parsed is an object (rather than an array).
fn is_object(text: &str) -> bool {
    text.trim_start_matches(JSON_WHITE_SPACE).starts_with('{')
}

/// Insignificant white space in JSON (RFC 8259 §2).
const JSON_WHITE_SPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// The event's JSON without insignificant white space, every other byte as Attio sent it (keys
/// in their order, numbers and string escapes untouched), so that it fits on one line of a
/// JSON-lines sink. `raw` is valid JSON (checked by the caller), so a string ends at the first
/// `"` not escaped by a `\`. White space and quotes are ASCII, and no byte of a multi-byte
/// UTF-8 character is, so the text is cut only between characters.
fn strip_white_space(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut kept_from = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (at, byte) in raw.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            out.push_str(&raw[kept_from..at]);
            kept_from = at + 1;
        } else if byte == b'"' {
            in_string = true;
        }
    }
    out.push_str(&raw[kept_from..]);
    out
}

/// For the visitors of `check` and `ids`: every other JSON value (null, booleans, numbers, and
/// with `strings` also strings) yields `$empty`.
macro_rules! scalars_yield {
    ($empty:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($empty)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($empty)
        }
    };
    ($empty:expr, strings) => {
        scalars_yield!($empty);
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($empty)
        }
    };
}

/// One pass over an event's JSON that takes its `event_type` and reads everything else through
/// in full, as the worker, route filters and enrichment will read it: so that no event is stored
/// that those cannot parse (nesting deeper than serde_json's limit of 128, a number beyond `f64`
/// such as `1e400`, a lone surrogate `"\ud800"`). Values are checked, not kept.
mod check {
    use std::fmt;

    use serde::de::{self, Deserialize, MapAccess, SeqAccess, Visitor};

    /// An event: an object (anything else is a data error), with its `event_type` when it has
    /// one (`Some(None)` when that is not a string). `event_type` twice is a data error.
    pub(super) struct Event {
        pub(super) event_type: Option<Option<String>>,
    }

    impl<'de> Deserialize<'de> for Event {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
            deserializer.deserialize_map(EventVisitor)
        }
    }

    struct EventVisitor;

    impl<'de> Visitor<'de> for EventVisitor {
        type Value = Event;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an event object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
            let mut event_type = None;
            while let Some(IsEventType(is_event_type)) = map.next_key()? {
                if !is_event_type {
                    map.next_value::<Checked>()?;
                } else if event_type.is_some() {
                    return Err(de::Error::duplicate_field("event_type"));
                } else {
                    event_type = Some(map.next_value::<Text>()?.0);
                }
            }
            Ok(Event { event_type })
        }
    }

    /// Whether a key is `event_type` (after unescaping, as a derived struct compares it).
    struct IsEventType(bool);

    impl<'de> Deserialize<'de> for IsEventType {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<IsEventType, D::Error> {
            deserializer.deserialize_str(IsEventTypeVisitor)
        }
    }

    struct IsEventTypeVisitor;

    impl Visitor<'_> for IsEventTypeVisitor {
        type Value = IsEventType;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E: de::Error>(self, key: &str) -> Result<IsEventType, E> {
            Ok(IsEventType(key == "event_type"))
        }
    }

    /// A value, checked and kept when it is a string.
    struct Text(Option<String>);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
            deserializer.deserialize_any(TextVisitor)
        }
    }

    struct TextVisitor;

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Text;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Text, E> {
            Ok(Text(Some(text.to_string())))
        }
        fn visit_string<E: de::Error>(self, text: String) -> Result<Text, E> {
            Ok(Text(Some(text)))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
            CheckedVisitor.visit_map(map).map(|_| Text(None))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text, A::Error> {
            CheckedVisitor.visit_seq(seq).map(|_| Text(None))
        }
        scalars_yield!(Text(None));
    }

    /// Any JSON value, read through in full (strings unescaped, numbers parsed, nesting counted)
    /// and not kept.
    struct Checked;

    impl<'de> Deserialize<'de> for Checked {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Checked, D::Error> {
            deserializer.deserialize_any(CheckedVisitor)
        }
    }

    struct CheckedVisitor;

    impl<'de> Visitor<'de> for CheckedVisitor {
        type Value = Checked;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
            while map.next_entry::<Checked, Checked>()?.is_some() {}
            Ok(Checked)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
            while seq.next_element::<Checked>()?.is_some() {}
            Ok(Checked)
        }
        scalars_yield!(Checked, strings);
    }
}

/// The delivery key used when Attio sent no `Idempotency-Key`: the webhook id and the body's
/// SHA-256. Two identical bodies then count as one delivery, which is why the header is preferred.
/// The webhook id comes from the body, so it is shown only when it is at most [`MAX_KEY_LEN`]
/// bytes of visible ASCII (Attio's are UUIDs), else `-`: the body's hash, which covers it, is
/// what identifies the delivery.
pub(crate) fn derived_delivery_key(webhook_id: Option<&str>, body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let webhook_id = webhook_id
        .filter(|id| !id.is_empty() && id.len() <= MAX_KEY_LEN && is_visible_ascii(id.as_bytes()))
        .unwrap_or("-");
    format!("derived:{webhook_id}:{}", hex::encode(&digest[..16]))
}

/// Longest `Idempotency-Key` kept as sent; longer ones are replaced by their hash.
pub(crate) const MAX_KEY_LEN: usize = 200;

/// A delivery key read from the `Idempotency-Key` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderKey {
    /// At most [`MAX_KEY_LEN`] bytes of visible ASCII (`0x21..=0x7E`): used as sent.
    AsSent(String),
    /// Anything else (longer, white space or control characters inside, non-ASCII, bytes that
    /// are not UTF-8, or a value starting like one of the keys made here: `sha256:`, `derived:`):
    /// `sha256:` and the hex SHA-256 of the header's bytes. Stable, so a redelivery with the same
    /// odd header is still recognised; and two different headers never share a key.
    Hashed(String),
}

impl HeaderKey {
    pub(crate) fn into_string(self) -> String {
        match self {
            HeaderKey::AsSent(key) | HeaderKey::Hashed(key) => key,
        }
    }
}

/// Normalises an `Idempotency-Key` header into a delivery key; `None` when it is empty.
pub(crate) fn delivery_key_from_header(value: &[u8]) -> Option<HeaderKey> {
    let value = trim_field_value(value);
    if value.is_empty() {
        return None;
    }
    let visible_ascii = is_visible_ascii(value);
    let reserved = value.starts_with(b"sha256:") || value.starts_with(b"derived:");
    if value.len() <= MAX_KEY_LEN && visible_ascii && !reserved {
        Some(HeaderKey::AsSent(
            value.iter().copied().map(char::from).collect(),
        ))
    } else {
        Some(HeaderKey::Hashed(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(value))
        )))
    }
}

/// Surrounding spaces and tabs are not part of an HTTP field value (RFC 9110 §5.5).
fn trim_field_value(value: &[u8]) -> &[u8] {
    let is_content = |b: &u8| !matches!(b, b' ' | b'\t');
    match (
        value.iter().position(is_content),
        value.iter().rposition(is_content),
    ) {
        (Some(start), Some(end)) => &value[start..=end],
        _ => &[],
    }
}

/// `0x21..=0x7E`: what a key may hold to be logged, stored and used in ids as it is.
fn is_visible_ascii(value: &[u8]) -> bool {
    value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The identity of one event: its delivery key plus its index in the delivery.
pub(crate) fn event_id(delivery_key: &str, index: usize) -> String {
    format!("{delivery_key}:{index}")
}

/// `text` as a person may read it on a terminal or in a log line: control characters (a NUL, an
/// escape sequence, a newline in an event type Attio or an attacker sent) are written as escapes
/// such as `\u{0}` and `\n`, so they can neither hide in nor rewrite what is around them.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// One event's JSON, read once: when the worker takes the event up (`worker::item`). It holds
/// the text exactly as stored (checked to be JSON, written verbatim into the sink line), the ids
/// enrichment and routing need ([`EventIds`]), and the whole tree only when a route filter reads
/// arbitrary fields. Every later stage reads this instead of parsing the text again.
#[derive(Debug)]
pub(crate) struct EventView {
    raw: String,
    ids: EventIds,
    tree: Option<serde_json::Value>,
}

/// A stored event whose text is not JSON: a damaged journal row (ingress stores only events
/// that parse). No sink can take it and no filter matches it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored event is not valid JSON: {0}")]
pub(crate) struct UnreadableEvent(String);

impl EventView {
    /// Reads `raw` once. `with_tree`: also keep the whole tree, for route filters.
    pub(crate) fn read(raw: String, with_tree: bool) -> Result<EventView, UnreadableEvent> {
        if with_tree {
            // A text that is JSON but not a tree serde_json can hold (never from ingress, which
            // reads every event through in full) falls back to the ids alone: filters then
            // cannot match it, as before.
            if let Ok(tree) = serde_json::from_str::<serde_json::Value>(&raw) {
                let ids = EventIds::deserialize(&tree).unwrap_or_default();
                return Ok(EventView {
                    raw,
                    ids,
                    tree: Some(tree),
                });
            }
        }
        // The ids are taken while the rest is skipped, which checks it is JSON all the same.
        match serde_json::from_str::<EventIds>(&raw) {
            Ok(ids) => Ok(EventView {
                raw,
                ids,
                tree: None,
            }),
            Err(error) => Err(UnreadableEvent(error.to_string())),
        }
    }

    /// The event's JSON exactly as stored: valid JSON, as Attio sent it.
    pub(crate) fn raw(&self) -> &str {
        &self.raw
    }

    pub(crate) fn ids(&self) -> &EventIds {
        &self.ids
    }

    /// The whole event, when it was read with its tree.
    pub(crate) fn tree(&self) -> Option<&serde_json::Value> {
        self.tree.as_ref()
    }
}

/// The ids an event carries: in `id`, and beside it (comments and entries put some there).
/// Only these keys are kept; only non-empty strings count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EventIds {
    inside: [Option<String>; ID_KEYS.len()],
    beside: [Option<String>; ID_KEYS.len()],
}

/// The id keys enrichment and routing read (docs/attio.md §2).
pub(crate) const ID_KEYS: [&str; 12] = [
    "object_id",
    "record_id",
    "attribute_id",
    "list_id",
    "entry_id",
    "parent_object_id",
    "note_id",
    "task_id",
    "comment_id",
    "workspace_member_id",
    "meeting_id",
    "call_recording_id",
];

impl EventIds {
    /// No ids at all (an event that could not be read).
    pub(crate) const NONE: EventIds = EventIds {
        inside: [const { None }; ID_KEYS.len()],
        beside: [const { None }; ID_KEYS.len()],
    };

    /// The ids of an event's JSON text; none when it is not an object of the usual shape. The
    /// worker reads them with the rest of the event ([`EventView::read`]); this is for tests.
    #[cfg(test)]
    pub(crate) fn parse(raw: &str) -> EventIds {
        serde_json::from_str(raw).unwrap_or_default()
    }

    /// `id.KEY`, else `KEY` beside `id`. `key` is one of [`ID_KEYS`] (any other is `None`).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        let slot = ID_KEYS.iter().position(|known| *known == key)?;
        self.inside[slot]
            .as_deref()
            .or(self.beside[slot].as_deref())
    }
}

impl<'de> Deserialize<'de> for EventIds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<EventIds, D::Error> {
        deserializer.deserialize_any(ids::Event)
    }
}

/// The visitors behind [`EventIds`]: one pass over the event that keeps the id keys and skips
/// (while still checking) everything else. A duplicate key keeps its last value, as a JSON
/// object read into a map does; a shape that is not an object yields no ids, never an error.
mod ids {
    use std::fmt;

    use serde::de::{
        self, Deserialize, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };

    use super::{EventIds, ID_KEYS};

    /// A key of the event or of its `id`.
    enum Key {
        Id,
        Known(usize),
        Other,
    }

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
            struct KeyVisitor;
            impl Visitor<'_> for KeyVisitor {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                    Ok(match ID_KEYS.iter().position(|known| *known == key) {
                        Some(slot) => Key::Known(slot),
                        None if key == "id" => Key::Id,
                        None => Key::Other,
                    })
                }
            }
            deserializer.deserialize_str(KeyVisitor)
        }
    }

    type Slots = [Option<String>; ID_KEYS.len()];

    /// The event itself: its `id` object and the known keys beside it.
    pub(super) struct Event;

    impl<'de> Visitor<'de> for Event {
        type Value = EventIds;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an event")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventIds, A::Error> {
            let mut ids = EventIds::default();
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Id => ids.inside = map.next_value_seed(Inside)?,
                    Key::Known(slot) => ids.beside[slot] = map.next_value::<Text>()?.0,
                    Key::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(ids)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<EventIds, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| EventIds::default())
        }
        scalars_yield!(EventIds::default(), strings);
    }

    /// The event's `id` object.
    struct Inside;

    impl<'de> DeserializeSeed<'de> for Inside {
        type Value = Slots;
        fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Slots, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Inside {
        type Value = Slots;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the event's id")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slots, A::Error> {
            let mut slots = Slots::default();
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Known(slot) => slots[slot] = map.next_value::<Text>()?.0,
                    Key::Id | Key::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(slots)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Slots, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| Slots::default())
        }
        scalars_yield!(Slots::default(), strings);
    }

    /// A value kept only when it is a non-empty string.
    struct Text(Option<String>);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
            deserializer.deserialize_any(TextVisitor)
        }
    }

    struct TextVisitor;

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Text;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an id")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Text, E> {
            Ok(Text((!text.is_empty()).then(|| text.to_string())))
        }
        fn visit_string<E: de::Error>(self, text: String) -> Result<Text, E> {
            Ok(Text((!text.is_empty()).then_some(text)))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
            IgnoredAny.visit_map(map).map(|_| Text(None))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| Text(None))
        }
        scalars_yield!(Text(None));
    }
}

/// Parsing and identity promises as executable checks, shared by the property tests below and
/// the `parse_delivery` fuzz target (`fuzz/`, feature `fuzzing`). Each check panics, naming the
/// promise, when it is broken: that is how both harnesses report a failure.
#[cfg(any(test, feature = "fuzzing"))]
pub mod properties {
    use super::*;
    use serde_json::Value;

    /// What ingress does with a verified body, and what must hold of whatever it accepts.
    pub fn check_delivery(body: &[u8]) {
        let delivery = match parse_delivery(body) {
            Ok(delivery) => delivery,
            Err(malformed) => {
                assert_eq!(
                    malformed == MalformedBody::NotUtf8,
                    std::str::from_utf8(body).is_err(),
                    "NotUtf8 exactly when the body is not UTF-8"
                );
                return;
            }
        };
        let text = std::str::from_utf8(body).expect("an accepted body is UTF-8");
        assert!(is_object(text), "an accepted body is a JSON object");

        // The events as a JSON reader sees them in the body (when the whole body reads: keys
        // the envelope ignores may hold what a reader refuses).
        let source: Option<Vec<Value>> =
            serde_json::from_str::<Value>(text)
                .ok()
                .map(|value| match value.get("events") {
                    Some(Value::Array(events)) => events.clone(),
                    _ => vec![value],
                });
        if let Some(source) = &source {
            assert_eq!(source.len(), delivery.events.len(), "one event per element");
        }
        if let Ok(source) = serde_json::from_str::<Value>(text) {
            assert_eq!(
                delivery.webhook_id.as_deref(),
                source.get("webhook_id").and_then(Value::as_str),
                "webhook_id is the body's, when it is a string"
            );
        }
        // The events' text in the body.
        #[derive(Deserialize)]
        struct Events<'a> {
            #[serde(borrow)]
            events: Option<Vec<&'a RawValue>>,
        }
        let texts: Vec<&str> = match serde_json::from_str::<Events<'_>>(text) {
            Ok(Events {
                events: Some(events),
            }) => events.iter().map(|raw| raw.get()).collect(),
            _ => vec![text.trim()],
        };
        assert_eq!(texts.len(), delivery.events.len(), "one event per element");
        let without_white_space =
            |text: &str| -> String { text.chars().filter(|c| !c.is_ascii_whitespace()).collect() };
        for (index, event) in delivery.events.iter().enumerate() {
            assert_eq!(
                without_white_space(&event.raw),
                without_white_space(texts[index]),
                "compaction only removes white space"
            );
            let value: Value =
                serde_json::from_str(&event.raw).expect("an accepted event reads back as JSON");
            assert!(value.is_object(), "an event is an object");
            assert!(!event.event_type.is_empty());
            assert_eq!(
                value.get("event_type").and_then(Value::as_str),
                Some(event.event_type.as_str()),
                "event_type is the event's own"
            );
            assert!(
                !event.raw.contains(['\n', '\r']) && event.raw.starts_with('{'),
                "an event fits on one line, without surrounding white space"
            );
            if let Some(source) = &source {
                assert_eq!(value, source[index], "compaction changes no value");
            }
        }

        // Re-serialised, the delivery parses to itself.
        let events: Vec<&str> = delivery.events.iter().map(|e| e.raw.as_str()).collect();
        let again = format!(
            r#"{{"webhook_id":{},"events":[{}]}}"#,
            serde_json::to_string(&delivery.webhook_id).expect("a string serialises"),
            events.join(",")
        );
        assert_eq!(
            parse_delivery(again.as_bytes()).as_ref(),
            Ok(&delivery),
            "a re-serialised delivery parses to itself"
        );

        let derived = derived_delivery_key(delivery.webhook_id.as_deref(), body);
        check_key(&derived);
        assert_eq!(
            derived,
            derived_delivery_key(delivery.webhook_id.as_deref(), body)
        );
        for index in [0, delivery.events.len()] {
            check_key(&event_id(&derived, index));
        }
    }

    /// Every delivery key, and so every event id, can be logged, stored and compared as it is.
    fn check_key(key: &str) {
        assert!(
            is_visible_ascii(key.as_bytes()) && key.len() <= 2 * MAX_KEY_LEN,
            "keys are short visible ASCII: {key:?}"
        );
    }

    /// The `Idempotency-Key` rules, for two header values at once (they must not share a key
    /// unless they are the same value).
    pub fn check_header_keys(a: &[u8], b: &[u8]) {
        for raw in [a, b] {
            let key = delivery_key_from_header(raw);
            assert_eq!(key, delivery_key_from_header(raw), "stable");
            let value = trim_field_value(raw);
            match key {
                None => assert!(value.is_empty(), "only an empty header is no key"),
                Some(HeaderKey::AsSent(key)) => {
                    assert_eq!(key.as_bytes(), value, "kept as sent");
                    assert!(key.len() <= MAX_KEY_LEN);
                    check_key(&key);
                }
                Some(HeaderKey::Hashed(key)) => {
                    assert!(
                        key.len() == "sha256:".len() + 64 && key.starts_with("sha256:"),
                        "a hash: {key}"
                    );
                    check_key(&key);
                }
            }
        }
        if trim_field_value(a) != trim_field_value(b) && !trim_field_value(a).is_empty() {
            assert_ne!(
                delivery_key_from_header(a),
                delivery_key_from_header(b),
                "different headers, different keys"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_keeps_the_ids_in_and_beside_id_and_only_non_empty_strings() {
        let raw = r#"{"event_type":"comment.created","id":{"workspace_id":"w","comment_id":"c",
            "record_id":""},"object_id":"o","record_id":"r","list_id":7,"entry_id":{"x":"y"},
            "actor":{"type":"workspace-member","id":"m"}}"#;
        let view = EventView::read(raw.to_string(), false).unwrap();
        let ids = view.ids();
        assert_eq!(ids.get("comment_id"), Some("c"));
        assert_eq!(ids.get("object_id"), Some("o"), "beside `id`");
        assert_eq!(
            ids.get("record_id"),
            Some("r"),
            "an empty one inside gives way"
        );
        assert_eq!(ids.get("list_id"), None, "not a string");
        assert_eq!(ids.get("entry_id"), None);
        assert_eq!(ids.get("workspace_id"), None, "not an id key");
        assert_eq!(view.raw(), raw, "the text is kept as stored");
        assert!(view.tree().is_none(), "no tree unless filters want one");
    }

    #[test]
    fn ids_read_from_the_tree_equal_those_read_from_the_text() {
        for raw in [
            r#"{"event_type":"record.updated","id":{"object_id":"o","record_id":"r","attribute_id":"a"}}"#,
            r#"{"event_type":"x","id":{"note_id":"n"},"id":{"task_id":"t"},"parent_object_id":"p"}"#,
            r#"{"event_type":"x","id":"not an object","list_id":null}"#,
        ] {
            let text = EventView::read(raw.to_string(), false).unwrap();
            let tree = EventView::read(raw.to_string(), true).unwrap();
            assert!(tree.tree().is_some());
            assert_eq!(text.ids(), tree.ids(), "{raw}");
        }
        let duplicated = EventView::read(
            r#"{"id":{"note_id":"n"},"id":{"task_id":"t"}}"#.into(),
            false,
        )
        .unwrap();
        assert_eq!(duplicated.ids().get("note_id"), None, "the last `id` wins");
        assert_eq!(duplicated.ids().get("task_id"), Some("t"));
    }

    #[test]
    fn a_view_of_text_that_is_not_json_is_unreadable_and_other_shapes_have_no_ids() {
        for broken in [
            r#"{"event_type":"x""#,
            r#"{"a":1} trailing"#,
            "",
            r#"{"a":tru}"#,
        ] {
            assert!(
                EventView::read(broken.to_string(), false).is_err(),
                "{broken}"
            );
            assert!(
                EventView::read(broken.to_string(), true).is_err(),
                "{broken}"
            );
        }
        for shape in ["[1,2]", "\"text\"", "null", "3"] {
            let view = EventView::read(shape.to_string(), false).unwrap();
            assert_eq!(view.ids(), &EventIds::NONE, "{shape}");
        }
    }

    #[test]
    fn control_characters_are_escaped_for_people_and_the_rest_is_kept() {
        assert_eq!(printable("record.updated"), "record.updated");
        assert_eq!(printable("a\u{0}b"), "a\\u{0}b");
        assert_eq!(printable("x\u{1b}[2Jy\nz\u{7f}"), "x\\u{1b}[2Jy\\nz\\u{7f}");
        assert_eq!(printable("façade ✓"), "façade ✓");
    }

    #[test]
    fn pretty_printed_events_are_compacted_keeping_key_order() {
        let body = b"{\"events\": [ {\n  \"event_type\": \"task.created\",\n  \"z\": 1, \"a\": \"x y\"\n} ]}";
        let delivery = parse_delivery(body).unwrap();
        assert_eq!(
            delivery.events[0].raw,
            r#"{"event_type":"task.created","z":1,"a":"x y"}"#
        );
    }

    #[test]
    fn compaction_keeps_numbers_and_strings_exactly_as_sent() {
        // Found by fuzzing: compaction went through f64, so a pretty-printed
        // 88888888888888888888888888888888888888888888888888888888888 came out as
        // 8.888888888888891e58, a different number.
        let body = "{\"events\": [{\n  \"event_type\": \"task.created\",\n  \"n\": 88888888888888888888888888888888888888888888888888888888888,\n  \"f\": 0.10000000000000000001, \"e\": 1E2, \"z\": -0,\n  \"s\": \"caf\\u00e9 \\\"q\\\" \\\\ \\/\"\n}]}";
        let delivery = parse_delivery(body.as_bytes()).unwrap();
        assert_eq!(
            delivery.events[0].raw,
            r#"{"event_type":"task.created","n":88888888888888888888888888888888888888888888888888888888888,"f":0.10000000000000000001,"e":1E2,"z":-0,"s":"caf\u00e9 \"q\" \\ \/"}"#
        );
    }

    #[test]
    fn envelope_keeps_event_text_verbatim() {
        let body = br#"{"webhook_id":"w1","events":[{"event_type":"record.updated","id":{"b":1,"a":2},"x":null}]}"#;
        let delivery = parse_delivery(body).unwrap();
        assert_eq!(delivery.webhook_id.as_deref(), Some("w1"));
        assert_eq!(delivery.events.len(), 1);
        assert_eq!(
            delivery.events[0].raw,
            r#"{"event_type":"record.updated","id":{"b":1,"a":2},"x":null}"#
        );
    }

    #[test]
    fn bare_event_is_accepted() {
        let body = br#"{"event_type":"workspace-member.created","id":{"workspace_member_id":"m"},"actor":{"type":"system","id":null}}"#;
        let delivery = parse_delivery(body).unwrap();
        assert_eq!(delivery.webhook_id, None);
        assert_eq!(delivery.events[0].event_type, "workspace-member.created");
    }

    #[test]
    fn unknown_event_type_is_kept() {
        let body = br#"{"webhook_id":"w","events":[{"event_type":"spaceship.launched","id":{}}]}"#;
        let delivery = parse_delivery(body).unwrap();
        assert_eq!(
            EventKind::parse(&delivery.events[0].event_type),
            EventKind::Unknown("spaceship.launched".into())
        );
    }

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for name in SUBSCRIBABLE_EVENT_TYPES {
            let kind = EventKind::parse(name);
            assert!(kind.is_known(), "{name}");
            assert_eq!(kind.as_str(), name);
        }
    }

    #[test]
    fn malformed_bodies_say_why() {
        assert_eq!(parse_delivery(b"\xff\xfe"), Err(MalformedBody::NotUtf8));
        assert!(matches!(
            parse_delivery(b"not json"),
            Err(MalformedBody::NotJson(_))
        ));
        assert!(matches!(
            parse_delivery(b"[1,2]"),
            Err(MalformedBody::NotAnEnvelope(_))
        ));
        assert!(matches!(
            parse_delivery(br#"{"hello":"world"}"#),
            Err(MalformedBody::NotAnEnvelope(_))
        ));
        assert!(matches!(
            parse_delivery(br#"{"events":[42]}"#),
            Err(MalformedBody::NotAnEnvelope(_))
        ));
        assert!(matches!(
            parse_delivery(b""),
            Err(MalformedBody::NotJson(_))
        ));
    }

    #[test]
    fn json_arrays_are_neither_envelopes_nor_events() {
        let accepted: Vec<String> = [
            &br#"[]"#[..],
            br#"[{"event_type":"task.created"}]"#,
            br#"[null,[{"event_type":"task.created"}]]"#,
            br#"["task.created",null,"task.created"]"#,
            br#"{"events":[["task.created"]]}"#,
            br#"{"webhook_id":"w","events":[["task.created",{"task_id":"t"}]]}"#,
        ]
        .into_iter()
        .filter(|body| !matches!(parse_delivery(body), Err(MalformedBody::NotAnEnvelope(_))))
        .map(|body| String::from_utf8_lossy(body).into_owned())
        .collect();
        assert!(accepted.is_empty(), "accepted: {accepted:?}");
    }

    #[test]
    fn an_accepted_event_reads_back_as_json_with_or_without_white_space() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let mut accepted = Vec::new();
        for tail in ["1e400", "\"\\ud800\"", &deep] {
            for space in ["", " "] {
                let body =
                    format!(r#"{{"events":[{{"event_type":"task.created",{space}"x":{tail}}}]}}"#);
                if !matches!(
                    parse_delivery(body.as_bytes()),
                    Err(MalformedBody::NotAnEnvelope(_))
                ) {
                    accepted.push(body.chars().take(60).collect::<String>());
                }
            }
        }
        assert!(accepted.is_empty(), "accepted: {accepted:?}");
    }

    #[test]
    fn keys_differing_only_in_bytes_that_are_not_utf8_stay_different() {
        assert_ne!(
            delivery_key_from_header(b"k\xff"),
            delivery_key_from_header(b"k\xfe")
        );
    }

    #[test]
    fn only_visible_ascii_keys_up_to_200_bytes_are_kept_as_sent() {
        let kept = |raw: &[u8]| {
            delivery_key_from_header(raw)
                == Some(HeaderKey::AsSent(String::from_utf8_lossy(raw).into_owned()))
        };
        assert!(kept(b"9f1c-KEY_~!"));
        assert!(kept(&[b'k'; 200]));
        assert!(!kept(&[b'k'; 201]));
        assert!(!kept("caf\u{e9}".as_bytes()));
        assert!(!kept(b"a b"));
        assert!(!kept(b"a\tb"));
        assert!(!kept(b"a\x7fb"));
        assert!(!kept(b"sha256:0123"));
        assert!(!kept(b"derived:w:0123"));
    }

    #[test]
    fn an_odd_key_hashes_to_the_same_key_every_time() {
        let odd = b"caf\xc3\xa9 \x01 key";
        let Some(HeaderKey::Hashed(key)) = delivery_key_from_header(odd) else {
            panic!("not hashed");
        };
        assert_eq!(key.len(), "sha256:".len() + 64);
        assert_eq!(
            delivery_key_from_header(odd),
            Some(HeaderKey::Hashed(key.clone()))
        );
        // Surrounding spaces are not part of the value.
        assert_eq!(
            delivery_key_from_header(b" \tcaf\xc3\xa9 \x01 key\t "),
            Some(HeaderKey::Hashed(key))
        );
    }

    #[test]
    fn a_derived_key_shows_the_webhook_id_only_when_it_is_short_visible_ascii() {
        let key = |id: &str| derived_delivery_key(Some(id), b"{}");
        let hash = "derived:-:44136fa355b3678a1146ad16f7e8649e";
        assert_eq!(derived_delivery_key(None, b"{}"), hash);
        assert_eq!(
            key("23e42eaf-323a-41da-b5bb-fd67eebda553"),
            "derived:23e42eaf-323a-41da-b5bb-fd67eebda553:44136fa355b3678a1146ad16f7e8649e"
        );
        for odd in ["", "a b", "line\nbreak", "\u{a1}", &"w".repeat(201)] {
            assert_eq!(key(odd), hash, "{odd:?}");
        }
    }

    #[test]
    fn long_or_odd_keys_are_hashed() {
        assert_eq!(
            delivery_key_from_header(b"  abc "),
            Some(HeaderKey::AsSent("abc".into()))
        );
        assert_eq!(delivery_key_from_header(b""), None);
        assert_eq!(delivery_key_from_header(b" \t "), None);
        let long = vec![b'k'; 500];
        assert!(matches!(
            delivery_key_from_header(&long),
            Some(HeaderKey::Hashed(key)) if key.starts_with("sha256:")
        ));
    }

    mod properties {
        use super::super::properties::{check_delivery, check_header_keys};
        use super::super::{parse_delivery, SUBSCRIBABLE_EVENT_TYPES};
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        /// The real deliveries and bare events in `tests/fixtures`.
        const FIXTURES: [&[u8]; 13] = [
            include_bytes!(
                "../tests/fixtures/attio_docs__activity-attribute.updated_delivery.json"
            ),
            include_bytes!("../tests/fixtures/attio_docs__list-attribute.created_delivery.json"),
            include_bytes!("../tests/fixtures/attio_docs__list-entry.deleted_delivery.json"),
            include_bytes!("../tests/fixtures/attio_docs__list-entry.updated_delivery.json"),
            include_bytes!("../tests/fixtures/attio_docs__note-content.updated_delivery.json"),
            include_bytes!("../tests/fixtures/attio_docs__object-attribute.updated_delivery.json"),
            include_bytes!("../tests/fixtures/attio_docs__record.updated_delivery.json"),
            include_bytes!("../tests/fixtures/attio_docs__workspace-member.created_event.json"),
            include_bytes!("../tests/fixtures/pipedream__list-entry.created_event.json"),
            include_bytes!("../tests/fixtures/pipedream__note.created_event.json"),
            include_bytes!("../tests/fixtures/pipedream__object-attribute.created_event.json"),
            include_bytes!("../tests/fixtures/pipedream__record.created_event.json"),
            include_bytes!("../tests/fixtures/pipedream__record.updated_event.json"),
        ];

        /// Values that a probe skips without reading and a reader may refuse.
        const AWKWARD_VALUES: [&str; 15] = [
            "1e400",
            "88888888888888888888888888888888888888888888888888888888888",
            "1E2",
            r#""caf\u00e9 \/ \\ \"""#,
            "-1e400",
            "1e-400",
            "-0",
            "18446744073709551616",
            "0.1000000000000000000000000001",
            r#""\ud800""#,
            r#""\udc00\ud800""#,
            r#""\u0000\n\u2028""#,
            r#"{"a":[],"a":{}}"#,
            "[[],{}]",
            "null",
        ];

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                ".{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map(".{0,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn event_type() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(&SUBSCRIBABLE_EVENT_TYPES[..]).prop_map(str::to_string),
                ".{0,16}",
            ]
        }

        /// Mostly events, sometimes anything else where an event should be.
        fn event() -> impl Strategy<Value = Value> {
            let event = (
                prop_oneof![4 => event_type().prop_map(Value::from), 1 => json()],
                prop::collection::btree_map("[a-z_]{1,8}", json(), 0..4),
            )
                .prop_map(|(event_type, extra)| {
                    let mut event: Map<String, Value> = extra.into_iter().collect();
                    event.insert("event_type".into(), event_type);
                    Value::Object(event)
                });
            prop_oneof![6 => event, 1 => json()]
        }

        fn body_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                4 => (
                    prop_oneof![".{0,40}".prop_map(Value::from), json()],
                    prop::collection::vec(event(), 0..4),
                )
                    .prop_map(|(webhook_id, events)| {
                        serde_json::json!({ "webhook_id": webhook_id, "events": events })
                    }),
                2 => event(),
                1 => prop::collection::vec(event(), 0..3).prop_map(Value::from),
                1 => json(),
            ]
        }

        /// Generated JSON, compact or pretty.
        fn json_body() -> impl Strategy<Value = Vec<u8>> {
            (body_value(), any::<bool>()).prop_map(|(value, pretty)| {
                if pretty {
                    serde_json::to_vec_pretty(&value).unwrap()
                } else {
                    serde_json::to_vec(&value).unwrap()
                }
            })
        }

        /// An event carrying an awkward value, or nesting around the reader's limit of 128.
        fn awkward_body() -> impl Strategy<Value = Vec<u8>> {
            let nested = (120usize..140, any::<bool>()).prop_map(|(depth, objects)| {
                if objects {
                    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
                } else {
                    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
                }
            });
            let value = prop_oneof![
                prop::sample::select(&AWKWARD_VALUES[..]).prop_map(str::to_string),
                nested,
            ];
            (event_type(), value, any::<bool>(), any::<bool>()).prop_map(
                |(event_type, value, space, bare)| {
                    let space = if space { " " } else { "" };
                    let event = format!(r#"{{"event_type":{event_type:?},{space}"x":{value}}}"#);
                    if bare {
                        event.into_bytes()
                    } else {
                        format!(r#"{{"webhook_id":"w","events":[{event}]}}"#).into_bytes()
                    }
                },
            )
        }

        /// A real delivery with a few bytes replaced, inserted or removed.
        fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
            (
                prop::sample::select(&FIXTURES[..]),
                prop::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4),
            )
                .prop_map(|(fixture, edits)| {
                    let mut body = fixture.to_vec();
                    for (at, byte, edit) in edits {
                        let at = at % (body.len() + 1);
                        match edit {
                            0 if at < body.len() => body[at] = byte,
                            1 => body.insert(at, byte),
                            _ if at < body.len() => {
                                body.remove(at);
                            }
                            _ => {}
                        }
                    }
                    body
                })
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                3 => json_body(),
                2 => awkward_body(),
                2 => mutated_fixture(),
                1 => prop::collection::vec(any::<u8>(), 0..64),
            ]
        }

        fn header() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                "[!-~]{0,40}".prop_map(String::into_bytes),
                "[!-~]{195,205}".prop_map(String::into_bytes),
                "[ \t]{0,2}(sha256|derived):[0-9a-f]{0,64}[ \t]{0,2}".prop_map(String::into_bytes),
                ".{0,20}".prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..40),
            ]
        }

        proptest! {
            #[test]
            fn whatever_ingress_accepts_reads_back_as_the_same_json(body in body()) {
                check_delivery(&body);
            }

            #[test]
            fn header_keys_are_short_visible_ascii_stable_and_distinct(
                a in header(),
                b in header(),
            ) {
                check_header_keys(&a, &b);
                check_header_keys(&a, &a);
            }
        }

        #[test]
        fn every_fixture_is_a_delivery_that_passes_the_checks() {
            for fixture in FIXTURES {
                assert!(parse_delivery(fixture).is_ok());
                check_delivery(fixture);
            }
        }
    }
}
