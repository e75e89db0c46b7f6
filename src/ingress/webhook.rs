//! `POST /webhooks/attio`: read the raw body (bounded), verify the signature on those bytes,
//! journal the delivery, then answer. The order is the point: nothing is parsed before it is
//! verified, and nothing is acknowledged before it is durable.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::json;

use super::{IngressError, IngressState, REQUEST_ID_HEADER};
use crate::event::{delivery_key_from_header, derived_delivery_key, parse_delivery, HeaderKey};
use crate::journal::history::EventStatus;
use crate::journal::{AppendOutcome, MalformedDelivery, NewDelivery};
use crate::signature::{self, LEGACY_SIGNATURE_HEADER, SIGNATURE_HEADER};

pub(crate) async fn receive(
    State(state): State<Arc<IngressState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let span = tracing::info_span!(
        "delivery",
        request_id = request_id.as_deref().unwrap_or("-"),
        delivery_key = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let response = match handle(&state, &headers, body, request_id, &span).await {
        Ok((outcome, response)) => {
            crate::metrics::count_delivery(outcome);
            response
        }
        Err(error) => {
            crate::metrics::count_delivery(error.outcome());
            span.in_scope(|| match &error {
                IngressError::Signature(reason) => {
                    tracing::warn!(%reason, "delivery refused: bad signature")
                }
                IngressError::Unavailable | IngressError::BacklogFull => {
                    tracing::error!(%error, "delivery refused: journal cannot accept; Attio will retry")
                }
                other => tracing::warn!(error = %other, "delivery refused"),
            });
            error.into_response()
        }
    };
    metrics::histogram!(crate::metrics::INGRESS_DURATION).record(started.elapsed().as_secs_f64());
    response
}

async fn handle(
    state: &IngressState,
    headers: &HeaderMap,
    body: Body,
    request_id: Option<String>,
    span: &tracing::Span,
) -> Result<(&'static str, Response), IngressError> {
    let limit = state.body_limit;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(IngressError::TooLarge { limit });
    }
    let read = tokio::time::timeout(state.body_read_timeout, axum::body::to_bytes(body, limit));
    let Ok(read) = read.await else {
        return Err(IngressError::BodyTimeout {
            seconds: state.body_read_timeout.as_secs(),
        });
    };
    let bytes = read.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            IngressError::TooLarge { limit }
        } else {
            IngressError::BodyRead
        }
    })?;

    let signature_header = headers
        .get(SIGNATURE_HEADER)
        .or_else(|| headers.get(LEGACY_SIGNATURE_HEADER))
        .map(|v| v.as_bytes());
    let verified = signature::verify(&state.secrets, signature_header, bytes)?;

    let backlog = state.journal.backlog();
    if backlog >= state.max_backlog {
        return Err(IngressError::BacklogFull);
    }

    let header_key = headers
        .get("idempotency-key")
        .and_then(|v| delivery_key_from_header(v.as_bytes()))
        .map(|key| {
            if let HeaderKey::Hashed(_) = key {
                // The value itself stays out of the log: it may be anything at all.
                span.in_scope(|| {
                    tracing::warn!("Idempotency-Key header is not at most 200 bytes of visible ASCII; using its SHA-256 as the delivery key")
                });
            }
            key.into_string()
        });
    let received_at = Utc::now();

    let delivery = match parse_delivery(verified.bytes()) {
        Ok(delivery) => delivery,
        Err(malformed) => {
            span.in_scope(|| {
                tracing::warn!(reason = %malformed, "signed body is not a delivery; stored as a dead delivery")
            });
            state
                .journal
                .append_malformed(MalformedDelivery {
                    key: header_key,
                    received_at,
                    request_id,
                    reason: malformed.to_string(),
                    body: verified.bytes().to_vec(),
                })
                .await
                .map_err(|_| IngressError::Unavailable)?;
            return Ok((
                "malformed",
                (
                    StatusCode::ACCEPTED,
                    Json(json!({ "status": "stored_unparsed", "reason": malformed.to_string() })),
                )
                    .into_response(),
            ));
        }
    };

    let (key, key_derived) = match header_key {
        Some(key) => (key, false),
        None => {
            let key = derived_delivery_key(delivery.webhook_id.as_deref(), verified.bytes());
            span.in_scope(|| {
                tracing::warn!(%key, "delivery has no Idempotency-Key header; using a key derived from the webhook id and body hash")
            });
            (key, true)
        }
    };
    span.record("delivery_key", key.as_str());
    let count = delivery.events.len();
    // Held from before the append, so that the journal scan cannot take these events between
    // their commit and the hand-off below (see `worker::Reservation`).
    let reservation = state
        .handoff
        .as_ref()
        .map(|handoff| handoff.reserve(&key, count));
    let outcome = state
        .journal
        .append(NewDelivery {
            key,
            key_derived,
            webhook_id: delivery.webhook_id,
            received_at,
            request_id,
            events: delivery.events,
        })
        .await
        .map_err(|error| {
            span.in_scope(|| tracing::error!(%error, "journal append failed"));
            IngressError::Unavailable
        })?;
    match outcome {
        AppendOutcome::Stored(events) => {
            // The field is computed only when the line is logged.
            span.in_scope(|| {
                tracing::info!(
                    events = count,
                    event_types = ?events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
                    "delivery accepted"
                )
            });
            for event in &events {
                state
                    .changes
                    .publish(&event.id, &event.event_type, EventStatus::Pending);
            }
            if let (Some(handoff), Some(reservation)) = (&state.handoff, reservation) {
                handoff.offer(reservation, events);
            }
            // Written out rather than built as a `serde_json::Value`: this is every delivery's
            // answer.
            Ok((
                "accepted",
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    format!(r#"{{"status":"accepted","events":{count}}}"#),
                )
                    .into_response(),
            ))
        }
        AppendOutcome::Duplicate => {
            span.in_scope(|| {
                tracing::info!(
                    "redelivery of a journaled delivery; acknowledged without a second copy"
                )
            });
            Ok((
                "duplicate",
                (StatusCode::OK, Json(json!({ "status": "duplicate" }))).into_response(),
            ))
        }
    }
}
