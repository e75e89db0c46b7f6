//! Deduplication: each event takes effect once, even when Attio delivers it again or a worker
//! crashed half-way.
//!
//! In: an event identity (delivery key + index). Out: a [`ClaimOutcome`]. The protocol has two
//! phases: `claim` with a short lease before any work, `mark_done` with a long TTL after every
//! sink succeeded, `release` when the attempt failed. A crash between claim and done lets the
//! lease expire, so the event is retried, never dropped (sooner with the embedded journal: its
//! next run takes over the claims its killed predecessor left). Two stores: Redis, shared by
//! replicas, and the embedded one (in-process claims; the journal's commit is the done mark).

pub(crate) mod embedded;
pub mod redis;

pub(crate) use self::embedded::EmbeddedDedupe;
pub use self::redis::{ClaimOwner, RedisDedupe};

/// Proof of a claim, needed to release it (so a late worker cannot release someone else's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Nobody processed this event yet; it is ours until the lease ends.
    Fresh(ClaimToken),
    /// Already processed: skip it.
    Duplicate,
    /// Someone else holds a live claim: try again after the lease.
    InProgress,
}

#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The Redis URL or its TLS settings cannot be used; in words that never repeat the URL.
    #[error("redis: redis URL {0}")]
    Url(String),
}

#[derive(Clone)]
pub(crate) enum DedupeStore {
    Redis(RedisDedupe),
    Embedded(EmbeddedDedupe),
}

impl DedupeStore {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            DedupeStore::Redis(_) => "redis",
            DedupeStore::Embedded(_) => "embedded",
        }
    }

    pub(crate) async fn claim(&self, id: &str) -> Result<ClaimOutcome, DedupeError> {
        match self {
            DedupeStore::Redis(store) => store.claim(id).await,
            DedupeStore::Embedded(store) => store.claim(id),
        }
    }

    pub(crate) async fn mark_done(&self, id: &str) -> Result<(), DedupeError> {
        match self {
            DedupeStore::Redis(store) => store.mark_done(id).await,
            DedupeStore::Embedded(store) => store.mark_done(id),
        }
    }

    pub(crate) async fn release(&self, id: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        match self {
            DedupeStore::Redis(store) => store.release(id, token).await,
            DedupeStore::Embedded(store) => store.release(id, token),
        }
    }

    /// Forgets that the event was done, so that a replay of a delivered event is worked on
    /// again. A live claim is left alone.
    pub(crate) async fn forget(&self, id: &str) -> Result<(), DedupeError> {
        match self {
            DedupeStore::Redis(store) => store.forget(id).await,
            // The embedded store keeps no done marks (the journal is the record).
            DedupeStore::Embedded(_) => Ok(()),
        }
    }

    /// Reachability, for readiness.
    pub(crate) async fn ping(&self) -> Result<(), DedupeError> {
        match self {
            DedupeStore::Redis(store) => store.ping().await,
            DedupeStore::Embedded(_) => Ok(()),
        }
    }
}
