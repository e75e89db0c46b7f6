//! The worker: drives each accepted event through dedupe, routing and the sinks.
//!
//! In: events handed over by ingress on a bounded channel, and events found in the journal (left
//! over from a restart, overflowed from the channel, due for a retry, or replayed from the dead
//! letters). Out: the event marked done in the journal, rescheduled with backoff, or moved to
//! the dead letters. Failures are counted per sink: a retry goes only to the sinks that have not
//! taken the event yet, each with its own `attempts` and backoff (default `[worker]`); the
//! event is dead-lettered as soon as a failing sink used up its attempts or failed permanently.
//! Before delivery the event is enriched (re-fetched from Attio) as much as its routes want;
//! while Attio is down (its circuit breaker open) such events wait in the journal without using
//! up attempts. Nothing here holds the only copy of an event: the journal does.
//!
//! The loop is the same for both journals. With the embedded one, ingress hands events over on
//! the channel and `due()` finds leftovers and retries. With the Redis one, ingress only wakes the
//! worker, and `due()` is where events come from: new stream entries, entries a crashed replica
//! left behind, and retries whose time has come.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::RngExt;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub mod collapse;
pub mod order;
pub mod outage;
pub mod unrecorded;

use crate::config::{RetryPolicy, RouteEnrich, WorkerSettings};
use crate::dedupe::{ClaimOutcome, DedupeStore};
use crate::enrich::{Enricher, Enrichment, EnrichmentStatus};
use crate::event::EventKind;
use crate::journal::history::{AttemptRecord, Changes, EventStatus};
use crate::journal::{Journal, JournaledEvent, SinkProgress};
use crate::routing::{EventDimensions, RouteTable};
use crate::sinks::{SinkError, SinkLine, Sinks};

/// How soon an event is looked at again when the dedupe store could not be reached. Such
/// failures do not count as attempts: an outage of Redis must not dead-letter events.
const DEDUPE_UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);

/// Shortest wait of an event while Attio's circuit breaker is open. Such waits do not count as
/// attempts either: an outage of Attio must not dead-letter events.
const ATTIO_UNAVAILABLE_RETRY: Duration = Duration::from_millis(200);

/// Events ingress handed to the worker and not yet finished. The journal scan skips them, so an
/// event is not worked on twice by this process.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Each operation is a single insert/remove/lookup: a poisoned lock holds no broken state.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns false when the event is already in flight.
    pub fn insert(&self, id: &str) -> bool {
        self.lock().insert(id.to_string())
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains(id)
    }

    /// The events in flight right now.
    fn snapshot(&self) -> HashSet<String> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ingress side of the hand-off.
#[derive(Clone)]
pub struct Handoff {
    sender: mpsc::Sender<JournaledEvent>,
    in_flight: InFlight,
    overflow: Arc<Notify>,
    /// False when events must come through the journal (the Redis queue, where reading is what
    /// makes an event this replica's): ingress then only wakes the worker up.
    direct: bool,
}

/// The events of one delivery that ingress is about to journal, held in the in-flight set from
/// before the append until they are handed over. The journal scan skips them meanwhile: were it
/// to find one the moment it is committed and finish it before the hand-off, the handed-over copy
/// would be worked on a second time (the embedded dedupe keeps no done mark; the journal is the
/// record). Dropping a reservation (the append failed, was a duplicate, or the request was
/// cancelled) releases what it still holds, and the scan finds whatever was committed.
pub struct Reservation {
    in_flight: InFlight,
    held: Vec<String>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for id in &self.held {
            self.in_flight.remove(id);
        }
    }
}

impl Handoff {
    /// Reserves the events of the delivery `key` (with `events` events) before it is journaled.
    /// An event already in flight (another copy of the delivery) is not held: its owner keeps it.
    pub fn reserve(&self, key: &str, events: usize) -> Reservation {
        let held = if self.direct {
            (0..events)
                .map(|index| crate::event::event_id(key, index))
                .filter(|id| self.in_flight.insert(id))
                .collect()
        } else {
            Vec::new()
        };
        Reservation {
            in_flight: self.in_flight.clone(),
            held,
        }
    }

    /// Offers freshly journaled events to the worker without waiting. Those that do not fit stay
    /// in the journal and the worker is told to look there.
    pub fn offer(&self, mut reservation: Reservation, events: Vec<JournaledEvent>) {
        if !self.direct {
            if !events.is_empty() {
                self.overflow.notify_one();
            }
            return;
        }
        // Once one event does not fit, the rest of the delivery goes through the journal too:
        // the worker must meet a delivery's events in their order (see `order`).
        let mut full = false;
        for event in events {
            let Some(at) = reservation.held.iter().position(|id| *id == event.id) else {
                continue;
            };
            // From here the event is the channel's (and then the worker's) to release.
            let id = reservation.held.swap_remove(at);
            if full || self.sender.try_send(event).is_err() {
                full = true;
                self.in_flight.remove(&id);
                self.overflow.notify_one();
            }
        }
    }
}

/// Everything one event needs on its way through.
pub struct Pipeline {
    pub journal: Journal,
    pub dedupe: DedupeStore,
    pub routes: RouteTable,
    pub sinks: Sinks,
    pub enricher: Enricher,
    pub settings: WorkerSettings,
    /// Groups of events delivered as one line to routes with `collapse = true`.
    pub collapser: collapse::Collapser,
    /// Dependencies that are down, logged once per outage rather than once per event (shared
    /// with the status API).
    pub outages: Arc<outage::Outages>,
    /// Outcomes the journal could not record, and the pause while it cannot write.
    pub unrecorded: unrecorded::Unrecorded,
    /// Where outcomes are announced to live views.
    pub changes: Changes,
}

pub struct Worker {
    pipeline: Arc<Pipeline>,
    receiver: mpsc::Receiver<JournaledEvent>,
    in_flight: InFlight,
    overflow: Arc<Notify>,
    /// The events in flight by delivery, so that those about one record keep their order.
    order: order::DeliveryOrder,
}

/// Creates the hand-off channel and the worker that reads it.
pub fn channel(pipeline: Pipeline, capacity: usize) -> (Handoff, Worker) {
    let (sender, receiver) = mpsc::channel(capacity);
    let in_flight = InFlight::default();
    let overflow = Arc::new(Notify::new());
    let direct = pipeline.journal.hands_off_directly();
    (
        Handoff {
            sender,
            in_flight: in_flight.clone(),
            overflow: overflow.clone(),
            direct,
        },
        Worker {
            pipeline: Arc::new(pipeline),
            receiver,
            in_flight,
            overflow,
            order: Default::default(),
        },
    )
}

impl Worker {
    /// Runs until `shutdown` fires, then lets in-flight events finish within
    /// `worker.shutdown_grace`. Events still unfinished stay pending in the journal.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let settings = self.pipeline.settings.clone();
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let tasks = TaskTracker::new();
        let scan_limit = (settings.concurrency * 4).max(64);
        if self
            .pipeline
            .routes
            .selects_by_slug(crate::routing::Dimension::List)
            && self.pipeline.enricher.is_enabled()
        {
            // A list deleted before any event named it would otherwise be nameless: read the
            // lists' slugs now, while they exist.
            let pipeline = self.pipeline.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = pipeline.enricher.learn_lists() => {}
                }
            });
        }
        // Look at the journal at once: a restart may have left events behind.
        let mut next_scan = tokio::time::Instant::now();
        loop {
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                received = self.receiver.recv() => match received {
                    Some(event) => Some(event),
                    None => break,
                },
                _ = tokio::time::sleep_until(next_scan) => None,
                _ = self.overflow.notified() => None,
            };
            match event {
                Some(event) => {
                    if !self.dispatch(event, &permits, &tasks, &shutdown).await {
                        break;
                    }
                }
                None => {
                    if let Some(until) = self.journal_paused().await {
                        // The journal cannot write: leave it alone, and look again then.
                        next_scan = until;
                        continue;
                    }
                    let found = self.scan(scan_limit, &permits, &tasks, &shutdown).await;
                    next_scan = tokio::time::Instant::now()
                        + if found >= scan_limit / 2 {
                            // Likely more waiting: come back as soon as the channel is idle.
                            Duration::from_millis(1)
                        } else {
                            settings.poll_interval
                        };
                }
            }
        }
        tasks.close();
        if tokio::time::timeout(settings.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.in_flight.len(),
                "shutdown grace ran out; unfinished events stay in the journal and run after restart"
            );
        }
    }

    /// While the journal cannot write (an outcome could not be recorded), until when to stay away
    /// from it. Once the pause is over the journal is probed: a successful probe ends the
    /// outage, a failed one pauses again, for longer.
    async fn journal_paused(&self) -> Option<tokio::time::Instant> {
        let unrecorded = &self.pipeline.unrecorded;
        let until = unrecorded.paused_until()?;
        if Instant::now() < until {
            return Some(until.into());
        }
        let started = Instant::now();
        match self.pipeline.journal.probe().await {
            Ok(()) => {
                unrecorded.write_succeeded();
                self.pipeline.outages.journal.report_success(started);
                None
            }
            Err(error) => {
                unrecorded.write_failed();
                self.pipeline
                    .outages
                    .journal
                    .report_failure(started, &error);
                tracing::debug!(%error, waiting = unrecorded.len(), "the journal still cannot write");
                unrecorded.paused_until().map(Into::into)
            }
        }
    }

    /// Dispatches due journal events that are not already in flight. Returns how many it found.
    async fn scan(
        &self,
        limit: usize,
        permits: &Arc<Semaphore>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> usize {
        // What is in flight before the read. Such an event may be listed as pending by the read
        // and then finish (done, or rescheduled) while this scan waits for a permit; it must not
        // be dispatched again from this stale copy. Checking only at dispatch time would miss it,
        // as it has left the in-flight set by then. Events that enter the set after this point
        // come from the channel, which this loop does not read during the scan: they are still
        // in the set when their turn comes below.
        let busy = self.in_flight.snapshot();
        let started = Instant::now();
        let due = match self.pipeline.journal.due(limit).await {
            Ok(due) => {
                self.pipeline.outages.journal.report_success(started);
                due
            }
            Err(error) => {
                self.pipeline
                    .outages
                    .journal
                    .report_failure(started, &error);
                tracing::debug!(%error, "cannot read due events from the journal");
                return 0;
            }
        };
        let mut dispatched = 0;
        for event in due {
            if busy.contains(&event.id) || !self.in_flight.insert(&event.id) {
                continue;
            }
            dispatched += 1;
            if !self.dispatch(event, permits, tasks, shutdown).await {
                break;
            }
        }
        dispatched
    }

    /// Starts one event once a permit is free. The event is already in the in-flight set.
    /// Returns false when shutting down (the event then stays pending in the journal).
    async fn dispatch(
        &self,
        event: JournaledEvent,
        permits: &Arc<Semaphore>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> bool {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            permit = permits.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else {
            self.in_flight.remove(&event.id);
            return false;
        };
        let pipeline = self.pipeline.clone();
        let in_flight = self.in_flight.clone();
        // Taken here, in dispatch order (the delivery's own order), not in the task.
        let ticket = self.order.enter(&event.delivery_key, event.index);
        let span = tracing::info_span!(
            "event",
            event_id = %event.id,
            delivery_key = %event.delivery_key,
            event_type = %crate::event::printable(&event.event_type),
            request_id = event.request_id.as_deref().unwrap_or("-"),
        );
        tasks.spawn(
            async move {
                process(&pipeline, &event, ticket).await;
                in_flight.remove(&event.id);
                drop(permit);
            }
            .instrument(span),
        );
        true
    }
}

/// What happened to one event on this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered { sinks: usize },
    Duplicate,
    Deferred,
    Retrying { attempts: u32 },
    DeadLettered,
}

/// Drives one event through dedupe, routing and delivery, and records the outcome. `ticket` is
/// its place in its delivery's order: it delivers after the earlier events about the same
/// subject, and lets the later ones go once its own deliveries are over.
pub async fn process(
    pipeline: &Pipeline,
    event: &JournaledEvent,
    ticket: order::Ticket,
) -> Outcome {
    let outcome = attempt(pipeline, event, ticket).await;
    let status = match &outcome {
        Outcome::Delivered { .. } | Outcome::Duplicate => Some(EventStatus::Delivered),
        Outcome::Retrying { .. } => Some(EventStatus::Retrying),
        Outcome::DeadLettered => Some(EventStatus::Dead),
        Outcome::Deferred => None,
    };
    if let Some(status) = status {
        pipeline
            .changes
            .publish(&event.id, &event.event_type, status);
    }
    let label = match &outcome {
        Outcome::Delivered { .. } => "delivered",
        Outcome::Duplicate => {
            metrics::counter!(crate::metrics::DEDUPE_HITS).increment(1);
            "duplicate"
        }
        Outcome::Deferred => "deferred",
        Outcome::Retrying { .. } => "retrying",
        Outcome::DeadLettered => {
            metrics::counter!(crate::metrics::DEAD_LETTERS).increment(1);
            "dead_lettered"
        }
    };
    // Unknown types share one label so a flood of odd names cannot blow up the series count.
    let kind = EventKind::parse(&event.event_type);
    let kind = if kind.is_known() {
        kind.as_str().to_string()
    } else {
        "unknown".to_string()
    };
    metrics::counter!(crate::metrics::EVENTS_PROCESSED, "kind" => kind, "outcome" => label)
        .increment(1);
    outcome
}

async fn attempt(pipeline: &Pipeline, event: &JournaledEvent, ticket: order::Ticket) -> Outcome {
    // What an earlier attempt of this process did and the journal could not record.
    let recalled = pipeline.unrecorded.recall(event);
    let event = recalled.as_ref().unwrap_or(event);
    let started = Instant::now();
    let claim = pipeline.dedupe.claim(&event.id).await;
    if claim.is_ok() {
        pipeline.outages.dedupe.report_success(started);
    }
    let token = match claim {
        Ok(ClaimOutcome::Fresh(token)) => token,
        Ok(ClaimOutcome::Duplicate) => {
            tracing::info!("already processed; skipping duplicate");
            let found = AttemptRecord {
                sinks_done: event.sinks_done.clone(),
                ..AttemptRecord::default()
            };
            let started = Instant::now();
            let result = pipeline.journal.complete(&event.id, &found).await;
            record(pipeline, event, started, result, None);
            return Outcome::Duplicate;
        }
        Ok(ClaimOutcome::InProgress) => {
            tracing::debug!("claimed elsewhere; looking again after the lease");
            defer(pipeline, event, DEDUPE_UNAVAILABLE_RETRY, None).await;
            return Outcome::Deferred;
        }
        Err(error) => {
            pipeline.outages.dedupe.report_failure(started, &error);
            tracing::debug!(%error, "dedupe store unavailable; event waits in the journal");
            defer(
                pipeline,
                event,
                DEDUPE_UNAVAILABLE_RETRY,
                Some(&error.to_string()),
            )
            .await;
            return Outcome::Deferred;
        }
    };

    let kind = EventKind::parse(&event.event_type);
    if !kind.is_known() {
        tracing::debug!("event type unknown to this version; routed by name");
    }
    // Enrich first (as much as the routes matching the type want), so that route filters can
    // also test the resolved names (`object`, `list`, `attribute`) and the fetched `data`.
    let wanted = pipeline.routes.enrichment_for(kind.as_str());
    let settle = pipeline.routes.settle_for(kind.as_str());
    let started = Instant::now();
    let enrichment = pipeline
        .enricher
        .enrich_settled(&kind, &event.raw, wanted, settle)
        .await;
    let attio_outage = report_attio(pipeline, &enrichment, started);
    if enrichment.status == EnrichmentStatus::Failed && wanted == RouteEnrich::Required {
        if let Some(retry_in) = attio_down(pipeline, &enrichment) {
            // Attio is down, not this event: wait in the journal without using an attempt.
            tracing::debug!(retry_in = ?retry_in, "Attio unavailable; event waits in the journal");
            release(pipeline, event, &token).await;
            let message = enrichment.error.as_ref().map(|e| e.to_string());
            defer(pipeline, event, jittered(retry_in), message.as_deref()).await;
            return Outcome::Deferred;
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
    let keys = crate::enrich::history_keys(&kind, &event.raw, &enrichment);
    let mut found = AttemptRecord {
        enrichment: Some(enrichment.status.as_str().to_string()),
        object: keys.object,
        list: keys.list,
        record_id: keys.record_id,
        ..AttemptRecord::default()
    };
    found.keep_data(enrichment.data.as_ref());
    let dimensions = if pipeline.routes.has_dimension_keys() {
        crate::enrich::dimensions(&kind, &event.raw, &enrichment)
    } else {
        EventDimensions::default()
    };
    let targets = if wanted == RouteEnrich::Off {
        pipeline
            .routes
            .routed(kind.as_str(), &event.raw, &dimensions)
    } else {
        pipeline.routes.routed(
            kind.as_str(),
            &with_enrichment(&event.raw, &enrichment),
            &dimensions,
        )
    };
    // Events that shared one fetch, when some route collapses them: every one of them arrives
    // at the group (see `collapse`), with the collapsing sinks it still has to reach.
    let group = enrichment
        .shared
        .filter(|shared| shared.members > 1 && pipeline.routes.has_collapse());
    let mut progress = SinkProgress {
        attempts: event.attempts,
        last_error: String::new(),
        sinks_done: event.sinks_done.clone(),
        sink_attempts: event.sink_attempts.clone(),
        sinks_failed: Vec::new(),
    };
    let pending: Vec<_> = targets
        .iter()
        .copied()
        .filter(|t| !progress.sinks_done.iter().any(|d| d == t.name))
        .collect();
    let mut failures: Vec<(String, SinkError)> = Vec::new();
    // `None`: the event has nothing to deliver together and is only counted.
    let count_in = |together: Option<(&SinkLine, Vec<String>)>| {
        group.as_ref().map(|shared| {
            let member = together.map(|(line, sinks)| collapse::Member {
                event_id: event.id.clone(),
                position: shared.position,
                attribute: changed_attribute(&kind, event, &enrichment),
                line: line.clone(),
                sinks,
            });
            pipeline.collapser.arrive(shared, member)
        })
    };
    if pending.is_empty() {
        count_in(None);
        if targets.is_empty() {
            tracing::debug!("no route matches; nothing to deliver");
        }
    } else if let Some(error) = enrichment_failure(&enrichment, wanted) {
        count_in(None);
        if attio_outage {
            tracing::debug!(error = %error.message, "enrichment failed");
        } else {
            tracing::warn!(error = %error.message, "enrichment failed");
        }
        for sink in pending {
            *progress
                .sink_attempts
                .entry(sink.name.to_string())
                .or_insert(0) += 1;
            failures.push((sink.name.to_string(), error.clone()));
        }
    } else {
        match SinkLine::build_enriched(event, &enrichment) {
            Ok(line) => {
                let (together, alone): (Vec<_>, Vec<_>) = pending
                    .into_iter()
                    .partition(|sink| group.is_some() && sink.collapse);
                let together: Vec<String> =
                    together.iter().map(|sink| sink.name.to_string()).collect();
                let role = count_in(
                    Some((&line, together.clone())).filter(|(_, sinks)| !sinks.is_empty()),
                );
                // A collapsing sink gets the same shape for an event that shared its fetch with
                // no other (a group of one).
                let alone_line = if alone.iter().any(|sink| sink.collapse)
                    && matches!(kind, EventKind::RecordUpdated | EventKind::ListEntryUpdated)
                {
                    let member = collapse::Member {
                        event_id: event.id.clone(),
                        position: 0,
                        attribute: changed_attribute(&kind, event, &enrichment),
                        line: line.clone(),
                        sinks: Vec::new(),
                    };
                    collapse::collapsed_line(&[&member]).ok()
                } else {
                    None
                };
                // Events of this delivery about the same record, listed before this one, reach
                // the sinks first. Waiting here, after the fetch (shared with them) and after
                // joining a collapse group, holds nothing they need.
                ticket
                    .wait_turn(|| {
                        crate::enrich::plan(&kind, &crate::enrich::EventIds::parse(&event.raw))
                            .ok()
                            .and_then(|plan| plan.subject)
                    })
                    .await;
                for routed in alone {
                    let name = routed.name;
                    let line = match &alone_line {
                        Some(single) if routed.collapse => single,
                        _ => &line,
                    };
                    let started = Instant::now();
                    let result = match pipeline.sinks.get(name) {
                        Some(sink) => {
                            let attempt =
                                progress.sink_attempts.get(name).copied().unwrap_or(0) + 1;
                            sink.deliver(line, attempt).await
                        }
                        None => Err(SinkError::permanent("sink is not configured")),
                    };
                    metrics::counter!(
                        crate::metrics::SINK_DELIVERIES,
                        "sink" => name.to_string(),
                        "outcome" => if result.is_ok() { "ok" } else { "error" }
                    )
                    .increment(1);
                    report_sink(pipeline, name, &result, started, "sink delivery failed");
                    note_sink(&mut found, name, &result);
                    match result {
                        Ok(()) => progress.sinks_done.push(name.to_string()),
                        Err(error) => {
                            *progress.sink_attempts.entry(name.to_string()).or_insert(0) += 1;
                            failures.push((name.to_string(), error));
                        }
                    }
                }
                // The collapsed line waits for the group's leader, which may be listed later:
                // let the later events go first.
                drop(ticket);
                if let Some(role) = role {
                    let started = Instant::now();
                    let results = deliver_together(pipeline, role, &progress).await;
                    for name in together {
                        let result = results.get(&name).cloned().unwrap_or_else(|| {
                            Err(SinkError::transient(
                                "the collapsed delivery of this event's group did not finish",
                            ))
                        });
                        report_sink(
                            pipeline,
                            &name,
                            &result,
                            started,
                            "collapsed sink delivery failed",
                        );
                        note_sink(&mut found, &name, &result);
                        match result {
                            Ok(()) => progress.sinks_done.push(name),
                            Err(error) => {
                                *progress.sink_attempts.entry(name.clone()).or_insert(0) += 1;
                                failures.push((name, error));
                            }
                        }
                    }
                }
            }
            // The event itself cannot be turned into a line: no sink can take it.
            Err(error) => {
                count_in(None);
                for sink in pending {
                    *progress
                        .sink_attempts
                        .entry(sink.name.to_string())
                        .or_insert(0) += 1;
                    failures.push((sink.name.to_string(), error.clone()));
                }
            }
        }
    }

    if failures.is_empty() {
        let started = Instant::now();
        if let Err(error) = pipeline.dedupe.mark_done(&event.id).await {
            // The journal still records the event as done below; a redelivery of the same key is
            // also refused at ingress, so the only cost is a weaker guard against a replay.
            pipeline.outages.dedupe.report_failure(started, &error);
            tracing::debug!(%error, "could not record the event as done in the dedupe store");
        }
        found.sinks_done = progress.sinks_done.clone();
        let started = Instant::now();
        let result = pipeline.journal.complete(&event.id, &found).await;
        record(pipeline, event, started, result, Some(&progress));
        tracing::info!(sinks = progress.sinks_done.len(), "event delivered");
        return Outcome::Delivered {
            sinks: progress.sinks_done.len(),
        };
    }

    release(pipeline, event, &token).await;
    progress.attempts = event.attempts + 1;
    progress.last_error = failures
        .iter()
        .map(|(sink, error)| format!("{sink}: {}", error.message))
        .collect::<Vec<_>>()
        .join("; ");
    progress.sinks_failed = failures.iter().map(|(sink, _)| sink.clone()).collect();
    found.sinks_done = progress.sinks_done.clone();
    for (sink, error) in &failures {
        found
            .sink_errors
            .entry(sink.clone())
            .or_insert_with(|| error.message.clone());
    }
    let policy = |sink: &str| match pipeline.sinks.retry(sink) {
        Some(retry) => RetryPolicy::resolve(retry, &pipeline.settings),
        None => RetryPolicy::resolve(&Default::default(), &pipeline.settings),
    };
    let exhausted = failures.iter().any(|(sink, error)| {
        error.permanent
            || progress.sink_attempts.get(sink).copied().unwrap_or(0) >= policy(sink).attempts
    });
    if exhausted {
        tracing::error!(
            attempts = progress.attempts,
            error = %progress.last_error,
            "event moved to the dead letters"
        );
        let started = Instant::now();
        let result = pipeline
            .journal
            .dead_letter_sinks(&event.id, &progress, &found)
            .await;
        record(pipeline, event, started, result, Some(&progress));
        return Outcome::DeadLettered;
    }
    // Several failing sinks: come back after the shortest of their backoffs.
    let delay = failures
        .iter()
        .map(|(sink, error)| {
            let attempts = progress.sink_attempts.get(sink).copied().unwrap_or(1);
            let delay = backoff_with(&policy(sink), attempts);
            error.retry_after.map_or(delay, |asked| delay.max(asked))
        })
        .min()
        .unwrap_or(pipeline.settings.retry_initial);
    // Only retryable failures come this far, and each was reported to its dependency's outage
    // (logged once for all the events it holds up): per event this is detail.
    tracing::debug!(
        attempts = progress.attempts,
        retry_in = ?delay,
        error = %progress.last_error,
        "event will be retried for the sinks that failed"
    );
    let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    let started = Instant::now();
    let result = pipeline
        .journal
        .retry_sinks(&event.id, &progress, next, &found)
        .await;
    record(pipeline, event, started, result, Some(&progress));
    Outcome::Retrying {
        attempts: progress.attempts,
    }
}

/// Notes one sink's result in what the history keeps: when it took the event, or its error.
fn note_sink(found: &mut AttemptRecord, sink: &str, result: &Result<(), SinkError>) {
    match result {
        Ok(()) => {
            let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            found.sinks_delivered.insert(sink.to_string(), now);
        }
        Err(error) => {
            found
                .sink_errors
                .insert(sink.to_string(), error.message.clone());
        }
    }
}

/// The attribute an update names: its slug, or its id when the slug is unknown.
fn changed_attribute(
    kind: &EventKind,
    event: &JournaledEvent,
    enrichment: &Enrichment,
) -> Option<String> {
    enrichment.attribute.clone().or_else(|| {
        crate::enrich::dimensions(kind, &event.raw, enrichment)
            .attribute
            .id
    })
}

/// This event's part in a collapsed delivery: the leader gathers its group and delivers one line
/// per sink for the members that want it; a follower waits for the leader's results. Returns what
/// each of this event's collapsing sinks answered.
async fn deliver_together(
    pipeline: &Pipeline,
    role: collapse::Role,
    progress: &SinkProgress,
) -> collapse::Results {
    match role {
        collapse::Role::Counted => collapse::Results::new(),
        // A leader that is gone (shutdown) leaves the result out: a transient failure.
        collapse::Role::Follower(results) => results.await.unwrap_or_default(),
        collapse::Role::Leader(leader) => {
            let gathered = leader.gather().await;
            let mut sinks: Vec<&str> = Vec::new();
            for member in &gathered.members {
                for sink in &member.sinks {
                    if !sinks.contains(&sink.as_str()) {
                        sinks.push(sink);
                    }
                }
            }
            let mut results = collapse::Results::new();
            for name in sinks {
                let members: Vec<&collapse::Member> = gathered
                    .members
                    .iter()
                    .filter(|m| m.sinks.iter().any(|s| s == name))
                    .collect();
                let result = match (collapse::collapsed_line(&members), pipeline.sinks.get(name)) {
                    (Ok(line), Some(sink)) => {
                        let attempt = progress.sink_attempts.get(name).copied().unwrap_or(0) + 1;
                        tracing::info!(sink = %name, events = members.len(), "delivering collapsed events as one line");
                        sink.deliver(&line, attempt).await
                    }
                    (Err(error), _) => Err(error),
                    (_, None) => Err(SinkError::permanent("sink is not configured")),
                };
                metrics::counter!(
                    crate::metrics::SINK_DELIVERIES,
                    "sink" => name.to_string(),
                    "outcome" => if result.is_ok() { "ok" } else { "error" }
                )
                .increment(1);
                results.insert(name.to_string(), result);
            }
            gathered.answer(&results);
            results
        }
    }
}

/// Gives up the event's claim so that its retry can take it at once.
async fn release(pipeline: &Pipeline, event: &JournaledEvent, token: &crate::dedupe::ClaimToken) {
    let started = Instant::now();
    if let Err(error) = pipeline.dedupe.release(&event.id, token).await {
        pipeline.outages.dedupe.report_failure(started, &error);
        tracing::debug!(%error, "could not release the claim; it expires after its lease");
    }
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

/// Tells the sink's outage how a delivery went. A permanent failure is about the event, not the
/// sink: it is logged with the event.
fn report_sink(
    pipeline: &Pipeline,
    name: &str,
    result: &Result<(), SinkError>,
    started: Instant,
    message: &str,
) {
    match result {
        Ok(()) => pipeline.outages.sink(name).report_success(started),
        Err(error) if error.permanent => {
            tracing::warn!(sink = %name, %error, permanent = true, "{message}");
        }
        Err(error) => {
            pipeline.outages.sink(name).report_failure(started, error);
            tracing::debug!(sink = %name, %error, permanent = false, "{message}");
        }
    }
}

/// While Attio's circuit breaker is open and this event failed for that reason: how long the
/// event should wait.
fn attio_down(pipeline: &Pipeline, enrichment: &Enrichment) -> Option<Duration> {
    let down = match &enrichment.error {
        Some(crate::attio::AttioError::CircuitOpen { .. }) => true,
        Some(error) => error.is_transient() && pipeline.enricher.unavailable_for().is_some(),
        None => false,
    };
    down.then(|| {
        pipeline
            .enricher
            .unavailable_for()
            .unwrap_or(ATTIO_UNAVAILABLE_RETRY)
            .max(ATTIO_UNAVAILABLE_RETRY)
    })
}

/// The failure every pending sink records when enrichment the routes require failed.
fn enrichment_failure(enrichment: &Enrichment, wanted: RouteEnrich) -> Option<SinkError> {
    if enrichment.status != EnrichmentStatus::Failed || wanted != RouteEnrich::Required {
        return None;
    }
    Some(match &enrichment.error {
        // Auth errors are permanent for a request, but an operator can fix the key: keep such
        // events on the retry path rather than dead-letter them at once.
        Some(error) if error.is_permanent() && !error.is_auth() => {
            SinkError::permanent(format!("enrichment: {error}"))
        }
        Some(error) => {
            let failure = SinkError::transient(format!("enrichment: {error}"));
            match error.retry_after() {
                Some(delay) => failure.with_retry_after(delay),
                None => failure,
            }
        }
        None => SinkError::transient("enrichment failed"),
    })
}

/// The event as route filters see it after enrichment: its own keys plus `enrichment`,
/// `object`, `list`, `attribute` and `data`.
fn with_enrichment(raw: &str, enrichment: &Enrichment) -> String {
    let Ok(serde_json::Value::Object(mut event)) = serde_json::from_str(raw) else {
        return raw.to_string();
    };
    let text = |value: &Option<String>| {
        value.as_ref().map_or(serde_json::Value::Null, |v| {
            serde_json::Value::String(v.clone())
        })
    };
    event.insert("enrichment".into(), enrichment.status.as_str().into());
    event.insert("object".into(), text(&enrichment.object));
    event.insert("list".into(), text(&enrichment.list));
    event.insert("attribute".into(), text(&enrichment.attribute));
    event.insert(
        "data".into(),
        enrichment.data.clone().unwrap_or(serde_json::Value::Null),
    );
    serde_json::Value::Object(event).to_string()
}

/// `delay` plus up to a quarter more, so that events deferred together come back spread out.
fn jittered(delay: Duration) -> Duration {
    let spread = (delay.as_millis() / 4) as u64;
    delay + Duration::from_millis(rand::rng().random_range(0..=spread))
}

async fn defer(pipeline: &Pipeline, event: &JournaledEvent, delay: Duration, error: Option<&str>) {
    let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    let started = Instant::now();
    let result = pipeline.journal.reschedule(event, next, error).await;
    record(pipeline, event, started, result, None);
}

/// Handles the journal's answer to recording an event's outcome (`progress`: which sinks took
/// it, when any did). When the journal refused, the event stays pending there and a later scan
/// finds it again: what the sinks took is kept in memory so that none is sent the event again,
/// and the worker pauses while the journal cannot write, reported as one outage of the journal
/// rather than an error per event.
fn record(
    pipeline: &Pipeline,
    event: &JournaledEvent,
    started: Instant,
    result: Result<(), crate::journal::JournalError>,
    progress: Option<&SinkProgress>,
) {
    match result {
        // Whatever was kept is in the journal now: each of these writes carries the sinks done.
        Ok(()) => pipeline.unrecorded.forget(&event.id),
        Err(error) => {
            if let Some(progress) = progress {
                pipeline.unrecorded.remember(&event.id, progress);
            }
            pipeline.unrecorded.write_failed();
            pipeline.outages.journal.report_failure(started, &error);
            tracing::debug!(%error, "could not record the event's outcome in the journal; kept in memory until it can");
        }
    }
}

/// Exponential backoff from `retry_initial`, capped at `retry_max`, with jitter over the upper
/// half so that retries of many events spread out but never come back at once.
pub fn backoff(settings: &WorkerSettings, attempts: u32) -> Duration {
    backoff_with(
        &RetryPolicy::resolve(&Default::default(), settings),
        attempts,
    )
}

/// [`backoff`] for one sink's policy.
pub fn backoff_with(policy: &RetryPolicy, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let ceiling = policy
        .initial
        .saturating_mul(1u32 << exponent)
        .min(policy.max);
    let half = ceiling / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff(capacity: usize) -> (Handoff, mpsc::Receiver<JournaledEvent>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let handoff = Handoff {
            sender,
            in_flight: InFlight::default(),
            overflow: Arc::new(Notify::new()),
            direct: true,
        };
        (handoff, receiver)
    }

    fn journaled(key: &str, count: usize) -> Vec<JournaledEvent> {
        (0..count)
            .map(|index| JournaledEvent {
                id: crate::event::event_id(key, index),
                delivery_key: key.to_string(),
                index: index as u32,
                webhook_id: None,
                event_type: "record.updated".to_string(),
                received_at: "2026-11-29T00:00:00Z".to_string(),
                request_id: None,
                raw: "{}".to_string(),
                attempts: 0,
                sinks_done: Vec::new(),
                sink_attempts: Default::default(),
            })
            .collect()
    }

    #[test]
    fn a_reserved_event_stays_in_flight_from_before_the_append_through_the_hand_off() {
        let (handoff, mut receiver) = handoff(8);
        let reservation = handoff.reserve("k", 2);
        // What a journal scan meanwhile sees: both events busy, so it leaves them alone.
        assert!(handoff.in_flight.contains("k:0") && handoff.in_flight.contains("k:1"));
        handoff.offer(reservation, journaled("k", 2));
        assert_eq!(
            receiver.try_recv().map(|e| e.id).ok().as_deref(),
            Some("k:0")
        );
        assert_eq!(
            receiver.try_recv().map(|e| e.id).ok().as_deref(),
            Some("k:1")
        );
        // Handed over: in flight until the worker finishes them, not released by the hand-off.
        assert_eq!(handoff.in_flight.len(), 2);
    }

    #[test]
    fn a_dropped_reservation_releases_its_events_to_the_journal_scan() {
        let (handoff, mut receiver) = handoff(8);
        let reservation = handoff.reserve("k", 3);
        assert_eq!(handoff.in_flight.len(), 3);
        drop(reservation);
        assert!(handoff.in_flight.is_empty());
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn an_event_already_in_flight_is_neither_handed_over_again_nor_released() {
        let (handoff, mut receiver) = handoff(8);
        assert!(handoff.in_flight.insert("k:0"));
        let reservation = handoff.reserve("k", 1);
        handoff.offer(reservation, journaled("k", 1));
        assert!(receiver.try_recv().is_err(), "its owner is working on it");
        assert!(handoff.in_flight.contains("k:0"), "and still holds it");
    }

    #[test]
    fn events_that_do_not_fit_the_channel_are_released_to_the_journal_scan() {
        let (handoff, mut receiver) = handoff(1);
        let reservation = handoff.reserve("k", 2);
        handoff.offer(reservation, journaled("k", 2));
        assert_eq!(
            receiver.try_recv().map(|e| e.id).ok().as_deref(),
            Some("k:0")
        );
        assert!(receiver.try_recv().is_err());
        assert!(handoff.in_flight.contains("k:0"));
        assert!(
            !handoff.in_flight.contains("k:1"),
            "the scan takes k:1 from the journal"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let settings = WorkerSettings {
            enabled: true,
            concurrency: 1,
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let first = backoff(&settings, 1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = backoff(&settings, 3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = backoff(&settings, 30);
            assert!(late >= Duration::from_secs(5) && late <= Duration::from_secs(10));
        }
    }
}
