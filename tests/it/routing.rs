//! Route keys `object`, `list` and `attribute` in the running daemon: slugs resolved through the
//! fake Attio (by enrichment's schema cache), events sent to the sinks whose routes name them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_attio::FakeAttio;
use crate::helpers::{wait_for_jsonl, TestApp};

const WAIT: Duration = Duration::from_secs(15);
const WORKSPACE: &str = "14beef7a-99f7-4534-a87e-70b564330a4c";
const DEALS: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
const PEOPLE: &str = "6a3d5e81-0de0-4e96-a535-957b28ba8211";
const DEAL_STAGE: &str = "41252299-f8c7-4b5e-99c9-4ff8321d2f96";
const DEAL_AMOUNT: &str = "5bd3b1a4-5a1d-4a43-8f2e-3b3c0e7d9a10";
const PEOPLE_STAGE: &str = "7a1c3f52-2f4e-4b8e-9d61-0c6f1b2e8a33";
const PIPELINE: &str = "33ebdbe9-e529-47c9-b894-0ba25e9c15c0";
const PIPELINE_STAGE: &str = "9e0f6a2b-8c1d-4e3f-a5b7-c9d1e3f5a7b9";

fn delivery(event: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553",
        "events": [event]
    }))
    .unwrap()
}

fn actor() -> Value {
    json!({"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"})
}

fn record_event(event_type: &str, object: &str, attribute: Option<&str>, n: u32) -> Vec<u8> {
    let mut id = json!({
        "workspace_id": WORKSPACE,
        "object_id": object,
        "record_id": format!("00000000-0000-4000-8000-{n:012}")
    });
    if let Some(attribute) = attribute {
        id["attribute_id"] = json!(attribute);
    }
    delivery(json!({"event_type": event_type, "id": id, "actor": actor()}))
}

/// A fake whose workspace has `deals` (with `stage`, `amount`), `people` (with its own
/// `stage`) and the list `sales_pipeline` (with a `stage` of its own).
async fn fake_workspace() -> FakeAttio {
    let fake = FakeAttio::start().await;
    for (id, slug) in [
        (DEALS, "deals"),
        (PEOPLE, "people"),
        (DEAL_STAGE, "stage"),
        (DEAL_AMOUNT, "amount"),
        (PEOPLE_STAGE, "stage"),
        (PIPELINE, "sales_pipeline"),
        (PIPELINE_STAGE, "stage"),
    ] {
        fake.set_slug(id, slug);
    }
    fake
}

fn sinks_and_routes(dir: &Path, with_rest: bool) -> (String, PathBuf, PathBuf) {
    let deal_stage = dir.join("deal_stage.jsonl");
    let rest = dir.join("rest.jsonl");
    let mut toml = format!(
        "[sinks.deal_stage]\nkind = \"jsonl\"\npath = {:?}\n\
         [sinks.rest]\nkind = \"jsonl\"\npath = {:?}\n\
         [[routes]]\nname = \"deal-stage\"\nevents = [\"*\"]\nsinks = [\"deal_stage\"]\n\
         object = \"deals\"\nattribute = [\"stage\"]\n",
        deal_stage.display().to_string(),
        rest.display().to_string(),
    );
    if with_rest {
        // "Everything else": Attio's filter shape over the names enrichment resolved.
        toml.push_str(
            "[[routes]]\nname = \"rest\"\nevents = [\"*\"]\nsinks = [\"rest\"]\n\
             filter = { \"$or\" = [ { field = \"object\", operator = \"not_equals\", value = \"deals\" },\n\
                                    { field = \"attribute\", operator = \"not_equals\", value = \"stage\" } ] }\n",
        );
    }
    (toml, deal_stage, rest)
}

fn ids(lines: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = lines
        .iter()
        .map(|line| line["delivery_key"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn deal_stage_changes_go_to_one_sink_and_everything_else_to_another() {
    let fake = fake_workspace().await;
    let dir = tempfile::tempdir().unwrap();
    let (routes, deal_stage, rest) = sinks_and_routes(dir.path(), true);
    let app = TestApp::builder()
        .toml(&fake.attio_toml(""))
        .routes(&routes)
        .spawn()
        .await;

    let list_entry_of_a_deal = delivery(json!({
        "event_type": "list-entry.updated",
        "id": {"workspace_id": WORKSPACE, "list_id": PIPELINE,
               "entry_id": "2e6e29ea-c4e0-4f44-842d-78a891f8c156", "attribute_id": PIPELINE_STAGE},
        "parent_object_id": DEALS,
        "parent_record_id": "bf071e1f-6035-429d-b874-d83ea64ea13b",
        "actor": actor()
    }));
    let task = delivery(json!({
        "event_type": "task.created",
        "id": {"workspace_id": WORKSPACE, "task_id": "649e34f4-c39a-4f4d-99ef-48a36bef8f04"},
        "actor": actor()
    }));
    let deliveries = [
        (
            "deal-stage",
            record_event("record.updated", DEALS, Some(DEAL_STAGE), 1),
        ),
        ("deal-entry-stage", list_entry_of_a_deal),
        (
            "deal-amount",
            record_event("record.updated", DEALS, Some(DEAL_AMOUNT), 2),
        ),
        (
            "person-stage",
            record_event("record.updated", PEOPLE, Some(PEOPLE_STAGE), 3),
        ),
        (
            "deal-created",
            record_event("record.created", DEALS, None, 4),
        ),
        ("task", task),
    ];
    for (key, body) in &deliveries {
        assert_eq!(app.post_signed(body, Some(key)).await.status(), 200);
    }

    let to_deal_stage = wait_for_jsonl(&deal_stage, 2, WAIT).await;
    let to_rest = wait_for_jsonl(&rest, 4, WAIT).await;
    // Give a wrongly routed straggler the time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to_deal_stage_after = crate::helpers::read_jsonl(&deal_stage);
    let to_rest_after = crate::helpers::read_jsonl(&rest);
    assert_eq!(to_deal_stage.len(), to_deal_stage_after.len());
    assert_eq!(to_rest.len(), to_rest_after.len());

    assert_eq!(
        ids(&to_deal_stage_after),
        vec!["deal-entry-stage", "deal-stage"],
        "a deal's stage changed, on the record or on its list entry"
    );
    assert_eq!(
        ids(&to_rest_after),
        vec!["deal-amount", "deal-created", "person-stage", "task"],
        "another attribute, another object, no attribute, no object"
    );
    for line in &to_deal_stage_after {
        assert_eq!(line["object"], "deals", "{line}");
        assert_eq!(line["attribute"], "stage", "{line}");
    }
    // Slugs came from the schema cache: each object and attribute was looked up once.
    let object_lookups = fake
        .seen()
        .iter()
        .filter(|seen| seen.path == format!("/v2/objects/{DEALS}"))
        .count();
    assert_eq!(object_lookups, 1);
    assert_eq!(
        fake.seen_under(&format!("/v2/objects/{DEALS}/attributes/"))
            .len(),
        2
    );
}

#[tokio::test]
async fn an_event_whose_slugs_could_not_be_resolved_is_retried_not_dropped() {
    let fake = fake_workspace().await;
    // The first attribute look-up fails; nothing else is wrong.
    fake.script(
        "/attributes/",
        403,
        &[("content-type", "application/json")],
        r#"{"status_code":403,"type":"auth_error","code":"forbidden","message":"Missing scope (fake)"}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (routes, deal_stage, _) = sinks_and_routes(dir.path(), false);
    let app = TestApp::builder()
        .toml(&fake.attio_toml(""))
        .routes(&routes)
        .spawn()
        .await;

    let body = record_event("record.updated", DEALS, Some(DEAL_STAGE), 7);
    assert_eq!(
        app.post_signed(&body, Some("unresolved")).await.status(),
        200
    );

    // The only route that could want it could not tell on the first attempt; the event was
    // retried rather than taken as matching nothing.
    let lines = wait_for_jsonl(&deal_stage, 1, WAIT).await;
    assert_eq!(ids(&lines), vec!["unresolved"]);
    assert_eq!(lines[0]["attribute"], "stage");
    assert_eq!(
        fake.seen_under(&format!("/v2/objects/{DEALS}/attributes/{DEAL_STAGE}"))
            .len(),
        2,
        "one failed look-up, one that worked"
    );
}
