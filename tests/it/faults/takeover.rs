//! Redis claims left by a killed daemon (embedded journal + Redis dedupe): the next life of the
//! same journal takes them over at once instead of waiting out the lease, while a claim made
//! through another journal (another replica) still waits for its lease.

use std::time::{Duration, Instant};

use attio_webhooks::app::Application;
use attio_webhooks::config::Config;
use attio_webhooks::dedupe::{ClaimOutcome, ClaimOwner, RedisDedupe};

use super::{jsonl_sink, read_sink, sink_path};
use crate::helpers::{send_distinct_to, unique_prefix, ConfigToml, Daemon, REDIS_URL, SECRET};

const EVENTS: usize = 20;

fn config(dir: &std::path::Path, prefix: &str, sinks: &str) -> std::path::PathBuf {
    ConfigToml::new()
        .storage(&dir.join("data"))
        .fast_worker("")
        .raw("[dedupe]\nclaim_lease = \"10m\"\ndone_ttl = \"10m\"")
        .redis(REDIS_URL, prefix)
        .raw(sinks)
        .write(dir)
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
    send_distinct_to(
        &reqwest::Client::new(),
        &daemon.url("/webhooks/attio"),
        "take",
        EVENTS,
    )
    .await;
    // The claims are looked up by name: KEYS or SCAN walk every key of the Redis the tests share,
    // which can hold millions (benchmarks, other test runs) and take longer than a reply may.
    let claim_keys: Vec<String> = (0..EVENTS)
        .map(|n| format!("{prefix}:dedupe:take-{n}:0"))
        .collect();
    let mut redis = crate::helpers::redis().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let claims: usize = redis::cmd("EXISTS")
            .arg(&claim_keys)
            .query_async(&mut redis)
            .await
            .unwrap();
        if claims == EVENTS {
            break;
        }
        assert!(Instant::now() < deadline, "events claimed: {claims}");
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

fn store(prefix: &str, owner: Option<ClaimOwner>) -> RedisDedupe {
    let connection = attio_webhooks::dedupe::redis::connect(&REDIS_URL.to_string().into()).unwrap();
    let store = RedisDedupe::new(
        connection,
        prefix,
        Duration::from_secs(600),
        Duration::from_secs(3600),
    );
    match owner {
        Some(owner) => store.with_owner(owner),
        None => store,
    }
}

#[tokio::test]
async fn only_a_claim_left_by_another_run_of_the_same_journal_is_taken_over() {
    let prefix = unique_prefix();
    let first_run = ClaimOwner::new_instance("journal-a");
    let dead = store(&prefix, Some(first_run.clone()));
    let ClaimOutcome::Fresh(dead_token) = dead.claim("e:0").await.unwrap() else {
        panic!("the first claim is fresh");
    };

    // The same process asking again: its own claim is in progress, not taken over.
    assert_eq!(dead.claim("e:0").await.unwrap(), ClaimOutcome::InProgress);
    // Another replica (another journal), or a store that names no journal: they wait.
    let replica = store(&prefix, Some(ClaimOwner::new_instance("journal-b")));
    assert_eq!(
        replica.claim("e:0").await.unwrap(),
        ClaimOutcome::InProgress
    );
    assert_eq!(
        store(&prefix, None).claim("e:0").await.unwrap(),
        ClaimOutcome::InProgress
    );

    // The next run of journal-a takes it over; then its claim holds against everyone else.
    let next_run = store(&prefix, Some(ClaimOwner::new_instance("journal-a")));
    let ClaimOutcome::Fresh(token) = next_run.claim("e:0").await.unwrap() else {
        panic!("the next run of the same journal takes the claim over");
    };
    assert_eq!(
        replica.claim("e:0").await.unwrap(),
        ClaimOutcome::InProgress
    );
    assert_eq!(
        next_run.claim("e:0").await.unwrap(),
        ClaimOutcome::InProgress
    );
    // The dead run's token no longer releases anything.
    dead.release("e:0", &dead_token).await.unwrap();
    assert_eq!(
        replica.claim("e:0").await.unwrap(),
        ClaimOutcome::InProgress
    );
    next_run.release("e:0", &token).await.unwrap();
    assert!(matches!(
        replica.claim("e:0").await.unwrap(),
        ClaimOutcome::Fresh(_)
    ));

    // Done is done, for every owner.
    replica.mark_done("e:0").await.unwrap();
    let later_run = store(&prefix, Some(ClaimOwner::new_instance("journal-a")));
    assert_eq!(
        later_run.claim("e:0").await.unwrap(),
        ClaimOutcome::Duplicate
    );
}

#[tokio::test]
async fn a_second_daemon_on_the_same_journal_is_refused_while_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[webhook]\nsecrets = [\"{SECRET}\"]\n\
             [storage]\npath = {:?}\n",
            dir.path().join("data").display().to_string()
        );
        Config::from_toml_layers("test", &[&toml]).unwrap()
    };
    let first = Application::build(settings())
        .await
        .expect("the first daemon starts");
    let refused = Application::build(settings())
        .await
        .err()
        .expect("the second is refused");
    assert!(
        refused
            .to_string()
            .contains("in use by another attio-webhooks daemon"),
        "{refused}"
    );
    drop(first);
    Application::build(settings())
        .await
        .expect("the journal is free again once the first is gone");
}
