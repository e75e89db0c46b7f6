//! The Redis journal's own behaviour, beyond the contract both backends keep
//! (`tests/it/journal_contract.rs`): replicas sharing one queue, leases, reclaiming and handing
//! back, and Redis losing its keys. These talk to the real Redis on 127.0.0.1:6379, each under its
//! own key prefix.

use super::*;
use crate::journal::test_delivery as delivery;
use secrecy::SecretString;

const LEASE: Duration = Duration::from_millis(300);

fn journal(prefix: &str) -> RedisJournal {
    let url = SecretString::from("redis://127.0.0.1:6379");
    let connection = crate::dedupe::redis::connect(&url).unwrap();
    RedisJournal::new(connection, prefix, LEASE, Duration::from_secs(3600))
}

fn prefix() -> String {
    format!("unit-{}", uuid::Uuid::new_v4().simple())
}

/// Where `event` stands with its sinks, as the worker hands it to `reschedule`.
fn standing(event: &JournaledEvent) -> SinkProgress {
    SinkProgress {
        attempts: event.attempts,
        sinks_done: event.sinks_done.clone(),
        ..SinkProgress::default()
    }
}

fn ids(events: &[JournaledEvent]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    ids
}

async fn stored(journal: &RedisJournal, key: &str, events: usize) -> Vec<JournaledEvent> {
    match journal.append(delivery(key, events)).await.unwrap() {
        AppendOutcome::Stored(events) => events,
        AppendOutcome::Duplicate => panic!("expected {key} to be stored"),
    }
}

#[tokio::test]
async fn appended_events_are_handed_out_once_exactly_as_stored() {
    let journal = journal(&prefix());
    let events = stored(&journal, "k1", 2).await;
    assert_eq!(events[1].id, "k1:1");
    assert_eq!(journal.backlog(), 2);
    let due = journal.due(10).await.unwrap();
    assert_eq!(due, events);
    assert!(
        journal.due(10).await.unwrap().is_empty(),
        "read entries stay with this consumer until their outcome or the lease"
    );
}

#[tokio::test]
async fn a_delivery_key_is_stored_once_across_replicas() {
    let prefix = prefix();
    let first = journal(&prefix);
    let second = journal(&prefix);
    stored(&first, "k", 1).await;
    assert!(matches!(
        second.append(delivery("k", 1)).await.unwrap(),
        AppendOutcome::Duplicate
    ));
    assert_eq!(ids(&second.due(10).await.unwrap()), vec!["k:0"]);
    assert!(first.due(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn replicas_share_the_queue_without_handing_out_an_event_twice() {
    let prefix = prefix();
    let first = journal(&prefix);
    let second = journal(&prefix);
    for n in 0..20 {
        stored(&first, &format!("k{n}"), 1).await;
    }
    let mut all = first.due(7).await.unwrap();
    assert_eq!(all.len(), 7);
    all.extend(second.due(100).await.unwrap());
    all.extend(first.due(100).await.unwrap());
    let mut ids = ids(&all);
    assert_eq!(ids.len(), 20);
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert_eq!(second.backlog(), 20, "backlog is shared");
}

#[tokio::test]
async fn complete_removes_the_event_and_lowers_the_backlog() {
    let prefix = prefix();
    let journal = journal(&prefix);
    stored(&journal, "k", 2).await;
    journal.due(10).await.unwrap();
    journal
        .complete("k:0", AttemptRecord::default())
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 1);
    journal
        .complete("k:0", AttemptRecord::default())
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 1, "completing twice counts once");
    let mut redis = journal.connection();
    let length: u64 = redis::cmd("XLEN")
        .arg(format!("{{{prefix}}}:events"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(length, 1, "the finished entry is deleted from the stream");
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        ids(&journal.due(10).await.unwrap()),
        vec!["k:1"],
        "only the unfinished one comes back after the lease"
    );
}

#[tokio::test]
async fn reschedule_hides_the_event_until_its_time_and_keeps_its_progress() {
    let journal = journal(&prefix());
    stored(&journal, "k", 1).await;
    let mut event = journal.due(10).await.unwrap().remove(0);
    (event.attempts, event.sinks_done) = (1, vec!["a".to_string()]);
    let soon = Utc::now() + chrono::Duration::milliseconds(1200);
    journal
        .reschedule(&event.id, &standing(&event), soon, Some("boom"))
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 1);
    tokio::time::sleep(LEASE * 2).await;
    assert!(
        journal.due(10).await.unwrap().is_empty(),
        "a retry is not reclaimed before its time"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let due = journal.due(10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].sinks_done, vec!["a"]);
    assert!(
        journal.due(10).await.unwrap().is_empty(),
        "a retry being worked on is hidden"
    );
}

#[tokio::test]
async fn a_retry_taken_by_a_crashed_replica_comes_back_after_the_lease() {
    let prefix = prefix();
    let crashed = journal(&prefix);
    stored(&crashed, "k", 1).await;
    let event = crashed.due(10).await.unwrap().remove(0);
    crashed
        .reschedule(&event.id, &standing(&event), Utc::now(), None)
        .await
        .unwrap();
    assert_eq!(crashed.due(10).await.unwrap().len(), 1);
    drop(crashed);
    let survivor = journal(&prefix);
    assert!(survivor.due(10).await.unwrap().is_empty());
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert_eq!(ids(&survivor.due(10).await.unwrap()), vec!["k:0"]);
}

#[tokio::test]
async fn entries_left_by_a_crashed_replica_are_reclaimed_after_the_lease() {
    let prefix = prefix();
    let crashed = journal(&prefix);
    stored(&crashed, "k", 3).await;
    assert_eq!(crashed.due(10).await.unwrap().len(), 3);
    drop(crashed);
    let survivor = journal(&prefix);
    assert!(
        survivor.due(10).await.unwrap().is_empty(),
        "not before the lease"
    );
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let reclaimed = survivor.due(10).await.unwrap();
    assert_eq!(ids(&reclaimed), vec!["k:0", "k:1", "k:2"]);
    for event in &reclaimed {
        survivor
            .complete(&event.id, AttemptRecord::default())
            .await
            .unwrap();
    }
    assert_eq!(survivor.backlog(), 0);
}

#[tokio::test]
async fn closing_hands_unfinished_entries_to_the_other_replicas_at_once() {
    let prefix = prefix();
    let leaving = journal(&prefix);
    stored(&leaving, "k", 2).await;
    assert_eq!(leaving.due(10).await.unwrap().len(), 2);
    leaving
        .complete("k:0", AttemptRecord::default())
        .await
        .unwrap();
    leaving.close().await;
    let other = journal(&prefix);
    assert_eq!(ids(&other.due(10).await.unwrap()), vec!["k:1"]);
}

#[tokio::test]
async fn probe_fails_while_redis_is_unreachable() {
    let url = SecretString::from("redis://127.0.0.1:1");
    let connection = crate::dedupe::redis::connect(&url).unwrap();
    let journal = RedisJournal::new(connection, &prefix(), LEASE, LEASE);
    assert!(journal.probe().await.is_err());
    assert!(journal.append(delivery("k", 1)).await.is_err());
    assert!(journal.due(10).await.is_err());
    let healthy = self::journal(&prefix());
    healthy.probe().await.unwrap();
}

#[tokio::test]
async fn the_queue_comes_back_after_its_keys_were_lost() {
    let prefix = prefix();
    let journal = journal(&prefix);
    stored(&journal, "a", 1).await;
    journal.due(10).await.unwrap();
    // Redis restarted without persistence: the stream and its group are gone.
    let mut redis = journal.connection();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{{{prefix}}}:events"))
        .query_async(&mut redis)
        .await
        .unwrap();
    stored(&journal, "b", 1).await;
    assert_eq!(ids(&journal.due(10).await.unwrap()), vec!["b:0"]);
}

#[test]
fn every_key_carries_the_prefix_hash_tag() {
    let keys = Keys::new("p");
    for key in [
        keys.stream(),
        keys.event("d:0"),
        keys.retry(),
        keys.dead(),
        keys.delivery("d"),
        keys.pending(),
        keys.dead_deliveries(),
        keys.dead_delivery_seq(),
        keys.probe(),
        format!("{}1", keys.dead_delivery_prefix()),
    ] {
        assert!(key.starts_with("{p}:"), "{key}");
    }
}
