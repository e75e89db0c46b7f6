//! The events API (`/api/v1`, JSON): the contract the console and the `events` command are
//! built on, described in `docs/openapi.yaml` (checked against these handlers by the
//! integration tests).
//!
//! In: requests admitted by [`auth`]. Out: the event history (list with filters and cursor
//! pages, detail), replays, unparsed deliveries, the daemon's status, and a server-sent stream
//! of status changes. Served on `admin.listen` when set, else on `server.listen` (see `app`).

pub(crate) mod auth;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::dedupe::DedupeStore;
use crate::enrich::Enricher;
use crate::journal::history::{
    Changes, EventStatus, HistoryQuery, UnparsedSummary, DEFAULT_LIMIT, MAX_LIMIT,
};
use crate::journal::{Journal, JournalError, ReplayReport, ReplaySelection, UnparsedSelection};
use crate::worker::outage::Outages;

use self::auth::{Auth, Refusal};

/// Most events one `POST /api/v1/events/replay` replays.
pub(crate) const MAX_BULK_REPLAY: usize = 1000;

/// What the API handlers share.
pub(crate) struct ApiState {
    pub(crate) journal: Journal,
    pub(crate) dedupe: DedupeStore,
    pub(crate) changes: Changes,
    pub(crate) outages: Arc<Outages>,
    pub(crate) enricher: Enricher,
    pub(crate) auth: Auth,
    pub(crate) started: Instant,
    /// Ends the open streams when the daemon shuts down.
    pub(crate) shutdown: CancellationToken,
}

/// A refusal or failure, answered as `{"error": code, "message": text}`.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Unauthorized,
    Forbidden(String),
    Throttled(std::time::Duration),
    Unavailable(String),
}

impl From<JournalError> for ApiError {
    fn from(error: JournalError) -> Self {
        // Logged once here; the caller learns only that the journal did not answer.
        tracing::warn!(%error, "events API: journal error");
        ApiError::Unavailable("the journal did not answer; try again".to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthorized => ApiError::Unauthorized,
            Refusal::Throttled(wait) => ApiError::Throttled(wait),
            Refusal::CrossSite => ApiError::Forbidden(
                "a mutation with the session cookie must come from the console's own origin"
                    .to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <ATTIO_WEBHOOKS_ADMIN_TOKEN>".to_string(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::Throttled(wait) => {
                let body = json!({
                    "error": "too_many_attempts",
                    "message": "too many failed attempts; try again later",
                });
                let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                if let Ok(value) = wait.as_secs().max(1).to_string().parse() {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return response;
            }
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        };
        let mut response =
            (status, Json(json!({ "error": code, "message": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The API's routes, behind [`require_auth`].
pub(crate) fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/replay", post(replay_matching))
        .route("/api/v1/events/{id}", get(show_event))
        .route("/api/v1/events/{id}/replay", post(replay_event))
        .route("/api/v1/unparsed", get(list_unparsed))
        .route(
            "/api/v1/unparsed/{id}",
            get(show_unparsed).delete(delete_unparsed),
        )
        .route("/api/v1/status", get(status))
        .route("/api/v1/stream", get(stream))
        // route_layer: only these routes need a session/token; a path no route matches stays a
        // 404 on the listener the API shares (not a redirect to the login page).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_auth,
        ))
        .with_state(state)
}

async fn require_auth(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    match state.auth.admit(request.method(), request.headers()) {
        Ok(_) => next.run(request).await,
        Err(refusal) => ApiError::from(refusal).into_response(),
    }
}

/// The list filters, as query parameters (the same for `GET /events`, `POST /events/replay`, the
/// console and `events list`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ListParams {
    pub(crate) status: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) object: Option<String>,
    pub(crate) list: Option<String>,
    pub(crate) sink: Option<String>,
    pub(crate) since: Option<String>,
    pub(crate) until: Option<String>,
    pub(crate) q: Option<String>,
    pub(crate) limit: Option<String>,
    pub(crate) cursor: Option<String>,
}

fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A page's `limit`: from 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when not given.
fn page_limit(limit: &Option<String>) -> Result<usize, ApiError> {
    given(limit)
        .map(|l| match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "limit must be a number from 1 to {MAX_LIMIT}, got {l:?}"
            ))),
        })
        .transpose()
        .map(|limit| limit.unwrap_or(DEFAULT_LIMIT))
}

fn time(name: &str, value: &Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    given(value)
        .map(|text| {
            DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "{name} must be an RFC 3339 time such as 2026-11-29T18:00:00Z, got {text:?}"
                    ))
                })
        })
        .transpose()
}

impl ListParams {
    /// The history query these parameters ask for, or what is wrong with them.
    pub(crate) fn query(&self) -> Result<HistoryQuery, ApiError> {
        let status = given(&self.status)
            .map(|s| {
                EventStatus::parse(&s).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "status must be pending, retrying, delivered or dead, got {s:?}"
                    ))
                })
            })
            .transpose()?;
        let limit = page_limit(&self.limit)?;
        let cursor = given(&self.cursor)
            .map(|c| {
                c.parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "cursor must be a next_cursor from an earlier page, got {c:?}"
                    ))
                })
            })
            .transpose()?;
        Ok(HistoryQuery {
            status,
            event_type: given(&self.event_type),
            object: given(&self.object),
            list: given(&self.list),
            sink: given(&self.sink),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            q: given(&self.q),
            limit,
            cursor,
        })
    }
}

async fn list_events(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let query = params.query()?;
    let page = state.journal.history(&query).await?;
    Ok(Json(page).into_response())
}

async fn show_event(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.journal.history_event(&id).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError::NotFound(format!(
            "no event {id:?} (unknown, or older than storage.history)"
        ))),
    }
}

/// The optional body of the replay endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    sink: Option<String>,
}

fn replay_body(body: &Bytes) -> Result<ReplayBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ReplayBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be empty or {{\"sink\": \"name\"}}: {e}"
        ))
    })
}

/// Replays the named events (dead letters and delivered ones), as `dead-letters replay` does,
/// and announces the ones put back. Delivered events first lose their done mark in the dedupe
/// store, or the worker would skip them as duplicates.
pub(crate) async fn replay(
    state: &ApiState,
    ids: Vec<String>,
    sink: Option<&str>,
) -> Result<ReplayReport, ApiError> {
    for id in &ids {
        if let Err(error) = state.dedupe.forget(id).await {
            tracing::warn!(%error, "replay: the dedupe store did not answer");
            return Err(ApiError::Unavailable(
                "the dedupe store did not answer; try again".to_string(),
            ));
        }
    }
    let report = state
        .journal
        .replay(&ReplaySelection::Ids(ids), sink, true)
        .await?;
    for id in &report.replayed {
        let event_type = match state.journal.history_event(id).await {
            Ok(Some(detail)) => detail.event_type,
            _ => String::new(),
        };
        state.changes.publish(id, &event_type, EventStatus::Pending);
    }
    Ok(report)
}

async fn replay_event(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = replay_body(&body)?;
    if state.journal.history_event(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "no event {id:?} (unknown, or older than storage.history)"
        )));
    }
    let report = replay(&state, vec![id], body.sink.as_deref()).await?;
    if let Some(skipped) = report.skipped.first() {
        return Err(ApiError::Conflict(format!(
            "{} was not replayed: {}",
            skipped.id, skipped.reason
        )));
    }
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

async fn replay_matching(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<ListParams>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = replay_body(&body)?;
    let mut query = params.query()?;
    query.limit = MAX_LIMIT;
    let mut ids = Vec::new();
    let mut truncated = false;
    loop {
        let page = state.journal.history(&query).await?;
        ids.extend(
            page.data
                .into_iter()
                .filter(|e| matches!(e.status, EventStatus::Dead | EventStatus::Delivered))
                .map(|e| e.id),
        );
        match page.next_cursor.and_then(|c| c.parse().ok()) {
            Some(cursor) if ids.len() < MAX_BULK_REPLAY => query.cursor = Some(cursor),
            Some(_) => {
                truncated = true;
                break;
            }
            None => break,
        }
    }
    if ids.len() > MAX_BULK_REPLAY {
        ids.truncate(MAX_BULK_REPLAY);
        truncated = true;
    }
    let matched = ids.len();
    let report = replay(&state, ids, body.sink.as_deref()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "matched": matched,
            "replayed": report.replayed.len(),
            "skipped": report.skipped,
            "truncated": truncated,
        })),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct UnparsedParams {
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list_unparsed(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<UnparsedParams>,
) -> Result<Response, ApiError> {
    let limit = page_limit(&params.limit)?;
    let before = given(&params.cursor)
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!("cursor must be a next_cursor, got {c:?}"))
            })
        })
        .transpose()?;
    let mut found = state.journal.unparsed(limit + 1, before).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next_cursor = more
        .then(|| found.last().map(|u: &UnparsedSummary| u.id.to_string()))
        .flatten();
    Ok(Json(json!({ "data": found, "next_cursor": next_cursor })).into_response())
}

fn unparsed_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("no unparsed delivery {id:?}")))
}

async fn show_unparsed(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(found) = state.journal.unparsed_delivery(unparsed_id(&id)?).await? else {
        return Err(ApiError::NotFound(format!("no unparsed delivery {id:?}")));
    };
    let mut value = serde_json::to_value(&found.summary).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert(
            "body".into(),
            std::str::from_utf8(&found.body)
                .map(|text| Value::String(text.to_string()))
                .unwrap_or(Value::Null),
        );
        map.insert(
            "body_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(&found.body)
                .into(),
        );
    }
    Ok(Json(value).into_response())
}

async fn delete_unparsed(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let selection = UnparsedSelection::Ids(vec![unparsed_id(&id)?]);
    if !state.journal.delete_unparsed(&selection).await?.is_empty() {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("no unparsed delivery {id:?}")))
    }
}

/// The daemon's state, for the status page and monitoring.
pub(crate) async fn status_value(state: &ApiState) -> Value {
    let journal_probe = state.journal.probe().await;
    let oldest = state.journal.oldest_pending_age().await.ok().flatten();
    let dedupe_ping = state.dedupe.ping().await;
    let attio = match state.enricher.attio_unavailable_for() {
        None => json!({ "enrichment": "disabled", "state": "disabled" }),
        Some(None) => json!({ "enrichment": "enabled", "state": "up", "breaker": "closed" }),
        Some(Some(wait)) => json!({
            "enrichment": "enabled",
            "state": "down",
            "breaker": "open",
            "retry_in_seconds": wait.as_secs_f64(),
        }),
    };
    let attio = match (attio, state.outages.attio.down_for()) {
        (Value::Object(mut map), Some(down)) => {
            map.insert("state".into(), "down".into());
            map.insert("down_for_seconds".into(), down.as_secs_f64().into());
            Value::Object(map)
        }
        (attio, _) => attio,
    };
    let sinks: Vec<Value> = state
        .outages
        .sinks_down()
        .into_iter()
        .map(|(name, down)| match down {
            None => json!({ "name": name, "state": "up" }),
            Some(down) => json!({
                "name": name,
                "state": "down",
                "down_for_seconds": down.as_secs_f64(),
                "down_since": (Utc::now() - chrono::Duration::from_std(down).unwrap_or_default())
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }),
        })
        .collect();
    let health = |result: Result<(), String>| match result {
        Ok(()) => json!({ "state": "up" }),
        Err(error) => json!({ "state": "down", "error": error }),
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "backlog": state.journal.backlog(),
        "oldest_pending_age_seconds": oldest.map(|age| age.as_secs_f64()),
        "journal": {
            "backend": state.journal.name(),
            "health": health(journal_probe.map_err(|e| e.to_string())),
        },
        "dedupe": {
            "backend": state.dedupe.name(),
            "health": health(dedupe_ping.map_err(|e| e.to_string())),
        },
        "attio": attio,
        "sinks": sinks,
    })
}

async fn status(State(state): State<Arc<ApiState>>) -> Response {
    Json(status_value(&state).await).into_response()
}

/// Server-sent events: one `status` event per change (`{"id", "event_type", "status", "at"}`),
/// and `lagged` when this listener fell behind and missed some. Ends when the daemon stops.
async fn stream(State(state): State<Arc<ApiState>>) -> Response {
    let receiver = state.changes.subscribe();
    let shutdown = state.shutdown.clone();
    let events = futures_util::stream::unfold(
        (receiver, shutdown),
        |(mut receiver, shutdown)| async move {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return None,
                next = receiver.recv() => next,
            };
            let event = match next {
                Ok(change) => SseEvent::default()
                    .event("status")
                    .json_data(&change)
                    .unwrap_or_else(|_| SseEvent::default().event("lagged")),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    SseEvent::default().event("lagged").data(missed.to_string())
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (receiver, shutdown),
            ))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
