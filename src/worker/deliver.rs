//! Deliver: the third stage of an attempt.
//!
//! In: the routed event (its targets and line) and its place in its delivery's order. Out:
//! [`Delivered`]: which targets took the event and which failed, and why. Each sink that does
//! not collapse gets the line on its own, once the earlier events of the delivery about the same
//! subject have had theirs; collapsing sinks get the line of the event's group (see `collapse`).

use std::time::Instant;

use super::collapse;
use super::item::WorkItem;
use super::order::Ticket;
use super::route::{Line, Routed};
use super::send::deliver_to;
use super::Pipeline;
use crate::journal::history::AttemptRecord;
use crate::journal::SinkProgress;
use crate::sinks::SinkError;

/// How the event's targets answered.
pub(crate) struct Delivered {
    /// Where the event stands with its sinks: the targets that took it added.
    pub(crate) progress: SinkProgress,
    /// The targets that failed on this attempt.
    pub(crate) failures: Vec<(String, SinkError)>,
    /// What the history keeps of this attempt.
    pub(crate) found: AttemptRecord,
}

impl Delivered {
    /// A target failed before anything was sent to it.
    fn refused(&mut self, sink: &str, error: SinkError) {
        *self
            .progress
            .sink_attempts
            .entry(sink.to_string())
            .or_insert(0) += 1;
        self.failures.push((sink.to_string(), error));
    }

    /// A target answered.
    fn answered(&mut self, sink: &str, result: Result<(), SinkError>) {
        note_sink(&mut self.found, sink, &result);
        match result {
            Ok(()) => self.progress.sinks_done.push(sink.to_string()),
            Err(error) => self.refused(sink, error),
        }
    }
}

/// Sends the line to every target. `ticket` is let go as soon as the event's own deliveries are
/// over: a collapsed line waits for its group's leader, which may be listed later.
pub(crate) async fn deliver(
    pipeline: &Pipeline,
    item: &WorkItem,
    routed: Routed<'_>,
    ticket: Ticket,
) -> Delivered {
    let Routed {
        targets,
        line,
        group,
        enrichment,
        found,
    } = routed;
    let mut delivered = Delivered {
        progress: item.progress.clone(),
        failures: Vec::new(),
        found,
    };
    let line = match line {
        Line::Ready(line) => line,
        Line::Nothing | Line::Refused(_) => {
            collapse::count(pipeline, group.as_ref());
            if let Line::Refused(error) = line {
                for target in &targets {
                    delivered.refused(target.name, error.clone());
                }
            }
            return delivered;
        }
    };
    let (together, alone): (Vec<_>, Vec<_>) = targets
        .into_iter()
        .partition(|sink| group.is_some() && sink.collapse);
    let together: Vec<String> = together.iter().map(|sink| sink.name.to_string()).collect();
    let role = collapse::join(
        pipeline,
        group.as_ref(),
        item,
        &enrichment,
        &line,
        &together,
    );
    // A collapsing sink gets the same shape for an event that shared its fetch with no other
    // (a group of one).
    let single = if alone.iter().any(|sink| sink.collapse) {
        collapse::single_line(item, &enrichment, &line)
    } else {
        None
    };
    // Events of this delivery about the same record, listed before this one, reach the sinks
    // first. Waiting here, after the fetch (shared with them) and after joining a collapse
    // group, holds nothing they need.
    ticket.wait_turn(|| item.subject()).await;
    for target in alone {
        let line = match &single {
            Some(single) if target.collapse => single,
            _ => &line,
        };
        let started = Instant::now();
        let result = deliver_to(pipeline, target.name, line, &delivered.progress).await;
        report_sink(
            pipeline,
            target.name,
            &result,
            started,
            "sink delivery failed",
        );
        delivered.answered(target.name, result);
    }
    drop(ticket);
    if let Some(role) = role {
        let started = Instant::now();
        let results = collapse::deliver_together(pipeline, role, &delivered.progress).await;
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
            delivered.answered(&name, result);
        }
    }
    delivered
}

/// Notes one sink's result in what the history keeps: when it took the event, or its error.
fn note_sink(found: &mut AttemptRecord, sink: &str, result: &Result<(), SinkError>) {
    match result {
        Ok(()) => {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            found.sinks_delivered.insert(sink.to_string(), now);
        }
        Err(error) => {
            found
                .sink_errors
                .insert(sink.to_string(), error.message.clone());
        }
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
