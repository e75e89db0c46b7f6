//! Routing: which sinks an event goes to.
//!
//! In: the configured `[[routes]]` (compiled and checked once at start) and an event (its type,
//! its [`FilterFields`]: the JSON the worker parsed once plus what enrichment added, and its
//! [`EventDimensions`]: the object, list and attribute it is about, as ids and as the slugs
//! enrichment resolved). Out: the names of the sinks the event goes to: the union
//! of the sinks of every matching route. A route matches when one of its event patterns matches
//! the type, each of its `object` / `list` / `attribute` keys (if any) names the event's, and its
//! optional `filter` (Attio's own filter shape) matches the event.

pub(crate) mod settings;

use std::time::Duration;

use serde_json::Value;

use self::settings::{RouteEnrich, RouteError, RouteSettings};
pub(crate) use crate::event::Dimension;
use crate::event::{EventKind, SUBSCRIBABLE_EVENT_TYPES};

/// An event-type pattern: `*`, `record.*`, or one exact type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EventPattern {
    Any,
    Family(String),
    Exact(String),
}

impl EventPattern {
    pub(crate) fn parse(pattern: &str) -> Result<EventPattern, String> {
        let valid_part = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        };
        if pattern == "*" {
            return Ok(EventPattern::Any);
        }
        match pattern.split_once('.') {
            Some((family, "*")) if valid_part(family) => Ok(EventPattern::Family(family.to_string())),
            Some((family, action)) if valid_part(family) && valid_part(action) => {
                Ok(EventPattern::Exact(pattern.to_string()))
            }
            _ => Err(format!(
                "bad event pattern {pattern:?}: use \"*\", \"record.*\" or an event type such as \"record.updated\""
            )),
        }
    }

    pub(crate) fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Family(family) => {
                event_type.split_once('.').is_some_and(|(f, _)| f == family)
            }
            EventPattern::Exact(exact) => exact == event_type,
        }
    }
}

/// One dimension of one event: the event's own id (a UUID; `None` when the event has no such
/// dimension) and the slug enrichment resolved for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DimensionValue {
    pub(crate) id: Option<String>,
    pub(crate) slug: Option<String>,
}

/// How far the slugs of an event's dimensions are known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Names {
    /// Enrichment looked them up; a missing slug means Attio has no such thing.
    Resolved,
    /// Enrichment failed: a slug a route names may or may not be the event's.
    Failed,
    /// Not looked up (no route wanted enrichment, or it is disabled).
    #[default]
    Unavailable,
}

/// The object, list and attribute an event is about, for route keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EventDimensions {
    pub(crate) object: DimensionValue,
    pub(crate) list: DimensionValue,
    pub(crate) attribute: DimensionValue,
    pub(crate) names: Names,
}

impl EventDimensions {
    fn get(&self, dimension: Dimension) -> &DimensionValue {
        match dimension {
            Dimension::Object => &self.object,
            Dimension::List => &self.list,
            Dimension::Attribute => &self.attribute,
        }
    }
}

/// One `object` / `list` / `attribute` key of a route: the UUIDs and the slugs it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DimensionRule {
    dimension: Dimension,
    /// Lower case, compared with the event's id.
    ids: Vec<String>,
    /// Compared with the slug enrichment resolved.
    slugs: Vec<String>,
}

/// Whether a route's key holds for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    Yes,
    No,
    /// The key names a slug, and the event's could not be resolved this time.
    Unknown,
}

impl DimensionRule {
    /// Parses the values of one key; the error says what is wrong, for the route's message.
    fn parse(dimension: Dimension, values: &[String]) -> Result<DimensionRule, String> {
        let key = dimension.key();
        if values.is_empty() {
            return Err(format!(
                "`{key}` is an empty list; leave the key out to match every {key}"
            ));
        }
        let mut rule = DimensionRule {
            dimension,
            ids: Vec::new(),
            slugs: Vec::new(),
        };
        for value in values {
            if value.trim().is_empty() {
                return Err(format!(
                    "`{key}` has an empty value; give a slug such as {:?} or a UUID",
                    example_slug(dimension)
                ));
            }
            if is_uuid(value) {
                rule.ids.push(value.to_ascii_lowercase());
            } else if is_slug(value) {
                rule.slugs.push(value.clone());
            } else {
                return Err(format!(
                    "`{key}` value {value:?} is neither a UUID nor an api slug (lower-case \
                     snake_case as Attio shows it, such as {:?})",
                    example_slug(dimension)
                ));
            }
        }
        Ok(rule)
    }

    fn holds(&self, event: &EventDimensions) -> Holds {
        let value = event.get(self.dimension);
        let Some(id) = &value.id else {
            // The event has no such dimension: a route narrowed to one never takes it.
            return Holds::No;
        };
        if self
            .ids
            .iter()
            .any(|wanted| wanted.eq_ignore_ascii_case(id))
        {
            return Holds::Yes;
        }
        match &value.slug {
            Some(slug) if self.slugs.contains(slug) => Holds::Yes,
            None if !self.slugs.is_empty() && event.names == Names::Failed => Holds::Unknown,
            _ => Holds::No,
        }
    }
}

fn example_slug(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Object => "deals",
        Dimension::List => "sales_pipeline",
        Dimension::Attribute => "stage",
    }
}

/// A UUID in its usual hyphenated form, as Attio writes ids.
pub(crate) fn is_uuid(value: &str) -> bool {
    value.len() == 36 && uuid::Uuid::try_parse(value).is_ok()
}

/// An `api_slug`: Attio formats them in snake case (`deals`, `sales_pipeline`).
pub(crate) fn is_slug(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Attio's webhook filter: `{"$and": [...]}` (every condition) or `{"$or": [...]}` (any), each
/// condition `{"field": "actor.type", "operator": "equals"|"not_equals", "value": "..."}` with a
/// dot path into the event. A path the event lacks reads as `null`: `equals` fails and
/// `not_equals` holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventFilter {
    combine: Combine,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Combine {
    All,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    path: Vec<String>,
    operator: Operator,
    value: Value,
}

impl EventFilter {
    /// Parses a filter given as a table or as a JSON string. `Ok(None)` for `null` (matches
    /// every event, as in Attio). The error says what is wrong, for the route's message.
    pub(crate) fn parse(filter: &Value) -> Result<Option<EventFilter>, String> {
        let parsed;
        let filter = match filter {
            Value::String(text) => {
                parsed = serde_json::from_str::<Value>(text)
                    .map_err(|e| format!("`filter` is not valid JSON: {e}"))?;
                &parsed
            }
            other => other,
        };
        let object = match filter {
            Value::Null => return Ok(None),
            Value::Object(object) => object,
            _ => return Err("`filter` must be {\"$and\": [...]} or {\"$or\": [...]}".to_string()),
        };
        let (combine, list) = match (object.get("$and"), object.get("$or")) {
            (Some(_), Some(_)) => {
                return Err(
                    "`filter` has both \"$and\" and \"$or\"; Attio allows exactly one".to_string(),
                )
            }
            (Some(list), None) => (Combine::All, list),
            (None, Some(list)) => (Combine::Any, list),
            (None, None) => {
                return Err(
                    "`filter` needs \"$and\" or \"$or\" with a list of conditions".to_string(),
                )
            }
        };
        if let Some(other) = object.keys().find(|k| *k != "$and" && *k != "$or") {
            return Err(format!(
                "`filter` has unknown key {other:?}; only \"$and\" or \"$or\" (no nesting)"
            ));
        }
        let Value::Array(list) = list else {
            return Err("`filter`'s \"$and\"/\"$or\" must be a list of conditions".to_string());
        };
        if list.is_empty() {
            return Err("`filter` has an empty list of conditions".to_string());
        }
        let conditions = list
            .iter()
            .enumerate()
            .map(|(index, condition)| {
                Condition::parse(condition).map_err(|e| format!("`filter` condition {index}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(EventFilter {
            combine,
            conditions,
        }))
    }

    /// Whether the event holds. An event that could not be read matches no filter.
    pub(crate) fn matches(&self, fields: &FilterFields<'_>) -> bool {
        let Some(event) = fields.event else {
            return false;
        };
        let mut results = self.conditions.iter().map(|c| c.matches(event, fields));
        match self.combine {
            Combine::All => results.all(|m| m),
            Combine::Any => results.any(|m| m),
        }
    }
}

impl Condition {
    fn parse(condition: &Value) -> Result<Condition, String> {
        let Value::Object(fields) = condition else {
            return Err("must be {\"field\", \"operator\", \"value\"}".to_string());
        };
        if let Some(other) = fields
            .keys()
            .find(|k| !matches!(k.as_str(), "field" | "operator" | "value"))
        {
            return Err(format!(
                "unknown key {other:?}; a condition has field, operator and value"
            ));
        }
        let field = match fields.get("field") {
            Some(Value::String(field)) => field,
            _ => return Err("needs a \"field\": a dot path such as \"actor.type\"".to_string()),
        };
        let path: Vec<String> = field.split('.').map(str::to_string).collect();
        let valid_segment = |s: &String| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !path.iter().all(valid_segment) {
            return Err(format!(
                "bad field path {field:?}: use dot-separated names such as \"id.object_id\""
            ));
        }
        let operator = match fields.get("operator").and_then(Value::as_str) {
            Some("equals") => Operator::Equals,
            Some("not_equals") => Operator::NotEquals,
            Some(other) => {
                return Err(format!(
                    "unknown operator {other:?}; Attio filters use \"equals\" or \"not_equals\""
                ))
            }
            None => return Err("needs an \"operator\": \"equals\" or \"not_equals\"".to_string()),
        };
        let value = match fields.get("value") {
            Some(value @ (Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null)) => {
                value.clone()
            }
            Some(_) => {
                return Err("\"value\" must be a string (or a number or boolean)".to_string())
            }
            None => return Err("needs a \"value\"".to_string()),
        };
        Ok(Condition {
            path,
            operator,
            value,
        })
    }

    fn matches(&self, event: &Value, fields: &FilterFields<'_>) -> bool {
        let equal = match fields.find(event, &self.path) {
            Found::Json(found) => *found == self.value,
            Found::Text(found) => self.value.as_str() == Some(found),
            Found::Null => self.value.is_null(),
        };
        match self.operator {
            Operator::Equals => equal,
            Operator::NotEquals => !equal,
        }
    }
}

/// What a route filter reads of one event: its JSON (parsed once, by the worker; `None` when it
/// could not be read, which no filter matches) and, when the routes wanted the event enriched,
/// the fields enrichment adds at its top, which win over the event's own keys of those names.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FilterFields<'a> {
    pub(crate) event: Option<&'a Value>,
    pub(crate) enriched: Option<EnrichedFields<'a>>,
}

/// The fields a filter sees after enrichment: `enrichment` (the status), the resolved `object`,
/// `list` and `attribute` slugs, and the fetched `data` (each `null` when absent).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnrichedFields<'a> {
    pub(crate) enrichment: &'a str,
    pub(crate) object: Option<&'a str>,
    pub(crate) list: Option<&'a str>,
    pub(crate) attribute: Option<&'a str>,
    pub(crate) data: Option<&'a Value>,
}

/// What a filter's dot path leads to.
enum Found<'a> {
    Json(&'a Value),
    Text(&'a str),
    /// Missing, or `null`.
    Null,
}

impl<'a> FilterFields<'a> {
    /// Follows `path` (never empty: filters are checked at start) from the event's top.
    fn find(&self, event: &'a Value, path: &[String]) -> Found<'a> {
        let Some((first, rest)) = path.split_first() else {
            return Found::Json(event);
        };
        let text = |value: Option<&'a str>| value.map_or(Found::Null, Found::Text);
        let start = match self.enriched.filter(|_| event.is_object()) {
            Some(enriched) => match first.as_str() {
                "enrichment" => Found::Text(enriched.enrichment),
                "object" => text(enriched.object),
                "list" => text(enriched.list),
                "attribute" => text(enriched.attribute),
                "data" => enriched.data.map_or(Found::Null, Found::Json),
                _ => event.get(first).map_or(Found::Null, Found::Json),
            },
            None => event.get(first).map_or(Found::Null, Found::Json),
        };
        match start {
            Found::Json(node) => rest
                .iter()
                .try_fold(node, |node, segment| node.get(segment))
                .map_or(Found::Null, Found::Json),
            // A slug has no fields below it.
            Found::Text(_) if !rest.is_empty() => Found::Null,
            found => found,
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: String,
    patterns: Vec<EventPattern>,
    filter: Option<EventFilter>,
    sinks: Vec<String>,
    enrich: RouteEnrich,
    dimensions: Vec<DimensionRule>,
    collapse: bool,
    /// How long updates of one record are held before their shared fetch (`settle`).
    settle: Option<Duration>,
}

/// One sink an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoutedSink<'a> {
    pub(crate) name: &'a str,
    /// Every matching route that names this sink has `collapse = true`: events that shared one
    /// fetch reach it as one line. A sink also named by a matching route without `collapse`
    /// gets every event on its own.
    pub(crate) collapse: bool,
}

impl CompiledRoute {
    /// Whether the route's `object` / `list` / `attribute` keys hold. `Unknown` (a slug that
    /// could not be resolved) counts as a match: its sinks then share the enrichment failure and
    /// the event is retried, instead of silently skipping a route that may have wanted it.
    fn dimensions_hold(&self, event: &EventDimensions) -> bool {
        self.dimensions
            .iter()
            .all(|rule| rule.holds(event) != Holds::No)
    }
}

/// The longest `settle` a route may ask for. Each held event occupies a worker slot and keeps
/// its dedupe claim (`dedupe.claim_lease`, default 60 s) meanwhile.
pub(crate) const MAX_SETTLE: Duration = Duration::from_secs(30);

/// The compiled routes.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    routes: Vec<CompiledRoute>,
}

impl RouteTable {
    /// Checks and compiles the routes; an error names the route and what is wrong.
    pub(crate) fn compile(
        routes: &[RouteSettings],
        sink_names: &[String],
    ) -> Result<RouteTable, RouteError> {
        let mut compiled = Vec::with_capacity(routes.len());
        for (index, route) in routes.iter().enumerate() {
            let key = format!("routes[{index}] ({:?})", route.name);
            let invalid = |problem: String| RouteError {
                key: key.clone(),
                problem,
            };
            if route.name.trim().is_empty() {
                return Err(invalid("needs a `name`".to_string()));
            }
            if routes[..index].iter().any(|r| r.name == route.name) {
                return Err(invalid("has the same name as an earlier route".to_string()));
            }
            if route.events.is_empty() {
                return Err(invalid(
                    "lists no `events`; use [\"*\"] for every event".to_string(),
                ));
            }
            if route.sinks.is_empty() {
                return Err(invalid("lists no `sinks`".to_string()));
            }
            let patterns = route
                .events
                .iter()
                .map(|p| EventPattern::parse(p).map_err(&invalid))
                .collect::<Result<Vec<_>, _>>()?;
            for sink in &route.sinks {
                if !sink_names.contains(sink) {
                    return Err(invalid(format!(
                        "names unknown sink {sink:?}; configured sinks: {}",
                        if sink_names.is_empty() {
                            "none (add a [sinks.NAME] table)".to_string()
                        } else {
                            sink_names.join(", ")
                        }
                    )));
                }
            }
            let filter = match &route.filter {
                Some(filter) => EventFilter::parse(filter).map_err(&invalid)?,
                None => None,
            };
            let mut dimensions = Vec::new();
            for (dimension, values) in [
                (Dimension::Object, &route.object),
                (Dimension::List, &route.list),
                (Dimension::Attribute, &route.attribute),
            ] {
                let Some(values) = values else { continue };
                let rule = DimensionRule::parse(dimension, values).map_err(&invalid)?;
                if let Some(slug) = rule.slugs.first() {
                    if route.enrich != RouteEnrich::Required {
                        return Err(invalid(format!(
                            "`{}` = {slug:?} is a slug, matched against the name enrichment \
                             resolves, so the route needs `enrich = true` (the default); or give \
                             the {}'s UUID",
                            dimension.key(),
                            dimension.key()
                        )));
                    }
                }
                dimensions.push(rule);
            }
            if let Some(settle) = route.settle {
                if settle.is_zero() || settle > MAX_SETTLE {
                    return Err(invalid(format!(
                        "has `settle = {:?}`; give a time between 1ms and {}s, such as \"3s\" \
                         (Attio's follow-up updates come about a second after the edit)",
                        humantime::format_duration(settle).to_string(),
                        MAX_SETTLE.as_secs()
                    )));
                }
            }
            let collapse = route.collapse || route.settle.is_some();
            if collapse {
                let option = if route.settle.is_some() {
                    "`settle`"
                } else {
                    "`collapse = true`"
                };
                if route.enrich == RouteEnrich::Off {
                    return Err(invalid(format!(
                        "has {option} with `enrich = false`: it joins the events that shared \
                         one fetch, so the route needs enrichment"
                    )));
                }
                let collapsible = [EventKind::RecordUpdated, EventKind::ListEntryUpdated];
                if !patterns
                    .iter()
                    .any(|p| collapsible.iter().any(|k| p.matches(k.as_str())))
                {
                    return Err(invalid(format!(
                        "has {option} but its `events` match neither record.updated nor \
                         list-entry.updated, the only events that are collapsed"
                    )));
                }
            }
            compiled.push(CompiledRoute {
                name: route.name.clone(),
                patterns,
                filter,
                sinks: route.sinks.clone(),
                enrich: route.enrich,
                dimensions,
                collapse,
                settle: route.settle,
            });
        }
        Ok(RouteTable { routes: compiled })
    }

    /// Exact patterns naming no event type Attio documents: likely typos, worth a warning.
    pub(crate) fn unknown_event_types(&self) -> Vec<(String, String)> {
        let mut unknown = Vec::new();
        for route in &self.routes {
            for pattern in &route.patterns {
                if let EventPattern::Exact(name) = pattern {
                    if !EventKind::parse(name).is_known() {
                        unknown.push((route.name.clone(), name.clone()));
                    }
                }
            }
        }
        unknown
    }

    /// Whether any route has an `object`, `list` or `attribute` key (only then are an event's
    /// [`EventDimensions`] worth working out).
    pub(crate) fn has_dimension_keys(&self) -> bool {
        self.routes.iter().any(|route| !route.dimensions.is_empty())
    }

    /// Whether some route selects events by the slug of a `dimension` (`list = "sales"`).
    pub(crate) fn selects_by_slug(&self, dimension: Dimension) -> bool {
        self.routes.iter().any(|route| {
            route
                .dimensions
                .iter()
                .any(|rule| rule.dimension == dimension && !rule.slugs.is_empty())
        })
    }

    /// The first route key that names a slug, as `(route name, key, slug)`: such routes need
    /// enrichment (an Attio API key) to ever match.
    pub(crate) fn first_slug_key(&self) -> Option<(&str, &'static str, &str)> {
        self.routes.iter().find_map(|route| {
            route.dimensions.iter().find_map(|rule| {
                rule.slugs
                    .first()
                    .map(|slug| (route.name.as_str(), rule.dimension.key(), slug.as_str()))
            })
        })
    }

    /// The sink names [`RouteTable::routed`] gives for an event's JSON text, without enrichment.
    #[cfg(test)]
    pub(crate) fn sinks_for(
        &self,
        event_type: &str,
        event: &str,
        dimensions: &EventDimensions,
    ) -> Vec<&str> {
        let event = serde_json::from_str::<Value>(event).ok();
        let fields = FilterFields {
            event: event.as_ref(),
            enriched: None,
        };
        self.routed(event_type, &fields, dimensions)
            .into_iter()
            .map(|sink| sink.name)
            .collect()
    }

    /// Whether any route has a `filter` (only then does the worker keep an event's whole tree).
    pub(crate) fn has_filters(&self) -> bool {
        self.routes.iter().any(|route| route.filter.is_some())
    }

    /// Whether any route has `collapse = true`.
    pub(crate) fn has_collapse(&self) -> bool {
        self.routes.iter().any(|route| route.collapse)
    }

    /// The sinks an event goes to, each once, in configuration order, each saying whether it
    /// takes collapsed lines. `fields` is what filters read; `dimensions` is what the routes'
    /// `object` / `list` / `attribute` keys compare with.
    pub(crate) fn routed(
        &self,
        event_type: &str,
        fields: &FilterFields<'_>,
        dimensions: &EventDimensions,
    ) -> Vec<RoutedSink<'_>> {
        let mut sinks: Vec<RoutedSink<'_>> = Vec::new();
        for route in &self.routes {
            if !route.patterns.iter().any(|p| p.matches(event_type)) {
                continue;
            }
            if !route.dimensions_hold(dimensions) {
                continue;
            }
            if route.filter.as_ref().is_some_and(|f| !f.matches(fields)) {
                continue;
            }
            for sink in &route.sinks {
                match sinks.iter_mut().find(|s| s.name == sink.as_str()) {
                    Some(seen) => seen.collapse &= route.collapse,
                    None => sinks.push(RoutedSink {
                        name: sink,
                        collapse: route.collapse,
                    }),
                }
            }
        }
        sinks
    }
}

impl RouteTable {
    /// How long `record.updated` / `list-entry.updated` events of `event_type` are held before
    /// their fetch: the longest `settle` of the routes whose `events` match the type (a route's
    /// other keys can only be tested after the fetch). `None` when no such route has one.
    pub(crate) fn settle_for(&self, event_type: &str) -> Option<Duration> {
        self.routes
            .iter()
            .filter(|route| route.patterns.iter().any(|p| p.matches(event_type)))
            .filter_map(|route| route.settle)
            .max()
    }

    /// How much the routes matching `event_type` need the event enriched: the strongest wish
    /// wins (`true` over `"optional"` over `false`). `Off` when no route matches.
    pub(crate) fn enrichment_for(&self, event_type: &str) -> RouteEnrich {
        self.routes
            .iter()
            .filter(|route| route.patterns.iter().any(|p| p.matches(event_type)))
            .map(|route| route.enrich)
            .max()
            .unwrap_or(RouteEnrich::Off)
    }
}

/// The known event type closest to `name`, for "did you mean" hints.
pub(crate) fn closest_event_type(name: &str) -> Option<&'static str> {
    SUBSCRIBABLE_EVENT_TYPES
        .iter()
        .map(|known| (strsim::levenshtein(name, known), *known))
        .filter(|(distance, _)| *distance <= 3)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, events: &[&str], sinks: &[&str]) -> RouteSettings {
        RouteSettings {
            name: name.to_string(),
            events: events.iter().map(|s| s.to_string()).collect(),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            ..RouteSettings::catch_all()
        }
    }

    #[test]
    fn collapse_needs_enrichment_and_an_event_it_can_collapse() {
        let sinks = names(&["a"]);
        let without_fetch = RouteSettings {
            collapse: true,
            enrich: RouteEnrich::Off,
            ..route("changes", &["record.updated"], &["a"])
        };
        let error = RouteTable::compile(&[without_fetch], &sinks)
            .map(|_| ())
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("\"changes\"") && error.contains("enrich = false"),
            "{error}"
        );
        let nothing_to_collapse = RouteSettings {
            collapse: true,
            ..route("tasks", &["task.*"], &["a"])
        };
        let error = RouteTable::compile(&[nothing_to_collapse], &sinks)
            .map(|_| ())
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("\"tasks\"") && error.contains("record.updated"),
            "{error}"
        );
        let fine = RouteSettings {
            collapse: true,
            ..route("records", &["record.*"], &["a"])
        };
        assert!(RouteTable::compile(&[fine], &sinks).is_ok());
    }

    #[test]
    fn settle_collapses_holds_the_types_it_matches_and_is_bounded() {
        let sinks = names(&["a"]);
        let settling = RouteSettings {
            settle: Some(Duration::from_secs(3)),
            ..route("edits", &["record.*"], &["a"])
        };
        let table = RouteTable::compile(&[settling, route("all", &["*"], &["a"])], &sinks).unwrap();
        assert!(table.has_collapse(), "settle implies collapse");
        assert_eq!(
            table.settle_for("record.updated"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(table.settle_for("list-entry.updated"), None);
        for (settle, expected) in [
            (Duration::ZERO, "between 1ms and 30s"),
            (Duration::from_secs(31), "between 1ms and 30s"),
        ] {
            let error = RouteTable::compile(
                &[RouteSettings {
                    settle: Some(settle),
                    ..route("edits", &["record.updated"], &["a"])
                }],
                &sinks,
            )
            .map(|_| ())
            .expect_err("refused")
            .to_string();
            assert!(
                error.contains(expected) && error.contains("\"edits\""),
                "{error}"
            );
        }
        let error = RouteTable::compile(
            &[RouteSettings {
                settle: Some(Duration::from_secs(2)),
                ..route("tasks", &["task.*"], &["a"])
            }],
            &sinks,
        )
        .map(|_| ())
        .expect_err("refused")
        .to_string();
        assert!(error.contains("`settle`"), "{error}");
    }

    #[test]
    fn a_sink_collapses_only_when_every_matching_route_naming_it_collapses() {
        let table = RouteTable::compile(
            &[
                RouteSettings {
                    collapse: true,
                    ..route("changes", &["record.updated"], &["a", "b"])
                },
                route("audit", &["*"], &["b"]),
            ],
            &names(&["a", "b"]),
        )
        .unwrap();
        assert!(table.has_collapse());
        let routed = table.routed("record.updated", &FilterFields::default(), &none());
        assert_eq!(
            routed,
            vec![
                RoutedSink {
                    name: "a",
                    collapse: true
                },
                RoutedSink {
                    name: "b",
                    collapse: false
                },
            ]
        );
    }

    fn filtered(name: &str, sinks: &[&str], filter: Value) -> RouteSettings {
        RouteSettings {
            filter: Some(filter),
            ..route(name, &["*"], sinks)
        }
    }

    fn none() -> EventDimensions {
        EventDimensions::default()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns_match_exact_family_and_any() {
        assert!(EventPattern::parse("*").unwrap().matches("task.created"));
        let family = EventPattern::parse("record.*").unwrap();
        assert!(family.matches("record.merged"));
        assert!(!family.matches("list-entry.created"));
        let exact = EventPattern::parse("record.updated").unwrap();
        assert!(exact.matches("record.updated"));
        assert!(!exact.matches("record.created"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "record",
            "*.updated",
            "Record.Updated",
            "record.up*",
            "rec ord.x",
        ] {
            assert!(EventPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_event_goes_to_the_union_of_matching_routes() {
        let table = RouteTable::compile(
            &[
                route("records", &["record.*"], &["a", "b"]),
                route(
                    "updates",
                    &["record.updated", "list-entry.updated"],
                    &["b", "c"],
                ),
                route("tasks", &["task.created"], &["d"]),
            ],
            &names(&["a", "b", "c", "d"]),
        )
        .unwrap();
        assert_eq!(
            table.sinks_for("record.updated", "{}", &none()),
            vec!["a", "b", "c"]
        );
        assert_eq!(
            table.sinks_for("record.created", "{}", &none()),
            vec!["a", "b"]
        );
        assert_eq!(
            table.sinks_for("list-entry.updated", "{}", &none()),
            vec!["b", "c"]
        );
        assert!(table.sinks_for("note.created", "{}", &none()).is_empty());
    }

    #[test]
    fn unknown_event_types_can_be_routed_by_name() {
        let table = RouteTable::compile(
            &[route("new", &["spaceship.launched"], &["a"])],
            &names(&["a"]),
        )
        .unwrap();
        assert_eq!(
            table.sinks_for("spaceship.launched", "{}", &none()),
            vec!["a"]
        );
        assert_eq!(
            table.unknown_event_types(),
            vec![("new".to_string(), "spaceship.launched".to_string())]
        );
    }

    #[test]
    fn invalid_routes_name_the_route() {
        let error = RouteTable::compile(&[route("r", &["nope"], &["a"])], &names(&["a"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"r\"") && error.contains("nope"), "{error}");
        let error = RouteTable::compile(&[route("r", &["*"], &["missing"])], &names(&["a"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing") && error.contains("a"), "{error}");
    }

    #[test]
    fn the_strongest_enrichment_wish_of_matching_routes_wins() {
        let mut quiet = route("quiet", &["record.*", "task.*"], &["a"]);
        quiet.enrich = RouteEnrich::Off;
        let mut lenient = route("lenient", &["record.*", "note.*"], &["b"]);
        lenient.enrich = RouteEnrich::Optional;
        let strict = route("strict", &["record.updated"], &["c"]);
        let table =
            RouteTable::compile(&[quiet, lenient, strict], &names(&["a", "b", "c"])).unwrap();
        assert_eq!(
            table.enrichment_for("record.updated"),
            RouteEnrich::Required
        );
        assert_eq!(
            table.enrichment_for("record.created"),
            RouteEnrich::Optional
        );
        assert_eq!(table.enrichment_for("note.created"), RouteEnrich::Optional);
        assert_eq!(table.enrichment_for("task.created"), RouteEnrich::Off);
        assert_eq!(table.enrichment_for("list.created"), RouteEnrich::Off);
    }

    #[test]
    fn near_misses_get_a_suggestion() {
        assert_eq!(closest_event_type("record.update"), Some("record.updated"));
        assert_eq!(closest_event_type("zzzzzzzz"), None);
    }

    /// The `record.updated` event of Attio's documentation.
    fn record_updated() -> String {
        let delivery: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/attio_docs__record.updated_delivery.json"
        ))
        .unwrap();
        delivery["events"][0].to_string()
    }

    const PEOPLE: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";

    #[test]
    fn and_filter_routes_only_events_matching_every_condition() {
        let table = RouteTable::compile(
            &[filtered(
                "people-by-humans",
                &["a"],
                serde_json::json!({"$and": [
                    {"field": "id.object_id", "operator": "equals", "value": PEOPLE},
                    {"field": "actor.type", "operator": "equals", "value": "workspace-member"}
                ]}),
            )],
            &names(&["a"]),
        )
        .unwrap();
        let event = record_updated();
        assert_eq!(
            table.sinks_for("record.updated", &event, &none()),
            vec!["a"]
        );
        let by_api = event.replace("workspace-member", "api-token");
        assert!(table
            .sinks_for("record.updated", &by_api, &none())
            .is_empty());
        let other_object = event.replace(PEOPLE, "11111111-1111-4111-8111-111111111111");
        assert!(table
            .sinks_for("record.updated", &other_object, &none())
            .is_empty());
    }

    #[test]
    fn after_enrichment_filters_read_its_fields_over_the_events_own_keys() {
        let table = RouteTable::compile(
            &[filtered(
                "won deals",
                &["a"],
                serde_json::json!({"$and": [
                    {"field": "object", "operator": "equals", "value": "deals"},
                    {"field": "data.values.stage", "operator": "equals", "value": "won"},
                    {"field": "enrichment", "operator": "equals", "value": "ok"},
                    {"field": "object.api_slug", "operator": "equals", "value": null},
                    {"field": "actor.type", "operator": "equals", "value": "workspace-member"}
                ]}),
            )],
            &names(&["a"]),
        )
        .unwrap();
        // The event's own `object` and `data` keys are not what filters see once it is enriched.
        let event: Value = serde_json::json!({
            "event_type": "record.updated", "object": "people", "data": {"values": {"stage": "lost"}},
            "actor": {"type": "workspace-member", "id": "m"}
        });
        let data = serde_json::json!({"values": {"stage": "won"}});
        let enriched = EnrichedFields {
            enrichment: "ok",
            object: Some("deals"),
            list: None,
            attribute: None,
            data: Some(&data),
        };
        let routed = |enriched: Option<EnrichedFields<'_>>| {
            let fields = FilterFields {
                event: Some(&event),
                enriched,
            };
            table.routed("record.updated", &fields, &none()).len()
        };
        assert_eq!(routed(Some(enriched)), 1);
        assert_eq!(
            routed(None),
            0,
            "without enrichment the event's own keys count"
        );
        let other = EnrichedFields {
            object: Some("people"),
            ..enriched
        };
        assert_eq!(routed(Some(other)), 0);
        let unreadable = FilterFields {
            event: None,
            enriched: Some(enriched),
        };
        assert!(
            table
                .routed("record.updated", &unreadable, &none())
                .is_empty(),
            "an event that could not be read matches no filter"
        );
    }

    #[test]
    fn or_filter_routes_events_matching_any_condition() {
        let table = RouteTable::compile(
            &[filtered(
                "either",
                &["a"],
                serde_json::json!({"$or": [
                    {"field": "actor.type", "operator": "equals", "value": "api-token"},
                    {"field": "id.object_id", "operator": "equals", "value": PEOPLE}
                ]}),
            )],
            &names(&["a"]),
        )
        .unwrap();
        let event = record_updated();
        assert_eq!(
            table.sinks_for("record.updated", &event, &none()),
            vec!["a"]
        );
        let neither = event.replace(PEOPLE, "11111111-1111-4111-8111-111111111111");
        assert!(table
            .sinks_for("record.updated", &neither, &none())
            .is_empty());
    }

    #[test]
    fn not_equals_excludes_the_value_and_holds_for_a_missing_field() {
        let table = RouteTable::compile(
            &[filtered(
                "not-bots",
                &["a"],
                serde_json::json!({"$and": [
                    {"field": "actor.type", "operator": "not_equals", "value": "system"}
                ]}),
            )],
            &names(&["a"]),
        )
        .unwrap();
        let event = record_updated();
        assert_eq!(
            table.sinks_for("record.updated", &event, &none()),
            vec!["a"]
        );
        let by_system = event.replace("workspace-member", "system");
        assert!(table
            .sinks_for("record.updated", &by_system, &none())
            .is_empty());
        assert_eq!(
            table.sinks_for(
                "record.updated",
                r#"{"event_type":"record.updated"}"#,
                &none()
            ),
            vec!["a"]
        );
    }

    #[test]
    fn a_filter_written_as_a_json_string_works_like_a_table() {
        let text = format!(
            r#"{{"$and":[{{"field":"id.object_id","operator":"equals","value":"{PEOPLE}"}}]}}"#
        );
        let table = RouteTable::compile(
            &[filtered("json", &["a"], Value::String(text))],
            &names(&["a"]),
        )
        .unwrap();
        assert_eq!(
            table.sinks_for("record.updated", &record_updated(), &none()),
            vec!["a"]
        );
        assert!(table
            .sinks_for("record.updated", r#"{"id":{"object_id":"x"}}"#, &none())
            .is_empty());
    }

    #[test]
    fn filters_and_event_patterns_must_both_match() {
        let table = RouteTable::compile(
            &[
                RouteSettings {
                    filter: Some(serde_json::json!({"$and": [
                        {"field": "actor.type", "operator": "equals", "value": "workspace-member"}
                    ]})),
                    ..route("list-only", &["list-entry.*"], &["a"])
                },
                route("records", &["record.*"], &["b"]),
            ],
            &names(&["a", "b"]),
        )
        .unwrap();
        // The filter would match, but the event type is not a list-entry one.
        assert_eq!(
            table.sinks_for("record.updated", &record_updated(), &none()),
            vec!["b"]
        );
    }

    #[test]
    fn invalid_filters_name_the_route_and_the_problem() {
        let cases = [
            (
                serde_json::json!({"$and": [{"field": "actor.type", "operator": "contains", "value": "x"}]}),
                "contains",
            ),
            (
                serde_json::json!({
                    "$and": [{"field": "actor.type", "operator": "equals", "value": "x"}],
                    "$or": [{"field": "actor.type", "operator": "equals", "value": "y"}]
                }),
                "both",
            ),
            (serde_json::json!({"$and": []}), "empty"),
            (
                serde_json::json!({"$or": [{"field": "actor..type", "operator": "equals", "value": "x"}]}),
                "actor..type",
            ),
            (
                serde_json::json!({"$or": [{"field": "", "operator": "equals", "value": "x"}]}),
                "bad field path",
            ),
            (
                serde_json::json!({"$eq": [{"field": "actor.type", "operator": "equals", "value": "x"}]}),
                "$and",
            ),
            (
                serde_json::json!({"$and": [{"field": "actor.type", "value": "x"}]}),
                "operator",
            ),
            (Value::String("{not json".to_string()), "not valid JSON"),
        ];
        for (filter, expected) in cases {
            let error = RouteTable::compile(
                &[filtered("bad-one", &["a"], filter.clone())],
                &names(&["a"]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                error.contains("bad-one") && error.contains(expected),
                "{filter}: {error}"
            );
        }
    }

    const DEALS: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
    const STAGE: &str = "41252299-f8c7-4b5e-99c9-4ff8321d2f96";
    const PIPELINE: &str = "33ebdbe9-e529-47c9-b894-0ba25e9c15c0";

    fn narrowed(
        name: &str,
        sinks: &[&str],
        object: Option<&[&str]>,
        list: Option<&[&str]>,
        attribute: Option<&[&str]>,
    ) -> RouteSettings {
        let values = |v: Option<&[&str]>| v.map(|v| v.iter().map(|s| s.to_string()).collect());
        RouteSettings {
            object: values(object),
            list: values(list),
            attribute: values(attribute),
            ..route(name, &["*"], sinks)
        }
    }

    fn value(id: Option<&str>, slug: Option<&str>) -> DimensionValue {
        DimensionValue {
            id: id.map(str::to_string),
            slug: slug.map(str::to_string),
        }
    }

    /// A record.updated of `deals` changing `stage`, names resolved.
    fn deal_stage_change() -> EventDimensions {
        EventDimensions {
            object: value(Some(DEALS), Some("deals")),
            list: value(None, None),
            attribute: value(Some(STAGE), Some("stage")),
            names: Names::Resolved,
        }
    }

    #[test]
    fn object_and_attribute_slugs_both_have_to_match() {
        let table = RouteTable::compile(
            &[narrowed(
                "deal-stage",
                &["a"],
                Some(&["deals"]),
                None,
                Some(&["stage"]),
            )],
            &names(&["a"]),
        )
        .unwrap();
        let sinks =
            |dimensions: &EventDimensions| table.sinks_for("record.updated", "{}", dimensions);
        assert_eq!(sinks(&deal_stage_change()), vec!["a"]);
        let other_attribute = EventDimensions {
            attribute: value(Some("11111111-1111-4111-8111-111111111111"), Some("amount")),
            ..deal_stage_change()
        };
        assert!(sinks(&other_attribute).is_empty());
        let other_object = EventDimensions {
            object: value(Some("22222222-2222-4222-8222-222222222222"), Some("people")),
            ..deal_stage_change()
        };
        assert!(sinks(&other_object).is_empty());
        // record.created names no attribute: a route narrowed to one never takes it.
        let created = EventDimensions {
            attribute: value(None, None),
            ..deal_stage_change()
        };
        assert!(sinks(&created).is_empty());
        // A task is about no object at all.
        assert!(table
            .sinks_for("task.created", "{}", &EventDimensions::default())
            .is_empty());
    }

    #[test]
    fn uuids_match_the_events_own_ids_without_enrichment() {
        let upper = DEALS.to_ascii_uppercase();
        let table = RouteTable::compile(
            &[RouteSettings {
                enrich: RouteEnrich::Off,
                ..narrowed("by-id", &["a"], Some(&[upper.as_str()]), None, None)
            }],
            &names(&["a"]),
        )
        .unwrap();
        let unresolved = EventDimensions {
            object: value(Some(DEALS), None),
            ..EventDimensions::default()
        };
        assert_eq!(
            table.sinks_for("record.created", "{}", &unresolved),
            vec!["a"]
        );
        let other = EventDimensions {
            object: value(Some("22222222-2222-4222-8222-222222222222"), Some("deals")),
            ..EventDimensions::default()
        };
        assert!(table.sinks_for("record.created", "{}", &other).is_empty());
        assert!(table.has_dimension_keys());
        assert_eq!(table.first_slug_key(), None, "UUIDs need no enrichment");
    }

    #[test]
    fn any_of_several_values_matches_and_slugs_and_uuids_mix() {
        let table = RouteTable::compile(
            &[narrowed(
                "lists",
                &["a"],
                None,
                Some(&["sales_pipeline", PIPELINE]),
                None,
            )],
            &names(&["a"]),
        )
        .unwrap();
        let entry = |id: &str, slug: &str| EventDimensions {
            list: value(Some(id), Some(slug)),
            names: Names::Resolved,
            ..EventDimensions::default()
        };
        assert_eq!(
            table.sinks_for("list-entry.created", "{}", &entry(PIPELINE, "renamed")),
            vec!["a"]
        );
        assert_eq!(
            table.sinks_for(
                "list-entry.created",
                "{}",
                &entry("44444444-4444-4444-8444-444444444444", "sales_pipeline")
            ),
            vec!["a"]
        );
        assert!(table
            .sinks_for(
                "list-entry.created",
                "{}",
                &entry("44444444-4444-4444-8444-444444444444", "hiring")
            )
            .is_empty());
        // A record event has no list.
        assert!(table
            .sinks_for("record.updated", "{}", &deal_stage_change())
            .is_empty());
        assert_eq!(
            table.first_slug_key(),
            Some(("lists", "list", "sales_pipeline"))
        );
    }

    #[test]
    fn an_unresolved_slug_counts_as_a_match_only_when_enrichment_failed() {
        let table = RouteTable::compile(
            &[
                narrowed("deals", &["a"], Some(&["deals"]), None, None),
                route("all", &["*"], &["b"]),
            ],
            &names(&["a", "b"]),
        )
        .unwrap();
        let names_state = |names| EventDimensions {
            object: value(Some(DEALS), None),
            names,
            ..EventDimensions::default()
        };
        // Failed: its sinks take part, share the failure and the event is retried.
        assert_eq!(
            table.sinks_for("record.updated", "{}", &names_state(Names::Failed)),
            vec!["a", "b"]
        );
        // Resolved without a slug (Attio has no such object) or never looked up: no match.
        assert_eq!(
            table.sinks_for("record.updated", "{}", &names_state(Names::Resolved)),
            vec!["b"]
        );
        assert_eq!(
            table.sinks_for("record.updated", "{}", &names_state(Names::Unavailable)),
            vec!["b"]
        );
        // Failed, but the event has no object at all: still no match.
        let task = EventDimensions {
            names: Names::Failed,
            ..EventDimensions::default()
        };
        assert_eq!(table.sinks_for("task.created", "{}", &task), vec!["b"]);
    }

    #[test]
    fn route_keys_filters_and_event_patterns_must_all_match() {
        let table = RouteTable::compile(
            &[RouteSettings {
                events: vec!["record.updated".to_string()],
                filter: Some(serde_json::json!({"$and": [
                    {"field": "actor.type", "operator": "equals", "value": "workspace-member"}
                ]})),
                ..narrowed("humans-on-deals", &["a"], Some(&["deals"]), None, None)
            }],
            &names(&["a"]),
        )
        .unwrap();
        let event = record_updated();
        let dimensions = deal_stage_change();
        assert_eq!(
            table.sinks_for("record.updated", &event, &dimensions),
            vec!["a"]
        );
        assert!(table
            .sinks_for("record.created", &event, &dimensions)
            .is_empty());
        let by_api = event.replace("workspace-member", "api-token");
        assert!(table
            .sinks_for("record.updated", &by_api, &dimensions)
            .is_empty());
    }
}
