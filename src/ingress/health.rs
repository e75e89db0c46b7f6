//! Liveness and readiness probes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::IngressState;
use crate::dedupe::DedupeStore;

/// The process is up and serving HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to accept deliveries: the journal takes a write, and Redis answers when configured.
pub async fn readyz(State(state): State<Arc<IngressState>>) -> (StatusCode, Json<Value>) {
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
