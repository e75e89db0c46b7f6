//! Scale-out mode (`queue.backend = "redis"`): several replicas share one Redis stream. A replica
//! killed mid-run loses nothing, a Redis restart loses nothing acknowledged, redeliveries are
//! refused across replicas, and failures reach the dead letters in Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attio_webhooks::journal::{Backend, RedisJournal};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::{
    post_signed_to, read_jsonl, record_updated_body, unique_prefix, ConfigToml, Daemon,
    RedisServer, TestApp, REDIS_URL, SECRET,
};

/// TOML that puts an app on the Redis queue at `url` under `prefix`, with a short lease so that
/// work left by a dead replica is taken over within seconds (and Attio timeouts that fit in it;
/// no API key is set, so nothing calls Attio).
fn redis_queue(url: &str, prefix: &str) -> String {
    format!(
        "[queue]\nbackend = \"redis\"\n\
         [redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n\
         [dedupe]\nclaim_lease = \"2s\"\ndone_ttl = \"10m\"\n\
         [attio]\nconnect_timeout = \"200ms\"\nrequest_timeout = \"500ms\"\n\
         retry_max_delay = \"500ms\"\nretry_total = \"1s\"\n"
    )
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

async fn ready(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_redelivery_to_another_replica_is_acknowledged_without_a_second_copy() {
    let prefix = unique_prefix();
    let first = TestApp::builder()
        .toml(&redis_queue(REDIS_URL, &prefix))
        .spawn()
        .await;
    let second = TestApp::builder()
        .toml(&redis_queue(REDIS_URL, &prefix))
        .spawn()
        .await;
    let body = record_updated_body(7);
    let response = first.post_signed(&body, Some("twice")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "accepted"
    );
    let again = second.post_signed(&body, Some("twice")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while lines.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lines = [first.sink_lines(), second.sink_lines()].concat();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = [first.sink_lines(), second.sink_lines()].concat();
    assert_eq!(ids(&lines), vec!["twice:0"]);
}

#[tokio::test]
async fn a_failing_sink_is_retried_then_dead_lettered_in_redis_and_replay_puts_it_back() {
    // /dev/full accepts the open and fails every write with ENOSPC: a real failing sink.
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    let routes = format!(
        "[sinks.good]\nkind = \"jsonl\"\npath = {:?}\n[sinks.full]\nkind = \"jsonl\"\npath = \"/dev/full\"\n\
         [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"good\", \"full\"]\n",
        good.display().to_string()
    );
    let app = TestApp::builder()
        .routes(&routes)
        .toml(&redis_queue(REDIS_URL, &prefix))
        .toml("[worker]\nmax_attempts = 3")
        .spawn()
        .await;
    let response = app
        .post_signed(&record_updated_body(1), Some("doomed"))
        .await;
    assert_eq!(response.status(), 200);

    let connection =
        attio_webhooks::dedupe::redis::connect(&SecretString::from(REDIS_URL)).unwrap();
    let journal = RedisJournal::new(
        connection,
        &prefix,
        Duration::from_secs(2),
        Duration::from_secs(600),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let letters = loop {
        let letters = journal.dead_letters(10).await.unwrap();
        if !letters.is_empty() || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 1, "the event is in the dead letters");
    assert_eq!(letters[0].id, "doomed:0");
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].failed_sinks, vec!["full".to_string()]);
    let error = letters[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("No space left"), "{error}");
    assert_eq!(read_jsonl(&good).len(), 1, "the working sink got it once");
    let (_, readiness) = ready(&app.client, &app.url("/readyz")).await;
    assert_eq!(readiness["checks"]["backlog"], 0);

    // The dead-letters command sees it in Redis, and its replay runs it again (failing again on
    // /dev/full) without repeating the good sink.
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!("{}{routes}", redis_queue(REDIS_URL, &prefix)),
    )
    .unwrap();
    let (code, listed, errors) = cli(&["dead-letters", "list", "--json"], &config);
    assert_eq!(code, 0, "{errors}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["id"], "doomed:0");
    assert_eq!(listed[0]["failed_sinks"][0], "full");
    let (code, replayed, errors) = cli(&["dead-letters", "replay", "doomed:0"], &config);
    assert_eq!(code, 0, "{errors}");
    assert!(replayed.contains("replayed doomed:0"), "{replayed}");
    let (code, _, errors) = cli(&["dead-letters", "replay", "gone:0"], &config);
    assert_eq!(code, 1, "an unknown id is reported: {errors}");
    assert!(errors.contains("not in the journal"), "{errors}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let again = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let letters = journal.dead_letters(10).await.unwrap();
        if letters.first().is_some_and(|l| l.attempts == 3) || Instant::now() > deadline {
            break letters;
        }
    };
    assert_eq!(
        again.len(),
        1,
        "back in the dead letters after three more attempts"
    );
    assert_eq!(read_jsonl(&good).len(), 1, "the good sink is not repeated");
}

/// Runs the binary with `--config` to completion: (exit code, stdout, stderr).
fn cli(args: &[&str], config: &Path) -> (i32, String, String) {
    let output = Command::new(crate::helpers::binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env_remove("REDIS_URL")
        .env_remove("ATTIO_WEBHOOK_SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One replica of the daemon as a child process, on the shared Redis queue.
fn start_replica(root: &Path, name: &str, prefix: &str) -> (Daemon, PathBuf) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let sink = dir.join("events.jsonl");
    let config_path = ConfigToml::new()
        .raw(&redis_queue(REDIS_URL, prefix))
        .storage(&dir.join("data"))
        .fast_worker("concurrency = 16\n")
        .jsonl_for_all(&sink)
        .write(&dir);
    // The host name starts the replica's consumer name in the group.
    let daemon = Daemon::start(
        &dir,
        &config_path,
        &[
            ("ATTIO_WEBHOOK_SECRET", SECRET),
            ("HOSTNAME", &format!("replica-{name}")),
        ],
    );
    (daemon, sink)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_every_acknowledged_event_when_one_is_killed() {
    const DELIVERIES: usize = 10_000;
    const IN_FLIGHT: usize = 32;
    // The killed replica's worker.concurrency: at most that many events were between "sink
    // reached" and "marked done" when it died.
    const MAX_REPEATS: usize = 16;

    let prefix = unique_prefix();
    let root = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    let mut sinks = Vec::new();
    for name in ["a", "b", "c"] {
        let (daemon, sink) = start_replica(root.path(), name, &prefix);
        replicas.push(daemon);
        sinks.push(sink);
    }
    for daemon in &mut replicas {
        daemon.wait_healthy(Duration::from_secs(20)).await;
    }
    let urls: Arc<Vec<String>> =
        Arc::new(replicas.iter().map(|d| d.url("/webhooks/attio")).collect());

    // Senders behave like Attio: a delivery that is not answered 200 is sent again (here at
    // once, to the next replica) with the same Idempotency-Key.
    let next = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let duplicates = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (urls, next, acknowledged, duplicates) = (
            urls.clone(),
            next.clone(),
            acknowledged.clone(),
            duplicates.clone(),
        );
        senders.spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= DELIVERIES {
                    return;
                }
                let body = record_updated_body(n);
                let key = format!("d-{n}");
                let mut attempt = 0;
                loop {
                    let url = &urls[(n + attempt) % urls.len()];
                    if let Ok(response) = post_signed_to(&client, url, &body, Some(&key)).await {
                        if response.status() == 200 {
                            let answer: Value = response.json().await.unwrap_or(Value::Null);
                            if answer["status"] == "duplicate" {
                                duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    attempt += 1;
                    assert!(attempt < 50, "delivery {n} was never acknowledged");
                    if attempt % urls.len() == 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    // Kill replica "a" half-way, without a chance to finish anything.
    let started = Instant::now();
    while acknowledged.load(Ordering::Relaxed) < DELIVERIES / 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "load too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    replicas[0].kill();
    let held_at_kill = pending_of(&prefix, "replica-a-").await;
    while let Some(result) = senders.join_next().await {
        result.unwrap();
    }
    assert_eq!(acknowledged.load(Ordering::Relaxed), DELIVERIES);

    // Every acknowledged event reaches the union of the sinks, each at least once.
    let expected: BTreeSet<String> = (0..DELIVERIES).map(|n| format!("d-{n}:0")).collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let counts = loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for sink in &sinks {
            for id in ids(&read_jsonl(sink)) {
                *counts.entry(id).or_default() += 1;
            }
        }
        if expected.iter().all(|id| counts.contains_key(id)) || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events never arrived, e.g. {:?}; log of b: {}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        replicas[1].stderr()
    );
    let unexpected: Vec<&String> = counts.keys().filter(|id| !expected.contains(*id)).collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    assert!(
        repeats <= MAX_REPEATS,
        "{repeats} repeats; only events in flight on the killed replica may repeat"
    );

    // The survivors agree the queue is empty.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, readiness) = ready(&client, &replicas[1].url("/readyz")).await;
        assert_eq!(status, 200);
        if readiness["checks"]["backlog"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "backlog stays {readiness}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "scale-out kill test: {DELIVERIES} acknowledged ({} as duplicates after the kill), \
         {held_at_kill} held by the killed replica and reclaimed, {repeats} repeats, {:.1}s",
        duplicates.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// XPENDING's summary: count, lowest id, highest id, (consumer, count) pairs.
type PendingSummary = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// Entries pending on consumers whose name starts with `consumer` (XPENDING summary).
async fn pending_of(prefix: &str, consumer: &str) -> u64 {
    let mut redis = crate::helpers::redis().await;
    let summary: PendingSummary = redis::cmd("XPENDING")
        .arg(format!("{{{prefix}}}:events"))
        .arg("workers")
        .query_async(&mut redis)
        .await
        .unwrap();
    summary
        .3
        .unwrap_or_default()
        .iter()
        .filter(|(name, _)| name.starts_with(consumer))
        .map(|(_, count)| count.parse::<u64>().unwrap())
        .sum()
}

#[derive(Debug, Clone)]
struct Answer {
    sent: Instant,
    answered: Instant,
    status: u16,
    retry_after: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_acknowledged_event_and_ingress_answers_503_while_it_is_down() {
    let mut redis = RedisServer::with_aof()
        .await
        .expect("redis-server is installed (.ci/run installs it)");
    let prefix = unique_prefix();
    let app = TestApp::builder()
        .toml(&redis_queue(&redis.url(), &prefix))
        .spawn()
        .await;
    let webhook = app.url("/webhooks/attio");

    // Load: 8 senders, each delivery sent once; the answers are recorded with when they left.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<BTreeMap<usize, Answer>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (stop, next, answers, webhook) =
            (stop.clone(), next.clone(), answers.clone(), webhook.clone());
        senders.spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let response = post_signed_to(
                    &client,
                    &webhook,
                    &record_updated_body(n),
                    Some(&format!("r-{n}")),
                )
                .await
                .expect("the daemon itself stays up");
                let answer = Answer {
                    sent,
                    answered: Instant::now(),
                    status: response.status().as_u16(),
                    retry_after: response.headers().contains_key("retry-after"),
                };
                answers.lock().unwrap().insert(n, answer);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.stop();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, readiness) = ready(&app.client, &app.url("/readyz")).await;
    assert_eq!(status, 503, "not ready while Redis is down: {readiness}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let restart_at = Instant::now();
    redis.resume().await;

    // Readiness recovers by itself, and deliveries are accepted again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = ready(&app.client, &app.url("/readyz")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "readiness did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(result) = senders.join_next().await {
        result.unwrap();
    }

    let answers = answers.lock().unwrap().clone();
    // Answered while Redis was down. (A request that waited for the reconnection and was stored
    // after the restart may be answered 200: it is acknowledged and checked below like any other.)
    let during_outage: Vec<&Answer> = answers
        .values()
        .filter(|a| a.sent > down_at && a.answered < restart_at)
        .collect();
    assert!(
        during_outage.len() > 10,
        "the load kept going while Redis was down"
    );
    for answer in &during_outage {
        assert_eq!(answer.status, 503, "never 200 without storing");
        assert!(answer.retry_after, "503 carries Retry-After");
    }
    let after: usize = answers
        .values()
        .filter(|a| a.sent > recovered_at && a.status == 200)
        .count();
    assert!(after > 10, "accepted again after the restart");
    assert!(
        answers.values().all(|a| a.status == 200 || a.status == 503),
        "only 200 or 503"
    );

    // Nothing acknowledged is lost: before, during or after the restart.
    let acknowledged: BTreeSet<String> = answers
        .iter()
        .filter(|(_, a)| a.status == 200)
        .map(|(n, _)| format!("r-{n}:0"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let delivered: BTreeSet<String> = ids(&read_jsonl(&app.sink_path)).into_iter().collect();
        let lost: Vec<String> = acknowledged.difference(&delivered).cloned().collect();
        if lost.is_empty() || Instant::now() > deadline {
            break lost;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "redis restart test: {} acknowledged, {} answered 503 during the outage",
        acknowledged.len(),
        during_outage.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}
