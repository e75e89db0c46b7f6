//! Redis deduplication store, shared by every replica. Keys: `{prefix}:dedupe:{event id}`.
//!
//! claim = set `claimed:<owner>:<token>` with the lease unless the key exists (one Lua script);
//! done = `SET key done PX ttl`; release deletes the key only while it still holds our token (a
//! Lua compare-and-delete), so a worker whose lease already ran out cannot release a claim
//! another worker took since.
//!
//! Takeover: with the embedded journal, a daemon killed mid-event leaves its claims behind, and
//! its next run would wait out the whole lease before retrying those events. So a claim names its
//! owner, `<journal id>:<instance id>`: the journal's id is stored in the SQLite journal, the
//! instance id is new in every process. A journal is worked on by one process at a time (the
//! daemon holds an exclusive lock on it, [`crate::journal::JournalLock`]), so a claim that names
//! our journal and another instance was made by a process that is gone: it is taken over at once.
//! A claim by another journal (another replica) still waits for its lease. With the Redis journal
//! (shared by replicas) claims name no journal and are never taken over: events a dead replica
//! left come back through the stream after the lease anyway.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};

use super::{ClaimOutcome, ClaimToken, DedupeError};

/// KEYS[1] the claim; ARGV[1] our claim value; ARGV[2] the lease in ms; ARGV[3] the prefix of
/// claims made through our journal (empty: none may be taken over); ARGV[4] the prefix of claims
/// made by this process.
const CLAIM_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 'fresh'
end
if current == 'done' then
    return 'done'
end
if ARGV[3] ~= '' and string.sub(current, 1, #ARGV[3]) == ARGV[3]
    and string.sub(current, 1, #ARGV[4]) ~= ARGV[4] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 'taken_over'
end
return 'busy'
"#;

const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Who takes a claim, when claims of a dead predecessor may be taken over (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOwner {
    /// The journal's stable id ([`crate::journal::SqliteJournal::id`]).
    pub(crate) journal: String,
    /// This process's id, new at every start.
    pub(crate) instance: String,
}

impl ClaimOwner {
    /// An owner for this process working on the journal `journal`.
    pub fn new_instance(journal: &str) -> ClaimOwner {
        ClaimOwner {
            journal: journal.to_string(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

#[derive(Clone)]
pub struct RedisDedupe {
    connection: ConnectionManager,
    prefix: String,
    lease: Duration,
    done_ttl: Duration,
    owner: Option<ClaimOwner>,
    claim: redis::Script,
    release: redis::Script,
}

/// A Redis client for `url` (not connected yet). With `ca_file`, a `rediss://` connection also
/// trusts the PEM certificates in that file (a private CA), besides the system's. The error says
/// what is wrong in words and never repeats the URL, which may hold a password.
pub(crate) fn client(url: &SecretString, ca_file: Option<&Path>) -> Result<redis::Client, String> {
    let expected = "expected redis://[user:password@]host[:port][/db], rediss://… for TLS, or \
                    unix:///path/to/socket";
    let info = redis::IntoConnectionInfo::into_connection_info(url.expose_secret())
        .map_err(|e| format!("is not a Redis URL: {} ({expected})", words(&e)))?;
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    let Some(ca_file) = ca_file else {
        return redis::Client::open(info)
            .map_err(|e| format!("cannot be used: {} ({expected})", words(&e)));
    };
    if !tls {
        return Err(format!(
            "does not start with rediss://, yet a CA file ({}) is configured for TLS: use a \
             rediss:// URL or remove redis.tls_ca_file",
            ca_file.display()
        ));
    }
    let pem = std::fs::read(ca_file).map_err(|e| {
        format!(
            "needs the CA file {}, which cannot be read: {e}",
            ca_file.display()
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "needs the CA file {}, which holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca_file.display()
        ));
    }
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
    .map_err(|e| {
        format!(
            "cannot use the certificates in {}: {}",
            ca_file.display(),
            words(&e)
        )
    })
}

/// A Redis client configuration error in the crate's own words (static texts such as "Missing
/// hostname"; they never quote the URL).
fn words(error: &redis::RedisError) -> String {
    error.to_string()
}

/// Opens a connection manager that connects lazily and reconnects by itself, so the daemon
/// starts (and reports not-ready) while Redis is down, and recovers when it is back.
pub fn connect(url: &SecretString) -> Result<ConnectionManager, DedupeError> {
    connect_with(url, None)
}

/// [`connect`], trusting the CA certificates in `ca_file` for a `rediss://` URL (see [`client`]).
pub(crate) fn connect_with(
    url: &SecretString,
    ca_file: Option<&Path>,
) -> Result<ConnectionManager, DedupeError> {
    let client = client(url, ca_file).map_err(DedupeError::Url)?;
    connect_client(client)
}

/// [`connect`] with a client already made by [`client`] (the configuration parses `redis.url`
/// into one at start).
pub(crate) fn connect_client(client: redis::Client) -> Result<ConnectionManager, DedupeError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map_err(DedupeError::Redis)
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
            owner: None,
            claim: redis::Script::new(CLAIM_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
        }
    }

    /// Claims name `owner`, and claims a dead run of the same journal left are taken over.
    pub fn with_owner(mut self, owner: ClaimOwner) -> RedisDedupe {
        self.owner = Some(owner);
        self
    }

    fn key(&self, id: &str) -> String {
        format!("{}:dedupe:{id}", self.prefix)
    }

    pub async fn claim(&self, id: &str) -> Result<ClaimOutcome, DedupeError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (value, ours, this_process) = match &self.owner {
            Some(owner) => {
                let ours = format!("claimed:{}:", owner.journal);
                let this_process = format!("{ours}{}:", owner.instance);
                (format!("{this_process}{token}"), ours, this_process)
            }
            None => (format!("claimed:{token}"), String::new(), String::new()),
        };
        let mut connection = self.connection.clone();
        let outcome: String = self
            .claim
            .key(self.key(id))
            .arg(&value)
            .arg(millis(self.lease))
            .arg(&ours)
            .arg(&this_process)
            .invoke_async(&mut connection)
            .await
            .map_err(DedupeError::Redis)?;
        match outcome.as_str() {
            "fresh" => Ok(ClaimOutcome::Fresh(ClaimToken(value))),
            "taken_over" => {
                tracing::info!("took over the claim a previous run of this journal left");
                Ok(ClaimOutcome::Fresh(ClaimToken(value)))
            }
            "done" => Ok(ClaimOutcome::Duplicate),
            _ => Ok(ClaimOutcome::InProgress),
        }
    }

    pub async fn mark_done(&self, id: &str) -> Result<(), DedupeError> {
        let mut connection = self.connection.clone();
        let _: () = connection
            .pset_ex(self.key(id), "done", millis(self.done_ttl))
            .await
            .map_err(DedupeError::Redis)?;
        Ok(())
    }

    /// Deletes the event's done mark (and nothing else: a live claim stays).
    pub(crate) async fn forget(&self, id: &str) -> Result<(), DedupeError> {
        let mut connection = self.connection.clone();
        let _: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == 'done' then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(self.key(id))
        .invoke_async(&mut connection)
        .await
        .map_err(DedupeError::Redis)?;
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
            .map_err(DedupeError::Redis)?;
        Ok(())
    }

    pub(crate) async fn ping(&self) -> Result<(), DedupeError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(DedupeError::Redis)?;
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
