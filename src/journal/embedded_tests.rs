//! The embedded journal's own behaviour, beyond the contract both backends keep
//! (`tests/it/journal_contract.rs`): reopening, the journal's id, group commit, other processes
//! writing the same file, and migrating an older database.

use super::*;
use crate::journal::history::EventStatus;
use crate::journal::sqlite::SCHEMA;
use crate::journal::test_delivery as delivery;

#[tokio::test]
async fn appended_events_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite3");
    let journal = SqliteJournal::open(&path).unwrap();
    let AppendOutcome::Stored(events) = journal.append(delivery("k1", 2)).await.unwrap() else {
        panic!("expected stored");
    };
    assert_eq!(events[1].id, "k1:1");
    journal.close().await;
    let journal = SqliteJournal::open(&path).unwrap();
    assert_eq!(journal.backlog(), 2);
    let due = journal.due(10).await.unwrap();
    assert_eq!(due, events);
}

#[tokio::test]
async fn a_copied_journal_takes_its_own_id_and_a_moved_one_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("j.sqlite3");
    let journal = SqliteJournal::open(&original).unwrap();
    let id = journal.id().to_string();
    journal.close().await;

    let journal = SqliteJournal::open(&original).unwrap();
    assert_eq!(journal.id(), id, "reopening keeps the id");
    journal.close().await;

    let moved = dir.path().join("moved.sqlite3");
    std::fs::rename(&original, &moved).unwrap();
    let journal = SqliteJournal::open(&moved).unwrap();
    assert_eq!(
        journal.id(),
        id,
        "a move within the file system keeps the id"
    );
    journal.close().await;

    let copy = dir.path().join("copy.sqlite3");
    std::fs::copy(&moved, &copy).unwrap();
    let copied = SqliteJournal::open(&copy).unwrap();
    let copy_id = copied.id().to_string();
    assert_ne!(copy_id, id, "a copy takes an id of its own");
    copied.close().await;
    let journal = SqliteJournal::open(&moved).unwrap();
    assert_eq!(journal.id(), id, "the original keeps its id");
    journal.close().await;
    let copied = SqliteJournal::open(&copy).unwrap();
    assert_eq!(
        copied.id(),
        copy_id,
        "the copy keeps its new id from then on"
    );
}

#[tokio::test]
async fn concurrent_appends_are_group_committed_and_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(&dir.path().join("j.sqlite3")).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            journal.append(delivery(&format!("k{i}"), 1)).await
        }));
    }
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Ok(AppendOutcome::Stored(_))));
    }
    assert_eq!(journal.backlog(), 200);
    assert_eq!(journal.due(1000).await.unwrap().len(), 200);
}

fn progress(attempts: u32, done: &[&str], failed: &[&str]) -> SinkProgress {
    SinkProgress {
        attempts,
        last_error: format!("{}: boom", failed.join(",")),
        sinks_done: done.iter().map(|s| s.to_string()).collect(),
        sink_attempts: failed.iter().map(|s| (s.to_string(), attempts)).collect(),
        sinks_failed: failed.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_replay_by_another_process_is_counted_in_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite3");
    let daemon = SqliteJournal::open(&path).unwrap();
    daemon.append(delivery("k", 1)).await.unwrap();
    daemon
        .dead_letter_sinks("k:0", &progress(1, &[], &["a"]), &AttemptRecord::default())
        .await
        .unwrap();
    assert_eq!(daemon.backlog(), 0);
    // The CLI opens its own connection while the daemon's is open.
    let cli = SqliteJournal::open(&path).unwrap();
    let report = cli
        .replay(&ReplaySelection::All, None, false)
        .await
        .unwrap();
    assert_eq!(report.replayed, vec!["k:0"]);
    cli.close().await;
    let due = daemon.due(10).await.unwrap();
    assert_eq!(due.len(), 1, "the daemon sees the replayed event");
    assert_eq!(daemon.backlog(), 1, "and counts it");
    daemon
        .complete("k:0", AttemptRecord::default())
        .await
        .unwrap();
    assert_eq!(daemon.backlog(), 0);
}

#[tokio::test]
async fn a_journal_from_before_per_sink_attempts_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite3");
    let old = Connection::open(&path).unwrap();
    let old_schema = SCHEMA.replace(",\n    sink_attempts TEXT NOT NULL DEFAULT '{}'", "");
    assert!(!old_schema.contains("sink_attempts"));
    old.execute_batch(&old_schema).unwrap();
    old.execute(
        "INSERT INTO events (id, delivery_key, idx, event_type, received_at, event)
         VALUES ('k:0', 'k', 0, 'record.updated', 'now', '{}')",
        [],
    )
    .unwrap();
    drop(old);
    let journal = SqliteJournal::open(&path).unwrap();
    let due = journal.due(10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].sink_attempts.is_empty());
}

/// What a machine that stops at once leaves of `path`: the files as they are on disk.
fn crash_copy(path: &std::path::Path, to: &std::path::Path) {
    for suffix in ["", "-wal", ".redo"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut into = to.as_os_str().to_owned();
        into.push(suffix);
        if std::path::Path::new(&from).exists() {
            std::fs::copy(&from, &into).unwrap();
        }
    }
}

#[tokio::test]
async fn answered_writes_that_were_not_committed_yet_come_back_from_the_redo_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite3");
    let hold = CommitPolicy {
        interval: Duration::from_secs(3600),
        idle: Duration::from_secs(3600),
        ..CommitPolicy::default()
    };
    let journal = SqliteJournal::open_owned_with_policy(&path, hold).unwrap();
    for key in ["a", "b", "c"] {
        assert!(matches!(
            journal.append(delivery(key, 1)).await.unwrap(),
            AppendOutcome::Stored(_)
        ));
    }
    let record = AttemptRecord {
        sinks_done: vec!["file".to_string()],
        ..AttemptRecord::default()
    };
    journal.complete("b:0", record).await.unwrap();
    assert_eq!(journal.backlog(), 2);

    // Every answer above was given while the writer still held its transaction open.
    let crashed = dir.path().join("crashed.sqlite3");
    crash_copy(&path, &crashed);
    let tool = SqliteJournal::open(&crashed).unwrap();
    assert_eq!(tool.backlog(), 0, "the database alone holds none of it");
    tool.close().await;

    let lock = JournalLock::acquire(&crashed).unwrap();
    let recovered = SqliteJournal::open_owned(&crashed, SyncMode::Full, &lock).unwrap();
    assert_eq!(recovered.backlog(), 2);
    let mut due: Vec<String> = recovered
        .due(10)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.id)
        .collect();
    due.sort();
    assert_eq!(due, vec!["a:0", "c:0"]);
    let delivered = recovered.history_event("b:0").await.unwrap().unwrap();
    assert_eq!(delivered.status, EventStatus::Delivered);
    // Applied once: a second start finds nothing more to apply.
    recovered.close().await;
    let again = SqliteJournal::open_owned(&crashed, SyncMode::Full, &lock).unwrap();
    assert_eq!(again.backlog(), 2);
    assert!(matches!(
        again.append(delivery("a", 1)).await.unwrap(),
        AppendOutcome::Duplicate
    ));
    again.close().await;
    journal.close().await;
}

#[tokio::test]
async fn a_history_read_sees_every_write_answered_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let hold = CommitPolicy {
        interval: Duration::from_secs(3600),
        idle: Duration::from_secs(3600),
        ..CommitPolicy::default()
    };
    let journal =
        SqliteJournal::open_owned_with_policy(&dir.path().join("j.sqlite3"), hold).unwrap();
    journal.append(delivery("seen", 1)).await.unwrap();
    let page = journal.history(&HistoryQuery::default()).await.unwrap();
    assert_eq!(page.data.len(), 1);
    journal.close().await;
}

#[tokio::test]
async fn the_purge_forgets_the_oldest_delivery_keys_and_keeps_the_younger_ones() {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(&dir.path().join("j.sqlite3")).unwrap();
    let hours_ago = |hours: i64| Utc::now() - chrono::Duration::hours(hours);
    // Received in this order: two old keys, then a young one.
    for (key, received_at) in [
        ("old-1", hours_ago(5)),
        ("old-2", hours_ago(4)),
        ("young", hours_ago(1)),
    ] {
        let mut delivery = delivery(key, 0);
        delivery.received_at = received_at;
        journal.append(delivery).await.unwrap();
    }
    let retention = Retention {
        history: Duration::from_secs(7 * 24 * 3600),
        dead_letters: None,
    };
    let purged = journal
        .purge(Duration::from_secs(2 * 3600), retention)
        .await
        .unwrap();
    assert_eq!(purged, 2);
    // A forgotten key is stored again; a kept one is still a duplicate.
    assert!(matches!(
        journal.append(delivery("old-1", 0)).await.unwrap(),
        AppendOutcome::Stored(_)
    ));
    assert!(matches!(
        journal.append(delivery("young", 0)).await.unwrap(),
        AppendOutcome::Duplicate
    ));
    journal.close().await;
}

fn held_open() -> CommitPolicy {
    CommitPolicy {
        interval: Duration::from_secs(3600),
        idle: Duration::from_secs(3600),
        ..CommitPolicy::default()
    }
}

#[tokio::test]
async fn reads_and_updates_in_the_open_transaction_see_the_events_whose_rows_wait() {
    let dir = tempfile::tempdir().unwrap();
    let journal =
        SqliteJournal::open_owned_with_policy(&dir.path().join("j.sqlite3"), held_open()).unwrap();
    journal.append(delivery("k", 3)).await.unwrap();
    journal
        .complete("k:0", AttemptRecord::default())
        .await
        .unwrap();
    // A second completion of the same event changes nothing, nor the backlog.
    journal
        .complete("k:0", AttemptRecord::default())
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 2);
    let due: Vec<String> = journal
        .due(10)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.id)
        .collect();
    assert_eq!(due, vec!["k:1", "k:2"]);
    journal
        .reschedule(
            "k:1",
            &progress(1, &[], &["a"]),
            Utc::now() + chrono::Duration::hours(1),
            Some("a: boom"),
        )
        .await
        .unwrap();
    journal.append(delivery("later", 1)).await.unwrap();
    journal
        .complete("k:2", AttemptRecord::default())
        .await
        .unwrap();
    assert_eq!(journal.backlog(), 2);
    let due: Vec<String> = journal
        .due(10)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.id)
        .collect();
    assert_eq!(due, vec!["later:0"], "k:1 waits for its next attempt");
    for (id, status) in [
        ("k:0", EventStatus::Delivered),
        ("k:1", EventStatus::Retrying),
        ("k:2", EventStatus::Delivered),
        ("later:0", EventStatus::Pending),
    ] {
        let event = journal.history_event(id).await.unwrap().unwrap();
        assert_eq!(event.status, status, "{id}");
    }
    journal.close().await;
}

#[tokio::test]
async fn when_the_rows_that_waited_cannot_be_written_nothing_answered_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite3");
    SqliteJournal::open(&path).unwrap().close().await;
    // Stands in for a disk that refuses the write: inserting this event's row fails.
    let refuse = "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.id = 'bad:0'
                  BEGIN SELECT RAISE(ABORT, 'refused'); END";
    Connection::open(&path)
        .unwrap()
        .execute_batch(refuse)
        .unwrap();

    let journal = SqliteJournal::open_owned_with_policy(&path, held_open()).unwrap();
    for key in ["ok", "bad"] {
        assert!(matches!(
            journal.append(delivery(key, 1)).await.unwrap(),
            AppendOutcome::Stored(_)
        ));
    }
    // The first operation that is neither an append nor a completion writes the rows first.
    assert!(journal.probe().await.is_err());
    assert!(
        journal.due(10).await.is_err(),
        "the redo log cannot be applied while the row is refused"
    );
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TRIGGER refuse")
        .unwrap();
    let mut due: Vec<String> = journal
        .due(10)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.id)
        .collect();
    due.sort();
    assert_eq!(
        due,
        vec!["bad:0", "ok:0"],
        "both answered appends came back"
    );
    assert_eq!(journal.backlog(), 2);
    journal.close().await;
}
