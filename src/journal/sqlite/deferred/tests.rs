//! Rows kept back until the commit end up as the append and the completion written at once
//! would leave them.

use std::collections::BTreeMap;

use rusqlite::{Connection, TransactionBehavior};

use super::*;
use crate::journal::sqlite::{append as append_now, complete as complete_now, SCHEMA};
use crate::journal::test_delivery as delivery;

fn journal() -> Connection {
    let mut connection = Connection::open_in_memory().unwrap();
    connection.execute_batch(SCHEMA).unwrap();
    crate::journal::sqlite::migrate(&mut connection, "test").unwrap();
    connection
}

/// A completion that sets every column a completion writes.
fn full_record() -> AttemptRecord {
    AttemptRecord {
        enrichment: Some("ok".to_string()),
        object: Some("people".to_string()),
        list: Some("sales".to_string()),
        record_id: Some("rec-1".to_string()),
        data: Some(r#"{"name":"Ada"}"#.to_string()),
        data_omitted: false,
        sinks_done: vec!["file".to_string(), "hook".to_string()],
        sink_errors: BTreeMap::from([("hook".to_string(), "HTTP 503 once".to_string())]),
        sinks_delivered: BTreeMap::from([
            (
                "file".to_string(),
                "2026-12-07T10:00:00.000001Z".to_string(),
            ),
            (
                "hook".to_string(),
                "2026-12-07T10:00:01.000001Z".to_string(),
            ),
        ]),
    }
}

/// Every column of every event but `seq`, in `seq` order.
fn rows(connection: &Connection) -> Vec<Vec<rusqlite::types::Value>> {
    let mut statement = connection
        .prepare("SELECT * FROM events ORDER BY seq")
        .unwrap();
    let columns = statement.column_count();
    let rows = statement
        .query_map([], |row| {
            (1..columns)
                .map(|i| row.get(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn ids(connection: &Connection) -> Vec<String> {
    let mut statement = connection
        .prepare("SELECT id FROM events ORDER BY seq")
        .unwrap();
    let rows = statement.query_map([], |row| row.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn an_event_delivered_before_its_row_is_written_is_stored_as_both_writes_would_leave_it() {
    let delivered_at = Utc::now();
    let appended = delivery("k", 2);

    let mut at_once = journal();
    let tx = at_once.transaction().unwrap();
    append_now(&tx, appended.clone()).unwrap();
    assert_eq!(
        complete_now(&tx, "k:0", delivered_at, &full_record()).unwrap(),
        1
    );
    tx.commit().unwrap();

    let mut kept_back = journal();
    let tx = kept_back
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    let mut deferred = Deferred::default();
    let AppendOutcome::Stored(events) = append(&tx, appended, &mut deferred).unwrap() else {
        panic!("expected stored");
    };
    assert_eq!(events.len(), 2);
    assert_eq!(deferred.len(), 2);
    let count: i64 = tx
        .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 0, "the rows wait");
    assert_eq!(
        complete(&tx, "k:0", delivered_at, full_record(), &mut deferred).unwrap(),
        1
    );
    deferred.insert(&tx).unwrap();
    assert_eq!(deferred.len(), 0);
    tx.commit().unwrap();

    assert_eq!(rows(&kept_back), rows(&at_once));
    let states: Vec<String> = {
        let mut statement = kept_back
            .prepare("SELECT state FROM events ORDER BY seq")
            .unwrap();
        let rows = statement.query_map([], |row| row.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(states, vec!["delivered", "pending"]);
}

#[test]
fn a_completion_after_the_rows_were_written_updates_the_pending_row() {
    let delivered_at = Utc::now();
    let appended = delivery("k", 1);
    let mut at_once = journal();
    let tx = at_once.transaction().unwrap();
    append_now(&tx, appended.clone()).unwrap();
    complete_now(&tx, "k:0", delivered_at, &full_record()).unwrap();
    tx.commit().unwrap();

    let mut kept_back = journal();
    let tx = kept_back.transaction().unwrap();
    let mut deferred = Deferred::default();
    append(&tx, appended, &mut deferred).unwrap();
    deferred.insert(&tx).unwrap();
    assert_eq!(
        complete(&tx, "k:0", delivered_at, full_record(), &mut deferred).unwrap(),
        1
    );
    tx.commit().unwrap();
    assert_eq!(rows(&kept_back), rows(&at_once));
}

#[test]
fn a_second_completion_of_a_kept_back_event_changes_nothing() {
    let mut connection = journal();
    let tx = connection.transaction().unwrap();
    let mut deferred = Deferred::default();
    append(&tx, delivery("k", 1), &mut deferred).unwrap();
    let first = full_record();
    let mut second = full_record();
    second.sinks_done = vec!["other".to_string()];
    assert_eq!(
        complete(&tx, "k:0", Utc::now(), first, &mut deferred).unwrap(),
        1
    );
    assert_eq!(
        complete(&tx, "k:0", Utc::now(), second, &mut deferred).unwrap(),
        0
    );
    deferred.insert(&tx).unwrap();
    let sinks_done: String = tx
        .query_row(
            "SELECT sinks_done FROM events WHERE id = 'k:0'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        sinks_done, r#"["file","hook"]"#,
        "the first completion stays"
    );
}

#[test]
fn a_duplicate_delivery_and_an_event_already_kept_are_not_stored_again() {
    let mut connection = journal();
    let tx = connection.transaction().unwrap();
    let mut deferred = Deferred::default();
    append(&tx, delivery("k", 1), &mut deferred).unwrap();
    assert!(matches!(
        append(&tx, delivery("k", 1), &mut deferred).unwrap(),
        AppendOutcome::Duplicate
    ));
    deferred.insert(&tx).unwrap();
    // The key forgotten (after `dedupe.done_ttl`) while the event stays in the history.
    tx.execute("DELETE FROM deliveries WHERE key = 'k'", [])
        .unwrap();
    let AppendOutcome::Stored(events) = append(&tx, delivery("k", 2), &mut deferred).unwrap()
    else {
        panic!("a forgotten key is a new delivery");
    };
    assert_eq!(
        events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["k:1"],
        "only the event not kept yet"
    );
    deferred.insert(&tx).unwrap();
    assert_eq!(ids(&tx), vec!["k:0", "k:1"]);
}

#[test]
fn rows_are_written_in_the_order_they_were_appended() {
    let mut connection = journal();
    let tx = connection.transaction().unwrap();
    let mut deferred = Deferred::default();
    for key in ["c", "a", "b"] {
        append(&tx, delivery(key, 2), &mut deferred).unwrap();
    }
    complete(&tx, "a:1", Utc::now(), full_record(), &mut deferred).unwrap();
    deferred.insert(&tx).unwrap();
    append(&tx, delivery("0", 1), &mut deferred).unwrap();
    deferred.insert(&tx).unwrap();
    assert_eq!(
        ids(&tx),
        vec!["c:0", "c:1", "a:0", "a:1", "b:0", "b:1", "0:0"]
    );
}

#[test]
fn rows_forgotten_with_their_transaction_are_gone() {
    let mut connection = journal();
    let tx = connection.transaction().unwrap();
    let mut deferred = Deferred::default();
    append(&tx, delivery("k", 3), &mut deferred).unwrap();
    deferred.clear();
    assert_eq!(deferred.len(), 0);
    deferred.insert(&tx).unwrap();
    // The event is not kept back any more: its completion goes to the table, which lacks it.
    assert_eq!(
        complete(&tx, "k:0", Utc::now(), full_record(), &mut deferred).unwrap(),
        0
    );
    assert!(ids(&tx).is_empty());
}
