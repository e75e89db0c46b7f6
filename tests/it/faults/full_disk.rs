//! Full disks (issue 12), with the real binary on a small tmpfs (skipped, saying so, where
//! mounting is not allowed):
//! - the journal's disk fills up while sinks are taking events: before, each pending event went
//!   to the sink again on every journal scan (380 lines became 680 in 15 s); now no sink gets an
//!   event twice, the worker pauses with one outage in the log, `/readyz` says not ready, and
//!   everything flows once space is back;
//! - a jsonl sink's disk fills up in the middle of a line: before, the retried line was appended
//!   straight after the fragment (one invalid line, an acknowledged event lost to readers); now
//!   the failed write is cut off and every delivered event is one whole line.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{env_usize, read_sink, tally, wait_for_all, Tmpfs};
use crate::helpers::{post_signed_to, record_updated_body, send_distinct_to, Daemon, SECRET};

fn log_lines(daemon: &Daemon) -> Vec<Value> {
    daemon
        .stderr()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn count_logged(lines: &[Value], message: &str) -> usize {
    lines.iter().filter(|l| l["message"] == message).count()
}

/// The real binary with JSON logs at info level, and `settings` appended.
fn start(dir: &std::path::Path, storage: &std::path::Path, settings: &str) -> Daemon {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {:?}\n\
             [worker]\nconcurrency = 4\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\npoll_interval = \"100ms\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n{settings}",
            storage.display().to_string(),
        ),
    )
    .unwrap();
    Daemon::start(dir, &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)])
}

async fn readiness(client: &reqwest::Client, daemon: &Daemon) -> (u16, Value) {
    let response = client.get(daemon.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_disk_sends_no_event_twice_and_the_worker_resumes_when_space_is_back() {
    let events = env_usize("FAULTS_FULL_DISK_EVENTS", 20);
    let full_for = super::env_duration("FAULTS_FULL_DISK_FOR", Duration::from_secs(3));
    let Some(disk) = Tmpfs::mount("2m", "full_journal_disk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink.jsonl");
    let go = dir.path().join("go");
    // The sink refuses events until `go` exists; the first one it then takes fills the journal's
    // disk, so every event taken from then on is one the journal cannot mark done.
    let script = format!(
        "[ -e '{go}' ] || exit 1; \
         if mkdir '{filling}' 2>/dev/null; then dd if=/dev/zero of='{filler}' bs=4096 2>/dev/null; touch '{filled}'; fi; \
         cat >> '{sink}'",
        go = go.display(),
        filling = dir.path().join("filling").display(),
        filled = dir.path().join("filled").display(),
        filler = disk.path.join("filler").display(),
        sink = sink.display(),
    );
    let mut daemon = start(
        dir.path(),
        &disk.path.join("data"),
        &format!(
            "[sinks.script]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\nattempts = 1000\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"script\"]\n"
        ),
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let url = daemon.url("/webhooks/attio");
    send_distinct_to(&client, &url, "fulljournal", events).await;
    let mut acknowledged: BTreeSet<usize> = (0..events).collect();

    std::fs::write(&go, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.path().join("filled").exists() {
        assert!(Instant::now() < deadline, "the sink never took an event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Full: many journal scans (every 100 ms) go by. The daemon says it is not ready meanwhile.
    // A delivery is refused unless it happens to fit in the space the journal's files already
    // hold (SQLite reuses what a failed commit left), which is why readiness does not rely on
    // such a small write.
    let full_until = Instant::now() + full_for;
    let mut ready_while_full = Vec::new();
    let mut refused = 0;
    let late = format!("fulljournal-{events}");
    while Instant::now() < full_until {
        let response = post_signed_to(&client, &url, &record_updated_body(events), Some(&late))
            .await
            .unwrap();
        match response.status().as_u16() {
            503 => refused += 1,
            200 => {
                acknowledged.insert(events);
            }
            status => panic!("a delivery was answered {status}"),
        }
        let (status, body) = readiness(&client, &daemon).await;
        if status == 200 {
            ready_while_full.push(body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let while_full = tally(&read_sink(&sink).lines, &acknowledged, "fulljournal");

    disk.free();
    let (after, file) =
        wait_for_all(&sink, &acknowledged, "fulljournal", Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let backlog = loop {
        let (status, body) = readiness(&client, &daemon).await;
        if status == 200 && body["checks"]["backlog"] == 0 {
            break 0;
        }
        if Instant::now() > deadline {
            break body["checks"]["backlog"].as_u64().unwrap_or(u64::MAX);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logs = log_lines(&daemon);
    let outages = count_logged(&logs, "journal unavailable");
    let recoveries = count_logged(&logs, "journal available again");
    println!(
        "FAULTS full_journal_disk events={events} acknowledged={} full_for={full_for:?} \
         lines_in_sink_while_full={} lines_in_sink={} duplicates={} missing={} torn={} \
         deliveries_refused_while_full={refused} ready_while_full={} backlog_after={backlog} \
         journal_outages_logged={outages}",
        acknowledged.len(),
        while_full.in_sink + while_full.repeats,
        file.lines.len(),
        after.repeats,
        after.missing.len(),
        file.torn.len(),
        ready_while_full.len(),
    );
    assert!(
        while_full.in_sink > 0,
        "the sink took events before the disk filled"
    );
    assert_eq!(
        while_full.repeats, 0,
        "no event went to the sink twice while the journal was full"
    );
    assert!(
        ready_while_full.is_empty(),
        "/readyz said ready while the journal could not write: {ready_while_full:?}"
    );
    assert!(after.missing.is_empty(), "missing: {:?}", after.missing);
    assert_eq!(after.repeats, 0, "no event went to the sink twice");
    assert!(after.unexpected.is_empty() && after.wrong_id.is_empty());
    assert_eq!(backlog, 0, "the backlog drained once space was back");
    assert_eq!(outages, 1, "one outage of the journal in the log");
    assert_eq!(recoveries, 1, "and its end");
    drop(daemon);
}

/// A line of about 6 KB: the event carries a long text Attio may well send (a note's content).
fn large_body(n: usize) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&record_updated_body(n)).unwrap();
    body["events"][0]["padding"] = Value::String("x".repeat(6000));
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sink_disk_leaves_every_delivered_event_one_whole_line() {
    let events = env_usize("FAULTS_FULL_SINK_EVENTS", 10);
    let full_for = super::env_duration("FAULTS_FULL_DISK_FOR", Duration::from_secs(3));
    let Some(disk) = Tmpfs::mount("1m", "full_sink_disk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = disk.path.join("events.jsonl");
    let mut daemon = start(
        dir.path(),
        &dir.path().join("data"),
        &format!(
            "[sinks.file]\nkind = \"jsonl\"\npath = {:?}\nattempts = 1000\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"file\"]\n",
            sink.display().to_string()
        ),
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let url = daemon.url("/webhooks/attio");
    // One small line, so the file ends inside a page: the next large line fills that page's
    // rest and is then cut short by the full disk.
    send_distinct_to(&client, &url, "fullsink", 1).await;
    super::wait_for_all(
        &sink,
        &BTreeSet::from([0]),
        "fullsink",
        Duration::from_secs(10),
    )
    .await;
    disk.fill();
    for n in 1..=events {
        let response = post_signed_to(
            &client,
            &url,
            &large_body(n),
            Some(&format!("fullsink-{n}")),
        )
        .await
        .unwrap();
        assert_eq!(
            response.status(),
            200,
            "delivery {n}: the journal is elsewhere"
        );
    }
    tokio::time::sleep(full_for).await;
    let while_full = read_sink(&sink);
    disk.free();
    let acknowledged: BTreeSet<usize> = (0..=events).collect();
    let (after, file) =
        wait_for_all(&sink, &acknowledged, "fullsink", Duration::from_secs(30)).await;
    let outages = count_logged(&log_lines(&daemon), "sink file unavailable");
    println!(
        "FAULTS full_sink_disk events={} acknowledged={} full_for={full_for:?} \
         lines_in_sink_while_full={} lines_in_sink={} duplicates={} missing={} torn={} \
         sink_outages_logged={outages}",
        events + 1,
        acknowledged.len(),
        while_full.lines.len() + while_full.torn.len(),
        file.lines.len(),
        after.repeats,
        after.missing.len(),
        file.torn.len(),
    );
    assert_eq!(
        while_full.lines.len(),
        1,
        "nothing else fits while the disk is full"
    );
    let torn: Vec<String> = file
        .torn
        .iter()
        .map(|t| t.chars().take(120).collect())
        .collect();
    assert!(
        torn.is_empty(),
        "torn lines (their first 120 characters): {torn:?}"
    );
    assert!(after.missing.is_empty(), "missing: {:?}", after.missing);
    assert_eq!(after.repeats, 0, "each event is one line");
    assert_eq!(outages, 1, "the full disk is one outage of the sink");
    drop(daemon);
}
