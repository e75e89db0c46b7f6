//! Validation: every setting checked, against the others too, and parsed into the [`Config`]
//! the daemon runs with.
//!
//! In: [`Settings`] as loaded. Out: a [`Config`] (addresses, the queue with its Redis client,
//! the compiled route table, the sinks with what they inherit), or the first [`ConfigError`],
//! naming the key and the fix. Nothing is connected: a Redis URL is parsed into a client, and
//! `check-config` refuses exactly what `serve` would.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::{
    Config, ConfigError, Queue, QueueBackend, RedisTarget, RetryPolicy, Settings, SinkKind,
    SinkSettings, WorkerSettings,
};
use crate::redact::redacted_url;
use crate::routing::RouteTable;

impl Config {
    /// Checks every setting, stopping at the first bad one, and returns the parsed values.
    /// `for_daemon`: the settings `serve` runs with (a webhook secret is required, and routes
    /// must be able to match); tools that only share the file skip those two checks.
    pub(super) fn parse(settings: Settings, for_daemon: bool) -> Result<Config, ConfigError> {
        let listen = settings.listen_addr()?;
        let admin_listen = settings.admin_addr()?;
        if let Some(admin) = admin_listen {
            if admin.port() != 0 && admin == listen {
                return Err(ConfigError::invalid(
                    "admin.listen",
                    "must differ from server.listen",
                ));
            }
        }
        if !settings.server.path.starts_with('/') {
            return Err(ConfigError::invalid(
                "server.path",
                format!("must start with '/', got {:?}", settings.server.path),
            ));
        }
        if matches!(settings.server.path.as_str(), "/healthz" | "/readyz") {
            return Err(ConfigError::invalid(
                "server.path",
                "must not be /healthz or /readyz",
            ));
        }
        if settings.server.body_limit == 0 {
            return Err(ConfigError::invalid(
                "server.body_limit",
                "must be greater than 0 (bytes)",
            ));
        }
        for (key, value) in [
            (
                "server.header_read_timeout",
                settings.server.header_read_timeout,
            ),
            (
                "server.body_read_timeout",
                settings.server.body_read_timeout,
            ),
            ("server.idle_timeout", settings.server.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(
                    key,
                    "must be longer than 0 (for example \"10s\")",
                ));
            }
        }
        if settings.server.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be greater than 0",
            ));
        }
        if settings.log.queue_lines == 0 {
            return Err(ConfigError::invalid(
                "log.queue_lines",
                "must be greater than 0 (lines held for the log writer)",
            ));
        }
        if for_daemon && settings.webhook.secrets.is_empty() {
            return Err(ConfigError::NoSecret);
        }
        if settings.is_production() && settings.uses_development_secret() {
            return Err(ConfigError::DevelopmentSecretInProduction);
        }
        if for_daemon && settings.is_production() && settings.admin.token.is_none() {
            return Err(ConfigError::invalid(
                "admin.token",
                "is required with APP_ENV=production: set ATTIO_WEBHOOKS_ADMIN_TOKEN to a long \
                 random secret (the events API and the console need it)",
            ));
        }
        if settings.storage.history.is_zero() {
            return Err(ConfigError::invalid(
                "storage.history",
                "must be longer than 0 (for example \"7d\")",
            ));
        }
        if settings.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "storage.path",
                "must name a directory",
            ));
        }
        if settings.queue.max_backlog == 0 {
            return Err(ConfigError::invalid(
                "queue.max_backlog",
                "must be greater than 0",
            ));
        }
        if settings.queue.channel_capacity == 0 {
            return Err(ConfigError::invalid(
                "queue.channel_capacity",
                "must be greater than 0",
            ));
        }
        if settings.worker.concurrency == 0 {
            return Err(ConfigError::invalid(
                "worker.concurrency",
                "must be greater than 0",
            ));
        }
        if settings.worker.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "worker.max_attempts",
                "must be at least 1",
            ));
        }
        if settings.worker.retry_initial.is_zero()
            || settings.worker.retry_max < settings.worker.retry_initial
        {
            return Err(ConfigError::invalid(
                "worker.retry_initial",
                format!(
                    "is {}; it must be greater than 0 and not above worker.retry_max ({})",
                    show(settings.worker.retry_initial),
                    show(settings.worker.retry_max)
                ),
            ));
        }
        if settings.worker.poll_interval.is_zero() {
            return Err(ConfigError::invalid(
                "worker.poll_interval",
                "must be greater than 0",
            ));
        }
        if settings.dedupe.claim_lease < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "dedupe.claim_lease",
                format!(
                    "is {}; it must be at least 1s",
                    show(settings.dedupe.claim_lease)
                ),
            ));
        }
        if settings.dedupe.done_ttl < settings.dedupe.claim_lease {
            return Err(ConfigError::invalid(
                "dedupe.done_ttl",
                format!(
                    "is {}; it must be longer than dedupe.claim_lease ({}) (Attio retries for \
                     about 3 days: keep 4d)",
                    show(settings.dedupe.done_ttl),
                    show(settings.dedupe.claim_lease)
                ),
            ));
        }
        let redis = match &settings.redis.url {
            Some(url) => Some(RedisTarget {
                client: check_redis_url("redis.url", url, settings.redis.tls_ca_file.as_deref())?,
                key_prefix: settings.redis.key_prefix.clone(),
            }),
            None if settings.redis.tls_ca_file.is_some() => {
                return Err(ConfigError::invalid(
                    "redis.tls_ca_file",
                    "is set but redis.url is not (REDIS_URL)",
                ));
            }
            None => None,
        };
        if settings.redis.key_prefix.is_empty() {
            return Err(ConfigError::invalid(
                "redis.key_prefix",
                "must not be empty",
            ));
        }
        let queue = match (settings.queue.backend, redis) {
            (QueueBackend::Redis, None) => {
                return Err(ConfigError::invalid(
                    "queue.backend",
                    "is \"redis\" but redis.url is not set (REDIS_URL)",
                ));
            }
            (QueueBackend::Redis, Some(redis)) => {
                // The prefix becomes the hash tag `{prefix}` that keeps every queue key in one
                // Redis Cluster slot; a brace inside it would end the tag early.
                if settings.redis.key_prefix.contains(['{', '}']) {
                    return Err(ConfigError::invalid(
                        "redis.key_prefix",
                        "must not contain '{' or '}' with queue.backend = \"redis\"",
                    ));
                }
                Queue::Redis(redis)
            }
            (QueueBackend::Embedded, redis) => Queue::Embedded {
                journal: settings.journal_path(),
                sync: settings.storage.sync,
                redis,
            },
        };
        check_log_filter(&settings.log.level)
            .map_err(|problem| ConfigError::invalid("log.level", problem))?;
        settings.validate_attio()?;
        let sinks = settings.effective_sinks();
        for (name, sink) in &sinks {
            if name.is_empty() {
                return Err(ConfigError::invalid("sinks", "a sink has an empty name"));
            }
            validate_sink(name, sink, &settings.worker)?;
        }
        let sink_names: Vec<String> = sinks.keys().cloned().collect();
        let routes = RouteTable::compile(&settings.effective_routes(), &sink_names)?;
        // Slugs in route keys are matched against the names enrichment resolves through Attio's
        // API: without a key such a route could never match. Only the daemon cares; tools that
        // read the same file (dead-letters, send) do not route.
        if for_daemon && settings.attio.api_key.is_none() {
            if let Some((route, key, slug)) = routes.first_slug_key() {
                let index = settings
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
        Ok(Config {
            listen,
            admin_listen,
            queue,
            routes,
            sinks,
            settings,
        })
    }
}

impl Settings {
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
    pub(crate) fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
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
    pub(crate) fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
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
                crate::sinks::settings::decode_secret(secret.expose_secret())
                    .map_err(|problem| ConfigError::invalid(&key("secret"), problem))?;
            }
            for (header, value) in &http.headers {
                crate::sinks::settings::check_header(header, value.expose_secret()).map_err(
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

/// Parses a Redis URL into a client the way connecting will use it (scheme, host, database, TLS
/// support, the CA file), so that `check-config` refuses what `serve` would. Nothing is
/// connected.
fn check_redis_url(
    key: &str,
    url: &SecretString,
    ca_file: Option<&Path>,
) -> Result<redis::Client, ConfigError> {
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
    crate::dedupe::redis::client(url, ca_file).map_err(|problem| ConfigError::invalid(key, problem))
}

/// Checks a `log.level` / `RUST_LOG` filter. `EnvFilter` takes any bare word as a target name,
/// so a misspelt level (`warning`, `debugg`) would silently turn every line off; here each
/// directive must be a level, or `target=level`.
pub(crate) fn check_log_filter(filter: &str) -> Result<(), String> {
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
