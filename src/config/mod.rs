//! Configuration: where every knob of the daemon comes from, checked, and parsed into what the
//! daemon runs with.
//!
//! In: the embedded `config/default.toml`, then `config/default.toml` and `config/{APP_ENV}.toml`
//! on disk, then an optional `--config FILE`, then environment variables (the well-known
//! `ATTIO_WEBHOOK_SECRET`, `ATTIO_API_KEY`, `REDIS_URL`, and `ATTIO_WEBHOOKS__SECTION__KEY` for
//! every key). Out: a [`Config`] (the listen addresses, the queue with its Redis client, the
//! compiled route table and the sinks, parsed once, beside the [`Settings`] as written), or a
//! [`ConfigError`] naming the key and the fix.
//!
//! - `load`: the layers, and the `config` crate's and serde's errors said in the file's words.
//! - `validate`: every value checked (against the others too), and parsed into a [`Config`].
//! - [`crate::redact`]: what of a setting may be shown, in `check-config` and in errors.
//!
//! The settings of the routes and of the sinks are their modules' own
//! ([`crate::routing::settings`], [`crate::sinks::settings`], [`crate::mirror::settings`]),
//! re-exported here: this module imports them, and they import nothing of it.

mod load;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::mirror::settings::SyncSettings;
use crate::redact::{redact_optional_secret, redact_secrets, redact_url_credentials};
use crate::routing::settings::RouteError;
pub(crate) use crate::routing::settings::RouteSettings;
use crate::routing::RouteTable;
use crate::settings_format::duration;
pub(crate) use crate::sinks::settings::{SinkKind, SinkRetrySettings, SinkSettings};

/// The development secret shipped in `config/development.toml`. Accepted with a loud warning
/// outside production, refused in production.
pub const DEVELOPMENT_SECRET: &str = "development-secret-do-not-use-in-production";

/// Prefix of the environment variables that override any key (`ATTIO_WEBHOOKS__SERVER__LISTEN`).
pub(crate) const ENV_PREFIX: &str = "ATTIO_WEBHOOKS";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(String),
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: String, problem: String },
    #[error(
        "no webhook secret configured: set ATTIO_WEBHOOK_SECRET to the signing secret Attio showed \
         when the webhook was created (comma-separated for several)"
    )]
    NoSecret,
    #[error(
        "the development webhook secret is configured while APP_ENV=production: set \
         ATTIO_WEBHOOK_SECRET to your webhook's real secret"
    )]
    DevelopmentSecretInProduction,
}

impl ConfigError {
    fn invalid(key: &str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}

impl From<RouteError> for ConfigError {
    fn from(error: RouteError) -> Self {
        ConfigError::Invalid {
            key: error.key,
            problem: error.problem,
        }
    }
}

/// Where to load settings from. Tests build a [`Config`] directly from TOML instead.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadOptions {
    /// Directory holding `default.toml` and `{environment}.toml` (default: `APP_CONFIG_DIR` or `config`).
    pub(crate) config_dir: Option<PathBuf>,
    /// An extra file, applied after the directory's files.
    pub(crate) config_file: Option<PathBuf>,
}

/// The configuration the daemon runs with: every setting checked, and the ones that need it
/// parsed once, here, so that [`crate::app::Application::build`] consumes them as they are.
#[derive(Debug, Clone)]
pub struct Config {
    /// `server.listen`.
    pub(crate) listen: SocketAddr,
    /// `admin.listen`, when it is set.
    pub(crate) admin_listen: Option<SocketAddr>,
    /// Where accepted deliveries wait (`queue.backend`), with what that backend needs.
    pub(crate) queue: Queue,
    /// The routes the daemon runs with ([`Settings::effective_routes`]), compiled.
    pub(crate) routes: RouteTable,
    /// The sinks the daemon runs with ([`Settings::effective_sinks`]: what they inherit filled
    /// in), by name.
    pub(crate) sinks: BTreeMap<String, SinkSettings>,
    /// Everything else, as written (and all of it, for `check-config` to show).
    pub(crate) settings: Settings,
}

/// The journal backend (`queue.backend`) with what it needs.
#[derive(Debug, Clone)]
pub(crate) enum Queue {
    /// SQLite at `journal` (under `storage.path`): one daemon. With `redis.url`, deduplication
    /// and Attio's rate limits are still shared through `redis`.
    Embedded {
        journal: PathBuf,
        sync: SyncMode,
        redis: Option<RedisTarget>,
    },
    /// A Redis stream with one consumer group, shared by every replica (as are deduplication and
    /// the rate limits).
    Redis(RedisTarget),
}

impl Queue {
    /// The Redis the daemon uses, if any (`redis.url`).
    #[cfg(test)]
    pub(crate) fn redis(&self) -> Option<&RedisTarget> {
        match self {
            Queue::Embedded { redis, .. } => redis.as_ref(),
            Queue::Redis(redis) => Some(redis),
        }
    }
}

/// `redis.url` (with `redis.tls_ca_file`) parsed into a client, not connected yet, and the
/// prefix of every key the daemon keeps there.
#[derive(Debug, Clone)]
pub(crate) struct RedisTarget {
    pub(crate) client: redis::Client,
    pub(crate) key_prefix: String,
}

impl Config {
    /// Listens on `listen` instead of `server.listen` (`serve --listen`).
    pub(crate) fn listen_on(&mut self, listen: String) -> Result<(), ConfigError> {
        self.settings.server.listen = listen;
        self.listen = self.settings.listen_addr()?;
        Ok(())
    }
}

/// Every setting as written, the layers applied (what `check-config` prints, secrets redacted).
/// The daemon runs with the [`Config`] parsed from it; the tools that read only a few keys take
/// it as it is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// From `APP_ENV`, not from files.
    #[serde(skip)]
    pub(crate) environment: String,
    pub(crate) server: ServerSettings,
    pub(crate) webhook: WebhookSettings,
    pub(crate) storage: StorageSettings,
    pub queue: QueueSettings,
    pub(crate) worker: WorkerSettings,
    pub(crate) dedupe: DedupeSettings,
    pub(crate) redis: RedisSettings,
    pub(crate) log: LogSettings,
    pub attio: AttioSettings,
    pub(crate) enrichment: EnrichmentSettings,
    pub(crate) admin: AdminSettings,
    #[serde(default)]
    pub(crate) sinks: BTreeMap<String, SinkSettings>,
    #[serde(default)]
    pub(crate) routes: Vec<RouteSettings>,
    /// Scheduled reconciliation of a `postgres` sink with Attio (off by default).
    #[serde(default)]
    pub(crate) sync: SyncSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSettings {
    pub(crate) listen: String,
    pub(crate) path: String,
    pub(crate) body_limit: usize,
    /// Time for a request's headers to arrive, from the accept (or, on a kept-alive connection,
    /// from the next request's first byte).
    #[serde(with = "humantime_serde")]
    pub(crate) header_read_timeout: Duration,
    /// Time for the webhook's body to arrive once its headers have.
    #[serde(with = "humantime_serde")]
    pub(crate) body_read_timeout: Duration,
    /// How long a kept-alive connection may wait, with no request in progress, for its next one.
    #[serde(with = "humantime_serde")]
    pub(crate) idle_timeout: Duration,
    /// Connections open at once on this listener; at the cap new ones wait in the listen queue.
    pub(crate) max_connections: usize,
    /// Serve `/metrics` on this listener too. Unset: yes, unless `admin.listen` is set or
    /// `APP_ENV=production`.
    #[serde(default)]
    pub(crate) metrics: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookSettings {
    #[serde(default, serialize_with = "redact_secrets")]
    pub(crate) secrets: Vec<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageSettings {
    pub(crate) path: PathBuf,
    /// When a commit reaches the disk; see [`SyncMode`].
    #[serde(deserialize_with = "choice")]
    pub(crate) sync: SyncMode,
    /// How long delivered events stay in the history (by time received).
    #[serde(with = "humantime_serde")]
    pub(crate) history: Duration,
    /// How long dead letters and unparsed deliveries are kept; unset: until replayed or deleted.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) dead_letter_history: Option<Duration>,
}

/// How hard the journal flushes each commit (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SyncMode {
    /// Every commit is fsynced before any delivery in it is acknowledged: an acknowledged event
    /// survives a process crash, an OS crash and a power cut.
    Full,
    /// Commits reach the operating system before acknowledgement and the disk at checkpoints:
    /// an acknowledged event survives a process crash (`kill -9`, OOM kill, panic) but the last
    /// moments before an OS crash or power cut may be lost. Much faster on slow-fsync disks.
    Normal,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Where accepted deliveries wait for the worker.
    #[serde(deserialize_with = "choice")]
    pub backend: QueueBackend,
    pub(crate) max_backlog: u64,
    pub(crate) channel_capacity: usize,
    /// With `backend = "redis"` and `APP_ENV=production`, start even on a Redis without an
    /// append-only file (a Redis restart then loses acknowledged deliveries).
    #[serde(default)]
    pub(crate) allow_volatile_redis: bool,
}

/// The journal backend (`queue.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// SQLite under `storage.path`: one daemon.
    Embedded,
    /// A Redis stream with one consumer group: any number of replicas sharing one Redis.
    Redis,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerSettings {
    pub(crate) enabled: bool,
    pub(crate) concurrency: usize,
    pub(crate) max_attempts: u32,
    #[serde(with = "duration")]
    pub(crate) retry_initial: Duration,
    #[serde(with = "duration")]
    pub(crate) retry_max: Duration,
    #[serde(with = "duration")]
    pub(crate) poll_interval: Duration,
    #[serde(with = "duration")]
    pub(crate) shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DedupeSettings {
    #[serde(with = "duration")]
    pub(crate) claim_lease: Duration,
    #[serde(with = "duration")]
    pub(crate) done_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisSettings {
    #[serde(default, serialize_with = "redact_optional_secret")]
    pub(crate) url: Option<SecretString>,
    pub(crate) key_prefix: String,
    /// PEM file of the CA certificates a `rediss://` connection trusts besides the system's
    /// (a private CA, or a managed Redis whose CA is not in the system store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSettings {
    /// A second listener for /metrics, /healthz and /readyz, the events API and the console;
    /// empty: all of them on the main one.
    #[serde(default)]
    pub(crate) listen: String,
    /// Token of the events API and the console (`ATTIO_WEBHOOKS_ADMIN_TOKEN`). None: they are
    /// served only on a loopback listener, and refused in production.
    #[serde(default, serialize_with = "redact_optional_secret")]
    pub(crate) token: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogSettings {
    #[serde(deserialize_with = "choice")]
    pub(crate) format: LogFormat,
    pub(crate) level: String,
    /// Lines `serve` may hold for its log-writing thread before it drops new ones (counted in
    /// `attio_webhooks_log_lines_dropped_total`), so that a stalled stderr never stalls ingress.
    pub(crate) queue_lines: usize,
}

/// How the daemon talks to Attio's REST API (the `attio` module).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttioSettings {
    /// `https://api.attio.com`; tests point it at a local fake.
    #[serde(serialize_with = "redact_url_credentials")]
    pub(crate) base_url: String,
    /// Bearer token (`ATTIO_API_KEY`). None: enrichment is disabled, events still flow.
    #[serde(default, serialize_with = "redact_optional_secret")]
    pub api_key: Option<SecretString>,
    #[serde(with = "duration")]
    pub(crate) connect_timeout: Duration,
    #[serde(with = "duration")]
    pub(crate) request_timeout: Duration,
    /// Read requests (GET) per second, shared by the whole process (and with Redis, by replicas).
    pub(crate) read_rate: u32,
    /// Write requests (POST/PATCH/DELETE) per second, shared the same way.
    pub(crate) write_rate: u32,
    /// First retry delay of a transient failure; doubles each time, full jitter.
    #[serde(with = "duration")]
    pub(crate) retry_initial: Duration,
    /// Largest delay between two tries of one request.
    #[serde(with = "duration")]
    pub(crate) retry_max_delay: Duration,
    /// Longest time one request may spend retrying before its error is returned.
    #[serde(with = "duration")]
    pub(crate) retry_total: Duration,
    /// Consecutive failures (5xx, timeouts, connection errors) that open the circuit breaker.
    pub(crate) breaker_threshold: u32,
    /// How long the open breaker refuses requests before one probe is let through.
    #[serde(with = "duration")]
    pub(crate) breaker_cooldown: Duration,
}

/// The enrichment stage (the `enrich` module).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrichmentSettings {
    /// `record.updated` / `list-entry.updated` events of one record or entry that arrive within
    /// this window share one fetch.
    #[serde(with = "duration")]
    pub(crate) coalesce_window: Duration,
    /// How long resolved object, list and attribute slugs are kept.
    #[serde(with = "duration")]
    pub(crate) schema_ttl: Duration,
}

impl Settings {
    /// Whether `/metrics` is served on the main listener: when `server.metrics` says so, else
    /// only outside production and when no admin listener takes it.
    pub(crate) fn metrics_on_main_listener(&self) -> bool {
        match self.server.metrics {
            Some(explicit) => explicit,
            None => !self.is_production() && self.admin.listen.trim().is_empty(),
        }
    }

    /// Whether the production guard applies (`APP_ENV=production`, in any case).
    pub(crate) fn is_production(&self) -> bool {
        self.environment.eq_ignore_ascii_case("production")
    }

    pub(crate) fn uses_development_secret(&self) -> bool {
        self.webhook
            .secrets
            .iter()
            .any(|s| s.expose_secret() == DEVELOPMENT_SECRET)
    }

    /// The sinks the daemon runs with: the configured ones, or `stdout` when no route is set.
    pub(crate) fn effective_sinks(&self) -> BTreeMap<String, SinkSettings> {
        if self.routes.is_empty() && !self.sinks.contains_key("stdout") {
            let mut sinks = self.sinks.clone();
            sinks.insert("stdout".to_string(), SinkSettings::new(SinkKind::Stdout {}));
            self.with_sink_defaults(sinks)
        } else {
            self.with_sink_defaults(self.sinks.clone())
        }
    }

    /// Fills in what sinks inherit: a Redis stream without its own `url` uses `redis.url`.
    fn with_sink_defaults(
        &self,
        mut sinks: BTreeMap<String, SinkSettings>,
    ) -> BTreeMap<String, SinkSettings> {
        for sink in sinks.values_mut() {
            if let SinkKind::RedisStream(stream) = &mut sink.kind {
                if stream.url.is_none() {
                    stream.url = self.redis.url.clone();
                }
                if stream.tls_ca_file.is_none() {
                    stream.tls_ca_file = self.redis.tls_ca_file.clone();
                }
            }
        }
        sinks
    }

    /// The retry policy of one sink: its own keys, else the `[worker]` defaults.
    #[cfg(test)]
    pub(crate) fn sink_retry(&self, retry: &SinkRetrySettings) -> RetryPolicy {
        RetryPolicy::resolve(retry, &self.worker)
    }

    /// The routes the daemon runs with: the configured ones, or every event to stdout.
    pub(crate) fn effective_routes(&self) -> Vec<RouteSettings> {
        if self.routes.is_empty() {
            vec![RouteSettings::catch_all()]
        } else {
            self.routes.clone()
        }
    }

    /// One warning per configured sink that no route names: it would receive nothing. Without
    /// any route every event goes to the built-in stdout sink, so every other sink is unused.
    pub(crate) fn unused_sinks(&self) -> Vec<String> {
        let routes = self.effective_routes();
        self.sinks
            .keys()
            .filter(|name| !routes.iter().any(|route| route.sinks.contains(name)))
            .map(|name| {
                if self.routes.is_empty() {
                    format!(
                        "sink {name:?} is named by no route, so it receives nothing: with no \
                         [[routes]] every event goes to stdout; add a route with \
                         sinks = [{name:?}]"
                    )
                } else {
                    format!(
                        "sink {name:?} is named by no route, so it receives nothing: add it to a \
                         route's `sinks`, or remove [sinks.{name}]"
                    )
                }
            })
            .collect()
    }

    /// Path of the embedded journal database.
    pub(crate) fn journal_path(&self) -> PathBuf {
        self.storage.path.join("journal.sqlite3")
    }
}

/// How often and how patiently one sink is retried for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Attempts before the event is dead-lettered for this sink (at least 1).
    pub(crate) attempts: u32,
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl RetryPolicy {
    pub(crate) fn resolve(retry: &SinkRetrySettings, worker: &WorkerSettings) -> RetryPolicy {
        RetryPolicy {
            attempts: retry.attempts.unwrap_or(worker.max_attempts),
            initial: retry.retry_initial.unwrap_or(worker.retry_initial),
            max: retry.retry_max.unwrap_or(worker.retry_max),
        }
    }
}

/// A setting that takes one of a few words. Read by [`choice`] rather than serde's derived enum
/// code, whose error (through the `config` crate) names the Rust type and not the valid words.
trait Choice: Copy + 'static {
    const CHOICES: &'static [(&'static str, Self)];
}

impl Choice for SyncMode {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("full", SyncMode::Full), ("normal", SyncMode::Normal)];
}

impl Choice for QueueBackend {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("embedded", QueueBackend::Embedded),
        ("redis", QueueBackend::Redis),
    ];
}

impl Choice for LogFormat {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("pretty", LogFormat::Pretty), ("json", LogFormat::Json)];
}

/// The valid words of a [`Choice`], quoted, for error messages: `"full" or "normal"`.
fn choices_text<T: Choice>() -> String {
    let words: Vec<String> = T::CHOICES
        .iter()
        .map(|(word, _)| format!("{word:?}"))
        .collect();
    match words.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn choice<'de, D: serde::Deserializer<'de>, T: Choice>(deserializer: D) -> Result<T, D::Error> {
    let word = String::deserialize(deserializer)?;
    T::CHOICES
        .iter()
        .find(|(name, _)| *name == word)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("must be {}, got {word:?}", choices_text::<T>()))
        })
}
