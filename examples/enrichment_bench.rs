//! Enrichment benchmark (run on demand, not a test):
//!
//! ```text
//! cargo run --example enrichment_bench -- [--events 2000] [--records 200] [--latency-ms 20]
//!     [--rate 100] [--concurrency 512] [--window 300ms] [--order interleaved|grouped]
//! ```
//!
//! `interleaved` queues event n for record n % records (edits spread over time: the hardest case
//! for coalescing); `grouped` queues each record's events one after the other (one edit in Attio
//! yields one `record.updated` per changed attribute, sent together).
//!
//! A fake Attio on 127.0.0.1:0 answers every request after `--latency-ms`. The daemon first runs
//! with its worker off and accepts `--events` signed `record.updated` deliveries spread over
//! `--records` records (so they queue in the journal), then restarts with the worker on and
//! drains them through enrichment into a jsonl sink. Printed: Attio requests per wall-clock
//! second (the limiter must hold `--rate` and should come close to it), record fetches versus
//! events (coalescing), and the drain time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use attio_webhooks::app::Application;
use attio_webhooks::config::Config;
use attio_webhooks::signature::sign;
use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret";
const OBJECT: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
const ATTRIBUTE: &str = "41252299-f8c7-4b5e-99c9-4ff8321d2f96";

struct Options {
    events: usize,
    records: usize,
    latency: Duration,
    rate: u32,
    concurrency: usize,
    window: String,
    grouped: bool,
}

fn options() -> Options {
    let mut options = Options {
        events: 2000,
        records: 200,
        latency: Duration::from_millis(20),
        rate: 100,
        concurrency: 512,
        window: "300ms".to_string(),
        grouped: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{}: number", pair[0]))
        };
        match pair[0].as_str() {
            "--events" => options.events = number() as usize,
            "--records" => options.records = number() as usize,
            "--latency-ms" => options.latency = Duration::from_millis(number()),
            "--rate" => options.rate = number() as u32,
            "--concurrency" => options.concurrency = number() as usize,
            "--window" => options.window = value.clone(),
            "--order" => options.grouped = value == "grouped",
            other => panic!("unknown option {other}"),
        }
    }
    options
}

#[derive(Default)]
struct Fake {
    latency: Duration,
    /// Arrival time and whether it was a record fetch.
    seen: Mutex<Vec<(SystemTime, Instant, bool)>>,
}

async fn answer(State(fake): State<Arc<Fake>>, request: Request<Body>) -> Response {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_record = segments.len() == 5 && segments[3] == "records";
    fake.seen
        .lock()
        .unwrap()
        .push((SystemTime::now(), Instant::now(), is_record));
    tokio::time::sleep(fake.latency).await;
    let ws = "14beef7a-99f7-4534-a87e-70b564330a4c";
    let data = match segments.as_slice() {
        ["v2", "objects", object] => {
            json!({"id": {"workspace_id": ws, "object_id": object}, "api_slug": "deals"})
        }
        ["v2", "objects", object, "attributes", attribute] => json!({
            "id": {"workspace_id": ws, "object_id": object, "attribute_id": attribute},
            "api_slug": "stage", "title": "Stage", "type": "status"
        }),
        ["v2", "objects", object, "records", record] => json!({
            "id": {"workspace_id": ws, "object_id": object, "record_id": record},
            "values": {"name": [{"value": format!("Record {record}")}]}
        }),
        _ => return (axum::http::StatusCode::NOT_FOUND, "{}").into_response(),
    };
    (
        [("content-type", "application/json")],
        json!({ "data": data }).to_string(),
    )
        .into_response()
}

async fn start_fake(latency: Duration) -> (SocketAddr, Arc<Fake>) {
    let fake = Arc::new(Fake {
        latency,
        ..Fake::default()
    });
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, fake)
}

fn settings(dir: &Path, attio: SocketAddr, options: &Options, worker: bool) -> Config {
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [webhook]\nsecrets = [\"{SECRET}\"]\n\
         [storage]\npath = {:?}\n\
         [worker]\nenabled = {worker}\nconcurrency = {}\npoll_interval = \"100ms\"\n\
         [attio]\nbase_url = \"http://{attio}\"\napi_key = \"bench-key\"\nread_rate = {}\n\
         [enrichment]\ncoalesce_window = \"{}\"\n\
         [sinks.file]\nkind = \"jsonl\"\npath = {:?}\n\
         [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"file\"]\n",
        dir.join("data").display().to_string(),
        options.concurrency,
        options.rate,
        options.window,
        dir.join("events.jsonl").display().to_string(),
    );
    Config::from_toml("test", &toml).expect("bench settings")
}

fn body(n: usize, options: &Options) -> Vec<u8> {
    let per_record = options.events.div_ceil(options.records).max(1);
    let record = if options.grouped {
        n / per_record
    } else {
        n % options.records
    };
    serde_json::to_vec(&json!({
        "webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553",
        "events": [{
            "event_type": "record.updated",
            "id": {
                "workspace_id": "14beef7a-99f7-4534-a87e-70b564330a4c",
                "object_id": OBJECT,
                "record_id": format!("00000000-0000-4000-8000-{record:012}"),
                "attribute_id": ATTRIBUTE
            },
            "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
        }]
    }))
    .unwrap()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let options = options();
    let dir = tempfile::tempdir().unwrap();
    let (attio, fake) = start_fake(options.latency).await;

    // 1. Queue the events: the daemon journals them with its worker off.
    let app = Application::build(settings(dir.path(), attio, &options, false))
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}/webhooks/attio", app.port());
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));
    let client = reqwest::Client::new();
    let queued = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    for n in 0..options.events {
        let (client, url, limit) = (client.clone(), url.clone(), limit.clone());
        let body = body(n, &options);
        posts.spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let response = client
                .post(&url)
                .header("attio-signature", sign(SECRET, &body))
                .header("idempotency-key", format!("bench-{n}"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
        });
    }
    while let Some(done) = posts.join_next().await {
        done.unwrap();
    }
    println!(
        "queued {} events over {} records in {:.1?}",
        options.events,
        options.records,
        queued.elapsed()
    );
    stop.cancel();
    running.await.unwrap().unwrap();

    // 2. Drain them with enrichment on.
    let app = Application::build(settings(dir.path(), attio, &options, true))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(app.run(stop.clone()));
    let sink = dir.path().join("events.jsonl");
    while lines(&sink) < options.events {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed();
    stop.cancel();
    running.await.unwrap().unwrap();

    let seen = fake.seen.lock().unwrap().clone();
    let fetches = seen.iter().filter(|(_, _, record)| *record).count();
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for (at, _, _) in &seen {
        let second = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        *per_second.entry(second).or_default() += 1;
    }
    let mut instants: Vec<Instant> = seen.iter().map(|(_, i, _)| *i).collect();
    instants.sort();
    // The rate while fetching: record fetches over the time from the first to the last one.
    let mut fetch_times: Vec<Instant> = seen
        .iter()
        .filter(|(_, _, record)| *record)
        .map(|(_, i, _)| *i)
        .collect();
    fetch_times.sort();
    let fetch_rate = match (fetch_times.first(), fetch_times.last()) {
        (Some(first), Some(last)) if last > first => {
            (fetch_times.len() - 1) as f64 / last.duration_since(*first).as_secs_f64()
        }
        _ => 0.0,
    };
    let busiest_window = (0..instants.len())
        .map(|i| {
            instants[i..]
                .iter()
                .take_while(|t| t.duration_since(instants[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let counts: Vec<usize> = per_second.values().copied().collect();
    // Whole seconds only: the first and last are partly idle.
    let inner = if counts.len() > 2 {
        &counts[1..counts.len() - 1]
    } else {
        &counts[..]
    };
    let active = instants
        .last()
        .zip(instants.first())
        .map(|(last, first)| last.duration_since(*first))
        .unwrap_or_default();
    let sustained = if inner.is_empty() {
        0.0
    } else {
        inner.iter().sum::<usize>() as f64 / inner.len() as f64
    };
    println!(
        "drained {} events in {:.2?} ({:.0} events/s), worker concurrency {}, window {}, order {}",
        options.events,
        drained,
        options.events as f64 / drained.as_secs_f64(),
        options.concurrency,
        options.window,
        if options.grouped {
            "grouped"
        } else {
            "interleaved"
        }
    );
    println!(
        "Attio requests: {} ({} record fetches for {} events = {:.1}%; {} schema look-ups)",
        seen.len(),
        fetches,
        options.events,
        100.0 * fetches as f64 / options.events as f64,
        seen.len() - fetches
    );
    println!("requests per wall-clock second: {counts:?}");
    println!(
        "while fetching: {:.1} req/s = {:.1}% of the {} req/s limit (first to last record fetch)",
        fetch_rate,
        100.0 * fetch_rate / options.rate as f64,
        options.rate
    );
    println!(
        "sustained (whole seconds): {:.1} req/s = {:.1}% of the {} req/s limit; busiest 1 s window {}; \
         first to last request {:.2?}",
        sustained,
        100.0 * sustained / options.rate as f64,
        options.rate,
        busiest_window,
        active
    );
    let within = busiest_window <= options.rate as usize + 1;
    println!(
        "limit held: {} (at most {} + 1 for arrival jitter in any 1 s window)",
        if within { "yes" } else { "NO" },
        options.rate
    );
}
