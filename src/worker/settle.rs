//! Settle: the last stage of an attempt, and every other way an event leaves one.
//!
//! In: how the attempt went (what each sink answered, or why the event must wait). Out: the
//! [`Outcome`], recorded: done in the dedupe store and the journal once every route finished;
//! otherwise the claim released and the event rescheduled for the sinks that failed (with their
//! backoff), or moved to the dead letters when one of them is exhausted (see `backoff`). A
//! journal that cannot record the outcome leaves the event pending there; what its sinks took
//! is then kept in memory (`unrecorded`) so that none is sent the event again.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::backoff::Policies;
use super::deliver::Delivered;
use super::item::WorkItem;
use super::{Outcome, Pipeline};
use crate::dedupe::ClaimToken;
use crate::journal::history::AttemptRecord;
use crate::journal::SinkProgress;

/// Records how the attempt went: done when no sink failed, else retrying or dead.
pub(crate) async fn settle(
    pipeline: &Pipeline,
    item: &WorkItem,
    token: &ClaimToken,
    delivered: Delivered,
) -> Outcome {
    let Delivered {
        mut progress,
        failures,
        mut found,
    } = delivered;
    if failures.is_empty() {
        let started = Instant::now();
        if let Err(error) = pipeline.dedupe.mark_done(&item.id).await {
            // The journal still records the event as done below; a redelivery of the same key is
            // also refused at ingress, so the only cost is a weaker guard against a replay.
            pipeline.outages.dedupe.report_failure(started, &error);
            tracing::debug!(%error, "could not record the event as done in the dedupe store");
        }
        found.sinks_done = progress.sinks_done.clone();
        let started = Instant::now();
        let result = pipeline.journal.complete(&item.id, found).await;
        record(pipeline, &item.id, started, result, Some(&progress));
        tracing::info!(sinks = progress.sinks_done.len(), "event delivered");
        return Outcome::Delivered {
            sinks: progress.sinks_done.len(),
        };
    }

    release(pipeline, item, token).await;
    progress.attempts = item.progress.attempts + 1;
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
    let policies = Policies {
        sinks: &pipeline.sinks,
        worker: &pipeline.settings,
    };
    if policies.exhausted(&failures, &progress) {
        tracing::error!(
            attempts = progress.attempts,
            error = %progress.last_error,
            "event moved to the dead letters"
        );
        let started = Instant::now();
        let result = pipeline
            .journal
            .dead_letter_sinks(&item.id, &progress, &found)
            .await;
        record(pipeline, &item.id, started, result, Some(&progress));
        return Outcome::DeadLettered;
    }
    let delay = policies.retry_in(&failures, &progress);
    // Only retryable failures come this far, and each was reported to its dependency's outage
    // (logged once for all the events it holds up): per event this is detail.
    tracing::debug!(
        attempts = progress.attempts,
        retry_in = ?delay,
        error = %progress.last_error,
        "event will be retried for the sinks that failed"
    );
    let started = Instant::now();
    let result = pipeline
        .journal
        .retry_sinks(&item.id, &progress, after(delay), &found)
        .await;
    record(pipeline, &item.id, started, result, Some(&progress));
    Outcome::Retrying {
        attempts: progress.attempts,
    }
}

/// Another attempt already finished the event (the dedupe store says so): done here too, with
/// the sinks the journal knows took it.
pub(crate) async fn already_done(pipeline: &Pipeline, item: &WorkItem) -> Outcome {
    let found = AttemptRecord {
        sinks_done: item.progress.sinks_done.clone(),
        ..AttemptRecord::default()
    };
    let started = Instant::now();
    let result = pipeline.journal.complete(&item.id, found).await;
    record(pipeline, &item.id, started, result, None);
    Outcome::Duplicate
}

/// Lets the event wait `delay` in the journal without using an attempt (a dependency is down,
/// or another replica holds its claim).
pub(crate) async fn defer(
    pipeline: &Pipeline,
    item: &WorkItem,
    delay: Duration,
    error: Option<&str>,
) -> Outcome {
    let started = Instant::now();
    let result = pipeline
        .journal
        .reschedule(&item.id, &item.progress, after(delay), error)
        .await;
    record(pipeline, &item.id, started, result, None);
    Outcome::Deferred
}

/// Gives up the event's claim so that its retry can take it at once.
pub(crate) async fn release(pipeline: &Pipeline, item: &WorkItem, token: &ClaimToken) {
    let started = Instant::now();
    if let Err(error) = pipeline.dedupe.release(&item.id, token).await {
        pipeline.outages.dedupe.report_failure(started, &error);
        tracing::debug!(%error, "could not release the claim; it expires after its lease");
    }
}

/// The moment `delay` from now.
fn after(delay: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
}

/// Handles the journal's answer to recording an event's outcome (`progress`: which sinks took
/// it, when any did). When the journal refused, the event stays pending there and a later scan
/// finds it again: what the sinks took is kept in memory so that none is sent the event again,
/// and the worker pauses while the journal cannot write, reported as one outage of the journal
/// rather than an error per event.
fn record(
    pipeline: &Pipeline,
    id: &str,
    started: Instant,
    result: Result<(), crate::journal::JournalError>,
    progress: Option<&SinkProgress>,
) {
    match result {
        // Whatever was kept is in the journal now: each of these writes carries the sinks done.
        Ok(()) => pipeline.unrecorded.forget(id),
        Err(error) => {
            if let Some(progress) = progress {
                pipeline.unrecorded.remember(id, progress);
            }
            pipeline.unrecorded.write_failed();
            pipeline.outages.journal.report_failure(started, &error);
            tracing::debug!(%error, "could not record the event's outcome in the journal; kept in memory until it can");
        }
    }
}
