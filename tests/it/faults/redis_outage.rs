//! Redis (deduplication, with the embedded journal) stopped in the middle of a load: ingress
//! keeps acknowledging (the journal is local), processing pauses while Redis is away and resumes
//! when it is back, nothing is lost and nothing processed twice. Redis comes back empty (no
//! persistence): the journal, not Redis, is the record of what is done.

use std::time::{Duration, Instant};

use super::{env_duration, jsonl_sink, read_sink, sink_path, wait_for_all, Load};
use crate::helpers::RedisServer;
use crate::helpers::TestApp;

/// How long events claimed just before the stop may still take to reach the sink.
const SETTLE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_load_pauses_processing_while_ingress_keeps_acknowledging() {
    let Some(mut redis) = RedisServer::ephemeral().await else {
        eprintln!("SKIPPED: redis-server is not installed (.ci/run installs it)");
        return;
    };
    let pause = env_duration("FAULTS_REDIS_PAUSE", Duration::from_secs(4));
    let dir = tempfile::tempdir().unwrap();
    let sink = sink_path(dir.path());
    let app = TestApp::builder()
        .toml(&format!(
            "[redis]\nurl = \"{}\"\nkey_prefix = \"outage\"",
            redis.url()
        ))
        .routes(&jsonl_sink(&sink))
        .spawn()
        .await;

    // About 2 s of load before the stop, the pause, and 2 s after.
    let rate = 200;
    let deliveries = (rate as f64 * (pause.as_secs_f64() + 4.0)) as usize;
    let load = Load::start_paced(
        app.url("/webhooks/attio"),
        "outage",
        deliveries,
        8,
        Some(rate),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.stop();
    let stopped = Instant::now();
    tokio::time::sleep(SETTLE.min(pause / 2)).await;
    let readiness = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let processed_early = read_sink(&sink).lines.len();
    tokio::time::sleep(pause.saturating_sub(stopped.elapsed())).await;
    let processed_late = read_sink(&sink).lines.len();
    let resumed = Instant::now();
    redis.resume().await;

    let (acknowledged, answers) = load.finish(Duration::from_secs(120)).await;
    let (tally, _) = wait_for_all(
        &sink,
        &acknowledged,
        "outage",
        Duration::from_secs(30 + deliveries as u64 / 100),
    )
    .await;
    let during: Vec<_> = answers
        .iter()
        .filter(|a| a.sent > stopped && a.answered < resumed)
        .collect();
    let acknowledged_during = during.iter().filter(|a| a.status == Some(200)).count();
    println!(
        "FAULTS redis_outage pause={pause:?} deliveries={deliveries} acknowledged={} \
         acknowledged_during_outage={acknowledged_during} answered_during_outage={} in_sink={} missing={} \
         repeats={} processed_in_outage_after_settle={} readyz_during_outage={readiness}",
        tally.acknowledged,
        during.len(),
        tally.in_sink,
        tally.missing.len(),
        tally.repeats,
        processed_late - processed_early,
    );
    assert!(during.len() > 10, "the load went on while Redis was down");
    assert!(
        during.iter().all(|a| a.status == Some(200)),
        "ingress acknowledged every delivery while Redis was down: {:?}",
        during
            .iter()
            .filter(|a| a.status != Some(200))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        processed_late, processed_early,
        "processing paused while Redis was down"
    );
    assert!(
        tally.missing.is_empty(),
        "{} events missing",
        tally.missing.len()
    );
    assert_eq!(tally.repeats, 0, "nothing processed twice");
    assert!(tally.wrong_id.is_empty() && tally.unexpected.is_empty());
}
