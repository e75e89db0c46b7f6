//! A jsonl sink file that a killed process left with a torn last line: the next line the daemon
//! appends starts on a line of its own, so it stays readable and the fragment stays detectable.

use std::time::Duration;

use super::{jsonl_sink, read_sink};
use crate::helpers::{record_updated_body, TestApp};

#[tokio::test]
async fn a_torn_last_line_in_a_jsonl_sink_is_not_glued_to_the_next_event() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("torn.jsonl");
    // One whole line, then the start of a line cut by a SIGKILL in the middle of a write.
    std::fs::write(&sink, "{\"id\":\"whole:0\"}\n{\"id\":\"torn:0\",\"event_ty").unwrap();
    let app = TestApp::builder().routes(&jsonl_sink(&sink)).spawn().await;
    let response = app
        .post_signed(&record_updated_body(1), Some("after"))
        .await;
    assert_eq!(response.status(), 200);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let file = loop {
        let file = read_sink(&sink);
        if file.lines.len() >= 2 || std::time::Instant::now() > deadline {
            break file;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ids: Vec<&str> = file.lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(
        ids,
        ["whole:0", "after:0"],
        "the new event is a line of its own"
    );
    assert_eq!(
        file.torn,
        ["{\"id\":\"torn:0\",\"event_ty"],
        "the fragment stays apart"
    );
}
