//! Tests of `worker::order`.

use std::time::Duration;

use super::*;

fn record(id: &str) -> Option<Subject> {
    Some(Subject::Record {
        object_id: "o".into(),
        record_id: id.into(),
    })
}

#[tokio::test]
async fn a_later_event_about_the_same_record_waits_until_the_earlier_one_is_done() {
    let order = DeliveryOrder::default();
    let first = order.enter("k", 0);
    let second = order.enter("k", 1);
    first.wait_turn(|| record("a")).await;
    let waiting = tokio::spawn(async move {
        second.wait_turn(|| record("a")).await;
        second
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "it waits for the first");
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("released once the first is done")
        .unwrap();
    drop(second);
    assert!(order.is_empty(), "finished deliveries are forgotten");
}

#[tokio::test]
async fn events_about_different_records_do_not_wait_for_each_other() {
    let order = DeliveryOrder::default();
    let first = order.enter("k", 0);
    let second = order.enter("k", 1);
    first.wait_turn(|| record("a")).await;
    tokio::time::timeout(Duration::from_secs(5), second.wait_turn(|| record("b")))
        .await
        .expect("a different record goes at once");
}

#[tokio::test]
async fn a_later_event_waits_for_an_earlier_one_whose_subject_is_not_known_yet() {
    let order = DeliveryOrder::default();
    let first = order.enter("k", 0);
    let second = order.enter("k", 1);
    let waiting = tokio::spawn(async move { second.wait_turn(|| record("b")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "the first may be about the same record"
    );
    first.wait_turn(|| record("a")).await;
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("released once the first says it is about another record")
        .unwrap();
}

#[tokio::test]
async fn other_deliveries_are_not_ordered() {
    let order = DeliveryOrder::default();
    let _first = order.enter("k", 0);
    let other = order.enter("j", 1);
    tokio::time::timeout(Duration::from_secs(5), other.wait_turn(|| record("a")))
        .await
        .expect("another delivery goes at once");
}

#[tokio::test]
async fn a_lone_event_makes_no_channel() {
    let order = DeliveryOrder::default();
    let only = order.enter("k", 0);
    only.wait_turn(|| record("a")).await;
    let made = order
        .lock()
        .get("k")
        .map(|slots| slots.iter().filter(|slot| slot.stage.is_some()).count());
    assert_eq!(made, Some(0));
}

#[tokio::test]
async fn an_event_that_went_alone_holds_up_a_later_one_until_it_is_done() {
    let order = DeliveryOrder::default();
    let first = order.enter("k", 0);
    // Alone when it looked: it went without saying what it is about.
    first.wait_turn(|| record("a")).await;
    let second = order.enter("k", 1);
    let waiting = tokio::spawn(async move { second.wait_turn(|| record("b")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "the first never said what it is about: it may be the same record"
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("released once the first is done")
        .unwrap();
}
