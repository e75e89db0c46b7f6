//! The worker side: deduplication on Redis and on the embedded store, retries, dead letters,
//! and restarts that must not lose or repeat anything.

use std::time::Duration;

use attio_webhooks::journal::Backend;
use redis::AsyncCommands;
use serde_json::Value;

use crate::helpers::{record_updated_body, TestApp};

const WAIT: Duration = Duration::from_secs(15);

async fn send_distinct(app: &TestApp, count: usize, prefix: &str) {
    for n in 0..count {
        let response = app
            .post_signed(&record_updated_body(n), Some(&format!("{prefix}-{n}")))
            .await;
        assert_eq!(response.status(), 200);
    }
}

fn ids(lines: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn events_flow_once_each_with_redis_dedupe() {
    let app = TestApp::builder().redis().spawn().await;
    send_distinct(&app, 50, "r").await;
    let lines = app.wait_for_lines(50, WAIT).await;
    let ids = ids(&lines);
    assert_eq!(ids.len(), 50);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 50, "no event twice");
    // Done marks are in Redis under the test's prefix, with the long TTL.
    let prefix = app.redis_prefix.clone().unwrap();
    let mut redis = crate::helpers::redis().await;
    let key = format!("{prefix}:dedupe:r-0:0");
    let value: Option<String> = redis.get(&key).await.unwrap();
    assert_eq!(value.as_deref(), Some("done"));
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > 3 * 86400, "done mark kept about 4 days, got {ttl}s");
}

#[tokio::test]
async fn readiness_reports_redis_when_configured() {
    let app = TestApp::builder().redis().spawn().await;
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["redis"], "ok");
}

#[tokio::test]
async fn readiness_fails_when_redis_is_unreachable() {
    // Nothing listens on port 1: the daemon starts (Redis may come later) but is not ready.
    let app = TestApp::builder()
        .toml("[redis]\nurl = \"redis://127.0.0.1:1\"")
        .spawn()
        .await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["redis"], "unavailable");
    // Ingress still journals: the delivery waits for Redis rather than being refused.
    let accepted = app.post_signed(&record_updated_body(1), Some("wait")).await;
    assert_eq!(accepted.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        app.sink_lines().is_empty(),
        "not processed without its dedupe store"
    );
}

#[tokio::test]
async fn an_event_already_done_in_redis_is_not_delivered_again() {
    // Another replica (or an earlier life of this one) finished the event; Attio redelivers it
    // to a replica whose journal never saw it.
    let app = TestApp::builder().redis().spawn().await;
    let prefix = app.redis_prefix.clone().unwrap();
    let mut redis = crate::helpers::redis().await;
    let _: () = redis
        .set_ex(format!("{prefix}:dedupe:seen-before:0"), "done", 600)
        .await
        .unwrap();
    let response = app
        .post_signed(&record_updated_body(1), Some("seen-before"))
        .await;
    assert_eq!(response.status(), 200);
    send_distinct(&app, 1, "fresh").await;
    let lines = app.wait_for_lines(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = if lines.len() == 1 {
        app.sink_lines()
    } else {
        lines
    };
    assert_eq!(ids(&lines), vec!["fresh-0:0".to_string()]);
}

#[tokio::test]
async fn events_accepted_while_the_worker_was_off_are_processed_after_restart() {
    let app = TestApp::builder().worker(false).spawn().await;
    send_distinct(&app, 20, "later").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.sink_lines().is_empty());
    let stopped = app.stop().await;
    let app = TestApp::builder().storage(&stopped.storage).spawn().await;
    let lines = app.wait_for_lines(20, WAIT).await;
    assert_eq!(ids(&lines).len(), 20);
}

#[tokio::test]
async fn a_redelivery_after_processing_and_restart_is_not_processed_again() {
    let app = TestApp::spawn().await;
    send_distinct(&app, 3, "once").await;
    app.wait_for_lines(3, WAIT).await;
    let stopped = app.stop().await;
    let app = TestApp::builder().storage(&stopped.storage).spawn().await;
    let again = app
        .post_signed(&record_updated_body(0), Some("once-0"))
        .await;
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.sink_lines().is_empty());
}

#[tokio::test]
async fn a_failing_sink_is_retried_then_dead_lettered_with_its_error() {
    // /dev/full accepts the open and fails every write with ENOSPC: a real failing sink.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    let routes = format!(
        "[sinks.good]\nkind = \"jsonl\"\npath = {:?}\n[sinks.full]\nkind = \"jsonl\"\npath = \"/dev/full\"\n\
         [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"good\", \"full\"]\n",
        good.display().to_string()
    );
    let app = TestApp::builder()
        .routes(&routes)
        .toml("[worker]\nmax_attempts = 3")
        .spawn()
        .await;
    let response = app
        .post_signed(&record_updated_body(1), Some("doomed"))
        .await;
    assert_eq!(response.status(), 200);
    // Three attempts with 50-200 ms backoff, then the dead letters.
    assert_eq!(app.wait_until_drained(WAIT).await, 0);
    let stopped = app.stop().await;
    // The sink that worked got the event once, not once per attempt.
    assert_eq!(crate::helpers::read_jsonl(&good).len(), 1);
    let journal =
        attio_webhooks::journal::SqliteJournal::open(&stopped.storage.join("journal.sqlite3"))
            .unwrap();
    let letters = journal.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1, "the event is in the dead letters");
    assert_eq!(letters[0].id, "doomed:0");
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].failed_sinks, vec!["full".to_string()]);
    let error = letters[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("full") && error.contains("No space left"),
        "{error}"
    );
}
