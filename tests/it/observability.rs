//! Metrics and request ids, as an operator sees them.

use std::time::Duration;

use crate::helpers::{
    record_updated_body, send_distinct_to, wait_for_jsonl, ConfigToml, Daemon, TestApp, SECRET,
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
    // Request ids are given on either listener.
    assert!(!ready.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn a_stalled_log_pipe_does_not_stall_ingress() {
    const DELIVERIES: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let config = ConfigToml::new()
        .storage(&dir.path().join("data"))
        .raw("[log]\nlevel = \"debug\"\nqueue_lines = 50")
        .jsonl_for_all(&sink)
        .write(dir.path());
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

/// A field of `/proc/PID/status`, in its first unit (kB for sizes).
fn proc_status(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn metrics_report_the_process_memory_cpu_file_descriptors_and_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let config = ConfigToml::new()
        .storage(&dir.path().join("data"))
        .jsonl_for_all(&sink)
        .write(dir.path());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let pid = daemon.child.id();
    let client = reqwest::Client::new();
    send_distinct_to(&client, &daemon.url("/webhooks/attio"), "process", 50).await;
    wait_for_jsonl(&sink, 50, Duration::from_secs(20)).await;

    let metrics = metrics_text(&client, &daemon.url("/metrics")).await;
    let resident = series(&metrics, "process_resident_memory_bytes");
    let rss = proc_status(pid, "VmRSS") * 1024.0;
    assert!(
        resident > rss / 2.0 && resident < rss * 2.0,
        "resident memory {resident} bytes, /proc says {rss}\n{metrics}"
    );
    let open_fds = series(&metrics, "process_open_fds");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    assert!(
        (open_fds - fds).abs() <= 5.0,
        "open fds {open_fds}, /proc/{pid}/fd has {fds}\n{metrics}"
    );
    assert!(series(&metrics, "process_max_fds") >= open_fds);
    let start_time = series(&metrics, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start_time >= started - 2.0 && start_time <= now,
        "start time {start_time}, the test started the process at {started}\n{metrics}"
    );
    let cpu = series(&metrics, "process_cpu_seconds_total");
    assert!(
        cpu > 0.0 && cpu < (now - started) * 8.0,
        "CPU seconds {cpu} after {}s\n{metrics}",
        now - started
    );
    assert!(series(&metrics, "process_threads") >= 1.0);
    assert!(metrics.contains("# TYPE process_resident_memory_bytes gauge"));
}

/// A daemon with `APP_ENV=production` and `extra` settings.
async fn production_daemon(dir: &std::path::Path, extra: &str) -> Daemon {
    let config = ConfigToml::new()
        .storage(&dir.join("data"))
        .raw(extra)
        .write(dir);
    let mut daemon = Daemon::start(
        dir,
        &config,
        &[
            ("ATTIO_WEBHOOK_SECRET", SECRET),
            ("APP_ENV", "production"),
            ("ATTIO_WEBHOOKS_ADMIN_TOKEN", "observability-admin-token"),
        ],
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    daemon
}

async fn status_of(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn in_production_metrics_are_served_only_on_the_admin_listener_unless_enabled() {
    let client = reqwest::Client::new();

    let alone = tempfile::tempdir().unwrap();
    let daemon = production_daemon(alone.path(), "").await;
    assert_eq!(status_of(&client, &daemon.url("/metrics")).await, 404);
    assert!(
        daemon.stderr().contains("/metrics is not served"),
        "the start-up log says metrics are served nowhere and how to change it:\n{}",
        daemon.stderr()
    );

    let with_admin = tempfile::tempdir().unwrap();
    let admin_port = crate::helpers::free_port();
    let daemon = production_daemon(
        with_admin.path(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
    )
    .await;
    assert_eq!(status_of(&client, &daemon.url("/metrics")).await, 404);
    let admin_metrics = format!("http://127.0.0.1:{admin_port}/metrics");
    assert_eq!(status_of(&client, &admin_metrics).await, 200);
    assert!(
        daemon.stderr().contains(&admin_metrics),
        "the start-up log says where metrics are:\n{}",
        daemon.stderr()
    );

    let enabled = tempfile::tempdir().unwrap();
    let daemon = production_daemon(enabled.path(), "[server]\nmetrics = true").await;
    assert_eq!(status_of(&client, &daemon.url("/metrics")).await, 200);
    assert!(daemon
        .stderr()
        .contains(&format!("http://127.0.0.1:{}/metrics", daemon.port)));
}
