//! The developer tools, run as the real binary: `send` against a running daemon (and against a
//! capturing HTTP server for byte-exactness), `sign`, `verify` and `check-config`.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attio_webhooks::cli::templates::TEMPLATES;
use attio_webhooks::config::DEVELOPMENT_SECRET;
use attio_webhooks::signature::sign;
use axum::http::HeaderMap;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::helpers::{binary, fixture, free_port, TestApp, SECRET};

/// Runs the binary with a clean environment (plus `env`), in a scratch directory.
async fn run(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let workdir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .current_dir(workdir.path())
        .env_clear()
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("binary starts");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn webhook_url(app: &TestApp) -> String {
    app.url("/webhooks/attio")
}

#[tokio::test]
async fn send_delivers_an_event_the_daemon_accepts() {
    let app = TestApp::spawn().await;
    let record_id = "bf071e1f-6035-429d-b874-d83ea64ea13b";
    let url = webhook_url(&app);
    let output = run(
        &[
            "send",
            "record.updated",
            "--to",
            &url,
            "--secret",
            SECRET,
            "--record-id",
            record_id,
        ],
        &[],
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("200 OK"), "{}", stdout(&output));
    assert!(stdout(&output).contains("accepted"), "{}", stdout(&output));

    let lines = app.wait_for_lines(1, Duration::from_secs(10)).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event_type"], "record.updated");
    assert_eq!(lines[0]["event"]["id"]["record_id"], record_id);
    assert_eq!(lines[0]["event"]["actor"]["type"], "workspace-member");
}

#[tokio::test]
async fn send_with_a_wrong_secret_is_refused_and_exits_non_zero() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let wrong = "not-the-daemons-secret";
    let output = run(
        &["send", "record.created", "--to", &url, "--secret", wrong],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).starts_with("401"), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(
        message.contains("refused the signature") && message.contains("check the secret"),
        "{message}"
    );
    assert!(!message.contains(wrong) && !stdout(&output).contains(wrong));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.sink_lines().is_empty());
}

#[tokio::test]
async fn the_same_idempotency_key_twice_yields_one_event() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let args = [
        "send",
        "task.created",
        "--to",
        &url,
        "--secret",
        SECRET,
        "--idempotency-key",
        "retry-me-once",
    ];
    let first = run(&args, &[], b"").await;
    assert!(first.status.success(), "{}", stderr(&first));
    let second = run(&args, &[], b"").await;
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stdout(&second).contains("duplicate"), "{}", stdout(&second));

    let lines = app.wait_for_lines(1, Duration::from_secs(10)).await;
    assert_eq!(lines.len(), 1);
    // Give a wrongly accepted second copy the time to reach the sink.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = app.sink_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["delivery_key"], "retry-me-once");
}

#[tokio::test]
async fn send_count_50_yields_50_distinct_events() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let output = run(
        &[
            "send",
            "record.updated",
            "--to",
            &url,
            "--secret",
            SECRET,
            "--count",
            "50",
            "--concurrency",
            "8",
        ],
        &[],
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("200 OK: 50"),
        "{}",
        stdout(&output)
    );

    let lines = app.wait_for_lines(50, Duration::from_secs(20)).await;
    assert_eq!(lines.len(), 50);
    let keys: HashSet<&str> = lines
        .iter()
        .map(|l| l["delivery_key"].as_str().unwrap())
        .collect();
    let records: HashSet<&str> = lines
        .iter()
        .map(|l| l["event"]["id"]["record_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 50);
    assert_eq!(records.len(), 50);
    // One run is one webhook in one workspace.
    let webhooks: HashSet<&str> = lines
        .iter()
        .map(|l| l["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(webhooks.len(), 1);
}

#[tokio::test]
async fn every_template_is_accepted_and_parsed_as_its_event_type() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let output = run(&["send", "*", "--to", &url, "--secret", SECRET], &[], b"").await;
    assert!(output.status.success(), "{}", stderr(&output));

    let lines = app
        .wait_for_lines(TEMPLATES.len(), Duration::from_secs(20))
        .await;
    assert_eq!(lines.len(), TEMPLATES.len());
    let delivered: HashSet<&str> = lines
        .iter()
        .map(|l| l["event_type"].as_str().unwrap())
        .collect();
    let expected: HashSet<&str> = TEMPLATES.iter().map(|(name, _)| *name).collect();
    assert_eq!(delivered, expected);
    for line in &lines {
        assert_eq!(line["event"]["event_type"], line["event_type"]);
        assert!(line["event"]["id"]["workspace_id"].is_string(), "{line}");
    }
}

/// What the capturing receiver got: each request's headers and body.
type Captured = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver that records what it got and answers 202.
async fn capturing_server() -> (String, Captured) {
    let seen: Captured = Arc::default();
    let store = Arc::clone(&seen);
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push((headers, body.to_vec()));
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/hook"), seen)
}

#[tokio::test]
async fn send_file_posts_the_bytes_exactly_with_attios_headers() {
    let (url, seen) = capturing_server().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/attio_docs__record.updated_delivery.json");
    let file = fixture("attio_docs__record.updated_delivery.json");
    let output = run(
        &[
            "send",
            "--file",
            path.to_str().unwrap(),
            "--to",
            &url,
            "--secret",
            SECRET,
            "--idempotency-key",
            "key-1",
        ],
        &[],
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    assert_eq!(body, &file, "the file is sent byte for byte");
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_string();
    let signature = sign(SECRET, &file);
    assert_eq!(header("attio-signature"), signature);
    assert_eq!(header("x-attio-signature"), signature);
    assert_eq!(header("idempotency-key"), "key-1");
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(
        header("user-agent"),
        "Attio 2.0 (https://attio.com/developers/using-webhooks)"
    );
}

#[tokio::test]
async fn send_without_a_secret_in_development_signs_with_the_development_secret() {
    let app = TestApp::builder()
        .secrets(&[DEVELOPMENT_SECRET])
        .spawn()
        .await;
    let listen = app.addr.to_string();
    // No --to either: the address comes from the settings, as `serve` would read them.
    let output = run(
        &["send", "list-entry.created"],
        &[
            ("APP_ENV", "development"),
            ("ATTIO_WEBHOOKS__SERVER__LISTEN", &listen),
        ],
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("development secret"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains(DEVELOPMENT_SECRET));
    assert!(!stdout(&output).contains(DEVELOPMENT_SECRET));
    let lines = app.wait_for_lines(1, Duration::from_secs(10)).await;
    assert_eq!(lines[0]["event_type"], "list-entry.created");
}

#[tokio::test]
async fn send_without_a_secret_in_production_refuses() {
    let output = run(
        &["send", "record.created", "--to", "http://127.0.0.1:9/x"],
        &[("APP_ENV", "production")],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("ATTIO_WEBHOOK_SECRET"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn send_refuses_an_invented_event_type_with_a_suggestion() {
    let output = run(
        &["send", "workspace-member.updated", "--secret", SECRET],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("Attio has no"), "{message}");
    assert!(message.contains("workspace-member.created"), "{message}");
}

#[tokio::test]
async fn send_to_a_daemon_that_is_not_running_says_so() {
    let url = format!("http://127.0.0.1:{}/webhooks/attio", free_port());
    let output = run(
        &["send", "record.created", "--to", &url, "--secret", SECRET],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("is the daemon running"),
        "{}",
        stderr(&output)
    );

    // A load run stops at the first refused connection instead of repeating it.
    let output = run(
        &[
            "send",
            "record.created",
            "--to",
            &url,
            "--secret",
            SECRET,
            "--count",
            "100000",
            "--json",
        ],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(summary["sent"].as_u64().unwrap() < 100_000, "{summary}");
}

#[derive(serde::Deserialize)]
struct Vector {
    secret: String,
    raw_body: String,
    attio_signature: String,
    wrong_if_secret_hex_decoded: String,
}

fn vector() -> Vector {
    serde_json::from_slice(&fixture("signature_vector.json")).unwrap()
}

#[tokio::test]
async fn sign_prints_the_attio_signature_of_stdin() {
    let v = vector();
    let output = run(&["sign", "--secret", &v.secret], &[], v.raw_body.as_bytes()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{}\n", v.attio_signature));

    // The secret may come from the environment instead, and is never echoed.
    let output = run(
        &["sign"],
        &[("ATTIO_WEBHOOK_SECRET", &v.secret)],
        v.raw_body.as_bytes(),
    )
    .await;
    assert_eq!(stdout(&output), format!("{}\n", v.attio_signature));
    assert!(!stderr(&output).contains(&v.secret));
}

#[tokio::test]
async fn verify_exits_0_for_a_valid_signature_and_1_otherwise() {
    let v = vector();
    let valid = run(
        &[
            "verify",
            "--secret",
            &v.secret,
            "--signature",
            &v.attio_signature,
        ],
        &[],
        v.raw_body.as_bytes(),
    )
    .await;
    assert_eq!(valid.status.code(), Some(0), "{}", stdout(&valid));
    assert!(stdout(&valid).starts_with("valid"));

    let wrong = run(
        &[
            "verify",
            "--secret",
            &v.secret,
            "--signature",
            &v.wrong_if_secret_hex_decoded,
        ],
        &[],
        v.raw_body.as_bytes(),
    )
    .await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stdout(&wrong).starts_with("invalid"));

    // One added newline is a different body.
    let mut changed = v.raw_body.clone().into_bytes();
    changed.push(b'\n');
    let changed = run(
        &[
            "verify",
            "--secret",
            &v.secret,
            "--signature",
            &v.attio_signature,
        ],
        &[],
        &changed,
    )
    .await;
    assert_eq!(changed.status.code(), Some(1));
    assert!(!stdout(&changed).contains(&v.secret));
}

#[tokio::test]
async fn check_config_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[redis]\nurl = \"redis://:redis-password-xyz@127.0.0.1:6379\"\n\
         [[routes]]\nname = \"r\"\nevents = [\"record.update\"]\nsinks = [\"stdout\"]\n\
         [sinks.stdout]\nkind = \"stdout\"\n",
    )
    .unwrap();
    let env = [
        ("ATTIO_WEBHOOK_SECRET", "first-secret-abc,second-secret-def"),
        ("ATTIO_API_KEY", "attio-api-key-ghi"),
    ];
    let secrets = [
        "first-secret-abc",
        "second-secret-def",
        "redis-password-xyz",
        "attio-api-key-ghi",
    ];

    let output = run(
        &["check-config", "--config", file.to_str().unwrap()],
        &env,
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output) + &stderr(&output);
    assert!(text.contains("[redacted: 2 secrets]"), "{text}");
    assert!(text.contains("did you mean \"record.updated\""), "{text}");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }

    let output = run(
        &["check-config", "--json", "--config", file.to_str().unwrap()],
        &env,
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(
        report["settings"]["webhook"]["secrets"],
        "[redacted: 2 secrets]"
    );
    assert_eq!(report["settings"]["redis"]["url"], "[redacted]");
    let text = stdout(&output);
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn check_config_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let output = run(
        &["check-config", "--config", file.to_str().unwrap()],
        &[("ATTIO_WEBHOOK_SECRET", "s")],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("server.listen"),
        "{}",
        stderr(&output)
    );

    // A secret in the wrong shape is named by its key, never quoted.
    std::fs::write(&file, "[webhook]\nsecrets = \"leaky-secret-value\"\n").unwrap();
    let output = run(
        &["check-config", "--config", file.to_str().unwrap()],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("webhook.secrets"), "{message}");
    assert!(!message.contains("leaky-secret-value"), "{message}");
}

#[tokio::test]
async fn urls_lose_their_user_info_and_query_values_in_check_config_and_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let credentials = ["url-password-text", "query-token-text", "base-token-text"];
    let routes = "[[routes]]\nname = \"r\"\nevents = [\"*\"]\nsinks = [\"hook\"]\n";

    // A valid URL: check-config shows it, without what may be a credential.
    std::fs::write(
        &file,
        format!(
            "[attio]\nbase_url = \"https://api.attio.com/?key=base-token-text\"\n\
             [sinks.hook]\nkind = \"http\"\n\
             url = \"https://user:url-password-text@hooks.test/in?token=query-token-text&team=sales\"\n{routes}"
        ),
    )
    .unwrap();
    for json in [false, true] {
        let mut args = vec!["check-config", "--config", file.to_str().unwrap()];
        if json {
            args.insert(1, "--json");
        }
        let output = run(&args, &[("ATTIO_WEBHOOK_SECRET", "s")], b"").await;
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output) + &stderr(&output);
        assert!(
            text.contains("https://redacted@hooks.test/in?token=redacted&team=redacted"),
            "{text}"
        );
        for credential in credentials {
            assert!(!text.contains(credential), "{credential} leaked: {text}");
        }
    }

    // A mistyped scheme: both check-config and serve refuse it, quoting it redacted.
    std::fs::write(
        &file,
        format!(
            "[sinks.hook]\nkind = \"http\"\n\
             url = \"http//user:url-password-text@hooks.test/in?token=query-token-text\"\n{routes}"
        ),
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let output = run(
            &[command, "--config", file.to_str().unwrap()],
            &[("ATTIO_WEBHOOK_SECRET", "s")],
            b"",
        )
        .await;
        assert_eq!(output.status.code(), Some(2), "{command}");
        let text = stdout(&output) + &stderr(&output);
        assert!(
            text.contains("sinks.hook.url")
                && text.contains("http//redacted@hooks.test/in?token=redacted"),
            "{command}: {text}"
        );
        for credential in credentials {
            assert!(
                !text.contains(credential),
                "{command}: {credential} leaked: {text}"
            );
        }
    }
}
