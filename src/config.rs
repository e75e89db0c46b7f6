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
use serde::Deserialize;

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

#[derive(Debug, Clone, Deserialize)]
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
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSettings>,
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub path: String,
    pub body_limit: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    #[serde(default)]
    pub secrets: Vec<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Where accepted deliveries wait for the worker.
    pub backend: QueueBackend,
    pub max_backlog: u64,
    pub channel_capacity: usize,
}

/// The journal backend (`queue.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// SQLite under `storage.path`: one daemon.
    Embedded,
    /// A Redis stream with one consumer group: any number of replicas sharing one Redis.
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub enabled: bool,
    pub concurrency: usize,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeSettings {
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
    #[serde(with = "humantime_serde")]
    pub done_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    #[serde(default)]
    pub url: Option<SecretString>,
    pub key_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// One configured sink. The table name (`[sinks.NAME]`) is its name.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkSettings {
    /// Append one JSON object per line to a file.
    Jsonl { path: PathBuf },
    /// Write one JSON object per line to standard output (logs go to standard error).
    Stdout {},
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    pub name: String,
    /// Event-type patterns: `record.updated`, `record.*`, `*`.
    pub events: Vec<String>,
    pub sinks: Vec<String>,
}

impl Settings {
    /// Loads every layer and validates the result.
    pub fn load(options: &LoadOptions) -> Result<Settings, ConfigError> {
        let environment = std::env::var("APP_ENV").unwrap_or_else(|_| "development".to_string());
        let config_dir = options
            .config_dir
            .clone()
            .or_else(|| std::env::var_os("APP_CONFIG_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config"));

        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(
                EMBEDDED_DEFAULTS,
                config::FileFormat::Toml,
            ))
            .add_source(file_source(&config_dir.join("default.toml"), false))
            .add_source(file_source(
                &config_dir.join(format!("{environment}.toml")),
                false,
            ));
        if let Some(file) = &options.config_file {
            if !file.is_file() {
                return Err(ConfigError::Load(format!(
                    "--config {}: no such file",
                    file.display()
                )));
            }
            builder = builder.add_source(file_source(file, true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("webhook.secrets")
                .try_parsing(true),
        );
        // The well-known variables users expect, applied last.
        if let Ok(secrets) = std::env::var("ATTIO_WEBHOOK_SECRET") {
            let list: Vec<String> = secrets.split(',').map(str::to_string).collect();
            builder = builder
                .set_override("webhook.secrets", list)
                .map_err(|e| ConfigError::Load(e.to_string()))?;
        }
        if let Ok(url) = std::env::var("REDIS_URL") {
            builder = builder
                .set_override("redis.url", url)
                .map_err(|e| ConfigError::Load(e.to_string()))?;
        }
        let raw = builder
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        settings.environment = environment;
        settings.normalize();
        settings.validate()?;
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
        let raw = builder
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        settings.environment = environment.to_string();
        settings.normalize();
        settings.validate()?;
        Ok(settings)
    }

    /// Drops empty secrets (`"a,,b"`, a trailing comma) and an empty Redis URL.
    fn normalize(&mut self) {
        self.webhook
            .secrets
            .retain(|s| !s.expose_secret().trim().is_empty());
        if self
            .redis
            .url
            .as_ref()
            .is_some_and(|u| u.expose_secret().trim().is_empty())
        {
            self.redis.url = None;
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
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
        if self.webhook.secrets.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        if self.environment == "production" && self.uses_development_secret() {
            return Err(ConfigError::DevelopmentSecretInProduction);
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
                "must be greater than 0 and not above worker.retry_max",
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
                "must be at least 1s",
            ));
        }
        if self.dedupe.done_ttl < self.dedupe.claim_lease {
            return Err(ConfigError::invalid(
                "dedupe.done_ttl",
                "must be longer than dedupe.claim_lease (Attio retries for about 3 days: keep 4d)",
            ));
        }
        if let Some(url) = &self.redis.url {
            let url = url.expose_secret();
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
            {
                return Err(ConfigError::invalid(
                    "redis.url",
                    "must start with redis://, rediss:// or unix:// (REDIS_URL)",
                ));
            }
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
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::invalid(
                "log.level",
                format!("is not a valid tracing filter: {:?}", self.log.level),
            ));
        }
        for (name, sink) in &self.sinks {
            if name.is_empty() {
                return Err(ConfigError::invalid("sinks", "a sink has an empty name"));
            }
            match sink {
                SinkSettings::Jsonl { path } if path.as_os_str().is_empty() => {
                    return Err(ConfigError::invalid(
                        &format!("sinks.{name}.path"),
                        "must name a file",
                    ));
                }
                SinkSettings::Jsonl { .. } | SinkSettings::Stdout {} => {}
            }
        }
        crate::routing::RouteTable::compile(&self.routes, &self.effective_sink_names())?;
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
            sinks.insert("stdout".to_string(), SinkSettings::Stdout {});
            sinks
        } else {
            self.sinks.clone()
        }
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
            }]
        } else {
            self.routes.clone()
        }
    }

    /// Path of the embedded journal database.
    pub fn journal_path(&self) -> PathBuf {
        self.storage.path.join("journal.sqlite3")
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
            Some(SinkSettings::Stdout {})
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
    fn secrets_are_redacted_in_debug_output() {
        let settings =
            Settings::from_toml("test", "[webhook]\nsecrets=[\"super-secret-value\"]").unwrap();
        assert!(!format!("{settings:?}").contains("super-secret-value"));
    }
}
