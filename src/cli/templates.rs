//! Delivery templates for `send`: one bundled JSON file per event type, shaped as Attio sends it
//! (docs/attio.md §2: the envelope `{webhook_id, events: [...]}`, the event's `id` keys, the
//! extra keys beside `id`, and `actor`).
//!
//! In: an event type (or a pattern such as `record.*`) and the ids the user fixed. Out: compact
//! delivery bodies, each with fresh UUIDs for every id the user did not fix.
//!
//! A template marks each value to fill as a whole JSON string `"${name}"`. `"${name?}"` is
//! optional: `null` unless the user gives it (a comment's `list_id`/`entry_id`). The same name
//! twice in one template gets the same value (a merge's `duplicate_object_id` is its
//! `object_id`). Templates are compiled once into literal text and slots, so rendering is plain
//! concatenation: `send --count` is the benchmark's load generator and must stay cheap.

use std::collections::BTreeMap;

use crate::event::SUBSCRIBABLE_EVENT_TYPES;
use crate::routing::{closest_event_type, EventPattern};

/// Every bundled template: the 27 subscribable event types plus the documented
/// `activity-attribute.*` types.
pub const TEMPLATES: [(&str, &str); 29] = [
    (
        "call-recording.created",
        include_str!("templates/call-recording.created.json"),
    ),
    (
        "comment.created",
        include_str!("templates/comment.created.json"),
    ),
    (
        "comment.resolved",
        include_str!("templates/comment.resolved.json"),
    ),
    (
        "comment.unresolved",
        include_str!("templates/comment.unresolved.json"),
    ),
    (
        "comment.deleted",
        include_str!("templates/comment.deleted.json"),
    ),
    ("list.created", include_str!("templates/list.created.json")),
    ("list.updated", include_str!("templates/list.updated.json")),
    ("list.deleted", include_str!("templates/list.deleted.json")),
    (
        "list-attribute.created",
        include_str!("templates/list-attribute.created.json"),
    ),
    (
        "list-attribute.updated",
        include_str!("templates/list-attribute.updated.json"),
    ),
    (
        "list-entry.created",
        include_str!("templates/list-entry.created.json"),
    ),
    (
        "list-entry.updated",
        include_str!("templates/list-entry.updated.json"),
    ),
    (
        "list-entry.deleted",
        include_str!("templates/list-entry.deleted.json"),
    ),
    (
        "object-attribute.created",
        include_str!("templates/object-attribute.created.json"),
    ),
    (
        "object-attribute.updated",
        include_str!("templates/object-attribute.updated.json"),
    ),
    ("note.created", include_str!("templates/note.created.json")),
    (
        "note-content.updated",
        include_str!("templates/note-content.updated.json"),
    ),
    ("note.updated", include_str!("templates/note.updated.json")),
    ("note.deleted", include_str!("templates/note.deleted.json")),
    (
        "record.created",
        include_str!("templates/record.created.json"),
    ),
    (
        "record.merged",
        include_str!("templates/record.merged.json"),
    ),
    (
        "record.updated",
        include_str!("templates/record.updated.json"),
    ),
    (
        "record.deleted",
        include_str!("templates/record.deleted.json"),
    ),
    ("task.created", include_str!("templates/task.created.json")),
    ("task.updated", include_str!("templates/task.updated.json")),
    ("task.deleted", include_str!("templates/task.deleted.json")),
    (
        "workspace-member.created",
        include_str!("templates/workspace-member.created.json"),
    ),
    (
        "activity-attribute.created",
        include_str!("templates/activity-attribute.created.json"),
    ),
    (
        "activity-attribute.updated",
        include_str!("templates/activity-attribute.updated.json"),
    ),
];

/// Event types that popular guides mention but Attio does not have (docs/attio.md, "Guides that
/// get it wrong").
pub(crate) const MYTHICAL_EVENT_TYPES: [&str; 3] = [
    "workspace-member.updated",
    "call-recording.updated",
    "comment.updated",
];

/// Names a template may use, each settable from the command line (`--object-id` for
/// `object_id`, ...). A unit test keeps the templates and this list in step.
pub(crate) const ID_NAMES: [&str; 18] = [
    "webhook_id",
    "workspace_id",
    "actor_type",
    "actor_id",
    "object_id",
    "record_id",
    "attribute_id",
    "duplicate_record_id",
    "list_id",
    "entry_id",
    "note_id",
    "task_id",
    "comment_id",
    "thread_id",
    "workspace_member_id",
    "meeting_id",
    "call_recording_id",
    "activity_id",
];

/// Why no template could be chosen, or a bundled template is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("{0}")]
    UnknownEventType(String),
    #[error("bundled template for {event_type} is broken: {problem}")]
    Broken { event_type: String, problem: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Slot { name: String, optional: bool },
}

/// A compiled template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    event_type: &'static str,
    segments: Vec<Segment>,
}

/// The value of one slot, as the user or the run decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fixed {
    Value(String),
    Null,
}

/// Values fixed for a whole run; every other slot gets a fresh UUID per rendered delivery.
#[derive(Debug, Clone, Default)]
pub(crate) struct FixedIds {
    values: BTreeMap<String, Fixed>,
}

impl FixedIds {
    /// The values one run keeps for every delivery, as Attio's deliveries to one webhook would:
    /// one webhook, one workspace, one acting workspace member.
    pub(crate) fn for_one_run() -> FixedIds {
        let mut fixed = FixedIds::default();
        for name in ["webhook_id", "workspace_id", "actor_id"] {
            fixed.set(name, Fixed::Value(uuid::Uuid::new_v4().to_string()));
        }
        fixed.set("actor_type", Fixed::Value("workspace-member".to_string()));
        fixed
    }

    pub(crate) fn set(&mut self, name: &str, value: Fixed) {
        self.values.insert(name.to_string(), value);
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Fixed> {
        self.values.get(name)
    }
}

impl Template {
    /// Compiles the bundled template of `event_type`.
    pub(crate) fn bundled(event_type: &str) -> Result<Template, TemplateError> {
        let (name, text) = TEMPLATES
            .iter()
            .find(|(name, _)| *name == event_type)
            .ok_or_else(|| TemplateError::UnknownEventType(unknown_event_type(event_type)))?;
        Template::compile(name, text)
    }

    fn compile(event_type: &'static str, text: &str) -> Result<Template, TemplateError> {
        let broken = |problem: String| TemplateError::Broken {
            event_type: event_type.to_string(),
            problem,
        };
        // Compact once, as Attio sends compact JSON; slots are whole JSON strings, so they
        // survive the transcoding unchanged.
        let mut compact = Vec::with_capacity(text.len());
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_transcode::transcode(
            &mut deserializer,
            &mut serde_json::Serializer::new(&mut compact),
        )
        .map_err(|e| broken(format!("not JSON: {e}")))?;
        let compact = String::from_utf8(compact).map_err(|e| broken(e.to_string()))?;

        let mut segments = Vec::new();
        let mut rest = compact.as_str();
        while let Some(start) = rest.find("\"${") {
            let after = &rest[start + 3..];
            let end = after
                .find("}\"")
                .ok_or_else(|| broken("unterminated \"${...}\" slot".to_string()))?;
            let name = &after[..end];
            let (name, optional) = match name.strip_suffix('?') {
                Some(name) => (name, true),
                None => (name, false),
            };
            if !ID_NAMES.contains(&name) {
                return Err(broken(format!("unknown slot {name:?}")));
            }
            if start > 0 {
                segments.push(Segment::Literal(rest[..start].to_string()));
            }
            segments.push(Segment::Slot {
                name: name.to_string(),
                optional,
            });
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_string()));
        }
        Ok(Template {
            event_type,
            segments,
        })
    }

    pub(crate) fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// Renders one delivery: fixed values where given, fresh UUIDs elsewhere.
    pub(crate) fn render(&self, fixed: &FixedIds) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        // Fresh ids of this delivery, so a name used twice gets one value.
        let mut fresh: Vec<(&str, [u8; uuid::fmt::Hyphenated::LENGTH])> = Vec::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Segment::Slot { name, optional } => match fixed.get(name) {
                    Some(Fixed::Value(value)) => write_json_string(&mut out, value),
                    Some(Fixed::Null) => out.extend_from_slice(b"null"),
                    None if *optional => out.extend_from_slice(b"null"),
                    None => {
                        let id = match fresh.iter().find(|(n, _)| n == name) {
                            Some((_, id)) => *id,
                            None => {
                                let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
                                uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
                                fresh.push((name, id));
                                id
                            }
                        };
                        out.push(b'"');
                        out.extend_from_slice(&id);
                        out.push(b'"');
                    }
                },
            }
        }
        out
    }
}

fn write_json_string(out: &mut Vec<u8>, value: &str) {
    // A string always serialises; the fallback only keeps this free of `expect`.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// The event types `spec` names: one type, or every bundled type a pattern (`record.*`, `*`)
/// matches, in the order of [`TEMPLATES`].
pub(crate) fn event_types_for(spec: &str) -> Result<Vec<&'static str>, TemplateError> {
    if let Some((name, _)) = TEMPLATES.iter().find(|(name, _)| *name == spec) {
        return Ok(vec![name]);
    }
    if spec.contains('*') {
        let pattern = EventPattern::parse(spec).map_err(TemplateError::UnknownEventType)?;
        let matching: Vec<&'static str> = TEMPLATES
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| pattern.matches(name))
            .collect();
        if matching.is_empty() {
            return Err(TemplateError::UnknownEventType(format!(
                "no Attio event type matches {spec:?}; families: {}",
                families().join(", ")
            )));
        }
        return Ok(matching);
    }
    Err(TemplateError::UnknownEventType(unknown_event_type(spec)))
}

fn families() -> Vec<&'static str> {
    let mut families: Vec<&'static str> = Vec::new();
    for (name, _) in TEMPLATES {
        let family = name.split_once('.').map_or(name, |(family, _)| family);
        if !families.contains(&family) {
            families.push(family);
        }
    }
    families
}

/// The message for a type no template exists for: a myth is named as such, a typo gets a
/// suggestion, anything else gets the list.
fn unknown_event_type(name: &str) -> String {
    let suggestion = closest_event_type(name).or_else(|| {
        // `closest_event_type` knows the subscribable types only.
        TEMPLATES
            .iter()
            .map(|(known, _)| *known)
            .filter(|known| !SUBSCRIBABLE_EVENT_TYPES.contains(known))
            .find(|known| strsim::levenshtein(name, known) <= 3)
    });
    let mut message = if MYTHICAL_EVENT_TYPES.contains(&name) {
        format!("Attio has no {name:?} event (some guides invent it)")
    } else {
        format!("{name:?} is not an Attio event type")
    };
    match suggestion {
        Some(known) => message.push_str(&format!("; did you mean {known:?}?")),
        None => message.push_str(&format!(
            "; known types: {}",
            TEMPLATES
                .iter()
                .map(|(known, _)| *known)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    message
        .push_str(" (to send an event type of your own, write the body to a file and use --file)");
    message
}

#[cfg(test)]
#[path = "templates_tests.rs"]
mod tests;
