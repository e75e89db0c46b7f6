//! Where the developer tools (`send`, `sign`, `verify`) get the webhook secret.
//!
//! In: the `--secret` flag, the `ATTIO_WEBHOOK_SECRET` variable (comma-separated, as for the
//! daemon) and, outside production, the settings the daemon would run with. Out: the secrets and
//! where they came from, so that messages can name the source without ever printing a secret.
//! The three tools share this, so that they agree on which secret is used when none is given.

use secrecy::{ExposeSecret, SecretString};

use crate::config::{ConfigError, Settings, DEVELOPMENT_SECRET};

/// The variable the daemon reads its secrets from.
pub(crate) const SECRET_VARIABLE: &str = "ATTIO_WEBHOOK_SECRET";

/// Where a secret came from; shown in messages instead of the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretSource {
    Flag,
    Environment,
    /// The configured `webhook.secrets` (in development: `config/development.toml`).
    Configuration,
    /// The development secret compiled into the binary, used when nothing else is available
    /// outside production.
    BuiltInDevelopmentSecret,
}

impl SecretSource {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            SecretSource::Flag => "--secret",
            SecretSource::Environment => SECRET_VARIABLE,
            SecretSource::Configuration => "the configured webhook.secrets",
            SecretSource::BuiltInDevelopmentSecret => "the built-in development secret",
        }
    }
}

/// The secrets given on the command line or in the environment, if any. A flag is one secret;
/// the variable may list several, separated by commas, exactly as the daemon reads it.
pub(crate) fn from_flag_or_environment(
    flag: Option<SecretString>,
) -> Option<(Vec<SecretString>, SecretSource)> {
    if let Some(secret) = flag {
        if !secret.expose_secret().is_empty() {
            return Some((vec![secret], SecretSource::Flag));
        }
    }
    let variable = std::env::var(SECRET_VARIABLE).ok()?;
    let secrets: Vec<SecretString> = variable
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| SecretString::from(s.to_string()))
        .collect();
    if secrets.is_empty() {
        None
    } else {
        Some((secrets, SecretSource::Environment))
    }
}

/// Neither `--secret` nor the variable was given, and `APP_ENV=production` never falls back.
#[derive(Debug, thiserror::Error)]
#[error(
    "no secret: pass --secret or set ATTIO_WEBHOOK_SECRET (APP_ENV=production never falls back \
     to a configured secret)"
)]
pub(crate) struct NoSecret;

/// The secrets given on the command line or in the environment; else, outside production, what
/// the daemon would be configured with (in development, the development secret from
/// `config/development.toml`), so that `serve`, `send`, `sign` and `verify` work together out of
/// the box. Says on standard error when it falls back. `settings` are those `serve` would load
/// (without requiring a secret); when they do not load, the built-in development secret is used.
pub(crate) fn given_or_configured(
    flag: Option<SecretString>,
    settings: impl FnOnce() -> Result<Settings, ConfigError>,
) -> Result<(Vec<SecretString>, SecretSource), NoSecret> {
    if let Some(given) = from_flag_or_environment(flag) {
        return Ok(given);
    }
    let environment = std::env::var("APP_ENV").unwrap_or_else(|_| "development".to_string());
    if environment.trim().eq_ignore_ascii_case("production") {
        return Err(NoSecret);
    }
    match settings() {
        Ok(settings) => {
            let Some(first) = settings.webhook.secrets.first() else {
                return Err(NoSecret);
            };
            if first.expose_secret() == DEVELOPMENT_SECRET {
                eprintln!(
                    "note: no --secret or {SECRET_VARIABLE} given; using the development secret \
                     from the configuration (APP_ENV={environment})"
                );
            } else {
                eprintln!(
                    "note: no --secret or {SECRET_VARIABLE} given; using the configured \
                     webhook.secrets (APP_ENV={environment})"
                );
            }
            Ok((settings.webhook.secrets, SecretSource::Configuration))
        }
        Err(_) => {
            eprintln!(
                "note: no --secret or {SECRET_VARIABLE} given and no configured secret; using the \
                 built-in development secret (APP_ENV={environment})"
            );
            Ok((
                vec![SecretString::from(DEVELOPMENT_SECRET.to_string())],
                SecretSource::BuiltInDevelopmentSecret,
            ))
        }
    }
}
