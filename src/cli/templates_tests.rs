//! Unit tests of `crate::cli::templates`.

use super::*;
use crate::event::{parse_delivery, EventKind};
use serde_json::Value;

/// The `id` keys (besides `workspace_id`) and the extra keys of each type, from
/// docs/attio.md §2.
fn expected_shape(event_type: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match EventKind::parse(event_type) {
        EventKind::RecordCreated | EventKind::RecordDeleted => (&["object_id", "record_id"], &[]),
        EventKind::RecordUpdated => (&["object_id", "record_id", "attribute_id"], &[]),
        EventKind::RecordMerged => (
            &["object_id", "record_id"],
            &["duplicate_object_id", "duplicate_record_id"],
        ),
        EventKind::ListEntryCreated | EventKind::ListEntryDeleted => (
            &["list_id", "entry_id"],
            &["parent_object_id", "parent_record_id"],
        ),
        EventKind::ListEntryUpdated => (
            &["list_id", "entry_id", "attribute_id"],
            &["parent_object_id", "parent_record_id"],
        ),
        EventKind::NoteCreated
        | EventKind::NoteUpdated
        | EventKind::NoteDeleted
        | EventKind::NoteContentUpdated => {
            (&["note_id"], &["parent_object_id", "parent_record_id"])
        }
        EventKind::TaskCreated | EventKind::TaskUpdated | EventKind::TaskDeleted => {
            (&["task_id"], &[])
        }
        EventKind::CommentCreated
        | EventKind::CommentResolved
        | EventKind::CommentUnresolved
        | EventKind::CommentDeleted => (
            &["comment_id"],
            &["thread_id", "object_id", "record_id", "list_id", "entry_id"],
        ),
        EventKind::ListCreated | EventKind::ListUpdated | EventKind::ListDeleted => {
            (&["list_id"], &[])
        }
        EventKind::ListAttributeCreated | EventKind::ListAttributeUpdated => {
            (&["list_id", "attribute_id"], &[])
        }
        EventKind::ObjectAttributeCreated | EventKind::ObjectAttributeUpdated => {
            (&["object_id", "attribute_id"], &[])
        }
        EventKind::WorkspaceMemberCreated => (&["workspace_member_id"], &[]),
        EventKind::CallRecordingCreated => (&["meeting_id", "call_recording_id"], &[]),
        EventKind::ActivityAttributeCreated | EventKind::ActivityAttributeUpdated => {
            (&["activity_id", "attribute_id"], &[])
        }
        EventKind::Unknown(other) => panic!("template for unknown type {other}"),
    }
}

fn is_uuid(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

#[test]
fn there_is_a_template_for_every_subscribable_event_type() {
    for event_type in SUBSCRIBABLE_EVENT_TYPES {
        assert!(
            TEMPLATES.iter().any(|(name, _)| *name == event_type),
            "{event_type}"
        );
    }
    assert!(TEMPLATES
        .iter()
        .any(|(name, _)| *name == "activity-attribute.created"));
}

#[test]
fn every_template_parses_as_its_event_type_with_the_right_id_keys() {
    for (event_type, _) in TEMPLATES {
        let template = Template::bundled(event_type).unwrap();
        let body = template.render(&FixedIds::for_one_run());
        let delivery = parse_delivery(&body).unwrap();
        assert_eq!(delivery.events.len(), 1, "{event_type}");
        assert_eq!(delivery.events[0].event_type, event_type);
        assert!(EventKind::parse(event_type).is_known(), "{event_type}");
        assert!(delivery
            .webhook_id
            .as_deref()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()));

        let event: Value = serde_json::from_str(&delivery.events[0].raw).unwrap();
        let (id_keys, extra_keys) = expected_shape(event_type);
        let id = event["id"].as_object().unwrap();
        let mut expected_id: Vec<&str> = vec!["workspace_id"];
        expected_id.extend(id_keys);
        expected_id.sort_unstable();
        let actual_id: Vec<&str> = id.keys().map(String::as_str).collect();
        assert_eq!(actual_id, expected_id, "{event_type}: id keys");
        assert!(id.values().all(is_uuid), "{event_type}: {id:?}");

        let mut expected_top = vec!["event_type", "id"];
        expected_top.extend(extra_keys);
        expected_top.push("actor");
        expected_top.sort_unstable();
        let actual_top: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(actual_top, expected_top, "{event_type}: keys");
        for key in extra_keys {
            let value = &event[key];
            let nullable = matches!(*key, "list_id" | "entry_id");
            assert!(
                is_uuid(value) || (nullable && value.is_null()),
                "{event_type}: {key} = {value}"
            );
        }
        assert_eq!(event["actor"]["type"], "workspace-member", "{event_type}");
        assert!(is_uuid(&event["actor"]["id"]), "{event_type}");
    }
}

#[test]
fn a_name_used_twice_gets_one_value_and_each_render_gets_fresh_ids() {
    let template = Template::bundled("record.merged").unwrap();
    let first: Value = serde_json::from_slice(&template.render(&FixedIds::for_one_run())).unwrap();
    let second: Value = serde_json::from_slice(&template.render(&FixedIds::for_one_run())).unwrap();
    let event = &first["events"][0];
    assert_eq!(event["duplicate_object_id"], event["id"]["object_id"]);
    assert_ne!(event["duplicate_record_id"], event["id"]["record_id"]);
    assert_ne!(
        first["events"][0]["id"]["record_id"],
        second["events"][0]["id"]["record_id"]
    );
}

#[test]
fn fixed_values_are_used_and_escaped() {
    let mut fixed = FixedIds::for_one_run();
    fixed.set("record_id", Fixed::Value("rec\"1".to_string()));
    fixed.set("list_id", Fixed::Value("L".to_string()));
    fixed.set("actor_type", Fixed::Value("system".to_string()));
    fixed.set("actor_id", Fixed::Null);
    let body = Template::bundled("comment.created").unwrap().render(&fixed);
    let value: Value = serde_json::from_slice(&body).unwrap();
    let event = &value["events"][0];
    assert_eq!(event["record_id"], "rec\"1");
    assert_eq!(event["list_id"], "L");
    assert!(event["entry_id"].is_null());
    assert_eq!(
        event["actor"],
        serde_json::json!({"type": "system", "id": null})
    );
}

#[test]
fn keys_keep_attios_order() {
    let body = Template::bundled("list-entry.updated")
        .unwrap()
        .render(&FixedIds::for_one_run());
    let text = String::from_utf8(body).unwrap();
    let positions: Vec<usize> = [
        "\"webhook_id\"",
        "\"event_type\"",
        "\"workspace_id\"",
        "\"list_id\"",
        "\"entry_id\"",
        "\"attribute_id\"",
        "\"parent_object_id\"",
        "\"parent_record_id\"",
        "\"actor\"",
    ]
    .iter()
    .map(|key| text.find(key).unwrap())
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[test]
fn rendered_bodies_are_compact_like_attio_sends_them() {
    let body = Template::bundled("record.updated")
        .unwrap()
        .render(&FixedIds::for_one_run());
    assert!(!body.iter().any(|b| b.is_ascii_whitespace()));
}

#[test]
fn patterns_select_every_matching_type() {
    assert_eq!(event_types_for("*").unwrap().len(), 29);
    assert_eq!(
        event_types_for("record.*").unwrap(),
        vec![
            "record.created",
            "record.merged",
            "record.updated",
            "record.deleted"
        ]
    );
    assert!(event_types_for("spaceship.*").is_err());
}

#[test]
fn invented_event_types_are_refused_with_a_suggestion() {
    let error = event_types_for("workspace-member.updated")
        .unwrap_err()
        .to_string();
    assert!(error.contains("Attio has no"), "{error}");
    assert!(error.contains("workspace-member.created"), "{error}");
    let error = event_types_for("record.update").unwrap_err().to_string();
    assert!(error.contains("did you mean \"record.updated\""), "{error}");
    let error = event_types_for("activity-attribute.update")
        .unwrap_err()
        .to_string();
    assert!(error.contains("activity-attribute.updated"), "{error}");
}
