//! Claim: the first stage of an attempt. No work on an event starts before its claim is taken.
//!
//! In: the work item. Out: [`Claim::Taken`] with the token that releases the claim, or
//! [`Claim::Settled`] when the event is not this attempt's to work on: already done (a
//! duplicate: recorded as done), claimed by another replica, or the dedupe store unreachable
//! (both: the event waits in the journal without using an attempt).

use std::time::Instant;

use super::backoff::DEDUPE_UNAVAILABLE_RETRY;
use super::item::WorkItem;
use super::{settle, Outcome, Pipeline};
use crate::dedupe::{ClaimOutcome, ClaimToken};

pub(crate) enum Claim {
    Taken(ClaimToken),
    Settled(Outcome),
}

pub(crate) async fn claim(pipeline: &Pipeline, item: &WorkItem) -> Claim {
    let started = Instant::now();
    let claim = pipeline.dedupe.claim(&item.id).await;
    if claim.is_ok() {
        pipeline.outages.dedupe.report_success(started);
    }
    match claim {
        Ok(ClaimOutcome::Fresh(token)) => Claim::Taken(token),
        Ok(ClaimOutcome::Duplicate) => {
            tracing::info!("already processed; skipping duplicate");
            Claim::Settled(settle::already_done(pipeline, item).await)
        }
        Ok(ClaimOutcome::InProgress) => {
            tracing::debug!("claimed elsewhere; looking again after the lease");
            Claim::Settled(settle::defer(pipeline, item, DEDUPE_UNAVAILABLE_RETRY, None).await)
        }
        Err(error) => {
            pipeline.outages.dedupe.report_failure(started, &error);
            tracing::debug!(%error, "dedupe store unavailable; event waits in the journal");
            let error = error.to_string();
            Claim::Settled(
                settle::defer(pipeline, item, DEDUPE_UNAVAILABLE_RETRY, Some(&error)).await,
            )
        }
    }
}
