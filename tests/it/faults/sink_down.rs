//! An HTTP sink that is down for a while: first nothing listens (connection refused), then a
//! server on the same port answers 503, then it recovers. Events wait and are retried, nothing is
//! dead-lettered before its attempts are spent, and then everything flows, once. An event whose
//! sink never recovers is dead-lettered after exactly its attempts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attio_webhooks::journal::{Backend, SqliteJournal};
use axum::http::{HeaderMap, StatusCode};

use super::Load;
use crate::helpers::{free_port, TestApp};

const DELIVERIES: usize = 30;

/// The receiver: each request's event id and attempt header, in arrival order.
#[derive(Default)]
struct Receiver {
    requests: Mutex<Vec<(String, u32, u16)>>,
    healthy: AtomicBool,
}

impl Receiver {
    fn answered(&self) -> Vec<(String, u32, u16)> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(addr: SocketAddr, receiver: Arc<Receiver>) {
    let state = receiver.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let state = state.clone();
        async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let status = if state.healthy.load(Ordering::SeqCst) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            state.requests.lock().unwrap().push((
                header("webhook-id"),
                header("attio-webhooks-attempt").parse().unwrap_or(0),
                status.as_u16(),
            ));
            status
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
}

async fn dead_letters(storage: &std::path::Path) -> Vec<attio_webhooks::journal::DeadLetter> {
    let journal = SqliteJournal::open(&storage.join("journal.sqlite3")).unwrap();
    let letters = journal.dead_letters(1000).await.unwrap();
    journal.close().await;
    letters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_a_sink_that_is_down_and_flow_once_it_is_back() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // 20 attempts, backoff from 100 ms up to 500 ms: at least ~4 s of retries per event, more
    // than the 3 s the sink is down.
    let app = TestApp::builder()
        .routes(&format!(
            "[sinks.hook]\nkind = \"http\"\nurl = \"http://{addr}/hook\"\ntimeout = \"2s\"\n\
             attempts = 20\nretry_initial = \"100ms\"\nretry_max = \"500ms\"\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"hook\"]\n"
        ))
        .spawn()
        .await;
    let load = Load::start(app.url("/webhooks/attio"), "down", DELIVERIES, 4);
    let (acknowledged, _) = load.finish(Duration::from_secs(30)).await;

    // Connection refused for 1.5 s, then 503 for 1.5 s, watching for dead letters throughout.
    let receiver = Arc::new(Receiver::default());
    let down_until = Instant::now() + Duration::from_millis(1500);
    let mut dead_while_down = 0;
    while Instant::now() < down_until {
        dead_while_down += dead_letters(&app.storage).await.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serve(addr, receiver.clone()).await;
    let unavailable_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < unavailable_until {
        dead_while_down += dead_letters(&app.storage).await.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.healthy.store(true, Ordering::SeqCst);

    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let delivered: BTreeMap<String, usize> = receiver
            .answered()
            .into_iter()
            .filter(|(_, _, status)| *status == 200)
            .fold(BTreeMap::new(), |mut counts, (id, _, _)| {
                *counts.entry(id).or_default() += 1;
                counts
            });
        if delivered.len() >= DELIVERIES || Instant::now() > deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dead_after = dead_letters(&app.storage).await.len();
    let refused_503 = receiver
        .answered()
        .iter()
        .filter(|(_, _, status)| *status == 503)
        .count();
    println!(
        "FAULTS sink_down deliveries={DELIVERIES} acknowledged={} delivered={} repeats={} \
         answered_503={refused_503} dead_letters_while_down={dead_while_down} dead_letters_after={dead_after}",
        acknowledged.len(),
        delivered.len(),
        delivered.values().map(|c| c - 1).sum::<usize>(),
    );
    assert_eq!(
        dead_while_down, 0,
        "nothing dead-lettered while attempts remain"
    );
    assert!(refused_503 > 0, "the sink answered 503 for a while");
    assert_eq!(
        delivered.len(),
        DELIVERIES,
        "everything flows once the sink is back"
    );
    assert!(
        delivered.values().all(|c| *c == 1),
        "each event delivered once: {delivered:?}"
    );
    assert_eq!(dead_after, 0);
}

#[tokio::test]
async fn an_event_is_dead_lettered_only_after_its_attempts_are_spent() {
    let receiver = Arc::new(Receiver::default());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    serve(addr, receiver.clone()).await;
    let app = TestApp::builder()
        .routes(&format!(
            "[sinks.hook]\nkind = \"http\"\nurl = \"http://{addr}/hook\"\ntimeout = \"2s\"\n\
             attempts = 4\nretry_initial = \"50ms\"\nretry_max = \"100ms\"\n\
             [[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"hook\"]\n"
        ))
        .spawn()
        .await;
    let response = app
        .post_signed(&crate::helpers::record_updated_body(1), Some("doomed"))
        .await;
    assert_eq!(response.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let letters = dead_letters(&app.storage).await;
        if !letters.is_empty() || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Every request the sink saw was made before the dead letter was read.
    let attempts: Vec<u32> = receiver
        .answered()
        .iter()
        .map(|(id, attempt, _)| {
            assert_eq!(id, "doomed:0");
            *attempt
        })
        .collect();
    assert_eq!(letters.len(), 1, "dead-lettered once the attempts ran out");
    assert_eq!(
        attempts,
        [1, 2, 3, 4],
        "exactly the sink's 4 attempts, in order"
    );
    assert_eq!(letters[0].sink_attempts.get("hook"), Some(&4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.answered().len(),
        4,
        "no attempt after the dead letter"
    );
}
