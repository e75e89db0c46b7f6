//! Tests of `worker::outage`.

use super::*;

#[test]
fn an_outage_is_logged_when_it_starts_every_summary_period_and_when_it_ends() {
    let outage = Outage::new("dedupe store");
    let start = Instant::now();
    assert_eq!(outage.failure_at(start, start), Some(Line::Started));
    // Further failures within the period say nothing.
    for second in 1..30 {
        assert_eq!(
            outage.failure_at(start, start + Duration::from_secs(second)),
            None
        );
    }
    assert_eq!(
        outage.failure_at(start, start + SUMMARY_EVERY),
        Some(Line::Ongoing {
            down_for: SUMMARY_EVERY,
            failed_attempts: 31
        })
    );
    assert_eq!(
        outage.failure_at(start, start + SUMMARY_EVERY + Duration::from_secs(1)),
        None
    );
    assert_eq!(
        outage.success_at(
            start + Duration::from_secs(45),
            start + Duration::from_secs(45)
        ),
        Some(Line::Ended {
            down_for: Duration::from_secs(45),
            failed_attempts: 32
        })
    );
    // Up again: successes say nothing, and the next failure starts a new outage.
    assert_eq!(
        outage.success_at(
            start + Duration::from_secs(46),
            start + Duration::from_secs(46)
        ),
        None
    );
    assert_eq!(
        outage.failure_at(
            start + Duration::from_secs(50),
            start + Duration::from_secs(50)
        ),
        Some(Line::Started)
    );
}

#[test]
fn a_failure_of_an_attempt_begun_before_the_recovery_does_not_start_a_new_outage() {
    let outage = Outage::new("sink crm");
    let start = Instant::now();
    let at = |seconds: u64| start + Duration::from_secs(seconds);
    assert_eq!(outage.failure_at(at(0), at(1)), Some(Line::Started));
    assert!(matches!(
        outage.success_at(at(10), at(10)),
        Some(Line::Ended { .. })
    ));
    // Begun at 9 s, while the sink was still down, answered after it came back.
    assert_eq!(outage.failure_at(at(9), at(11)), None);
    assert!(!outage.is_down.load(Ordering::Relaxed));
    // Begun after the recovery: the sink is down again.
    assert_eq!(outage.failure_at(at(12), at(13)), Some(Line::Started));
}

#[test]
fn a_success_of_an_attempt_begun_before_the_outage_does_not_end_it() {
    let outage = Outage::new("Attio");
    let start = Instant::now();
    let at = |seconds: u64| start + Duration::from_secs(seconds);
    assert_eq!(outage.failure_at(at(5), at(6)), Some(Line::Started));
    // Begun at 4 s, before the first failure, answered after it.
    assert_eq!(outage.success_at(at(4), at(7)), None);
    assert!(outage.is_down.load(Ordering::Relaxed));
    assert!(matches!(
        outage.success_at(at(8), at(9)),
        Some(Line::Ended { .. })
    ));
}

#[test]
fn a_success_while_up_is_not_an_outage_ending() {
    let outage = Outage::new("Attio");
    let now = Instant::now();
    assert_eq!(outage.success_at(now, now), None);
    assert!(!outage.is_down.load(Ordering::Relaxed));
}

#[test]
fn each_sink_has_one_outage_of_its_own() {
    let outages = Outages::default();
    let crm = outages.sink("crm");
    assert!(Arc::ptr_eq(&crm, &outages.sink("crm")));
    let now = Instant::now();
    assert_eq!(crm.failure_at(now, now), Some(Line::Started));
    assert!(!outages.sink("file").is_down.load(Ordering::Relaxed));
    assert_eq!(crm.name, "sink crm");
}
