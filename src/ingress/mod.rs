//! The HTTP edge. In: requests from Attio (and probes). Out: deliveries verified and journaled,
//! and a status code Attio acts on (2xx: done; anything else: it retries).
//!
//! Routes: `POST {server.path}` (the webhook), `GET /healthz` (alive), `GET /readyz` (journal
//! writable, Redis reachable when configured).

mod error;
mod health;
mod webhook;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use secrecy::SecretString;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::dedupe::DedupeStore;
use crate::journal::Journal;
use crate::worker::Handoff;

pub use error::IngressError;

/// Header carrying the request id, generated when the caller sent none.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What the handlers share.
pub struct IngressState {
    pub secrets: Vec<SecretString>,
    pub body_limit: usize,
    pub max_backlog: u64,
    pub journal: Journal,
    /// `None` when the worker is disabled: events then wait in the journal.
    pub handoff: Option<Handoff>,
    /// Checked by readiness when it is Redis.
    pub dedupe: DedupeStore,
}

pub fn router(path: &str, state: Arc<IngressState>) -> Router {
    let request_id = axum::http::HeaderName::from_static(REQUEST_ID_HEADER);
    Router::new()
        .route(path, post(webhook::receive))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
