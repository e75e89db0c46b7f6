use super::*;

fn record(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n}}}").into_bytes()
}

fn write(log: &mut RedoLog, payloads: &[Vec<u8>]) {
    for payload in payloads {
        log.stage(payload);
    }
    log.write_staged().unwrap();
}

#[test]
fn written_records_are_read_back_after_the_committed_lsn_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let mut log = RedoLog::open(&journal, true).unwrap();
    write(&mut log, &[record(1), record(2)]);
    write(&mut log, &[record(3)]);
    let bytes = std::fs::read(path_for(&journal)).unwrap();
    let all: Vec<u64> = read_records(&bytes, 0)
        .iter()
        .map(|(lsn, _)| *lsn)
        .collect();
    assert_eq!(all, vec![1, 2, 3]);
    let payloads: Vec<&[u8]> = read_records(&bytes, 0)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        payloads,
        vec![&record(1)[..], &record(2)[..], &record(3)[..]]
    );
    // The log starts where the database's last commit left it: records at or below that LSN
    // are an old run of the log, and nothing after them counts.
    assert!(read_records(&bytes, 3).is_empty());
}

#[test]
fn a_torn_last_record_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let mut log = RedoLog::open(&journal, true).unwrap();
    write(&mut log, &[record(1), record(2)]);
    let path = path_for(&journal);
    let mut bytes = std::fs::read(&path).unwrap();
    // Cut the second record short, then damage a byte of what is left of it.
    bytes.truncate(bytes.len() - 3);
    assert_eq!(read_records(&bytes, 0).len(), 1);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    assert_eq!(read_records(&bytes, 0).len(), 1);
}

#[test]
fn after_a_restart_the_older_records_beyond_the_end_are_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let mut log = RedoLog::open(&journal, true).unwrap();
    write(&mut log, &[record(1), record(2), record(3), record(4)]);
    // The database committed 1..=4; the log starts again and gets one shorter record.
    log.restart_after(4);
    write(&mut log, &[b"{}".to_vec()]);
    let bytes = std::fs::read(path_for(&journal)).unwrap();
    let read: Vec<u64> = read_records(&bytes, 4)
        .iter()
        .map(|(lsn, _)| *lsn)
        .collect();
    assert_eq!(read, vec![5]);
    // A crash before anything was written after the restart: the old records all lie at or
    // below the committed LSN.
    let mut log = RedoLog::open(&journal, true).unwrap();
    log.restart_after(5);
    assert!(log.read_after(5).unwrap().is_empty());
}

#[test]
fn discarded_records_give_their_lsns_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RedoLog::open(&dir.path().join("journal.db"), false).unwrap();
    assert_eq!(log.stage(&record(1)), 1);
    log.discard_staged();
    assert_eq!(log.last_lsn(), 0);
    assert_eq!(log.stage(&record(1)), 1);
}

#[test]
fn append_and_complete_records_decode_to_what_was_encoded() {
    let delivery = NewDelivery {
        key: "k".to_string(),
        key_derived: false,
        webhook_id: Some("w".to_string()),
        received_at: Utc::now(),
        request_id: None,
        events: vec![crate::event::ParsedEvent {
            event_type: "task.created".to_string(),
            raw: r#"{"event_type":"task.created"}"#.to_string(),
        }],
    };
    let decoded = decode(&encode_append(&delivery)).unwrap();
    assert_eq!(decoded, RedoRecord::Append(delivery));
    let record = AttemptRecord {
        sinks_done: vec!["file".to_string()],
        ..AttemptRecord::default()
    };
    let at = Utc::now();
    let decoded = decode(&encode_complete("k:0", at, &record)).unwrap();
    assert_eq!(
        decoded,
        RedoRecord::Complete {
            id: "k:0".to_string(),
            delivered_at: at,
            record,
        }
    );
}

#[test]
fn a_damaged_append_record_is_refused_not_misread() {
    let delivery = NewDelivery {
        key: "k".to_string(),
        key_derived: true,
        webhook_id: None,
        received_at: Utc::now(),
        request_id: Some("r".to_string()),
        events: Vec::new(),
    };
    let payload = encode_append(&delivery);
    for cut in 1..payload.len() {
        assert!(decode(&payload[..cut]).is_err(), "cut at {cut}");
    }
}
