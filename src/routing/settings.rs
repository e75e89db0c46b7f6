//! Route settings: the `[[routes]]` tables as they are written, before
//! [`RouteTable::compile`](super::RouteTable::compile) checks and compiles them.
//!
//! In: one TOML table per route (read by `config` with the rest of the settings). Out: a
//! [`RouteSettings`] per route, and a [`RouteError`] naming the route when one cannot be
//! compiled. Owned here rather than in `config` so that routing depends on nothing of the
//! configuration's: `config` imports this module, never the other way round.

use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// A route that cannot be compiled: which one (`routes[0] ("crm")`) and what is wrong with it.
/// Shown the way `config` shows any bad key (its `ConfigError::Invalid`, which this becomes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: `{key}` {problem}")]
pub(crate) struct RouteError {
    pub(crate) key: String,
    pub(crate) problem: String,
}

/// Whether the events of a route are re-fetched from Attio (`enrich` in `[[routes]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) enum RouteEnrich {
    /// `false`: the route does not need the fetched data.
    Off,
    /// `"optional"`: deliver with `enrichment: "failed"` rather than retry when the fetch fails.
    Optional,
    /// `true` (default): an event whose fetch failed is retried, never delivered half-done.
    #[default]
    Required,
}

impl Serialize for RouteEnrich {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RouteEnrich::Off => serializer.serialize_bool(false),
            RouteEnrich::Optional => serializer.serialize_str("optional"),
            RouteEnrich::Required => serializer.serialize_bool(true),
        }
    }
}

impl<'de> Deserialize<'de> for RouteEnrich {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Flag(true) => Ok(RouteEnrich::Required),
            Raw::Flag(false) => Ok(RouteEnrich::Off),
            Raw::Word(word) => match word.as_str() {
                "true" => Ok(RouteEnrich::Required),
                "false" => Ok(RouteEnrich::Off),
                "optional" => Ok(RouteEnrich::Optional),
                other => Err(serde::de::Error::custom(format!(
                    "enrich must be true, false or \"optional\", got {other:?}"
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSettings {
    pub(crate) name: String,
    /// Event-type patterns: `record.updated`, `record.*`, `*`.
    pub(crate) events: Vec<String>,
    pub(crate) sinks: Vec<String>,
    /// Re-fetch the event's subject from Attio: `true` (default), `false` or `"optional"`.
    #[serde(default)]
    pub(crate) enrich: RouteEnrich,
    /// Attio's webhook filter shape, `{"$and"|"$or": [{field, operator, value}]}`, as an inline
    /// table or a JSON string; checked by [`crate::routing::EventFilter::parse`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) filter: Option<serde_json::Value>,
    /// Only events about this object (`deals`) or one of these: slugs or UUIDs. For records the
    /// event's `id.object_id`; for list entries and notes `parent_object_id`; for comments
    /// `object_id`. Checked by [`crate::routing::RouteTable::compile`].
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) object: Option<Vec<String>>,
    /// Only events about this list (`id.list_id`, or a comment's `list_id`): slugs or UUIDs.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) list: Option<Vec<String>>,
    /// Only events naming this changed attribute (`id.attribute_id`): slugs or UUIDs.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) attribute: Option<Vec<String>>,
    /// Deliver the `record.updated` / `list-entry.updated` events that shared one coalesced
    /// fetch as one line to this route's sinks, with `changed_attributes` and
    /// `collapsed_event_ids`, instead of one line per event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) collapse: bool,
    /// Hold the `record.updated` / `list-entry.updated` events of one record (or entry) this
    /// long before the fetch, so that the updates that follow an edit (formula attributes
    /// recomputed by Attio about a second later) share it, and deliver them as one collapsed
    /// line. Implies `collapse`. Checked by [`crate::routing::RouteTable::compile`].
    #[serde(
        default,
        with = "crate::settings_format::duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) settle: Option<Duration>,
}

/// `object = "deals"` or `object = ["deals", "companies"]`; `None` when the key is absent.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    match Option::<Raw>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Raw::One(one)) => Ok(Some(vec![one])),
        Some(Raw::Many(many)) => Ok(Some(many)),
    }
}

impl RouteSettings {
    /// The route the daemon runs with when none is configured: every event to `stdout`.
    pub(crate) fn catch_all() -> RouteSettings {
        RouteSettings {
            name: "default".to_string(),
            events: vec!["*".to_string()],
            sinks: vec!["stdout".to_string()],
            enrich: RouteEnrich::default(),
            filter: None,
            object: None,
            list: None,
            attribute: None,
            collapse: false,
            settle: None,
        }
    }
}
