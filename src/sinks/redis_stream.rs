//! The `redis_stream` sink: appends each event to a Redis stream, for consumers in any language
//! reading with consumer groups (`XREADGROUP`).
//!
//! In: a [`SinkLine`]. Out: `Ok` once Redis stored the entry. Each entry is
//! `XADD <key> MAXLEN ~ <maxlen> * event_id <id> event_type <type> payload <JSON line>`; the
//! approximate trim keeps the stream bounded without costing Redis a precise cut on every add.
//! Errors are transient (Redis down, timeouts) except a key holding another type (`WRONGTYPE`),
//! which retrying cannot fix. The connection manager reconnects by itself.

use redis::aio::ConnectionManager;
use secrecy::SecretString;

use super::settings::RedisStreamSinkSettings;
use super::{SinkError, SinkLine};

/// Field names of every stream entry.
pub(crate) const FIELD_EVENT_ID: &str = "event_id";
pub(crate) const FIELD_EVENT_TYPE: &str = "event_type";
pub(crate) const FIELD_PAYLOAD: &str = "payload";

pub(crate) struct RedisStreamSink {
    connection: ConnectionManager,
    key: String,
    maxlen: u64,
}

impl RedisStreamSink {
    pub(crate) fn open(
        name: &str,
        settings: &RedisStreamSinkSettings,
    ) -> Result<RedisStreamSink, SinkError> {
        let url: &SecretString = settings.url.as_ref().ok_or_else(|| {
            SinkError::permanent(format!(
                "sinks.{name}.url: needed (or set redis.url, which it defaults to)"
            ))
        })?;
        let connection = crate::dedupe::redis::connect_with(url, settings.tls_ca_file.as_deref())
            .map_err(|e| SinkError::permanent(format!("sinks.{name}: {e}")))?;
        Ok(RedisStreamSink {
            connection,
            key: settings.key.clone(),
            maxlen: settings.maxlen,
        })
    }

    pub(crate) async fn deliver(&self, line: &SinkLine) -> Result<(), SinkError> {
        let mut connection = self.connection.clone();
        let _entry: String = redis::cmd("XADD")
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg(FIELD_EVENT_ID)
            .arg(&*line.id)
            .arg(FIELD_EVENT_TYPE)
            .arg(&*line.event_type)
            .arg(FIELD_PAYLOAD)
            .arg(&*line.json)
            .query_async(&mut connection)
            .await
            .map_err(|error| {
                let message = format!("XADD to {:?} failed: {error}", self.key);
                if error.code() == Some("WRONGTYPE") {
                    SinkError::permanent(message)
                } else {
                    SinkError::transient(message)
                }
            })?;
        Ok(())
    }
}
