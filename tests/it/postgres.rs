//! The PostgreSQL mirror against the real PostgreSQL on 127.0.0.1:5432 (database `test`, a
//! schema per test, dropped at the end) and a fake Attio workspace with state: the `postgres`
//! sink in the running daemon, the store's ordering guarantees, and `attio-webhooks sync`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use attio_webhooks::attio::AttioClient;
use attio_webhooks::config::Settings;
use attio_webhooks::mirror::settings::PostgresSinkSettings;
use attio_webhooks::mirror::store::{Change, Store, Table};
use attio_webhooks::sinks::{PostgresSink, SinkLine};
use chrono::{Duration as Age, Utc};
use secrecy::SecretString;
use serde_json::{json, Value};

use crate::fake_workspace::{attribute, uuid, value, FakeWorkspace, API_KEY, WORKSPACE};
use crate::helpers::TestApp;

/// Plain TCP: the local server's certificate is a self-signed one.
pub const DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable";
const WAIT: Duration = Duration::from_secs(20);

/// A schema of its own for one test, dropped when the test ends.
pub struct TestSchema {
    pub name: String,
    pub client: tokio_postgres::Client,
}

impl TestSchema {
    pub async fn new() -> TestSchema {
        let name = format!("t_{}", &uuid().replace('-', "")[..16]);
        let (client, connection) = tokio_postgres::connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test",
            tokio_postgres::NoTls,
        )
        .await
        .expect("PostgreSQL answers on 127.0.0.1:5432 (database test); .ci/run starts it");
        tokio::spawn(connection);
        TestSchema { name, client }
    }

    /// `[sinks.warehouse]` on this schema, and a route of every event to it.
    pub fn sink_toml(&self, extra: &str) -> String {
        format!(
            "[sinks.warehouse]\nkind = \"postgres\"\nurl = \"{DATABASE}\"\nschema = \"{}\"\n{extra}\n\
             [[routes]]\nname = \"mirror\"\nevents = [\"*\"]\nsinks = [\"warehouse\"]\n",
            self.name
        )
    }

    pub fn settings(&self) -> PostgresSinkSettings {
        serde_json::from_value(json!({"url": DATABASE, "schema": self.name})).unwrap()
    }

    pub async fn rows(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let sql = sql.replace("$schema", &self.name);
        self.client
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn one(&self, sql: &str) -> Option<tokio_postgres::Row> {
        self.rows(sql).await.into_iter().next()
    }

    /// Waits until `sql` returns a row.
    pub async fn wait_for(&self, sql: &str) -> tokio_postgres::Row {
        let started = Instant::now();
        loop {
            let sql = sql.replace("$schema", &self.name);
            if let Ok(rows) = self.client.query(&sql, &[]).await {
                if let Some(row) = rows.into_iter().next() {
                    return row;
                }
            }
            assert!(started.elapsed() < WAIT, "timed out waiting for: {sql}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async: a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                // Never wait long for a lock a connection of the finished test still holds.
                if let Ok((client, connection)) = tokio_postgres::connect(
                    "host=127.0.0.1 port=5432 user=postgres dbname=test",
                    tokio_postgres::NoTls,
                )
                .await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!(
                            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

fn delivery(event: Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553", "events": [event]}),
    )
    .unwrap()
}

fn event(event_type: &str, ids: Value, beside: Value) -> Value {
    let mut ids = ids;
    ids["workspace_id"] = json!(WORKSPACE);
    let mut event = json!({
        "event_type": event_type, "id": ids,
        "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
    });
    if let Value::Object(extra) = beside {
        for (key, value) in extra {
            event[key] = value;
        }
    }
    event
}

/// Posts one event and waits until the sink wrote it (its row in `events` is written in the
/// same transaction as its changes).
async fn send(app: &TestApp, schema: &TestSchema, event: Value) {
    let key = uuid();
    let response = app.post_signed(&delivery(event), Some(&key)).await;
    assert_eq!(response.status(), 200);
    schema
        .wait_for(&format!(
            "SELECT 1 FROM $schema.events WHERE id = '{key}:0'"
        ))
        .await;
}

struct Deals {
    object: String,
    list: String,
}

/// A workspace with a `deals` object (one attribute of each common type) and a
/// `sales_pipeline` list.
fn deals_workspace(fake: &FakeWorkspace) -> Deals {
    let object = uuid();
    fake.add_object(
        &object,
        "deals",
        vec![
            attribute(&object, "name", "text", false),
            attribute(&object, "amount", "currency", false),
            attribute(&object, "stage", "status", false),
            attribute(&object, "tags", "select", true),
            attribute(&object, "owner", "actor-reference", false),
            attribute(&object, "close_date", "date", false),
            attribute(&object, "won", "checkbox", false),
        ],
    );
    let list = uuid();
    fake.add_list(
        &list,
        "sales_pipeline",
        vec![attribute(&list, "priority", "select", false)],
    );
    Deals { object, list }
}

fn deal_values(name: &str, amount: f64, stage: &str) -> Value {
    json!({
        "name": [value("text", json!({"value": name}))],
        "amount": [value("currency", json!({"currency_value": amount, "currency_code": "EUR"}))],
        "stage": [value("status", json!({"status": {"title": stage}}))],
        "tags": [value("select", json!({"option": {"title": "hot"}})), value("select", json!({"option": {"title": "eu"}}))],
        "owner": [value("actor-reference", json!({"referenced_actor_type": "workspace-member", "referenced_actor_id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}))],
        "close_date": [value("date", json!({"value": "2026-03-31"}))],
        "won": [value("checkbox", json!({"value": false}))]
    })
}

async fn mirror_app(fake: &FakeWorkspace, schema: &TestSchema, extra: &str) -> TestApp {
    TestApp::builder()
        .toml(&fake.attio_toml(""))
        .toml("[enrichment]\ncoalesce_window = \"0s\"\n")
        .routes(&schema.sink_toml(extra))
        .spawn()
        .await
}

#[tokio::test]
async fn every_subscribable_event_type_lands_as_the_right_row_change() {
    let fake = FakeWorkspace::start().await;
    let deals = deals_workspace(&fake);
    let schema = TestSchema::new().await;
    let app = mirror_app(&fake, &schema, "").await;
    let (object, list) = (&deals.object, &deals.list);
    let record_ids = |record: &str| json!({"object_id": object, "record_id": record});

    // Records.
    let record = uuid();
    fake.put_record(object, &record, deal_values("Acme", 1000.0, "Lead"));
    send(
        &app,
        &schema,
        event("record.created", record_ids(&record), json!({})),
    )
    .await;
    let row = schema
        .wait_for(&format!(
            "SELECT name, amount::text, stage FROM $schema.deals WHERE record_id = '{record}'"
        ))
        .await;
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        ("Acme".into(), "1000.0".into(), "Lead".into())
    );
    fake.put_record(object, &record, deal_values("Acme", 2500.0, "Won"));
    let mut updated = record_ids(&record);
    updated["attribute_id"] = json!(fake.attribute_id(object, "stage"));
    send(&app, &schema, event("record.updated", updated, json!({}))).await;
    let row = schema
        .one(&format!(
            "SELECT stage, amount::text FROM $schema.deals WHERE record_id = '{record}'"
        ))
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("Won".into(), "2500.0".into())
    );

    // List entries.
    let entry = uuid();
    let entry_ids = json!({"list_id": list, "entry_id": entry});
    let parent = json!({"parent_object_id": object, "parent_record_id": record});
    fake.put_entry(
        list,
        &entry,
        &record,
        json!({"priority": [value("select", json!({"option": {"title": "high"}}))]}),
    );
    send(
        &app,
        &schema,
        event("list-entry.created", entry_ids.clone(), parent.clone()),
    )
    .await;
    let row = schema
        .wait_for(&format!("SELECT priority, parent_record_id::text FROM $schema.sales_pipeline WHERE entry_id = '{entry}'"))
        .await;
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("high".into(), record.clone())
    );
    fake.put_entry(
        list,
        &entry,
        &record,
        json!({"priority": [value("select", json!({"option": {"title": "low"}}))]}),
    );
    let mut entry_updated = entry_ids.clone();
    entry_updated["attribute_id"] = json!(fake.attribute_id(list, "priority"));
    send(
        &app,
        &schema,
        event("list-entry.updated", entry_updated, parent.clone()),
    )
    .await;
    let row = schema
        .one(&format!(
            "SELECT priority FROM $schema.sales_pipeline WHERE entry_id = '{entry}'"
        ))
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "low");

    // Notes (created, updated, content updated).
    let note = uuid();
    fake.put_note(&note, "First call", &record);
    let note_parent = json!({"parent_object_id": object, "parent_record_id": record});
    send(
        &app,
        &schema,
        event(
            "note.created",
            json!({"note_id": note}),
            note_parent.clone(),
        ),
    )
    .await;
    for (kind, title) in [
        ("note.updated", "First call (edited)"),
        ("note-content.updated", "First call, content"),
    ] {
        fake.put_note(&note, title, &record);
        send(
            &app,
            &schema,
            event(kind, json!({"note_id": note}), note_parent.clone()),
        )
        .await;
        let row = schema
            .one(&format!(
                "SELECT title, parent_record_id::text FROM $schema.notes WHERE note_id = '{note}'"
            ))
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            (title.to_string(), record.clone()),
            "{kind}"
        );
    }

    // Tasks.
    let task = uuid();
    fake.put_task(&task, "Send the contract", false);
    send(
        &app,
        &schema,
        event("task.created", json!({"task_id": task}), json!({})),
    )
    .await;
    fake.put_task(&task, "Send the contract", true);
    send(
        &app,
        &schema,
        event("task.updated", json!({"task_id": task}), json!({})),
    )
    .await;
    let row = schema.one(&format!("SELECT is_completed, deadline_at IS NOT NULL FROM $schema.tasks WHERE task_id = '{task}'")).await.unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1));

    // Comments: created, resolved, unresolved.
    let comment = uuid();
    let comment_beside = json!({"thread_id": uuid(), "object_id": object, "record_id": record, "list_id": null, "entry_id": null});
    for (kind, resolved) in [
        ("comment.created", false),
        ("comment.resolved", true),
        ("comment.unresolved", false),
    ] {
        fake.put_comment(&comment, object, &record, resolved);
        send(
            &app,
            &schema,
            event(kind, json!({"comment_id": comment}), comment_beside.clone()),
        )
        .await;
        let row = schema.one(&format!("SELECT resolved_at IS NOT NULL, record_id::text FROM $schema.comments WHERE comment_id = '{comment}'")).await.unwrap();
        assert_eq!(
            (row.get::<_, bool>(0), row.get::<_, String>(1)),
            (resolved, record.clone()),
            "{kind}"
        );
    }

    // Workspace members.
    let member = uuid();
    fake.put_member(&member, "ada@example.com");
    send(
        &app,
        &schema,
        event(
            "workspace-member.created",
            json!({"workspace_member_id": member}),
            json!({}),
        ),
    )
    .await;
    let row = schema.one(&format!("SELECT email_address FROM $schema.workspace_members WHERE workspace_member_id = '{member}'")).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "ada@example.com");

    // Schema events: a new attribute of the object and of the list become view columns.
    let region = attribute(object, "region", "text", false);
    let region_id = region["id"]["attribute_id"].as_str().unwrap().to_string();
    fake.add_object(object, "deals", {
        let mut attributes = vec![region];
        attributes.extend(
            ["name", "amount", "stage", "tags", "owner", "close_date", "won"]
                .iter()
                .map(|slug| json!({"id": {"workspace_id": WORKSPACE, "object_id": object, "attribute_id": fake.attribute_id(object, slug)}, "api_slug": slug, "type": "text"})),
        );
        attributes
    });
    send(
        &app,
        &schema,
        event(
            "object-attribute.created",
            json!({"object_id": object, "attribute_id": region_id}),
            json!({}),
        ),
    )
    .await;
    schema.wait_for("SELECT 1 FROM information_schema.columns WHERE table_schema = '$schema' AND table_name = 'deals' AND column_name = 'region'").await;
    let owner = attribute(list, "owner", "actor-reference", false);
    let owner_id = owner["id"]["attribute_id"].as_str().unwrap().to_string();
    fake.add_list(
        list,
        "sales_pipeline",
        vec![attribute(list, "priority", "select", false), owner],
    );
    send(
        &app,
        &schema,
        event(
            "list-attribute.created",
            json!({"list_id": list, "attribute_id": owner_id}),
            json!({}),
        ),
    )
    .await;
    schema.wait_for("SELECT 1 FROM information_schema.columns WHERE table_schema = '$schema' AND table_name = 'sales_pipeline' AND column_name = 'owner'").await;
    // A renamed list attribute: the view's column follows its new slug.
    let priority_id = fake.rename_attribute(list, "priority", "urgency");
    send(
        &app,
        &schema,
        event(
            "list-attribute.updated",
            json!({"list_id": list, "attribute_id": priority_id}),
            json!({}),
        ),
    )
    .await;
    schema.wait_for("SELECT 1 FROM information_schema.columns WHERE table_schema = '$schema' AND table_name = 'sales_pipeline' AND column_name = 'urgency'").await;
    send(
        &app,
        &schema,
        event("list.updated", json!({"list_id": list}), json!({})),
    )
    .await;
    // A list created later is recorded under its slug.
    let partners = uuid();
    fake.add_list(
        &partners,
        "partners",
        vec![attribute(&partners, "tier", "text", false)],
    );
    send(
        &app,
        &schema,
        event("list.created", json!({"list_id": partners}), json!({})),
    )
    .await;
    let row = schema
        .one(&format!(
            "SELECT api_slug, deleted_at IS NULL FROM $schema.lists WHERE list_id = '{partners}'"
        ))
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("partners".to_string(), true)
    );

    // Deletes: each sets deleted_at and takes the row out of the views.
    fake.remove_entry(list, &entry);
    send(
        &app,
        &schema,
        event("list-entry.deleted", entry_ids, parent),
    )
    .await;
    fake.remove_note(&note);
    send(
        &app,
        &schema,
        event("note.deleted", json!({"note_id": note}), note_parent),
    )
    .await;
    fake.remove_task(&task);
    send(
        &app,
        &schema,
        event("task.deleted", json!({"task_id": task}), json!({})),
    )
    .await;
    fake.remove_comment(&comment);
    send(
        &app,
        &schema,
        event(
            "comment.deleted",
            json!({"comment_id": comment}),
            comment_beside,
        ),
    )
    .await;
    fake.remove_record(object, &record);
    send(
        &app,
        &schema,
        event("record.deleted", record_ids(&record), json!({})),
    )
    .await;
    for (table, key, id) in [
        ("list_entries", "entry_id", &entry),
        ("notes", "note_id", &note),
        ("tasks", "task_id", &task),
        ("comments", "comment_id", &comment),
        ("records", "record_id", &record),
    ] {
        let row = schema
            .one(&format!(
                "SELECT deleted_at IS NOT NULL FROM $schema.{table} WHERE {key} = '{id}'"
            ))
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "{table} row marked deleted");
    }
    assert!(schema
        .one(&format!(
            "SELECT 1 FROM $schema.deals WHERE record_id = '{record}'"
        ))
        .await
        .is_none());

    // A list that is deleted loses its view.
    fake.remove_list(list);
    send(
        &app,
        &schema,
        event("list.deleted", json!({"list_id": list}), json!({})),
    )
    .await;
    assert!(schema.one("SELECT 1 FROM information_schema.views WHERE table_schema = '$schema' AND table_name = 'sales_pipeline'").await.is_none());
    let row = schema
        .one(&format!(
            "SELECT deleted_at IS NOT NULL FROM $schema.lists WHERE list_id = '{list}'"
        ))
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));

    // What the mirror does not hold is still kept for audit.
    send(
        &app,
        &schema,
        event(
            "call-recording.created",
            json!({"meeting_id": uuid(), "call_recording_id": uuid()}),
            json!({}),
        ),
    )
    .await;
    let row = schema
        .one("SELECT count(*) FROM $schema.events")
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 25, "one row per event sent");
}

#[tokio::test]
async fn a_merge_a_delete_and_an_attribute_rename_show_up_in_the_views() {
    let fake = FakeWorkspace::start().await;
    let deals = deals_workspace(&fake);
    let object = &deals.object;
    let schema = TestSchema::new().await;
    let app = mirror_app(&fake, &schema, "").await;
    let [survivor, duplicate, deleted] = [uuid(), uuid(), uuid()];
    for (id, name) in [
        (&survivor, "Acme"),
        (&duplicate, "Acme Inc"),
        (&deleted, "Gone Ltd"),
    ] {
        fake.put_record(object, id, deal_values(name, 10.0, "Lead"));
        send(
            &app,
            &schema,
            event(
                "record.created",
                json!({"object_id": object, "record_id": id}),
                json!({}),
            ),
        )
        .await;
    }
    let row = schema
        .one("SELECT count(*) FROM $schema.deals")
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    let row = schema
        .one(&format!("SELECT tags, owner::text, close_date::text, won FROM $schema.deals WHERE record_id = '{survivor}'"))
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Vec<String>>(0),
        vec!["hot".to_string(), "eu".to_string()]
    );
    assert_eq!(
        row.get::<_, String>(1),
        "50cf242c-7fa3-4cad-87d0-75b1af71c57b"
    );
    assert_eq!(row.get::<_, String>(2), "2026-03-31");
    assert!(!row.get::<_, bool>(3));

    // Merge: the duplicate is gone from Attio, the survivor carries the merged state.
    fake.remove_record(object, &duplicate);
    fake.put_record(
        object,
        &survivor,
        deal_values("Acme (merged)", 10.0, "Lead"),
    );
    send(
        &app,
        &schema,
        event(
            "record.merged",
            json!({"object_id": object, "record_id": survivor}),
            json!({"duplicate_object_id": object, "duplicate_record_id": duplicate}),
        ),
    )
    .await;
    fake.remove_record(object, &deleted);
    send(
        &app,
        &schema,
        event(
            "record.deleted",
            json!({"object_id": object, "record_id": deleted}),
            json!({}),
        ),
    )
    .await;
    let names: Vec<String> = schema
        .rows("SELECT name FROM $schema.deals ORDER BY name")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["Acme (merged)".to_string()]);
    let row = schema
        .one(&format!("SELECT merged_into::text, deleted_at IS NOT NULL FROM $schema.records WHERE record_id = '{duplicate}'"))
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        (survivor.clone(), true)
    );

    // Rename: the view's column follows the attribute's new slug, with the stored values.
    let attribute_id = fake.rename_attribute(object, "amount", "value_eur");
    send(
        &app,
        &schema,
        event(
            "object-attribute.updated",
            json!({"object_id": object, "attribute_id": attribute_id}),
            json!({}),
        ),
    )
    .await;
    let row = schema
        .one("SELECT value_eur::text FROM $schema.deals")
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "10.0");
    assert!(schema
        .one("SELECT 1 FROM information_schema.columns WHERE table_schema = '$schema' AND table_name = 'deals' AND column_name = 'amount'")
        .await
        .is_none());
}

async fn migrated_store(schema: &TestSchema) -> Store {
    let store = Store::open("test", &schema.settings()).unwrap();
    store.migrate().await.unwrap();
    store
}

fn task(id: &str, content: &str) -> Value {
    json!({"id": {"workspace_id": WORKSPACE, "task_id": id}, "content_plaintext": content, "is_completed": false})
}

#[tokio::test]
async fn out_of_order_duplicate_and_replayed_writes_leave_the_newest_row() {
    let schema = TestSchema::new().await;
    let store = migrated_store(&schema).await;
    // Migrating again (a restart, a second replica) changes nothing.
    store.migrate().await.unwrap();
    let id = uuid();
    let now = Utc::now();
    let upsert = |content: &str, age: i64| Change::Upsert {
        table: Table::Tasks,
        data: task(&id, content),
        slug: None,
        fetched_at: now - Age::seconds(age),
    };
    let counts = store.apply(&[upsert("newest", 1)]).await.unwrap();
    assert_eq!(counts[&Table::Tasks].created, 1);
    // An older fetch arriving late, and a delete older than the newest fetch: no effect.
    let counts = store.apply(&[upsert("older", 5)]).await.unwrap();
    assert_eq!(counts[&Table::Tasks].unchanged, 1);
    store
        .apply(&[Change::Gone {
            table: Table::Tasks,
            key: vec![id.clone()],
            slug: None,
            at: now - Age::seconds(3),
            merged_into: None,
        }])
        .await
        .unwrap();
    // The same write again (a redelivery, a replay): the same row, counted unchanged.
    let counts = store.apply(&[upsert("newest", 1)]).await.unwrap();
    assert_eq!(counts[&Table::Tasks].unchanged, 1);
    let row = schema
        .one(&format!(
            "SELECT content, deleted_at IS NULL FROM $schema.tasks WHERE task_id = '{id}'"
        ))
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("newest".into(), true)
    );
    // Two fetches of one row in one batch: the newer wins whatever the order.
    let counts = store
        .apply(&[upsert("newer still", 0), upsert("stale", 9)])
        .await
        .unwrap();
    assert_eq!(counts[&Table::Tasks].updated, 1);
    let row = schema
        .one(&format!(
            "SELECT content FROM $schema.tasks WHERE task_id = '{id}'"
        ))
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "newer still");
    // A delete newer than every fetch wins, and an older fetch cannot bring the row back.
    store
        .apply(&[Change::Gone {
            table: Table::Tasks,
            key: vec![id.clone()],
            slug: None,
            at: Utc::now(),
            merged_into: None,
        }])
        .await
        .unwrap();
    store.apply(&[upsert("resurrected", 2)]).await.unwrap();
    let row = schema
        .one(&format!(
            "SELECT content, deleted_at IS NOT NULL FROM $schema.tasks WHERE task_id = '{id}'"
        ))
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("newer still".into(), true)
    );
}

fn attio_client(base_url: &str) -> AttioClient {
    let settings = Settings::from_toml(
        "test",
        &format!("[webhook]\nsecrets = [\"s\"]\n[attio]\nbase_url = \"{base_url}\"\n"),
    )
    .unwrap();
    AttioClient::new(&settings.attio, &SecretString::from(API_KEY.to_string())).unwrap()
}

fn task_line(task_id: &str) -> SinkLine {
    let line = json!({
        "id": format!("{}:0", uuid()), "event_type": "task.created", "received_at": "2026-01-01T00:00:00Z",
        "event": {"event_type": "task.created", "id": {"workspace_id": WORKSPACE, "task_id": task_id}},
        "data": task(task_id, "Call back"), "enrichment": "ok", "fetched_at": Utc::now().to_rfc3339()
    });
    SinkLine {
        id: Arc::from("x"),
        event_type: Arc::from("task.created"),
        json: serde_json::to_vec(&line).unwrap().into(),
    }
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_its_event_for_good_and_only_that_event() {
    let fake = FakeWorkspace::start().await;
    let schema = TestSchema::new().await;
    let client = attio_client(&format!("http://{}", fake.addr));
    let sink = PostgresSink::open("warehouse", &schema.settings(), Some(&client)).unwrap();
    let good = uuid();
    let (bad_line, good_line) = (task_line("not-a-uuid"), task_line(&good));
    let (refused, accepted) = tokio::join!(sink.deliver(&bad_line), sink.deliver(&good_line));
    let error = refused.unwrap_err();
    assert!(error.permanent, "{}", error.message);
    assert!(error.message.contains("22P02"), "{}", error.message);
    accepted.unwrap();
    assert!(schema
        .one(&format!(
            "SELECT 1 FROM $schema.tasks WHERE task_id = '{good}'"
        ))
        .await
        .is_some());
}

#[tokio::test]
async fn a_database_that_is_down_is_a_transient_failure_of_the_sink() {
    let fake = FakeWorkspace::start().await;
    let client = attio_client(&format!("http://{}", fake.addr));
    let port = crate::helpers::free_port();
    let settings: PostgresSinkSettings = serde_json::from_value(json!({
        "url": format!("postgres://postgres@127.0.0.1:{port}/test"), "schema": "nowhere"
    }))
    .unwrap();
    let sink = PostgresSink::open("warehouse", &settings, Some(&client)).unwrap();
    let error = sink.deliver(&task_line(&uuid())).await.unwrap_err();
    assert!(!error.permanent, "{}", error.message);
    assert!(error.message.contains("PostgreSQL"), "{}", error.message);
}

// ---- sync ----

use attio_webhooks::mirror::sync::{self, Progress, Scope, ScopeReport, SyncError, SyncOptions};
use tokio_util::sync::CancellationToken;

fn attio_client_with(base_url: &str, extra: &str) -> AttioClient {
    let settings = Settings::from_toml(
        "test",
        &format!("[webhook]\nsecrets = [\"s\"]\n[attio]\nbase_url = \"{base_url}\"\n{extra}\n"),
    )
    .unwrap();
    AttioClient::new(&settings.attio, &SecretString::from(API_KEY.to_string())).unwrap()
}

/// A `deals` object holding `count` records named `Deal {n}`; their ids in order.
fn deals_with_records(fake: &FakeWorkspace, count: usize) -> (String, Vec<String>) {
    let deals = deals_workspace(fake);
    let ids: Vec<String> = (0..count).map(|_| uuid()).collect();
    fake.add_records(
        &deals.object,
        ids.iter()
            .enumerate()
            .map(|(n, id)| {
                (
                    id.clone(),
                    deal_values(&format!("Deal {n}"), n as f64, "Lead"),
                )
            })
            .collect(),
    );
    (deals.object, ids)
}

fn only_deals() -> SyncOptions {
    SyncOptions {
        objects: vec!["deals".into()],
        ..SyncOptions::default()
    }
}

#[tokio::test]
async fn a_sync_of_ten_thousand_records_over_twenty_pages_with_429s_counts_right_within_the_read_rate(
) {
    let fake = FakeWorkspace::start().await;
    let (object, _) = deals_with_records(&fake, 10_000);
    fake.throttle_every(4);
    let schema = TestSchema::new().await;
    let store = migrated_store(&schema).await;
    // A read rate well below what the fake and PostgreSQL could serve, so the limiter is what
    // paces the run.
    let read_rate = 4;
    let attio = attio_client_with(
        &format!("http://{}", fake.addr),
        &format!("read_rate = {read_rate}"),
    );
    let reports = sync::run(
        &attio,
        &store,
        &only_deals(),
        &sync::Quiet,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(report.scope, "object deals");
    assert!(report.complete);
    assert_eq!(
        (
            report.counts.created,
            report.counts.updated,
            report.counts.unchanged,
            report.counts.deleted
        ),
        (10_000, 0, 0, 0)
    );
    assert!(
        fake.throttled() >= 4,
        "429s were answered: {}",
        fake.throttled()
    );
    let busiest = crate::fake_workspace::busiest_second(&fake.arrivals());
    assert!(
        busiest <= read_rate,
        "{busiest} requests arrived within one second (read_rate {read_rate})"
    );
    // 20 full pages and the empty one that ends the pass, plus the 429s answered.
    let queries = fake.requests_under(&format!("/v2/objects/{object}/records/query"));
    assert_eq!(queries as u64, 21 + fake.throttled());
    let row = schema
        .one("SELECT count(*) FROM $schema.deals")
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10_000);
}

/// Cancels the run after its first page.
struct StopAfterFirstPage(CancellationToken);

impl Progress for StopAfterFirstPage {
    fn page(&self, _: &Scope, _: &ScopeReport) {
        self.0.cancel();
    }
}

#[tokio::test]
async fn an_interrupted_sync_resumes_from_its_checkpoint_and_prunes_only_after_a_complete_pass() {
    let fake = FakeWorkspace::start().await;
    let (object, ids) = deals_with_records(&fake, 1_500);
    let schema = TestSchema::new().await;
    let store = migrated_store(&schema).await;
    let attio = attio_client(&format!("http://{}", fake.addr));
    let options = SyncOptions {
        prune: true,
        ..only_deals()
    };
    // A row from before (an earlier run, a webhook) that Attio no longer has.
    let gone = uuid();
    store
        .apply(&[Change::Upsert {
            table: Table::Records,
            data: json!({"id": {"workspace_id": WORKSPACE, "object_id": object, "record_id": gone}, "values": {}}),
            slug: Some("deals".into()),
            fetched_at: Utc::now() - Age::hours(1),
        }])
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let interrupted = sync::run(
        &attio,
        &store,
        &options,
        &StopAfterFirstPage(stop.clone()),
        &stop,
    )
    .await;
    assert!(
        matches!(interrupted, Err(SyncError::Interrupted { .. })),
        "{interrupted:?}"
    );
    let row = schema
        .one("SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FROM $schema.records")
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (501, 501),
        "one page written, nothing pruned"
    );

    // Attio loses one more record meanwhile; the resumed pass completes, then prunes both.
    fake.remove_record(&object, &ids[1_499]);
    let reports = sync::run(
        &attio,
        &store,
        &options,
        &sync::Quiet,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let report = &reports[0];
    assert_eq!(report.resumed_at, Some(500));
    assert_eq!((report.counts.created, report.counts.deleted), (1_499, 1));
    // One request before the interruption, two after it (offset 500, and offset 1000 whose
    // short page ends the pass): the resumed run did not start again from 0.
    assert_eq!(
        fake.requests_under(&format!("/v2/objects/{object}/records/query")),
        3
    );
    let deleted: Vec<String> = schema
        .rows("SELECT record_id::text FROM $schema.records WHERE deleted_at IS NOT NULL")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(deleted, vec![gone.clone()]);
    // The record Attio lost before the pass reached it was never written.
    assert!(schema
        .one(&format!(
            "SELECT 1 FROM $schema.records WHERE record_id = '{}' AND deleted_at IS NULL",
            ids[1_499]
        ))
        .await
        .is_none());
}

#[tokio::test]
async fn prune_removes_exactly_what_attio_no_longer_has_and_a_dry_run_writes_nothing() {
    let fake = FakeWorkspace::start().await;
    let (object, ids) = deals_with_records(&fake, 1_200);
    let list = fake.workspace_list_id();
    let entries: Vec<String> = (0..30).map(|_| uuid()).collect();
    for entry in &entries {
        fake.put_entry(
            &list,
            entry,
            &ids[0],
            json!({"priority": [value("select", json!({"option": {"title": "high"}}))]}),
        );
    }
    let notes: Vec<String> = (0..60).map(|_| uuid()).collect();
    for note in &notes {
        fake.put_note(note, "Call notes", &ids[0]);
    }
    let tasks: Vec<String> = (0..3).map(|_| uuid()).collect();
    for task in &tasks {
        fake.put_task(task, "Follow up", false);
    }
    fake.put_member(&uuid(), "ada@example.com");
    let schema = TestSchema::new().await;
    let store = migrated_store(&schema).await;
    let attio = attio_client(&format!("http://{}", fake.addr));
    let everything = SyncOptions::everything(true);
    let first = sync::run(
        &attio,
        &store,
        &everything,
        &sync::Quiet,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let created: Vec<(String, u64)> = first
        .iter()
        .map(|r| (r.scope.clone(), r.counts.created))
        .collect();
    assert_eq!(
        created,
        vec![
            ("object deals".to_string(), 1_200),
            ("list sales_pipeline".to_string(), 30),
            ("notes".to_string(), 60),
            ("tasks".to_string(), 3),
            ("workspace members".to_string(), 1),
        ]
    );

    for id in &ids[10..17] {
        fake.remove_record(&object, id);
    }
    fake.remove_entry(&list, &entries[3]);
    fake.remove_note(&notes[59]);
    fake.remove_note(&notes[0]);
    fake.remove_task(&tasks[1]);
    fake.put_record(&object, &ids[100], deal_values("Renamed", 1.0, "Won"));

    let dry = SyncOptions {
        dry_run: true,
        ..everything.clone()
    };
    let preview = sync::run(
        &attio,
        &store,
        &dry,
        &sync::Quiet,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(preview[0].counts.updated, 1);
    let row = schema
        .one("SELECT count(*) FROM $schema.records WHERE deleted_at IS NOT NULL")
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0, "a dry run writes nothing");

    let second = sync::run(
        &attio,
        &store,
        &everything,
        &sync::Quiet,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let deleted: Vec<(String, u64, u64)> = second
        .iter()
        .map(|r| (r.scope.clone(), r.counts.deleted, r.counts.updated))
        .collect();
    assert_eq!(
        deleted,
        vec![
            ("object deals".to_string(), 7, 1),
            ("list sales_pipeline".to_string(), 1, 0),
            ("notes".to_string(), 2, 0),
            ("tasks".to_string(), 1, 0),
            ("workspace members".to_string(), 0, 0),
        ]
    );
    let mut gone: Vec<String> = schema
        .rows("SELECT record_id::text FROM $schema.records WHERE deleted_at IS NOT NULL")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    gone.sort();
    let mut expected: Vec<String> = ids[10..17].to_vec();
    expected.sort();
    assert_eq!(gone, expected);
    let row = schema
        .one("SELECT count(*) FROM $schema.deals")
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1_193);
}

#[tokio::test]
async fn only_one_sync_runs_at_a_time_per_schema() {
    let schema = TestSchema::new().await;
    let store = migrated_store(&schema).await;
    let other = migrated_store(&schema).await;
    let held = store
        .try_lock_sync()
        .await
        .unwrap()
        .expect("the first takes the lock");
    assert!(
        other.try_lock_sync().await.unwrap().is_none(),
        "the second is refused"
    );
    held.release().await;
    assert!(
        other.try_lock_sync().await.unwrap().is_some(),
        "free again once released"
    );
}

#[tokio::test]
async fn the_daemon_with_a_sync_interval_fills_the_mirror_without_any_webhook() {
    let fake = FakeWorkspace::start().await;
    let (_, ids) = deals_with_records(&fake, 20);
    let schema = TestSchema::new().await;
    let _app = TestApp::builder()
        .toml(&fake.attio_toml(""))
        .toml("[sync]\ninterval = \"1h\"\n")
        .routes(&schema.sink_toml(""))
        .spawn()
        .await;
    schema
        .wait_for(&format!(
            "SELECT 1 FROM $schema.deals WHERE record_id = '{}'",
            ids[19]
        ))
        .await;
    let row = schema
        .one("SELECT count(*) FROM $schema.deals")
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 20);
}

#[tokio::test]
async fn the_sync_command_prints_progress_and_a_summary_and_refuses_an_empty_scope() {
    let fake = FakeWorkspace::start().await;
    deals_with_records(&fake, 700);
    let schema = TestSchema::new().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("{}\n{}", fake.attio_toml(""), schema.sink_toml("")),
    )
    .unwrap();
    let workdir = dir.path().to_path_buf();
    let sync = move |args: &[&str]| {
        std::process::Command::new(crate::helpers::binary())
            .current_dir(&workdir)
            .env("APP_CONFIG_DIR", &workdir)
            .env_remove("ATTIO_API_KEY")
            .env_remove("DATABASE_URL")
            .arg("--config")
            .arg(&config)
            .arg("sync")
            .args(args)
            .output()
            .unwrap()
    };
    let output = tokio::task::spawn_blocking(move || {
        let json = sync(&["--object", "deals", "--json"]);
        let plain = sync(&["--object", "deals"]);
        let empty = sync(&[]);
        (json, plain, empty)
    })
    .await
    .unwrap();
    let (json, plain, empty) = output;
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["progress"]["scope"] == "object deals"));
    let summary = &lines.last().unwrap()["summary"][0];
    assert_eq!(
        (summary["created"].as_u64(), summary["unchanged"].as_u64()),
        (Some(700), Some(0))
    );

    assert!(plain.status.success());
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(
        stdout.contains("created") && stdout.contains("object deals"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&plain.stderr).contains("object deals: 700 rows"));
    let row = stdout
        .lines()
        .find(|l| l.starts_with("object deals"))
        .unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[2..],
        ["0", "0", "700", "0"]
    );

    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("nothing to sync"));
}

// ---- benchmark (ignored here; `bench/postgres.sh` runs it in release with sizes from the env) ----

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Rows per second of the `postgres` sink under a stream of `record.updated` lines (BENCH_UPDATES
/// lines over BENCH_RECORDS records, BENCH_IN_FLIGHT at a time, as the worker delivers them) and
/// of `sync` (BENCH_SYNC_RECORDS records at Attio's 100 reads/s), each against what Attio allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/postgres.sh"]
async fn bench_postgres_rows_per_second() {
    let updates = env_number("BENCH_UPDATES", 20_000);
    let records = env_number("BENCH_RECORDS", 2_000);
    let in_flight = env_number("BENCH_IN_FLIGHT", 256);
    let sync_records = env_number("BENCH_SYNC_RECORDS", 20_000);
    let read_rate = 100.0;

    let fake = FakeWorkspace::start().await;
    let (object, ids) = deals_with_records(&fake, sync_records.max(records));
    let schema = TestSchema::new().await;
    let store = migrated_store(&schema).await;
    let attio = attio_client(&format!("http://{}", fake.addr));

    // sync: every record, 500 a page, through the client's read limiter.
    let started = Instant::now();
    let reports = sync::run(
        &attio,
        &store,
        &only_deals(),
        &sync::Quiet,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let sync_seconds = started.elapsed().as_secs_f64();
    let synced = reports[0].counts.created as f64;

    // The sink: update lines as enrichment makes them, delivered concurrently.
    let sink = Arc::new(PostgresSink::open("bench", &schema.settings(), Some(&attio)).unwrap());
    let lines: Vec<SinkLine> = (0..updates)
        .map(|n| {
            let id = &ids[n % records];
            let data = json!({
                "id": {"workspace_id": WORKSPACE, "object_id": object, "record_id": id},
                "values": deal_values(&format!("Deal {n}"), n as f64, "Lead")
            });
            let line = json!({
                "id": format!("bench:{n}"), "event_type": "record.updated",
                "received_at": "2026-01-01T00:00:00Z",
                "event": {"event_type": "record.updated", "id": {"workspace_id": WORKSPACE, "object_id": object, "record_id": id}},
                "data": data, "enrichment": "ok", "object": "deals",
                "fetched_at": Utc::now().to_rfc3339()
            });
            SinkLine {
                id: Arc::from(format!("bench:{n}")),
                event_type: Arc::from("record.updated"),
                json: serde_json::to_vec(&line).unwrap().into(),
            }
        })
        .collect();
    let lines = Arc::new(lines);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (sink, lines, next) = (sink.clone(), lines.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(line) = lines.get(n) else { return };
                    sink.deliver(line).await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let sink_seconds = started.elapsed().as_secs_f64();

    let sink_rate = updates as f64 / sink_seconds;
    let sync_rate = synced / sync_seconds;
    // Each webhook row costs one read to re-fetch; a sync page of 500 rows costs one read.
    println!("| measure | rows | seconds | rows/s | Attio allows (rows/s) | ratio |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| postgres sink, record.updated stream ({in_flight} in flight, {records} records) | {updates} | {sink_seconds:.2} | {sink_rate:.0} | {read_rate:.0} (one re-fetch per event) | {:.1}x |",
        sink_rate / read_rate
    );
    println!(
        "| sync, 500 per page | {synced:.0} | {sync_seconds:.2} | {sync_rate:.0} | {:.0} (500 rows per read) | {:.2}x |",
        read_rate * 500.0,
        sync_rate / (read_rate * 500.0)
    );
}
