//! The HTTP edge: signatures, limits, bad bodies, status codes. Every refusal must leave nothing
//! stored; every acceptance must reach the sink once.

use std::time::Duration;

use attio_webhooks::journal::Backend;
use attio_webhooks::signature::sign;
use serde_json::Value;

use crate::helpers::{fixture, record_updated_body, TestApp, SECRET};

const WAIT: Duration = Duration::from_secs(10);

/// Gives the worker a moment, then asserts the sink is still empty.
async fn assert_nothing_delivered(app: &TestApp) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.sink_lines().is_empty(), "nothing may reach the sink");
}

#[tokio::test]
async fn signed_sample_delivery_is_accepted_and_reaches_the_sink() {
    let app = TestApp::spawn().await;
    let body = fixture("attio_docs__record.updated_delivery.json");
    let response = app.post_signed(&body, Some("key-1")).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["events"], 1);
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["id"], "key-1:0");
    assert_eq!(line["event_type"], "record.updated");
    assert_eq!(line["webhook_id"], "23e42eaf-323a-41da-b5bb-fd67eebda553");
    assert!(line["received_at"].as_str().unwrap().ends_with('Z'));
    assert!(line["data"].is_null());
    let original: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        line["event"], original["events"][0],
        "event is passed on unchanged"
    );
}

#[tokio::test]
async fn signature_vector_from_attio_facts_is_accepted() {
    #[derive(serde::Deserialize)]
    struct Vector {
        secret: String,
        raw_body: String,
        attio_signature: String,
    }
    let vector: Vector = serde_json::from_slice(&fixture("signature_vector.json")).unwrap();
    // The vector has its own secret: configure it beside the test secret (rotation style).
    let app = TestApp::builder()
        .secrets(&[SECRET, &vector.secret])
        .spawn()
        .await;
    let response = app
        .post_raw(
            vector.raw_body.as_bytes(),
            Some(&vector.attio_signature),
            Some("vector"),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.wait_for_lines(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn legacy_x_attio_signature_header_is_accepted() {
    let app = TestApp::spawn().await;
    let body = record_updated_body(1);
    let response = app
        .client
        .post(app.url("/webhooks/attio"))
        .header("x-attio-signature", sign(SECRET, &body))
        .header("idempotency-key", "legacy")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.wait_for_lines(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn missing_signature_is_401_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let response = app.post_raw(&record_updated_body(1), None, Some("k")).await;
    assert_eq!(response.status(), 401);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "signature_missing");
    assert_nothing_delivered(&app).await;
    // The key was not journaled: a correctly signed retry is accepted, not a duplicate.
    let retry = app.post_signed(&record_updated_body(1), Some("k")).await;
    assert_eq!(retry.json::<Value>().await.unwrap()["status"], "accepted");
}

#[tokio::test]
async fn wrong_signature_is_401() {
    let app = TestApp::spawn().await;
    let body = record_updated_body(1);
    let mut signature = sign(SECRET, &body).into_bytes();
    signature[0] = if signature[0] == b'a' { b'b' } else { b'a' };
    let response = app
        .post_raw(
            &body,
            Some(std::str::from_utf8(&signature).unwrap()),
            Some("k"),
        )
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "signature_invalid"
    );
    assert_nothing_delivered(&app).await;
}

#[tokio::test]
async fn signature_made_with_another_secret_is_401() {
    let app = TestApp::spawn().await;
    let body = record_updated_body(1);
    let response = app
        .post_raw(
            &body,
            Some(&sign("some-other-webhook-secret", &body)),
            Some("k"),
        )
        .await;
    assert_eq!(response.status(), 401);
    assert_nothing_delivered(&app).await;
}

#[tokio::test]
async fn upper_case_or_non_hex_signature_is_401() {
    let app = TestApp::spawn().await;
    let body = record_updated_body(1);
    let upper = sign(SECRET, &body).to_uppercase();
    for bad in [upper.as_str(), "not-hex-at-all", &"g".repeat(64), ""] {
        let response = app.post_raw(&body, Some(bad), Some("k")).await;
        assert_eq!(response.status(), 401, "signature {bad:?}");
    }
    assert_nothing_delivered(&app).await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let app = TestApp::spawn().await;
    let big = vec![b' '; 1024 * 1024 + 1];
    let response = app.post_signed(&big, Some("big")).await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "body_too_large"
    );
    assert_nothing_delivered(&app).await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    // No Content-Length: the limit must hold while the body streams in.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /webhooks/attio HTTP/1.1\r\nhost: {}\r\nattio-signature: {}\r\ntransfer-encoding: chunked\r\n\r\n",
        app.addr,
        "0".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..20 {
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk.clone(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if stream.write_all(&framed).await.is_err() {
            break; // the server may stop reading once the limit is passed
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn empty_signed_body_is_stored_as_dead_delivery_and_answered_202() {
    let app = TestApp::spawn().await;
    let response = app.post_signed(b"", Some("empty")).await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "stored_unparsed"
    );
    assert_nothing_delivered(&app).await;
}

#[tokio::test]
async fn invalid_utf8_signed_body_is_kept_as_dead_delivery() {
    let app = TestApp::spawn().await;
    let response = app.post_signed(b"{\"events\":[\xff]}", Some("utf8")).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["reason"].as_str().unwrap().contains("UTF-8"));
    assert_nothing_delivered(&app).await;
}

#[tokio::test]
async fn signed_non_json_and_non_envelope_bodies_are_kept_not_lost() {
    let app = TestApp::spawn().await;
    for (index, body) in [
        &b"hello"[..],
        b"[1,2,3]",
        b"{\"webhook_id\":\"w\"}",
        b"{\"events\":[{\"no_type\":true}]}",
    ]
    .iter()
    .enumerate()
    {
        let response = app.post_signed(body, Some(&format!("bad-{index}"))).await;
        assert_eq!(response.status(), 202, "body {index}");
    }
    assert_nothing_delivered(&app).await;
    let stopped = app.stop().await;
    // They are in the journal's dead deliveries, bodies intact.
    let journal =
        attio_webhooks::journal::SqliteJournal::open(&stopped.storage.join("journal.sqlite3"))
            .unwrap();
    // Newest first.
    let dead = journal.unparsed(10, None).await.unwrap();
    assert_eq!(dead.len(), 4);
    assert_eq!(dead[3].body_len, 5);
    assert_eq!(dead[1].key.as_deref(), Some("bad-2"));
}

#[tokio::test]
async fn signed_json_arrays_are_kept_as_dead_deliveries_not_accepted() {
    let app = TestApp::spawn().await;
    // serde reads an array as a struct's fields in order: these once passed as deliveries.
    for (index, body) in [
        &br#"[null,[{"event_type":"task.created","id":{"task_id":"t"}}]]"#[..],
        br#"{"webhook_id":"w","events":[["task.created"]]}"#,
    ]
    .iter()
    .enumerate()
    {
        let response = app.post_signed(body, Some(&format!("array-{index}"))).await;
        assert_eq!(response.status(), 202, "body {index}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["status"],
            "stored_unparsed"
        );
    }
    assert_nothing_delivered(&app).await;
    let stopped = app.stop().await;
    let journal =
        attio_webhooks::journal::SqliteJournal::open(&stopped.storage.join("journal.sqlite3"))
            .unwrap();
    assert_eq!(journal.unparsed(10, None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn deep_nesting_neither_crashes_ingress_nor_reaches_the_sink_unreadable() {
    let app = TestApp::spawn().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // Inside an event: the worker could not read it, so it is a dead delivery.
    let in_event = format!(r#"{{"events":[{{"event_type":"task.created","x":{deep}}}]}}"#);
    let response = app
        .post_signed(in_event.as_bytes(), Some("deep-event"))
        .await;
    assert_eq!(response.status(), 202);
    assert_nothing_delivered(&app).await;
    // In a key of the envelope nobody reads: skipped, the event goes through.
    let beside = format!(
        r#"{{"unknown":{deep},"events":[{{"event_type":"task.created","id":{{"task_id":"t"}}}}]}}"#
    );
    let response = app
        .post_signed(beside.as_bytes(), Some("deep-beside"))
        .await;
    assert_eq!(response.status(), 200);
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines[0]["event"]["id"]["task_id"], "t");
}

/// Posts a signed body with an `Idempotency-Key` of arbitrary bytes (HTTP allows 0x80..=0xFF).
async fn post_with_raw_key(app: &TestApp, body: &[u8], key: &[u8]) -> reqwest::Response {
    app.client
        .post(app.url("/webhooks/attio"))
        .header("content-type", "application/json")
        .header("attio-signature", sign(SECRET, body))
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(key).unwrap(),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn idempotency_keys_differing_only_in_bytes_that_are_not_utf8_are_two_deliveries() {
    let app = TestApp::spawn().await;
    let first = post_with_raw_key(&app, &record_updated_body(1), b"key-\xff").await;
    assert_eq!(first.json::<Value>().await.unwrap()["status"], "accepted");
    let second = post_with_raw_key(&app, &record_updated_body(2), b"key-\xfe").await;
    assert_eq!(second.json::<Value>().await.unwrap()["status"], "accepted");
    let lines = app.wait_for_lines(2, WAIT).await;
    assert_ne!(lines[0]["id"], lines[1]["id"]);
}

#[tokio::test]
async fn an_odd_idempotency_key_is_hashed_and_still_recognises_the_redelivery() {
    let app = TestApp::spawn().await;
    let body = record_updated_body(3);
    let key = "caf\u{e9} with spaces".as_bytes();
    let first = post_with_raw_key(&app, &body, key).await;
    assert_eq!(first.json::<Value>().await.unwrap()["status"], "accepted");
    let again = post_with_raw_key(&app, &body, key).await;
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    let lines = app.wait_for_lines(1, WAIT).await;
    let id = lines[0]["id"].as_str().unwrap();
    assert!(id.starts_with("sha256:") && id.ends_with(":0"), "{id}");
    assert!(id.is_ascii());
}

#[tokio::test]
async fn unknown_event_type_is_accepted_and_routed_by_name() {
    let app = TestApp::spawn().await;
    let body = br#"{"webhook_id":"w","events":[{"event_type":"spaceship.launched","id":{"workspace_id":"x"},"actor":{"type":"system","id":null},"new_key":{"nested":[1,2]}}]}"#;
    let response = app.post_signed(body, Some("unknown-type")).await;
    assert_eq!(response.status(), 200);
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines[0]["event_type"], "spaceship.launched");
    assert_eq!(lines[0]["event"]["new_key"]["nested"][1], 2);
    assert!(lines[0]["event"]["actor"]["id"].is_null());
}

#[tokio::test]
async fn bare_single_event_is_accepted() {
    let app = TestApp::spawn().await;
    let body = fixture("attio_docs__workspace-member.created_event.json");
    let response = app.post_signed(&body, Some("bare")).await;
    assert_eq!(response.status(), 200);
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines[0]["event_type"], "workspace-member.created");
    assert!(lines[0]["webhook_id"].is_null());
}

#[tokio::test]
async fn delivery_without_idempotency_key_gets_a_derived_key() {
    let app = TestApp::spawn().await;
    let body = record_updated_body(7);
    assert_eq!(app.post_signed(&body, None).await.status(), 200);
    // The same bytes again without a key: recognised as the same delivery.
    let again = app.post_signed(&body, None).await;
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    let lines = app.wait_for_lines(1, WAIT).await;
    assert_eq!(lines.len(), 1);
    assert!(lines[0]["id"]
        .as_str()
        .unwrap()
        .starts_with("derived:23e42eaf-323a-41da-b5bb-fd67eebda553:"));
}

#[tokio::test]
async fn the_same_delivery_twice_is_processed_once() {
    let app = TestApp::spawn().await;
    let body = record_updated_body(1);
    let first = app.post_signed(&body, Some("twice")).await;
    assert_eq!(first.json::<Value>().await.unwrap()["status"], "accepted");
    let second = app.post_signed(&body, Some("twice")).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.json::<Value>().await.unwrap()["status"], "duplicate");
    app.wait_for_lines(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sink_lines().len(), 1);
}

#[tokio::test]
async fn two_concurrent_deliveries_with_the_same_key_are_processed_once() {
    let app = TestApp::spawn().await;
    let body = record_updated_body(1);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = app.client.clone();
        let url = app.url("/webhooks/attio");
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            crate::helpers::post_signed_to(&client, &url, &body, Some("race"))
                .await
                .unwrap()
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(response.status(), 200);
        if response.json::<Value>().await.unwrap()["status"] == "accepted" {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1, "exactly one request stores the delivery");
    app.wait_for_lines(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sink_lines().len(), 1);
}

#[tokio::test]
async fn a_delivery_with_several_events_yields_one_line_each_with_its_index() {
    let app = TestApp::spawn().await;
    let body = br#"{"webhook_id":"w","events":[{"event_type":"task.created","id":{"task_id":"t1"}},{"event_type":"task.updated","id":{"task_id":"t1"}}]}"#;
    assert_eq!(app.post_signed(body, Some("batch")).await.status(), 200);
    let mut lines = app.wait_for_lines(2, WAIT).await;
    lines.sort_by_key(|l| l["id"].as_str().unwrap().to_string());
    assert_eq!(lines[0]["id"], "batch:0");
    assert_eq!(lines[1]["id"], "batch:1");
    assert_eq!(lines[1]["event_type"], "task.updated");
}

#[tokio::test]
async fn health_and_readiness_answer_json() {
    let app = TestApp::spawn().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["journal"], "ok");
    assert!(body["checks"].get("redis").is_none());
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/webhooks/attio"))
        .header("x-request-id", "req-123")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let generated = app.post_signed(&record_updated_body(1), Some("rid")).await;
    assert!(!generated.headers()["x-request-id"].is_empty());
    // An id too long or with spaces in it is not carried into logs: a fresh one replaces it.
    for odd in ["x".repeat(129), "two words".to_string()] {
        let response = app
            .client
            .post(app.url("/webhooks/attio"))
            .header("x-request-id", odd.as_str())
            .body("{}")
            .send()
            .await
            .unwrap();
        let answered = response.headers()["x-request-id"].to_str().unwrap();
        assert!(answered != odd && !answered.is_empty() && answered.len() <= 128);
    }
    let longest = "y".repeat(128);
    let response = app
        .client
        .post(app.url("/webhooks/attio"))
        .header("x-request-id", longest.as_str())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], longest.as_str());
}

#[tokio::test]
async fn full_backlog_answers_503_with_retry_after() {
    // The worker is off, so accepted events stay pending; the limit is two events.
    let app = TestApp::builder()
        .worker(false)
        .toml("[queue]\nmax_backlog = 2")
        .spawn()
        .await;
    for n in 0..2 {
        let response = app
            .post_signed(&record_updated_body(n), Some(&format!("b{n}")))
            .await;
        assert_eq!(response.status(), 200);
    }
    let refused = app.post_signed(&record_updated_body(3), Some("b3")).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "backlog_full"
    );
}
