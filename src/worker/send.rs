//! One delivery of one line to one sink, for both ways a line goes out: on its own (`deliver`)
//! and as a group's line (`collapse`).
//!
//! In: the sink's name, the line, and where the event stands with its sinks (for the attempt
//! number the sink is told). Out: the sink's answer, counted by outcome in the metrics.

use super::Pipeline;
use crate::journal::SinkProgress;
use crate::sinks::{SinkError, SinkLine};

/// One delivery of `line` to the sink `name`, counted by outcome.
pub(crate) async fn deliver_to(
    pipeline: &Pipeline,
    name: &str,
    line: &SinkLine,
    progress: &SinkProgress,
) -> Result<(), SinkError> {
    let result = match pipeline.sinks.get(name) {
        Some(sink) => {
            let attempt = progress.sink_attempts.get(name).copied().unwrap_or(0) + 1;
            sink.deliver(line, attempt).await
        }
        None => Err(SinkError::permanent("sink is not configured")),
    };
    crate::metrics::count_sink_delivery(name, result.is_ok());
    result
}
