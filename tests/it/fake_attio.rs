//! A fake Attio REST API: a real axum server on 127.0.0.1:0 that answers the endpoints the
//! daemon uses with realistic bodies, records every request it saw (method, path, query, body,
//! headers, arrival time), and can be told to misbehave: scripted one-off answers, a delay,
//! "down" (503 for everything), resources that no longer exist, flaky (a share of requests
//! answered 429 with an HTTP-date `Retry-After`, or 500, closing the connection), and slow to
//! accept connections (as a distant server's TCP and TLS handshakes are).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const WORKSPACE_ID: &str = "14beef7a-99f7-4534-a87e-70b564330a4c";
pub const API_KEY: &str = "test-attio-key-0123";

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub body: Option<Value>,
    pub raw_body: Vec<u8>,
    pub headers: HeaderMap,
    pub at: SystemTime,
    pub instant: Instant,
}

/// A one-off answer for the next request whose path contains `path_contains`.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub path_contains: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Default)]
struct FakeState {
    seen: Mutex<Vec<Seen>>,
    scripted: Mutex<VecDeque<Scripted>>,
    down: AtomicBool,
    delay_ms: AtomicU64,
    gone: Mutex<HashSet<String>>,
    slugs: Mutex<HashMap<String, String>>,
    webhooks: Mutex<Vec<Value>>,
    objects: Mutex<Vec<(String, String)>>,
    lists: Mutex<Vec<(String, String)>>,
    attributes: Mutex<HashMap<String, Vec<(String, String)>>>,
    flaky_percent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
}

/// Accepts connections one at a time, each after `delay_ms` (the handshake of a distant server).
struct SlowAccept {
    listener: tokio::net::TcpListener,
    delay_ms: Arc<AtomicU64>,
}

impl axum::serve::Listener for SlowAccept {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let accepted = axum::serve::Listener::accept(&mut self.listener).await;
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        accepted
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

pub struct FakeAttio {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
    connect_delay_ms: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for FakeAttio {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeAttio {
    pub async fn start() -> FakeAttio {
        let state = Arc::new(FakeState::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect_delay_ms = Arc::new(AtomicU64::new(0));
        let listener = SlowAccept {
            listener,
            delay_ms: connect_delay_ms.clone(),
        };
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await;
        });
        FakeAttio {
            addr,
            state,
            connect_delay_ms,
            stop,
        }
    }

    /// From now on about `percent`% of requests (a fixed pseudo-random choice) are answered, half
    /// 429 `rate_limit_exceeded` with `Retry-After` as an HTTP date (the next second, as Attio
    /// sends it), half 500; both close the connection.
    pub fn set_flaky(&self, percent: u64) {
        self.state.flaky_percent.store(percent, Ordering::SeqCst);
    }

    /// Each new connection is accepted only after `delay`, one at a time.
    pub fn set_connect_delay(&self, delay: Duration) {
        self.connect_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests answered with a flaky failure (429 or 500) so far.
    pub fn flaky_failures(&self) -> u64 {
        self.state.failed.load(Ordering::SeqCst)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Settings TOML pointing the daemon (or a client) at this fake with [`API_KEY`].
    pub fn attio_toml(&self, extra: &str) -> String {
        format!(
            "[attio]\nbase_url = \"{}\"\napi_key = \"{API_KEY}\"\n{extra}\n",
            self.base_url()
        )
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn seen_under(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }

    pub fn script(&self, path_contains: &str, status: u16, headers: &[(&str, &str)], body: &str) {
        self.state.scripted.lock().unwrap().push_back(Scripted {
            path_contains: path_contains.to_string(),
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        });
    }

    /// Everything answers 503 while down.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// `path` answers 404 `not_found` from now on.
    pub fn remove(&self, path: &str) {
        self.state.gone.lock().unwrap().insert(path.to_string());
    }

    /// The `api_slug` answered for the object, list or attribute with this id.
    pub fn set_slug(&self, id: &str, slug: &str) {
        self.state
            .slugs
            .lock()
            .unwrap()
            .insert(id.to_string(), slug.to_string());
    }

    /// The workspace's objects as `(id, api_slug)`, answered by `GET /v2/objects` (and their
    /// slugs by `GET /v2/objects/{id}`).
    pub fn set_objects(&self, objects: &[(&str, &str)]) {
        for (id, slug) in objects {
            self.set_slug(id, slug);
        }
        *self.state.objects.lock().unwrap() = pairs(objects);
    }

    /// The workspace's lists as `(id, api_slug)`, answered by `GET /v2/lists`.
    pub fn set_lists(&self, lists: &[(&str, &str)]) {
        for (id, slug) in lists {
            self.set_slug(id, slug);
        }
        *self.state.lists.lock().unwrap() = pairs(lists);
    }

    /// The attributes of the object or list `parent_id` as `(id, api_slug)`, answered by
    /// `GET /v2/{objects|lists}/{parent_id}/attributes`.
    pub fn set_attributes(&self, parent_id: &str, attributes: &[(&str, &str)]) {
        for (id, slug) in attributes {
            self.set_slug(id, slug);
        }
        self.state
            .attributes
            .lock()
            .unwrap()
            .insert(parent_id.to_string(), pairs(attributes));
    }

    /// The webhooks the fake holds now.
    pub fn webhooks(&self) -> Vec<Value> {
        self.state.webhooks.lock().unwrap().clone()
    }

    /// Adds `count` webhooks to the fake's list.
    pub fn add_webhooks(&self, count: usize) {
        let mut webhooks = self.state.webhooks.lock().unwrap();
        for _ in 0..count {
            let id = uuid::Uuid::new_v4().to_string();
            webhooks.push(webhook_json(
                &id,
                "https://example.com/hook",
                json!([
                    {"event_type": "record.updated", "filter": null}
                ]),
            ));
        }
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn webhook_json(id: &str, target_url: &str, subscriptions: Value) -> Value {
    json!({
        "id": {"workspace_id": WORKSPACE_ID, "webhook_id": id},
        "target_url": target_url,
        "subscriptions": subscriptions,
        "status": "active",
        "created_at": "2023-04-27T13:22:49.061281000Z"
    })
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (
        status,
        [("content-type", "application/json")],
        json!({"status_code": status.as_u16(), "type": kind, "code": code, "message": message})
            .to_string(),
    )
        .into_response()
}

fn data(value: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({ "data": value }).to_string(),
    )
        .into_response()
}

async fn answer(State(state): State<Arc<FakeState>>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let raw = axum::body::to_bytes(body, 10 * 1024 * 1024)
        .await
        .unwrap_or_else(|_| Bytes::new());
    let uri: Uri = parts.uri.clone();
    let path = uri.path().to_string();
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: path.clone(),
        query: uri.query().map(str::to_string),
        body: serde_json::from_slice(&raw).ok(),
        raw_body: raw.to_vec(),
        headers: parts.headers.clone(),
        at: SystemTime::now(),
        instant: Instant::now(),
    });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let percent = state.flaky_percent.load(Ordering::SeqCst);
    if percent > 0 {
        let n = state.answered.fetch_add(1, Ordering::SeqCst);
        // A fixed pseudo-random sequence (Fibonacci hashing): the same run every time.
        let draw = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100;
        if draw < percent {
            let failures = state.failed.fetch_add(1, Ordering::SeqCst);
            let mut response = if failures % 2 == 0 {
                let retry_at = SystemTime::now() + Duration::from_secs(1);
                let mut response = error(
                    429,
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    "Rate limit exceeded, please try again later",
                );
                response.headers_mut().insert(
                    "retry-after",
                    httpdate::fmt_http_date(retry_at).parse().unwrap(),
                );
                response
            } else {
                error(500, "api_error", "internal_server_error", "Flaky (fake)")
            };
            response
                .headers_mut()
                .insert("connection", "close".parse().unwrap());
            return response;
        }
    }
    let scripted = {
        let mut queue = state.scripted.lock().unwrap();
        let position = queue.iter().position(|s| path.contains(&s.path_contains));
        position.and_then(|p| queue.remove(p))
    };
    if let Some(scripted) = scripted {
        let mut response = Response::builder().status(scripted.status);
        for (name, value) in &scripted.headers {
            response = response.header(name, value);
        }
        return response.body(Body::from(scripted.body)).unwrap();
    }
    if state.down.load(Ordering::SeqCst) {
        return error(
            503,
            "api_error",
            "service_unavailable",
            "Attio is down (fake)",
        );
    }
    let authorized = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {API_KEY}"));
    if !authorized {
        return error(401, "auth_error", "unauthorized", "Invalid API key");
    }
    if state.gone.lock().unwrap().contains(&path) {
        return error(
            404,
            "invalid_request_error",
            "not_found",
            "Not found (fake)",
        );
    }
    let slug = |id: &str, default: &str| {
        state
            .slugs
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = parts.method.clone();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v2", "self"]) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            json!({"active": true, "workspace_id": WORKSPACE_ID, "workspace_name": "Fake"})
                .to_string(),
        )
            .into_response(),
        ("GET", ["v2", "objects"]) => {
            let objects = state.objects.lock().unwrap().clone();
            if objects.is_empty() {
                data(json!([object_json("o-1", &slug("o-1", "people"))]))
            } else {
                data(Value::Array(
                    objects.iter().map(|(id, s)| object_json(id, s)).collect(),
                ))
            }
        }
        ("GET", ["v2", "lists"]) => {
            let lists = state.lists.lock().unwrap().clone();
            if lists.is_empty() {
                data(json!([list_json("l-1", &slug("l-1", "pipeline"))]))
            } else {
                data(Value::Array(
                    lists.iter().map(|(id, s)| list_json(id, s)).collect(),
                ))
            }
        }
        ("GET", ["v2", "objects", object]) => data(object_json(object, &slug(object, "deals"))),
        ("GET", ["v2", "objects", object, "records", record]) => data(json!({
            "id": {"workspace_id": WORKSPACE_ID, "object_id": object, "record_id": record},
            "created_at": "2023-01-01T15:00:00.000000000Z",
            "web_url": format!("https://app.attio.com/fake/{record}"),
            "values": {"name": [{"value": format!("Record {record}"), "attribute_type": "text"}]}
        })),
        ("GET", ["v2", "objects" | "lists", parent, "attributes"]) => {
            let configured = state.attributes.lock().unwrap().get(*parent).cloned();
            match configured {
                Some(attributes) => data(Value::Array(
                    attributes
                        .iter()
                        .map(|(id, s)| attribute_json(parent, id, s))
                        .collect(),
                )),
                None => data(json!([attribute_json(
                    parent,
                    "a-1",
                    &slug("a-1", "stage")
                )])),
            }
        }
        ("GET", ["v2", "objects" | "lists", parent, "attributes", attribute]) => {
            data(attribute_json(parent, attribute, &slug(attribute, "stage")))
        }
        ("GET", ["v2", "lists", list]) => data(list_json(list, &slug(list, "pipeline"))),
        ("GET", ["v2", "lists", list, "entries", entry]) => data(json!({
            "id": {"workspace_id": WORKSPACE_ID, "list_id": list, "entry_id": entry},
            "parent_record_id": "891dcbfc-9141-415d-9b2a-2238a6cc012d",
            "parent_object": "people",
            "created_at": "2022-11-21T13:22:49.061281000Z",
            "entry_values": {"stage": [{"status": {"title": "In Progress"}}]}
        })),
        ("GET", ["v2", "notes", note]) => data(json!({
            "id": {"workspace_id": WORKSPACE_ID, "note_id": note},
            "parent_object": "people", "parent_record_id": "r", "title": "A note",
            "content_plaintext": "Hello"
        })),
        ("GET", ["v2", "tasks", task]) => data(json!({
            "id": {"workspace_id": WORKSPACE_ID, "task_id": task},
            "content_plaintext": "Call back", "is_completed": false
        })),
        ("GET", ["v2", "comments", comment]) => data(json!({
            "id": {"workspace_id": WORKSPACE_ID, "comment_id": comment},
            "thread_id": "t", "content_plaintext": "Nice"
        })),
        ("GET", ["v2", "workspace_members", member]) => data(json!({
            "id": {"workspace_id": WORKSPACE_ID, "workspace_member_id": member},
            "first_name": "Ada", "last_name": "Lovelace", "email_address": "ada@example.com"
        })),
        ("GET", ["v2", "meetings", meeting, "call_recordings", recording]) => data(json!({
            "id": {"workspace_id": WORKSPACE_ID, "meeting_id": meeting, "call_recording_id": recording},
            "status": "completed"
        })),
        ("GET", ["v2", "webhooks"]) => {
            let query: HashMap<String, String> = uri
                .query()
                .map(|q| {
                    q.split('&')
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let limit: usize = query
                .get("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10);
            let offset: usize = query
                .get("offset")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let webhooks = state.webhooks.lock().unwrap();
            let page: Vec<Value> = webhooks.iter().skip(offset).take(limit).cloned().collect();
            data(Value::Array(page))
        }
        ("POST", ["v2", "webhooks"]) => {
            let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            // Attio refuses a (target_url, event_type, filter) it already has.
            let target = &body["data"]["target_url"];
            let wanted = body["data"]["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let taken = state.webhooks.lock().unwrap().iter().any(|existing| {
                existing["target_url"] == *target
                    && existing["subscriptions"]
                        .as_array()
                        .is_some_and(|have| have.iter().any(|s| wanted.contains(s)))
            });
            if taken {
                return error(
                    409,
                    "invalid_request_error",
                    "uniqueness_conflict",
                    "A webhook subscription with the same target URL, event type and filter already exists.",
                );
            }
            let id = uuid::Uuid::new_v4().to_string();
            let mut webhook = webhook_json(
                &id,
                body["data"]["target_url"].as_str().unwrap_or_default(),
                body["data"]["subscriptions"].clone(),
            );
            state.webhooks.lock().unwrap().push(webhook.clone());
            webhook["secret"] =
                json!("ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb");
            data(webhook)
        }
        (verb, ["v2", "webhooks", id]) => {
            let mut webhooks = state.webhooks.lock().unwrap();
            let Some(position) = webhooks.iter().position(|w| w["id"]["webhook_id"] == *id) else {
                return error(
                    404,
                    "invalid_request_error",
                    "not_found",
                    "Webhook not found",
                );
            };
            match verb {
                "GET" => data(webhooks[position].clone()),
                "DELETE" => {
                    webhooks.remove(position);
                    (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
                }
                "PATCH" => {
                    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                    if let Some(url) = body["data"].get("target_url") {
                        webhooks[position]["target_url"] = url.clone();
                    }
                    if let Some(subscriptions) = body["data"].get("subscriptions") {
                        webhooks[position]["subscriptions"] = subscriptions.clone();
                    }
                    data(webhooks[position].clone())
                }
                _ => error(405, "invalid_request_error", "method_not_allowed", "no"),
            }
        }
        _ => error(
            404,
            "invalid_request_error",
            "not_found",
            "No such endpoint (fake)",
        ),
    }
}

fn object_json(id: &str, slug: &str) -> Value {
    json!({
        "id": {"workspace_id": WORKSPACE_ID, "object_id": id},
        "api_slug": slug, "singular_noun": "Deal", "plural_noun": "Deals",
        "created_at": "2022-11-21T13:22:49.061281000Z"
    })
}

fn list_json(id: &str, slug: &str) -> Value {
    json!({
        "id": {"workspace_id": WORKSPACE_ID, "list_id": id},
        "api_slug": slug, "name": "Pipeline", "parent_object": ["companies"]
    })
}

fn attribute_json(parent: &str, id: &str, slug: &str) -> Value {
    json!({
        "id": {"workspace_id": WORKSPACE_ID, "object_id": parent, "attribute_id": id},
        "title": "Stage", "api_slug": slug, "type": "status"
    })
}
