//! Liveness and readiness probes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::IngressState;
use crate::dedupe::DedupeStore;

/// The process is up and serving HTTP.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to accept deliveries: the journal takes a write, and Redis answers when configured.
pub(crate) async fn readyz(State(state): State<Arc<IngressState>>) -> (StatusCode, Json<Value>) {
    let journal = match state.journal.probe().await {
        Ok(()) => "ok".to_string(),
        Err(error) => {
            tracing::warn!(%error, "readiness: journal not writable");
            "unavailable".to_string()
        }
    };
    let redis = match &state.dedupe {
        DedupeStore::Redis(_) => match state.dedupe.ping().await {
            Ok(()) => Some("ok".to_string()),
            Err(error) => {
                tracing::warn!(%error, "readiness: redis unreachable");
                Some("unavailable".to_string())
            }
        },
        DedupeStore::Embedded(_) => None,
    };
    let ready = journal == "ok" && redis.as_deref().is_none_or(|r| r == "ok");
    let mut checks = json!({ "journal": journal, "backlog": state.journal.backlog() });
    if let Some(redis) = redis {
        checks["redis"] = json!(redis);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks })),
    )
}

/// Prometheus text exposition. Gauges that are cheap to read now are refreshed first.
pub(crate) async fn metrics(State(state): State<Arc<IngressState>>) -> Response {
    let Some(handle) = crate::metrics::handle() else {
        return (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response();
    };
    crate::metrics::collect_process();
    metrics::gauge!(crate::metrics::JOURNAL_BACKLOG).set(state.journal.backlog() as f64);
    metrics::counter!(crate::metrics::LOG_LINES_DROPPED)
        .absolute(crate::telemetry::dropped_lines());
    match state.journal.oldest_pending_age().await {
        Ok(age) => metrics::gauge!(crate::metrics::OLDEST_PENDING_AGE)
            .set(age.map_or(0.0, |a| a.as_secs_f64())),
        Err(error) => tracing::warn!(%error, "cannot read the oldest pending event"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
