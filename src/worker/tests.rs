//! Tests of the hand-off between ingress and the worker.

use super::*;

fn handoff(capacity: usize) -> (Handoff, mpsc::Receiver<JournaledEvent>) {
    let (sender, receiver) = mpsc::channel(capacity);
    let handoff = Handoff {
        sender,
        in_flight: InFlight::default(),
        overflow: Arc::new(Notify::new()),
        direct: true,
    };
    (handoff, receiver)
}

fn journaled(key: &str, count: usize) -> Vec<JournaledEvent> {
    (0..count)
        .map(|index| JournaledEvent {
            id: crate::event::event_id(key, index),
            delivery_key: key.to_string(),
            index: index as u32,
            webhook_id: None,
            event_type: "record.updated".to_string(),
            received_at: "2026-11-29T00:00:00Z".to_string(),
            request_id: None,
            raw: "{}".to_string(),
            attempts: 0,
            sinks_done: Vec::new(),
            sink_attempts: Default::default(),
        })
        .collect()
}

#[test]
fn a_reserved_event_stays_in_flight_from_before_the_append_through_the_hand_off() {
    let (handoff, mut receiver) = handoff(8);
    let reservation = handoff.reserve("k", 2);
    // What a journal scan meanwhile sees: both events busy, so it leaves them alone.
    assert!(handoff.in_flight.contains("k:0") && handoff.in_flight.contains("k:1"));
    handoff.offer(reservation, journaled("k", 2));
    assert_eq!(
        receiver.try_recv().map(|e| e.id).ok().as_deref(),
        Some("k:0")
    );
    assert_eq!(
        receiver.try_recv().map(|e| e.id).ok().as_deref(),
        Some("k:1")
    );
    // Handed over: in flight until the worker finishes them, not released by the hand-off.
    assert_eq!(handoff.in_flight.len(), 2);
}

#[test]
fn a_dropped_reservation_releases_its_events_to_the_journal_scan() {
    let (handoff, mut receiver) = handoff(8);
    let reservation = handoff.reserve("k", 3);
    assert_eq!(handoff.in_flight.len(), 3);
    drop(reservation);
    assert!(handoff.in_flight.is_empty());
    assert!(receiver.try_recv().is_err());
}

#[test]
fn an_event_already_in_flight_is_neither_handed_over_again_nor_released() {
    let (handoff, mut receiver) = handoff(8);
    assert!(handoff.in_flight.insert("k:0"));
    let reservation = handoff.reserve("k", 1);
    handoff.offer(reservation, journaled("k", 1));
    assert!(receiver.try_recv().is_err(), "its owner is working on it");
    assert!(handoff.in_flight.contains("k:0"), "and still holds it");
}

#[test]
fn events_that_do_not_fit_the_channel_are_released_to_the_journal_scan() {
    let (handoff, mut receiver) = handoff(1);
    let reservation = handoff.reserve("k", 2);
    handoff.offer(reservation, journaled("k", 2));
    assert_eq!(
        receiver.try_recv().map(|e| e.id).ok().as_deref(),
        Some("k:0")
    );
    assert!(receiver.try_recv().is_err());
    assert!(handoff.in_flight.contains("k:0"));
    assert!(
        !handoff.in_flight.contains("k:1"),
        "the scan takes k:1 from the journal"
    );
}
