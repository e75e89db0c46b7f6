//! Loading: the layers of settings, in the order they apply, read into [`Settings`].
//!
//! In: the embedded defaults, the files of `config/`, `--config FILE`, and the environment.
//! Out: the settings as written (normalised: secrets trimmed, empty values dropped), or a
//! [`ConfigError`] that names the key, says what is wrong in the file's words (no Rust type
//! names, no quoted values: they may be secrets) and which layer the bad value came from.
//! [`Config::load`] then hands them to `validate`.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::validate::check_log_filter;
use super::{Config, ConfigError, LoadOptions, Settings, ENV_PREFIX};
use crate::redact::redact_quoted_values;

const EMBEDDED_DEFAULTS: &str = include_str!("../../config/default.toml");

impl Config {
    /// Loads every layer and parses the result: what `serve` runs with.
    pub(crate) fn load(options: &LoadOptions) -> Result<Config, ConfigError> {
        Config::parse(Settings::load_unvalidated(options)?, true)
    }

    /// Like [`Config::load`] but without requiring a webhook secret, for tools that only work
    /// on the journal (`dead-letters`): they never verify a delivery.
    pub(crate) fn load_without_secret(options: &LoadOptions) -> Result<Config, ConfigError> {
        Config::parse(Settings::load_unvalidated(options)?, false)
    }

    /// The configuration from the embedded defaults plus one TOML text, for tests and tools.
    pub fn from_toml(environment: &str, overrides: &str) -> Result<Config, ConfigError> {
        Self::from_toml_layers(environment, &[overrides])
    }

    /// Like [`Config::from_toml`] with several TOML texts, each overriding the ones before.
    pub fn from_toml_layers(environment: &str, layers: &[&str]) -> Result<Config, ConfigError> {
        Config::parse(Settings::from_toml_unvalidated(environment, layers)?, true)
    }
}

impl Settings {
    /// [`Config::load_without_secret`]'s settings, for the tools that read only a few of them.
    pub(crate) fn load_without_secret(options: &LoadOptions) -> Result<Settings, ConfigError> {
        Config::load_without_secret(options).map(|config| config.settings)
    }

    /// [`Config::from_toml`]'s settings. Validated.
    pub fn from_toml(environment: &str, overrides: &str) -> Result<Settings, ConfigError> {
        Config::from_toml(environment, overrides).map(|config| config.settings)
    }

    /// [`Config::from_toml_layers`]'s settings. Validated.
    pub fn from_toml_layers(environment: &str, layers: &[&str]) -> Result<Settings, ConfigError> {
        Config::from_toml_layers(environment, layers).map(|config| config.settings)
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

    fn from_toml_unvalidated(environment: &str, layers: &[&str]) -> Result<Settings, ConfigError> {
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
        Ok(settings)
    }

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
pub(crate) const SHIPPED_ENVIRONMENTS: [&str; 3] = ["development", "test", "production"];

/// The environment named by `APP_ENV` (unset: `development`). A shipped name is matched in any
/// case (`Production` is `production`, with its guard and JSON logs); any other name needs its
/// own `{config_dir}/{name}.toml`, so that a typo (`prod`) is not silently a bare environment.
pub(crate) fn resolve_environment(
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

fn file_source(
    path: &Path,
    required: bool,
) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path.to_path_buf())
        .format(config::FileFormat::Toml)
        .required(required)
}
