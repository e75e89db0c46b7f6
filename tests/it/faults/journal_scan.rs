//! The worker's journal scan runs while events handed over on the channel are being processed.
//! An event the scan read as pending while it was in flight must not be processed a second time
//! after it finished (the embedded dedupe has no done mark: the journal is the record). The
//! receiver refuses each event's first attempt, so retries (old events, due again) and fresh
//! events from the channel are worked on at the same time, as under a flaky sink.
//!
//! A second test scans the journal all the time while fresh deliveries arrive: an event the scan
//! finds the moment it is committed must not also be handed over by ingress (`Reservation`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};

use super::Load;
use crate::helpers::TestApp;

const DELIVERIES: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_flight_during_a_journal_scan_reach_the_sink_once() {
    // A receiver that takes a few milliseconds per event, refuses each event's first attempt,
    // and counts each event id it accepted.
    let received: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let counts = received.clone();
    let receiver = axum::Router::new().fallback(move |headers: HeaderMap| {
        let counts = counts.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if headers
                .get("attio-webhooks-attempt")
                .and_then(|v| v.to_str().ok())
                == Some("1")
            {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            *counts.lock().unwrap().entry(id).or_default() += 1;
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    // A small channel and few workers: deliveries overflow into the journal all the time, so the
    // worker scans it while channel events are in flight.
    let app = TestApp::builder()
        .toml("[queue]\nchannel_capacity = 2")
        .toml("[worker]\nconcurrency = 2\npoll_interval = \"20ms\"\nretry_initial = \"20ms\"\nretry_max = \"50ms\"")
        .routes(&format!(
            "[sinks.hook]\nkind = \"http\"\nurl = \"http://{addr}/hook\"\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"hook\"]\n"
        ))
        .spawn()
        .await;
    let load = Load::start(app.url("/webhooks/attio"), "scan", DELIVERIES, 32);
    let (acknowledged, _) = load.finish(Duration::from_secs(60)).await;
    assert_eq!(acknowledged.len(), DELIVERIES);

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if received.lock().unwrap().len() >= DELIVERIES || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any late second copy arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = received.lock().unwrap().clone();
    assert_each_reached_the_sink_once("journal_scan", DELIVERIES, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_scan_finds_as_they_are_committed_are_not_handed_over_again() {
    // The worker scans the journal every millisecond and the jsonl sink is quick, so a scan
    // often reads an event between its commit and ingress's hand-off and finishes it first.
    // Before ingress reserved its events, 50 to 80 of 10,000 such events reached the sink twice.
    const DELIVERIES: usize = 3000;
    let app = TestApp::builder()
        .toml("[worker]\npoll_interval = \"1ms\"")
        .spawn()
        .await;
    let load = Load::start(app.url("/webhooks/attio"), "commit", DELIVERIES, 32);
    let (acknowledged, _) = load.finish(Duration::from_secs(120)).await;
    assert_eq!(acknowledged.len(), DELIVERIES);
    app.wait_for_lines(DELIVERIES, Duration::from_secs(60))
        .await;
    // Let any late second copy arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in app.sink_lines() {
        *counts
            .entry(line["id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_each_reached_the_sink_once("journal_scan_commit", DELIVERIES, &counts);
}

/// Prints the scenario's figures, then checks that each of `deliveries` events (one per
/// delivery) reached the sink, none twice. `counts`: copies seen per event id.
fn assert_each_reached_the_sink_once(
    scenario: &str,
    deliveries: usize,
    counts: &BTreeMap<String, usize>,
) {
    let repeated: Vec<(&String, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    println!(
        "FAULTS {scenario} deliveries={deliveries} in_sink={} repeats={}",
        counts.len(),
        repeated.iter().map(|(_, c)| *c - 1).sum::<usize>()
    );
    assert_eq!(counts.len(), deliveries, "every event reached the sink");
    assert!(
        repeated.is_empty(),
        "{} events reached the sink more than once, e.g. {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(5)]
    );
}
