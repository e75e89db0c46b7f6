//! The embedded deduplication store, used when no Redis is configured.
//!
//! Claims live in memory: they only guard against the same process working on an event twice,
//! and a restart drops them, which is what an expired lease means anyway. No separate done mark
//! is needed: with the embedded journal an event is done exactly when the journal's `complete`
//! commit removed it, so every event the worker sees pending is, by construction, not done; and
//! a redelivery of a finished delivery is refused at ingress by its journaled key (kept for
//! `dedupe.done_ttl`). This saves two journal round trips per event. When that commit fails (a
//! full disk), the event stays pending and its claim is gone; what keeps it from reaching its
//! sinks again is the worker's memory of the outcome it could not record (`worker::unrecorded`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ClaimOutcome, ClaimToken, DedupeError};

#[derive(Clone)]
pub(crate) struct EmbeddedDedupe {
    claims: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    lease: Duration,
}

impl EmbeddedDedupe {
    pub(crate) fn new(lease: Duration) -> EmbeddedDedupe {
        EmbeddedDedupe {
            claims: Arc::new(Mutex::new(HashMap::new())),
            lease,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        // A panic while holding this lock cannot leave the map half-updated (each operation is
        // one insert or remove), so a poisoned lock is still safe to use.
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn claim(&self, id: &str) -> Result<ClaimOutcome, DedupeError> {
        let now = Instant::now();
        let mut claims = self.lock();
        if let Some((_, expires)) = claims.get(id) {
            if *expires > now {
                return Ok(ClaimOutcome::InProgress);
            }
        }
        let token = uuid::Uuid::new_v4().to_string();
        claims.insert(id.to_string(), (token.clone(), now + self.lease));
        Ok(ClaimOutcome::Fresh(ClaimToken(token)))
    }

    /// Drops the claim; the journal's `complete` that follows is the durable record.
    pub(crate) fn mark_done(&self, id: &str) -> Result<(), DedupeError> {
        self.lock().remove(id);
        Ok(())
    }

    pub(crate) fn release(&self, id: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        let mut claims = self.lock();
        if claims.get(id).is_some_and(|(held, _)| *held == token.0) {
            claims.remove(id);
        }
        Ok(())
    }
}
