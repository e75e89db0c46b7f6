//! Redis deduplication store, shared by every replica. Keys: `{prefix}:dedupe:{event id}`.
//!
//! claim = `SET key claimed:<token> NX PX lease`; done = `SET key done PX ttl`; release deletes the
//! key only while it still holds our token (a Lua compare-and-delete), so a worker whose lease
//! already ran out cannot release a claim another worker took since.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};

use super::{ClaimOutcome, ClaimToken, DedupeError};

const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#;

#[derive(Clone)]
pub struct RedisDedupe {
    connection: ConnectionManager,
    prefix: String,
    lease: Duration,
    done_ttl: Duration,
    release: redis::Script,
}

fn redis_error(error: redis::RedisError) -> DedupeError {
    DedupeError::Redis(error.to_string())
}

/// Opens a connection manager that connects lazily and reconnects by itself, so the daemon
/// starts (and reports not-ready) while Redis is down, and recovers when it is back.
pub fn connect(url: &SecretString) -> Result<ConnectionManager, DedupeError> {
    let client = redis::Client::open(url.expose_secret())
        // The URL may hold a password: say what is wrong without repeating it.
        .map_err(|e| DedupeError::Redis(format!("invalid redis.url: {:?}", e.kind())))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map_err(redis_error)
}

impl RedisDedupe {
    pub fn new(
        connection: ConnectionManager,
        key_prefix: &str,
        lease: Duration,
        done_ttl: Duration,
    ) -> RedisDedupe {
        RedisDedupe {
            connection,
            prefix: key_prefix.to_string(),
            lease,
            done_ttl,
            release: redis::Script::new(RELEASE_SCRIPT),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}:dedupe:{id}", self.prefix)
    }

    pub async fn claim(&self, id: &str) -> Result<ClaimOutcome, DedupeError> {
        let key = self.key(id);
        let token = format!("claimed:{}", uuid::Uuid::new_v4());
        let mut connection = self.connection.clone();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(millis(self.lease)));
        let set: Option<String> = connection
            .set_options(&key, &token, options)
            .await
            .map_err(redis_error)?;
        if set.is_some() {
            return Ok(ClaimOutcome::Fresh(ClaimToken(token)));
        }
        let current: Option<String> = connection.get(&key).await.map_err(redis_error)?;
        match current.as_deref() {
            Some("done") => Ok(ClaimOutcome::Duplicate),
            Some(_) => Ok(ClaimOutcome::InProgress),
            // The claim expired between the two calls: someone may take it now; let them.
            None => Ok(ClaimOutcome::InProgress),
        }
    }

    pub async fn mark_done(&self, id: &str) -> Result<(), DedupeError> {
        let mut connection = self.connection.clone();
        let _: () = connection
            .pset_ex(self.key(id), "done", millis(self.done_ttl))
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    pub async fn release(&self, id: &str, token: &ClaimToken) -> Result<(), DedupeError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .release
            .key(self.key(id))
            .arg(&token.0)
            .invoke_async(&mut connection)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), DedupeError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
