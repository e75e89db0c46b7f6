//! Unit tests of `crate::cli::webhooks`.

use super::*;
use crate::cli::templates::{Fixed, FixedIds, Template};
use crate::enrich::{plan, EventIds};

fn args(events: &[&str]) -> SubscriptionArgs {
    SubscriptionArgs {
        events: events.iter().map(|e| e.to_string()).collect(),
        ..SubscriptionArgs::default()
    }
}

fn error_of(result: Result<SubscriptionPlan, WebhooksError>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn near_misses_get_a_suggestion_and_invented_types_are_named() {
    let error = error_of(SubscriptionPlan::new(&args(&["record.update"])));
    assert!(error.contains("did you mean \"record.updated\""), "{error}");
    let error = error_of(SubscriptionPlan::new(&args(&["workspace-member.updated"])));
    assert!(
        error.contains("Attio has no \"workspace-member.updated\" event"),
        "{error}"
    );
    let error = error_of(SubscriptionPlan::new(&args(&[
        "activity-attribute.updated",
    ])));
    assert!(error.contains("cannot subscribe"), "{error}");
    let error = error_of(SubscriptionPlan::new(&args(&["spaceship.*"])));
    assert!(error.contains("no subscribable"), "{error}");
}

#[test]
fn patterns_expand_to_the_subscribable_types_that_carry_the_flags() {
    let plan = SubscriptionPlan::new(&args(&["record.*", "record.updated"])).unwrap();
    assert_eq!(
        plan.event_types,
        vec![
            "record.created",
            "record.merged",
            "record.updated",
            "record.deleted"
        ]
    );
    let plan = SubscriptionPlan::new(&SubscriptionArgs {
        object: Some("deals".into()),
        attribute: Some("stage".into()),
        ..args(&["record.*", "object-attribute.*"])
    })
    .unwrap();
    assert_eq!(
        plan.event_types,
        vec![
            "record.updated",
            "object-attribute.created",
            "object-attribute.updated"
        ]
    );
    let plan = SubscriptionPlan::new(&SubscriptionArgs {
        list: Some("sales_pipeline".into()),
        attribute: Some("stage".into()),
        ..args(&["list-entry.*", "list-attribute.*"])
    })
    .unwrap();
    assert_eq!(
        plan.event_types,
        vec![
            "list-entry.updated",
            "list-attribute.created",
            "list-attribute.updated"
        ]
    );
    let error = error_of(SubscriptionPlan::new(&SubscriptionArgs {
        attribute: Some("41252299-f8c7-4b5e-99c9-4ff8321d2f96".into()),
        ..args(&["record.created"])
    }));
    assert!(
        error.contains("record.created events carry no attribute")
            && error.contains("record.updated"),
        "{error}"
    );
    let error = error_of(SubscriptionPlan::new(&SubscriptionArgs {
        object: Some("deals".into()),
        ..args(&["task.*"])
    }));
    assert!(error.contains("--object"), "{error}");
}

#[test]
fn an_attribute_slug_of_record_events_needs_the_object_to_be_resolved_in() {
    let error = error_of(SubscriptionPlan::new(&SubscriptionArgs {
        attribute: Some("stage".into()),
        ..args(&["record.updated"])
    }));
    assert!(error.contains("add --object"), "{error}");
}

#[test]
fn an_attribute_of_list_entry_events_needs_the_list_even_beside_record_events() {
    let stage_uuid = "9e0f6a2b-8c1d-4e3f-a5b7-c9d1e3f5a7b9";
    for (object, attribute, events) in [
        (Some("people"), "company", &["list-entry.updated"][..]),
        (
            Some("people"),
            "company",
            &["record.updated", "list-entry.updated"][..],
        ),
        (Some("people"), "company", &["record.*", "list-entry.*"][..]),
        (None, stage_uuid, &["list-entry.updated"][..]),
        (None, "stage", &["list-entry.*"][..]),
    ] {
        let error = error_of(SubscriptionPlan::new(&SubscriptionArgs {
            object: object.map(str::to_string),
            attribute: Some(attribute.into()),
            ..args(events)
        }));
        assert!(
            error.contains("add --list") && error.contains("list-entry.updated"),
            "{events:?}: {error}"
        );
    }
}

#[test]
fn filters_combine_with_resolved_ids_per_event_type() {
    let plan = SubscriptionPlan::new(&SubscriptionArgs {
        object: Some("deals".into()),
        filter: Some(
            r#"{"$and": [{"field": "actor.type", "operator": "not_equals", "value": "system"}]}"#
                .into(),
        ),
        ..args(&["record.updated", "note.created"])
    })
    .unwrap();
    let resolved = [Resolved {
        parent: None,
        dimension: Dimension::Object,
        given: "deals".into(),
        id: "97052eb9-e65e-443f-a297-f2d9a4a7f795".into(),
    }];
    let subscriptions = plan.subscriptions(&resolved).unwrap();
    assert_eq!(
        serde_json::to_value(&subscriptions).unwrap(),
        json!([
            {"event_type": "record.updated", "filter": {"$and": [
                {"field": "actor.type", "operator": "not_equals", "value": "system"},
                {"field": "id.object_id", "operator": "equals", "value": "97052eb9-e65e-443f-a297-f2d9a4a7f795"}
            ]}},
            {"event_type": "note.created", "filter": {"$and": [
                {"field": "actor.type", "operator": "not_equals", "value": "system"},
                {"field": "parent_object_id", "operator": "equals", "value": "97052eb9-e65e-443f-a297-f2d9a4a7f795"}
            ]}}
        ])
    );
    let plain = SubscriptionPlan::new(&args(&["task.created"])).unwrap();
    assert_eq!(
        serde_json::to_value(plain.subscriptions(&[]).unwrap()).unwrap(),
        json!([{"event_type": "task.created", "filter": null}])
    );
}

#[test]
fn bad_filters_are_refused_before_anything_is_sent() {
    for (filter, expected) in [
        ("{", "not valid JSON"),
        (
            r#"{"$and": [{"field": "id.object_id", "operator": "$eq", "value": "x"}]}"#,
            "unknown operator",
        ),
        (
            r#"{"$and": [{"field": "id.object_id", "operator": "equals", "value": "deals"}]}"#,
            "UUIDs",
        ),
        (
            r#"{"$and": [{"field": "actor.type", "operator": "equals", "value": 3}]}"#,
            "strings",
        ),
    ] {
        let error = error_of(SubscriptionPlan::new(&SubscriptionArgs {
            filter: Some(filter.into()),
            ..args(&["record.updated"])
        }));
        assert!(error.contains(expected), "{filter}: {error}");
    }
    let error = error_of(SubscriptionPlan::new(&SubscriptionArgs {
        object: Some("deals".into()),
        filter: Some(
            r#"{"$or": [{"field": "actor.type", "operator": "equals", "value": "system"}]}"#.into(),
        ),
        ..args(&["record.updated"])
    }));
    assert!(error.contains("do not nest"), "{error}");
}

#[test]
fn only_https_targets_are_accepted() {
    assert!(check_target_url("https://hooks.example.com/webhooks/attio").is_ok());
    for bad in [
        "http://hooks.example.com/x",
        "ftp://x",
        "hooks.example.com",
        "",
    ] {
        assert!(check_target_url(bad).is_err(), "{bad}");
    }
    let error = check_target_url("http://h.example.com/")
        .unwrap_err()
        .to_string();
    assert!(error.contains("https://"), "{error}");
}

#[test]
fn unknown_slugs_list_the_valid_ones_and_suggest_the_closest() {
    let items = [(Some("deals"), "d"), (Some("people"), "p"), (None, "x")];
    assert_eq!(
        find_slug("deals", items.iter().copied(), "object", "this workspace").unwrap(),
        "d"
    );
    let error = find_slug("deal", items.iter().copied(), "object", "this workspace")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no object \"deal\"")
            && error.contains("did you mean \"deals\"")
            && error.contains("deals, people"),
        "{error}"
    );
}

/// The filter fields the CLI writes and the ids enrichment (and so routing) reads are the
/// same keys of the same events.
#[test]
fn filter_fields_name_the_ids_enrichment_reads() {
    for event_type in SUBSCRIBABLE_EVENT_TYPES {
        let mut fixed = FixedIds::for_one_run();
        fixed.set(
            "list_id",
            Fixed::Value("33ebdbe9-e529-47c9-b894-0ba25e9c15c0".into()),
        );
        let body = Template::bundled(event_type).unwrap().render(&fixed);
        let delivery: Value = serde_json::from_slice(&body).unwrap();
        let event = &delivery["events"][0];
        let kind = EventKind::parse(event_type);
        let planned = plan(&kind, &EventIds::parse(&event.to_string())).unwrap();
        let attribute_id = match planned.attribute {
            Some(crate::attio::SchemaKey::Attribute { attribute_id, .. }) => Some(attribute_id),
            _ => None,
        };
        for (dimension, expected) in [
            (Dimension::Object, planned.object_id),
            (Dimension::List, planned.list_id),
            (Dimension::Attribute, attribute_id),
        ] {
            let found = kind.dimension_field(dimension).and_then(|field| {
                field
                    .split('.')
                    .try_fold(event, |node, key| node.get(key))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            assert_eq!(found, expected, "{event_type} {}", dimension.key());
        }
    }
}
