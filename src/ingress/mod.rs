//! The HTTP edge. In: requests from Attio (and probes). Out: deliveries verified and journaled,
//! and a status code Attio acts on (2xx: done; anything else: it retries).
//!
//! Routes: `POST {server.path}` (the webhook), `GET /healthz` (alive), `GET /readyz` (journal
//! writable, Redis reachable when configured).

pub(crate) mod connections;
mod error;
mod health;
mod webhook;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use secrecy::SecretString;
use tower_http::request_id::{MakeRequestId, PropagateRequestId, RequestId, SetRequestId};

use crate::dedupe::DedupeStore;
use crate::journal::Journal;
use crate::worker::Handoff;

pub(crate) use error::IngressError;

/// Header carrying the request id, generated when the caller sent none.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// What the handlers share.
pub(crate) struct IngressState {
    pub(crate) secrets: Vec<SecretString>,
    pub(crate) body_limit: usize,
    /// Time for a webhook body to arrive once its headers have (`server.body_read_timeout`).
    pub(crate) body_read_timeout: std::time::Duration,
    pub(crate) max_backlog: u64,
    pub(crate) journal: Journal,
    /// `None` when the worker is disabled: events then wait in the journal.
    pub(crate) handoff: Option<Handoff>,
    /// Checked by readiness when it is Redis.
    pub(crate) dedupe: DedupeStore,
    /// Serve `/metrics` on the main listener (`Settings::metrics_on_main_listener`).
    pub(crate) metrics_on_main: bool,
    /// Accepted events are announced here to live views.
    pub(crate) changes: crate::journal::history::Changes,
}

/// The admin listener's routes (`admin.listen`): probes and metrics, no webhook endpoint.
pub(crate) fn admin_router(state: Arc<IngressState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}

/// The main listener's routes. `/metrics` is served here unless an admin listener is set.
/// Request ids are given by [`with_request_ids`], around whatever a listener serves.
pub(crate) fn router(path: &str, state: Arc<IngressState>) -> Router {
    let mut router = Router::new()
        .route(path, post(webhook::receive))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if state.metrics_on_main {
        router = router.route("/metrics", get(health::metrics));
    }
    router.with_state(state)
}

/// `router` with request ids: a caller's `x-request-id` is kept when it is acceptable
/// ([`drop_odd_request_id`], applied by the connection before this), a request without one gets
/// a fresh one, and the answer carries it. The layers wrap the router once, where
/// `Router::layer` would wrap each route in them (a boxed service cloned, and a boxed future
/// made, per layer and request).
pub(crate) fn with_request_ids(
    router: Router,
    ids: RequestIds,
) -> SetRequestId<PropagateRequestId<Router>, RequestIds> {
    let header = axum::http::HeaderName::from_static(REQUEST_ID_HEADER);
    SetRequestId::new(PropagateRequestId::new(router, header.clone()), header, ids)
}

/// Makes the ids of requests that came without one: UUID-shaped, from a random starting point
/// drawn once per process plus a counter, so that the operating system's random source is not
/// asked once per request (it showed in profiles of ingress).
#[derive(Clone)]
pub(crate) struct RequestIds {
    base: u128,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> RequestIds {
        RequestIds {
            base: uuid::Uuid::new_v4().as_u128(),
            next: Arc::default(),
        }
    }
}

impl RequestIds {
    fn next_id(&self) -> uuid::Uuid {
        let count = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The counter goes into the last 64 bits; the version and variant bits are set as a v4
        // UUID's, so the id looks like the ones made before.
        let value = self.base ^ u128::from(count);
        uuid::Builder::from_random_bytes(value.to_be_bytes()).into_uuid()
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let id = self.next_id().hyphenated().to_string();
        axum::http::HeaderValue::from_str(&id)
            .ok()
            .map(RequestId::new)
    }
}

/// Longest `x-request-id` taken from a request; a longer one is replaced by a fresh id.
pub(crate) const MAX_REQUEST_ID: usize = 128;

/// Keeps a caller's `x-request-id` only when it is short visible ASCII, so that what goes into
/// every log line and the journal stays small and printable; otherwise a fresh id is made.
pub(crate) fn drop_odd_request_id(headers: &mut axum::http::HeaderMap) {
    let odd = headers
        .get(REQUEST_ID_HEADER)
        .is_some_and(|value| !acceptable_request_id(value.as_bytes()));
    if odd {
        headers.remove(REQUEST_ID_HEADER);
    }
}

fn acceptable_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let ids = RequestIds::default();
        let made: std::collections::HashSet<uuid::Uuid> =
            (0..10_000).map(|_| ids.next_id()).collect();
        assert_eq!(made.len(), 10_000);
        assert!(made.iter().all(|id| id.get_version_num() == 4));
        assert!(made
            .iter()
            .all(|id| id.get_variant() == uuid::Variant::RFC4122));
    }
}
