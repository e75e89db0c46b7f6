//! The Redis dedupe store against the real Redis on 127.0.0.1:6379, each test under its own key
//! prefix (deleted at the end).

use super::*;

const LEASE: Duration = Duration::from_secs(30);

fn prefix() -> String {
    format!("unit-dedupe-{}", uuid::Uuid::new_v4().simple())
}

fn store(prefix: &str) -> RedisDedupe {
    let url = SecretString::from("redis://127.0.0.1:6379");
    let connection = connect(&url).unwrap();
    RedisDedupe::new(connection, prefix, LEASE, Duration::from_secs(600))
}

async fn drop_keys(store: &RedisDedupe, ids: &[String]) {
    let mut connection = store.connection.clone();
    let keys: Vec<String> = ids.iter().map(|id| store.key(id)).collect();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_claim_is_fresh_then_in_progress_and_a_duplicate_once_done() {
    let store = store(&prefix());
    let id = "d:0".to_string();
    assert!(matches!(
        store.claim(&id).await.unwrap(),
        ClaimOutcome::Fresh(_)
    ));
    assert_eq!(store.claim(&id).await.unwrap(), ClaimOutcome::InProgress);
    store.mark_done(&id).await.unwrap();
    assert_eq!(store.claim(&id).await.unwrap(), ClaimOutcome::Duplicate);
    drop_keys(&store, &[id]).await;
}

#[tokio::test]
async fn a_released_claim_can_be_taken_again_and_only_its_token_releases_it() {
    let store = store(&prefix());
    let id = "d:0".to_string();
    let ClaimOutcome::Fresh(token) = store.claim(&id).await.unwrap() else {
        panic!("expected a fresh claim");
    };
    store
        .release(&id, &ClaimToken("claimed:someone-else".into()))
        .await
        .unwrap();
    assert_eq!(store.claim(&id).await.unwrap(), ClaimOutcome::InProgress);
    store.release(&id, &token).await.unwrap();
    assert!(matches!(
        store.claim(&id).await.unwrap(),
        ClaimOutcome::Fresh(_)
    ));
    drop_keys(&store, &[id]).await;
}

#[tokio::test]
async fn concurrent_claims_of_the_same_events_give_each_event_to_one_claimer() {
    let prefix = prefix();
    let (first, second) = (store(&prefix), store(&prefix));
    let ids: Vec<String> = (0..200).map(|i| format!("d{i}:0")).collect();
    let claims = ids.iter().flat_map(|id| {
        let (first, second) = (first.clone(), second.clone());
        let (a, b) = (id.clone(), id.clone());
        [
            tokio::spawn(async move { first.claim(&a).await }),
            tokio::spawn(async move { second.claim(&b).await }),
        ]
    });
    let claims: Vec<_> = claims.collect();
    let mut outcomes = Vec::new();
    for claim in claims {
        outcomes.push(claim.await);
    }
    assert_eq!(outcomes.len(), 2 * ids.len());
    // Spawned in pairs, one claim of each store per event: each pair has one fresh claim, and
    // the other finds it in progress.
    for (id, pair) in ids.iter().zip(outcomes.chunks(2)) {
        let fresh = pair
            .iter()
            .filter(|outcome| matches!(outcome, Ok(Ok(ClaimOutcome::Fresh(_)))))
            .count();
        let busy = pair
            .iter()
            .filter(|outcome| matches!(outcome, Ok(Ok(ClaimOutcome::InProgress))))
            .count();
        assert_eq!((fresh, busy), (1, 1), "{id}");
    }
    drop_keys(&first, &ids).await;
}

#[tokio::test]
async fn done_marks_and_claims_sent_together_mark_first() {
    let store = store(&prefix());
    let ids = vec!["d:0".to_string(), "d:1".to_string()];
    let (done, marked) = oneshot::channel();
    let (claimed, outcome) = oneshot::channel();
    let (fresh, fresh_outcome) = oneshot::channel();
    // The claim is listed first, yet the mark in the same call is set before it is looked at.
    store
        .call(vec![
            Op::Claim {
                key: store.key(&ids[0]),
                value: "claimed:x".into(),
                answer: claimed,
            },
            Op::Done {
                key: store.key(&ids[0]),
                answer: done,
            },
            Op::Claim {
                key: store.key(&ids[1]),
                value: "claimed:y".into(),
                answer: fresh,
            },
        ])
        .await;
    marked.await.unwrap().unwrap();
    assert_eq!(outcome.await.unwrap().unwrap(), "done");
    assert_eq!(fresh_outcome.await.unwrap().unwrap(), "fresh");
    drop_keys(&store, &ids).await;
}

#[tokio::test]
async fn claims_a_dead_run_of_our_journal_left_are_taken_over_but_not_another_journals() {
    let prefix = prefix();
    let ids = vec!["d:0".to_string(), "d:1".to_string()];
    let dead = store(&prefix).with_owner(ClaimOwner::new_instance("journal-a"));
    let other = store(&prefix).with_owner(ClaimOwner::new_instance("journal-b"));
    assert!(matches!(
        dead.claim(&ids[0]).await.unwrap(),
        ClaimOutcome::Fresh(_)
    ));
    assert!(matches!(
        other.claim(&ids[1]).await.unwrap(),
        ClaimOutcome::Fresh(_)
    ));
    let next = store(&prefix).with_owner(ClaimOwner::new_instance("journal-a"));
    assert!(matches!(
        next.claim(&ids[0]).await.unwrap(),
        ClaimOutcome::Fresh(_)
    ));
    assert_eq!(next.claim(&ids[0]).await.unwrap(), ClaimOutcome::InProgress);
    assert_eq!(next.claim(&ids[1]).await.unwrap(), ClaimOutcome::InProgress);
    drop_keys(&next, &ids).await;
}

#[tokio::test]
async fn an_unreachable_redis_answers_every_waiting_claim_with_an_error() {
    let url = SecretString::from("redis://127.0.0.1:1");
    let store = RedisDedupe::new(connect(&url).unwrap(), &prefix(), LEASE, LEASE);
    let claims: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(&format!("d{i}:0")).await })
        })
        .collect();
    for claim in claims {
        assert!(matches!(claim.await, Ok(Err(DedupeError::Redis(_)))));
    }
    assert!(store.mark_done("d0:0").await.is_err());
}
