//! Settings: where every knob of the daemon comes from, and the check that they make sense.
//!
//! In: the embedded `config/default.toml`, then `config/default.toml` and `config/{APP_ENV}.toml`
//! on disk, then an optional `--config FILE`, then environment variables (the well-known
//! `ATTIO_WEBHOOK_SECRET`, `ATTIO_API_KEY`, `REDIS_URL`, and `ATTIO_WEBHOOKS__SECTION__KEY` for
//! every key). Out: a validated [`Settings`], or a [`ConfigError`] naming the key and the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// The development secret shipped in `config/development.toml`. Accepted with a loud warning
/// outside production, refused in production.
pub const DEVELOPMENT_SECRET: &str = "development-secret-do-not-use-in-production";

/// Prefix of the environment variables that override any key (`ATTIO_WEBHOOKS__SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "ATTIO_WEBHOOKS";

const EMBEDDED_DEFAULTS: &str = include_str!("../config/default.toml");

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

/// Where to load settings from. Tests build [`Settings`] directly from TOML instead.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Directory holding `default.toml` and `{environment}.toml` (default: `APP_CONFIG_DIR` or `config`).
    pub config_dir: Option<PathBuf>,
    /// An extra file, applied after the directory's files.
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// From `APP_ENV`, not from files.
    #[serde(skip)]
    pub environment: String,
    pub server: ServerSettings,
    pub webhook: WebhookSettings,
    pub storage: StorageSettings,
    pub queue: QueueSettings,
    pub worker: WorkerSettings,
    pub dedupe: DedupeSettings,
    pub redis: RedisSettings,
    pub log: LogSettings,
    pub attio: AttioSettings,
    pub enrichment: EnrichmentSettings,
    pub admin: AdminSettings,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSettings>,
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
    /// Scheduled reconciliation of a `postgres` sink with Attio (off by default).
    #[serde(default)]
    pub sync: crate::mirror::settings::SyncSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub path: String,
    pub body_limit: usize,
    /// Time for a request's headers to arrive, from the accept (or, on a kept-alive connection,
    /// from the next request's first byte).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time for the webhook's body to arrive once its headers have.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may wait, with no request in progress, for its next one.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections open at once on this listener; at the cap new ones wait in the listen queue.
    pub max_connections: usize,
    /// Serve `/metrics` on this listener too. Unset: yes, unless `admin.listen` is set or
    /// `APP_ENV=production`.
    #[serde(default)]
    pub metrics: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    #[serde(default, serialize_with = "redact_secrets")]
    pub secrets: Vec<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub path: PathBuf,
    /// When a commit reaches the disk; see [`SyncMode`].
    #[serde(deserialize_with = "choice")]
    pub sync: SyncMode,
    /// How long delivered events stay in the history (by time received).
    #[serde(with = "humantime_serde")]
    pub history: Duration,
    /// How long dead letters and unparsed deliveries are kept; unset: until replayed or deleted.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead_letter_history: Option<Duration>,
}

/// How hard the journal flushes each commit (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
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
    pub max_backlog: u64,
    pub channel_capacity: usize,
    /// With `backend = "redis"` and `APP_ENV=production`, start even on a Redis without an
    /// append-only file (a Redis restart then loses acknowledged deliveries).
    #[serde(default)]
    pub allow_volatile_redis: bool,
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
pub struct WorkerSettings {
    pub enabled: bool,
    pub concurrency: usize,
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    #[serde(with = "duration")]
    pub retry_max: Duration,
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeSettings {
    #[serde(with = "duration")]
    pub claim_lease: Duration,
    #[serde(with = "duration")]
    pub done_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    #[serde(default, serialize_with = "redact_optional_secret")]
    pub url: Option<SecretString>,
    pub key_prefix: String,
    /// PEM file of the CA certificates a `rediss://` connection trusts besides the system's
    /// (a private CA, or a managed Redis whose CA is not in the system store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// A second listener for /metrics, /healthz and /readyz, the events API and the console;
    /// empty: all of them on the main one.
    #[serde(default)]
    pub listen: String,
    /// Token of the events API and the console (`ATTIO_WEBHOOKS_ADMIN_TOKEN`). None: they are
    /// served only on a loopback listener, and refused in production.
    #[serde(default, serialize_with = "redact_optional_secret")]
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(deserialize_with = "choice")]
    pub format: LogFormat,
    pub level: String,
    /// Lines `serve` may hold for its log-writing thread before it drops new ones (counted in
    /// `attio_webhooks_log_lines_dropped_total`), so that a stalled stderr never stalls ingress.
    pub queue_lines: usize,
}

/// How the daemon talks to Attio's REST API (the `attio` module).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttioSettings {
    /// `https://api.attio.com`; tests point it at a local fake.
    #[serde(serialize_with = "redact_url_credentials")]
    pub base_url: String,
    /// Bearer token (`ATTIO_API_KEY`). None: enrichment is disabled, events still flow.
    #[serde(default, serialize_with = "redact_optional_secret")]
    pub api_key: Option<SecretString>,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Read requests (GET) per second, shared by the whole process (and with Redis, by replicas).
    pub read_rate: u32,
    /// Write requests (POST/PATCH/DELETE) per second, shared the same way.
    pub write_rate: u32,
    /// First retry delay of a transient failure; doubles each time, full jitter.
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    /// Largest delay between two tries of one request.
    #[serde(with = "duration")]
    pub retry_max_delay: Duration,
    /// Longest time one request may spend retrying before its error is returned.
    #[serde(with = "duration")]
    pub retry_total: Duration,
    /// Consecutive failures (5xx, timeouts, connection errors) that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long the open breaker refuses requests before one probe is let through.
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
}

/// The enrichment stage (the `enrich` module).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentSettings {
    /// `record.updated` / `list-entry.updated` events of one record or entry that arrive within
    /// this window share one fetch.
    #[serde(with = "duration")]
    pub coalesce_window: Duration,
    /// How long resolved object, list and attribute slugs are kept.
    #[serde(with = "duration")]
    pub schema_ttl: Duration,
}

/// Whether the events of a route are re-fetched from Attio (`enrich` in `[[routes]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum RouteEnrich {
    /// `false`: the route does not need the fetched data.
    Off,
    /// `"optional"`: deliver with `enrichment: "failed"` rather than retry when the fetch fails.
    Optional,
    /// `true` (default): an event whose fetch failed is retried, never delivered half-done.
    #[default]
    Required,
}

impl Serialize for RouteEnrich {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RouteEnrich::Off => serializer.serialize_bool(false),
            RouteEnrich::Optional => serializer.serialize_str("optional"),
            RouteEnrich::Required => serializer.serialize_bool(true),
        }
    }
}

impl<'de> Deserialize<'de> for RouteEnrich {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Flag(true) => Ok(RouteEnrich::Required),
            Raw::Flag(false) => Ok(RouteEnrich::Off),
            Raw::Word(word) => match word.as_str() {
                "true" => Ok(RouteEnrich::Required),
                "false" => Ok(RouteEnrich::Off),
                "optional" => Ok(RouteEnrich::Optional),
                other => Err(serde::de::Error::custom(format!(
                    "enrich must be true, false or \"optional\", got {other:?}"
                ))),
            },
        }
    }
}

/// One configured sink. The table name (`[sinks.NAME]`) is its name, `kind` says what it is,
/// and `attempts`, `retry_initial` and `retry_max` (accepted by every kind) override the
/// `[worker]` defaults for this sink only.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub kind: SinkKind,
    pub retry: SinkRetrySettings,
}

impl SinkSettings {
    pub fn new(kind: SinkKind) -> SinkSettings {
        SinkSettings {
            kind,
            retry: SinkRetrySettings::default(),
        }
    }
}

/// Per-sink overrides of the worker's retry policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkRetrySettings {
    /// Attempts at delivering one event to this sink before the event is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(
        default,
        with = "duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_initial: Option<Duration>,
    #[serde(
        default,
        with = "duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_max: Option<Duration>,
}

/// The keys of [`SinkRetrySettings`], taken out of a sink table before its `kind` is read.
const SINK_RETRY_KEYS: [&str; 3] = ["attempts", "retry_initial", "retry_max"];

impl<'de> Deserialize<'de> for SinkSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Serde cannot both flatten the shared keys into every kind and refuse unknown keys, so
        // the table is split by hand: the shared keys here, the rest checked strictly by kind.
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let mut retry = serde_json::Map::new();
        for key in SINK_RETRY_KEYS {
            if let Some(value) = table.remove(key) {
                retry.insert(key.to_string(), value);
            }
        }
        let retry = SinkRetrySettings::deserialize(serde_json::Value::Object(retry.clone()))
            .map_err(|error| {
                // Name the key that failed: serde_json's message does not.
                let key = retry
                    .iter()
                    .find(|(key, value)| {
                        let one = serde_json::Map::from_iter([((*key).clone(), (*value).clone())]);
                        SinkRetrySettings::deserialize(serde_json::Value::Object(one)).is_err()
                    })
                    .map(|(key, _)| key.clone());
                match key {
                    Some(key) => D::Error::custom(format!("`{key}` {error}")),
                    None => D::Error::custom(error),
                }
            })?;
        let kind =
            SinkKind::deserialize(serde_json::Value::Object(table)).map_err(D::Error::custom)?;
        Ok(SinkSettings { kind, retry })
    }
}

impl Serialize for SinkSettings {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // One table, as it is written: `kind`, the kind's keys, then the retry overrides.
        #[derive(Serialize)]
        struct Table<'a> {
            #[serde(flatten)]
            kind: &'a SinkKind,
            #[serde(flatten)]
            retry: &'a SinkRetrySettings,
        }
        Table {
            kind: &self.kind,
            retry: &self.retry,
        }
        .serialize(serializer)
    }
}

/// What a sink is, with the keys of its kind.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkKind {
    /// Append one JSON object per line to a file.
    Jsonl { path: PathBuf },
    /// Write one JSON object per line to standard output (logs go to standard error).
    Stdout {},
    /// POST each event as JSON to a URL, signed the Standard Webhooks way.
    Http(HttpSinkSettings),
    /// `XADD` each event to a Redis stream.
    RedisStream(RedisStreamSinkSettings),
    /// Run a program with the event on standard input.
    Command(CommandSinkSettings),
    /// Keep tables and typed views in PostgreSQL equal to Attio (`crate::mirror`).
    Postgres(crate::mirror::settings::PostgresSinkSettings),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkSettings {
    #[serde(serialize_with = "redact_url_credentials")]
    pub url: String,
    /// Standard Webhooks secret, `whsec_<base64>`; without it requests are not signed.
    #[serde(
        default,
        serialize_with = "redact_optional_secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub secret: Option<SecretString>,
    /// Static headers sent with every request (values may be credentials: never logged).
    #[serde(default, serialize_with = "redact_secret_values")]
    pub headers: BTreeMap<String, SecretString>,
    #[serde(default = "default_http_timeout", with = "duration")]
    pub timeout: Duration,
    /// Requests in flight to this sink at most; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamSinkSettings {
    /// Redis to write to; defaults to `redis.url`.
    #[serde(
        default,
        serialize_with = "redact_optional_secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub url: Option<SecretString>,
    /// CA certificates for a `rediss://` URL; defaults to `redis.tls_ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// The stream's key.
    pub key: String,
    /// Approximate cap on the stream's length (`XADD ... MAXLEN ~ n`).
    #[serde(default = "default_stream_maxlen")]
    pub maxlen: u64,
}

fn default_stream_maxlen() -> u64 {
    1_000_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSinkSettings {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "default_command_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    pub name: String,
    /// Event-type patterns: `record.updated`, `record.*`, `*`.
    pub events: Vec<String>,
    pub sinks: Vec<String>,
    /// Re-fetch the event's subject from Attio: `true` (default), `false` or `"optional"`.
    #[serde(default)]
    pub enrich: RouteEnrich,
    /// Attio's webhook filter shape, `{"$and"|"$or": [{field, operator, value}]}`, as an inline
    /// table or a JSON string; checked by [`crate::routing::EventFilter::parse`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<serde_json::Value>,
    /// Only events about this object (`deals`) or one of these: slugs or UUIDs. For records the
    /// event's `id.object_id`; for list entries and notes `parent_object_id`; for comments
    /// `object_id`. Checked by [`crate::routing::RouteTable::compile`].
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub object: Option<Vec<String>>,
    /// Only events about this list (`id.list_id`, or a comment's `list_id`): slugs or UUIDs.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub list: Option<Vec<String>>,
    /// Only events naming this changed attribute (`id.attribute_id`): slugs or UUIDs.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Option::is_none"
    )]
    pub attribute: Option<Vec<String>>,
    /// Deliver the `record.updated` / `list-entry.updated` events that shared one coalesced
    /// fetch as one line to this route's sinks, with `changed_attributes` and
    /// `collapsed_event_ids`, instead of one line per event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub collapse: bool,
    /// Hold the `record.updated` / `list-entry.updated` events of one record (or entry) this
    /// long before the fetch, so that the updates that follow an edit (formula attributes
    /// recomputed by Attio about a second later) share it, and deliver them as one collapsed
    /// line. Implies `collapse`. Checked by [`crate::routing::RouteTable::compile`].
    #[serde(
        default,
        with = "duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub settle: Option<Duration>,
}

/// `object = "deals"` or `object = ["deals", "companies"]`; `None` when the key is absent.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    match Option::<Raw>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Raw::One(one)) => Ok(Some(vec![one])),
        Some(Raw::Many(many)) => Ok(Some(many)),
    }
}

impl Settings {
    /// Loads every layer and validates the result.
    pub fn load(options: &LoadOptions) -> Result<Settings, ConfigError> {
        let settings = Self::load_unvalidated(options)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Like [`Settings::load`] but without requiring a webhook secret, for tools that only work
    /// on the journal (`dead-letters`): they never verify a delivery.
    pub fn load_without_secret(options: &LoadOptions) -> Result<Settings, ConfigError> {
        let settings = Self::load_unvalidated(options)?;
        settings.validate_with(false)?;
        Ok(settings)
    }

    fn load_unvalidated(options: &LoadOptions) -> Result<Settings, ConfigError> {
        let config_dir = options
            .config_dir
            .clone()
            .or_else(|| std::env::var_os("APP_CONFIG_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config"));
        let environment = resolve_environment(std::env::var("APP_ENV").ok(), &config_dir)?;

        // The layers after the embedded defaults, in the order they apply; kept so that an error
        // can say which one a bad key came from.
        let mut layers = vec![
            Layer::File(config_dir.join("default.toml")),
            Layer::File(config_dir.join(format!("{environment}.toml"))),
        ];
        if let Some(file) = &options.config_file {
            if !file.is_file() {
                return Err(ConfigError::Load(format!(
                    "--config {}: no such file",
                    file.display()
                )));
            }
            layers.push(Layer::File(file.clone()));
        }
        layers.push(Layer::Environment);
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            EMBEDDED_DEFAULTS,
            config::FileFormat::Toml,
        ));
        for layer in &layers {
            builder = match layer {
                Layer::File(path) => builder.add_source(file_source(path, false)),
                Layer::Environment => builder.add_source(environment_source()),
                Layer::Variable { .. } => builder,
            };
        }
        // The well-known variables users expect, applied last.
        for (variable, key) in WELL_KNOWN_VARIABLES {
            let Ok(value) = std::env::var(variable) else {
                continue;
            };
            builder = if key == "webhook.secrets" {
                // Entries are trimmed by `normalize`, with those of every other layer.
                let list: Vec<String> = value.split(',').map(str::to_string).collect();
                builder.set_override(key, list)
            } else {
                builder.set_override(key, value)
            }
            .map_err(load_error)?;
            layers.push(Layer::Variable { variable, key });
        }
        if let Ok(token) = std::env::var("ATTIO_WEBHOOKS_ADMIN_TOKEN") {
            builder = builder
                .set_override("admin.token", token)
                .map_err(load_error)?;
        }
        let raw = builder.build().map_err(load_error)?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|error| deserialize_error(error, &layers))?;
        settings.environment = environment;
        settings.normalize();
        if let Ok(filter) = std::env::var("RUST_LOG") {
            check_log_filter(&filter).map_err(|problem| {
                ConfigError::invalid("RUST_LOG", format!("(which overrides log.level) {problem}"))
            })?;
        }
        Ok(settings)
    }

    /// Settings from the embedded defaults plus one TOML text, for tests and tools. Validated.
    pub fn from_toml(environment: &str, overrides: &str) -> Result<Settings, ConfigError> {
        Self::from_toml_layers(environment, &[overrides])
    }

    /// Like [`Settings::from_toml`] with several TOML texts, each overriding the ones before.
    pub fn from_toml_layers(environment: &str, layers: &[&str]) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            EMBEDDED_DEFAULTS,
            config::FileFormat::Toml,
        ));
        for layer in layers {
            builder = builder.add_source(config::File::from_str(layer, config::FileFormat::Toml));
        }
        let raw = builder.build().map_err(load_error)?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|error| deserialize_error(error, &[]))?;
        settings.environment = environment.to_string();
        settings.normalize();
        settings.validate()?;
        Ok(settings)
    }

    /// Trims each webhook secret (`"old, new"` during a rotation means `old` and `new`: a
    /// signing secret never starts or ends with a space), drops empty ones (`"a,,b"`, a trailing
    /// comma), and drops an empty Redis URL or API key.
    fn normalize(&mut self) {
        self.webhook.secrets = self
            .webhook
            .secrets
            .iter()
            .map(|secret| secret.expose_secret().trim())
            .filter(|secret| !secret.is_empty())
            .map(|secret| SecretString::from(secret.to_string()))
            .collect();
        if self
            .redis
            .url
            .as_ref()
            .is_some_and(|u| u.expose_secret().trim().is_empty())
        {
            self.redis.url = None;
        }
        if self
            .attio
            .api_key
            .as_ref()
            .is_some_and(|k| k.expose_secret().trim().is_empty())
        {
            self.attio.api_key = None;
        }
        if self
            .admin
            .token
            .as_ref()
            .is_some_and(|k| k.expose_secret().trim().is_empty())
        {
            self.admin.token = None;
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(true)
    }

    /// `for_daemon`: the settings `serve` runs with (a webhook secret is required, and routes
    /// must be able to match); tools that only share the file skip those two checks.
    fn validate_with(&self, for_daemon: bool) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if let Some(admin) = self.admin_addr()? {
            if admin.port() != 0 && Some(admin) == self.listen_addr().ok() {
                return Err(ConfigError::invalid(
                    "admin.listen",
                    "must differ from server.listen",
                ));
            }
        }
        if !self.server.path.starts_with('/') {
            return Err(ConfigError::invalid(
                "server.path",
                format!("must start with '/', got {:?}", self.server.path),
            ));
        }
        if matches!(self.server.path.as_str(), "/healthz" | "/readyz") {
            return Err(ConfigError::invalid(
                "server.path",
                "must not be /healthz or /readyz",
            ));
        }
        if self.server.body_limit == 0 {
            return Err(ConfigError::invalid(
                "server.body_limit",
                "must be greater than 0 (bytes)",
            ));
        }
        for (key, value) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(
                    key,
                    "must be longer than 0 (for example \"10s\")",
                ));
            }
        }
        if self.server.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be greater than 0",
            ));
        }
        if self.log.queue_lines == 0 {
            return Err(ConfigError::invalid(
                "log.queue_lines",
                "must be greater than 0 (lines held for the log writer)",
            ));
        }
        if for_daemon && self.webhook.secrets.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        if self.is_production() && self.uses_development_secret() {
            return Err(ConfigError::DevelopmentSecretInProduction);
        }
        if for_daemon && self.is_production() && self.admin.token.is_none() {
            return Err(ConfigError::invalid(
                "admin.token",
                "is required with APP_ENV=production: set ATTIO_WEBHOOKS_ADMIN_TOKEN to a long \
                 random secret (the events API and the console need it)",
            ));
        }
        if self.storage.history.is_zero() {
            return Err(ConfigError::invalid(
                "storage.history",
                "must be longer than 0 (for example \"7d\")",
            ));
        }
        if self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "storage.path",
                "must name a directory",
            ));
        }
        if self.queue.max_backlog == 0 {
            return Err(ConfigError::invalid(
                "queue.max_backlog",
                "must be greater than 0",
            ));
        }
        if self.queue.channel_capacity == 0 {
            return Err(ConfigError::invalid(
                "queue.channel_capacity",
                "must be greater than 0",
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                "must be greater than 0",
            ));
        }
        if self.worker.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "worker.max_attempts",
                "must be at least 1",
            ));
        }
        if self.worker.retry_initial.is_zero() || self.worker.retry_max < self.worker.retry_initial
        {
            return Err(ConfigError::invalid(
                "worker.retry_initial",
                format!(
                    "is {}; it must be greater than 0 and not above worker.retry_max ({})",
                    show(self.worker.retry_initial),
                    show(self.worker.retry_max)
                ),
            ));
        }
        if self.worker.poll_interval.is_zero() {
            return Err(ConfigError::invalid(
                "worker.poll_interval",
                "must be greater than 0",
            ));
        }
        if self.dedupe.claim_lease < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "dedupe.claim_lease",
                format!(
                    "is {}; it must be at least 1s",
                    show(self.dedupe.claim_lease)
                ),
            ));
        }
        if self.dedupe.done_ttl < self.dedupe.claim_lease {
            return Err(ConfigError::invalid(
                "dedupe.done_ttl",
                format!(
                    "is {}; it must be longer than dedupe.claim_lease ({}) (Attio retries for \
                     about 3 days: keep 4d)",
                    show(self.dedupe.done_ttl),
                    show(self.dedupe.claim_lease)
                ),
            ));
        }
        if let Some(url) = &self.redis.url {
            check_redis_url("redis.url", url, self.redis.tls_ca_file.as_deref())?;
        } else if self.redis.tls_ca_file.is_some() {
            return Err(ConfigError::invalid(
                "redis.tls_ca_file",
                "is set but redis.url is not (REDIS_URL)",
            ));
        }
        if self.redis.key_prefix.is_empty() {
            return Err(ConfigError::invalid(
                "redis.key_prefix",
                "must not be empty",
            ));
        }
        if self.queue.backend == QueueBackend::Redis {
            if self.redis.url.is_none() {
                return Err(ConfigError::invalid(
                    "queue.backend",
                    "is \"redis\" but redis.url is not set (REDIS_URL)",
                ));
            }
            // The prefix becomes the hash tag `{prefix}` that keeps every queue key in one
            // Redis Cluster slot; a brace inside it would end the tag early.
            if self.redis.key_prefix.contains(['{', '}']) {
                return Err(ConfigError::invalid(
                    "redis.key_prefix",
                    "must not contain '{' or '}' with queue.backend = \"redis\"",
                ));
            }
        }
        check_log_filter(&self.log.level)
            .map_err(|problem| ConfigError::invalid("log.level", problem))?;
        self.validate_attio()?;
        for (name, sink) in &self.effective_sinks() {
            if name.is_empty() {
                return Err(ConfigError::invalid("sinks", "a sink has an empty name"));
            }
            validate_sink(name, sink, &self.worker)?;
        }
        let routes =
            crate::routing::RouteTable::compile(&self.routes, &self.effective_sink_names())?;
        // Slugs in route keys are matched against the names enrichment resolves through Attio's
        // API: without a key such a route could never match. Only the daemon cares; tools that
        // read the same file (dead-letters, send) do not route.
        if for_daemon && self.attio.api_key.is_none() {
            if let Some((route, key, slug)) = routes.first_slug_key() {
                let index = self
                    .routes
                    .iter()
                    .position(|r| r.name == route)
                    .unwrap_or(0);
                return Err(ConfigError::invalid(
                    &format!("routes[{index}] ({route:?})"),
                    format!(
                        "has `{key}` = {slug:?}, a slug, which the daemon resolves through \
                         Attio's API: set ATTIO_API_KEY (attio.api_key), or give the {key}'s UUID"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_attio(&self) -> Result<(), ConfigError> {
        let attio = &self.attio;
        match reqwest::Url::parse(&attio.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "attio.base_url",
                    format!(
                        "must be an http(s) URL such as https://api.attio.com, got {:?}",
                        redacted_url(&attio.base_url)
                    ),
                ))
            }
        }
        for (key, value) in [
            ("attio.connect_timeout", attio.connect_timeout),
            ("attio.request_timeout", attio.request_timeout),
            ("attio.retry_initial", attio.retry_initial),
            ("attio.breaker_cooldown", attio.breaker_cooldown),
            ("enrichment.schema_ttl", self.enrichment.schema_ttl),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if attio.read_rate == 0 || attio.write_rate == 0 {
            let key = if attio.read_rate == 0 {
                "attio.read_rate"
            } else {
                "attio.write_rate"
            };
            return Err(ConfigError::invalid(
                key,
                "must be at least 1 (requests per second; Attio allows 100 reads and 25 writes)",
            ));
        }
        if attio.retry_max_delay < attio.retry_initial {
            return Err(ConfigError::invalid(
                "attio.retry_max_delay",
                format!(
                    "is {}; it must not be below attio.retry_initial ({})",
                    show(attio.retry_max_delay),
                    show(attio.retry_initial)
                ),
            ));
        }
        if attio.breaker_threshold == 0 {
            return Err(ConfigError::invalid(
                "attio.breaker_threshold",
                "must be at least 1",
            ));
        }
        // An event's claim must outlive its enrichment, or another worker could take it over.
        let enrichment_time =
            attio.retry_total + attio.request_timeout + self.enrichment.coalesce_window;
        if enrichment_time >= self.dedupe.claim_lease {
            return Err(ConfigError::invalid(
                "attio.retry_total",
                format!(
                    "({}) plus attio.request_timeout ({}) and enrichment.coalesce_window ({}) is \
                     {}, which must stay below dedupe.claim_lease ({}): raise \
                     dedupe.claim_lease above {} or lower attio.retry_total",
                    show(attio.retry_total),
                    show(attio.request_timeout),
                    show(self.enrichment.coalesce_window),
                    show(enrichment_time),
                    show(self.dedupe.claim_lease),
                    show(enrichment_time)
                ),
            ));
        }
        Ok(())
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "server.listen",
                format!(
                    "is not an address like 127.0.0.1:8080: {:?}",
                    self.server.listen
                ),
            )
        })
    }

    /// The admin listener's address, when one is configured.
    /// How long history is kept.
    pub fn retention(&self) -> crate::journal::history::Retention {
        crate::journal::history::Retention {
            history: self.storage.history,
            dead_letters: self.storage.dead_letter_history,
        }
    }

    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let listen = self.admin.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!("is not an address like 127.0.0.1:9090: {listen:?}"),
            )
        })
    }

    /// Whether `/metrics` is served on the main listener: when `server.metrics` says so, else
    /// only outside production and when no admin listener takes it.
    pub fn metrics_on_main_listener(&self) -> bool {
        match self.server.metrics {
            Some(explicit) => explicit,
            None => !self.is_production() && self.admin.listen.trim().is_empty(),
        }
    }

    /// Whether the production guard applies (`APP_ENV=production`, in any case).
    pub fn is_production(&self) -> bool {
        self.environment.eq_ignore_ascii_case("production")
    }

    pub fn uses_development_secret(&self) -> bool {
        self.webhook
            .secrets
            .iter()
            .any(|s| s.expose_secret() == DEVELOPMENT_SECRET)
    }

    /// The sinks the daemon runs with: the configured ones, or `stdout` when no route is set.
    pub fn effective_sinks(&self) -> BTreeMap<String, SinkSettings> {
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
    pub fn sink_retry(&self, retry: &SinkRetrySettings) -> RetryPolicy {
        RetryPolicy::resolve(retry, &self.worker)
    }

    fn effective_sink_names(&self) -> Vec<String> {
        self.effective_sinks().into_keys().collect()
    }

    /// The routes the daemon runs with: the configured ones, or every event to stdout.
    pub fn effective_routes(&self) -> Vec<RouteSettings> {
        if self.routes.is_empty() {
            vec![RouteSettings {
                name: "default".to_string(),
                events: vec!["*".to_string()],
                sinks: vec!["stdout".to_string()],
                enrich: RouteEnrich::default(),
                filter: None,
                object: None,
                list: None,
                attribute: None,
                collapse: false,
                settle: None,
            }]
        } else {
            self.routes.clone()
        }
    }

    /// One warning per configured sink that no route names: it would receive nothing. Without
    /// any route every event goes to the built-in stdout sink, so every other sink is unused.
    pub fn unused_sinks(&self) -> Vec<String> {
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
    pub fn journal_path(&self) -> PathBuf {
        self.storage.path.join("journal.sqlite3")
    }
}

/// How often and how patiently one sink is retried for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before the event is dead-lettered for this sink (at least 1).
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn resolve(retry: &SinkRetrySettings, worker: &WorkerSettings) -> RetryPolicy {
        RetryPolicy {
            attempts: retry.attempts.unwrap_or(worker.max_attempts),
            initial: retry.retry_initial.unwrap_or(worker.retry_initial),
            max: retry.retry_max.unwrap_or(worker.retry_max),
        }
    }
}

/// A duration as the settings write it (`30s`, `1m 30s`).
fn show(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

fn validate_sink(
    name: &str,
    sink: &SinkSettings,
    worker: &WorkerSettings,
) -> Result<(), ConfigError> {
    let key = |field: &str| format!("sinks.{name}.{field}");
    let policy = RetryPolicy::resolve(&sink.retry, worker);
    if policy.attempts == 0 {
        return Err(ConfigError::invalid(&key("attempts"), "must be at least 1"));
    }
    if policy.initial.is_zero() || policy.max < policy.initial {
        return Err(ConfigError::invalid(
            &key("retry_initial"),
            format!(
                "must be greater than 0 and not above retry_max ({} here)",
                humantime::format_duration(policy.max)
            ),
        ));
    }
    match &sink.kind {
        SinkKind::Jsonl { path } if path.as_os_str().is_empty() => {
            return Err(ConfigError::invalid(&key("path"), "must name a file"));
        }
        SinkKind::Jsonl { .. } | SinkKind::Stdout {} => {}
        SinkKind::Http(http) => {
            match reqwest::Url::parse(&http.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => {
                    return Err(ConfigError::invalid(
                        &key("url"),
                        format!(
                            "must be an http:// or https:// URL, got {:?}",
                            redacted_url(&http.url)
                        ),
                    ))
                }
            }
            if let Some(secret) = &http.secret {
                crate::sinks::http::decode_secret(secret.expose_secret())
                    .map_err(|problem| ConfigError::invalid(&key("secret"), problem))?;
            }
            for (header, value) in &http.headers {
                crate::sinks::http::check_header(header, value.expose_secret()).map_err(
                    |problem| ConfigError::invalid(&key(&format!("headers.{header}")), problem),
                )?;
            }
            if http.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    &key("timeout"),
                    "must be greater than 0",
                ));
            }
            if http.max_concurrency == Some(0) {
                return Err(ConfigError::invalid(
                    &key("max_concurrency"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        SinkKind::RedisStream(stream) => {
            let Some(url) = &stream.url else {
                return Err(ConfigError::invalid(
                    &key("url"),
                    "is needed (or set redis.url / REDIS_URL, which it defaults to)",
                ));
            };
            check_redis_url(&key("url"), url, stream.tls_ca_file.as_deref())?;
            if stream.key.trim().is_empty() {
                return Err(ConfigError::invalid(&key("key"), "must name the stream"));
            }
            if stream.maxlen == 0 {
                return Err(ConfigError::invalid(
                    &key("maxlen"),
                    "must be greater than 0",
                ));
            }
        }
        SinkKind::Postgres(postgres) => {
            postgres
                .check()
                .map_err(|(field, problem)| ConfigError::invalid(&key(field), problem))?;
        }
        SinkKind::Command(command) => {
            if command.program.trim().is_empty() {
                return Err(ConfigError::invalid(&key("program"), "must name a program"));
            }
            if command.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    &key("timeout"),
                    "must be greater than 0",
                ));
            }
        }
    }
    Ok(())
}

/// Checks a Redis URL the way connecting will use it (scheme, host, database, TLS support, the
/// CA file), so that `check-config` refuses what `serve` would. Nothing is connected.
fn check_redis_url(
    key: &str,
    url: &SecretString,
    ca_file: Option<&Path>,
) -> Result<(), ConfigError> {
    let text = url.expose_secret();
    if !["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| text.starts_with(scheme))
    {
        return Err(ConfigError::invalid(
            key,
            "must start with redis://, rediss:// (TLS) or unix:// (REDIS_URL)",
        ));
    }
    crate::dedupe::redis::client(url, ca_file)
        .map(|_| ())
        .map_err(|problem| ConfigError::invalid(key, problem))
}

/// A load error without the values it quotes. The `config` crate's messages quote the offending
/// value (`invalid type: string "...", expected a sequence for key webhook.secrets`) and TOML
/// syntax errors quote the source line; either may be a secret. The key, the line number and
/// what was expected stay, which is what the user needs to fix it.
fn load_error(error: config::ConfigError) -> ConfigError {
    ConfigError::Load(redact_quoted_values(&error.to_string()))
}

/// A value that the settings cannot take, as [`ConfigError::Invalid`]: the whole key, what is
/// wrong in plain words (no Rust type names, values redacted as in [`load_error`]), and where the
/// value came from (a file, or the environment variable to change), found in `layers`.
fn deserialize_error(error: config::ConfigError, layers: &[Layer]) -> ConfigError {
    let (key, message) = match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            key,
            ..
        } => (key, format!("is {unexpected}, expected {expected}")),
        config::ConfigError::At { error, key, .. } => (key, error.to_string()),
        config::ConfigError::Message(message) => (None, message),
        other => return load_error(other),
    };
    let mut key = key.unwrap_or_default();
    let mut message = message;
    // serde's unknown-field message names the field; the config crate names its table.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            key = join_key(&key, field);
            let expected = expected.trim_start_matches(',').trim();
            message = format!("is not a known key; {expected}");
        }
    } else if let Some(rest) = message.strip_prefix('`') {
        // A sink's retry key, named by `SinkSettings`'s deserializer.
        if let Some((field, problem)) = rest.split_once("` ") {
            key = join_key(&key, field);
            message = problem.to_string();
        }
    }
    let message = plain_words(&redact_quoted_values(&message));
    if key.is_empty() {
        return ConfigError::Load(message);
    }
    let from = match layers.iter().rev().find(|layer| layer.sets(&key)) {
        None => String::new(),
        Some(Layer::File(path)) => format!(" (in {})", path.display()),
        Some(Layer::Environment) => format!(
            " (from the environment variable {ENV_PREFIX}__{})",
            key.replace('.', "__").to_uppercase()
        ),
        Some(Layer::Variable { variable, .. }) => {
            format!(" (from the environment variable {variable})")
        }
    };
    ConfigError::invalid(&key, format!("{message}{from}"))
}

/// One layer of settings above the embedded defaults.
enum Layer {
    /// A TOML file (`config/default.toml`, `config/{APP_ENV}.toml`, `--config FILE`).
    File(PathBuf),
    /// `ATTIO_WEBHOOKS__SECTION__KEY` variables.
    Environment,
    /// One of [`WELL_KNOWN_VARIABLES`].
    Variable {
        variable: &'static str,
        key: &'static str,
    },
}

impl Layer {
    /// Whether this layer sets `key` (`storage.path`, `sinks.crm.url`, `routes[0].name`).
    fn sets(&self, key: &str) -> bool {
        use config::Source;
        let collected = match self {
            Layer::File(path) => file_source(path, false).collect(),
            Layer::Environment => environment_source().collect(),
            Layer::Variable { key: set, .. } => {
                return key == *set || key.starts_with(&format!("{set}["));
            }
        };
        let Ok(map) = collected else {
            return false;
        };
        // The environment source gives flat dotted keys, files give nested tables.
        if map.contains_key(key) {
            return true;
        }
        let mut segments = key.split('.');
        let Some(first) = segments.next() else {
            return false;
        };
        let (name, mut index) = split_index(first);
        let Some(mut value) = map.get(name).cloned() else {
            return false;
        };
        loop {
            if let Some(at) = index {
                match value.kind {
                    config::ValueKind::Array(items) => match items.into_iter().nth(at) {
                        Some(item) => value = item,
                        None => return false,
                    },
                    _ => return false,
                }
            }
            let Some(segment) = segments.next() else {
                return true;
            };
            let (name, next_index) = split_index(segment);
            index = next_index;
            match value.kind {
                config::ValueKind::Table(mut table) => match table.remove(name) {
                    Some(next) => value = next,
                    None => return false,
                },
                _ => return false,
            }
        }
    }
}

/// `routes[2]` → (`routes`, Some(2)); `path` → (`path`, None).
fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}

/// The variables that set one key each, applied after every other layer.
const WELL_KNOWN_VARIABLES: [(&str, &str); 3] = [
    ("ATTIO_WEBHOOK_SECRET", "webhook.secrets"),
    ("ATTIO_API_KEY", "attio.api_key"),
    ("REDIS_URL", "redis.url"),
];

fn environment_source() -> config::Environment {
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .list_separator(",")
        .with_list_parse_key("webhook.secrets")
        .try_parsing(true)
}

/// The environments shipped in `config/`, which need no file of their own (the embedded
/// defaults stand in when the directory is missing). `APP_ENV` matches them in any case.
pub const SHIPPED_ENVIRONMENTS: [&str; 3] = ["development", "test", "production"];

/// The environment named by `APP_ENV` (unset: `development`). A shipped name is matched in any
/// case (`Production` is `production`, with its guard and JSON logs); any other name needs its
/// own `{config_dir}/{name}.toml`, so that a typo (`prod`) is not silently a bare environment.
pub fn resolve_environment(
    app_env: Option<String>,
    config_dir: &Path,
) -> Result<String, ConfigError> {
    let name = app_env.unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Ok("development".to_string());
    }
    if let Some(shipped) = SHIPPED_ENVIRONMENTS
        .iter()
        .find(|shipped| shipped.eq_ignore_ascii_case(&name))
    {
        return Ok((*shipped).to_string());
    }
    let file = config_dir.join(format!("{name}.toml"));
    if file.is_file() {
        return Ok(name);
    }
    Err(ConfigError::invalid(
        "APP_ENV",
        format!(
            "is {name:?}: not a shipped environment ({}), and there is no {}: set APP_ENV to \
             one of those names, or create that file",
            SHIPPED_ENVIRONMENTS.join(", "),
            file.display()
        ),
    ))
}

/// Checks a `log.level` / `RUST_LOG` filter. `EnvFilter` takes any bare word as a target name,
/// so a misspelt level (`warning`, `debugg`) would silently turn every line off; here each
/// directive must be a level, or `target=level`.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    use tracing_subscriber::filter::LevelFilter;
    const LEVELS: &str = "trace, debug, info, warn, error or off";
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains('[') {
            // Span directives (`target[span{field=value}]=level`) are left to EnvFilter.
            continue;
        }
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (Some(target), level.trim()),
            None => (None, directive),
        };
        if level.parse::<LevelFilter>().is_err() {
            return Err(match target {
                Some(target) => format!(
                    "gives {target:?} the level {level:?}, which is not a level: use {LEVELS}"
                ),
                None => format!(
                    "has {level:?}, which is not a level: use {LEVELS}, optionally per target \
                     as in \"info,attio_webhooks=debug\""
                ),
            });
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|error| format!("is not a valid tracing filter: {error}"))
}

fn join_key(table: &str, field: &str) -> String {
    if table.is_empty() {
        field.to_string()
    } else {
        format!("{table}.{field}")
    }
}

/// Says what the `config` crate and serde say in Rust's words (`64-bit integer`, `u32`) in the
/// words of the TOML file.
fn plain_words(message: &str) -> String {
    let mut text = message.to_string();
    for (rust, plain) in [
        ("an signed 64 bit or less integer", "a whole number"),
        (
            "an unsigned 64 bit or less integer",
            "a whole number, 0 or more",
        ),
        (
            "an unsigned 128 bit or less integer",
            "a whole number, 0 or more",
        ),
        ("an signed 128 bit integer", "a whole number"),
        ("an unsigned 8 bit integer", "a whole number from 0 to 255"),
        (
            "an unsigned 16 bit integer",
            "a whole number from 0 to 65535",
        ),
        (
            "an unsigned 32 bit integer",
            "a whole number from 0 to 4294967295",
        ),
        ("an unsigned 64 bit integer", "a whole number, 0 or more"),
        ("an signed 64 bit integer", "a whole number"),
        ("an signed 8 bit integer", "a whole number from -128 to 127"),
        (
            "an signed 16 bit integer",
            "a whole number from -32768 to 32767",
        ),
        (
            "an signed 32 bit integer",
            "a whole number from -2147483648 to 2147483647",
        ),
        ("an integer", "a whole number"),
        ("a floating point", "a number"),
        ("a boolean", "true or false"),
        ("sequence", "a list"),
        ("unit value", "nothing"),
    ] {
        text = text.replace(rust, plain);
    }
    for (rust, max) in [
        ("u8", u64::from(u8::MAX)),
        ("u16", u64::from(u16::MAX)),
        ("u32", u64::from(u32::MAX)),
        ("u64", u64::MAX),
        ("usize", usize::MAX as u64),
    ] {
        text = text.replace(
            &format!("expected {rust}"),
            &format!("expected a whole number from 0 to {max}"),
        );
    }
    // `64-bit integer `-1``, `floating point `1.5``, `boolean `true``: the value, unquoted.
    for prefix in [
        "128-bit unsigned integer `",
        "64-bit unsigned integer `",
        "128-bit integer `",
        "64-bit integer `",
        "floating point `",
        "integer `",
    ] {
        while let Some(start) = text.find(prefix) {
            let value_start = start + prefix.len();
            let Some(length) = text[value_start..].find('`') else {
                break;
            };
            let value = text[value_start..value_start + length].to_string();
            text.replace_range(
                start..value_start + length + 1,
                &format!("the number {value}"),
            );
        }
    }
    if let Some(start) = text.find("boolean `") {
        text = text.replacen("boolean `", "", 1);
        if let Some(end) = text[start..].find('`') {
            text.remove(start + end);
        }
    }
    text.replace(" map", " a table")
}

fn redact_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for line in message.lines() {
        // The source excerpt of a TOML syntax error: `  |`, `2 | secrets = [...`, `  |   ^`.
        let gutter = line.trim_start();
        let digits = gutter.trim_start_matches(|c: char| c.is_ascii_digit());
        if digits.trim_start().starts_with('|') {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let mut rest = line;
        while let Some(start) = rest.find("string \"") {
            out.push_str(&rest[..start]);
            out.push_str("a string");
            // Skip the quoted value, which serde prints with Rust escapes.
            let value = &rest[start + "string \"".len()..];
            let mut end = value.len();
            let mut escaped = false;
            for (index, c) in value.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = index + 1;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &value[end.min(value.len())..];
        }
        out.push_str(rest);
    }
    out
}

/// Serialises the webhook secrets as a count only. `Serialize` exists so that `check-config` can
/// print the settings; a secret's text must never be part of that output.
fn redact_secrets<S: Serializer>(
    secrets: &[SecretString],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let count = secrets.len();
    let noun = if count == 1 { "secret" } else { "secrets" };
    serializer.serialize_str(&format!("[redacted: {count} {noun}]"))
}

/// Serialises a secret that may be absent (a URL can carry a password) as a marker.
fn redact_optional_secret<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str("[redacted]"),
        None => serializer.serialize_none(),
    }
}

/// A URL as written, with its user info (`user:password@`) and the value of every query
/// parameter replaced by `redacted`, for error messages and for showing settings. Works on text
/// that is not a valid URL too (`http//user:pw@host/x?token=T`, a scheme typo): the user still
/// sees what they wrote, minus anything that may be a credential.
pub fn redacted_url(url: &str) -> String {
    // The authority starts after `//` when there is one (also after a mistyped scheme), else at
    // the start. It ends at the first `/` after that; a password is not supposed to hold `?`, `#`
    // or `@`, but when it does unescaped, the last `@` before that `/` still ends the user info.
    let authority_start = url.find("//").map_or(0, |index| index + 2);
    let (scheme, rest) = url.split_at(authority_start);
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("redacted{}", &rest[at..]),
        None => rest.to_string(),
    };
    let (before_fragment, fragment) = match rest.find('#') {
        Some(index) => rest.split_at(index),
        None => (rest.as_str(), ""),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (before_fragment, None),
    };
    let mut out = format!("{scheme}{path}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=redacted"),
                None if pair.is_empty() => String::new(),
                // `?TOKEN` alone may be the credential itself.
                None => "redacted".to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out.push_str(fragment);
    out
}

fn redact_url_credentials<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted_url(url))
}

/// Serialises a map of secrets (an HTTP sink's headers) with its keys and redacted values.
fn redact_secret_values<S: Serializer>(
    map: &BTreeMap<String, SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.keys().map(|key| (key, "[redacted]")))
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

/// Durations written as in `config/default.toml` (`"30s"`, `"5m"`, `"4d"`). A bare number is
/// refused with an example of what to write: it has no unit, and guessing one would be wrong
/// for half the keys.
mod duration {
    use std::time::Duration;

    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(value, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    /// For keys that may be left out (a sink's own `retry_initial`).
    pub mod optional {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            humantime_serde::option::serialize(value, serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] Duration);
            Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(value)| value))
        }
    }

    struct DurationVisitor;

    fn a_number<E: Error>(number: impl std::fmt::Display) -> E {
        E::custom(format!(
            "is the number {number}, but a duration needs a unit: write it as a string such as \
             \"{number}s\" (seconds) or \"{number}ms\" (milliseconds)"
        ))
    }

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a duration with a unit, such as \"30s\", \"5m\" or \"4d\"")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Duration, E> {
            let trimmed = text.trim();
            if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
                return Err(a_number(trimmed));
            }
            humantime::parse_duration(trimmed).map_err(|problem| {
                E::custom(format!(
                    "is not a duration ({problem}): write a number and a unit, such as \"30s\", \
                     \"250ms\", \"5m\" or \"4d\""
                ))
            })
        }

        fn visit_u64<E: Error>(self, number: u64) -> Result<Duration, E> {
            Err(a_number(number))
        }

        fn visit_i64<E: Error>(self, number: i64) -> Result<Duration, E> {
            Err(a_number(number))
        }

        fn visit_f64<E: Error>(self, number: f64) -> Result<Duration, E> {
            Err(a_number(number))
        }
    }
}

fn file_source(
    path: &Path,
    required: bool,
) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path.to_path_buf())
        .format(config::FileFormat::Toml)
        .required(required)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_with_a_secret_are_valid() {
        let settings = Settings::from_toml("test", "[webhook]\nsecrets = [\"s\"]").unwrap();
        assert_eq!(settings.server.listen, "127.0.0.1:8080");
        assert_eq!(settings.server.path, "/webhooks/attio");
        assert_eq!(settings.server.body_limit, 1024 * 1024);
        assert_eq!(settings.dedupe.done_ttl, Duration::from_secs(4 * 86400));
        assert!(settings.redis.url.is_none());
    }

    #[test]
    fn no_secret_refuses_to_start_naming_the_variable() {
        let error = Settings::from_toml("test", "").unwrap_err();
        assert!(
            error.to_string().contains("ATTIO_WEBHOOK_SECRET"),
            "{error}"
        );
    }

    #[test]
    fn development_secret_is_refused_in_production() {
        let toml = format!("[webhook]\nsecrets = [\"{DEVELOPMENT_SECRET}\"]");
        assert!(Settings::from_toml("development", &toml).is_ok());
        let error = Settings::from_toml("production", &toml).unwrap_err();
        assert!(matches!(error, ConfigError::DevelopmentSecretInProduction));
    }

    #[test]
    fn invalid_listen_address_names_the_key() {
        let error = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[server]\nlisten=\"nope\"",
        )
        .unwrap_err();
        assert!(error.to_string().contains("server.listen"), "{error}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[server]\nlisten_on=\"x\"",
        )
        .unwrap_err();
        assert!(error.to_string().contains("listen_on"), "{error}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let error = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[dedupe]\ndone_ttl=\"four days\"",
        )
        .unwrap_err();
        assert!(error.to_string().contains("done_ttl"), "{error}");
    }

    #[test]
    fn an_empty_log_queue_is_refused_with_its_key() {
        let error = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]\n[log]\nqueue_lines=0")
            .unwrap_err();
        assert!(error.to_string().contains("log.queue_lines"), "{error}");
    }

    #[test]
    fn route_to_unknown_sink_names_the_route() {
        let error = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[[routes]]\nname=\"r1\"\nevents=[\"*\"]\nsinks=[\"nowhere\"]",
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("r1") && text.contains("nowhere"), "{text}");
    }

    #[test]
    fn without_routes_every_event_goes_to_stdout() {
        let settings = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]").unwrap();
        let routes = settings.effective_routes();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].events, vec!["*"]);
        assert!(matches!(
            settings.effective_sinks().get("stdout"),
            Some(SinkSettings {
                kind: SinkKind::Stdout {},
                ..
            })
        ));
    }

    #[test]
    fn the_redis_queue_needs_a_redis_url_and_says_so() {
        let error = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[queue]\nbackend=\"redis\"",
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("queue.backend") && text.contains("redis.url"),
            "{text}"
        );
        let settings = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[queue]\nbackend=\"redis\"\n[redis]\nurl=\"redis://127.0.0.1:6379\"",
        )
        .unwrap();
        assert_eq!(settings.queue.backend, QueueBackend::Redis);
        let default = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]").unwrap();
        assert_eq!(default.queue.backend, QueueBackend::Embedded);
    }

    #[test]
    fn a_brace_in_the_key_prefix_is_refused_for_the_redis_queue() {
        let error = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[queue]\nbackend=\"redis\"\n[redis]\nurl=\"redis://127.0.0.1:6379\"\nkey_prefix=\"a{b}\"",
        )
        .unwrap_err();
        assert!(error.to_string().contains("redis.key_prefix"), "{error}");
    }

    #[test]
    fn attio_defaults_follow_attios_rate_limits_and_need_no_key() {
        let settings = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]").unwrap();
        assert_eq!(settings.attio.base_url, "https://api.attio.com");
        assert_eq!(settings.attio.read_rate, 100);
        assert_eq!(settings.attio.write_rate, 25);
        assert!(settings.attio.api_key.is_none());
        assert!(settings.enrichment.coalesce_window < Duration::from_secs(1));
    }

    #[test]
    fn an_empty_api_key_counts_as_none_and_a_real_one_is_redacted() {
        let empty =
            Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]\n[attio]\napi_key=\" \"")
                .unwrap();
        assert!(empty.attio.api_key.is_none());
        let real = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[attio]\napi_key=\"key-do-not-print\"",
        )
        .unwrap();
        assert!(real.attio.api_key.is_some());
        assert!(!format!("{real:?}").contains("key-do-not-print"));
    }

    #[test]
    fn bad_attio_settings_name_the_key() {
        for (toml, key) in [
            ("[attio]\nbase_url=\"api.attio.com\"", "attio.base_url"),
            ("[attio]\nread_rate=0", "attio.read_rate"),
            ("[attio]\nretry_total=\"2m\"", "attio.retry_total"),
            ("[attio]\nbreaker_threshold=0", "attio.breaker_threshold"),
        ] {
            let error = Settings::from_toml_layers("test", &["[webhook]\nsecrets=[\"s\"]", toml])
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }

    #[test]
    fn routes_accept_true_false_and_optional_for_enrich() {
        let route = |value: &str| {
            Settings::from_toml(
                "test",
                &format!(
                    "[webhook]\nsecrets=[\"s\"]\n[sinks.out]\nkind=\"stdout\"\n\
                     [[routes]]\nname=\"r\"\nevents=[\"*\"]\nsinks=[\"out\"]\n{value}"
                ),
            )
            .map(|s| s.routes[0].enrich)
        };
        assert_eq!(route("").unwrap(), RouteEnrich::Required);
        assert_eq!(route("enrich = true").unwrap(), RouteEnrich::Required);
        assert_eq!(route("enrich = false").unwrap(), RouteEnrich::Off);
        assert_eq!(
            route("enrich = \"optional\"").unwrap(),
            RouteEnrich::Optional
        );
        let error = route("enrich = \"sometimes\"").unwrap_err().to_string();
        assert!(error.contains("optional"), "{error}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let settings =
            Settings::from_toml("test", "[webhook]\nsecrets=[\"super-secret-value\"]").unwrap();
        assert!(!format!("{settings:?}").contains("super-secret-value"));
    }

    const SECRET_ONLY: &str = "[webhook]\nsecrets=[\"s\"]\n";

    #[test]
    fn route_filter_is_read_from_an_inline_table_and_from_a_json_string() {
        let table = format!(
            "{SECRET_ONLY}[sinks.a]\nkind=\"stdout\"\n[[routes]]\nname=\"t\"\nevents=[\"*\"]\nsinks=[\"a\"]\n\
             filter = {{ \"$and\" = [ {{ field = \"actor.type\", operator = \"equals\", value = \"Workspace-Member\" }} ] }}\n"
        );
        let settings = Settings::from_toml("test", &table).unwrap();
        assert_eq!(
            settings.routes[0].filter,
            Some(serde_json::json!({"$and": [
                {"field": "actor.type", "operator": "equals", "value": "Workspace-Member"}
            ]}))
        );
        let json = format!(
            "{SECRET_ONLY}[sinks.a]\nkind=\"stdout\"\n[[routes]]\nname=\"j\"\nevents=[\"*\"]\nsinks=[\"a\"]\n\
             filter = '{{\"$or\": [{{\"field\": \"id.object_id\", \"operator\": \"not_equals\", \"value\": \"x\"}}]}}'\n"
        );
        let settings = Settings::from_toml("test", &json).unwrap();
        assert!(matches!(
            &settings.routes[0].filter,
            Some(serde_json::Value::String(_))
        ));
    }

    #[test]
    fn an_invalid_route_filter_stops_the_start_naming_the_route() {
        let toml = format!(
            "{SECRET_ONLY}[sinks.a]\nkind=\"stdout\"\n[[routes]]\nname=\"vip-only\"\nevents=[\"*\"]\nsinks=[\"a\"]\n\
             filter = {{ \"$and\" = [ {{ field = \"actor.type\", operator = \"contains\", value = \"x\" }} ] }}\n"
        );
        let error = Settings::from_toml("test", &toml).unwrap_err().to_string();
        assert!(
            error.contains("vip-only") && error.contains("contains"),
            "{error}"
        );
    }

    #[test]
    fn route_object_list_and_attribute_take_one_value_or_a_list() {
        let toml = format!(
            "{SECRET_ONLY}[attio]\napi_key=\"k\"\n[sinks.a]\nkind=\"stdout\"\n\
             [[routes]]\nname=\"deals\"\nevents=[\"*\"]\nsinks=[\"a\"]\n\
             object = \"deals\"\nlist = [\"sales_pipeline\", \"33ebdbe9-e529-47c9-b894-0ba25e9c15c0\"]\n"
        );
        let settings = Settings::from_toml("test", &toml).unwrap();
        let route = &settings.routes[0];
        assert_eq!(route.object, Some(vec!["deals".to_string()]));
        assert_eq!(
            route.list,
            Some(vec![
                "sales_pipeline".to_string(),
                "33ebdbe9-e529-47c9-b894-0ba25e9c15c0".to_string()
            ])
        );
        assert_eq!(route.attribute, None);
        // They survive check-config's round trip through TOML.
        let shown = toml::to_string(&settings).unwrap();
        assert!(shown.contains("object = [\"deals\"]"), "{shown}");
    }

    #[test]
    fn bad_route_object_list_or_attribute_stops_the_start_naming_the_route() {
        let route = |keys: &str, api_key: bool| {
            let attio = if api_key {
                "[attio]\napi_key=\"k\"\n"
            } else {
                ""
            };
            Settings::from_toml(
                "test",
                &format!(
                    "{SECRET_ONLY}{attio}[sinks.a]\nkind=\"stdout\"\n\
                     [[routes]]\nname=\"narrow\"\nevents=[\"*\"]\nsinks=[\"a\"]\n{keys}\n"
                ),
            )
            .unwrap_err()
            .to_string()
        };
        for (keys, expected) in [
            ("object = \"\"", "`object` has an empty value"),
            ("list = []", "`list` is an empty list"),
            (
                "attribute = [\"stage\", \"  \"]",
                "`attribute` has an empty value",
            ),
            ("object = \"Deals\"", "neither a UUID nor an api slug"),
            (
                "object = \"sales pipeline\"",
                "neither a UUID nor an api slug",
            ),
            ("object = \"deals\"\nenrich = false", "enrich = true"),
            (
                "attribute = \"stage\"\nenrich = \"optional\"",
                "enrich = true",
            ),
            ("object = { slug = \"deals\" }", "object"),
        ] {
            let error = route(keys, true);
            assert!(
                error.contains("narrow") || expected == "object",
                "{keys}: {error}"
            );
            assert!(error.contains(expected), "{keys}: {error}");
        }
        // A slug needs the API key that resolves it; a UUID does not.
        let error = route("object = \"deals\"", false);
        assert!(
            error.contains("narrow") && error.contains("ATTIO_API_KEY"),
            "{error}"
        );
        let uuid_only = format!(
            "{SECRET_ONLY}[sinks.a]\nkind=\"stdout\"\n[[routes]]\nname=\"u\"\nevents=[\"*\"]\n\
             sinks=[\"a\"]\nenrich=false\nobject=\"97052eb9-e65e-443f-a297-f2d9a4a7f795\"\n"
        );
        assert!(Settings::from_toml("test", &uuid_only).is_ok());
    }

    #[test]
    fn every_sink_kind_is_read_with_its_keys_and_retry_overrides() {
        let toml = format!(
            "{SECRET_ONLY}[redis]\nurl=\"redis://127.0.0.1:6379\"\n\
             [sinks.hook]\nkind=\"http\"\nurl=\"https://example.test/in\"\nsecret=\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             timeout=\"3s\"\nmax_concurrency=4\nattempts=7\nretry_initial=\"2s\"\nretry_max=\"1m\"\n\
             headers={{ Authorization = \"Bearer t0ken\" }}\n\
             [sinks.stream]\nkind=\"redis_stream\"\nkey=\"attio:events\"\n\
             [sinks.script]\nkind=\"command\"\nprogram=\"/bin/sh\"\nargs=[\"-c\", \"cat\"]\n\
             [[routes]]\nname=\"all\"\nevents=[\"*\"]\nsinks=[\"hook\",\"stream\",\"script\"]\n"
        );
        let settings = Settings::from_toml("test", &toml).unwrap();
        let sinks = settings.effective_sinks();
        let hook = &sinks["hook"];
        let SinkKind::Http(http) = &hook.kind else {
            panic!("http sink expected");
        };
        assert_eq!(http.timeout, Duration::from_secs(3));
        assert_eq!(http.max_concurrency, Some(4));
        assert_eq!(
            http.headers["Authorization"].expose_secret(),
            "Bearer t0ken"
        );
        let policy = settings.sink_retry(&hook.retry);
        assert_eq!(
            policy,
            RetryPolicy {
                attempts: 7,
                initial: Duration::from_secs(2),
                max: Duration::from_secs(60)
            }
        );
        // The others inherit [worker] and redis.url.
        assert_eq!(
            settings.sink_retry(&sinks["script"].retry).attempts,
            settings.worker.max_attempts
        );
        let SinkKind::RedisStream(stream) = &sinks["stream"].kind else {
            panic!("redis_stream sink expected");
        };
        assert_eq!(
            stream.url.as_ref().map(|u| u.expose_secret().to_string()),
            Some("redis://127.0.0.1:6379".to_string())
        );
        assert_eq!(stream.maxlen, 1_000_000);
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("t0ken") && !debug.contains("MfKQ9r8"),
            "{debug}"
        );
    }

    #[test]
    fn bad_sink_keys_name_the_sink_and_the_key() {
        let cases = [
            (
                "kind=\"http\"\nurl=\"https://x.test\"\nsecret=\"plain\"",
                "sinks.s.secret",
            ),
            ("kind=\"http\"\nurl=\"ftp://x.test\"", "sinks.s.url"),
            (
                "kind=\"http\"\nurl=\"https://x.test\"\ntimout=\"1s\"",
                "timout",
            ),
            (
                "kind=\"http\"\nurl=\"https://x.test\"\nheaders={ webhook-id = \"x\" }",
                "webhook-id",
            ),
            ("kind=\"redis_stream\"\nkey=\"k\"", "sinks.s.url"),
            ("kind=\"command\"\nprogram=\"\"", "sinks.s.program"),
            ("kind=\"stdout\"\nattempts=0", "sinks.s.attempts"),
            (
                "kind=\"stdout\"\nretry_initial=\"10m\"\nretry_max=\"1m\"",
                "sinks.s.retry_initial",
            ),
            ("kind=\"carrier-pigeon\"", "carrier-pigeon"),
        ];
        for (sink, expected) in cases {
            let toml = format!(
                "{SECRET_ONLY}[sinks.s]\n{sink}\n[[routes]]\nname=\"r\"\nevents=[\"*\"]\nsinks=[\"s\"]\n"
            );
            let error = Settings::from_toml("test", &toml).unwrap_err().to_string();
            assert!(error.contains(expected), "{sink}: {error}");
        }
    }

    #[test]
    fn serialised_settings_redact_every_secret() {
        let settings = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"first-secret-text\", \"second-secret-text\"]\n\
             [redis]\nurl=\"redis://:hunter2-password@127.0.0.1:6379\"\n\
             [sinks.out]\nkind=\"http\"\nurl=\"http://user:url-password@127.0.0.1:9/x\"\nattempts=3\n\
             headers={Authorization=\"Bearer header-token-text\"}\n\
             [sinks.stream]\nkind=\"redis_stream\"\nkey=\"k\"\nurl=\"redis://:stream-password@h\"\n\
             [[routes]]\nname=\"r\"\nevents=[\"*\"]\nsinks=[\"out\",\"stream\"]",
        )
        .unwrap();
        let json = serde_json::to_string(&settings).unwrap();
        assert!(json.contains("[redacted: 2 secrets]"), "{json}");
        assert!(json.contains("\"url\":\"[redacted]\""), "{json}");
        assert!(json.contains("\"Authorization\":\"[redacted]\""), "{json}");
        assert!(json.contains("\"attempts\":3"), "{json}");
        for secret in [
            "first-secret-text",
            "second-secret-text",
            "hunter2-password",
            "header-token-text",
            "stream-password",
            "url-password",
        ] {
            assert!(!json.contains(secret), "{json}");
        }
        assert!(json.contains("http://redacted@127.0.0.1:9/x"), "{json}");
        let toml = toml::to_string_pretty(&settings).unwrap();
        assert!(toml.contains("[sinks.out]"), "{toml}");
    }

    #[test]
    fn load_errors_name_the_key_without_quoting_the_value() {
        let error = Settings::from_toml("test", "[webhook]\nsecrets = \"not-a-list-secret\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("webhook.secrets"), "{error}");
        assert!(!error.contains("not-a-list-secret"), "{error}");

        let error = Settings::from_toml("test", "[webhook]\nsecrets = [\"unclosed-secret\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains("unclosed-secret"), "{error}");
    }

    fn refusal(layer: &str) -> String {
        Settings::from_toml_layers("test", &[SECRET_ONLY, layer])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_misspelt_log_level_is_refused_naming_the_valid_levels() {
        for level in ["warning", "debugg", "info,attio_webhooks=debugg", "verbose"] {
            let error = refusal(&format!("[log]\nlevel = {level:?}"));
            assert!(
                error.contains("log.level") && error.contains("trace, debug, info, warn, error"),
                "{level}: {error}"
            );
        }
        for level in [
            "warn",
            "WARN",
            "off",
            "info,attio_webhooks=debug",
            "attio_webhooks=trace",
        ] {
            let layer = format!("[log]\nlevel = {level:?}");
            assert!(
                Settings::from_toml_layers("test", &[SECRET_ONLY, &layer]).is_ok(),
                "{level}"
            );
        }
    }

    #[test]
    fn app_env_takes_shipped_names_in_any_case_and_refuses_other_names_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |name: &str| resolve_environment(Some(name.to_string()), dir.path());
        assert_eq!(resolve("Production").unwrap(), "production");
        assert_eq!(resolve("PRODUCTION").unwrap(), "production");
        assert_eq!(resolve("test").unwrap(), "test");
        assert_eq!(resolve("").unwrap(), "development");
        assert_eq!(
            resolve_environment(None, dir.path()).unwrap(),
            "development"
        );
        let error = resolve("prod").unwrap_err().to_string();
        assert!(
            error.contains("APP_ENV")
                && error.contains("\"prod\"")
                && error.contains("prod.toml")
                && error.contains("development, test, production"),
            "{error}"
        );
        std::fs::write(dir.path().join("staging.toml"), "").unwrap();
        assert_eq!(resolve("staging").unwrap(), "staging");
    }

    #[test]
    fn the_production_guard_applies_whatever_the_case_of_production() {
        let toml = format!("[webhook]\nsecrets = [\"{DEVELOPMENT_SECRET}\"]");
        for environment in ["production", "Production", "PRODUCTION"] {
            let error = Settings::from_toml(environment, &toml).unwrap_err();
            assert!(
                matches!(error, ConfigError::DevelopmentSecretInProduction),
                "{environment}: {error}"
            );
        }
    }

    #[test]
    fn enum_errors_list_the_valid_values_and_no_rust_type_names() {
        for (layer, key, valid) in [
            (
                "[storage]\nsync = \"fast\"",
                "storage.sync",
                &["\"full\"", "\"normal\""][..],
            ),
            (
                "[log]\nformat = \"jsn\"",
                "log.format",
                &["\"pretty\"", "\"json\""],
            ),
            (
                "[queue]\nbackend = \"rediss\"",
                "queue.backend",
                &["\"embedded\"", "\"redis\""],
            ),
            (
                "[storage]\nsync = 1",
                "storage.sync",
                &["\"full\"", "\"normal\""],
            ),
        ] {
            let error = refusal(layer);
            assert!(error.contains(key), "{layer}: {error}");
            for word in valid {
                assert!(error.contains(word), "{layer}: {error}");
            }
            for rust in ["enum", "variant", "SyncMode", "LogFormat", "QueueBackend"] {
                assert!(!error.contains(rust), "{layer}: {error}");
            }
        }
    }

    #[test]
    fn numbers_in_rust_words_are_said_in_plain_words() {
        let error = refusal("[server]\nbody_limit = -1");
        assert!(
            error.contains("server.body_limit") && error.contains("the number -1"),
            "{error}"
        );
        assert!(!error.contains("64-bit"), "{error}");
        let error = refusal("[worker]\nmax_attempts = 5000000000");
        assert!(error.contains("from 0 to 4294967295"), "{error}");
        assert!(!error.contains("32 bit"), "{error}");
    }

    #[test]
    fn a_bare_number_for_a_duration_is_refused_with_an_example() {
        let error = refusal("[worker]\nretry_max = 300");
        assert!(
            error.contains("worker.retry_max")
                && error.contains("the number 300")
                && error.contains("\"300s\""),
            "{error}"
        );
        let error = refusal(
            "[sinks.s]\nkind = \"stdout\"\nretry_max = 300\n\
             [[routes]]\nname = \"r\"\nevents = [\"*\"]\nsinks = [\"s\"]",
        );
        assert!(
            error.contains("sinks.s.retry_max") && error.contains("\"300s\""),
            "{error}"
        );
        let error = refusal("[dedupe]\ndone_ttl = \"four days\"");
        assert!(
            error.contains("dedupe.done_ttl") && error.contains("\"4d\""),
            "{error}"
        );
    }

    #[test]
    fn cross_field_errors_show_every_value_involved() {
        let error = refusal("[dedupe]\nclaim_lease = \"10s\"");
        for part in [
            "`attio.retry_total` (30s)",
            "attio.request_timeout (15s)",
            "enrichment.coalesce_window (300ms)",
            "dedupe.claim_lease (10s)",
        ] {
            assert!(error.contains(part), "{part}: {error}");
        }
        let error = refusal("[worker]\nretry_initial = \"10m\"\nretry_max = \"1m\"");
        assert!(error.contains("10m") && error.contains("(1m)"), "{error}");
        let error = refusal("[dedupe]\nclaim_lease = \"2m\"\ndone_ttl = \"1m\"");
        assert!(error.contains("1m") && error.contains("(2m)"), "{error}");
    }

    #[test]
    fn a_sink_that_no_route_names_is_reported_by_name() {
        let without_routes = Settings::from_toml(
            "test",
            &format!("{SECRET_ONLY}[sinks.audit]\nkind = \"stdout\""),
        )
        .unwrap();
        let warnings = without_routes.unused_sinks();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("\"audit\"") && warnings[0].contains("no [[routes]]"),
            "{warnings:?}"
        );
        let with_routes = Settings::from_toml(
            "test",
            &format!(
                "{SECRET_ONLY}[sinks.a]\nkind = \"stdout\"\n[sinks.b]\nkind = \"stdout\"\n\
                 [[routes]]\nname = \"r\"\nevents = [\"*\"]\nsinks = [\"a\"]"
            ),
        )
        .unwrap();
        let warnings = with_routes.unused_sinks();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("\"b\""), "{warnings:?}");
        assert!(Settings::from_toml("test", SECRET_ONLY)
            .unwrap()
            .unused_sinks()
            .is_empty());
    }

    #[test]
    fn redacted_urls_keep_the_shape_and_drop_user_info_and_query_values() {
        for (url, shown) in [
            (
                "http//user:pw@host/x?token=T",
                "http//redacted@host/x?token=redacted",
            ),
            (
                "https://user:pw@hooks.test:8443/in?token=T&team=sales#part",
                "https://redacted@hooks.test:8443/in?token=redacted&team=redacted#part",
            ),
            ("https://hooks.test/in", "https://hooks.test/in"),
            (
                "https://hooks.test/in?SECRET",
                "https://hooks.test/in?redacted",
            ),
            ("redis://:pa#ss@h:6379/0", "redis://redacted@h:6379/0"),
            ("user:pw@host", "redacted@host"),
            ("", ""),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_mistyped_url_is_quoted_in_the_error_without_its_user_info_or_query_values() {
        for layer in [
            "[sinks.s]\nkind=\"http\"\nurl=\"http//user:pw-text@host/x?token=token-text\"\n\
             [[routes]]\nname=\"r\"\nevents=[\"*\"]\nsinks=[\"s\"]",
            "[attio]\nbase_url=\"ftp://user:pw-text@host/x?token=token-text\"",
        ] {
            let error = Settings::from_toml_layers("test", &[SECRET_ONLY, layer])
                .unwrap_err()
                .to_string();
            assert!(error.contains("redacted@host/x?token=redacted"), "{error}");
            assert!(
                !error.contains("pw-text") && !error.contains("token-text"),
                "{error}"
            );
        }
    }

    #[test]
    fn secrets_are_trimmed_and_empty_ones_dropped() {
        let settings = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"old\", \" new \", \"\", \"  \"]",
        )
        .unwrap();
        let secrets: Vec<&str> = settings
            .webhook
            .secrets
            .iter()
            .map(|s| s.expose_secret())
            .collect();
        assert_eq!(secrets, ["old", "new"]);
    }

    #[test]
    fn redaction_skips_escaped_quotes_and_keeps_the_rest() {
        assert_eq!(
            redact_quoted_values(r#"invalid type: string "a\"b", expected an integer for key `x`"#),
            "invalid type: a string, expected an integer for key `x`"
        );
    }
}
