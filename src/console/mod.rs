//! The web console (`/console`): server-rendered pages over the events API, served by the
//! daemon itself (no build step, no CDN: one small script, `console.js`, is compiled in).
//!
//! In: browser requests, admitted by the API's [`auth`](crate::api::auth) (a signed-in session,
//! or any local request when no token is set). Out: HTML pages (events, event detail, dead
//! letters, unparsed deliveries, status, sign-in) whose every control is a plain link or form,
//! so they work without JavaScript; with it, the events table follows `/api/v1/stream` live.
//! Statuses are shown in words as well as colour.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::api::auth::{Refusal, SESSION_COOKIE, SESSION_LIFETIME};
use crate::api::{ApiError, ApiState, ListParams};
use crate::journal::history::{EventStatus, EventSummary};

const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// The console's routes. The sign-in page and the script are open; the rest need a session.
pub(crate) fn router(state: Arc<ApiState>) -> Router {
    let protected = Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/events") }),
        )
        .route("/console/events", get(events))
        .route("/console/events/{id}", get(event))
        .route("/console/events/{id}/replay", post(replay_event))
        .route("/console/dead-letters", get(dead_letters))
        .route("/console/dead-letters/replay", post(replay_all))
        .route("/console/unparsed", get(unparsed))
        .route("/console/unparsed/{id}", get(unparsed_one))
        .route("/console/unparsed/{id}/delete", post(delete_unparsed))
        .route("/console/status", get(status))
        .route("/console/logout", post(logout))
        // route_layer: only these routes need a session/token; a path no route matches stays a
        // 404 on the listener the API shares (not a redirect to the login page).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/console/login", get(login_page).post(login))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
        .merge(protected)
        .with_state(state)
}

async fn require_session(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    match state.auth.admit(request.method(), request.headers()) {
        Ok(_) => next.run(request).await,
        Err(Refusal::Unauthorized) => Redirect::to("/console/login").into_response(),
        Err(refusal) => error_page(ApiError::from(refusal)),
    }
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a path segment or query value for a link.
fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                out.push(byte as char)
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · attio-webhooks</title>
<link rel="stylesheet" href="/console/console.css">
</head>
<body>
<header>
<nav aria-label="Console">
<strong>attio-webhooks</strong>
<a href="/console/events">Events</a>
<a href="/console/dead-letters">Dead letters</a>
<a href="/console/unparsed">Unparsed</a>
<a href="/console/status">Status</a>
<form method="post" action="/console/logout" class="inline"><button type="submit">Sign out</button></form>
</nav>
</header>
<main>
<h1>{title}</h1>
{body}
</main>
<script src="/console/console.js" defer></script>
</body>
</html>
"#,
        title = escape(title),
    ))
}

fn error_page(error: ApiError) -> Response {
    let response = error.into_response();
    let status = response.status();
    let message = match status {
        StatusCode::FORBIDDEN => "This action must be sent from the console's own pages.",
        StatusCode::TOO_MANY_REQUESTS => "Too many failed sign-ins. Wait a minute and try again.",
        StatusCode::NOT_FOUND => "Not found: unknown, or older than the history window.",
        StatusCode::CONFLICT => "That could not be done; see the event's state.",
        StatusCode::BAD_REQUEST => "A filter is not valid.",
        _ => "The journal did not answer. Try again.",
    };
    (
        status,
        page(
            status.canonical_reason().unwrap_or("Error"),
            &format!(
                "<p role=\"alert\">{}</p><p><a href=\"/console/events\">Back to the events</a></p>",
                escape(message)
            ),
        ),
    )
        .into_response()
}

fn status_badge(status: EventStatus) -> String {
    format!(
        "<span class=\"status status-{s}\">{s}</span>",
        s = status.as_str()
    )
}

/// "3 min ago" from an RFC 3339 time.
fn age(at: &str) -> String {
    let Ok(at) = DateTime::parse_from_rfc3339(at) else {
        return escape(at);
    };
    let seconds = (Utc::now() - at.with_timezone(&Utc)).num_seconds().max(0);
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=86_399 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

fn filters_form(action: &str, params: &ListParams, with_status: bool) -> String {
    let value = |v: &Option<String>| escape(v.as_deref().unwrap_or(""));
    let mut status = String::new();
    if with_status {
        let _ = write!(
            status,
            "<label>Status <select name=\"status\"><option value=\"\">any</option>"
        );
        for s in ["pending", "retrying", "delivered", "dead"] {
            let selected = if params.status.as_deref() == Some(s) {
                " selected"
            } else {
                ""
            };
            let _ = write!(status, "<option{selected}>{s}</option>");
        }
        status.push_str("</select></label>");
    }
    format!(
        r#"<form method="get" action="{action}" class="filters" role="search">
{status}
<label>Type <input name="event_type" value="{event_type}" placeholder="record.*"></label>
<label>Object <input name="object" value="{object}"></label>
<label>Sink <input name="sink" value="{sink}"></label>
<label>Text <input name="q" value="{q}" placeholder="event id, delivery key or record id"></label>
<button type="submit">Filter</button>
</form>"#,
        event_type = value(&params.event_type),
        object = value(&params.object),
        sink = value(&params.sink),
        q = value(&params.q),
    )
}

fn events_table(events: &[EventSummary], status: Option<EventStatus>, first_page: bool) -> String {
    let mut rows = String::new();
    for event in events {
        let _ = write!(
            rows,
            "<tr data-id=\"{id}\"><td><a href=\"/console/events/{link}\">{id}</a></td><td>{event_type}</td>\
             <td class=\"status status-{s}\">{s}</td><td>{object}</td><td>{age}</td></tr>",
            id = escape(&event.id),
            link = url_part(&event.id),
            event_type = escape(&event.event_type),
            s = event.status.as_str(),
            object = escape(event.object.as_deref().unwrap_or("")),
            age = age(&event.received_at),
        );
    }
    let empty = if events.is_empty() {
        "<p id=\"empty\">No events match.</p>"
    } else {
        ""
    };
    format!(
        r#"<p id="live" aria-live="polite"></p>
<table data-live data-status="{status}" data-first-page="{first_page}">
<thead><tr><th scope="col">Event id</th><th scope="col">Type</th><th scope="col">Status</th><th scope="col">Object</th><th scope="col">Received</th></tr></thead>
<tbody>{rows}</tbody>
</table>
{empty}"#,
        status = status.map(EventStatus::as_str).unwrap_or(""),
    )
}

fn next_link(base: &str, params: &ListParams, next_cursor: Option<&str>) -> String {
    let Some(cursor) = next_cursor else {
        return String::new();
    };
    let mut query = String::new();
    let pairs = [
        ("status", &params.status),
        ("event_type", &params.event_type),
        ("object", &params.object),
        ("sink", &params.sink),
        ("q", &params.q),
    ];
    for (name, value) in pairs {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            let _ = write!(query, "{name}={}&", url_part(value));
        }
    }
    format!(
        "<p><a href=\"{base}?{query}cursor={}\" rel=\"next\">Older events</a></p>",
        url_part(cursor)
    )
}

async fn list_page(
    state: &ApiState,
    params: ListParams,
    dead_only: bool,
) -> Result<(String, EventPageParts), ApiError> {
    let mut query = params.query()?;
    if dead_only {
        query.status = Some(EventStatus::Dead);
    }
    let page = state.journal.history(&query).await?;
    let first_page = query.cursor.is_none();
    Ok((
        events_table(&page.data, query.status, first_page),
        EventPageParts {
            next_cursor: page.next_cursor,
            count: page.data.len(),
        },
    ))
}

struct EventPageParts {
    next_cursor: Option<String>,
    count: usize,
}

async fn events(State(state): State<Arc<ApiState>>, Query(params): Query<ListParams>) -> Response {
    match list_page(&state, params.clone(), false).await {
        Ok((table, parts)) => page(
            "Events",
            &format!(
                "{}{table}{}",
                filters_form("/console/events", &params, true),
                next_link("/console/events", &params, parts.next_cursor.as_deref())
            ),
        )
        .into_response(),
        Err(error) => error_page(error),
    }
}

async fn dead_letters(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<ListParams>,
) -> Response {
    match list_page(&state, params.clone(), true).await {
        Ok((table, parts)) => {
            let hidden = |name: &str, value: &Option<String>| {
                value
                    .as_deref()
                    .filter(|v| !v.is_empty())
                    .map(|v| {
                        format!(
                            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                            escape(v)
                        )
                    })
                    .unwrap_or_default()
            };
            let replay_all = if parts.count > 0 {
                format!(
                    "<form method=\"post\" action=\"/console/dead-letters/replay\">{}{}{}{}\
                     <button type=\"submit\">Replay all</button> (every dead letter matching these filters, up to {})</form>",
                    hidden("event_type", &params.event_type),
                    hidden("object", &params.object),
                    hidden("sink", &params.sink),
                    hidden("q", &params.q),
                    crate::api::MAX_BULK_REPLAY,
                )
            } else {
                String::new()
            };
            page(
                "Dead letters",
                &format!(
                    "{}{replay_all}{table}{}",
                    filters_form("/console/dead-letters", &params, false),
                    next_link(
                        "/console/dead-letters",
                        &params,
                        parts.next_cursor.as_deref()
                    )
                ),
            )
            .into_response()
        }
        Err(error) => error_page(error),
    }
}

fn pretty(raw: &str) -> String {
    serde_json::from_str::<Value>(raw)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| raw.to_string())
}

#[derive(Debug, Default, Deserialize)]
struct Notice {
    replayed: Option<String>,
}

async fn event(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    let detail = match state.journal.history_event(&id).await {
        Ok(Some(detail)) => detail,
        Ok(None) => return error_page(ApiError::NotFound(id)),
        Err(error) => return error_page(error.into()),
    };
    let action = format!("/console/events/{}/replay", url_part(&detail.id));
    let mut sinks = String::new();
    for sink in &detail.sinks {
        let _ = write!(
            sinks,
            "<tr><td>{name}</td><td>{status}</td><td>{attempts}</td><td>{error}</td><td>{delivered}</td>\
             <td><form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"sink\" value=\"{name}\">\
             <button type=\"submit\" aria-label=\"Replay to sink {name}\">Replay to sink</button></form></td></tr>",
            name = escape(&sink.name),
            status = status_badge(sink.status),
            attempts = sink.attempts,
            error = escape(sink.last_error.as_deref().unwrap_or("")),
            delivered = escape(sink.delivered_at.as_deref().unwrap_or("")),
        );
    }
    let sinks = if detail.sinks.is_empty() {
        "<p>No sink has taken or tried this event yet (or no route wanted it).</p>".to_string()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Sink</th><th scope=\"col\">Status</th><th scope=\"col\">Failed attempts</th>\
             <th scope=\"col\">Last error</th><th scope=\"col\">Delivered at</th><th scope=\"col\"></th></tr></thead><tbody>{sinks}</tbody></table>"
        )
    };
    let data = match (&detail.data, detail.data_omitted) {
        (Some(data), _) => format!("<pre>{}</pre>", escape(&pretty(data.get()))),
        (None, true) => "<p>The fetched data was larger than the history keeps.</p>".to_string(),
        (None, false) => "<p>Nothing was fetched.</p>".to_string(),
    };
    let notice = match notice.replayed.as_deref() {
        Some(_) => {
            "<p role=\"status\" class=\"notice\">Replayed: the worker takes it up again now.</p>"
        }
        None => "",
    };
    let fact = |name: &str, value: Option<&str>| {
        format!("<dt>{name}</dt><dd>{}</dd>", escape(value.unwrap_or("—")))
    };
    let body = format!(
        r#"{notice}
<dl class="facts">
<dt>Status</dt><dd>{status}</dd>
{type_}{received}{delivery}{webhook}{request}{object}{list}{record}{enrichment}{delivered}{dead}{error}
<dt>Failed attempts</dt><dd>{attempts}</dd>
</dl>
<form method="post" action="{action}"><button type="submit">Replay</button></form>
<h2>Sinks</h2>
{sinks}
<h2>Event as Attio sent it</h2>
<pre>{event}</pre>
<h2>Fetched data (last attempt)</h2>
{data}"#,
        status = status_badge(detail.status),
        type_ = fact("Type", Some(&detail.event_type)),
        received = fact("Received", Some(&detail.received_at)),
        delivery = fact("Delivery key", Some(&detail.delivery_key)),
        webhook = fact("Webhook", detail.webhook_id.as_deref()),
        request = fact("Request id", detail.request_id.as_deref()),
        object = fact("Object", detail.object.as_deref()),
        list = fact("List", detail.list.as_deref()),
        record = fact("Record", detail.record_id.as_deref()),
        enrichment = fact("Enrichment", detail.enrichment.as_deref()),
        delivered = fact("Delivered at", detail.delivered_at.as_deref()),
        dead = fact("Dead since", detail.dead_at.as_deref()),
        error = fact("Last error", detail.last_error.as_deref()),
        attempts = detail.attempts,
        event = escape(&pretty(detail.event.get())),
    );
    page(&format!("Event {}", detail.id), &body).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct SinkForm {
    sink: Option<String>,
}

async fn replay_event(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Form(form): Form<SinkForm>,
) -> Response {
    let sink = form.sink.filter(|s| !s.is_empty());
    match crate::api::replay(&state, vec![id.clone()], sink.as_deref()).await {
        Ok(report) if report.skipped.is_empty() => {
            Redirect::to(&format!("/console/events/{}?replayed=1", url_part(&id))).into_response()
        }
        Ok(report) => error_page(ApiError::Conflict(
            report
                .skipped
                .first()
                .map(|s| s.reason.clone())
                .unwrap_or_default(),
        )),
        Err(error) => error_page(error),
    }
}

async fn replay_all(
    State(state): State<Arc<ApiState>>,
    Form(params): Form<ListParams>,
) -> Response {
    let mut query = match params.query() {
        Ok(query) => query,
        Err(error) => return error_page(error),
    };
    query.status = Some(EventStatus::Dead);
    query.limit = crate::journal::history::MAX_LIMIT;
    let mut ids = Vec::new();
    loop {
        match state.journal.history(&query).await {
            Ok(page) => {
                ids.extend(page.data.into_iter().map(|e| e.id));
                match page.next_cursor.and_then(|c| c.parse().ok()) {
                    Some(cursor) if ids.len() < crate::api::MAX_BULK_REPLAY => {
                        query.cursor = Some(cursor)
                    }
                    _ => break,
                }
            }
            Err(error) => return error_page(error.into()),
        }
    }
    ids.truncate(crate::api::MAX_BULK_REPLAY);
    match crate::api::replay(&state, ids, None).await {
        Ok(report) => page(
            "Dead letters replayed",
            &format!(
                "<p role=\"status\" class=\"notice\">{} replayed, {} skipped. The worker takes them up now.</p>\
                 <p><a href=\"/console/dead-letters\">Back to the dead letters</a></p>",
                report.replayed.len(),
                report.skipped.len()
            ),
        )
        .into_response(),
        Err(error) => error_page(error),
    }
}

#[derive(Debug, Default, Deserialize)]
struct UnparsedParams {
    cursor: Option<String>,
}

async fn unparsed(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<UnparsedParams>,
) -> Response {
    const PAGE: usize = 50;
    let before = params.cursor.and_then(|c| c.parse().ok());
    let mut found = match state.journal.unparsed(PAGE + 1, before).await {
        Ok(found) => found,
        Err(error) => return error_page(error.into()),
    };
    let more = found.len() > PAGE;
    found.truncate(PAGE);
    let mut rows = String::new();
    for item in &found {
        let _ = write!(
            rows,
            "<tr><td><a href=\"/console/unparsed/{id}\">{id}</a></td><td>{key}</td><td>{reason}</td><td>{len} bytes</td><td>{age}</td></tr>",
            id = item.id,
            key = escape(item.key.as_deref().unwrap_or("")),
            reason = escape(&item.reason),
            len = item.body_len,
            age = age(&item.received_at),
        );
    }
    let next = match (more, found.last()) {
        (true, Some(last)) => format!(
            "<p><a href=\"/console/unparsed?cursor={}\" rel=\"next\">Older</a></p>",
            last.id
        ),
        _ => String::new(),
    };
    let body = if found.is_empty() {
        "<p>No unparsed deliveries: every signed body was a delivery.</p>".to_string()
    } else {
        format!(
            "<p>Correctly signed bodies that were not deliveries, kept for inspection.</p>\
             <table><thead><tr><th scope=\"col\">Id</th><th scope=\"col\">Delivery key</th><th scope=\"col\">Why</th>\
             <th scope=\"col\">Size</th><th scope=\"col\">Received</th></tr></thead><tbody>{rows}</tbody></table>{next}"
        )
    };
    page("Unparsed deliveries", &body).into_response()
}

async fn unparsed_one(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    let Ok(number) = id.parse::<i64>() else {
        return error_page(ApiError::NotFound(id));
    };
    let found = match state.journal.unparsed_delivery(number).await {
        Ok(Some(found)) => found,
        Ok(None) => return error_page(ApiError::NotFound(id)),
        Err(error) => return error_page(error.into()),
    };
    let body = String::from_utf8_lossy(&found.body);
    page(
        &format!("Unparsed delivery {number}"),
        &format!(
            "<dl class=\"facts\"><dt>Why</dt><dd>{reason}</dd><dt>Delivery key</dt><dd>{key}</dd>\
             <dt>Received</dt><dd>{received}</dd><dt>Size</dt><dd>{len} bytes</dd></dl>\
             <form method=\"post\" action=\"/console/unparsed/{number}/delete\"><button type=\"submit\">Delete</button></form>\
             <h2>Body</h2><pre>{body}</pre>",
            reason = escape(&found.summary.reason),
            key = escape(found.summary.key.as_deref().unwrap_or("—")),
            received = escape(&found.summary.received_at),
            len = found.body.len(),
            body = escape(&body),
        ),
    )
    .into_response()
}

async fn delete_unparsed(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    let Ok(number) = id.parse::<i64>() else {
        return error_page(ApiError::NotFound(id));
    };
    let selection = crate::journal::UnparsedSelection::Ids(vec![number]);
    match state.journal.delete_unparsed(&selection).await {
        Ok(_) => Redirect::to("/console/unparsed").into_response(),
        Err(error) => error_page(error.into()),
    }
}

fn seconds(value: &Value) -> String {
    match value.as_f64() {
        Some(s) if s >= 3600.0 => format!("{:.1} h", s / 3600.0),
        Some(s) if s >= 60.0 => format!("{:.1} min", s / 60.0),
        Some(s) => format!("{s:.0} s"),
        None => "—".to_string(),
    }
}

/// Bars of delivered events per interval, drawn from the daemon's own counts.
fn throughput_chart(counts: &[u64], interval_seconds: u64) -> String {
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let width = 12;
    let height = 80;
    let mut bars = String::new();
    for (i, count) in counts.iter().enumerate() {
        let bar = (*count * height / max).max(u64::from(*count > 0));
        let _ = write!(
            bars,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{bar}\"><title>{count}</title></rect>",
            x = i * width,
            y = height - bar,
            w = width - 2,
        );
    }
    let total: u64 = counts.iter().sum();
    format!(
        "<figure><svg role=\"img\" aria-label=\"Events finished per {interval_seconds} s over the last {minutes} min: {total} in all\" \
         width=\"{w}\" height=\"{height}\" viewBox=\"0 0 {w} {height}\" class=\"chart\">{bars}</svg>\
         <figcaption>Events finished per {interval_seconds} s, last {minutes} min (oldest left): {total} in all, at most {max} per interval.</figcaption></figure>",
        w = counts.len() * width,
        minutes = counts.len() as u64 * interval_seconds / 60,
    )
}

async fn status(State(state): State<Arc<ApiState>>) -> Response {
    let value = crate::api::status_value(&state).await;
    let word = |v: &Value| {
        let s = v.as_str().unwrap_or("unknown");
        format!("<span class=\"state state-{s}\">{s}</span>", s = escape(s))
    };
    let mut sinks = String::new();
    for sink in value["sinks"].as_array().into_iter().flatten() {
        let _ = write!(
            sinks,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(sink["name"].as_str().unwrap_or("")),
            word(&sink["state"]),
            escape(sink["down_since"].as_str().unwrap_or("")),
        );
    }
    let sinks = if sinks.is_empty() {
        "<p>No sink has been used since the daemon started.</p>".to_string()
    } else {
        format!("<table><thead><tr><th scope=\"col\">Sink</th><th scope=\"col\">State</th><th scope=\"col\">Down since</th></tr></thead><tbody>{sinks}</tbody></table>")
    };
    let (counts, interval) = state.changes.throughput().counts();
    let body = format!(
        r#"<dl class="facts">
<dt>Version</dt><dd>{version}</dd>
<dt>Up for</dt><dd>{uptime}</dd>
<dt>Backlog</dt><dd>{backlog} pending events (oldest waiting {oldest})</dd>
<dt>Journal</dt><dd>{journal_backend}: {journal_state}</dd>
<dt>Dedupe store</dt><dd>{dedupe_backend}: {dedupe_state}</dd>
<dt>Attio</dt><dd>{attio}</dd>
</dl>
<h2>Recent throughput</h2>
{chart}
<h2>Sinks</h2>
{sinks}"#,
        version = escape(value["version"].as_str().unwrap_or("")),
        uptime = seconds(&value["uptime_seconds"]),
        backlog = value["backlog"],
        oldest = seconds(&value["oldest_pending_age_seconds"]),
        journal_backend = escape(value["journal"]["backend"].as_str().unwrap_or("")),
        journal_state = word(&value["journal"]["health"]["state"]),
        dedupe_backend = escape(value["dedupe"]["backend"].as_str().unwrap_or("")),
        dedupe_state = word(&value["dedupe"]["health"]["state"]),
        attio = word(&value["attio"]["state"]),
        chart = throughput_chart(&counts, interval),
    );
    page("Status", &body).into_response()
}

const LOGIN_FORM: &str = r#"<form method="post" action="/console/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>"#;

fn login_html(message: Option<&str>) -> Html<String> {
    let message = message
        .map(|m| format!("<p role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default();
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · attio-webhooks</title><link rel="stylesheet" href="/console/console.css"></head>
<body><main class="login"><h1>attio-webhooks</h1>{message}
<p>Sign in with the daemon's admin token (<code>ATTIO_WEBHOOKS_ADMIN_TOKEN</code>).</p>
{LOGIN_FORM}</main></body></html>
"#
    ))
}

async fn login_page(State(state): State<Arc<ApiState>>) -> Response {
    if !state.auth.has_token() {
        return Redirect::to("/console/events").into_response();
    }
    login_html(None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<Arc<ApiState>>, Form(form): Form<LoginForm>) -> Response {
    match state.auth.check_token(&form.token) {
        Ok(()) => {
            let session = state.auth.open_session();
            let cookie = format!(
                "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                SESSION_LIFETIME.as_secs()
            );
            let mut response = Redirect::to("/console/events").into_response();
            if let Ok(value) = cookie.parse() {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(Refusal::Throttled(_)) => (
            StatusCode::TOO_MANY_REQUESTS,
            login_html(Some(
                "Too many failed sign-ins. Wait a minute and try again.",
            )),
        )
            .into_response(),
        Err(_) => (
            StatusCode::UNAUTHORIZED,
            login_html(Some("That token is not right.")),
        )
            .into_response(),
    }
}

async fn logout(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    state.auth.close_session(&headers);
    let mut response = Redirect::to("/console/login").into_response();
    let expired = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    if let Ok(value) = expired.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html_and_links() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url_part("k 1/2:0"), "k%201%2F2:0");
    }
}
