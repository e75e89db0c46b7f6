//! Tests of `worker::collapse`.

use super::*;

fn member(id: &str, attribute: Option<&str>, sinks: &[&str]) -> Member {
    let json = serde_json::json!({"id": id, "event_type": "record.updated", "data": {"v": 1}});
    Member {
        event_id: id.to_string(),
        position: 0,
        attribute: attribute.map(str::to_string),
        line: SinkLine {
            id: Arc::from(id),
            event_type: Arc::from("record.updated"),
            json: bytes::Bytes::from(serde_json::to_vec(&json).unwrap()),
        },
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
    }
}

fn flight(number: u64, members: usize) -> Joined {
    Joined {
        leader: false,
        flight: number,
        members,
        position: 0,
    }
}

#[tokio::test]
async fn the_first_member_with_sinks_leads_and_gathers_everyone() {
    let collapser = Collapser::default();
    let f = flight(7, 3);
    assert!(matches!(collapser.arrive(&f, None), Role::Counted));
    let Role::Leader(leader) = collapser.arrive(&f, Some(member("b", Some("stage"), &["s"])))
    else {
        panic!("the first member with sinks leads");
    };
    let Role::Follower(follower) = collapser.arrive(&f, Some(member("c", Some("amount"), &["s"])))
    else {
        panic!("later members follow");
    };
    let started = tokio::time::Instant::now();
    let gathered = leader.gather().await;
    assert!(started.elapsed() < GATHER, "a complete group does not wait");
    let ids: Vec<&str> = gathered
        .members
        .iter()
        .map(|m| m.event_id.as_str())
        .collect();
    assert_eq!(ids, ["b", "c"]);
    let mut results = Results::new();
    results.insert("s".into(), Ok(()));
    gathered.answer(&results);
    assert!(follower.await.unwrap()["s"].is_ok());
    assert!(collapser.lock().is_empty(), "the group is closed");
}

#[tokio::test]
async fn a_member_that_never_arrives_holds_the_leader_only_until_the_gather_limit() {
    let collapser = Collapser::default();
    let f = flight(1, 2);
    let Role::Leader(leader) = collapser.arrive(&f, Some(member("a", None, &["s"]))) else {
        panic!("leads");
    };
    let gathered = leader.gather().await;
    assert_eq!(gathered.members.len(), 1);
    // A latecomer finds no group: it starts one of its own and leads it.
    assert!(matches!(
        collapser.arrive(&f, Some(member("b", None, &["s"]))),
        Role::Leader(_)
    ));
}

#[test]
fn the_collapsed_line_lists_each_attribute_once_and_every_event() {
    let a = member("k:0", Some("stage"), &["s"]);
    let b = member("k:1", Some("amount"), &["s"]);
    let c = member("k:2", Some("stage"), &["s"]);
    let line = collapsed_line(&[&a, &b, &c]).unwrap();
    let json: Value = serde_json::from_slice(&line.json).unwrap();
    assert_eq!(&*line.id, "k:0");
    assert_eq!(json["id"], "k:0");
    assert_eq!(
        json["changed_attributes"],
        serde_json::json!(["stage", "amount"])
    );
    assert_eq!(
        json["collapsed_event_ids"],
        serde_json::json!(["k:0", "k:1", "k:2"])
    );
    assert_eq!(json["data"], serde_json::json!({"v": 1}));
}
