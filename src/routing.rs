//! Routing: which sinks an event goes to.
//!
//! In: the configured `[[routes]]` (compiled and checked once at start) and an event's type.
//! Out: the names of the sinks the event goes to: the union of the sinks of every matching route.

use crate::config::{ConfigError, RouteEnrich, RouteSettings};
use crate::event::{EventKind, SUBSCRIBABLE_EVENT_TYPES};

/// An event-type pattern: `*`, `record.*`, or one exact type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    Any,
    Family(String),
    Exact(String),
}

impl EventPattern {
    pub fn parse(pattern: &str) -> Result<EventPattern, String> {
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

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Family(family) => {
                event_type.split_once('.').is_some_and(|(f, _)| f == family)
            }
            EventPattern::Exact(exact) => exact == event_type,
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: String,
    patterns: Vec<EventPattern>,
    sinks: Vec<String>,
    enrich: RouteEnrich,
}

/// The compiled routes.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
}

impl RouteTable {
    /// Checks and compiles the routes; an error names the route and what is wrong.
    pub fn compile(
        routes: &[RouteSettings],
        sink_names: &[String],
    ) -> Result<RouteTable, ConfigError> {
        let mut compiled = Vec::with_capacity(routes.len());
        for (index, route) in routes.iter().enumerate() {
            let key = format!("routes[{index}] ({:?})", route.name);
            let invalid = |problem: String| ConfigError::Invalid {
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
            compiled.push(CompiledRoute {
                name: route.name.clone(),
                patterns,
                sinks: route.sinks.clone(),
                enrich: route.enrich,
            });
        }
        Ok(RouteTable { routes: compiled })
    }

    /// Exact patterns naming no event type Attio documents: likely typos, worth a warning.
    pub fn unknown_event_types(&self) -> Vec<(String, String)> {
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

    /// The sinks `event_type` goes to, each once, in configuration order.
    pub fn sinks_for(&self, event_type: &str) -> Vec<&str> {
        let mut sinks: Vec<&str> = Vec::new();
        for route in &self.routes {
            if route.patterns.iter().any(|p| p.matches(event_type)) {
                for sink in &route.sinks {
                    if !sinks.contains(&sink.as_str()) {
                        sinks.push(sink);
                    }
                }
            }
        }
        sinks
    }
}

impl RouteTable {
    /// How much the routes matching `event_type` need the event enriched: the strongest wish
    /// wins (`true` over `"optional"` over `false`). `Off` when no route matches.
    pub fn enrichment_for(&self, event_type: &str) -> RouteEnrich {
        self.routes
            .iter()
            .filter(|route| route.patterns.iter().any(|p| p.matches(event_type)))
            .map(|route| route.enrich)
            .max()
            .unwrap_or(RouteEnrich::Off)
    }
}

/// The known event type closest to `name`, for "did you mean" hints.
pub fn closest_event_type(name: &str) -> Option<&'static str> {
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
            enrich: RouteEnrich::default(),
        }
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
        assert_eq!(table.sinks_for("record.updated"), vec!["a", "b", "c"]);
        assert_eq!(table.sinks_for("record.created"), vec!["a", "b"]);
        assert_eq!(table.sinks_for("list-entry.updated"), vec!["b", "c"]);
        assert!(table.sinks_for("note.created").is_empty());
    }

    #[test]
    fn unknown_event_types_can_be_routed_by_name() {
        let table = RouteTable::compile(
            &[route("new", &["spaceship.launched"], &["a"])],
            &names(&["a"]),
        )
        .unwrap();
        assert_eq!(table.sinks_for("spaceship.launched"), vec!["a"]);
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
}
