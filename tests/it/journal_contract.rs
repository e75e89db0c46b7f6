//! The journal's contract (`journal::Backend`), checked against both backends: every test is
//! written once over a `Journal` and runs twice, on the embedded journal (a SQLite file in a
//! temporary directory) and on the Redis journal (the real Redis on 127.0.0.1:6379, under a key
//! prefix of its own that is deleted afterwards). A difference between the backends fails here.
//!
//! The per-backend behaviour beyond the contract (group commit, reopening, replicas, leases) is
//! tested next to each backend (`src/journal/embedded_tests.rs`, `src/journal/redis_tests.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use attio_webhooks::event::ParsedEvent;
use attio_webhooks::journal::history::{
    AttemptRecord, EventPage, EventStatus, HistoryQuery, Retention,
};
use attio_webhooks::journal::{
    AppendOutcome, DeadLetter, DeadLetterQuery, Journal, JournaledEvent, MalformedDelivery,
    NewDelivery, RedisJournal, ReplaySelection, SinkProgress, SqliteJournal, UnparsedSelection,
};
use chrono::Utc;
use secrecy::SecretString;

use crate::helpers::{unique_prefix, REDIS_URL};

/// Runs the contract test `$name` (an `async fn(&Journal)`) on each backend, as
/// `$name::embedded` and `$name::redis`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn embedded() {
                let backend = super::Backing::embedded();
                super::$name(&backend.journal).await;
                backend.journal.close().await;
            }

            #[tokio::test]
            async fn redis() {
                let backend = super::Backing::redis();
                super::$name(&backend.journal).await;
                backend.journal.close().await;
            }
        }
    )*};
}

on_both_backends!(
    a_delivery_key_is_stored_once,
    a_completed_event_stays_in_the_history_as_delivered,
    a_retry_keeps_per_sink_attempts_and_the_dead_letter_gets_them,
    a_deferred_event_comes_back_with_its_attempts_and_sinks_done,
    dead_letters_are_listed_oldest_first_by_sink_and_event_type,
    replay_for_one_sink_counts_the_other_failed_sinks_done,
    replay_of_named_events_says_why_it_skipped_each_one,
    replay_of_delivered_events_repeats_every_sink_or_only_the_one_named,
    unparsed_deliveries_are_kept_listed_shown_and_deleted,
    history_filters_and_pages_alike,
    purge_keeps_each_kind_for_its_own_window,
    the_backlog_counts_pending_events_only,
);

/// The delivery keys (and events per delivery) the tests may use: the Redis fixture deletes
/// exactly their keys afterwards, without scanning the keyspace.
const DELIVERY_KEYS: [&str; 4] = ["k", "a", "b", "c"];
const MOST_EVENTS: usize = 4;
const MOST_UNPARSED: i64 = 16;

/// One backend under test, and what it must clean up after.
struct Backing {
    journal: Journal,
    _directory: Option<tempfile::TempDir>,
    _keys: Option<RedisKeys>,
}

impl Backing {
    fn embedded() -> Backing {
        let directory = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&directory.path().join("journal.sqlite3")).unwrap();
        Backing {
            journal: Journal::Sqlite(journal),
            _directory: Some(directory),
            _keys: None,
        }
    }

    fn redis() -> Backing {
        let prefix = unique_prefix();
        let connection =
            attio_webhooks::dedupe::redis::connect(&SecretString::from(REDIS_URL)).unwrap();
        let journal = RedisJournal::new(
            connection,
            &prefix,
            Duration::from_secs(30),
            Duration::from_secs(3600),
        );
        Backing {
            journal: Journal::Redis(journal),
            _directory: None,
            _keys: Some(RedisKeys { prefix }),
        }
    }
}

/// Deletes, when dropped (also when the test failed), every key a test can have made under its
/// prefix: the journal's fixed keys and those of the events, deliveries and unparsed bodies the
/// tests may use (see [`DELIVERY_KEYS`]).
struct RedisKeys {
    prefix: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let tag = format!("{{{}}}", self.prefix);
        let mut keys: Vec<String> = [
            "events",
            "pending",
            "retry",
            "dead",
            "dead-deliveries",
            "dead-delivery-seq",
            "probe",
            "history",
            "history-seq",
        ]
        .iter()
        .map(|name| format!("{tag}:{name}"))
        .collect();
        for key in DELIVERY_KEYS {
            keys.push(format!("{tag}:delivery:{key}"));
            for index in 0..MOST_EVENTS {
                keys.push(format!("{tag}:event:{key}:{index}"));
            }
        }
        for seq in 1..=MOST_UNPARSED {
            keys.push(format!("{tag}:dead-delivery:{seq}"));
        }
        let deleted = redis::Client::open(REDIS_URL)
            .and_then(|client| client.get_connection())
            .and_then(|mut connection| redis::cmd("DEL").arg(&keys).query::<i64>(&mut connection));
        if let Err(error) = deleted {
            eprintln!("could not delete the test's keys under {tag}: {error}");
        }
    }
}

fn delivery(key: &str, event_types: &[&str]) -> NewDelivery {
    assert!(
        DELIVERY_KEYS.contains(&key) && event_types.len() <= MOST_EVENTS,
        "the Redis fixture cleans up only DELIVERY_KEYS, with up to {MOST_EVENTS} events each"
    );
    NewDelivery {
        key: key.to_string(),
        key_derived: false,
        webhook_id: Some("w".to_string()),
        received_at: Utc::now(),
        request_id: Some("r".to_string()),
        events: event_types
            .iter()
            .enumerate()
            .map(|(n, event_type)| ParsedEvent {
                event_type: event_type.to_string(),
                raw: format!("{{\"event_type\":\"{event_type}\",\"n\":{n}}}"),
            })
            .collect(),
    }
}

/// Appends a delivery of `count` `record.updated` events and hands them out, as the worker
/// would before recording an outcome.
async fn stored(journal: &Journal, key: &str, count: usize) -> Vec<JournaledEvent> {
    let types = vec!["record.updated"; count];
    let AppendOutcome::Stored(events) = journal.append(delivery(key, &types)).await.unwrap() else {
        panic!("expected {key} to be stored");
    };
    journal.due(100).await.unwrap();
    events
}

fn progress(attempts: u32, done: &[&str], failed: &[&str]) -> SinkProgress {
    SinkProgress {
        attempts,
        last_error: failed
            .iter()
            .map(|s| format!("{s}: down"))
            .collect::<Vec<_>>()
            .join("; "),
        sinks_done: done.iter().map(|s| s.to_string()).collect(),
        sink_attempts: failed.iter().map(|s| (s.to_string(), attempts)).collect(),
        sinks_failed: failed.iter().map(|s| s.to_string()).collect(),
    }
}

fn sorted_ids(events: &[JournaledEvent]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    ids
}

fn letter_ids(letters: &[DeadLetter]) -> Vec<&str> {
    letters.iter().map(|l| l.id.as_str()).collect()
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

async fn dead_letter(journal: &Journal, id: &str, progress: &SinkProgress) {
    journal
        .dead_letter_sinks(id, progress, &AttemptRecord::default())
        .await
        .unwrap();
}

async fn a_delivery_key_is_stored_once(journal: &Journal) {
    let AppendOutcome::Stored(events) = journal
        .append(delivery("k", &["record.updated", "note.created"]))
        .await
        .unwrap()
    else {
        panic!("the first delivery of a key is stored");
    };
    assert_eq!(sorted_ids(&events), ["k:0", "k:1"]);
    assert_eq!(events[1].event_type, "note.created");
    assert_eq!(events[1].raw, r#"{"event_type":"note.created","n":1}"#);
    assert_eq!(events[0].attempts, 0);
    assert!(events[0].sinks_done.is_empty());
    assert_eq!(journal.backlog(), 2);
    assert!(matches!(
        journal
            .append(delivery("k", &["record.updated"]))
            .await
            .unwrap(),
        AppendOutcome::Duplicate
    ));
    assert_eq!(journal.backlog(), 2, "a duplicate adds nothing");
    let mut due = journal.due(10).await.unwrap();
    due.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(due, events, "handed out exactly as stored");
}

async fn a_completed_event_stays_in_the_history_as_delivered(journal: &Journal) {
    stored(journal, "k", 2).await;
    let record = AttemptRecord {
        enrichment: Some("ok".into()),
        object: Some("deals".into()),
        record_id: Some("rec-1".into()),
        data: Some(r#"{"a":1}"#.into()),
        sinks_done: vec!["out".into()],
        sinks_delivered: BTreeMap::from([("out".into(), "2026-01-01T00:00:00Z".into())]),
        ..AttemptRecord::default()
    };
    journal.complete("k:0", record.clone()).await.unwrap();
    assert_eq!(journal.backlog(), 1);
    journal.complete("k:0", record).await.unwrap();
    assert_eq!(journal.backlog(), 1, "completing twice counts once");
    assert!(
        journal.dead_letters(10).await.unwrap().is_empty(),
        "a delivered event is no dead letter"
    );
    let detail = journal.history_event("k:0").await.unwrap().unwrap();
    assert_eq!(detail.status, EventStatus::Delivered);
    assert!(detail.delivered_at.is_some());
    assert_eq!(detail.enrichment.as_deref(), Some("ok"));
    assert_eq!(detail.object.as_deref(), Some("deals"));
    assert_eq!(detail.record_id.as_deref(), Some("rec-1"));
    assert_eq!(detail.data.as_ref().map(|d| d.get()), Some(r#"{"a":1}"#));
    assert_eq!(
        detail.event.get(),
        r#"{"event_type":"record.updated","n":0}"#
    );
    assert_eq!(detail.sinks.len(), 1);
    assert_eq!(detail.sinks[0].name, "out");
    assert_eq!(detail.sinks[0].status, EventStatus::Delivered);
    assert_eq!(
        detail.sinks[0].delivered_at.as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
    let stored = journal.event("k:0").await.unwrap().unwrap();
    assert_eq!(stored.state, "delivered");
    assert_eq!(stored.sinks_done, ["out"]);
    assert!(journal.history_event("nope:0").await.unwrap().is_none());
    assert!(journal.event("nope:0").await.unwrap().is_none());
}

async fn a_retry_keeps_per_sink_attempts_and_the_dead_letter_gets_them(journal: &Journal) {
    stored(journal, "k", 1).await;
    let failed = AttemptRecord {
        sink_errors: BTreeMap::from([("b".into(), "503".into())]),
        ..AttemptRecord::default()
    };
    journal
        .retry_sinks("k:0", &progress(1, &["a"], &["b"]), Utc::now(), &failed)
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 1, "a retry stays pending");
    let due = journal.due(10).await.unwrap();
    assert_eq!(sorted_ids(&due), ["k:0"]);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].sinks_done, ["a"]);
    assert_eq!(due[0].sink_attempts, BTreeMap::from([("b".to_string(), 1)]));
    let stored = journal.event("k:0").await.unwrap().unwrap();
    assert_eq!(stored.state, "pending");
    assert_eq!(stored.last_error.as_deref(), Some("b: down"));
    assert_eq!(stored.failed_sinks, ["b"]);
    assert_eq!(
        stored.event.get(),
        r#"{"event_type":"record.updated","n":0}"#
    );
    let retrying = journal.history_event("k:0").await.unwrap().unwrap();
    assert_eq!(retrying.status, EventStatus::Retrying);
    let sink_b = retrying.sinks.iter().find(|s| s.name == "b").unwrap();
    assert_eq!(sink_b.status, EventStatus::Retrying);
    assert_eq!(sink_b.attempts, 1);
    assert_eq!(sink_b.last_error.as_deref(), Some("503"));

    journal
        .dead_letter_sinks("k:0", &progress(2, &["a"], &["b"]), &failed)
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 0, "a dead letter is not pending");
    let letters = journal.dead_letters(10).await.unwrap();
    assert_eq!(letter_ids(&letters), ["k:0"]);
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(
        letters[0].sink_attempts,
        BTreeMap::from([("b".to_string(), 2)])
    );
    assert_eq!(letters[0].sinks_done, ["a"]);
    assert_eq!(letters[0].failed_sinks, ["b"]);
    assert_eq!(letters[0].last_error.as_deref(), Some("b: down"));
    assert_eq!(letters[0].event_type, "record.updated");
    assert_eq!(letters[0].delivery_key, "k");
    assert!(letters[0].dead_at.is_some());
    assert_eq!(journal.event("k:0").await.unwrap().unwrap().state, "dead");
    let dead = journal.history_event("k:0").await.unwrap().unwrap();
    assert_eq!(dead.status, EventStatus::Dead);
    let sink_b = dead.sinks.iter().find(|s| s.name == "b").unwrap();
    assert_eq!(sink_b.status, EventStatus::Dead);
}

/// Where `event` stands with its sinks, as the worker hands it to `reschedule`.
fn standing(event: &JournaledEvent) -> SinkProgress {
    SinkProgress {
        attempts: event.attempts,
        sinks_done: event.sinks_done.clone(),
        ..SinkProgress::default()
    }
}

async fn a_deferred_event_comes_back_with_its_attempts_and_sinks_done(journal: &Journal) {
    let mut event = stored(journal, "k", 1).await.remove(0);
    (event.attempts, event.sinks_done) = (2, vec!["a".to_string()]);
    journal
        .reschedule(&event.id, &standing(&event), Utc::now(), Some("deferred"))
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 1);
    let due = journal.due(10).await.unwrap();
    assert_eq!(sorted_ids(&due), ["k:0"]);
    assert_eq!(due[0].attempts, 2);
    assert_eq!(due[0].sinks_done, ["a"]);
    let stored = journal.event("k:0").await.unwrap().unwrap();
    assert_eq!(stored.state, "pending");
    assert_eq!(stored.last_error.as_deref(), Some("deferred"));
    journal
        .reschedule(&event.id, &standing(&event), Utc::now(), None)
        .await
        .unwrap();
    let stored = journal.event("k:0").await.unwrap().unwrap();
    assert_eq!(
        stored.last_error.as_deref(),
        Some("deferred"),
        "no error given: the last one stays"
    );
}

async fn dead_letters_are_listed_oldest_first_by_sink_and_event_type(journal: &Journal) {
    let types = ["record.updated", "record.created", "note.created"];
    journal.append(delivery("k", &types)).await.unwrap();
    journal.due(10).await.unwrap();
    dead_letter(journal, "k:0", &progress(1, &[], &["a"])).await;
    dead_letter(journal, "k:1", &progress(1, &[], &["b"])).await;
    dead_letter(journal, "k:2", &progress(1, &[], &["a", "b"])).await;
    let list = |sink: Option<&str>, event_type: Option<&str>, limit: usize| {
        let query = DeadLetterQuery {
            sink: sink.map(str::to_string),
            event_type: event_type.map(str::to_string),
            limit,
        };
        async move { journal.list_dead_letters(&query).await.unwrap() }
    };
    assert_eq!(
        letter_ids(&list(None, None, 10).await),
        ["k:0", "k:1", "k:2"]
    );
    assert_eq!(letter_ids(&list(None, None, 2).await), ["k:0", "k:1"]);
    assert_eq!(letter_ids(&list(Some("a"), None, 10).await), ["k:0", "k:2"]);
    assert_eq!(
        letter_ids(&list(None, Some("record.*"), 10).await),
        ["k:0", "k:1"]
    );
    assert_eq!(
        letter_ids(&list(None, Some("record.created"), 10).await),
        ["k:1"]
    );
    assert_eq!(
        letter_ids(&list(Some("a"), Some("note.*"), 10).await),
        ["k:2"]
    );
    assert!(list(None, Some("task.*"), 10).await.is_empty());
    assert!(list(Some("c"), None, 10).await.is_empty());
    journal
        .complete("k:0", AttemptRecord::default())
        .await
        .unwrap();
    assert_eq!(
        list(None, None, 10).await.len(),
        3,
        "complete does not touch a dead letter"
    );
}

async fn replay_for_one_sink_counts_the_other_failed_sinks_done(journal: &Journal) {
    stored(journal, "k", 2).await;
    dead_letter(journal, "k:0", &progress(3, &["ok"], &["a", "b"])).await;
    dead_letter(journal, "k:1", &progress(3, &[], &["b"])).await;
    let report = journal
        .replay(&ReplaySelection::All, Some("a"), false)
        .await
        .unwrap();
    assert_eq!(report.replayed, ["k:0"], "k:1 did not fail on a");
    assert!(
        report.skipped.is_empty(),
        "--all passes over the others silently"
    );
    assert_eq!(journal.backlog(), 1);
    let due = journal.due(10).await.unwrap();
    assert_eq!(sorted_ids(&due), ["k:0"]);
    assert_eq!(due[0].attempts, 0, "attempts start again");
    assert!(due[0].sink_attempts.is_empty());
    assert_eq!(
        sorted(due[0].sinks_done.clone()),
        ["b", "ok"],
        "only a is tried again"
    );
    assert_eq!(
        letter_ids(&journal.dead_letters(10).await.unwrap()),
        ["k:1"]
    );
    let report = journal
        .replay(&ReplaySelection::All, None, false)
        .await
        .unwrap();
    assert_eq!(report.replayed, ["k:1"]);
    assert_eq!(journal.backlog(), 2);
    assert!(journal.dead_letters(10).await.unwrap().is_empty());
}

async fn replay_of_named_events_says_why_it_skipped_each_one(journal: &Journal) {
    stored(journal, "k", 3).await;
    dead_letter(journal, "k:0", &progress(5, &[], &["a"])).await;
    dead_letter(journal, "k:1", &progress(5, &[], &["a"])).await;
    let named = |ids: &[&str]| ReplaySelection::Ids(ids.iter().map(|s| s.to_string()).collect());
    let report = journal
        .replay(&named(&["k:0", "k:2", "gone:0"]), None, false)
        .await
        .unwrap();
    assert_eq!(report.replayed, ["k:0"]);
    let reasons: Vec<(&str, &str)> = report
        .skipped
        .iter()
        .map(|s| (s.id.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("k:2", "not a dead letter (it is pending)"),
            (
                "gone:0",
                "not in the journal (unknown, or older than storage.history)"
            )
        ]
    );
    let report = journal
        .replay(&named(&["k:1"]), Some("b"), false)
        .await
        .unwrap();
    assert!(report.replayed.is_empty());
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(
        report.skipped[0].reason,
        "did not fail on sink \"b\" (failed: a)"
    );
    assert_eq!(journal.backlog(), 2);
    assert!(journal.oldest_pending_age().await.unwrap().is_some());
}

async fn replay_of_delivered_events_repeats_every_sink_or_only_the_one_named(journal: &Journal) {
    stored(journal, "k", 1).await;
    let delivered = AttemptRecord {
        sinks_done: vec!["out".into(), "other".into()],
        ..AttemptRecord::default()
    };
    journal.complete("k:0", delivered.clone()).await.unwrap();
    let named = ReplaySelection::Ids(vec!["k:0".to_string()]);
    let refused = journal.replay(&named, None, false).await.unwrap();
    assert!(refused.replayed.is_empty(), "dead-letters replay leaves it");
    assert_eq!(
        refused.skipped[0].reason,
        "not a dead letter (it is delivered)"
    );
    let unknown_sink = journal.replay(&named, Some("nope"), true).await.unwrap();
    assert!(unknown_sink.replayed.is_empty());
    assert!(
        unknown_sink.skipped[0]
            .reason
            .starts_with("was not delivered to sink \"nope\""),
        "{}",
        unknown_sink.skipped[0].reason
    );

    let report = journal.replay(&named, Some("out"), true).await.unwrap();
    assert_eq!(report.replayed, ["k:0"]);
    assert_eq!(journal.backlog(), 1);
    let due = journal.due(10).await.unwrap();
    assert_eq!(sorted_ids(&due), ["k:0"]);
    assert_eq!(due[0].sinks_done, ["other"], "only out gets it again");
    journal.complete("k:0", delivered).await.unwrap();

    let report = journal.replay(&named, None, true).await.unwrap();
    assert_eq!(report.replayed, ["k:0"]);
    let due = journal.due(10).await.unwrap();
    assert_eq!(sorted_ids(&due), ["k:0"]);
    assert!(due[0].sinks_done.is_empty(), "every sink gets it again");
    assert_eq!(
        journal.history_event("k:0").await.unwrap().unwrap().status,
        EventStatus::Pending
    );
}

async fn unparsed_deliveries_are_kept_listed_shown_and_deleted(journal: &Journal) {
    let bodies: [(&[u8], Option<&str>, &str); 3] = [
        (b"hello", Some("bad-0"), "not JSON"),
        (b"\xff\x00\x01", None, "not UTF-8"),
        (b"[1,2,3]", Some("bad-2"), "not a delivery"),
    ];
    for (body, key, reason) in bodies {
        journal
            .append_malformed(MalformedDelivery {
                key: key.map(str::to_string),
                received_at: Utc::now(),
                request_id: Some("req".to_string()),
                reason: reason.to_string(),
                body: body.to_vec(),
            })
            .await
            .unwrap();
    }
    let listed = journal.unparsed(10, None).await.unwrap();
    let reasons: Vec<&str> = listed.iter().map(|u| u.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["not a delivery", "not UTF-8", "not JSON"],
        "newest first"
    );
    assert!(listed.windows(2).all(|pair| pair[0].id > pair[1].id));
    assert_eq!(listed[0].key.as_deref(), Some("bad-2"));
    assert_eq!(listed[1].key, None);
    assert_eq!(listed[1].body_len, 3);
    assert_eq!(listed[2].body_len, 5);
    assert_eq!(listed[2].request_id.as_deref(), Some("req"));
    assert!(!listed[2].received_at.is_empty());

    let first_page = journal.unparsed(2, None).await.unwrap();
    assert_eq!(first_page, listed[..2]);
    let next_page = journal.unparsed(2, Some(first_page[1].id)).await.unwrap();
    assert_eq!(next_page, listed[2..], "the page after the cursor");

    let binary = journal
        .unparsed_delivery(listed[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(binary.body, b"\xff\x00\x01", "bytes intact");
    assert_eq!(binary.summary, listed[1]);
    assert!(journal
        .unparsed_delivery(listed[0].id + 100)
        .await
        .unwrap()
        .is_none());

    let missing = listed[0].id + 100;
    let deleted = journal
        .delete_unparsed(&UnparsedSelection::Ids(vec![listed[1].id, missing]))
        .await
        .unwrap();
    assert_eq!(
        deleted,
        [listed[1].id],
        "an id that is not there is left out"
    );
    assert!(journal
        .unparsed_delivery(listed[1].id)
        .await
        .unwrap()
        .is_none());
    assert_eq!(journal.unparsed(10, None).await.unwrap().len(), 2);
    let deleted = journal
        .delete_unparsed(&UnparsedSelection::All)
        .await
        .unwrap();
    assert_eq!(deleted, [listed[2].id, listed[0].id], "in ascending order");
    assert!(journal.unparsed(10, None).await.unwrap().is_empty());
}

fn page_ids(page: &EventPage) -> Vec<&str> {
    page.data.iter().map(|e| e.id.as_str()).collect()
}

async fn list(journal: &Journal, change: impl FnOnce(&mut HistoryQuery)) -> EventPage {
    let mut query = HistoryQuery::default();
    change(&mut query);
    journal.history(&query).await.unwrap()
}

/// Three events: `k:0` delivered (to `out`, object `deals`, record `rec-1`), `k:1` retrying,
/// `k:2` dead.
async fn three_outcomes(journal: &Journal) {
    let types = ["record.updated", "record.created", "note.created"];
    journal.append(delivery("k", &types)).await.unwrap();
    assert_eq!(journal.due(10).await.unwrap().len(), 3);
    let delivered = AttemptRecord {
        enrichment: Some("ok".into()),
        object: Some("deals".into()),
        record_id: Some("rec-1".into()),
        sinks_done: vec!["out".into()],
        ..AttemptRecord::default()
    };
    journal.complete("k:0", delivered).await.unwrap();
    let later = Utc::now() + chrono::Duration::hours(1);
    journal
        .retry_sinks(
            "k:1",
            &progress(1, &[], &["out"]),
            later,
            &AttemptRecord::default(),
        )
        .await
        .unwrap();
    dead_letter(journal, "k:2", &progress(3, &[], &["out"])).await;
}

async fn history_filters_and_pages_alike(journal: &Journal) {
    three_outcomes(journal).await;
    let all = list(journal, |_| {}).await;
    assert_eq!(page_ids(&all), ["k:2", "k:1", "k:0"], "newest first");
    let statuses: Vec<EventStatus> = all.data.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            EventStatus::Dead,
            EventStatus::Retrying,
            EventStatus::Delivered
        ]
    );
    assert_eq!(all.next_cursor, None);
    assert_eq!(all.data[1].attempts, 1);
    assert_eq!(all.data[1].last_error.as_deref(), Some("out: down"));
    assert_eq!(all.data[2].object.as_deref(), Some("deals"));
    let by_status = |status| list(journal, move |q| q.status = Some(status));
    assert_eq!(page_ids(&by_status(EventStatus::Delivered).await), ["k:0"]);
    assert_eq!(page_ids(&by_status(EventStatus::Retrying).await), ["k:1"]);
    assert_eq!(page_ids(&by_status(EventStatus::Dead).await), ["k:2"]);
    assert!(by_status(EventStatus::Pending).await.data.is_empty());
    let family = list(journal, |q| q.event_type = Some("record.*".into())).await;
    assert_eq!(page_ids(&family), ["k:1", "k:0"]);
    let exact = list(journal, |q| q.event_type = Some("note.created".into())).await;
    assert_eq!(page_ids(&exact), ["k:2"]);
    for (q, expected) in [("rec-1", vec!["k:0"]), ("k:1", vec!["k:1"])] {
        let found = list(journal, |query| query.q = Some(q.into())).await;
        assert_eq!(page_ids(&found), expected, "q = {q}");
    }
    let by_delivery = list(journal, |q| q.q = Some("k".into())).await;
    assert_eq!(by_delivery.data.len(), 3, "q = a delivery key");
    let deals = list(journal, |q| q.object = Some("deals".into())).await;
    assert_eq!(page_ids(&deals), ["k:0"]);
    assert!(list(journal, |q| q.list = Some("pipeline".into()))
        .await
        .data
        .is_empty());
    assert_eq!(
        list(journal, |q| q.sink = Some("out".into()))
            .await
            .data
            .len(),
        3
    );
    assert!(list(journal, |q| q.sink = Some("other".into()))
        .await
        .data
        .is_empty());
    let future = Utc::now() + chrono::Duration::minutes(1);
    let past = Utc::now() - chrono::Duration::minutes(1);
    assert!(list(journal, |q| q.since = Some(future))
        .await
        .data
        .is_empty());
    assert_eq!(list(journal, |q| q.since = Some(past)).await.data.len(), 3);
    assert!(list(journal, |q| q.until = Some(past))
        .await
        .data
        .is_empty());

    let mut cursor = None;
    let mut paged = Vec::new();
    for _ in 0..3 {
        let page = list(journal, |q| {
            q.limit = 1;
            q.cursor = cursor;
        })
        .await;
        paged.extend(page_ids(&page).iter().map(|s| s.to_string()));
        cursor = page.next_cursor.map(|c| c.parse().unwrap());
    }
    assert_eq!(paged, ["k:2", "k:1", "k:0"]);
    assert_eq!(cursor, None, "the last page says there is no next one");
    let two = list(journal, |q| {
        q.limit = 2;
        q.event_type = Some("record.*".into());
    })
    .await;
    assert_eq!(page_ids(&two), ["k:1", "k:0"]);
    assert_eq!(two.next_cursor, None, "no third match");
}

async fn purge_keeps_each_kind_for_its_own_window(journal: &Journal) {
    three_outcomes(journal).await;
    let keep_dead = Retention {
        history: Duration::ZERO,
        dead_letters: None,
    };
    journal
        .purge(Duration::from_secs(3600), keep_dead)
        .await
        .unwrap();
    assert_eq!(
        page_ids(&list(journal, |_| {}).await),
        ["k:2", "k:1"],
        "the delivered event left; the retrying and the dead one stay"
    );
    assert!(journal.history_event("k:0").await.unwrap().is_none());
    assert!(
        matches!(
            journal
                .append(delivery("k", &["record.updated"]))
                .await
                .unwrap(),
            AppendOutcome::Duplicate
        ),
        "the delivery key is kept for `keep`"
    );
    journal
        .append_malformed(MalformedDelivery {
            key: None,
            received_at: Utc::now(),
            request_id: None,
            reason: "not JSON".to_string(),
            body: b"x".to_vec(),
        })
        .await
        .unwrap();
    // Dead letters and unparsed deliveries go by their own window, even when the history's is
    // longer.
    let short_dead_letter_window = Retention {
        history: Duration::from_secs(3600),
        dead_letters: Some(Duration::ZERO),
    };
    // Kept by time of death (or receipt), to the microsecond: let that time pass.
    tokio::time::sleep(Duration::from_millis(5)).await;
    journal
        .purge(Duration::from_secs(3600), short_dead_letter_window)
        .await
        .unwrap();
    assert!(journal.dead_letters(10).await.unwrap().is_empty());
    assert!(journal.history_event("k:2").await.unwrap().is_none());
    assert!(
        journal.unparsed(10, None).await.unwrap().is_empty(),
        "the unparsed delivery left with the dead letters"
    );
    assert_eq!(
        page_ids(&list(journal, |_| {}).await),
        ["k:1"],
        "a pending event is never purged"
    );
    assert_eq!(journal.backlog(), 1);
}

async fn the_backlog_counts_pending_events_only(journal: &Journal) {
    assert_eq!(journal.backlog(), 0);
    assert!(journal.oldest_pending_age().await.unwrap().is_none());
    journal.probe().await.unwrap();
    let deferred = stored(journal, "a", 2).await.remove(1);
    stored(journal, "b", 2).await;
    assert_eq!(journal.backlog(), 4);
    let age = journal.oldest_pending_age().await.unwrap().unwrap();
    assert!(age < Duration::from_secs(60), "{age:?}");
    journal
        .complete("a:0", AttemptRecord::default())
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 3, "complete: one fewer");
    let later = Utc::now() + chrono::Duration::hours(1);
    journal
        .reschedule(&deferred.id, &standing(&deferred), later, Some("deferred"))
        .await
        .unwrap();
    journal
        .retry_sinks(
            "b:0",
            &progress(1, &[], &["out"]),
            later,
            &AttemptRecord::default(),
        )
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 3, "a retry or a deferral stays pending");
    dead_letter(journal, "b:1", &progress(1, &[], &["out"])).await;
    assert_eq!(journal.backlog(), 2, "a dead letter: one fewer");
    assert!(
        journal.due(10).await.unwrap().is_empty(),
        "neither the retry nor the deferral is due before its time"
    );
    journal
        .replay(&ReplaySelection::All, None, false)
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 3, "a replay: one more");
    journal.probe().await.unwrap();
    assert_eq!(journal.backlog(), 3, "a probe leaves it as it is");
}
