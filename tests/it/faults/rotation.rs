//! Rotated and deleted jsonl sink files (issue 12), with the real binary. Before, after `mv` or
//! `rm` the lines kept going to the old inode while the log said "event delivered", and SIGHUP
//! ended the process. Now the sink notices within a second or so that its path names another
//! file, or none, and opens the path afresh; SIGHUP makes it do so at once, as logrotate expects.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{read_sink, tally};
use crate::helpers::{post_signed_to, record_updated_body, ConfigToml, Daemon, SECRET};

/// How soon a file sink notices, without a signal, that its path names another file or none:
/// it looks at most every second, before writing.
const NOTICED_WITHIN: Duration = Duration::from_millis(1200);

async fn send(client: &reqwest::Client, daemon: &Daemon, numbers: std::ops::Range<usize>) {
    for n in numbers {
        let response = post_signed_to(
            client,
            &daemon.url("/webhooks/attio"),
            &record_updated_body(n),
            Some(&format!("rotate-{n}")),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200, "delivery {n}");
    }
}

/// The event numbers in the jsonl file at `path`, once it holds `count` lines (or after 10 s),
/// sorted: each event is its own delivery about its own record, and the worker runs them side by
/// side, so their lines may come in any order (docs/sinks.md, "Order": nothing is ordered across
/// deliveries). A number twice stays twice.
async fn numbers_in(path: &Path, count: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = read_sink(path).lines;
        if lines.len() >= count || Instant::now() > deadline {
            let mut numbers: Vec<usize> = lines
                .iter()
                .filter_map(|l| l["id"].as_str())
                .filter_map(|id| id.strip_prefix("rotate-")?.strip_suffix(":0")?.parse().ok())
                .collect();
            numbers.sort_unstable();
            return numbers;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hang_up(daemon: &Daemon) {
    let pid = i32::try_from(daemon.child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("the daemon's pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_or_deleted_jsonl_file_is_reopened_and_sighup_reopens_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let config = ConfigToml::new()
        .storage(&dir.path().join("data"))
        .raw("[worker]\npoll_interval = \"100ms\"\n[log]\nlevel = \"info\"")
        .jsonl_for_all(&sink)
        .write(dir.path());
    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();

    send(&client, &daemon, 0..3).await;
    assert_eq!(numbers_in(&sink, 3).await, [0, 1, 2]);

    // Moved away without a word: the next lines go to a new file at the path.
    std::fs::rename(&sink, dir.path().join("events.jsonl.1")).unwrap();
    tokio::time::sleep(NOTICED_WITHIN).await;
    send(&client, &daemon, 3..6).await;
    assert_eq!(
        numbers_in(&sink, 3).await,
        [3, 4, 5],
        "events after the move reach a new file at the path"
    );

    // Deleted: the same.
    std::fs::remove_file(&sink).unwrap();
    tokio::time::sleep(NOTICED_WITHIN).await;
    send(&client, &daemon, 6..9).await;
    assert_eq!(
        numbers_in(&sink, 3).await,
        [6, 7, 8],
        "events after the deletion reach a new file at the path"
    );

    // logrotate: move, then SIGHUP. The daemon lets go of the old file at once (the new one
    // exists before any event arrives) and keeps running.
    std::fs::rename(&sink, dir.path().join("events.jsonl.2")).unwrap();
    hang_up(&daemon);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sink.exists() {
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "SIGHUP ended the daemon"
        );
        assert!(Instant::now() < deadline, "SIGHUP did not reopen the file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(&client, &daemon, 9..12).await;
    assert_eq!(numbers_in(&sink, 3).await, [9, 10, 11]);

    // Every event exactly once across the files (the deleted one held 3..6).
    let mut lines = read_sink(&dir.path().join("events.jsonl.1")).lines;
    lines.extend(read_sink(&dir.path().join("events.jsonl.2")).lines);
    lines.extend(read_sink(&sink).lines);
    let expected: BTreeSet<usize> = (0..12).filter(|n| !(3..6).contains(n)).collect();
    let counted = tally(&lines, &expected, "rotate");
    assert!(counted.missing.is_empty(), "missing: {:?}", counted.missing);
    assert_eq!(counted.repeats, 0);
    assert_eq!(
        numbers_in(&dir.path().join("events.jsonl.2"), 3).await,
        [6, 7, 8],
        "the rotated file kept what was written before the SIGHUP"
    );
    println!(
        "FAULTS rotation events=12 moved_then_written=3 deleted_then_written=3 \
         sighup_then_written=3 missing={} duplicates={}",
        counted.missing.len(),
        counted.repeats
    );
}
