//! Real sinks against real local receivers: an axum HTTP receiver on 127.0.0.1:0 that verifies
//! the Standard Webhooks signature on its own, the real Redis, a real shell command; per-sink
//! retries, permanent errors, dead letters, and a replay through the real binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attio_webhooks::journal::{Backend, DeadLetter, SqliteJournal};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::Value;

use crate::helpers::{
    post_signed_to, read_jsonl, record_updated_body, unique_prefix, Daemon, TestApp, SECRET,
};

const WAIT: Duration = Duration::from_secs(15);
/// A Standard Webhooks secret for the HTTP sink (the specification's example key).
const SINK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
    /// Whether the Standard Webhooks signature checked out.
    signature_valid: bool,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP sink receiver: answers `failure_status` to the first `fail_first` requests (or to
/// every request while `failing`), 200 otherwise, and records everything.
#[derive(Default)]
struct Receiver {
    received: Mutex<Vec<Received>>,
    fail_first: AtomicUsize,
    failing: AtomicBool,
    failure_status: AtomicUsize,
}

impl Receiver {
    async fn spawn(fail_first: usize, failure_status: u16) -> (Arc<Receiver>, SocketAddr) {
        let receiver = Arc::new(Receiver {
            fail_first: AtomicUsize::new(fail_first),
            failure_status: AtomicUsize::new(failure_status as usize),
            ..Receiver::default()
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count || Instant::now() > deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let signature_valid = verify_standard_webhook(SINK_SECRET, &headers, &body);
    let fail = receiver.failing.load(Ordering::SeqCst)
        || receiver
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let status = if fail {
        receiver.failure_status.load(Ordering::SeqCst) as u16
    } else {
        200
    };
    receiver.received.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
        status,
        signature_valid,
    });
    StatusCode::from_u16(status).unwrap()
}

/// What a receiver does with any Standard Webhooks library, written out: HMAC-SHA256 over
/// "id.timestamp.body" with the base64-decoded key after `whsec_`, compared with each `v1,`
/// signature, and a timestamp no more than five minutes away.
fn verify_standard_webhook(secret: &str, headers: &HashMap<String, String>, body: &[u8]) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        headers.get("webhook-id"),
        headers.get("webhook-timestamp"),
        headers.get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - seconds).abs() > 300 {
        return false;
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = engine.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

fn http_sink(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "[sinks.{name}]\nkind = \"http\"\nurl = \"http://{addr}/hook\"\nsecret = \"{SINK_SECRET}\"\n\
         timeout = \"2s\"\nheaders = {{ X-Team = \"sales\" }}\n{extra}\n"
    )
}

fn route(sinks: &[&str]) -> String {
    format!(
        "[[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = {:?}\n",
        sinks
    )
}

/// Polls the app's journal (a second connection, as the CLI would) until `id` is dead.
async fn wait_for_dead_letter(storage: &Path, id: &str) -> Option<DeadLetter> {
    let deadline = Instant::now() + WAIT;
    loop {
        let journal = SqliteJournal::open(&storage.join("journal.sqlite3")).unwrap();
        let letters = journal.dead_letters(100).await.unwrap();
        journal.close().await;
        if let Some(letter) = letters.into_iter().find(|l| l.id == id) {
            return Some(letter);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn http_sink_requests_carry_a_valid_standard_webhooks_signature_and_static_headers() {
    let (receiver, addr) = Receiver::spawn(0, 500).await;
    let app = TestApp::builder()
        .routes(&format!(
            "{}{}",
            http_sink("hook", addr, ""),
            route(&["hook"])
        ))
        .spawn()
        .await;
    let response = app
        .post_signed(&record_updated_body(7), Some("signed"))
        .await;
    assert_eq!(response.status(), 200);
    let received = receiver.wait_for(1, WAIT).await;
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert!(request.signature_valid, "{:?}", request.headers);
    assert_eq!(request.header("webhook-id"), "signed:0");
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("x-team"), "sales");
    assert_eq!(request.header("attio-webhooks-attempt"), "1");
    let line = request.json();
    assert_eq!(line["id"], "signed:0");
    assert_eq!(line["event_type"], "record.updated");
    assert_eq!(
        line["event"]["id"]["record_id"],
        "00000000-0000-4000-8000-000000000007"
    );
    // A forged body does not verify with the same headers.
    let mut forged = request.clone();
    forged.body = br#"{"id":"signed:0","forged":true}"#.to_vec();
    assert!(!verify_standard_webhook(
        SINK_SECRET,
        &forged.headers,
        &forged.body
    ));
}

#[tokio::test]
async fn a_sink_that_fails_twice_then_succeeds_gets_the_event_once_on_the_third_attempt() {
    let (receiver, addr) = Receiver::spawn(2, 503).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    let routes = format!(
        "{}[sinks.good]\nkind = \"jsonl\"\npath = {:?}\n{}",
        http_sink("hook", addr, "attempts = 5"),
        good.display().to_string(),
        route(&["good", "hook"])
    );
    let app = TestApp::builder().routes(&routes).spawn().await;
    app.post_signed(&record_updated_body(1), Some("flaky"))
        .await;
    let received = receiver.wait_for(3, WAIT).await;
    assert_eq!(received.len(), 3);
    let statuses: Vec<u16> = received.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![503, 503, 200],
        "accepted once, on the third try"
    );
    let attempts: Vec<&str> = received
        .iter()
        .map(|r| r.header("attio-webhooks-attempt"))
        .collect();
    assert_eq!(attempts, vec!["1", "2", "3"]);
    assert!(received.iter().all(|r| r.header("webhook-id") == "flaky:0"));
    assert!(received.iter().all(|r| r.signature_valid));
    // Done: out of the journal, not dead, and the healthy sink was not repeated.
    let deadline = Instant::now() + WAIT;
    while app.backlog().await != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.backlog().await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 3, "nothing after the success");
    assert_eq!(read_jsonl(&good).len(), 1, "the healthy sink got it once");
    let stopped = app.stop().await;
    let journal = SqliteJournal::open(&stopped.storage.join("journal.sqlite3")).unwrap();
    assert!(journal.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_4xx_answer_is_permanent_and_dead_letters_the_event_at_once() {
    let (receiver, addr) = Receiver::spawn(usize::MAX, 422).await;
    let app = TestApp::builder()
        .routes(&format!(
            "{}{}",
            http_sink("hook", addr, "attempts = 5"),
            route(&["hook"])
        ))
        .spawn()
        .await;
    app.post_signed(&record_updated_body(1), Some("refused"))
        .await;
    let letter = wait_for_dead_letter(&app.storage, "refused:0")
        .await
        .expect("dead-lettered");
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.failed_sinks, vec!["hook"]);
    let error = letter.last_error.unwrap_or_default();
    assert!(error.contains("hook") && error.contains("422"), "{error}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1, "never retried");
}

#[tokio::test]
async fn a_429_answer_is_retried() {
    let (receiver, addr) = Receiver::spawn(1, 429).await;
    let app = TestApp::builder()
        .routes(&format!(
            "{}{}",
            http_sink("hook", addr, ""),
            route(&["hook"])
        ))
        .spawn()
        .await;
    app.post_signed(&record_updated_body(1), Some("limited"))
        .await;
    let received = receiver.wait_for(2, WAIT).await;
    let statuses: Vec<u16> = received.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 200]);
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_up_to_the_sinks_attempts() {
    let port = crate::helpers::free_port();
    let routes = format!(
        "[sinks.gone]\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/hook\"\nattempts = 2\n{}",
        route(&["gone"])
    );
    let app = TestApp::builder().routes(&routes).spawn().await;
    app.post_signed(&record_updated_body(1), Some("unreachable"))
        .await;
    let letter = wait_for_dead_letter(&app.storage, "unreachable:0")
        .await
        .expect("dead-lettered");
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.sink_attempts.get("gone"), Some(&2));
    let error = letter.last_error.unwrap_or_default();
    assert!(error.contains("cannot connect"), "{error}");
}

#[tokio::test]
async fn the_redis_stream_receives_the_line_with_documented_fields() {
    let key = format!("{}:events", unique_prefix());
    let routes = format!(
        "[sinks.stream]\nkind = \"redis_stream\"\nurl = \"{}\"\nkey = \"{key}\"\nmaxlen = 1000\n{}",
        crate::helpers::REDIS_URL,
        route(&["stream"])
    );
    let app = TestApp::builder().routes(&routes).spawn().await;
    for n in 0..3 {
        app.post_signed(&record_updated_body(n), Some(&format!("stream-{n}")))
            .await;
    }
    let mut redis = crate::helpers::redis().await;
    let deadline = Instant::now() + WAIT;
    let entries = loop {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        if reply.ids.len() >= 3 || Instant::now() > deadline {
            break reply.ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(entries.len(), 3);
    let mut ids = Vec::new();
    for entry in &entries {
        let id: String = entry.get("event_id").unwrap();
        let event_type: String = entry.get("event_type").unwrap();
        let payload: String = entry.get("payload").unwrap();
        let line: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(event_type, "record.updated");
        assert_eq!(line["id"], id.as_str(), "the payload carries the same id");
        ids.push(id);
    }
    ids.sort();
    assert_eq!(ids, vec!["stream-0:0", "stream-1:0", "stream-2:0"]);
    drop(app);
}

fn command_sink(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[sinks.{name}]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n{extra}\n"
    )
}

#[tokio::test]
async fn the_command_sink_gets_the_json_on_stdin_and_the_event_in_its_environment() {
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "cat > '{dir}/stdin.json' && printf '%s\\n%s\\n%s\\n' \"$ATTIO_EVENT_TYPE\" \"$ATTIO_EVENT_ID\" \"$ATTIO_EVENT_ATTEMPT\" > '{dir}/env.txt'",
        dir = out.path().display()
    );
    let app = TestApp::builder()
        .routes(&format!(
            "{}{}",
            command_sink("script", &script, ""),
            route(&["script"])
        ))
        .spawn()
        .await;
    app.post_signed(&record_updated_body(3), Some("cmd")).await;
    let env_path = out.path().join("env.txt");
    let deadline = Instant::now() + WAIT;
    while !env_path.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Written after stdin was read to its end.
    let env = std::fs::read_to_string(&env_path).unwrap();
    assert_eq!(env, "record.updated\ncmd:0\n1\n");
    let stdin = std::fs::read_to_string(out.path().join("stdin.json")).unwrap();
    assert!(stdin.ends_with('\n'), "one line");
    let line: Value = serde_json::from_str(stdin.trim_end()).unwrap();
    assert_eq!(line["id"], "cmd:0");
    assert_eq!(
        line["event"]["id"]["record_id"],
        "00000000-0000-4000-8000-000000000003"
    );
}

#[tokio::test]
async fn a_command_that_outlives_its_timeout_is_killed_and_counts_as_a_failure() {
    let out = tempfile::tempdir().unwrap();
    let marker = out.path().join("survived");
    // The `touch` runs in a grandchild: killing only the shell the sink started would leave it.
    let script = format!("sh -c \"sleep 3; touch '{0}'\"; exit 0", marker.display());
    let app = TestApp::builder()
        .routes(&format!(
            "{}{}",
            command_sink("slow", &script, "timeout = \"200ms\"\nattempts = 1"),
            route(&["slow"])
        ))
        .spawn()
        .await;
    app.post_signed(&record_updated_body(1), Some("slow")).await;
    let letter = wait_for_dead_letter(&app.storage, "slow:0")
        .await
        .expect("dead-lettered");
    let error = letter.last_error.unwrap_or_default();
    assert!(error.contains("did not finish within 200ms"), "{error}");
    // The shell and its `sleep` were killed together: nothing runs on to touch the marker.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(!marker.exists(), "the command's process group was killed");
}

#[tokio::test]
async fn a_command_exiting_non_zero_is_retried() {
    let out = tempfile::tempdir().unwrap();
    // Fails on the first attempt, succeeds on the second.
    let script = format!(
        "cat > /dev/null; echo \"$ATTIO_EVENT_ATTEMPT\" >> '{dir}/attempts'; test \"$ATTIO_EVENT_ATTEMPT\" -ge 2",
        dir = out.path().display()
    );
    let app = TestApp::builder()
        .routes(&format!(
            "{}{}",
            command_sink("flaky", &script, ""),
            route(&["flaky"])
        ))
        .spawn()
        .await;
    app.post_signed(&record_updated_body(1), Some("exit")).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let attempts = std::fs::read_to_string(out.path().join("attempts")).unwrap_or_default();
        if attempts == "1\n2\n" {
            break;
        }
        assert!(Instant::now() < deadline, "attempts so far: {attempts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while app.backlog().await != 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_nul_in_the_event_type_fails_that_one_event_at_the_command_sink_and_is_listed_escaped() {
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "cat > /dev/null; echo \"$ATTIO_EVENT_ID\" >> '{dir}/ran'",
        dir = out.path().display()
    );
    let sinks = format!(
        "{}{}",
        command_sink("script", &script, "attempts = 5\nretry_initial = \"50ms\""),
        route(&["script"])
    );
    let app = TestApp::builder().routes(&sinks).spawn().await;
    let body = String::from_utf8(record_updated_body(1))
        .unwrap()
        .replace("\"record.updated\"", "\"record.\\u0000updated\"");
    let response = app.post_signed(body.as_bytes(), Some("nul")).await;
    assert_eq!(response.status(), 200, "a signed delivery is accepted");
    let letter = wait_for_dead_letter(&app.storage, "nul:0")
        .await
        .expect("dead-lettered");
    assert_eq!(
        letter.sink_attempts.get("script"),
        Some(&1),
        "a permanent failure: not retried as if the sink were down"
    );
    let error = letter.last_error.clone().unwrap_or_default();
    assert!(error.contains("NUL"), "{error}");

    // The sink itself is fine: the next event runs the program.
    app.post_signed(&record_updated_body(2), Some("after"))
        .await;
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(out.path().join("ran"))
        .unwrap_or_default()
        .contains("after:0")
    {
        assert!(
            Instant::now() < deadline,
            "the next event was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let config = out.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {:?}\n{sinks}",
            app.storage.display().to_string()
        ),
    )
    .unwrap();
    let (code, table, stderr) = dead_letters(&config, out.path(), &["list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !table.contains('\0'),
        "no raw NUL on the terminal: {table:?}"
    );
    assert!(table.contains("record.\\u{0}updated"), "{table}");
    let (code, shown, _) = dead_letters(&config, out.path(), &["show", "nul:0"]);
    assert_eq!(code, 0);
    assert!(
        !shown.contains('\0') && shown.contains("record.\\u0000updated"),
        "{shown}"
    );
}

/// Runs `attio-webhooks dead-letters ...` to completion: (exit code, stdout, stderr).
fn dead_letters(config: &Path, dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(crate::helpers::binary())
        .arg("dead-letters")
        .args(args)
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env_remove("ATTIO_WEBHOOK_SECRET")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn daemon_config(dir: &Path, receiver: SocketAddr) -> PathBuf {
    let config = format!(
        "[webhook]\nsecrets = [\"{SECRET}\"]\n[storage]\npath = {:?}\n\
         [worker]\nretry_initial = \"50ms\"\nretry_max = \"100ms\"\npoll_interval = \"100ms\"\n\
         [sinks.file]\nkind = \"jsonl\"\npath = {:?}\n{}{}",
        dir.join("data").display().to_string(),
        dir.join("events.jsonl").display().to_string(),
        http_sink("hook", receiver, "attempts = 2"),
        route(&["file", "hook"]),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[tokio::test]
async fn a_dead_letter_is_replayed_by_the_binary_while_the_daemon_runs_once_the_sink_recovers() {
    let (receiver, addr) = Receiver::spawn(0, 500).await;
    receiver.failing.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(dir.path(), addr);
    let mut daemon = Daemon::start(dir.path(), &config, &[]);
    daemon.wait_healthy(WAIT).await;
    let client = reqwest::Client::new();
    let response = post_signed_to(
        &client,
        &daemon.url("/webhooks/attio"),
        &record_updated_body(9),
        Some("doomed"),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);

    // Two failed attempts, then the dead letters: `list --json` shows it with its failure.
    let deadline = Instant::now() + WAIT;
    let letters = loop {
        let (code, stdout, stderr) = dead_letters(&config, dir.path(), &["list", "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let letters: Vec<Value> = serde_json::from_str(&stdout).unwrap();
        if !letters.is_empty() || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 1, "{}", daemon.stderr());
    assert_eq!(letters[0]["id"], "doomed:0");
    assert_eq!(letters[0]["attempts"], 2);
    assert_eq!(letters[0]["failed_sinks"], serde_json::json!(["hook"]));
    assert_eq!(letters[0]["sinks_done"], serde_json::json!(["file"]));
    assert!(letters[0]["last_error"].as_str().unwrap().contains("500"));
    assert_eq!(receiver.received().len(), 2);

    // The table and `show` work too.
    let (code, table, _) = dead_letters(&config, dir.path(), &["list"]);
    assert_eq!(code, 0);
    assert!(
        table.starts_with("ID") && table.contains("doomed:0") && table.contains("hook"),
        "{table}"
    );
    let (code, shown, _) = dead_letters(&config, dir.path(), &["show", "doomed:0"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["state"], "dead");
    assert_eq!(
        shown["event"]["id"]["record_id"],
        "00000000-0000-4000-8000-000000000009"
    );

    // The receiver recovers; the replay goes through the running daemon.
    receiver.failing.store(false, Ordering::SeqCst);
    let (code, stdout, stderr) = dead_letters(&config, dir.path(), &["replay", "doomed:0"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("replayed doomed:0"), "{stdout}");
    let received = receiver.wait_for(3, WAIT).await;
    assert_eq!(received.len(), 3);
    assert_eq!(received[2].status, 200);
    assert_eq!(received[2].header("webhook-id"), "doomed:0", "same id");
    assert_eq!(
        received[2].header("attio-webhooks-attempt"),
        "1",
        "attempts reset"
    );

    let deadline = Instant::now() + WAIT;
    loop {
        let (_, stdout, _) = dead_letters(&config, dir.path(), &["list", "--json"]);
        let (_, shown, _) = dead_letters(&config, dir.path(), &["show", "doomed:0"]);
        if stdout.trim() == "[]" && shown.contains(r#""state": "delivered""#) {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {stdout} {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The jsonl sink had the event already: the replay did not repeat it.
    assert_eq!(read_jsonl(&dir.path().join("events.jsonl")).len(), 1);
    // Replaying what is no longer a dead letter says so and fails.
    let (code, _, stderr) = dead_letters(&config, dir.path(), &["replay", "doomed:0"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("not a dead letter (it is delivered)"),
        "{stderr}"
    );
    daemon.kill();
}

#[tokio::test]
async fn replay_for_one_sink_repeats_only_that_sink() {
    let (receiver, addr) = Receiver::spawn(0, 500).await;
    receiver.failing.store(true, Ordering::SeqCst);
    let out = tempfile::tempdir().unwrap();
    let counter = out.path().join("runs");
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{}{}{}",
        http_sink("hook", addr, "attempts = 1"),
        command_sink(
            "script",
            &format!(
                "cat > /dev/null; echo run >> '{}'; exit 1",
                counter.display()
            ),
            "attempts = 1"
        ),
        route(&["hook", "script"])
    );
    let config_text = format!(
        "[webhook]\nsecrets = [\"{SECRET}\"]\n[storage]\npath = {:?}\n\
         [worker]\nretry_initial = \"50ms\"\nretry_max = \"100ms\"\npoll_interval = \"100ms\"\n{routes}",
        dir.path().join("data").display().to_string(),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text).unwrap();
    let mut daemon = Daemon::start(dir.path(), &config, &[]);
    daemon.wait_healthy(WAIT).await;
    let client = reqwest::Client::new();
    post_signed_to(
        &client,
        &daemon.url("/webhooks/attio"),
        &record_updated_body(1),
        Some("both"),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, stdout, _) =
            dead_letters(&config, dir.path(), &["list", "--json", "--sink", "script"]);
        if stdout.contains("both:0") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", daemon.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.failing.store(false, Ordering::SeqCst);
    let (code, stdout, stderr) =
        dead_letters(&config, dir.path(), &["replay", "--all", "--sink", "hook"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let received = receiver.wait_for(2, WAIT).await;
    assert_eq!(received.last().map(|r| r.status), Some(200));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let runs = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(runs.lines().count(), 1, "the command was not run again");
    let (code, _, stderr) = dead_letters(
        &config,
        dir.path(),
        &["replay", "--all", "--sink", "nowhere"],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("nowhere") && stderr.contains("hook"),
        "{stderr}"
    );
    daemon.kill();
}

#[tokio::test]
async fn a_collapsed_line_the_sink_refuses_is_retried_until_every_event_of_the_group_got_through() {
    const OBJECT: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
    const ATTRIBUTES: [&str; 3] = [
        "41252299-f8c7-4b5e-99c9-4ff8321d2f96",
        "6f7b1c9e-2a55-4d43-9d0e-3f5b2b1a0c11",
        "0c0e6a44-5b7d-4f0b-8e63-96e1c1f0d2a7",
    ];
    let fake = crate::fake_attio::FakeAttio::start().await;
    fake.set_slug(OBJECT, "deals");
    for (attribute, slug) in ATTRIBUTES.iter().zip(["stage", "amount", "owner"]) {
        fake.set_slug(attribute, slug);
    }
    // The group's one line is refused once; what comes after must still carry every event.
    let (receiver, addr) = Receiver::spawn(1, 503).await;
    let routes = format!(
        "{}[[routes]]\nname = \"changes\"\nevents = [\"record.updated\"]\nsinks = [\"hook\"]\ncollapse = true\n",
        http_sink("hook", addr, "attempts = 5")
    );
    let app = TestApp::builder()
        .toml(&fake.attio_toml(""))
        .toml("[enrichment]\ncoalesce_window = \"500ms\"")
        .routes(&routes)
        .spawn()
        .await;
    for (n, attribute) in ATTRIBUTES.iter().enumerate() {
        let body = serde_json::to_vec(&serde_json::json!({
            "webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553",
            "events": [{
                "event_type": "record.updated",
                "id": {
                    "workspace_id": "14beef7a-99f7-4534-a87e-70b564330a4c",
                    "object_id": OBJECT,
                    "record_id": "00000000-0000-4000-8000-000000000007",
                    "attribute_id": attribute
                },
                "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
            }]
        }))
        .unwrap();
        let response = app.post_signed(&body, Some(&format!("group-{n}"))).await;
        assert_eq!(response.status(), 200);
    }
    let deadline = Instant::now() + WAIT;
    while app.backlog().await != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.backlog().await, 0, "every event finished");
    let received = receiver.received();
    assert_eq!(received[0].status, 503);
    let first: Vec<Value> = received[0].json()["collapsed_event_ids"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        first.len(),
        3,
        "the first attempt was one line for the group"
    );
    let mut delivered: Vec<String> = received
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| {
            r.json()["collapsed_event_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    delivered.sort();
    assert_eq!(delivered, ["group-0:0", "group-1:0", "group-2:0"]);
    let stopped = app.stop().await;
    let journal = SqliteJournal::open(&stopped.storage.join("journal.sqlite3")).unwrap();
    assert!(journal.dead_letters(10).await.unwrap().is_empty());
}

/// Answers 400 with every request header echoed back as JSON, as some receivers do.
async fn echo_headers(headers: HeaderMap) -> (StatusCode, String) {
    let echoed: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    (
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": "refused", "you_sent": echoed }).to_string(),
    )
}

#[tokio::test]
async fn credentials_a_receiver_echoes_back_reach_neither_the_log_nor_the_dead_letter() {
    let app = axum::Router::new().route("/hook", axum::routing::post(echo_headers));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[webhook]\nsecrets = [\"{SECRET}\"]\n[storage]\npath = {:?}\n\
         [sinks.hook]\nkind = \"http\"\nurl = \"http://{addr}/hook\"\nsecret = \"{SINK_SECRET}\"\n\
         attempts = 1\nheaders = {{ Authorization = \"Bearer authorization-token-text\", X-Api-Key = \"api-key-text\" }}\n{}",
        dir.path().join("data").display().to_string(),
        route(&["hook"]),
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut daemon = Daemon::start(dir.path(), &config_path, &[]);
    daemon.wait_healthy(WAIT).await;
    let response = post_signed_to(
        &reqwest::Client::new(),
        &daemon.url("/webhooks/attio"),
        &record_updated_body(3),
        Some("echoed"),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);

    let deadline = Instant::now() + WAIT;
    let shown = loop {
        let (code, shown, stderr) = dead_letters(&config_path, dir.path(), &["show", "echoed:0"]);
        let shown: Value = serde_json::from_str(&shown).unwrap_or_default();
        if code == 0 && shown["state"] == "dead" {
            break shown;
        }
        assert!(Instant::now() < deadline, "no dead letter: {stderr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let last_error = shown["last_error"].as_str().unwrap().to_string();
    // The answer is still quoted, so the operator sees why it was refused.
    assert!(
        last_error.contains("400") && last_error.contains("refused"),
        "{last_error}"
    );
    let log = daemon.stderr();
    daemon.kill();
    assert!(log.contains("400"), "the refusal is logged: {log}");
    let sink_key = SINK_SECRET.trim_start_matches("whsec_");
    for secret in ["authorization-token-text", "api-key-text", sink_key] {
        assert!(!last_error.contains(secret), "{secret}: {last_error}");
        assert!(!log.contains(secret), "{secret}: {log}");
    }
}
