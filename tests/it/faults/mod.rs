//! Fault tests (issues 6 and 12): the daemon under SIGKILL, a Redis outage, a flaky Attio, a sink
//! that is down, full disks and rotated sink files, plus the regression tests of the bugs these
//! faults uncovered.
//!
//! The suite runs quick versions. `scripts/faults.sh` runs the same tests with the issue's
//! numbers, through these environment variables (docs/testing.md):
//! - `FAULTS_DELIVERIES` (default 2000): deliveries sent during the SIGKILL test;
//! - `FAULTS_KILLS` (default 3): SIGKILLs during that load;
//! - `FAULTS_REDIS_PAUSE` (default `4s`): how long Redis stays stopped;
//! - `FAULTS_ATTIO_EVENTS` (default 60): events enriched through the flaky fake Attio;
//! - `FAULTS_SLOW_CLIENTS` (default 200), `FAULTS_OPEN_FILES` (default 128), `FAULTS_SLOW_HOLD`
//!   (default `8s`): slow clients held open against a daemon with that open-files limit, and for
//!   how long.
//! - `FAULTS_FULL_DISK_EVENTS` (default 20), `FAULTS_FULL_SINK_EVENTS` (default 10): events
//!   waiting while the journal's or the sink's disk is full;
//! - `FAULTS_FULL_DISK_FOR` (default `3s`): how long the disk stays full.
//!
//! Each scenario prints one line `FAULTS <scenario> key=value ...` with its figures, which the
//! script collects.

mod flaky_attio;
mod full_disk;
mod journal_scan;
mod outage_logs;
mod redis_outage;
mod rotation;
mod sigkill;
mod sink_down;
mod slow_clients;
mod takeover;
mod torn_line;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::helpers::jsonl_sink;
use crate::helpers::{post_signed_to, record_updated_body};

/// A number from the environment (the long versions), or the quick default.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

/// A duration from the environment (`20s`, `500ms`), or the quick default.
pub fn env_duration(name: &str, default: Duration) -> Duration {
    match std::env::var(name) {
        Ok(value) => humantime::parse_duration(&value)
            .unwrap_or_else(|e| panic!("{name}={value:?} is not a duration: {e}")),
        Err(_) => default,
    }
}

/// What a jsonl sink file holds. A process killed in the middle of a write can leave a torn last
/// line; the daemon then starts the next line on a line of its own, so a torn line is one that
/// is not JSON. A last line without its newline is still being written and is not counted.
#[derive(Debug, Default)]
pub struct SinkFile {
    pub lines: Vec<Value>,
    pub torn: Vec<String>,
}

pub fn read_sink(path: &Path) -> SinkFile {
    let Ok(bytes) = std::fs::read(path) else {
        return SinkFile::default();
    };
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(last) => &bytes[..=last],
        None => &[][..],
    };
    let mut file = SinkFile::default();
    for line in complete.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(value) => file.lines.push(value),
            Err(_) => file.torn.push(String::from_utf8_lossy(line).into_owned()),
        }
    }
    file
}

/// How the sink's lines compare with what was acknowledged.
#[derive(Debug)]
pub struct Tally {
    pub acknowledged: usize,
    /// Distinct acknowledged event ids found in the sink.
    pub in_sink: usize,
    pub missing: Vec<String>,
    /// Lines beyond the first copy of an id.
    pub repeats: usize,
    /// Ids in the sink that were never acknowledged (must not happen).
    pub unexpected: Vec<String>,
    /// Lines whose id is not the one of the delivery their event came in (must not happen): a
    /// repeat must carry the same event id as its first copy.
    pub wrong_id: Vec<String>,
}

/// Compares the lines with the acknowledged deliveries `{prefix}-{n}` (one event each, index
/// 0, the body of [`record_updated_body`]`(n)`).
pub fn tally(lines: &[Value], acknowledged: &BTreeSet<usize>, prefix: &str) -> Tally {
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong_id = Vec::new();
    for line in lines {
        let id = line["id"].as_str().unwrap_or_default().to_string();
        // The record id carries the delivery number: 00000000-0000-4000-8000-{n:012}.
        let record = line["event"]["id"]["record_id"]
            .as_str()
            .unwrap_or_default();
        let n: Option<usize> = record.rsplit('-').next().and_then(|n| n.parse().ok());
        if n.map(|n| format!("{prefix}-{n}:0")) != Some(id.clone()) {
            wrong_id.push(id.clone());
        }
        *copies.entry(id).or_default() += 1;
    }
    let expected: BTreeSet<String> = acknowledged
        .iter()
        .map(|n| format!("{prefix}-{n}:0"))
        .collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|id| !copies.contains_key(*id))
        .cloned()
        .collect();
    let unexpected: Vec<String> = copies
        .keys()
        .filter(|id| !expected.contains(*id))
        .cloned()
        .collect();
    Tally {
        acknowledged: expected.len(),
        in_sink: copies.keys().filter(|id| expected.contains(*id)).count(),
        missing,
        repeats: copies.values().map(|c| c - 1).sum(),
        unexpected,
        wrong_id,
    }
}

/// Waits until every acknowledged event is in the sink (or `timeout`), then tallies.
pub async fn wait_for_all(
    path: &Path,
    acknowledged: &BTreeSet<usize>,
    prefix: &str,
    timeout: Duration,
) -> (Tally, SinkFile) {
    let deadline = Instant::now() + timeout;
    loop {
        let file = read_sink(path);
        let tally = tally(&file.lines, acknowledged, prefix);
        if tally.missing.is_empty() || Instant::now() > deadline {
            return (tally, file);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One answer the load generator saw.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Which delivery (shown when an assertion prints answers).
    #[allow(dead_code)]
    pub n: usize,
    pub sent: Instant,
    pub answered: Instant,
    /// HTTP status, or `None` when the request failed (connection refused or reset).
    pub status: Option<u16>,
}

#[derive(Default)]
struct LoadState {
    next: AtomicUsize,
    stop: AtomicBool,
    /// Deliveries sent and not yet answered, right now.
    in_flight: Mutex<HashSet<usize>>,
    acknowledged: Mutex<BTreeSet<usize>>,
    answers: Mutex<Vec<Answer>>,
}

/// Attio as a load: `senders` concurrent clients post the deliveries `{prefix}-0..count`
/// (distinct, signed), each until it is answered 200, as Attio retries an unacknowledged
/// delivery. Optionally paced to about `per_second` new deliveries per second.
pub struct Load {
    state: Arc<LoadState>,
    tasks: tokio::task::JoinSet<()>,
    pub count: usize,
}

impl Load {
    pub fn start(url: String, prefix: &str, count: usize, senders: usize) -> Load {
        Self::start_paced(url, prefix, count, senders, None)
    }

    pub fn start_paced(
        url: String,
        prefix: &str,
        count: usize,
        senders: usize,
        per_second: Option<u32>,
    ) -> Load {
        let state = Arc::new(LoadState::default());
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..senders {
            let (state, url, prefix) = (state.clone(), url.clone(), prefix.to_string());
            tasks.spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                loop {
                    let n = state.next.fetch_add(1, Ordering::SeqCst);
                    if n >= count {
                        return;
                    }
                    if let Some(rate) = per_second {
                        let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let body = record_updated_body(n);
                    let key = format!("{prefix}-{n}");
                    loop {
                        if state.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        state.in_flight.lock().unwrap().insert(n);
                        let sent = Instant::now();
                        let result = post_signed_to(&client, &url, &body, Some(&key)).await;
                        let status = result.as_ref().ok().map(|r| r.status().as_u16());
                        state.in_flight.lock().unwrap().remove(&n);
                        state.answers.lock().unwrap().push(Answer {
                            n,
                            sent,
                            answered: Instant::now(),
                            status,
                        });
                        if status == Some(200) {
                            state.acknowledged.lock().unwrap().insert(n);
                            break;
                        }
                        // Not acknowledged: send it again a little later, as Attio would.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
            });
        }
        Load {
            state,
            tasks,
            count,
        }
    }

    pub fn acknowledged_count(&self) -> usize {
        self.state.acknowledged.lock().unwrap().len()
    }

    pub fn acknowledged(&self) -> BTreeSet<usize> {
        self.state.acknowledged.lock().unwrap().clone()
    }

    /// Deliveries sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.lock().unwrap().len()
    }

    pub fn answers(&self) -> Vec<Answer> {
        self.state.answers.lock().unwrap().clone()
    }

    pub async fn wait_for_acknowledged(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acknowledged_count() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} deliveries acknowledged after {timeout:?}",
                self.acknowledged_count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every delivery was acknowledged (or `timeout`), then stops the senders.
    pub async fn finish(mut self, timeout: Duration) -> (BTreeSet<usize>, Vec<Answer>) {
        let all = tokio::time::timeout(timeout, async {
            while let Some(result) = self.tasks.join_next().await {
                result.unwrap();
            }
        })
        .await;
        self.state.stop.store(true, Ordering::SeqCst);
        self.tasks.shutdown().await;
        let acknowledged = self.acknowledged();
        assert!(
            all.is_ok(),
            "only {} of {} deliveries acknowledged after {timeout:?}",
            acknowledged.len(),
            self.count
        );
        (acknowledged, self.answers())
    }
}

/// The largest number of `instants` within any one-second window (`[t, t + 1s)`).
pub fn busiest_second(instants: &[Instant]) -> usize {
    let mut sorted = instants.to_vec();
    sorted.sort();
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    busiest
}

pub fn sink_path(dir: &Path) -> PathBuf {
    dir.join("events.jsonl")
}

/// A small tmpfs, mounted for a full-disk test and unmounted when dropped, also when the test
/// fails. Mounting needs root (CI runs as root).
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, such as `2m`), or says why the test is skipped
    /// and returns `None` when this machine does not allow it.
    pub fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs {
                path: dir.path().to_path_buf(),
                _dir: dir,
            }),
            Ok(output) => {
                println!(
                    "SKIPPED {test}: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                println!("SKIPPED {test}: cannot run mount: {error}");
                None
            }
        }
    }

    /// Fills the filesystem to its last byte with a file `filler`, which [`Tmpfs::free`] removes.
    pub fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while filler.write_all(&chunk).is_ok() {}
        while filler.write_all(&chunk[..1]).is_ok() {}
    }

    /// Gives back what [`Tmpfs::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding a file open there must not keep the mount behind.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
