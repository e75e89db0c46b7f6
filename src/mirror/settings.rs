//! Settings of the PostgreSQL mirror: the `postgres` sink's keys and the `[sync]` section.
//!
//! In: the TOML tables `[sinks.NAME]` with `kind = "postgres"` and `[sync]`. Out: typed settings
//! that the sink, `attio-webhooks sync` and the scheduled reconciliation consume. The database
//! password never comes from a configuration file: only from `DATABASE_URL`, `PGPASSWORD` or a
//! `password_file`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// `[sinks.NAME] kind = "postgres"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSettings {
    /// `postgres://user@host:5432/database`; `DATABASE_URL` when absent. TLS follows the URL's
    /// `sslmode` (`disable`, `prefer`, the default, or `require`).
    #[serde(
        default,
        serialize_with = "redact_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) url: Option<String>,
    /// Schema holding the tables and views (created when missing).
    #[serde(default = "default_schema")]
    pub(crate) schema: String,
    /// A file holding the password (a mounted secret), used when the URL carries none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) password_file: Option<PathBuf>,
    /// PEM file of a certificate authority to trust for TLS, beside the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Check the server's TLS certificate and host name (`sslmode=prefer` or `require` in the
    /// URL). `false` accepts any certificate, as libpq's `sslmode=require` does: only for a
    /// server with a self-signed certificate on a network you trust.
    #[serde(default = "default_true")]
    pub(crate) tls_verify: bool,
    /// `*.deleted` removes the row instead of setting `deleted_at`.
    #[serde(default)]
    pub(crate) hard_delete: bool,
    /// Keep every event that reached the sink in the `events` table, for audit.
    #[serde(default = "default_true")]
    pub(crate) events: bool,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub(crate) pool_size: usize,
    /// Most events written in one transaction.
    #[serde(default = "default_batch_size")]
    pub(crate) batch_size: usize,
}

fn default_schema() -> String {
    "attio".to_string()
}

fn default_true() -> bool {
    true
}

fn default_pool_size() -> usize {
    4
}

fn default_batch_size() -> usize {
    256
}

/// `[sync]`: the daemon's scheduled reconciliation of a `postgres` sink with Attio.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyncSettings {
    /// How often to reconcile; off when absent.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) interval: Option<Duration>,
    /// The `postgres` sink to reconcile; needed only when several are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sink: Option<String>,
    /// Mark rows that a complete pass did not see (and Attio confirms gone) as deleted.
    #[serde(default)]
    pub(crate) prune: bool,
}

impl PostgresSinkSettings {
    /// Checks what can be checked without a database; the problem names the key.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if !is_plain_identifier(&self.schema) {
            return Err((
                "schema",
                format!(
                    "must be a lower-case SQL identifier (letters, digits, _), got {:?}",
                    self.schema
                ),
            ));
        }
        if let Some(url) = &self.url {
            let parsed: tokio_postgres::Config = url.parse().map_err(|_| {
                (
                    "url",
                    "must be a PostgreSQL URL such as postgres://user@host:5432/database"
                        .to_string(),
                )
            })?;
            if parsed.get_password().is_some() {
                return Err((
                    "url",
                    "must not carry the password: set DATABASE_URL, PGPASSWORD or password_file"
                        .to_string(),
                ));
            }
        }
        if self.pool_size == 0 {
            return Err(("pool_size", "must be at least 1".to_string()));
        }
        if self.batch_size == 0 {
            return Err(("batch_size", "must be at least 1".to_string()));
        }
        Ok(())
    }
}

/// `[a-z_][a-z0-9_]*`, at most 63 bytes: safe to put in SQL and in `search_path` unquoted.
pub(crate) fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

fn redact_url<S: Serializer>(url: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_str(&crate::redact::redacted_url(url)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: Option<&str>, schema: &str) -> PostgresSinkSettings {
        PostgresSinkSettings {
            url: url.map(str::to_string),
            schema: schema.to_string(),
            password_file: None,
            ca_file: None,
            tls_verify: true,
            hard_delete: false,
            events: true,
            pool_size: 4,
            batch_size: 256,
        }
    }

    #[test]
    fn a_password_in_the_configured_url_is_refused() {
        let error = settings(Some("postgres://app:hunter2@db/crm"), "attio")
            .check()
            .unwrap_err();
        assert_eq!(error.0, "url");
        assert!(!error.1.contains("hunter2"));
        assert!(settings(Some("postgres://app@db/crm"), "attio")
            .check()
            .is_ok());
    }

    #[test]
    fn a_schema_that_is_not_a_plain_identifier_is_refused() {
        assert_eq!(
            settings(None, "Attio; drop").check().unwrap_err().0,
            "schema"
        );
        assert!(settings(None, "crm_mirror2").check().is_ok());
    }
}
