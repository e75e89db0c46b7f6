//! Load generator for the benchmarks: sends distinct, correctly signed Attio deliveries (each
//! with its own `Idempotency-Key` and record id) at a fixed concurrency, and prints requests/s
//! and latency percentiles as one JSON line.
//!
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/webhooks/attio \
//!     --secret S --count 20000 --concurrency 32

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attio_webhooks::signature::sign;

struct Args {
    url: String,
    secret: String,
    count: usize,
    concurrency: usize,
    key_prefix: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:8080/webhooks/attio".to_string(),
        secret: std::env::var("ATTIO_WEBHOOK_SECRET").unwrap_or_default(),
        count: 10_000,
        concurrency: 32,
        key_prefix: format!("load-{}", uuid::Uuid::new_v4().simple()),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--secret" => args.secret = value()?,
            "--count" => args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--concurrency" => {
                args.concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--key-prefix" => args.key_prefix = value()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.secret.is_empty() {
        return Err("--secret or ATTIO_WEBHOOK_SECRET is required".to_string());
    }
    Ok(args)
}

fn body(n: usize) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"webhook_id":"23e42eaf-323a-41da-b5bb-fd67eebda553","events":[{{"event_type":"record.updated","#,
            r#""id":{{"workspace_id":"14beef7a-99f7-4534-a87e-70b564330a4c","object_id":"97052eb9-e65e-443f-a297-f2d9a4a7f795","#,
            r#""record_id":"00000000-0000-4000-8000-{:012}","attribute_id":"41252299-f8c7-4b5e-99c9-4ff8321d2f96"}},"#,
            r#""actor":{{"type":"workspace-member","id":"50cf242c-7fa3-4cad-87d0-75b1af71c57b"}}}}]}}"#
        ),
        n
    )
    .into_bytes()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => Arc::new(args),
        Err(error) => {
            eprintln!("loadgen: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, next) = (client.clone(), args.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut ok, mut failed) = (0usize, 0usize);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.count {
                    break;
                }
                let body = body(n);
                let signature = sign(&args.secret, &body);
                let sent = Instant::now();
                let response = client
                    .post(&args.url)
                    .header("content-type", "application/json")
                    .header("attio-signature", signature)
                    .header("idempotency-key", format!("{}-{n}", args.key_prefix))
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        ok += 1;
                    }
                    _ => failed += 1,
                }
                latencies.push(sent.elapsed().as_micros() as u64);
            }
            (latencies, ok, failed)
        }));
    }
    let mut latencies = Vec::with_capacity(args.count);
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        if let Ok((l, o, f)) = task.await {
            latencies.extend(l);
            ok += o;
            failed += f;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index] as f64 / 1000.0
    };
    println!(
        "{{\"sent\":{},\"ok\":{ok},\"failed\":{failed},\"seconds\":{elapsed:.3},\"rps\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(0.50),
        percentile(0.99)
    );
    if failed > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
