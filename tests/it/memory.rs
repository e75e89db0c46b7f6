//! Memory under a steady load that nobody scrapes (issue 12, item 10): the real binary takes
//! distinct signed deliveries and nothing reads `/metrics`; its anonymous resident memory
//! (`RssAnon` in `/proc/PID/status`: the heap, not the mapped binary or page cache) must stop
//! growing once warmed up.
//!
//! The suite runs a quick version; `scripts/soak.sh` runs it in release with a few hundred
//! thousand deliveries through these variables (docs/testing.md):
//! - `SOAK_DELIVERIES` (default 30000): deliveries sent;
//! - `SOAK_CHECKPOINTS` (default 6): how many times the memory is read along the way;
//! - `SOAK_WORKER` (default `false`): whether the worker processes the events (to a jsonl sink);
//! - `SOAK_GROWTH_KIB` (default 160): the growth allowed over the second half of the run.
//!
//! Before the recorder's upkeep ran on a timer, every delivery kept about 20 bytes (its
//! ingress-duration sample) until the next scrape: 300 KiB over the quick run's second half.
//!
//! It prints one line `SOAK deliveries=N rss_anon_kib=K` per checkpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::faults::env_usize;
use crate::helpers::{post_signed_to, record_updated_body, ConfigToml, Daemon, SECRET};

/// Anonymous resident memory of `pid`, KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status")
}

/// Sends the deliveries `{prefix}-{from}..{to}` from `senders` concurrent clients, each
/// answered 200.
async fn send_range(url: &str, prefix: &str, from: usize, to: usize, senders: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let (next, url, prefix) = (next.clone(), url.to_string(), prefix.to_string());
        tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= to {
                    return;
                }
                let response = post_signed_to(
                    &client,
                    &url,
                    &record_updated_body(n),
                    Some(&format!("{prefix}-{n}")),
                )
                .await
                .unwrap_or_else(|error| panic!("delivery {n} was not answered: {error}"));
                assert_eq!(response.status(), 200, "delivery {n}");
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
}

#[tokio::test]
async fn anonymous_memory_stays_flat_under_load_when_nobody_scrapes_metrics() {
    let deliveries = env_usize("SOAK_DELIVERIES", 30_000);
    let checkpoints = env_usize("SOAK_CHECKPOINTS", 6).max(2);
    let allowed_growth = env_usize("SOAK_GROWTH_KIB", 160) as u64;
    let worker = std::env::var("SOAK_WORKER").is_ok_and(|v| v == "true" || v == "1");
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigToml::new()
        .storage(&dir.path().join("data"))
        .raw(&format!("sync = \"normal\"\n[worker]\nenabled = {worker}"))
        .jsonl_for_all(&dir.path().join("events.jsonl"))
        .write(dir.path());
    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let pid = daemon.child.id();
    let url = daemon.url("/webhooks/attio");

    let step = deliveries.div_ceil(checkpoints);
    let mut curve = Vec::new();
    let mut sent = 0;
    while sent < deliveries {
        let to = (sent + step).min(deliveries);
        send_range(&url, "soak", sent, to, 8).await;
        sent = to;
        let rss = rss_anon_kib(pid);
        println!("SOAK deliveries={sent} rss_anon_kib={rss}");
        curve.push((sent, rss));
    }
    // The first half warms the daemon up: connection pools, SQLite's page cache and the
    // allocator's arenas reach their size. From then on memory must stay flat.
    let (warm_at, warm) = curve[(curve.len() - 1) / 2];
    let highest = curve[(curve.len() - 1) / 2..]
        .iter()
        .map(|(_, rss)| *rss)
        .max()
        .unwrap_or(warm);
    assert!(
        highest <= warm + allowed_growth,
        "anonymous memory grew by {} KiB after the first {warm_at} deliveries (allowed \
         {allowed_growth} KiB): {curve:?}",
        highest - warm,
    );
}
