//! Throughput of the scale-out mode on this machine: N replicas of the release binary on one
//! Redis queue, fed many concurrent signed deliveries round-robin.
//!
//! ```text
//! cargo build --release --bin attio-webhooks
//! cargo run --release --example scale_out_bench -- --replicas 1
//! cargo run --release --example scale_out_bench -- --replicas 2 --appendfsync everysec
//! cargo run --release --example scale_out_bench -- --backend embedded   # the one-daemon baseline
//! ```
//!
//! It starts its own redis-server (AOF with the chosen fsync policy, in a temporary directory) on
//! a free loopback port, so figures do not depend on how the shared Redis is configured. Reported:
//! ingress throughput (deliveries acknowledged per second, each stored in Redis first) and
//! end-to-end throughput (until every event was written by a jsonl sink). Not a test: it asserts
//! nothing about speed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

const SECRET: &str = "bench-secret-0123456789";

#[derive(Debug, Parser)]
struct Args {
    /// Daemon replicas sharing the queue.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Deliveries to send (one event each).
    #[arg(long, default_value_t = 20_000)]
    deliveries: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Redis AOF fsync policy: always, everysec, or off (no AOF).
    #[arg(long, default_value = "always")]
    appendfsync: String,
    /// Queue backend: redis, or embedded (one replica, SQLite) as the baseline.
    #[arg(long, default_value = "redis")]
    backend: String,
    /// The daemon binary.
    #[arg(long, default_value = "target/release/attio-webhooks")]
    binary: PathBuf,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn body(n: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553",
        "events": [{
            "event_type": "record.updated",
            "id": {
                "workspace_id": "14beef7a-99f7-4534-a87e-70b564330a4c",
                "object_id": "97052eb9-e65e-443f-a297-f2d9a4a7f795",
                "record_id": format!("00000000-0000-4000-8000-{n:012}"),
                "attribute_id": "41252299-f8c7-4b5e-99c9-4ff8321d2f96"
            },
            "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
        }]
    }))
    .unwrap_or_default()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
        .unwrap_or(0)
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            eprintln!("gave up waiting for {what}");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !args.binary.is_file() {
        return Err(format!(
            "{} not found: run `cargo build --release --bin attio-webhooks` first",
            args.binary.display()
        )
        .into());
    }
    // Absolute: each replica runs in its own directory.
    let binary = std::fs::canonicalize(&args.binary)?;
    let dir = tempfile::tempdir()?;

    let redis_port = free_port()?;
    let mut redis_command = Command::new("redis-server");
    redis_command
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", ""])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if args.appendfsync != "off" {
        redis_command.args(["--appendonly", "yes", "--appendfsync", &args.appendfsync]);
    }
    let _redis = Killed(redis_command.spawn()?);
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;

    let mut replicas = Vec::new();
    let mut sinks = Vec::new();
    let mut urls = Vec::new();
    let replicas_wanted = if args.backend == "embedded" {
        1
    } else {
        args.replicas
    };
    for r in 0..replicas_wanted {
        let home = dir.path().join(format!("replica-{r}"));
        std::fs::create_dir_all(&home)?;
        let sink = home.join("events.jsonl");
        let config = format!(
            "[queue]\nbackend = {:?}\n[redis]\nurl = {redis_url:?}\nkey_prefix = \"bench\"\n\
             [storage]\npath = {:?}\n[dedupe]\ndone_ttl = \"10m\"\n[log]\nlevel = \"warn\"\n\
             [sinks.file]\nkind = \"jsonl\"\npath = {:?}\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"file\"]\n",
            args.backend,
            home.join("data").display().to_string(),
            sink.display().to_string()
        );
        let config_path = home.join("config.toml");
        std::fs::write(&config_path, config)?;
        let port = free_port()?;
        let child = Command::new(&binary)
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(&home)
            .env("APP_ENV", "production")
            .env("ATTIO_WEBHOOK_SECRET", SECRET)
            // Production serves the events API only with an admin token.
            .env("ATTIO_WEBHOOKS_ADMIN_TOKEN", "scale-out-bench-admin-token")
            .env("APP_CONFIG_DIR", home.join("no-config-dir"))
            .env_remove("REDIS_URL")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join("daemon.log"))?)
            .spawn()?;
        replicas.push(Killed(child));
        sinks.push(sink);
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    for url in &urls {
        let ready = format!("{url}/readyz");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = client.get(&ready).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{url} did not become ready").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Bodies and signatures are made before the clock starts.
    let requests: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
        (0..args.deliveries)
            .map(|n| {
                let body = body(n);
                let signature = attio_webhooks::signature::sign(SECRET, &body);
                (body, signature)
            })
            .collect(),
    );
    let urls = Arc::new(urls);
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, requests, urls, next, refused) = (
            client.clone(),
            requests.clone(),
            urls.clone(),
            next.clone(),
            refused.clone(),
        );
        senders.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, signature)) = requests.get(n) else {
                    return;
                };
                // Like Attio: what is not acknowledged is sent again.
                loop {
                    let url = format!("{}/webhooks/attio", urls[n % urls.len()]);
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("attio-signature", signature)
                        .header("idempotency-key", format!("bench-{n}"))
                        .body(body.clone())
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    while senders.join_next().await.is_some() {}
    let ingress = started.elapsed();
    let total = args.deliveries;
    wait_until("every event in the sinks", Duration::from_secs(300), || {
        sinks.iter().map(|s| count_lines(s)).sum::<usize>() >= total
    })
    .await;
    let end_to_end = started.elapsed();
    drop(replicas);

    let per_replica: Vec<usize> = sinks.iter().map(|s| count_lines(s)).collect();
    println!(
        "backend={} replicas={} appendfsync={} deliveries={} concurrency={}",
        args.backend, replicas_wanted, args.appendfsync, total, args.concurrency
    );
    println!(
        "ingress:    {:>8.0} deliveries/s acknowledged ({:.2}s, {} refused and resent)",
        total as f64 / ingress.as_secs_f64(),
        ingress.as_secs_f64(),
        refused.load(Ordering::Relaxed)
    );
    println!(
        "end-to-end: {:>8.0} events/s in the sinks ({:.2}s; per replica {:?})",
        total as f64 / end_to_end.as_secs_f64(),
        end_to_end.as_secs_f64(),
        per_replica
    );
    Ok(())
}
