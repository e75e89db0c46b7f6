//! `attio-webhooks check-config`: load and validate the settings exactly as `serve` does, and
//! show what the daemon would run with.
//!
//! In: the same layers as `serve` (embedded defaults, `config/default.toml`,
//! `config/{APP_ENV}.toml`, `--config FILE`, environment). Out: a summary and the effective
//! settings as TOML (or JSON with `--json`), secrets redacted; exit 0. Invalid settings: the
//! error naming the key on stderr, exit 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::send::daemon_url;
use crate::config::{
    Config, ConfigError, LoadOptions, Queue, QueueBackend, Settings, SinkKind, SinkSettings,
    ENV_PREFIX,
};
use crate::redact::redacted_url;
use crate::routing::closest_event_type;

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Print JSON instead of a summary and TOML.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Everything `check-config` reports about valid settings.
#[derive(Debug, Serialize)]
struct Report {
    valid: bool,
    environment: String,
    sources: Vec<String>,
    webhook_url: String,
    warnings: Vec<String>,
    settings: Settings,
}

/// Says why the settings are not valid (also as JSON with `--json`): exit code 2.
fn invalid_settings(args: &CheckConfigArgs, error: &dyn std::fmt::Display) -> ExitCode {
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "valid": false, "error": error.to_string() })
        );
    }
    eprintln!("error: {error}");
    ExitCode::from(2)
}

pub(crate) fn run(args: CheckConfigArgs, options: LoadOptions) -> ExitCode {
    let config = match Config::load(&options) {
        Ok(config) => config,
        Err(error) => return invalid_settings(&args, &error),
    };
    // What `serve` would fail on next: the journal directory it creates and writes.
    if let Queue::Embedded { journal, .. } = &config.queue {
        if let Err(error) = check_storage_path(&config.settings, journal) {
            return invalid_settings(&args, &error);
        }
    }
    let redis_warnings = match check_redis(&config) {
        Ok(warnings) => warnings,
        Err(refusal) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "valid": false, "error": refusal })
                );
            }
            eprintln!("error: {refusal}");
            return ExitCode::from(2);
        }
    };
    let mut report = report(&config, &options);
    report.warnings.extend(redis_warnings);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("error: cannot print the settings: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let toml = match toml::to_string_pretty(&report.settings) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("error: cannot print the settings: {error}");
                return ExitCode::FAILURE;
            }
        };
        print!("{}", summary(&report));
        println!();
        print!("{toml}");
    }
    ExitCode::SUCCESS
}

/// Whether the embedded journal's directory (`storage.path`) can be created and written, tried
/// for real (permissions alone do not tell: a read-only mount, a file in the way, root): missing
/// directories are created, a probe file written and removed, and what was created is removed
/// again, so the check leaves the disk as it found it.
fn check_storage_path(settings: &Settings, journal: &Path) -> Result<(), ConfigError> {
    let path = settings.storage.path.as_path();
    let invalid = |problem: String| ConfigError::Invalid {
        key: "storage.path".to_string(),
        problem: format!(
            "is {}, {problem}: set storage.path (ATTIO_WEBHOOKS__STORAGE__PATH) to a \
                 directory this user can write",
            path.display()
        ),
    };
    let missing: Vec<&Path> = path
        .ancestors()
        .filter(|dir| !dir.as_os_str().is_empty())
        .take_while(|dir| std::fs::symlink_metadata(dir).is_err())
        .collect();
    let result = std::fs::create_dir_all(path)
        .map_err(|error| invalid(format!("which cannot be created ({error})")))
        .and_then(|()| {
            let probe = path.join(format!(".check-config-{}", std::process::id()));
            let written = std::fs::File::create_new(&probe)
                .and_then(|mut file| std::io::Write::write_all(&mut file, b"probe"));
            let _ = std::fs::remove_file(&probe);
            written.map_err(|error| invalid(format!("which cannot be written ({error})")))
        })
        .and_then(|()| {
            if !journal.exists() {
                return Ok(());
            }
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(journal)
                .map(drop)
                .map_err(|error| {
                    invalid(format!(
                        "whose {} cannot be opened for writing ({error})",
                        journal.display()
                    ))
                })
        });
    // Deepest first, so that each directory is empty when it is removed.
    for dir in missing {
        let _ = std::fs::remove_dir(dir);
    }
    result
}

fn report(config: &Config, options: &LoadOptions) -> Report {
    let settings = &config.settings;
    let mut effective = settings.clone();
    // Show what runs: without routes the daemon adds a stdout sink and a catch-all route.
    effective.sinks = config.sinks.clone();
    effective.routes = settings.effective_routes();
    Report {
        valid: true,
        environment: settings.environment.clone(),
        sources: sources(&settings.environment, options),
        webhook_url: daemon_url(settings),
        warnings: warnings(config),
        settings: effective,
    }
}

/// The layers that contributed, in the order they apply. Environment variables are named, their
/// values never shown.
fn sources(environment: &str, options: &LoadOptions) -> Vec<String> {
    let config_dir = options
        .config_dir
        .clone()
        .or_else(|| std::env::var_os("APP_CONFIG_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config"));
    let mut sources = vec!["embedded defaults".to_string()];
    for file in [
        config_dir.join("default.toml"),
        config_dir.join(format!("{environment}.toml")),
    ] {
        if file.is_file() {
            sources.push(file.display().to_string());
        }
    }
    if let Some(file) = &options.config_file {
        sources.push(format!("--config {}", file.display()));
    }
    let prefix = format!("{ENV_PREFIX}__");
    let mut variables: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.starts_with(&prefix)
                || name == "ATTIO_WEBHOOK_SECRET"
                || name == "ATTIO_API_KEY"
                || name == "REDIS_URL"
        })
        .collect();
    variables.sort();
    if !variables.is_empty() {
        sources.push(format!("environment: {}", variables.join(", ")));
    }
    sources
}

fn warnings(config: &Config) -> Vec<String> {
    let settings = &config.settings;
    let mut warnings = Vec::new();
    if settings.uses_development_secret() {
        warnings.push(
            "the development webhook secret is configured: fine for trying things out, refused \
             when APP_ENV=production"
                .to_string(),
        );
    }
    warnings.extend(settings.unused_sinks());
    if !settings.worker.enabled {
        warnings.push(
            "worker.enabled = false: deliveries are only journaled, not delivered to sinks"
                .to_string(),
        );
    }
    for (route, event_type) in config.routes.unknown_event_types() {
        let hint = closest_event_type(&event_type)
            .map(|known| format!(" (did you mean {known:?}?)"))
            .unwrap_or_default();
        warnings.push(format!(
            "route {route:?} names {event_type:?}, which is not an Attio event type{hint}"
        ));
    }
    warnings
}

/// With the Redis queue: what `serve` would say about Redis's persistence at start, as
/// warnings, or its refusal to start (`APP_ENV=production` on a Redis without AOF). A Redis that
/// cannot be reached is a warning: `serve` starts without it too.
fn check_redis(config: &Config) -> Result<Vec<String>, String> {
    use crate::journal::redis_persistence::{Persistence, Risk, CHECK_TIMEOUT};
    let Queue::Redis(redis) = &config.queue else {
        return Ok(Vec::new());
    };
    let settings = &config.settings;
    let not_checked = |why: String| {
        Ok(vec![format!(
            "Redis's persistence was not checked ({why}): the daemon checks it when it starts"
        )])
    };
    let client = &redis.client;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return not_checked(format!("no async runtime: {error}")),
    };
    let read = runtime.block_on(async {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CHECK_TIMEOUT))
            .set_response_timeout(Some(CHECK_TIMEOUT));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        Persistence::read(&mut connection).await
    });
    let persistence = match read {
        Ok(persistence) => persistence,
        Err(problem) => return not_checked(problem),
    };
    match persistence.risk() {
        None => Ok(Vec::new()),
        Some(Risk::Volatile(message))
            if settings.environment == "production" && !settings.queue.allow_volatile_redis =>
        {
            Err(format!(
                "serve would refuse to start with APP_ENV=production: {message}; or set \
                 queue.allow_volatile_redis = true to accept that loss"
            ))
        }
        Some(risk) => Ok(vec![risk.message().to_string()]),
    }
}

fn summary(report: &Report) -> String {
    let settings = &report.settings;
    let mut lines = vec![
        format!("configuration is valid (APP_ENV={})", report.environment),
        format!("read from: {}", report.sources.join(" < ")),
        format!(
            "webhook endpoint: {} (listening on {})",
            report.webhook_url, settings.server.listen
        ),
        format!(
            "webhook secrets: {} configured (values redacted)",
            settings.webhook.secrets.len()
        ),
        match &settings.redis.url {
            Some(_) => format!(
                "deduplication: Redis (URL redacted), key prefix {:?}",
                settings.redis.key_prefix
            ),
            None => {
                "deduplication: embedded (set REDIS_URL to share it across replicas)".to_string()
            }
        },
        match settings.queue.backend {
            QueueBackend::Embedded => {
                format!("journal: {}", settings.journal_path().display())
            }
            QueueBackend::Redis => format!(
                "journal: Redis stream {{{}}}:events shared by every replica (docs/scale-out.md)",
                settings.redis.key_prefix
            ),
        },
    ];
    for (name, sink) in &settings.sinks {
        lines.push(format!("sink {name}: {}", describe_sink(sink)));
    }
    for route in &settings.routes {
        let mut narrowed: Vec<String> = [
            ("object", &route.object),
            ("list", &route.list),
            ("attribute", &route.attribute),
        ]
        .into_iter()
        .filter_map(|(key, values)| values.as_ref().map(|v| format!("{key} {}", v.join("|"))))
        .collect();
        if route.filter.is_some() {
            narrowed.push("a filter".to_string());
        }
        lines.push(format!(
            "route {}: {} -> {}{}",
            route.name,
            route.events.join(", "),
            route.sinks.join(", "),
            if narrowed.is_empty() {
                String::new()
            } else {
                format!(" (with {})", narrowed.join(", "))
            }
        ));
    }
    for warning in &report.warnings {
        lines.push(format!("warning: {warning}"));
    }
    lines.iter().map(|line| format!("# {line}\n")).collect()
}

fn describe_sink(sink: &SinkSettings) -> String {
    match &sink.kind {
        SinkKind::Jsonl { path } => format!("jsonl, {}", path.display()),
        SinkKind::Stdout {} => "stdout".to_string(),
        SinkKind::Http(http) => format!(
            "http, {}{}",
            redacted_url(&http.url),
            if http.secret.is_some() {
                " (signed)"
            } else {
                ""
            }
        ),
        SinkKind::RedisStream(stream) => format!("redis_stream, key {:?}", stream.key),
        SinkKind::Command(command) => format!("command, {}", command.program),
        SinkKind::Postgres(postgres) => format!(
            "postgres, {} schema {}",
            postgres
                .url
                .as_deref()
                .map(redacted_url)
                .unwrap_or_else(|| "DATABASE_URL".to_string()),
            postgres.schema
        ),
    }
}
