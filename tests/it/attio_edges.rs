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
