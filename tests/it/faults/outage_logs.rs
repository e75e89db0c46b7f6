//! What the real binary logs while a dependency is down: one line when the outage starts and one
//! when it ends, not a line per waiting event each time it is looked at again (before, Redis
//! stopped for 5 s with 40 events waiting gave 82 warnings).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::{jsonl_sink, read_sink, sink_path};
use crate::helpers::{send_distinct_to, wait_for_jsonl, Daemon, RedisServer, SECRET};

/// The daemon's log lines (JSON at info level) whose message is `message`.
fn logged<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|line| line["message"] == message)
        .collect()
}

fn log_lines(daemon: &Daemon) -> Vec<Value> {
    daemon
        .stderr()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The real binary with JSON logs at info level (the tests' own config says `warn`).
fn start(dir: &Path, settings: &str) -> Daemon {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {:?}\n\
             [worker]\npoll_interval = \"50ms\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n{settings}",
            dir.join("data").display().to_string(),
        ),
    )
    .unwrap();
    Daemon::start(dir, &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)])
}

#[tokio::test]
async fn a_redis_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    const EVENTS: usize = 40;
    let Some(mut redis) = RedisServer::ephemeral().await else {
        eprintln!("SKIPPED: redis-server is not installed (.ci/run installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = sink_path(dir.path());
    let mut daemon = start(
        dir.path(),
        &format!(
            "[redis]\nurl = \"{}\"\nkey_prefix = \"outage-logs\"\n{}",
            redis.url(),
            jsonl_sink(&sink)
        ),
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    redis.stop();
    // The journal is local: deliveries are still acknowledged, and their events wait (each is
    // looked at again every 2 s).
    let client = reqwest::Client::new();
    send_distinct_to(
        &client,
        &daemon.url("/webhooks/attio"),
        "outage-logs",
        EVENTS,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(read_sink(&sink).lines.len(), 0, "nothing passes dedupe");
    let lines = log_lines(&daemon);
    assert_eq!(
        logged(&lines, "dedupe store unavailable").len(),
        1,
        "{}",
        daemon.stderr()
    );

    redis.resume().await;
    let delivered = wait_for_jsonl(&sink, EVENTS, Duration::from_secs(30)).await;
    assert_eq!(delivered.len(), EVENTS, "every event went on");
    let lines = log_lines(&daemon);
    assert_eq!(logged(&lines, "dedupe store unavailable").len(), 1);
    let ended = logged(&lines, "dedupe store available again");
    assert_eq!(ended.len(), 1, "{}", daemon.stderr());
    let waited = ended[0]["failed_attempts"].as_u64().unwrap_or_default();
    assert!(waited >= EVENTS as u64, "failed_attempts = {waited}");
    assert!(ended[0]["down_for"].is_string());
}

#[tokio::test]
async fn a_sink_outage_is_logged_once_and_not_for_every_failed_delivery() {
    const EVENTS: usize = 20;
    // A receiver that answers 503 until it is told to recover, and counts what it answered.
    let healthy = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let receiver = {
        let (healthy, refused, accepted) = (healthy.clone(), refused.clone(), accepted.clone());
        axum::Router::new().fallback(move |headers: HeaderMap| {
            let (healthy, refused, accepted) = (healthy.clone(), refused.clone(), accepted.clone());
            async move {
                if !healthy.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                accepted.lock().unwrap().insert(id.to_string());
                StatusCode::OK
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(
        dir.path(),
        &format!(
            "[sinks.hook]\nkind = \"http\"\nurl = \"http://{addr}/hook\"\n\
             attempts = 1000\nretry_initial = \"20ms\"\nretry_max = \"100ms\"\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"hook\"]\n"
        ),
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    send_distinct_to(
        &client,
        &daemon.url("/webhooks/attio"),
        "sink-outage",
        EVENTS,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused_while_down = refused.load(Ordering::SeqCst);
    healthy.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < EVENTS && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        accepted.lock().unwrap().len(),
        EVENTS,
        "every event arrived"
    );
    // Let the worker log what it does after the last delivery.
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(
        refused_while_down > 2 * EVENTS,
        "each event was refused several times ({refused_while_down} refusals)"
    );
    let lines = log_lines(&daemon);
    assert_eq!(
        logged(&lines, "sink hook unavailable").len(),
        1,
        "{}",
        daemon.stderr()
    );
    let ended = logged(&lines, "sink hook available again");
    assert_eq!(ended.len(), 1, "{}", daemon.stderr());
    assert!(ended[0]["failed_attempts"].as_u64().unwrap_or_default() >= EVENTS as u64);
    for per_event in [
        "sink delivery failed",
        "event will be retried for the sinks that failed",
    ] {
        assert!(
            logged(&lines, per_event).is_empty(),
            "{per_event:?} is logged at debug level only"
        );
    }
}
