//! Redis claims left by a killed daemon (embedded journal + Redis dedupe): the next life of the
//! same journal takes them over at once instead of waiting out the lease, while a claim made
//! through another journal (another replica) still waits for its lease.

use std::time::{Duration, Instant};

use super::{jsonl_sink, read_sink, sink_path};
use crate::helpers::{
    post_signed_to, record_updated_body, unique_prefix, Daemon, REDIS_URL, SECRET,
};

const EVENTS: usize = 20;

fn config(dir: &std::path::Path, prefix: &str, sinks: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\npath = {:?}\n\
             [worker]\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\npoll_interval = \"100ms\"\n\
             [dedupe]\nclaim_lease = \"10m\"\n\
             [redis]\nurl = \"{REDIS_URL}\"\nkey_prefix = \"{prefix}\"\n{sinks}",
            dir.join("data").display().to_string(),
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn claims_of_a_killed_daemon_are_taken_over_by_its_restart_without_waiting_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let sink = sink_path(dir.path());
    let env = [("ATTIO_WEBHOOK_SECRET", SECRET)];
    // First life: the sink (an HTTP receiver that accepts and never answers) hangs, so every
    // event is claimed in Redis and none is finished.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_addr = receiver.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = receiver.accept().await {
            held.push(connection);
        }
    });
    let hanging = format!(
        "[sinks.file]\nkind = \"http\"\nurl = \"http://{receiver_addr}/hook\"\ntimeout = \"10m\"\n\
         [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"file\"]\n"
    );
    let mut daemon = Daemon::start(dir.path(), &config(dir.path(), &prefix, &hanging), &env);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    for n in 0..EVENTS {
        let response = post_signed_to(
            &client,
            &daemon.url("/webhooks/attio"),
            &record_updated_body(n),
            Some(&format!("take-{n}")),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut redis = crate::helpers::redis().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let claims: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:dedupe:*"))
            .query_async(&mut redis)
            .await
            .unwrap();
        if claims.len() == EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events claimed: {}",
            claims.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill();
    hold.abort();

    // Second life, same journal, a working sink: the 10-minute claims do not hold it up.
    let mut daemon = Daemon::start(
        dir.path(),
        &config(dir.path(), &prefix, &jsonl_sink(&sink)),
        &env,
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        let file = read_sink(&sink);
        if file.lines.len() >= EVENTS || Instant::now() > deadline {
            break file;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        file.lines.len(),
        EVENTS,
        "events claimed by the killed life were processed well before their 10-minute lease\n{}",
        daemon.stderr()
    );
}
