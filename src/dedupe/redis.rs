//! Redis deduplication store, shared by every replica. Keys: `{prefix}:dedupe:{event id}`.
//!
//! claim = set `claimed:<owner>:<token>` with the lease unless the key exists; done = set the key
//! to `done` with its TTL. Both go through one Lua script that takes many of them at once: a
//! batcher task sends what queued while its previous call was out as its next call, so under
//! load the claims and done marks of many events share one round trip (and one write and read
//! of the socket), while a lone one goes at once. Done marks in a call are set before its claims
//! are looked at. Release deletes the key only while it still holds our token (a Lua
//! compare-and-delete), so a worker whose lease already ran out cannot release a claim another
//! worker took since.
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
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot};

use super::{ClaimOutcome, ClaimToken, DedupeError};

/// Claims and done marks of many events in one call (see [`RedisDedupe::run_batches`]). KEYS: first the events
/// to mark done, then the events to claim. ARGV[1] how many KEYS are done marks; ARGV[2] the done
/// mark's TTL in ms; ARGV[3] the lease in ms; ARGV[4] the prefix of claims made through our
/// journal (empty: none may be taken over); ARGV[5] the prefix of claims made by this process;
/// ARGV[5 + i] the value of the i-th claim. Done marks are set first, so a claim in the same call
/// sees them. Returns one outcome per claim, in order.
const BATCH_SCRIPT: &str = r#"
local marks = tonumber(ARGV[1])
for i = 1, marks do
    redis.call('SET', KEYS[i], 'done', 'PX', ARGV[2])
end
local outcomes = {}
for i = marks + 1, #KEYS do
    local value = ARGV[5 + i - marks]
    local current = redis.call('GET', KEYS[i])
    if not current then
        redis.call('SET', KEYS[i], value, 'PX', ARGV[3])
        outcomes[#outcomes + 1] = 'fresh'
    elseif current == 'done' then
        outcomes[#outcomes + 1] = 'done'
    elseif ARGV[4] ~= '' and string.sub(current, 1, #ARGV[4]) == ARGV[4]
        and string.sub(current, 1, #ARGV[5]) ~= ARGV[5] then
        redis.call('SET', KEYS[i], value, 'PX', ARGV[3])
        outcomes[#outcomes + 1] = 'taken_over'
    else
        outcomes[#outcomes + 1] = 'busy'
    end
end
return outcomes
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
    /// With an owner, the prefixes that tell its claims (none: no claim is ever taken over).
    owner: Option<OwnerPrefixes>,
    batch: redis::Script,
    release: redis::Script,
    /// Where claims and done marks queue for the next call; started at first use.
    batcher: Arc<OnceLock<mpsc::UnboundedSender<Op>>>,
}

/// The beginnings of an owner's claim values.
#[derive(Clone)]
struct OwnerPrefixes {
    /// Claims made through our journal: `claimed:<journal id>:`.
    journal: String,
    /// Claims made by this process: `claimed:<journal id>:<instance id>:`.
    process: String,
}

/// A claim or a done mark waiting for its batch's call, with where its answer goes.
enum Op {
    Claim {
        key: String,
        value: String,
        answer: oneshot::Sender<Result<String, redis::RedisError>>,
    },
    Done {
        key: String,
        answer: oneshot::Sender<Result<(), redis::RedisError>>,
    },
}

/// At most this many claims and done marks go in one call.
const MAX_BATCH: usize = 256;
/// Most times the batcher lets the ready tasks run before a call, while each time brings more.
const GATHER_YIELDS: usize = 4;

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
            batch: redis::Script::new(BATCH_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            batcher: Arc::default(),
        }
    }

    /// Claims name `owner`, and claims a dead run of the same journal left are taken over.
    pub fn with_owner(mut self, owner: ClaimOwner) -> RedisDedupe {
        let journal = format!("claimed:{}:", owner.journal);
        let process = format!("{journal}{}:", owner.instance);
        self.owner = Some(OwnerPrefixes { journal, process });
        self
    }

    fn key(&self, id: &str) -> String {
        format!("{}:dedupe:{id}", self.prefix)
    }

    pub async fn claim(&self, id: &str) -> Result<ClaimOutcome, DedupeError> {
        let token = uuid::Uuid::new_v4().simple();
        let value = match &self.owner {
            Some(owner) => format!("{}{token}", owner.process),
            None => format!("claimed:{token}"),
        };
        let (answer, outcome) = oneshot::channel();
        let op = Op::Claim {
            key: self.key(id),
            value: value.clone(),
            answer,
        };
        self.submit(op).await;
        let outcome = outcome.await.map_err(|_| stopped())??;
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
        let (answer, done) = oneshot::channel();
        self.submit(Op::Done {
            key: self.key(id),
            answer,
        })
        .await;
        done.await
            .map_err(|_| stopped())?
            .map_err(DedupeError::Redis)
    }

    /// Queues `op` for the batcher (started here on first use). Should the batcher be gone
    /// (its runtime shut down), the op is sent on its own from here instead.
    async fn submit(&self, op: Op) {
        let batcher = self.batcher.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(self.clone_unbatched().run_batches(receiver));
            sender
        });
        if let Err(mpsc::error::SendError(op)) = batcher.send(op) {
            self.call(vec![op]).await;
        }
    }

    /// This store without the batcher: what the batcher itself holds (holding its own sender
    /// would keep it running forever).
    fn clone_unbatched(&self) -> RedisDedupe {
        RedisDedupe {
            batcher: Arc::default(),
            ..self.clone()
        }
    }

    /// Sends what queued while the previous call was out as the next call: under load many
    /// events' claims and done marks share one round trip; alone, an op goes at once. Before
    /// each call the tasks that are ready to run go first (up to [`GATHER_YIELDS`] yields,
    /// while each brings more; no timer), so that the claims and done marks they are about to
    /// make join it rather than the next one.
    async fn run_batches(self, mut ops: mpsc::UnboundedReceiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while ops.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // While yielding still brings more, yield again (a few times at most).
            for _ in 0..GATHER_YIELDS {
                let before = batch.len();
                tokio::task::yield_now().await;
                while batch.len() < MAX_BATCH {
                    match ops.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                if batch.len() == before || batch.len() >= MAX_BATCH {
                    break;
                }
            }
            self.call(std::mem::take(&mut batch)).await;
        }
    }

    /// One call of the batch script for `ops`, each answered with its own outcome (or the
    /// call's error).
    async fn call(&self, ops: Vec<Op>) {
        let mut marks = Vec::new();
        let mut claims = Vec::new();
        for op in ops {
            match op {
                Op::Done { key, answer } => marks.push((key, answer)),
                Op::Claim { key, value, answer } => claims.push((key, value, answer)),
            }
        }
        let (ours, this_process) = self.owner.as_ref().map_or(("", ""), |owner| {
            (owner.journal.as_str(), owner.process.as_str())
        });
        let mut invocation = self.batch.prepare_invoke();
        for (key, _) in &marks {
            invocation.key(key);
        }
        for (key, _, _) in &claims {
            invocation.key(key);
        }
        invocation
            .arg(marks.len())
            .arg(millis(self.done_ttl))
            .arg(millis(self.lease))
            .arg(ours)
            .arg(this_process);
        for (_, value, _) in &claims {
            invocation.arg(value);
        }
        let mut connection = self.connection.clone();
        let result: Result<Vec<String>, redis::RedisError> =
            invocation.invoke_async(&mut connection).await;
        let result = result.and_then(|outcomes| {
            if outcomes.len() == claims.len() {
                Ok(outcomes)
            } else {
                Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "the dedupe script answered a different number of claims than it was sent",
                )))
            }
        });
        // A caller that gave up waiting no longer has a receiver: nothing to tell it.
        match result {
            Ok(outcomes) => {
                for (_, answer) in marks {
                    let _ = answer.send(Ok(()));
                }
                for ((_, _, answer), outcome) in claims.into_iter().zip(outcomes) {
                    let _ = answer.send(Ok(outcome));
                }
            }
            Err(error) => {
                for (_, answer) in marks {
                    let _ = answer.send(Err(error.clone()));
                }
                for (_, _, answer) in claims {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
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

/// The batcher went away with its answer (its runtime is shutting down).
fn stopped() -> DedupeError {
    DedupeError::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "the dedupe batcher stopped",
    )))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
