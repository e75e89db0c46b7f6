//! Enrichment in the running daemon: signed deliveries in, enriched lines out of the jsonl sink,
//! with a fake Attio API on 127.0.0.1:0 behind `[attio] base_url`.

use std::time::{Duration, Instant};

use attio_webhooks::journal::Backend;
use serde_json::{json, Value};

use crate::fake_attio::FakeAttio;
use crate::helpers::{record_updated_body, unique_prefix, TestApp};

const WAIT: Duration = Duration::from_secs(15);
const OBJECT: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
const ATTRIBUTE: &str = "41252299-f8c7-4b5e-99c9-4ff8321d2f96";

/// The record id `record_updated_body(n)` uses.
fn record_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn delivery(event: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553",
        "events": [event]
    }))
    .unwrap()
}

fn record_event(event_type: &str, n: usize) -> Vec<u8> {
    delivery(json!({
        "event_type": event_type,
        "id": {
            "workspace_id": "14beef7a-99f7-4534-a87e-70b564330a4c",
            "object_id": OBJECT,
            "record_id": record_id(n)
        },
        "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
    }))
}

/// A fake with the slugs of the test object and attribute, and a daemon pointed at it.
async fn app_with_attio(extra_attio: &str, extra_toml: &str) -> (FakeAttio, TestApp) {
    let fake = FakeAttio::start().await;
    fake.set_slug(OBJECT, "deals");
    fake.set_slug(ATTRIBUTE, "stage");
    let app = TestApp::builder()
        .toml(&fake.attio_toml(extra_attio))
        .toml(extra_toml)
        .spawn()
        .await;
    (fake, app)
}

fn record_fetches(fake: &FakeAttio) -> usize {
    fake.seen_under(&format!("/v2/objects/{OBJECT}/records/"))
        .len()
}

#[tokio::test]
async fn a_signed_record_update_arrives_with_the_record_and_its_slugs() {
    let (fake, app) = app_with_attio("", "").await;
    let response = app
        .post_signed(&record_updated_body(1), Some("enrich-1"))
        .await;
    assert_eq!(response.status(), 200);
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["enrichment"], "ok", "{line}");
    assert_eq!(line["data"]["id"]["record_id"], record_id(1).as_str());
    assert_eq!(
        line["data"]["values"]["name"][0]["value"],
        format!("Record {}", record_id(1))
    );
    assert_eq!(line["object"], "deals");
    assert_eq!(line["attribute"], "stage");
    assert_eq!(line["list"], Value::Null);
    assert_eq!(line["event"]["id"]["record_id"], record_id(1).as_str());
    assert_eq!(record_fetches(&fake), 1);
    assert_eq!(
        fake.seen_under(&format!("/v2/objects/{OBJECT}/attributes/"))
            .len(),
        1
    );
}

#[tokio::test]
async fn ten_updates_of_one_record_inside_the_window_share_one_fetch() {
    let (fake, app) = app_with_attio("", "[enrichment]\ncoalesce_window = \"1s\"").await;
    for n in 0..10 {
        let response = app
            .post_signed(&record_updated_body(7), Some(&format!("same-record-{n}")))
            .await;
        assert_eq!(response.status(), 200);
    }
    let lines = app.wait_for_lines(10, WAIT).await;
    assert_eq!(lines.len(), 10, "every event is still delivered");
    assert!(lines
        .iter()
        .all(|l| l["enrichment"] == "ok" && l["data"]["id"]["record_id"] == record_id(7).as_str()));
    assert_eq!(record_fetches(&fake), 1, "one fetch for ten events");
    // The slugs were looked up once too, not once per event.
    assert_eq!(fake.seen_under(&format!("/v2/objects/{OBJECT}")).len(), 3);
}

#[tokio::test]
async fn a_deleted_record_is_delivered_as_not_found() {
    let (fake, app) = app_with_attio("", "").await;
    fake.remove(&format!("/v2/objects/{OBJECT}/records/{}", record_id(3)));
    app.post_signed(&record_event("record.deleted", 3), Some("deleted"))
        .await;
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["enrichment"], "not_found");
    assert_eq!(lines[0]["data"], Value::Null);
    assert_eq!(lines[0]["object"], "deals", "the object still exists");
    assert_eq!(record_fetches(&fake), 1, "a 404 is not retried");
}

#[tokio::test]
async fn without_an_api_key_events_are_delivered_with_enrichment_disabled() {
    let app = TestApp::spawn().await;
    app.post_signed(&record_updated_body(1), Some("no-key"))
        .await;
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["enrichment"], "disabled");
    assert_eq!(lines[0]["data"], Value::Null);
}

#[tokio::test]
async fn events_wait_while_attio_is_down_and_flow_when_it_is_back() {
    // Two attempts would dead-letter quickly if waiting for Attio counted as attempts.
    let (fake, app) = app_with_attio(
        "retry_initial = \"20ms\"\nretry_max_delay = \"50ms\"\nretry_total = \"200ms\"\n\
         breaker_threshold = 2\nbreaker_cooldown = \"300ms\"",
        "[worker]\nmax_attempts = 2",
    )
    .await;
    fake.set_down(true);
    for n in 0..5 {
        let response = app
            .post_signed(&record_updated_body(n), Some(&format!("outage-{n}")))
            .await;
        assert_eq!(response.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        app.sink_lines().is_empty(),
        "nothing half-done was delivered"
    );
    let requests_while_down = fake.seen().len();
    assert!(
        requests_while_down < 40,
        "the breaker kept the worker from hammering Attio ({requests_while_down} requests in 2 s)"
    );
    fake.set_down(false);
    let lines = app.wait_for_lines(5, WAIT).await;
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["enrichment"] == "ok"), "{lines:?}");
    let stopped = app.stop().await;
    let journal =
        attio_webhooks::journal::SqliteJournal::open(&stopped.storage.join("journal.sqlite3"))
            .unwrap();
    assert!(journal.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_optional_route_delivers_even_when_the_fetch_fails() {
    let fake = FakeAttio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optional.jsonl");
    let routes = format!(
        "[sinks.file]\nkind = \"jsonl\"\npath = {:?}\n\
         [[routes]]\nname = \"lenient\"\nevents = [\"*\"]\nsinks = [\"file\"]\nenrich = \"optional\"\n",
        path.display().to_string()
    );
    fake.script(
        "/records/",
        403,
        &[],
        r#"{"status_code":403,"type":"auth_error","code":"forbidden","message":"missing scope record_permission:read"}"#,
    );
    let app = TestApp::builder()
        .routes(&routes)
        .toml(&fake.attio_toml(""))
        .spawn()
        .await;
    app.post_signed(&record_updated_body(1), Some("optional"))
        .await;
    let lines = crate::helpers::wait_for_jsonl(&path, 1, WAIT).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["enrichment"], "failed");
    let error = lines[0]["enrichment_error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("missing scope"),
        "{error}"
    );
}

#[tokio::test]
async fn a_route_with_enrich_false_makes_no_request() {
    let fake = FakeAttio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.jsonl");
    let routes = format!(
        "[sinks.file]\nkind = \"jsonl\"\npath = {:?}\n\
         [[routes]]\nname = \"plain\"\nevents = [\"*\"]\nsinks = [\"file\"]\nenrich = false\n",
        path.display().to_string()
    );
    let app = TestApp::builder()
        .routes(&routes)
        .toml(&fake.attio_toml(""))
        .spawn()
        .await;
    app.post_signed(&record_updated_body(1), Some("plain"))
        .await;
    let lines = crate::helpers::wait_for_jsonl(&path, 1, WAIT).await;
    assert_eq!(lines[0]["enrichment"], "skipped");
    assert!(fake.seen().is_empty());
}

#[tokio::test]
async fn a_permanent_enrichment_error_dead_letters_the_event() {
    let (fake, app) = app_with_attio("", "").await;
    fake.script(
        "/records/",
        400,
        &[],
        r#"{"status_code":400,"type":"invalid_request_error","code":"validation_type","message":"bad id"}"#,
    );
    app.post_signed(&record_updated_body(1), Some("bad")).await;
    assert_eq!(app.wait_until_drained(WAIT).await, 0);
    let stopped = app.stop().await;
    assert!(crate::helpers::read_jsonl(&stopped.sink_path).is_empty());
    let journal =
        attio_webhooks::journal::SqliteJournal::open(&stopped.storage.join("journal.sqlite3"))
            .unwrap();
    let letters = journal.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let error = letters[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("enrichment") && error.contains("bad id"),
        "{error}"
    );
    assert_eq!(letters[0].failed_sinks, vec!["file".to_string()]);
}

#[tokio::test]
async fn an_attribute_event_refreshes_the_cached_slug() {
    let (fake, app) = app_with_attio("", "").await;
    app.post_signed(&record_updated_body(1), Some("before"))
        .await;
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines[0]["attribute"], "stage");
    // The attribute is renamed in Attio, which sends object-attribute.updated.
    fake.set_slug(ATTRIBUTE, "phase");
    let renamed = delivery(json!({
        "event_type": "object-attribute.updated",
        "id": {"workspace_id": "14beef7a-99f7-4534-a87e-70b564330a4c",
               "object_id": OBJECT, "attribute_id": ATTRIBUTE},
        "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
    }));
    app.post_signed(&renamed, Some("renamed")).await;
    let lines = app.wait_for_lines(2, WAIT).await;
    let attribute_line = lines
        .iter()
        .find(|l| l["event_type"] == "object-attribute.updated")
        .unwrap();
    assert_eq!(attribute_line["data"]["api_slug"], "phase");
    assert_eq!(attribute_line["attribute"], "phase");
    assert_eq!(attribute_line["object"], "deals");
    app.post_signed(&record_updated_body(2), Some("after"))
        .await;
    let lines = app.wait_for_lines(3, WAIT).await;
    let after = lines.iter().find(|l| l["id"] == "after:0").unwrap();
    assert_eq!(
        after["attribute"], "phase",
        "the cache did not keep the old name"
    );
}

#[tokio::test]
async fn every_documented_sample_event_is_enriched() {
    let (fake, app) = app_with_attio("", "").await;
    let samples = [
        "attio_docs__list-entry.updated_delivery.json",
        "attio_docs__list-attribute.created_delivery.json",
        "attio_docs__note-content.updated_delivery.json",
        "attio_docs__workspace-member.created_event.json",
        "pipedream__record.created_event.json",
        "pipedream__note.created_event.json",
    ];
    for (n, sample) in samples.iter().enumerate() {
        let body = crate::helpers::fixture(sample);
        let response = app.post_signed(&body, Some(&format!("sample-{n}"))).await;
        assert_eq!(response.status(), 200, "{sample}");
    }
    let lines = app.wait_for_lines(samples.len(), WAIT).await;
    assert_eq!(lines.len(), samples.len());
    for line in &lines {
        assert_eq!(line["enrichment"], "ok", "{line}");
        assert!(line["data"].is_object(), "{line}");
    }
    let entry = lines
        .iter()
        .find(|l| l["event_type"] == "list-entry.updated")
        .unwrap();
    assert_eq!(entry["list"], "pipeline");
    assert_eq!(entry["object"], "deals");
    assert!(fake.seen().iter().all(|s| s.method == "GET"));
}

#[tokio::test]
async fn route_filters_can_test_the_resolved_slugs() {
    let fake = FakeAttio::start().await;
    fake.set_slug(OBJECT, "deals");
    fake.set_slug(ATTRIBUTE, "stage");
    let dir = tempfile::tempdir().unwrap();
    let deals = dir.path().join("deals.jsonl");
    let people = dir.path().join("people.jsonl");
    let routes = format!(
        "[sinks.deals]\nkind = \"jsonl\"\npath = {:?}\n[sinks.people]\nkind = \"jsonl\"\npath = {:?}\n\
         [[routes]]\nname = \"deal-stage\"\nevents = [\"record.updated\"]\nsinks = [\"deals\"]\n\
         filter = {{ \"$and\" = [ {{ field = \"object\", operator = \"equals\", value = \"deals\" }}, \
                                 {{ field = \"attribute\", operator = \"equals\", value = \"stage\" }} ] }}\n\
         [[routes]]\nname = \"people\"\nevents = [\"record.*\"]\nsinks = [\"people\"]\n\
         filter = {{ \"$and\" = [ {{ field = \"object\", operator = \"equals\", value = \"people\" }} ] }}\n",
        deals.display().to_string(),
        people.display().to_string()
    );
    let app = TestApp::builder()
        .routes(&routes)
        .toml(&fake.attio_toml(""))
        .spawn()
        .await;
    app.post_signed(&record_updated_body(1), Some("filtered"))
        .await;
    let lines = crate::helpers::wait_for_jsonl(&deals, 1, WAIT).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["object"], "deals");
    // Give the other route every chance to (wrongly) match.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(crate::helpers::read_jsonl(&people).is_empty());
}

/// A record.updated delivery for record `n` naming the changed attribute `attribute_id`.
fn attribute_update(n: usize, attribute_id: &str) -> Vec<u8> {
    delivery(json!({
        "event_type": "record.updated",
        "id": {
            "workspace_id": "14beef7a-99f7-4534-a87e-70b564330a4c",
            "object_id": OBJECT,
            "record_id": record_id(n),
            "attribute_id": attribute_id
        },
        "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
    }))
}

#[tokio::test]
async fn updates_that_shared_a_fetch_reach_a_collapsing_route_as_one_line() {
    const AMOUNT: &str = "6f7b1c9e-2a55-4d43-9d0e-3f5b2b1a0c11";
    const OWNER: &str = "0c0e6a44-5b7d-4f0b-8e63-96e1c1f0d2a7";
    let fake = FakeAttio::start().await;
    fake.set_slug(OBJECT, "deals");
    fake.set_slug(ATTRIBUTE, "stage");
    fake.set_slug(AMOUNT, "amount");
    fake.set_slug(OWNER, "owner");
    let dir = tempfile::tempdir().unwrap();
    let collapsed = dir.path().join("collapsed.jsonl");
    let each = dir.path().join("each.jsonl");
    let app = TestApp::builder()
        .toml(&fake.attio_toml(""))
        .toml("[enrichment]\ncoalesce_window = \"1s\"")
        .routes(&format!(
            "[sinks.collapsed]\nkind = \"jsonl\"\npath = {:?}\n\
             [sinks.each]\nkind = \"jsonl\"\npath = {:?}\n\
             [[routes]]\nname = \"changes\"\nevents = [\"record.updated\"]\nsinks = [\"collapsed\"]\ncollapse = true\n\
             [[routes]]\nname = \"audit\"\nevents = [\"*\"]\nsinks = [\"each\"]\n",
            collapsed.display().to_string(),
            each.display().to_string()
        ))
        .spawn()
        .await;
    // Three attributes of record 7 change together (stage twice), and record 8 once.
    let bodies = [
        ("c-1", attribute_update(7, ATTRIBUTE)),
        ("c-2", attribute_update(7, AMOUNT)),
        ("c-3", attribute_update(7, OWNER)),
        ("c-4", attribute_update(7, ATTRIBUTE)),
        ("c-5", attribute_update(8, AMOUNT)),
    ];
    for (key, body) in &bodies {
        assert_eq!(app.post_signed(body, Some(key)).await.status(), 200);
    }
    let every = crate::helpers::wait_for_jsonl(&each, 5, WAIT).await;
    assert_eq!(every.len(), 5, "a route without collapse gets every event");
    crate::helpers::wait_for_jsonl(&collapsed, 2, WAIT).await;
    // Give a wrongly separate line time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = crate::helpers::read_jsonl(&collapsed);
    assert_eq!(lines.len(), 2, "one line per record: {lines:?}");
    let seven = lines
        .iter()
        .find(|l| l["data"]["id"]["record_id"] == record_id(7).as_str())
        .expect("a line for record 7");
    let mut attributes: Vec<&str> = seven["changed_attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    attributes.sort();
    assert_eq!(attributes, ["amount", "owner", "stage"], "each slug once");
    let mut ids: Vec<&str> = seven["collapsed_event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["c-1:0", "c-2:0", "c-3:0", "c-4:0"]);
    assert!(ids.contains(&seven["id"].as_str().unwrap()));
    assert_eq!(seven["enrichment"], "ok");
    let eight = lines
        .iter()
        .find(|l| l["data"]["id"]["record_id"] == record_id(8).as_str())
        .expect("a line for record 8");
    assert_eq!(eight["changed_attributes"], json!(["amount"]));
    assert_eq!(eight["collapsed_event_ids"], json!(["c-5:0"]));
    assert_eq!(record_fetches(&fake), 2, "one fetch per record");
    // Every event of the group is done, followers included: the backlog drains to zero.
    assert_eq!(app.wait_until_drained(WAIT).await, 0);
}

#[tokio::test]
async fn three_replicas_sharing_redis_stay_within_attios_read_rate_together() {
    let fake = FakeAttio::start().await;
    fake.set_slug(OBJECT, "deals");
    fake.set_slug(ATTRIBUTE, "stage");
    let rate = 10;
    let prefix = unique_prefix();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            TestApp::builder()
                .redis_with_prefix(&prefix)
                .toml(&fake.attio_toml(&format!("read_rate = {rate}")))
                .spawn()
                .await,
        );
    }
    // Distinct records, so that no fetch is shared: each event costs one read at least.
    let per_replica = 12;
    for (index, replica) in replicas.iter().enumerate() {
        for n in 0..per_replica {
            let id = index * per_replica + n;
            let response = replica
                .post_signed(&record_updated_body(id), Some(&format!("{prefix}-{id}")))
                .await;
            assert_eq!(response.status(), 200);
        }
    }
    for replica in &replicas {
        let lines = replica
            .wait_for_lines(per_replica, Duration::from_secs(60))
            .await;
        assert_eq!(lines.len(), per_replica);
        assert!(
            lines.iter().all(|line| line["enrichment"] == "ok"),
            "{lines:?}"
        );
    }
    // Every one-second window at Attio, whichever replica sent the requests in it.
    let mut arrivals: Vec<Instant> = fake.seen().iter().map(|seen| seen.instant).collect();
    arrivals.sort();
    assert!(arrivals.len() >= 3 * per_replica);
    let busiest_window = (0..arrivals.len())
        .map(|first| {
            arrivals[first..]
                .iter()
                .take_while(|at| at.duration_since(arrivals[first]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest_window <= rate as usize,
        "{busiest_window} requests in one second from three replicas, limit {rate}"
    );
}
