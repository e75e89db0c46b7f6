//! Sink settings: the `[sinks.NAME]` tables as they are written, one type per sink kind.
//!
//! In: one TOML table per sink (read by `config` with the rest of the settings). Out: a
//! [`SinkSettings`] per sink, which [`super::Sinks::open_with`] opens, and the checks of the
//! values only a sink understands (an http sink's secret and headers). Owned here rather than in
//! `config` so that the sinks depend on nothing of the configuration's: `config` imports this
//! module, never the other way round.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};

use crate::mirror::settings::PostgresSinkSettings;

/// One configured sink. The table name (`[sinks.NAME]`) is its name, `kind` says what it is,
/// and `attempts`, `retry_initial` and `retry_max` (accepted by every kind) override the
/// `[worker]` defaults for this sink only.
#[derive(Debug, Clone)]
pub(crate) struct SinkSettings {
    pub(crate) kind: SinkKind,
    pub(crate) retry: SinkRetrySettings,
}

impl SinkSettings {
    pub(crate) fn new(kind: SinkKind) -> SinkSettings {
        SinkSettings {
            kind,
            retry: SinkRetrySettings::default(),
        }
    }
}

/// Per-sink overrides of the worker's retry policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinkRetrySettings {
    /// Attempts at delivering one event to this sink before the event is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) attempts: Option<u32>,
    #[serde(
        default,
        with = "crate::settings_format::duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) retry_initial: Option<Duration>,
    #[serde(
        default,
        with = "crate::settings_format::duration::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) retry_max: Option<Duration>,
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
pub(crate) enum SinkKind {
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
    Postgres(PostgresSinkSettings),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpSinkSettings {
    #[serde(serialize_with = "crate::redact::redact_url_credentials")]
    pub(crate) url: String,
    /// Standard Webhooks secret, `whsec_<base64>`; without it requests are not signed.
    #[serde(
        default,
        serialize_with = "crate::redact::redact_optional_secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) secret: Option<SecretString>,
    /// Static headers sent with every request (values may be credentials: never logged).
    #[serde(default, serialize_with = "crate::redact::redact_secret_values")]
    pub(crate) headers: BTreeMap<String, SecretString>,
    #[serde(
        default = "default_http_timeout",
        with = "crate::settings_format::duration"
    )]
    pub(crate) timeout: Duration,
    /// Requests in flight to this sink at most; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_concurrency: Option<usize>,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisStreamSinkSettings {
    /// Redis to write to; defaults to `redis.url`.
    #[serde(
        default,
        serialize_with = "crate::redact::redact_optional_secret",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) url: Option<SecretString>,
    /// CA certificates for a `rediss://` URL; defaults to `redis.tls_ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// The stream's key.
    pub(crate) key: String,
    /// Approximate cap on the stream's length (`XADD ... MAXLEN ~ n`).
    #[serde(default = "default_stream_maxlen")]
    pub(crate) maxlen: u64,
}

fn default_stream_maxlen() -> u64 {
    1_000_000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandSinkSettings {
    pub(crate) program: String,
    #[serde(default)]
    pub(crate) args: Vec<String>,
    #[serde(
        default = "default_command_timeout",
        with = "crate::settings_format::duration"
    )]
    pub(crate) timeout: Duration,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The prefix of a Standard Webhooks secret; the rest is the base64 of the key.
pub(crate) const SECRET_PREFIX: &str = "whsec_";
/// Header carrying the attempt number (1 for the first try) of this event at this sink.
pub(crate) const ATTEMPT_HEADER: &str = "attio-webhooks-attempt";

/// Headers the sink sets itself, which a configured header may not replace.
pub(super) const RESERVED_HEADERS: [&str; 5] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    ATTEMPT_HEADER,
];

/// The signing key of a `whsec_<base64>` secret. The error never repeats the secret.
pub(crate) fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.trim().strip_prefix(SECRET_PREFIX) else {
        return Err(format!(
            "must be a Standard Webhooks secret: {SECRET_PREFIX} followed by base64, for example \
             \"{SECRET_PREFIX}$(openssl rand -base64 32)\""
        ));
    };
    let key = BASE64
        .decode(encoded)
        .map_err(|_| format!("the part after {SECRET_PREFIX} is not valid base64"))?;
    if key.is_empty() {
        return Err(format!("has no key after {SECRET_PREFIX}"));
    }
    Ok(key)
}

/// Checks one configured static header.
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(format!("{name:?} is set by the sink itself"));
    }
    HeaderValue::from_str(value).map_err(|_| "is not a valid header value".to_string())?;
    Ok(())
}
