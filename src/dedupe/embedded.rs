//! The embedded deduplication store, used when no Redis is configured.
//!
//! Claims live in memory: they only guard against the same process working on an event twice,
//! and a restart drops them, which is what an expired lease means anyway. Done marks live in the
//! journal database, so a restarted daemon still knows what it finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ClaimOutcome, ClaimToken, DedupeError};
use crate::journal::SqliteJournal;

#[derive(Clone)]
pub struct EmbeddedDedupe {
    journal: SqliteJournal,
    claims: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    lease: Duration,
    done_ttl: Duration,
}

impl EmbeddedDedupe {
    pub fn new(journal: SqliteJournal, lease: Duration, done_ttl: Duration) -> EmbeddedDedupe {
        EmbeddedDedupe {
            journal,
            claims: Arc::new(Mutex::new(HashMap::new())),
            lease,
            done_ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        // A panic while holding this lock cannot leave the map half-updated (each operation is
        // one insert or remove), so a poisoned lock is still safe to use.
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn claim(&self, id: &str) -> Result<ClaimOutcome, DedupeError> {
        if self
            .journal
            .dedupe_is_done(id)
            .await
            .map_err(|e| DedupeError::Embedded(e.to_string()))?
        {
            return Ok(ClaimOutcome::Duplicate);
        }
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

    pub async fn mark_done(&self, id: &str) -> Result<(), DedupeError> {
        self.journal
            .dedupe_mark_done(id, self.done_ttl)
            .await
            .map_err(|e| DedupeError::Embedded(e.to_string()))?;
        self.lock().remove(id);
        Ok(())
    }

    pub fn release(&self, id: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        let mut claims = self.lock();
        if claims.get(id).is_some_and(|(held, _)| *held == token.0) {
            claims.remove(id);
        }
        Ok(())
    }
}
