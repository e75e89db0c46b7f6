//! Logging: a tracing subscriber writing to standard error (standard output belongs to the
//! stdout sink), pretty for people or JSON for log pipelines. `RUST_LOG` overrides `log.level`.
//!
//! The daemon (`serve`) does not write its lines on the threads that serve requests: they go
//! through a bounded queue to a thread of their own (`tracing-appender`). When standard error
//! stalls (a pipe nobody reads, a stuck log collector) the queue fills and further lines are
//! dropped and counted, instead of every request waiting on a write. One-shot commands write
//! directly: they are short, and a lost line there would be worse than a slow one.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Lines the daemon's log thread could not take, for `attio_webhooks_log_lines_dropped_total`.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the daemon's global subscriber, writing through the log thread. Keep the returned
/// guard for as long as the daemon runs: dropping it writes out what is queued and stops the
/// thread. Returns `None` (and changes nothing) when a subscriber is already installed.
pub(crate) fn init(settings: &LogSettings) -> Option<WorkerGuard> {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(settings.queue_lines)
        .lossy(true)
        .thread_name("attio-webhooks-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(writer);
    let installed = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
    installed.ok()?;
    let _ = DROPPED.set(dropped);
    Some(guard)
}

/// Log lines dropped so far because the log thread had fallen `log.queue_lines` behind.
pub(crate) fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Colour only for a person at a terminal: a file, a pipe or a log collector would keep the
/// escape codes as text. `NO_COLOR` (any non-empty value) turns it off there too.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
