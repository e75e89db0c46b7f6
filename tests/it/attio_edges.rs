//! Attio's edge cases in the running daemon, against the fake Attio on 127.0.0.1:0 and real
//! jsonl sinks: a deleted list still reaches the routes that select it by slug.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_attio::{FakeAttio, WORKSPACE_ID};
use crate::helpers::{read_jsonl, wait_for_jsonl, TestApp};

const WAIT: Duration = Duration::from_secs(15);
const PIPELINE: &str = "33ebdbe9-e529-47c9-b894-0ba25e9c15c0";
const ACTOR: &str = "50cf242c-7fa3-4cad-87d0-75b1af71c57b";

fn delivery(events: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553",
        "events": events
    }))
    .unwrap()
}

fn list_event(event_type: &str, list_id: &str) -> Value {
    json!({
        "event_type": event_type,
        "id": {"workspace_id": WORKSPACE_ID, "list_id": list_id},
        "actor": {"type": "workspace-member", "id": ACTOR}
    })
}

/// A jsonl sink `name` at `path`, and a route taking `events` of the list `sales_pipeline`
/// (by slug) to it.
fn list_route(name: &str, path: &Path, events: &str) -> String {
    format!(
        "[sinks.{name}]\nkind = \"jsonl\"\npath = {:?}\n\
         [[routes]]\nname = \"pipeline\"\nevents = {events}\nlist = \"sales_pipeline\"\nsinks = [\"{name}\"]\n",
        path.display().to_string()
    )
}

async fn wait_for_request(fake: &FakeAttio, path: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !fake.seen().iter().any(|s| s.path == path) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never asked for {path}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_deleted_list_reaches_the_route_that_names_it_by_slug_after_its_cache_entry_expired() {
    let fake = FakeAttio::start().await;
    fake.set_slug(PIPELINE, "sales_pipeline");
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("pipeline.jsonl");
    let app = TestApp::builder()
        .toml(&fake.attio_toml(""))
        .toml("[enrichment]\nschema_ttl = \"50ms\"")
        .routes(&list_route("pipeline", &sink, "[\"list.*\"]"))
        .spawn()
        .await;
    let updated = delivery(vec![list_event("list.updated", PIPELINE)]);
    assert_eq!(
        app.post_signed(&updated, Some("updated")).await.status(),
        200
    );
    let lines = wait_for_jsonl(&sink, 1, WAIT).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["list"], "sales_pipeline");

    // The cached slug expires; then the list is deleted in Attio, which answers 404 for it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.remove(&format!("/v2/lists/{PIPELINE}"));
    let deleted = delivery(vec![list_event("list.deleted", PIPELINE)]);
    assert_eq!(
        app.post_signed(&deleted, Some("deleted")).await.status(),
        200
    );
    let lines = wait_for_jsonl(&sink, 2, WAIT).await;
    assert_eq!(lines.len(), 2, "list.deleted was not routed: {lines:?}");
    assert_eq!(lines[1]["event_type"], "list.deleted");
    assert_eq!(lines[1]["enrichment"], "not_found");
    assert_eq!(lines[1]["list"], "sales_pipeline");
}

#[tokio::test]
async fn a_list_deleted_before_any_event_named_it_is_known_from_the_lists_read_at_start() {
    let fake = FakeAttio::start().await;
    fake.set_lists(&[(PIPELINE, "sales_pipeline")]);
    // Deleted already: only the listing read at start still knows it.
    fake.remove(&format!("/v2/lists/{PIPELINE}"));
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("pipeline.jsonl");
    let app = TestApp::builder()
        .toml(&fake.attio_toml(""))
        .routes(&list_route("pipeline", &sink, "[\"list.deleted\"]"))
        .spawn()
        .await;
    wait_for_request(&fake, "/v2/lists").await;
    let deleted = delivery(vec![list_event("list.deleted", PIPELINE)]);
    assert_eq!(app.post_signed(&deleted, Some("gone")).await.status(), 200);
    let lines = wait_for_jsonl(&sink, 1, WAIT).await;
    assert_eq!(lines.len(), 1, "list.deleted was not routed");
    assert_eq!(lines[0]["list"], "sales_pipeline");
    assert_eq!(lines[0]["enrichment"], "not_found");
    assert!(read_jsonl(&sink).len() == 1);
}

const DEALS: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";

fn record_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A `record.updated` of record `record` naming the attribute number `attribute`.
fn record_update(record: usize, attribute: usize) -> Value {
    json!({
        "event_type": "record.updated",
        "id": {
            "workspace_id": WORKSPACE_ID,
            "object_id": DEALS,
            "record_id": record_id(record),
            "attribute_id": format!("00000000-0000-4000-9000-{attribute:012}")
        },
        "actor": {"type": "workspace-member", "id": ACTOR}
    })
}

/// The indexes in the delivery `key` of the lines about `record`, in the order the sink got them.
fn indexes_of(lines: &[Value], key: &str, record: usize) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["event"]["id"]["record_id"] == record_id(record).as_str())
        .filter_map(|l| {
            l["id"]
                .as_str()?
                .strip_prefix(&format!("{key}:"))?
                .parse()
                .ok()
        })
        .collect()
}

/// Ten events about records 1 and 2, interleaved; each record's must arrive in listed order.
async fn a_delivery_of_ten_keeps_each_records_order(app: &TestApp) {
    let events: Vec<Value> = (0..10).map(|n| record_update(1 + n % 2, n)).collect();
    for round in 0..3 {
        let key = format!("ten-{round}");
        let response = app.post_signed(&delivery(events.clone()), Some(&key)).await;
        assert_eq!(response.status(), 200);
        let lines = app.wait_for_lines(10 * (round + 1), WAIT).await;
        assert_eq!(lines.len(), 10 * (round + 1));
        assert_eq!(indexes_of(&lines, &key, 1), vec![0, 2, 4, 6, 8], "{key}");
        assert_eq!(indexes_of(&lines, &key, 2), vec![1, 3, 5, 7, 9], "{key}");
    }
}

// Several runtime threads, as the daemon has: a task spawned last may run first there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_one_record_in_a_delivery_reach_the_sink_in_listed_order() {
    let app = TestApp::spawn().await;
    a_delivery_of_ten_keeps_each_records_order(&app).await;
}

// Several runtime threads, as the daemon has: a task spawned last may run first there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_one_record_in_a_delivery_keep_their_order_through_enrichment() {
    let fake = FakeAttio::start().await;
    // Each name look-up of its own attribute: answers come back in any order.
    fake.set_delay(Duration::from_millis(20));
    let app = TestApp::builder().toml(&fake.attio_toml("")).spawn().await;
    a_delivery_of_ten_keeps_each_records_order(&app).await;
}

const STAGE: &str = "41252299-f8c7-4b5e-99c9-4ff8321d2f96";
const WEIGHTED: &str = "6f7b1c9e-2a55-4d43-9d0e-3f5b2b1a0c11";

/// A `record.updated` of record 7 naming `attribute`, by `actor`.
fn stage_change(attribute: &str, actor: Value) -> Vec<u8> {
    delivery(vec![json!({
        "event_type": "record.updated",
        "id": {
            "workspace_id": WORKSPACE_ID,
            "object_id": DEALS,
            "record_id": record_id(7),
            "attribute_id": attribute
        },
        "actor": actor
    })])
}

#[tokio::test]
async fn a_stage_change_and_its_formula_recompute_a_second_later_reach_a_settling_route_as_one_line(
) {
    let fake = FakeAttio::start().await;
    fake.set_slug(DEALS, "deals");
    fake.set_slug(STAGE, "stage");
    fake.set_slug(WEIGHTED, "weighted_value");
    let dir = tempfile::tempdir().unwrap();
    let settled = dir.path().join("settled.jsonl");
    let people = dir.path().join("people.jsonl");
    let app = TestApp::builder()
        .toml(&fake.attio_toml(""))
        .routes(&format!(
            "[sinks.settled]\nkind = \"jsonl\"\npath = {:?}\n\
             [sinks.people]\nkind = \"jsonl\"\npath = {:?}\n\
             [[routes]]\nname = \"one line per edit\"\nevents = [\"record.updated\"]\n\
             object = \"deals\"\nsettle = \"2500ms\"\nsinks = [\"settled\"]\n\
             [[routes]]\nname = \"edits by people\"\nevents = [\"record.updated\"]\nsinks = [\"people\"]\n\
             filter = {{ \"$and\" = [ {{ field = \"actor.type\", operator = \"not_equals\", value = \"system\" }} ] }}\n",
            settled.display().to_string(),
            people.display().to_string()
        ))
        .spawn()
        .await;
    // The member moves the deal's stage; about a second later Attio recomputes a formula
    // attribute and sends a second record.updated from the system actor.
    let member = json!({"type": "workspace-member", "id": ACTOR});
    let edit = stage_change(STAGE, member);
    assert_eq!(app.post_signed(&edit, Some("edit")).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let formula = stage_change(WEIGHTED, json!({"type": "system", "id": null}));
    let second_sent = std::time::Instant::now();
    assert_eq!(
        app.post_signed(&formula, Some("formula")).await.status(),
        200
    );

    let lines = wait_for_jsonl(&settled, 1, WAIT).await;
    // Give a wrongly separate second line time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = if lines.is_empty() {
        lines
    } else {
        read_jsonl(&settled)
    };
    assert_eq!(lines.len(), 1, "one line for the edit: {lines:?}");
    let line = &lines[0];
    assert_eq!(
        line["changed_attributes"],
        json!(["stage", "weighted_value"])
    );
    assert_eq!(line["collapsed_event_ids"], json!(["edit:0", "formula:0"]));
    assert_eq!(line["enrichment"], "ok");
    let fetches: Vec<_> = fake.seen_under(&format!("/v2/objects/{DEALS}/records/"));
    assert_eq!(fetches.len(), 1, "one fetch for both updates");
    assert!(
        fetches[0].instant >= second_sent,
        "the record was read after the formula's update arrived"
    );

    // The other recipe: a filter on actor.type keeps only the member's own update.
    let by_people = read_jsonl(&people);
    assert_eq!(by_people.len(), 1, "{by_people:?}");
    assert_eq!(by_people[0]["id"], "edit:0");
}
