//! Where the developer tools (`send`, `sign`, `verify`) get the webhook secret.
//!
//! In: the `--secret` flag and the `ATTIO_WEBHOOK_SECRET` variable (comma-separated, as for the
//! daemon). Out: the secrets and where they came from, so that messages can name the source
//! without ever printing a secret.

use secrecy::{ExposeSecret, SecretString};

/// The variable the daemon reads its secrets from.
pub const SECRET_VARIABLE: &str = "ATTIO_WEBHOOK_SECRET";

/// Where a secret came from; shown in messages instead of the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Flag,
    Environment,
    /// The configured `webhook.secrets` (in development: `config/development.toml`).
    Configuration,
    /// The development secret compiled into the binary, used when nothing else is available
    /// outside production.
    BuiltInDevelopmentSecret,
}

impl SecretSource {
    pub fn describe(self) -> &'static str {
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
pub fn from_flag_or_environment(
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
