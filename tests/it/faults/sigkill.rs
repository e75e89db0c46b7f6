//! SIGKILL the real binary repeatedly during a stream of distinct signed deliveries, restarting
//! it each time on the same address: every acknowledged event reaches the sink, none is missing,
//! and the repeats are bounded and carry their first copy's event id.
//!
//! The daemon runs as the deployment does with Redis: the embedded journal (SQLite) with
//! Redis deduplication. Its claim lease is far longer than the test, so an event claimed by a
//! killed life is only processed again in time if the next life takes that claim over rather
//! than waiting out the lease.

use std::time::{Duration, Instant};

use super::{env_usize, sink_path, wait_for_all, Load};
use crate::helpers::{free_port, unique_prefix, ConfigToml, Daemon, REDIS_URL, SECRET};

/// Events in flight in the worker at once.
const CONCURRENCY: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_load_loses_no_acknowledged_event_and_repeats_are_bounded() {
    let deliveries = env_usize("FAULTS_DELIVERIES", 2000);
    let kills = env_usize("FAULTS_KILLS", 3);
    let dir = tempfile::tempdir().unwrap();
    let sink = sink_path(dir.path());
    let config = ConfigToml::new()
        .storage(&dir.path().join("data"))
        .fast_worker(&format!("concurrency = {CONCURRENCY}\n"))
        .raw("[dedupe]\nclaim_lease = \"10m\"\ndone_ttl = \"10m\"")
        .redis(REDIS_URL, &unique_prefix())
        .jsonl_for_all(&sink)
        .write(dir.path());
    let port = free_port();
    let env = [("ATTIO_WEBHOOK_SECRET", SECRET)];
    let mut daemon = Daemon::start_on(port, dir.path(), &config, &env);
    daemon.wait_healthy(Duration::from_secs(20)).await;

    let started = Instant::now();
    let load = Load::start(
        format!("http://127.0.0.1:{port}/webhooks/attio"),
        "kill",
        deliveries,
        16,
    );
    let mut in_flight_at_kills = Vec::new();
    for kill in 1..=kills {
        load.wait_for_acknowledged(
            deliveries * kill / (kills + 1),
            Duration::from_secs(60 + deliveries as u64 / 20),
        )
        .await;
        in_flight_at_kills.push(load.in_flight());
        daemon.kill();
        daemon = Daemon::start_on(port, dir.path(), &config, &env);
        daemon.wait_healthy(Duration::from_secs(20)).await;
    }
    let (acknowledged, _) = load
        .finish(Duration::from_secs(60 + deliveries as u64 / 20))
        .await;
    let (tally, file) = wait_for_all(
        &sink,
        &acknowledged,
        "kill",
        Duration::from_secs(30 + deliveries as u64 / 100),
    )
    .await;

    // A repeat is an event a killed life wrote to the sink and had not yet recorded as done in
    // the journal. Between those two steps the event holds one of the worker's `concurrency`
    // permits (the task writes, then awaits the journal's commit), so each kill can leave at most
    // CONCURRENCY such events; an event still in the hand-off channel or waiting for a permit has
    // reached no sink and cannot repeat. A repeat of a repeat needs another kill, which is counted
    // against that kill's own CONCURRENCY.
    let bound = kills * CONCURRENCY;
    println!(
        "FAULTS sigkill deliveries={deliveries} kills={kills} acknowledged={} in_sink={} missing={} \
         repeats={} bound={bound} torn_lines={} load_in_flight_at_kills={in_flight_at_kills:?} seconds={:.1}",
        tally.acknowledged,
        tally.in_sink,
        tally.missing.len(),
        tally.repeats,
        file.torn.len(),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(
        acknowledged.len(),
        deliveries,
        "every delivery acknowledged"
    );
    assert!(
        tally.missing.is_empty(),
        "{} acknowledged events missing from the sink, e.g. {:?}\n{}",
        tally.missing.len(),
        &tally.missing[..tally.missing.len().min(5)],
        daemon
            .stderr()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(tally.unexpected.is_empty(), "{:?}", tally.unexpected);
    assert!(
        tally.wrong_id.is_empty(),
        "every copy carries its delivery's event id: {:?}",
        tally.wrong_id
    );
    assert!(
        tally.repeats <= bound,
        "{} repeats, more than the {bound} events that can be between sink and journal at {kills} kills",
        tally.repeats
    );
    // A torn line can only be the last line a killed life was writing.
    assert!(
        file.torn.len() <= kills,
        "torn lines: {:?}",
        file.torn.len()
    );
}
