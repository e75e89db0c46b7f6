//! The work item: one event as the worker carries it through its stages, its JSON read once.
//!
//! In: a [`JournaledEvent`] (from the channel or the journal) and whether route filters read the
//! whole event. Out: a [`WorkItem`]: the event's identity and kind, its JSON read once (an
//! [`EventView`]: the text the sink line copies verbatim, the ids, and the tree when filters need
//! it), what enrichment would fetch ([`Plan`]), and where it stands with its sinks. Every stage
//! borrows it; none parses the event again.

use crate::enrich::{MissingId, Plan, Subject};
use crate::event::{EventIds, EventKind, EventView, UnreadableEvent};
use crate::journal::{JournaledEvent, SinkProgress};
use crate::sinks::LineHead;

/// One event on its way through the worker.
#[derive(Debug)]
pub(crate) struct WorkItem {
    pub(crate) id: String,
    pub(crate) delivery_key: String,
    pub(crate) webhook_id: Option<String>,
    pub(crate) event_type: String,
    pub(crate) kind: EventKind,
    /// RFC 3339, when the delivery was accepted.
    pub(crate) received_at: String,
    /// The event's JSON, read once; an error for a damaged journal row.
    pub(crate) json: Result<EventView, UnreadableEvent>,
    /// What enrichment fetches and names for it, from its ids.
    pub(crate) plan: Result<Plan, MissingId>,
    /// Where it stands with its sinks before this attempt: failed attempts, the sinks that
    /// took it, the failed attempts per sink.
    pub(crate) progress: SinkProgress,
}

impl WorkItem {
    /// Reads `event` once. `with_tree`: keep the whole event, for route filters.
    pub(crate) fn new(event: JournaledEvent, with_tree: bool) -> WorkItem {
        let JournaledEvent {
            id,
            delivery_key,
            index: _,
            webhook_id,
            event_type,
            received_at,
            request_id: _,
            raw,
            attempts,
            sinks_done,
            sink_attempts,
        } = event;
        let kind = EventKind::parse(&event_type);
        let json = EventView::read(raw, with_tree);
        let ids = json.as_ref().map_or(&EventIds::NONE, EventView::ids);
        let plan = crate::enrich::plan(&kind, ids);
        WorkItem {
            id,
            delivery_key,
            webhook_id,
            event_type,
            kind,
            received_at,
            json,
            plan,
            progress: SinkProgress {
                attempts,
                last_error: String::new(),
                sinks_done,
                sink_attempts,
                sinks_failed: Vec::new(),
            },
        }
    }

    /// The event's ids (none when it could not be read).
    pub(crate) fn ids(&self) -> &EventIds {
        self.json.as_ref().map_or(&EventIds::NONE, EventView::ids)
    }

    /// The whole event, for route filters: `None` when it could not be read (or filters do not
    /// read it).
    pub(crate) fn tree(&self) -> Option<&serde_json::Value> {
        self.json.as_ref().ok().and_then(EventView::tree)
    }

    /// What the event is about, for its delivery's order (`None`: unknown).
    pub(crate) fn subject(&self) -> Option<Subject> {
        self.plan
            .as_ref()
            .ok()
            .and_then(|plan| plan.subject.clone())
    }

    /// The fields of its sink line before `event`.
    pub(crate) fn head(&self) -> LineHead<'_> {
        LineHead {
            id: &self.id,
            event_type: &self.event_type,
            webhook_id: self.webhook_id.as_deref(),
            delivery_key: &self.delivery_key,
            received_at: &self.received_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journaled(raw: &str) -> JournaledEvent {
        JournaledEvent {
            id: "k:0".to_string(),
            delivery_key: "k".to_string(),
            index: 0,
            webhook_id: None,
            event_type: "record.updated".to_string(),
            received_at: "2026-12-07T00:00:00Z".to_string(),
            request_id: None,
            raw: raw.to_string(),
            attempts: 2,
            sinks_done: vec!["file".to_string()],
            sink_attempts: Default::default(),
        }
    }

    #[test]
    fn an_item_is_planned_from_the_ids_read_once_and_keeps_the_event_text() {
        let raw = r#"{"event_type":"record.updated","id":{"object_id":"o","record_id":"r","attribute_id":"a"}}"#;
        let item = WorkItem::new(journaled(raw), false);
        assert_eq!(item.kind, EventKind::RecordUpdated);
        assert_eq!(
            item.subject(),
            Some(Subject::Record {
                object_id: "o".into(),
                record_id: "r".into()
            })
        );
        assert_eq!(
            item.plan.as_ref().ok().and_then(Plan::attribute_id),
            Some("a")
        );
        assert_eq!(item.json.as_ref().map(EventView::raw).ok(), Some(raw));
        assert!(item.tree().is_none());
        assert!(WorkItem::new(journaled(raw), true).tree().is_some());
        assert_eq!(item.progress.attempts, 2);
        assert_eq!(item.progress.sinks_done, ["file"]);
    }

    #[test]
    fn a_damaged_row_is_an_item_without_ids_whose_json_says_why() {
        let item = WorkItem::new(journaled(r#"{"event_type":"record.upd"#), true);
        let Err(unreadable) = &item.json else {
            panic!("not JSON");
        };
        assert!(unreadable
            .to_string()
            .starts_with("stored event is not valid JSON: "));
        assert_eq!(item.ids(), &EventIds::NONE);
        assert_eq!(item.plan, Err(MissingId("object_id")));
        assert!(item.tree().is_none());
    }
}
