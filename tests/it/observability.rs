//! Metrics and request ids, as an operator sees them.

use std::time::Duration;

use crate::helpers::{
    record_updated_body, send_distinct_to, wait_for_jsonl, Daemon, TestApp, SECRET,
};

/// The value of one series in a Prometheus text exposition (0 when absent).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name_and_labels).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The Prometheus text served at `url`.
async fn metrics_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_deliveries_by_outcome_and_events_by_kind() {
    let app = TestApp::spawn().await;
    let before = metrics_text(&app.client, &app.url("/metrics")).await;
    assert_eq!(
        app.post_signed(&record_updated_body(1), Some("m1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post_signed(&record_updated_body(1), Some("m1"))
            .await
            .status(),
        200
    );
    assert_eq!(app.post_raw(b"{}", None, None).await.status(), 401);
    app.wait_for_lines(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let after = response.text().await.unwrap();
    // Other tests in this process share the registry: compare increases.
    for (series_name, at_least) in [
        ("attio_webhooks_deliveries_total{outcome=\"accepted\"}", 1.0),
        (
            "attio_webhooks_deliveries_total{outcome=\"duplicate\"}",
            1.0,
        ),
        (
            "attio_webhooks_deliveries_total{outcome=\"unauthorized\"}",
            1.0,
        ),
        (
            "attio_webhooks_events_processed_total{kind=\"record.updated\",outcome=\"delivered\"}",
            1.0,
        ),
        (
            "attio_webhooks_sink_deliveries_total{sink=\"file\",outcome=\"ok\"}",
            1.0,
        ),
    ] {
        let increase = series(&after, series_name) - series(&before, series_name);
        assert!(
            increase >= at_least,
            "{series_name} rose by {increase}\n{after}"
        );
    }
    assert!(after.contains("attio_webhooks_ingress_duration_seconds_bucket"));
    assert!(after.contains("attio_webhooks_journal_backlog"));
    assert!(after.contains("attio_webhooks_journal_oldest_pending_age_seconds"));
}

#[tokio::test]
async fn an_admin_listener_takes_metrics_off_the_public_port() {
    let app = TestApp::builder()
        .toml("[admin]\nlisten = \"127.0.0.1:0\"")
        .spawn()
        .await;
    let admin = app.admin_addr.expect("admin listener bound");
    let public = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    let metrics = app
        .client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("# TYPE"));
    let ready = app
        .client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_stalled_log_pipe_does_not_stall_ingress() {
    const DELIVERIES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {:?}\n\
             [log]\nlevel = \"debug\"\nqueue_lines = 50\n\
             [sinks.file]\nkind = \"jsonl\"\npath = {:?}\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"file\"]\n",
            dir.path().join("data").display().to_string(),
            sink.display().to_string(),
        ),
    )
    .unwrap();
    // Standard error is a pipe that nobody reads: once its buffer (64 KiB on Linux) is full, a
    // write to it blocks. Debug logs fill it within the first hundred deliveries.
    let (mut daemon, _unread) =
        Daemon::start_with_stderr_pipe(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    send_distinct_to(
        &client,
        &daemon.url("/webhooks/attio"),
        "stalled-log",
        DELIVERIES,
    )
    .await;
    let lines = wait_for_jsonl(&sink, DELIVERIES, Duration::from_secs(30)).await;
    assert_eq!(lines.len(), DELIVERIES, "every event reaches the sink");
    let metrics = metrics_text(&client, &daemon.url("/metrics")).await;
    let dropped = series(&metrics, "attio_webhooks_log_lines_dropped_total");
    assert!(
        dropped > 0.0,
        "the lines that did not fit are counted\n{metrics}"
    );
}
