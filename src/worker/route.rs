//! Enrich and route: the second stage of an attempt.
//!
//! In: a claimed work item. Out: [`Prepared::Routed`]: the enrichment, the sinks the event still
//! has to reach, its sink line (or why no sink can take it), and the coalesced fetch it shared
//! with other events (for `collapse`); or [`Prepared::AttioDown`] when enrichment the routes
//! require failed because Attio is down, not because of this event. The event is enriched
//! first (as much as the routes matching its type want), so that route filters can also test
//! the resolved names (`object`, `list`, `attribute`) and the fetched `data`.

use std::time::{Duration, Instant};

use super::backoff::{self, attio_down, enrichment_failure};
use super::item::WorkItem;
use super::Pipeline;
use crate::attio::single_flight::Joined;
use crate::enrich::{Enrichment, EnrichmentStatus};
use crate::journal::history::AttemptRecord;
use crate::routing::settings::RouteEnrich;
use crate::routing::{EnrichedFields, EventDimensions, FilterFields, RoutedSink};
use crate::sinks::{SinkError, SinkLine};

// Made once per attempt and moved straight into delivery: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Prepared<'p> {
    Routed(Routed<'p>),
    /// Attio is down: the event waits this long in the journal without using an attempt.
    AttioDown {
        retry_in: Duration,
        error: Option<String>,
    },
}

/// What the routes made of an enriched event.
pub(crate) struct Routed<'p> {
    /// The sinks of the matching routes that have not taken the event yet.
    pub(crate) targets: Vec<RoutedSink<'p>>,
    pub(crate) line: Line,
    /// The coalesced fetch the event shared with others, when some route collapses them.
    pub(crate) group: Option<Joined>,
    pub(crate) enrichment: Enrichment,
    /// What the history keeps of this attempt so far.
    pub(crate) found: AttemptRecord,
}

/// What the event's targets are sent.
pub(crate) enum Line {
    /// No target: nothing to send.
    Nothing,
    /// No sink can take the event on this attempt: every target records this failure.
    Refused(SinkError),
    Ready(SinkLine),
}

pub(crate) async fn enrich_and_route<'p>(pipeline: &'p Pipeline, item: &WorkItem) -> Prepared<'p> {
    let kind = &item.kind;
    if !kind.is_known() {
        tracing::debug!("event type unknown to this version; routed by name");
    }
    let wanted = pipeline.routes.enrichment_for(kind.as_str());
    let settle = pipeline.routes.settle_for(kind.as_str());
    let started = Instant::now();
    let enrichment = pipeline
        .enricher
        .enrich_settled(kind, &item.plan, wanted, settle)
        .await;
    let attio_outage = report_attio(pipeline, &enrichment, started);
    if enrichment.status == EnrichmentStatus::Failed && wanted == RouteEnrich::Required {
        if let Some(retry_in) = attio_down(&pipeline.enricher, &enrichment) {
            tracing::debug!(retry_in = ?retry_in, "Attio unavailable; event waits in the journal");
            return Prepared::AttioDown {
                retry_in: backoff::jittered(retry_in),
                error: enrichment.error.as_ref().map(|e| e.to_string()),
            };
        }
    } else if enrichment.status == EnrichmentStatus::Failed {
        let error = enrichment.error.as_ref().map(|e| e.to_string());
        if attio_outage {
            tracing::debug!(
                ?error,
                "enrichment failed; delivering without it (enrich = \"optional\")"
            );
        } else {
            tracing::warn!(
                ?error,
                "enrichment failed; delivering without it (enrich = \"optional\")"
            );
        }
    }
    let found = found(item, &enrichment);
    let dimensions = if pipeline.routes.has_dimension_keys() {
        crate::enrich::dimensions(&item.plan, &enrichment)
    } else {
        EventDimensions::default()
    };
    let fields = FilterFields {
        event: item.tree(),
        enriched: (wanted != RouteEnrich::Off).then(|| EnrichedFields {
            enrichment: enrichment.status.as_str(),
            object: enrichment.object.as_deref(),
            list: enrichment.list.as_deref(),
            attribute: enrichment.attribute.as_deref(),
            data: enrichment.data.as_ref(),
        }),
    };
    let mut targets = pipeline.routes.routed(kind.as_str(), &fields, &dimensions);
    let matched = !targets.is_empty();
    targets.retain(|target| !item.progress.sinks_done.iter().any(|d| d == target.name));
    let line = if targets.is_empty() {
        if !matched {
            tracing::debug!("no route matches; nothing to deliver");
        }
        Line::Nothing
    } else if let Some(error) = enrichment_failure(&enrichment, wanted) {
        if attio_outage {
            tracing::debug!(error = %error.message, "enrichment failed");
        } else {
            tracing::warn!(error = %error.message, "enrichment failed");
        }
        Line::Refused(error)
    } else {
        let built = match &item.json {
            Ok(event) => SinkLine::new(&item.head(), event, &enrichment),
            Err(unreadable) => Err(SinkError::permanent(unreadable.to_string())),
        };
        match built {
            Ok(line) => Line::Ready(line),
            // The event itself cannot be turned into a line: no sink can take it.
            Err(error) => Line::Refused(error),
        }
    };
    // Events that shared one fetch, when some route collapses them: every one of them arrives
    // at the group (see `collapse`), with the collapsing sinks it still has to reach.
    let group = enrichment
        .shared
        .filter(|shared| shared.members > 1 && pipeline.routes.has_collapse());
    Prepared::Routed(Routed {
        targets,
        line,
        group,
        enrichment,
        found,
    })
}

/// What the history keeps of the enrichment: its status, the event's object, list and record,
/// and the fetched data.
fn found(item: &WorkItem, enrichment: &Enrichment) -> AttemptRecord {
    let keys = crate::enrich::history_keys(&item.plan, item.ids(), enrichment);
    let mut found = AttemptRecord {
        enrichment: Some(enrichment.status.as_str().to_string()),
        object: keys.object,
        list: keys.list,
        record_id: keys.record_id,
        ..AttemptRecord::default()
    };
    found.keep_data(enrichment.data.as_ref());
    found
}

/// Tells Attio's outage how this enrichment went. Returns true when it failed for a reason that
/// is Attio's rather than this event's (down, rate limited, or the API key refused), which the
/// outage logs, so that the event's own lines can stay at debug level.
fn report_attio(pipeline: &Pipeline, enrichment: &Enrichment, started: Instant) -> bool {
    match (&enrichment.status, &enrichment.error) {
        (EnrichmentStatus::Failed, Some(error)) if error.is_transient() || error.is_auth() => {
            pipeline.outages.attio.report_failure(started, error);
            true
        }
        // Attio is back once its circuit breaker has closed: an event enriched from the caches
        // alone while the breaker is open says nothing about Attio.
        (EnrichmentStatus::Ok | EnrichmentStatus::NotFound, _)
            if pipeline.enricher.unavailable_for().is_none() =>
        {
            pipeline.outages.attio.report_success(started);
            false
        }
        _ => false,
    }
}
