//! A fake Attio that answers 30% of requests with 429 (`Retry-After` as an HTTP date, as Attio
//! sends it) or 500, closing the connection, and that takes a while to accept a new connection
//! (as api.attio.com's TCP and TLS handshakes do): every event still ends enriched, and no
//! one-second window at the server (by arrival time) holds more requests than the configured
//! rate.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{busiest_second, env_usize, jsonl_sink, sink_path, wait_for_all, Load};
use crate::fake_attio::FakeAttio;
use crate::helpers::TestApp;

const READ_RATE: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_attio_still_enriches_every_event_and_never_sees_more_than_the_rate() {
    let events = env_usize("FAULTS_ATTIO_EVENTS", 60);
    let attio = FakeAttio::start().await;
    attio.set_flaky(30);
    attio.set_connect_delay(Duration::from_millis(40));
    let dir = tempfile::tempdir().unwrap();
    let sink = sink_path(dir.path());
    let app = TestApp::builder()
        .toml(&attio.attio_toml(&format!(
            "read_rate = {READ_RATE}\nretry_initial = \"100ms\"\nretry_max_delay = \"2s\""
        )))
        .routes(&jsonl_sink(&sink))
        .spawn()
        .await;

    let load = Load::start(app.url("/webhooks/attio"), "flaky", events, 8);
    let (acknowledged, _) = load.finish(Duration::from_secs(60)).await;
    let (tally, file) = wait_for_all(
        &sink,
        &acknowledged,
        "flaky",
        Duration::from_secs(60 + (events / READ_RATE * 3) as u64),
    )
    .await;

    let seen = attio.seen();
    let arrivals: Vec<std::time::Instant> = seen.iter().map(|s| s.instant).collect();
    let busiest = busiest_second(&arrivals);
    let statuses: BTreeSet<&str> = file
        .lines
        .iter()
        .filter_map(|l| l["enrichment"].as_str())
        .collect();
    println!(
        "FAULTS flaky_attio events={events} in_sink={} missing={} repeats={} requests={} \
         failures_429_or_500={} busiest_second={busiest} limit={READ_RATE} enrichment={statuses:?}",
        tally.in_sink,
        tally.missing.len(),
        tally.repeats,
        seen.len(),
        attio.flaky_failures(),
    );
    assert!(
        tally.missing.is_empty(),
        "{} events missing",
        tally.missing.len()
    );
    assert!(attio.flaky_failures() > 0, "the fake did fail requests");
    for line in &file.lines {
        assert_eq!(
            line["enrichment"], "ok",
            "every event ends enriched: {line}"
        );
    }
    assert!(
        busiest <= READ_RATE,
        "{busiest} requests arrived within one second; the limit is {READ_RATE}"
    );
}
