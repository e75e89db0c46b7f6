//! The real binary: configuration from files and environment, refusal to start on bad config,
//! graceful shutdown on SIGTERM, and a SIGKILL between acknowledgement and processing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    post_signed_to, read_jsonl, record_updated_body, send_distinct_to, wait_for_jsonl, ConfigToml,
    Daemon, SECRET,
};

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    ConfigToml::new()
        .storage(&dir.join("data"))
        .fast_worker("")
        .raw(extra)
        .jsonl_for_all(&dir.join("events.jsonl"))
        .write(dir)
}

/// Runs the binary to completion and returns (exit code, stderr).
fn run_to_exit(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (i32, String) {
    let mut command = Command::new(crate::helpers::binary());
    command
        .args(args)
        .current_dir(dir)
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env_remove("ATTIO_WEBHOOK_SECRET")
        .env_remove("APP_ENV")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn without_a_secret_the_daemon_refuses_to_start_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (code, stderr) = run_to_exit(
        &["serve", "--config", config.to_str().unwrap()],
        &[("APP_ENV", "test")],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("ATTIO_WEBHOOK_SECRET"), "{stderr}");
}

#[test]
fn the_development_secret_is_refused_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[webhook]\nsecrets = [\"development-secret-do-not-use-in-production\"]",
    );
    let (code, stderr) = run_to_exit(
        &["serve", "--config", config.to_str().unwrap()],
        &[("APP_ENV", "production")],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("development webhook secret"), "{stderr}");
}

#[test]
fn invalid_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[queue]\nmax_backlog = 0");
    let (code, stderr) = run_to_exit(
        &["serve", "--config", config.to_str().unwrap()],
        &[("APP_ENV", "test"), ("ATTIO_WEBHOOK_SECRET", "s")],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("queue.max_backlog"), "{stderr}");
    let (code, stderr) = run_to_exit(
        &["serve", "--config", config.to_str().unwrap()],
        &[
            ("APP_ENV", "test"),
            ("ATTIO_WEBHOOK_SECRET", "s"),
            ("ATTIO_WEBHOOKS__QUEUE__MAX_BACKLOG", "10"),
            ("ATTIO_WEBHOOKS__SERVER__LISTEN", "not-an-address"),
        ],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("server.listen"), "{stderr}");
}

#[tokio::test]
async fn secrets_come_from_the_environment_comma_separated() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut daemon = Daemon::start(
        dir.path(),
        &config,
        &[("ATTIO_WEBHOOK_SECRET", &format!("old-secret,{SECRET}"))],
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let body = record_updated_body(1);
    let response = post_signed_to(&client, &daemon.url("/webhooks/attio"), &body, Some("env"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lines = wait_for_jsonl(&dir.path().join("events.jsonl"), 1, Duration::from_secs(10)).await;
    assert_eq!(lines.len(), 1);
    assert!(
        !daemon.stderr().contains(SECRET),
        "the secret never reaches the log"
    );
}

#[tokio::test]
async fn secrets_listed_with_spaces_after_the_commas_are_trimmed_during_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    // As an operator types it while rotating: the old secret, a comma, a space, the new one.
    let mut daemon = Daemon::start(
        dir.path(),
        &config,
        &[("ATTIO_WEBHOOK_SECRET", &format!("old-secret, {SECRET} "))],
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let response = post_signed_to(
        &client,
        &daemon.url("/webhooks/attio"),
        &record_updated_body(1),
        Some("rotation-new"),
    )
    .await
    .unwrap();
    assert_eq!(
        response.status(),
        200,
        "a delivery signed with the new secret is accepted"
    );
    let old_signed = record_updated_body(2);
    let response = client
        .post(daemon.url("/webhooks/attio"))
        .header("content-type", "application/json")
        .header(
            "attio-signature",
            attio_webhooks::signature::sign("old-secret", &old_signed),
        )
        .header("idempotency-key", "rotation-old")
        .body(old_signed)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "a delivery signed with the old secret is accepted"
    );
    let lines = wait_for_jsonl(&dir.path().join("events.jsonl"), 2, Duration::from_secs(10)).await;
    assert_eq!(lines.len(), 2);
}

#[tokio::test]
async fn an_odd_idempotency_key_is_warned_about_without_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let body = record_updated_body(1);
    let odd_key = format!("odd-key-marker {}", "x".repeat(300));
    let response = post_signed_to(
        &reqwest::Client::new(),
        &daemon.url("/webhooks/attio"),
        &body,
        Some(&odd_key),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let lines = wait_for_jsonl(&dir.path().join("events.jsonl"), 1, Duration::from_secs(10)).await;
    assert!(lines[0]["id"].as_str().unwrap().starts_with("sha256:"));
    let log = daemon.stderr();
    assert!(
        log.contains("Idempotency-Key header is not at most 200 bytes of visible ASCII"),
        "{log}"
    );
    assert!(
        !log.contains("odd-key-marker"),
        "the header value stays out of the log"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_stops_the_daemon_cleanly_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    send_distinct_to(
        &reqwest::Client::new(),
        &daemon.url("/webhooks/attio"),
        "term",
        5,
    )
    .await;
    let pid = daemon.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "daemon did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0), "{}", daemon.stderr());
    // Everything acknowledged before the signal was delivered or is still in the journal; with
    // a healthy sink it was delivered.
    assert_eq!(read_jsonl(&dir.path().join("events.jsonl")).len(), 5);
}

#[tokio::test]
async fn events_acknowledged_before_a_sigkill_reach_the_sink_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // First life: the worker is off, so the events are acknowledged and not processed.
    let config = write_config(dir.path(), "enabled = false");
    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for n in 0..30 {
        let key = format!("kill-{n}");
        let response = post_signed_to(
            &client,
            &daemon.url("/webhooks/attio"),
            &record_updated_body(n),
            Some(&key),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        acknowledged.push(format!("{key}:0"));
    }
    daemon.kill(); // SIGKILL: no chance to flush anything that was not already durable
    let sink = dir.path().join("events.jsonl");
    assert!(read_jsonl(&sink).is_empty());

    // Second life with the worker on: every acknowledged event arrives, once.
    let config = write_config(dir.path(), "");
    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let lines = wait_for_jsonl(&sink, acknowledged.len(), Duration::from_secs(20)).await;
    let mut ids: Vec<String> = lines
        .iter()
        .map(|l: &Value| l["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    acknowledged.sort();
    assert_eq!(ids, acknowledged);
}
