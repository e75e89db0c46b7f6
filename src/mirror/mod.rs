//! Mirror: keep PostgreSQL tables and typed views equal to Attio.
//!
//! In: an enriched event (the sink line: what Attio sent and what the daemon re-fetched), or a
//! page of resources from `attio-webhooks sync`. Out: [`store::Change`]s written by
//! [`store::Store`], and [`SchemaWork`] that keeps the catalog of objects, lists and attributes
//! (and so the views of [`views`]) current. The event is only the trigger: rows come from the
//! fetched state, keyed by the fetched resource's own id.
//!
//! - [`settings`]: the `postgres` sink's keys and `[sync]`.
//! - [`store`]: every SQL statement, migrations embedded.
//! - [`views`]: Attio attribute types → view columns.
//! - [`sync`]: backfill and reconciliation, paged through Attio's list endpoints.

pub mod settings;
pub mod store;
pub mod sync;
pub(crate) mod views;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::event::EventKind;
use store::{Change, Table};
use views::Parent;

/// The parts of a sink line the mirror reads.
#[derive(Debug, Deserialize)]
pub(crate) struct LineView {
    pub(crate) id: String,
    pub(crate) event_type: String,
    pub(crate) received_at: String,
    pub(crate) event: Value,
    #[serde(default)]
    pub(crate) data: Option<Value>,
    pub(crate) enrichment: String,
    #[serde(default)]
    pub(crate) object: Option<String>,
    #[serde(default)]
    pub(crate) list: Option<String>,
    /// When Attio's answer was in hand; absent on lines from before it was recorded.
    #[serde(default)]
    pub(crate) fetched_at: Option<DateTime<Utc>>,
}

/// Work on the catalog that an event asks for, done before its rows are written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SchemaWork {
    /// Make sure the object's or list's schema is known and its view exists.
    Ensure { parent: Parent, parent_id: String },
    /// An attribute was created or changed: keep it and rebuild the view.
    Attribute {
        parent: Parent,
        parent_id: String,
        data: Value,
    },
    /// A list was created or changed.
    List { data: Value },
    /// A list is gone.
    ListGone { list_id: String },
}

/// What one event does to the mirror.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    pub(crate) schema: Vec<SchemaWork>,
    pub(crate) changes: Vec<Change>,
}

/// Why an event cannot be mirrored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlanError {
    /// Enrichment failed: the current state is unknown now, and may be known later.
    NotFetched(String),
    /// The event can never be mirrored as it stands (enrichment is off, an id is missing).
    Unusable(String),
}

/// Decides, with one exhaustive `match` on the event kind, which rows an event changes.
pub(crate) fn plan(line: &LineView) -> Result<Plan, PlanError> {
    let kind = EventKind::parse(&line.event_type);
    let at = line.fetched_at.unwrap_or_else(Utc::now);
    let mut plan = Plan::default();
    plan.changes.push(Change::Event {
        id: line.id.clone(),
        event_type: line.event_type.clone(),
        received_at: line.received_at.clone(),
        event: line.event.clone(),
    });
    let table = match kind {
        EventKind::RecordCreated
        | EventKind::RecordUpdated
        | EventKind::RecordDeleted
        | EventKind::RecordMerged => Table::Records,
        EventKind::ListEntryCreated | EventKind::ListEntryUpdated | EventKind::ListEntryDeleted => {
            Table::ListEntries
        }
        EventKind::NoteCreated
        | EventKind::NoteUpdated
        | EventKind::NoteDeleted
        | EventKind::NoteContentUpdated => Table::Notes,
        EventKind::TaskCreated | EventKind::TaskUpdated | EventKind::TaskDeleted => Table::Tasks,
        EventKind::CommentCreated
        | EventKind::CommentResolved
        | EventKind::CommentUnresolved
        | EventKind::CommentDeleted => Table::Comments,
        EventKind::WorkspaceMemberCreated => Table::WorkspaceMembers,
        EventKind::ListCreated | EventKind::ListUpdated | EventKind::ListDeleted => {
            let list_id = id(line, "list_id")?;
            match fetched(line)? {
                Some(data) => plan.schema.push(SchemaWork::List { data }),
                None => plan.schema.push(SchemaWork::ListGone { list_id }),
            }
            return Ok(plan);
        }
        EventKind::ObjectAttributeCreated
        | EventKind::ObjectAttributeUpdated
        | EventKind::ListAttributeCreated
        | EventKind::ListAttributeUpdated => {
            let (parent, parent_id) = match kind {
                EventKind::ObjectAttributeCreated | EventKind::ObjectAttributeUpdated => {
                    (Parent::Object, id(line, "object_id")?)
                }
                _ => (Parent::List, id(line, "list_id")?),
            };
            if let Some(data) = fetched(line)? {
                plan.schema.push(SchemaWork::Attribute {
                    parent,
                    parent_id,
                    data,
                });
            }
            return Ok(plan);
        }
        // Nothing of these is mirrored; the event itself is kept for audit.
        EventKind::CallRecordingCreated
        | EventKind::ActivityAttributeCreated
        | EventKind::ActivityAttributeUpdated
        | EventKind::Unknown(_) => return Ok(plan),
    };
    let slug = match table {
        Table::Records => line.object.clone(),
        Table::ListEntries => line.list.clone(),
        _ => None,
    };
    match table {
        Table::Records => plan.schema.push(SchemaWork::Ensure {
            parent: Parent::Object,
            parent_id: id(line, "object_id")?,
        }),
        Table::ListEntries => plan.schema.push(SchemaWork::Ensure {
            parent: Parent::List,
            parent_id: id(line, "list_id")?,
        }),
        _ => {}
    }
    match fetched(line)? {
        Some(data) => plan.changes.push(Change::Upsert {
            table,
            data,
            slug: slug.clone(),
            fetched_at: at,
        }),
        // Attio answered 404: whatever the event says, the resource is gone.
        None => plan.changes.push(Change::Gone {
            table,
            key: table
                .keys()
                .iter()
                .map(|key| id(line, key))
                .collect::<Result<_, _>>()?,
            slug: slug.clone(),
            at,
            merged_into: None,
        }),
    }
    if kind == EventKind::RecordMerged {
        // The event names the survivor in `id`; the merged-away record beside it.
        let duplicate = id(line, "duplicate_record_id")?;
        let survivor = id(line, "record_id")?;
        let object_id = id(line, "duplicate_object_id").or_else(|_| id(line, "object_id"))?;
        plan.changes.push(Change::Gone {
            table: Table::Records,
            key: vec![object_id, duplicate],
            slug,
            at,
            merged_into: Some(survivor),
        });
    }
    Ok(plan)
}

/// The fetched resource: `Some` when Attio answered, `None` when it answered 404.
fn fetched(line: &LineView) -> Result<Option<Value>, PlanError> {
    match line.enrichment.as_str() {
        "ok" => match &line.data {
            Some(data) if !data.is_null() => Ok(Some(data.clone())),
            _ => Err(PlanError::NotFetched(
                "enrichment reported success without data".to_string(),
            )),
        },
        "not_found" => Ok(None),
        "failed" => Err(PlanError::NotFetched(
            "the event's resource could not be fetched from Attio".to_string(),
        )),
        other => Err(PlanError::Unusable(format!(
            "the postgres sink needs the re-fetched state, but enrichment is {other:?}: set \
             ATTIO_API_KEY and leave the route's enrich on"
        ))),
    }
}

/// An id the event carries, in `id` or beside it.
fn id(line: &LineView, key: &str) -> Result<String, PlanError> {
    [
        line.event.get("id").and_then(|ids| ids.get(key)),
        line.event.get(key),
    ]
    .into_iter()
    .flatten()
    .find_map(|value| value.as_str().filter(|s| !s.is_empty()))
    .map(str::to_string)
    .ok_or_else(|| PlanError::Unusable(format!("the {} event carries no `{key}`", line.event_type)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OBJECT: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
    const SURVIVOR: &str = "bf071e1f-6035-429d-b874-d83ea64ea13b";
    const DUPLICATE: &str = "2e6e29ea-c4e0-4f44-842d-78a891f8c156";

    fn line(event: Value, enrichment: &str, data: Option<Value>) -> LineView {
        LineView {
            id: "key:0".into(),
            event_type: event["event_type"].as_str().unwrap().into(),
            received_at: "2026-01-01T00:00:00Z".into(),
            event,
            data,
            enrichment: enrichment.into(),
            object: Some("deals".into()),
            list: None,
            fetched_at: Some(Utc::now()),
        }
    }

    #[test]
    fn a_merge_refreshes_the_survivor_and_marks_the_duplicate_merged_into_it() {
        let event = json!({
            "event_type": "record.merged",
            "id": {"workspace_id": "w", "object_id": OBJECT, "record_id": SURVIVOR},
            "duplicate_object_id": OBJECT, "duplicate_record_id": DUPLICATE,
            "actor": {"type": "system", "id": null}
        });
        let data = json!({"id": {"workspace_id": "w", "object_id": OBJECT, "record_id": SURVIVOR}, "values": {}});
        let plan = plan(&line(event, "ok", Some(data))).unwrap();
        assert!(matches!(
            &plan.changes[1],
            Change::Upsert {
                table: Table::Records,
                ..
            }
        ));
        match &plan.changes[2] {
            Change::Gone {
                key, merged_into, ..
            } => {
                assert_eq!(key, &vec![OBJECT.to_string(), DUPLICATE.to_string()]);
                assert_eq!(merged_into.as_deref(), Some(SURVIVOR));
            }
            other => panic!("expected the duplicate gone, got {other:?}"),
        }
    }

    #[test]
    fn a_resource_attio_no_longer_has_is_gone_whatever_the_event_says() {
        let event = json!({
            "event_type": "record.updated",
            "id": {"workspace_id": "w", "object_id": OBJECT, "record_id": SURVIVOR, "attribute_id": "a"},
            "actor": {"type": "system", "id": null}
        });
        let plan = plan(&line(event, "not_found", None)).unwrap();
        assert!(matches!(
            &plan.changes[1],
            Change::Gone {
                table: Table::Records,
                ..
            }
        ));
    }

    #[test]
    fn without_enrichment_the_event_is_refused_for_good_and_a_failed_fetch_may_pass() {
        let event =
            json!({"event_type": "task.created", "id": {"workspace_id": "w", "task_id": SURVIVOR}});
        assert!(matches!(
            plan(&line(event.clone(), "disabled", None)),
            Err(PlanError::Unusable(_))
        ));
        assert!(matches!(
            plan(&line(event, "failed", None)),
            Err(PlanError::NotFetched(_))
        ));
    }
}
