//! The Attio client against a real local HTTP server standing in for Attio: answers, error
//! classes, retries (Retry-After in both forms), timeouts, unreadable answers, the shared rate
//! limiter, the circuit breaker, and the webhook-management calls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use attio_webhooks::attio::models::{NewWebhook, Subscription, WebhookUpdate};
use attio_webhooks::attio::{AttioClient, AttioError, AttributeParent};
use attio_webhooks::config::Settings;
use secrecy::ExposeSecret;

use crate::fake_attio::{FakeAttio, API_KEY};

const OBJECT: &str = "97052eb9-e65e-443f-a297-f2d9a4a7f795";
const RECORD: &str = "bf071e1f-6035-429d-b874-d83ea64ea13b";

/// A client for `fake`; `extra` adds keys to `[attio]`. Retries are quick by default.
fn client_for(fake: &FakeAttio, extra: &str) -> AttioClient {
    let defaults = "retry_initial = \"20ms\"\nretry_max_delay = \"100ms\"\n";
    let settings = Settings::from_toml_layers(
        "test",
        &[
            "[webhook]\nsecrets = [\"s\"]",
            &fake.attio_toml(defaults),
            &format!("[attio]\n{extra}"),
        ],
    )
    .unwrap();
    AttioClient::new(&settings.attio, settings.attio.api_key.as_ref().unwrap()).unwrap()
}

fn record_path() -> String {
    format!("/v2/objects/{OBJECT}/records/{RECORD}")
}

#[tokio::test]
async fn a_record_is_fetched_with_the_bearer_token_user_agent_and_gzip() {
    let fake = FakeAttio::start().await;
    let client = client_for(&fake, "");
    let record = client.get_record(OBJECT, RECORD).await.unwrap();
    assert_eq!(record.id.record_id, RECORD);
    assert!(record.values.contains_key("name"));
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, record_path());
    let header = |name: &str| {
        seen[0]
            .headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(header("authorization"), format!("Bearer {API_KEY}"));
    assert!(
        header("user-agent").starts_with("attio-webhooks/"),
        "{}",
        header("user-agent")
    );
    assert!(header("accept-encoding").contains("gzip"));
}

#[tokio::test]
async fn not_found_is_permanent_and_asked_once() {
    let fake = FakeAttio::start().await;
    fake.remove(&record_path());
    let client = client_for(&fake, "");
    let error = client.get_record(OBJECT, RECORD).await.unwrap_err();
    assert!(error.is_not_found() && error.is_permanent(), "{error}");
    assert_eq!(error.code(), Some("not_found"));
    assert_eq!(fake.seen().len(), 1, "a permanent error is not retried");
}

#[tokio::test]
async fn a_server_error_is_retried_until_attio_answers() {
    let fake = FakeAttio::start().await;
    fake.script(
        "/records/",
        500,
        &[],
        r#"{"status_code":500,"type":"api_error","code":"internal","message":"boom"}"#,
    );
    let client = client_for(&fake, "");
    let record = client.get_record(OBJECT, RECORD).await.unwrap();
    assert_eq!(record.id.object_id, OBJECT);
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn a_merge_in_progress_is_retried() {
    let fake = FakeAttio::start().await;
    fake.script(
        "/records/",
        404,
        &[],
        r#"{"status_code":404,"type":"invalid_request_error","code":"merge_in_progress","message":"merging"}"#,
    );
    let client = client_for(&fake, "");
    assert!(client.get_record(OBJECT, RECORD).await.is_ok());
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn a_429_waits_until_the_http_date_in_retry_after() {
    let fake = FakeAttio::start().await;
    // Attio sends an HTTP date, usually the next second. Whole seconds: aim two ahead.
    let date = SystemTime::now() + Duration::from_secs(2);
    let header = httpdate::fmt_http_date(date);
    let not_before = httpdate::parse_http_date(&header).unwrap();
    fake.script(
        "/records/",
        429,
        &[("retry-after", &header)],
        &String::from_utf8(crate::helpers::fixture(
            "attio_docs__429_rate_limit_error_body.json",
        ))
        .unwrap(),
    );
    let client = client_for(&fake, "");
    client.get_record(OBJECT, RECORD).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].at >= not_before,
        "retried at {:?}, before the Retry-After date {header}",
        httpdate::fmt_http_date(seen[1].at)
    );
}

#[tokio::test]
async fn a_429_with_delta_seconds_is_honoured_too() {
    let fake = FakeAttio::start().await;
    fake.script("/records/", 429, &[("retry-after", "1")], "{}");
    let client = client_for(&fake, "");
    client.get_record(OBJECT, RECORD).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].instant.duration_since(seen[0].instant);
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
}

#[tokio::test]
async fn a_retry_after_beyond_the_retry_budget_is_returned_not_waited() {
    let fake = FakeAttio::start().await;
    fake.script("/records/", 429, &[("retry-after", "30")], "{}");
    let client = client_for(&fake, "retry_total = \"2s\"");
    let started = Instant::now();
    let error = client.get_record(OBJECT, RECORD).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(error.status(), Some(429));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_slow_answer_times_out_as_a_transient_error() {
    let fake = FakeAttio::start().await;
    fake.set_delay(Duration::from_secs(3));
    let client = client_for(
        &fake,
        "request_timeout = \"200ms\"\nretry_total = \"500ms\"",
    );
    let started = Instant::now();
    let error = client.get_record(OBJECT, RECORD).await.unwrap_err();
    assert!(matches!(error, AttioError::Timeout), "{error}");
    assert!(error.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout cut the wait"
    );
    assert!(
        fake.seen().len() >= 2,
        "timeouts are retried within retry_total"
    );
}

#[tokio::test]
async fn an_unreachable_attio_is_a_transient_connection_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = crate::helpers::free_port();
    let settings = Settings::from_toml_layers(
        "test",
        &[
            "[webhook]\nsecrets = [\"s\"]",
            &format!(
                "[attio]\nbase_url = \"http://127.0.0.1:{port}\"\napi_key = \"k\"\n\
                 retry_initial = \"10ms\"\nretry_total = \"100ms\""
            ),
        ],
    )
    .unwrap();
    let client =
        AttioClient::new(&settings.attio, settings.attio.api_key.as_ref().unwrap()).unwrap();
    let error = client.get_record(OBJECT, RECORD).await.unwrap_err();
    assert!(
        matches!(
            error,
            AttioError::Connect(_) | AttioError::CircuitOpen { .. }
        ),
        "{error}"
    );
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_malformed_answer_is_a_decode_error_not_retried() {
    let fake = FakeAttio::start().await;
    fake.script(
        "/records/",
        200,
        &[("content-type", "application/json")],
        "{\"data\": {\"id\": ",
    );
    let client = client_for(&fake, "");
    let error = client.get_record(OBJECT, RECORD).await.unwrap_err();
    assert!(matches!(error, AttioError::Decode(_)), "{error}");
    assert!(error.is_permanent());
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn a_burst_never_exceeds_the_read_rate() {
    let fake = FakeAttio::start().await;
    let rate = 20;
    let client = client_for(&fake, &format!("read_rate = {rate}"));
    let requests = 60;
    let mut tasks = Vec::new();
    for _ in 0..requests {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.get_record(OBJECT, RECORD).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), requests);
    // Count per wall-clock second at the fake...
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for request in &seen {
        let second = request
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        *per_second.entry(second).or_default() += 1;
    }
    // ...and over every sliding one-second window. One extra is allowed for arrival jitter at
    // a window's edge.
    let mut instants: Vec<Instant> = seen.iter().map(|s| s.instant).collect();
    instants.sort();
    let busiest_window = (0..instants.len())
        .map(|i| {
            instants[i..]
                .iter()
                .take_while(|t| t.duration_since(instants[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        per_second.values().all(|n| *n <= rate + 1) && busiest_window <= rate + 1,
        "per second {per_second:?}, busiest one-second window {busiest_window}"
    );
}

#[tokio::test]
async fn writes_have_their_own_lower_rate() {
    let fake = FakeAttio::start().await;
    let client = client_for(&fake, "write_rate = 5");
    let started = Instant::now();
    for n in 0..6 {
        client
            .create_webhook(&NewWebhook {
                target_url: format!("https://example.com/{n}"),
                subscriptions: vec![Subscription {
                    event_type: "task.created".into(),
                    filter: None,
                }],
            })
            .await
            .unwrap();
    }
    // Six writes at five per second need at least a second between the first and the last.
    let seen = fake.seen();
    let spread = seen[5].instant.duration_since(seen[0].instant);
    assert!(
        spread >= Duration::from_millis(950),
        "{spread:?} after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_breaker_opens_when_attio_is_down_and_closes_when_it_answers() {
    let fake = FakeAttio::start().await;
    fake.set_down(true);
    let client = client_for(
        &fake,
        "breaker_threshold = 3\nbreaker_cooldown = \"300ms\"\nretry_total = \"1s\"",
    );
    let error = client.get_record(OBJECT, RECORD).await.unwrap_err();
    assert!(matches!(error, AttioError::CircuitOpen { .. }), "{error}");
    assert_eq!(fake.seen().len(), 3, "three failures open the breaker");
    assert!(client.unavailable_for().is_some());
    // While open, nothing reaches Attio.
    let refused = client.get_record(OBJECT, RECORD).await.unwrap_err();
    assert!(matches!(refused, AttioError::CircuitOpen { .. }));
    assert_eq!(fake.seen().len(), 3);
    fake.set_down(false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    client.get_record(OBJECT, RECORD).await.unwrap();
    assert!(client.unavailable_for().is_none());
}

#[tokio::test]
async fn a_429_does_not_open_the_breaker() {
    let fake = FakeAttio::start().await;
    for _ in 0..3 {
        fake.script("/records/", 429, &[("retry-after", "0")], "{}");
    }
    let client = client_for(&fake, "breaker_threshold = 2");
    client.get_record(OBJECT, RECORD).await.unwrap();
    assert!(client.unavailable_for().is_none());
}

#[tokio::test]
async fn webhook_calls_paginate_and_send_attios_body_shape() {
    let fake = FakeAttio::start().await;
    fake.add_webhooks(105);
    let client = client_for(&fake, "");
    let all = client.list_all_webhooks().await.unwrap();
    assert_eq!(all.len(), 105);
    let pages: Vec<Option<String>> = fake.seen().into_iter().map(|s| s.query).collect();
    assert_eq!(
        pages,
        vec![
            Some("limit=100&offset=0".to_string()),
            Some("limit=100&offset=100".to_string())
        ]
    );

    let created = client
        .create_webhook(&NewWebhook {
            target_url: "https://example.com/attio".into(),
            subscriptions: vec![Subscription {
                event_type: "record.updated".into(),
                filter: None,
            }],
        })
        .await
        .unwrap();
    assert!(!created.secret.expose_secret().is_empty());
    let post = fake.seen().pop().unwrap();
    assert_eq!(post.method, "POST");
    assert_eq!(
        post.body.unwrap(),
        serde_json::json!({"data": {"target_url": "https://example.com/attio",
            "subscriptions": [{"event_type": "record.updated", "filter": null}]}})
    );

    let id = created.webhook.id.webhook_id.clone();
    let updated = client
        .update_webhook(
            &id,
            &WebhookUpdate {
                target_url: Some("https://example.com/moved".into()),
                subscriptions: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.target_url, "https://example.com/moved");
    assert_eq!(
        client.get_webhook(&id).await.unwrap().target_url,
        "https://example.com/moved"
    );
    client.delete_webhook(&id).await.unwrap();
    assert!(client.get_webhook(&id).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn schema_calls_resolve_slugs() {
    let fake = FakeAttio::start().await;
    fake.set_slug(OBJECT, "deals");
    let client = client_for(&fake, "");
    assert_eq!(
        client.get_object(OBJECT).await.unwrap().api_slug.as_deref(),
        Some("deals")
    );
    let attributes = client
        .list_attributes(AttributeParent::Object, OBJECT)
        .await
        .unwrap();
    assert_eq!(attributes[0].api_slug.as_deref(), Some("stage"));
    assert_eq!(client.list_objects().await.unwrap().len(), 1);
    assert_eq!(client.list_lists().await.unwrap().len(), 1);
    assert!(client.identify().await.unwrap().active);
}

#[tokio::test]
async fn ids_are_encoded_as_one_path_segment() {
    let fake = FakeAttio::start().await;
    let client = client_for(&fake, "");
    let _ = client.get_note("a/b?c").await;
    assert_eq!(fake.seen()[0].path, "/v2/notes/a%2Fb%3Fc");
    let error = client.get_note("..").await.unwrap_err();
    assert!(matches!(error, AttioError::InvalidRequest(_)));
    assert_eq!(fake.seen().len(), 1, "nothing sent for an invalid id");
}

#[tokio::test]
async fn the_api_key_never_appears_in_errors_or_debug_output() {
    let fake = FakeAttio::start().await;
    fake.set_down(true);
    let client = client_for(&fake, "retry_total = \"100ms\"");
    let error = client.get_record(OBJECT, RECORD).await.unwrap_err();
    let shown = format!("{error} {error:?} {client:?}");
    assert!(!shown.contains(API_KEY), "{shown}");
    let _shared: Arc<AttioClient> = Arc::new(client);
}

#[tokio::test]
async fn with_the_shared_redis_unreachable_each_client_falls_back_to_its_own_limit() {
    let fake = FakeAttio::start().await;
    let rate = 10;
    let settings = Settings::from_toml_layers(
        "test",
        &[
            "[webhook]\nsecrets = [\"s\"]",
            &fake.attio_toml(&format!("read_rate = {rate}")),
        ],
    )
    .unwrap();
    // Nothing listens there: every call of the shared limiter fails.
    let nowhere = format!("redis://127.0.0.1:{}", crate::helpers::free_port());
    let connection =
        attio_webhooks::dedupe::redis::connect(&secrecy::SecretString::from(nowhere)).unwrap();
    let client = AttioClient::with_rate_limit(
        &settings.attio,
        settings.attio.api_key.as_ref().unwrap(),
        Some(attio_webhooks::attio::rate_limit::SharedRateLimit {
            connection,
            key_prefix: crate::helpers::unique_prefix(),
        }),
    )
    .unwrap();
    let requests = 25;
    let mut tasks = Vec::new();
    for _ in 0..requests {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.get_record(OBJECT, RECORD).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut instants: Vec<Instant> = fake.seen().iter().map(|s| s.instant).collect();
    assert_eq!(instants.len(), requests);
    instants.sort();
    let busiest_window = (0..instants.len())
        .map(|i| {
            instants[i..]
                .iter()
                .take_while(|t| t.duration_since(instants[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest_window <= rate,
        "busiest one-second window {busiest_window}"
    );
}
