//! Metrics: the Prometheus registry and the names every stage reports under.
//!
//! In: counters, gauges and histograms recorded with the `metrics` crate's macros anywhere in the
//! pipeline. Out: the Prometheus text exposition served at `GET /metrics` (on the main listener,
//! or on `admin.listen` when set). The recorder is installed once per process.
//!
//! Two things keep the exposition honest and its memory flat. Histogram samples wait in the
//! recorder until they are folded into their buckets, which happens at a scrape or at upkeep, so
//! [`run_upkeep`] runs on a timer ([`UPKEEP_INTERVAL`]) whether or not anyone scrapes: a daemon
//! nobody scrapes would otherwise keep every sample. And the process's own figures (resident
//! memory, CPU seconds, open file descriptors, start time) are read from the operating system at
//! each scrape ([`collect_process`]) under Prometheus's standard `process_*` names.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::Duration;

use metrics::Counter;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Deliveries received, by outcome: accepted, duplicate, unauthorized, too_large, malformed,
/// unavailable, bad_request.
pub(crate) const DELIVERIES: &str = "attio_webhooks_deliveries_total";
/// Time from request start to answer, seconds.
pub(crate) const INGRESS_DURATION: &str = "attio_webhooks_ingress_duration_seconds";
/// Events through the worker, by kind and outcome: delivered, duplicate, deferred, retrying,
/// dead_lettered.
pub(crate) const EVENTS_PROCESSED: &str = "attio_webhooks_events_processed_total";
/// Events skipped because the dedupe store had them as done.
pub(crate) const DEDUPE_HITS: &str = "attio_webhooks_dedupe_hits_total";
/// Events pending in the journal.
pub(crate) const JOURNAL_BACKLOG: &str = "attio_webhooks_journal_backlog";
/// Age of the oldest pending event, seconds (0 when none).
pub(crate) const OLDEST_PENDING_AGE: &str = "attio_webhooks_journal_oldest_pending_age_seconds";
/// Events moved to the dead letters.
pub(crate) const DEAD_LETTERS: &str = "attio_webhooks_dead_letters_total";
/// Deliveries to sinks, by sink and outcome (ok, error).
pub(crate) const SINK_DELIVERIES: &str = "attio_webhooks_sink_deliveries_total";
/// Requests to Attio's API, by endpoint and status.
pub(crate) const ATTIO_REQUESTS: &str = "attio_webhooks_attio_requests_total";
/// Retries of Attio requests, by endpoint.
pub(crate) const ATTIO_RETRIES: &str = "attio_webhooks_attio_retries_total";
/// Seconds spent waiting for the client-side rate limiter.
pub(crate) const ATTIO_RATE_LIMIT_WAIT: &str = "attio_webhooks_attio_rate_limit_wait_seconds_total";
/// Time to enrich one event, seconds.
pub(crate) const ENRICHMENT_DURATION: &str = "attio_webhooks_enrichment_duration_seconds";
/// Log lines dropped because standard error could not keep up (`log.queue_lines`).
pub(crate) const LOG_LINES_DROPPED: &str = "attio_webhooks_log_lines_dropped_total";

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes. Between two
/// upkeeps the recorder holds the samples of this interval only.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The `process_*` metrics, read at each scrape.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first use. `None` when another
/// recorder was installed first (metrics then go there).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    PROCESS
                        .get_or_init(metrics_process::Collector::default)
                        .describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Folds the histogram samples recorded since the last upkeep or scrape into their buckets, so
/// that they stop taking memory of their own.
pub(crate) fn run_upkeep() {
    if let Some(handle) = handle() {
        handle.run_upkeep();
    }
}

/// Reads the process's resident memory, CPU seconds, open and maximum file descriptors, threads
/// and start time into their `process_*` gauges.
pub(crate) fn collect_process() {
    if let Some(collector) = PROCESS.get() {
        collector.collect();
    }
}

fn describe() {
    metrics::describe_counter!(DELIVERIES, "Deliveries received, by outcome");
    metrics::describe_histogram!(
        INGRESS_DURATION,
        metrics::Unit::Seconds,
        "Time to verify, journal and answer a delivery"
    );
    metrics::describe_counter!(
        EVENTS_PROCESSED,
        "Events through the worker, by kind and outcome"
    );
    metrics::describe_counter!(DEDUPE_HITS, "Events skipped as already processed");
    metrics::describe_gauge!(JOURNAL_BACKLOG, "Events pending in the journal");
    metrics::describe_gauge!(
        OLDEST_PENDING_AGE,
        metrics::Unit::Seconds,
        "Age of the oldest pending event"
    );
    metrics::describe_counter!(DEAD_LETTERS, "Events moved to the dead letters");
    metrics::describe_counter!(SINK_DELIVERIES, "Deliveries to sinks, by sink and outcome");
    metrics::describe_counter!(
        ATTIO_REQUESTS,
        "Requests to Attio's API, by endpoint and status"
    );
    metrics::describe_counter!(ATTIO_RETRIES, "Retries of Attio requests, by endpoint");
    // A float total, recorded as a gauge (the metrics crate's counters are integers).
    metrics::describe_gauge!(
        ATTIO_RATE_LIMIT_WAIT,
        metrics::Unit::Seconds,
        "Time spent waiting for the client-side rate limiter"
    );
    metrics::describe_histogram!(
        ENRICHMENT_DURATION,
        metrics::Unit::Seconds,
        "Time to enrich one event"
    );
    metrics::describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because standard error could not keep up"
    );
}

/// Counts one delivery received, by its outcome (see [`DELIVERIES`]).
pub(crate) fn count_delivery(outcome: &'static str) {
    static COUNTERS: LazyLock<Counters<&'static str, Counter>> = LazyLock::new(Counters::default);
    COUNTERS
        .get(
            &outcome,
            || outcome,
            || metrics::counter!(DELIVERIES, "outcome" => outcome),
        )
        .increment(1);
}

/// Counts one event through the worker, by its kind's label and its outcome (see
/// [`EVENTS_PROCESSED`]).
pub(crate) fn count_event(kind: &'static str, outcome: &'static str) {
    static COUNTERS: LazyLock<Counters<(&'static str, &'static str), Counter>> =
        LazyLock::new(Counters::default);
    COUNTERS
        .get(
            &(kind, outcome),
            || (kind, outcome),
            || metrics::counter!(EVENTS_PROCESSED, "kind" => kind, "outcome" => outcome),
        )
        .increment(1);
}

/// Counts one delivery to the sink `sink`, by whether it took the event (see
/// [`SINK_DELIVERIES`]).
pub(crate) fn count_sink_delivery(sink: &str, ok: bool) {
    static COUNTERS: LazyLock<Counters<String, [Counter; 2]>> = LazyLock::new(Counters::default);
    let [taken, failed] = COUNTERS.get(
        sink,
        || sink.to_string(),
        || [sink_counter(sink, "ok"), sink_counter(sink, "error")],
    );
    if ok { taken } else { failed }.increment(1);
}

fn sink_counter(sink: &str, outcome: &'static str) -> Counter {
    metrics::counter!(
        SINK_DELIVERIES,
        "sink" => sink.to_string(),
        "outcome" => outcome
    )
}

/// Counter handles kept once looked up, by the values of their labels. Looking a counter up
/// through the `metrics` macros builds its key (allocating its labels) and searches the
/// recorder's registry, on every event; a kept handle is one atomic add. Handles are kept only
/// once the recorder is installed: one taken before would count nowhere, for good.
struct Counters<K, V> {
    kept: RwLock<HashMap<K, V>>,
}

impl<K, V> Default for Counters<K, V> {
    fn default() -> Counters<K, V> {
        Counters {
            kept: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Counters<K, V> {
    /// What is kept under `key`, made with `make` (and kept under `owned()`) the first time.
    fn get<Q>(&self, key: &Q, owned: impl FnOnce() -> K, make: impl FnOnce() -> V) -> V
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if !matches!(HANDLE.get(), Some(Some(_))) {
            return make();
        }
        // Each operation is one lookup or insert: a poisoned lock holds no broken state.
        if let Some(kept) = self.kept.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            return kept.clone();
        }
        self.kept
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(owned())
            .or_insert_with(make)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one series in the exposition (0 when absent).
    fn series(text: &str, name_and_labels: &str) -> f64 {
        text.lines()
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                (series == name_and_labels).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    #[test]
    fn kept_counters_keep_counting_each_label_set_apart() {
        let handle = handle().expect("the recorder installs in this test process");
        for _ in 0..3 {
            count_sink_delivery("kept-counters-test", true);
        }
        count_sink_delivery("kept-counters-test", false);
        count_event("unknown", "kept-counters-test");
        count_event("unknown", "kept-counters-test");
        let text = handle.render();
        let ok = "attio_webhooks_sink_deliveries_total{sink=\"kept-counters-test\",outcome=\"ok\"}";
        let error =
            "attio_webhooks_sink_deliveries_total{sink=\"kept-counters-test\",outcome=\"error\"}";
        let events = "attio_webhooks_events_processed_total{kind=\"unknown\",outcome=\"kept-counters-test\"}";
        assert_eq!(series(&text, ok), 3.0, "{text}");
        assert_eq!(series(&text, error), 1.0, "{text}");
        assert_eq!(series(&text, events), 2.0, "{text}");
    }
}
