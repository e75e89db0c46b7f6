//! A fake Attio workspace with state, for the PostgreSQL mirror: a real axum server on
//! 127.0.0.1:0 holding objects, lists, attributes, records, entries, notes, tasks, comments and
//! workspace members, answering the single-resource reads enrichment makes and the paged list
//! endpoints `sync` walks (`POST .../records/query`, `POST .../entries/query`, `GET /v2/notes`,
//! `GET /v2/tasks`, `GET /v2/workspace_members`). It can answer every `n`th list request with a
//! 429 (an HTTP-date `Retry-After`, as Attio sends it) and records when each request arrived.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const WORKSPACE: &str = "14beef7a-99f7-4534-a87e-70b564330a4c";
pub const API_KEY: &str = "test-attio-key-0123";

#[derive(Default)]
struct Workspace {
    objects: BTreeMap<String, Value>,
    lists: BTreeMap<String, Value>,
    attributes: BTreeMap<String, Vec<Value>>,
    /// object id → records in creation order.
    records: BTreeMap<String, Vec<Value>>,
    entries: BTreeMap<String, Vec<Value>>,
    notes: Vec<Value>,
    tasks: Vec<Value>,
    comments: Vec<Value>,
    members: Vec<Value>,
}

#[derive(Default)]
struct FakeState {
    workspace: Mutex<Workspace>,
    /// (path, when) of every request.
    seen: Mutex<Vec<(String, Instant)>>,
    /// Every `n`th list request is answered 429; 0: never.
    throttle_every: AtomicU64,
    list_requests: AtomicU64,
    throttled: AtomicU64,
}

pub struct FakeWorkspace {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
    stop: CancellationToken,
}

impl Drop for FakeWorkspace {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An attribute as Attio describes it.
pub fn attribute(parent_id: &str, slug: &str, kind: &str, multiselect: bool) -> Value {
    json!({
        "id": {"workspace_id": WORKSPACE, "object_id": parent_id, "attribute_id": uuid()},
        "title": slug, "api_slug": slug, "type": kind, "is_multiselect": multiselect,
        "is_archived": false
    })
}

/// One current value of an attribute, as Attio answers it.
pub fn value(kind: &str, body: Value) -> Value {
    let mut value = body;
    value["active_from"] = json!("2023-01-01T15:00:00.000000000Z");
    value["active_until"] = Value::Null;
    value["attribute_type"] = json!(kind);
    value
}

impl FakeWorkspace {
    pub async fn start() -> FakeWorkspace {
        let state = Arc::new(FakeState::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await;
        });
        FakeWorkspace { addr, state, stop }
    }

    /// `[attio]` settings pointing at this fake.
    pub fn attio_toml(&self, extra: &str) -> String {
        format!(
            "[attio]\nbase_url = \"http://{}\"\napi_key = \"{API_KEY}\"\n{extra}\n",
            self.addr
        )
    }

    fn workspace(&self) -> std::sync::MutexGuard<'_, Workspace> {
        self.state.workspace.lock().unwrap()
    }

    pub fn add_object(&self, object_id: &str, slug: &str, attributes: Vec<Value>) {
        let mut workspace = self.workspace();
        workspace.objects.insert(
            object_id.to_string(),
            json!({"id": {"workspace_id": WORKSPACE, "object_id": object_id}, "api_slug": slug,
                   "singular_noun": slug, "plural_noun": slug, "created_at": "2023-01-01T15:00:00.000000000Z"}),
        );
        workspace
            .attributes
            .insert(object_id.to_string(), attributes);
    }

    pub fn add_list(&self, list_id: &str, slug: &str, attributes: Vec<Value>) {
        let mut workspace = self.workspace();
        workspace.lists.insert(
            list_id.to_string(),
            json!({"id": {"workspace_id": WORKSPACE, "list_id": list_id}, "api_slug": slug,
                   "name": slug, "parent_object": ["deals"], "created_at": "2023-01-01T15:00:00.000000000Z"}),
        );
        workspace.attributes.insert(list_id.to_string(), attributes);
    }

    /// The id of the only list (the tests make one).
    pub fn workspace_list_id(&self) -> String {
        self.workspace().lists.keys().next().cloned().unwrap()
    }

    pub fn remove_list(&self, list_id: &str) {
        self.workspace().lists.remove(list_id);
    }

    /// Changes an attribute's slug (and moves the values of every record to it, as Attio does).
    pub fn rename_attribute(&self, parent_id: &str, old: &str, new: &str) -> String {
        let mut workspace = self.workspace();
        let attributes = workspace.attributes.get_mut(parent_id).unwrap();
        let attribute = attributes
            .iter_mut()
            .find(|a| a["api_slug"] == old)
            .unwrap();
        attribute["api_slug"] = json!(new);
        let id = attribute["id"]["attribute_id"]
            .as_str()
            .unwrap()
            .to_string();
        for record in workspace.records.get_mut(parent_id).into_iter().flatten() {
            let values = record["values"].as_object_mut().unwrap();
            if let Some(moved) = values.remove(old) {
                values.insert(new.to_string(), moved);
            }
        }
        id
    }

    pub fn attribute_id(&self, parent_id: &str, slug: &str) -> String {
        self.workspace().attributes[parent_id]
            .iter()
            .find(|a| a["api_slug"] == slug)
            .unwrap()["id"]["attribute_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Adds or replaces a record with these values.
    pub fn put_record(&self, object_id: &str, record_id: &str, values: Value) {
        let record = json!({
            "id": {"workspace_id": WORKSPACE, "object_id": object_id, "record_id": record_id},
            "created_at": "2023-01-01T15:00:00.000000000Z",
            "web_url": format!("https://app.attio.com/fake/{record_id}"),
            "values": values
        });
        let mut workspace = self.workspace();
        let records = workspace.records.entry(object_id.to_string()).or_default();
        match records
            .iter_mut()
            .find(|r| r["id"]["record_id"] == record_id)
        {
            Some(existing) => *existing = record,
            None => records.push(record),
        }
    }

    /// Appends new records (ids not yet in the workspace) in one go.
    pub fn add_records(&self, object_id: &str, records: Vec<(String, Value)>) {
        let mut workspace = self.workspace();
        let list = workspace.records.entry(object_id.to_string()).or_default();
        for (record_id, values) in records {
            list.push(json!({
                "id": {"workspace_id": WORKSPACE, "object_id": object_id, "record_id": record_id},
                "created_at": "2023-01-01T15:00:00.000000000Z",
                "web_url": format!("https://app.attio.com/fake/{record_id}"),
                "values": values
            }));
        }
    }

    pub fn remove_record(&self, object_id: &str, record_id: &str) {
        let mut workspace = self.workspace();
        if let Some(records) = workspace.records.get_mut(object_id) {
            records.retain(|r| r["id"]["record_id"] != record_id);
        }
    }

    pub fn put_entry(&self, list_id: &str, entry_id: &str, parent_record_id: &str, values: Value) {
        let entry = json!({
            "id": {"workspace_id": WORKSPACE, "list_id": list_id, "entry_id": entry_id},
            "parent_record_id": parent_record_id, "parent_object": "deals",
            "created_at": "2023-01-01T15:00:00.000000000Z", "entry_values": values
        });
        let mut workspace = self.workspace();
        let entries = workspace.entries.entry(list_id.to_string()).or_default();
        match entries.iter_mut().find(|e| e["id"]["entry_id"] == entry_id) {
            Some(existing) => *existing = entry,
            None => entries.push(entry),
        }
    }

    pub fn remove_entry(&self, list_id: &str, entry_id: &str) {
        let mut workspace = self.workspace();
        if let Some(entries) = workspace.entries.get_mut(list_id) {
            entries.retain(|e| e["id"]["entry_id"] != entry_id);
        }
    }

    pub fn put_note(&self, note_id: &str, title: &str, parent_record_id: &str) {
        let note = json!({
            "id": {"workspace_id": WORKSPACE, "note_id": note_id}, "parent_object": "deals",
            "parent_record_id": parent_record_id, "title": title, "content_plaintext": title,
            "created_by_actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"},
            "created_at": "2023-01-01T15:00:00.000000000Z"
        });
        put(&mut self.workspace().notes, "note_id", note_id, note);
    }

    pub fn remove_note(&self, note_id: &str) {
        self.workspace()
            .notes
            .retain(|n| n["id"]["note_id"] != note_id);
    }

    pub fn put_task(&self, task_id: &str, content: &str, completed: bool) {
        let task = json!({
            "id": {"workspace_id": WORKSPACE, "task_id": task_id}, "content_plaintext": content,
            "deadline_at": "2030-01-01T09:00:00.000000000Z", "is_completed": completed,
            "linked_records": [], "assignees": [], "created_at": "2023-01-01T15:00:00.000000000Z"
        });
        put(&mut self.workspace().tasks, "task_id", task_id, task);
    }

    pub fn remove_task(&self, task_id: &str) {
        self.workspace()
            .tasks
            .retain(|t| t["id"]["task_id"] != task_id);
    }

    pub fn put_comment(&self, comment_id: &str, object_id: &str, record_id: &str, resolved: bool) {
        let comment = json!({
            "id": {"workspace_id": WORKSPACE, "comment_id": comment_id}, "thread_id": uuid(),
            "content_plaintext": "Looks good", "record": {"object_id": object_id, "record_id": record_id},
            "entry": null, "resolved_at": if resolved { json!("2024-01-01T00:00:00Z") } else { Value::Null },
            "author": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"},
            "created_at": "2023-01-01T15:00:00.000000000Z"
        });
        put(
            &mut self.workspace().comments,
            "comment_id",
            comment_id,
            comment,
        );
    }

    pub fn remove_comment(&self, comment_id: &str) {
        self.workspace()
            .comments
            .retain(|c| c["id"]["comment_id"] != comment_id);
    }

    pub fn put_member(&self, member_id: &str, email: &str) {
        let member = json!({
            "id": {"workspace_id": WORKSPACE, "workspace_member_id": member_id},
            "first_name": "Ada", "last_name": "Lovelace", "avatar_url": null,
            "email_address": email, "access_level": "admin", "created_at": "2023-01-01T15:00:00.000000000Z"
        });
        put(
            &mut self.workspace().members,
            "workspace_member_id",
            member_id,
            member,
        );
    }

    /// From now on every `n`th list/query request is answered 429 (0: never).
    pub fn throttle_every(&self, n: u64) {
        self.state.throttle_every.store(n, Ordering::SeqCst);
    }

    pub fn throttled(&self) -> u64 {
        self.state.throttled.load(Ordering::SeqCst)
    }

    /// Arrival times of every request so far.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, at)| *at)
            .collect()
    }

    pub fn requests_under(&self, prefix: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .count()
    }
}

/// Most requests that arrived within any one second.
pub fn busiest_second(arrivals: &[Instant]) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

fn put(items: &mut Vec<Value>, key: &str, id: &str, item: Value) {
    match items.iter_mut().find(|i| i["id"][key] == id) {
        Some(existing) => *existing = item,
        None => items.push(item),
    }
}

fn error(status: u16, kind: &str, code: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        json!({"status_code": status, "type": kind, "code": code, "message": "fake"}).to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    error(404, "invalid_request_error", "not_found")
}

fn data(value: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({ "data": value }).to_string(),
    )
        .into_response()
}

fn found(value: Option<&Value>) -> Response {
    value.cloned().map(data).unwrap_or_else(not_found)
}

fn page(items: &[Value], offset: usize, limit: usize) -> Response {
    data(Value::Array(
        items.iter().skip(offset).take(limit).cloned().collect(),
    ))
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn answer(State(state): State<Arc<FakeState>>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let raw = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    state
        .seen
        .lock()
        .unwrap()
        .push((path.clone(), Instant::now()));
    let authorized = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {API_KEY}"));
    if !authorized {
        return error(401, "auth_error", "unauthorized");
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = parts.method.as_str();
    let is_list = matches!(
        (method, segments.as_slice()),
        ("POST", [.., "query"]) | ("GET", ["v2", "notes" | "tasks" | "workspace_members"])
    );
    if is_list {
        let every = state.throttle_every.load(Ordering::SeqCst);
        let n = state.list_requests.fetch_add(1, Ordering::SeqCst) + 1;
        if every > 0 && n % every == 0 {
            state.throttled.fetch_add(1, Ordering::SeqCst);
            let mut response = error(429, "rate_limit_error", "rate_limit_exceeded");
            let at = SystemTime::now() + Duration::from_secs(1);
            response
                .headers_mut()
                .insert("retry-after", httpdate::fmt_http_date(at).parse().unwrap());
            return response;
        }
    }
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let params = query_params(parts.uri.query());
    let number = |value: Option<u64>, default: usize| value.map_or(default, |v| v as usize);
    let workspace = state.workspace.lock().unwrap();
    match (method, segments.as_slice()) {
        ("GET", ["v2", "objects"]) => {
            data(Value::Array(workspace.objects.values().cloned().collect()))
        }
        ("GET", ["v2", "lists"]) => data(Value::Array(workspace.lists.values().cloned().collect())),
        ("GET", ["v2", "objects", object]) => found(workspace.objects.get(*object).or_else(|| {
            workspace
                .objects
                .values()
                .find(|o| o["api_slug"] == *object)
        })),
        ("GET", ["v2", "lists", list]) => found(
            workspace
                .lists
                .get(*list)
                .or_else(|| workspace.lists.values().find(|l| l["api_slug"] == *list)),
        ),
        ("GET", ["v2", "objects" | "lists", parent, "attributes"]) => {
            match workspace.attributes.get(*parent) {
                Some(attributes) => data(Value::Array(attributes.clone())),
                None => not_found(),
            }
        }
        ("GET", ["v2", "objects" | "lists", parent, "attributes", attribute]) => found(
            workspace
                .attributes
                .get(*parent)
                .and_then(|a| a.iter().find(|a| a["id"]["attribute_id"] == *attribute)),
        ),
        ("GET", ["v2", "objects", object, "records", record]) => found(
            workspace
                .records
                .get(*object)
                .and_then(|r| r.iter().find(|r| r["id"]["record_id"] == *record)),
        ),
        ("POST", ["v2", "objects", object, "records", "query"]) => {
            let id = workspace
                .objects
                .iter()
                .find(|(id, o)| id.as_str() == *object || o["api_slug"] == *object)
                .map(|(id, _)| id.clone());
            match id {
                Some(id) => page(
                    workspace.records.get(&id).map(Vec::as_slice).unwrap_or(&[]),
                    number(body["offset"].as_u64(), 0),
                    number(body["limit"].as_u64(), 500),
                ),
                None => not_found(),
            }
        }
        ("GET", ["v2", "lists", list, "entries", entry]) => found(
            workspace
                .entries
                .get(*list)
                .and_then(|e| e.iter().find(|e| e["id"]["entry_id"] == *entry)),
        ),
        ("POST", ["v2", "lists", list, "entries", "query"]) => {
            let id = workspace
                .lists
                .iter()
                .find(|(id, l)| id.as_str() == *list || l["api_slug"] == *list)
                .map(|(id, _)| id.clone());
            match id {
                Some(id) => page(
                    workspace.entries.get(&id).map(Vec::as_slice).unwrap_or(&[]),
                    number(body["offset"].as_u64(), 0),
                    number(body["limit"].as_u64(), 500),
                ),
                None => not_found(),
            }
        }
        ("GET", ["v2", "notes"]) => page(
            &workspace.notes,
            number(params.get("offset").and_then(|v| v.parse().ok()), 0),
            number(params.get("limit").and_then(|v| v.parse().ok()), 10).min(50),
        ),
        ("GET", ["v2", "notes", note]) => {
            found(workspace.notes.iter().find(|n| n["id"]["note_id"] == *note))
        }
        ("GET", ["v2", "tasks"]) => page(
            &workspace.tasks,
            number(params.get("offset").and_then(|v| v.parse().ok()), 0),
            number(params.get("limit").and_then(|v| v.parse().ok()), 500),
        ),
        ("GET", ["v2", "tasks", task]) => {
            found(workspace.tasks.iter().find(|t| t["id"]["task_id"] == *task))
        }
        ("GET", ["v2", "comments", comment]) => found(
            workspace
                .comments
                .iter()
                .find(|c| c["id"]["comment_id"] == *comment),
        ),
        ("GET", ["v2", "workspace_members"]) => data(Value::Array(workspace.members.clone())),
        ("GET", ["v2", "workspace_members", member]) => found(
            workspace
                .members
                .iter()
                .find(|m| m["id"]["workspace_member_id"] == *member),
        ),
        _ => not_found(),
    }
}
