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
//! One attempt reads as the event's life ([`attempt`]), one module per stage: [`claim`] (the
//! dedupe claim), [`route`] (enrich, route, build the sink line), [`deliver`] (to each sink;
//! [`collapse`] for the line of a group, [`order`] for the delivery's order, [`send`] for one
//! line to one sink), [`settle`] (record the outcome; [`backoff`] says when the event comes
//! back, or that it is dead). The event's JSON is read once, into a [`WorkItem`] ([`item`]),
//! when its task starts.
//!
//! The loop is the same for both journals. With the embedded one, ingress hands events over on
//! the channel and `due()` finds leftovers and retries. With the Redis one, ingress only wakes the
//! worker, and `due()` is where events come from: new stream entries, entries a crashed replica
//! left behind, and retries whose time has come.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub(crate) mod backoff;
pub(crate) mod claim;
pub(crate) mod collapse;
pub(crate) mod deliver;
pub(crate) mod item;
pub(crate) mod order;
pub(crate) mod outage;
pub(crate) mod route;
pub(crate) mod send;
pub(crate) mod settle;
pub(crate) mod unrecorded;

use crate::config::WorkerSettings;
use crate::dedupe::DedupeStore;
use crate::enrich::Enricher;
use crate::journal::history::{Changes, EventStatus};
use crate::journal::{Journal, JournaledEvent};
use crate::routing::RouteTable;
use crate::sinks::Sinks;
use claim::Claim;
use item::WorkItem;
use route::Prepared;

/// Events ingress handed to the worker and not yet finished. The journal scan skips them, so an
/// event is not worked on twice by this process.
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Each operation is a single insert/remove/lookup: a poisoned lock holds no broken state.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns false when the event is already in flight.
    pub(crate) fn insert(&self, id: &str) -> bool {
        self.lock().insert(id.to_string())
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.lock().contains(id)
    }

    /// The events in flight right now.
    fn snapshot(&self) -> HashSet<String> {
        self.lock().clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ingress side of the hand-off.
#[derive(Clone)]
pub(crate) struct Handoff {
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
pub(crate) struct Reservation {
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
    pub(crate) fn reserve(&self, key: &str, events: usize) -> Reservation {
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
    pub(crate) fn offer(&self, mut reservation: Reservation, events: Vec<JournaledEvent>) {
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
pub(crate) struct Pipeline {
    pub(crate) journal: Journal,
    pub(crate) dedupe: DedupeStore,
    pub(crate) routes: RouteTable,
    pub(crate) sinks: Sinks,
    pub(crate) enricher: Enricher,
    pub(crate) settings: WorkerSettings,
    /// Groups of events delivered as one line to routes with `collapse = true`.
    pub(crate) collapser: collapse::Collapser,
    /// Dependencies that are down, logged once per outage rather than once per event (shared
    /// with the status API).
    pub(crate) outages: Arc<outage::Outages>,
    /// Outcomes the journal could not record, and the pause while it cannot write.
    pub(crate) unrecorded: unrecorded::Unrecorded,
    /// Where outcomes are announced to live views.
    pub(crate) changes: Changes,
}

pub(crate) struct Worker {
    pipeline: Arc<Pipeline>,
    receiver: mpsc::Receiver<JournaledEvent>,
    in_flight: InFlight,
    overflow: Arc<Notify>,
    /// The events in flight by delivery, so that those about one record keep their order.
    order: order::DeliveryOrder,
}

/// Creates the hand-off channel and the worker that reads it.
pub(crate) fn channel(pipeline: Pipeline, capacity: usize) -> (Handoff, Worker) {
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
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
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
        // Boxed: an event's future is a few kilobytes, and a task's future is moved several
        // times as it is spawned and written over once more as it finishes; a box moves as one
        // pointer.
        tasks.spawn(Box::pin(
            async move {
                // The one place the event's JSON is read; every stage borrows the item.
                let mut item = WorkItem::new(event, pipeline.routes.has_filters());
                // What an earlier attempt of this process did and the journal could not record.
                pipeline.unrecorded.recall(&item.id, &mut item.progress);
                process(&pipeline, &item, ticket).await;
                in_flight.remove(&item.id);
                drop(permit);
            }
            .instrument(span),
        ));
        true
    }
}

/// What happened to one event on this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered { sinks: usize },
    Duplicate,
    Deferred,
    Retrying { attempts: u32 },
    DeadLettered,
}

/// Drives one event through dedupe, routing and delivery, and records the outcome. `ticket` is
/// its place in its delivery's order: it delivers after the earlier events about the same
/// subject, and lets the later ones go once its own deliveries are over.
pub(crate) async fn process(
    pipeline: &Pipeline,
    item: &WorkItem,
    ticket: order::Ticket,
) -> Outcome {
    let outcome = attempt(pipeline, item, ticket).await;
    let status = match &outcome {
        Outcome::Delivered { .. } | Outcome::Duplicate => Some(EventStatus::Delivered),
        Outcome::Retrying { .. } => Some(EventStatus::Retrying),
        Outcome::DeadLettered => Some(EventStatus::Dead),
        Outcome::Deferred => None,
    };
    if let Some(status) = status {
        pipeline.changes.publish(&item.id, &item.event_type, status);
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
    crate::metrics::count_event(item.kind.label(), label);
    outcome
}

/// One attempt at one event: claim it, enrich and route it, deliver it, settle the outcome.
async fn attempt(pipeline: &Pipeline, item: &WorkItem, ticket: order::Ticket) -> Outcome {
    let token = match claim::claim(pipeline, item).await {
        Claim::Taken(token) => token,
        Claim::Settled(outcome) => return outcome,
    };
    let routed = match route::enrich_and_route(pipeline, item).await {
        Prepared::Routed(routed) => routed,
        Prepared::AttioDown { retry_in, error } => {
            // Attio is down, not this event: wait in the journal without using an attempt.
            settle::release(pipeline, item, &token).await;
            return settle::defer(pipeline, item, retry_in, error.as_deref()).await;
        }
    };
    let delivered = deliver::deliver(pipeline, item, routed, ticket).await;
    settle::settle(pipeline, item, &token, delivered).await
}

#[cfg(test)]
mod tests;
