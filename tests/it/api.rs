//! The events API (`/api/v1`) on both journals: filters, paging, auth, replay, unparsed, status,
//! stream, each answer checked against `docs/openapi.yaml`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{record_updated_body, TestApp};

const TOKEN: &str = "admin-token-for-tests-0123456789";
const WAIT: Duration = Duration::from_secs(15);

fn openapi() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
        serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is valid YAML")
    })
}

/// Checks `body` against the schema the description gives for this path, method and status.
fn conforms(path: &str, method: &str, status: u16, body: &Value) {
    let spec = openapi();
    let operation = &spec["paths"][path][method];
    assert!(
        operation.is_object(),
        "docs/openapi.yaml describes no {method} {path}"
    );
    let mut response = operation["responses"][status.to_string()].clone();
    assert!(
        !response.is_null(),
        "docs/openapi.yaml gives {method} {path} no {status} answer"
    );
    if let Some(reference) = response["$ref"].as_str() {
        response = spec
            .pointer(reference.trim_start_matches('#'))
            .unwrap()
            .clone();
    }
    let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
        return;
    };
    // The schema with the description's components beside it, so that its $refs resolve.
    let mut schema = Value::Object(schema.clone());
    schema["components"] = spec["components"].clone();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} answered {status} with {body} against the description: {errors:?}"
    );
}

/// A note.created delivery, routed to the sink that always fails.
fn note_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553",
        "events": [{
            "event_type": "note.created",
            "id": {
                "workspace_id": "14beef7a-99f7-4534-a87e-70b564330a4c",
                "note_id": "6f1a9ffd-5a5e-4f3d-8a1e-f0a1c1e8d9b2"
            },
            "parent_object_id": "97052eb9-e65e-443f-a297-f2d9a4a7f795",
            "parent_record_id": "00000000-0000-4000-8000-000000000099",
            "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
        }]
    }))
    .unwrap()
}

async fn spawn(redis: bool) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("all.jsonl");
    // /dev/full accepts the open and fails every write: notes become dead letters at once.
    let routes = format!(
        "[sinks.file]\nkind = \"jsonl\"\npath = {:?}\n\
         [sinks.full]\nkind = \"jsonl\"\npath = \"/dev/full\"\nattempts = 1\n\
         [[routes]]\nname = \"records\"\nevents = [\"record.*\"]\nsinks = [\"file\"]\n\
         [[routes]]\nname = \"notes\"\nevents = [\"note.*\"]\nsinks = [\"full\"]\n",
        sink.display().to_string()
    );
    let mut builder = TestApp::builder()
        .routes(&routes)
        .toml(&format!("[admin]\ntoken = \"{TOKEN}\""));
    if redis {
        builder = builder.redis().toml("[queue]\nbackend = \"redis\"");
    }
    (builder.spawn().await, dir)
}

fn lines(dir: &tempfile::TempDir) -> usize {
    crate::helpers::read_jsonl(&dir.path().join("all.jsonl")).len()
}

struct Api<'a> {
    app: &'a TestApp,
}

impl Api<'_> {
    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let response = self
            .app
            .client
            .get(self.app.url(path_and_query))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.app.client.post(self.app.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn events(&self, query: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/events{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        conforms("/api/v1/events", "get", 200, &body);
        body
    }

    async fn ids(&self, query: &str) -> Vec<String> {
        self.events(query).await["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until the event has this status.
    async fn wait_for(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (code, body) = self.get(&format!("/api/v1/events/{id}")).await;
            if code == 200 && body["status"] == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never became {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The scenario both journals must pass.
async fn the_api_answers((app, dir): (TestApp, tempfile::TempDir)) {
    let api = Api { app: &app };

    // Without the token, or with a wrong one: 401 with a JSON error.
    let anonymous = app
        .client
        .get(app.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    conforms("/api/v1/events", "get", 401, &body);
    let wrong = app
        .client
        .get(app.url("/api/v1/events"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // The stream, opened before anything happens, sees what follows.
    let mut stream = app
        .client
        .get(app.url("/api/v1/stream"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));

    for (n, key) in ["d1", "d2", "d3"].iter().enumerate() {
        let response = app.post_signed(&record_updated_body(n), Some(key)).await;
        assert_eq!(response.status(), 200);
    }
    let response = app.post_signed(&note_body(), Some("n1")).await;
    assert_eq!(response.status(), 200);
    api.wait_for("d3:0", "delivered").await;
    let dead = api.wait_for("n1:0", "dead").await;
    conforms("/api/v1/events/{id}", "get", 200, &dead);
    assert_eq!(dead["sinks"][0]["name"], "full");
    assert_eq!(dead["sinks"][0]["status"], "dead");
    assert!(dead["sinks"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("No space"));

    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    while !(seen.contains("\"id\":\"n1:0\"") && seen.contains("\"status\":\"dead\"")) {
        assert!(Instant::now() < deadline, "the stream did not tell: {seen}");
        let chunk = tokio::time::timeout(WAIT, stream.chunk())
            .await
            .expect("the stream speaks")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: status"), "{seen}");
    assert!(seen.contains("\"id\":\"d1:0\""), "{seen}");

    // The list, newest first, and its filters.
    assert_eq!(api.ids("").await, ["n1:0", "d3:0", "d2:0", "d1:0"]);
    let all = api.events("").await;
    assert_eq!(all["data"][1]["status"], "delivered");
    assert_eq!(all["data"][1]["event_type"], "record.updated");
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(api.ids("?status=dead").await, ["n1:0"]);
    assert_eq!(api.ids("?status=delivered").await.len(), 3);
    assert_eq!(api.ids("?event_type=record.*").await.len(), 3);
    assert_eq!(api.ids("?event_type=note.created").await, ["n1:0"]);
    assert_eq!(api.ids("?q=d2").await, ["d2:0"]);
    assert_eq!(
        api.ids("?q=00000000-0000-4000-8000-000000000001").await,
        ["d2:0"],
        "found by record id"
    );
    assert_eq!(api.ids("?sink=full").await, ["n1:0"]);
    assert_eq!(api.ids("?sink=file&status=dead").await.len(), 0);
    assert!(api.ids("?since=2999-01-01T00:00:00Z").await.is_empty());
    assert_eq!(api.ids("?until=2999-01-01T00:00:00Z").await.len(), 4);

    // Cursor paging walks the same list.
    let first = api.events("?limit=3").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let second = api.events(&format!("?limit=3&cursor={cursor}")).await;
    assert_eq!(second["data"][0]["id"], "d1:0");
    assert_eq!(second["next_cursor"], Value::Null);

    // Bad filters are refused, naming the problem.
    for bad in [
        "?status=lost",
        "?limit=501",
        "?limit=0",
        "?since=yesterday",
        "?cursor=x",
    ] {
        let (status, body) = api.get(&format!("/api/v1/events{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        conforms("/api/v1/events", "get", 400, &body);
    }

    // Detail, and an unknown id.
    let (status, detail) = api.get("/api/v1/events/d1:0").await;
    assert_eq!(status, 200);
    conforms("/api/v1/events/{id}", "get", 200, &detail);
    assert_eq!(detail["event"]["event_type"], "record.updated");
    assert_eq!(detail["delivery_key"], "d1");
    assert_eq!(detail["sinks"][0]["name"], "file");
    assert_eq!(detail["sinks"][0]["status"], "delivered");
    assert!(detail["sinks"][0]["delivered_at"].is_string());
    assert_eq!(detail["enrichment"], "disabled");
    let (status, missing) = api.get("/api/v1/events/nope:0").await;
    assert_eq!(status, 404);
    conforms("/api/v1/events/{id}", "get", 404, &missing);

    // Replaying a delivered event delivers it again.
    let lines_before = lines(&dir);
    let (status, report) = api.post("/api/v1/events/d1:0/replay", None).await;
    assert_eq!(status, 202, "{report}");
    conforms("/api/v1/events/{id}/replay", "post", 202, &report);
    assert_eq!(report["replayed"], json!(["d1:0"]));
    let deadline = Instant::now() + WAIT;
    while lines(&dir) < lines_before + 1 {
        assert!(
            Instant::now() < deadline,
            "the replayed event never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.wait_for("d1:0", "delivered").await;
    // A sink the event never went to is refused, as is an unknown event.
    let (status, body) = api
        .post("/api/v1/events/d2:0/replay", Some(json!({"sink": "full"})))
        .await;
    assert_eq!(status, 409, "{body}");
    conforms("/api/v1/events/{id}/replay", "post", 409, &body);
    let (status, _) = api.post("/api/v1/events/nope:0/replay", None).await;
    assert_eq!(status, 404);

    // Replaying every dead letter of a filter.
    let (status, bulk) = api.post("/api/v1/events/replay?status=dead", None).await;
    assert_eq!(status, 202, "{bulk}");
    conforms("/api/v1/events/replay", "post", 202, &bulk);
    assert_eq!(bulk["matched"], 1);
    assert_eq!(bulk["replayed"], 1);
    api.wait_for("n1:0", "dead").await;

    // Unparsed deliveries: listed, shown with their body, deleted.
    let response = app.post_signed(b"not json at all", Some("u1")).await;
    assert_eq!(response.status(), 202);
    let (status, list) = api.get("/api/v1/unparsed").await;
    assert_eq!(status, 200);
    conforms("/api/v1/unparsed", "get", 200, &list);
    let id = list["data"][0]["id"].as_i64().unwrap();
    assert_eq!(list["data"][0]["key"], "u1");
    let (status, one) = api.get(&format!("/api/v1/unparsed/{id}")).await;
    assert_eq!(status, 200);
    conforms("/api/v1/unparsed/{id}", "get", 200, &one);
    assert_eq!(one["body"], "not json at all");
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/unparsed/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, _) = api.get(&format!("/api/v1/unparsed/{id}")).await;
    assert_eq!(status, 404);

    // Status.
    let (status, state) = api.get("/api/v1/status").await;
    assert_eq!(status, 200);
    conforms("/api/v1/status", "get", 200, &state);
    assert_eq!(state["journal"]["health"]["state"], "up");
    assert_eq!(state["attio"]["state"], "disabled");
    assert!(state["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "file"));

    // The console's session cookie works for the API; its mutations must come from the console.
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(app.url("/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let listed = app
        .client
        .get(app.url("/api/v1/events?limit=1"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let cross_site = app
        .client
        .post(app.url("/api/v1/events/d1:0/replay"))
        .header("cookie", &session)
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let no_origin = app
        .client
        .post(app.url("/api/v1/events/d1:0/replay"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(no_origin.status(), 403);
    let same_origin = app
        .client
        .post(app.url("/api/v1/events/d1:0/replay"))
        .header("cookie", &session)
        .header("origin", format!("http://{}", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), 202);
}

#[tokio::test]
async fn the_api_answers_on_the_embedded_journal() {
    the_api_answers(spawn(false).await).await;
}

#[tokio::test]
async fn the_api_answers_on_the_redis_journal() {
    the_api_answers(spawn(true).await).await;
}
