//! The schema's indexes: the hot queries use the small indexes of the events not delivered, and
//! a database of an earlier version trades its indexes of every event for them.

use super::*;

fn migrated(extra: &str) -> Connection {
    let mut connection = Connection::open_in_memory().unwrap();
    connection.execute_batch(SCHEMA).unwrap();
    connection.execute_batch(extra).unwrap();
    migrate(&mut connection, "test").unwrap();
    connection
}

/// SQLite's plan for `sql`, one line per step.
fn plan(connection: &Connection, sql: &str, params: usize) -> String {
    let explain = format!("EXPLAIN QUERY PLAN {sql}");
    let mut statement = connection.prepare(&explain).unwrap();
    let nulls = vec![rusqlite::types::Value::Null; params];
    let rows = statement
        .query_map(rusqlite::params_from_iter(nulls), |row| {
            row.get::<_, String>(3)
        })
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
}

fn indexes(connection: &Connection) -> Vec<String> {
    let mut statement = connection
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap();
    let rows = statement.query_map([], |row| row.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn the_worker_and_backlog_queries_read_the_indexes_of_events_not_delivered() {
    let connection = migrated("");
    assert!(plan(&connection, DUE, 2).contains("INDEX events_pending_due"));
    for (sql, params) in [(COUNT_PENDING, 0), (OLDEST_PENDING, 0), (DEAD_LETTERS, 4)] {
        let plan = plan(&connection, sql, params);
        assert!(plan.contains("INDEX events_open"), "{sql}:\n{plan}");
    }
}

#[test]
fn the_history_filters_of_events_not_delivered_read_their_index() {
    let connection = migrated("");
    for status in [
        EventStatus::Pending,
        EventStatus::Retrying,
        EventStatus::Dead,
    ] {
        let query = HistoryQuery {
            status: Some(status),
            ..HistoryQuery::default()
        };
        let (clause, params) = query.sql();
        let sql = format!("SELECT seq FROM events WHERE {clause} ORDER BY seq DESC LIMIT ?");
        let plan = plan(&connection, &sql, params.len() + 1);
        assert!(plan.contains("INDEX events_open"), "{status:?}:\n{plan}");
    }
}

#[test]
fn a_database_of_an_earlier_version_trades_its_indexes_of_every_event_for_the_small_ones() {
    let connection = migrated(
        "CREATE INDEX events_due ON events(state, next_attempt_unix_ms, seq);
         CREATE INDEX events_state_seq ON events(state, seq);
         CREATE INDEX deliveries_age ON deliveries(received_unix_ms);",
    );
    assert_eq!(
        indexes(&connection),
        ["events_open", "events_pending_due", "events_record_id"]
    );
}
