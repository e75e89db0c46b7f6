//! Start-up check of the Redis queue (`queue.backend = "redis"`): what Redis keeps across its
//! own restart.
//!
//! In: a connection to the Redis the queue uses. Out: its [`Persistence`] (from
//! `INFO persistence` and, where the server allows `CONFIG`, `CONFIG GET appendfsync`) and, when
//! a restart or crash of Redis could lose acknowledged deliveries, a [`Persistence::risk`] naming
//! what would be lost. `serve` logs it at start (and refuses to start with
//! `APP_ENV=production` on a Redis without AOF unless `queue.allow_volatile_redis = true`);
//! `check-config` shows it as a warning.

use std::time::Duration;

/// How long the check waits for Redis before giving up (the daemon still starts).
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a Redis keeps across its restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Persistence {
    /// `appendonly yes`: every write is logged to the append-only file.
    pub(crate) aof: bool,
    /// `always`, `everysec` or `no`; `None` where `CONFIG GET` is not allowed (managed Redis).
    pub(crate) appendfsync: Option<String>,
}

/// How bad a [`Persistence`] is for acknowledged deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Risk {
    /// No AOF: a restart loses everything since the last snapshot, if any.
    Volatile(String),
    /// AOF, but not fsynced on every write (or not known to be).
    Window(String),
}

impl Risk {
    pub(crate) fn message(&self) -> &str {
        match self {
            Risk::Volatile(message) | Risk::Window(message) => message,
        }
    }
}

impl Persistence {
    /// Reads the settings. `CONFIG GET` may be refused (renamed or disabled on managed
    /// services): `appendfsync` is then unknown, not an error.
    pub(crate) async fn read<C: redis::aio::ConnectionLike + Send>(
        connection: &mut C,
    ) -> Result<Persistence, String> {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(connection)
            .await
            .map_err(|e| format!("INFO persistence failed: {e}"))?;
        let aof = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("aof_enabled:"))
            .map(|value| value.trim() == "1")
            .ok_or_else(|| "INFO persistence has no aof_enabled field".to_string())?;
        let appendfsync: Option<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async::<Vec<String>>(connection)
            .await
            .ok()
            .and_then(|pair| pair.into_iter().nth(1));
        Ok(Persistence { aof, appendfsync })
    }

    /// What a restart or crash of this Redis would lose, or `None` when it keeps every
    /// acknowledged delivery (`appendonly yes`, `appendfsync always`).
    pub(crate) fn risk(&self) -> Option<Risk> {
        const FIX: &str = "set `appendonly yes` and `appendfsync always` on Redis \
                           (docs/scale-out.md)";
        if !self.aof {
            return Some(Risk::Volatile(format!(
                "Redis keeps no append-only file (appendonly no): with queue.backend = \"redis\" \
                 a restart or crash of Redis loses every acknowledged delivery not yet taken by \
                 its sinks, the retry schedule and the dead letters written since its last \
                 snapshot (all of them without snapshots); {FIX}"
            )));
        }
        match self.appendfsync.as_deref() {
            Some("always") => None,
            Some("everysec") => Some(Risk::Window(format!(
                "Redis fsyncs its append-only file once a second (appendfsync everysec): a crash \
                 of the machine Redis runs on may lose about the last second of acknowledged \
                 deliveries; {FIX}"
            ))),
            Some(other) => Some(Risk::Window(format!(
                "Redis leaves fsyncing its append-only file to the operating system (appendfsync \
                 {other}): a crash of the machine Redis runs on may lose the last half minute or \
                 so of acknowledged deliveries; {FIX}"
            ))),
            None => Some(Risk::Window(format!(
                "Redis has an append-only file, but its appendfsync could not be read (CONFIG \
                 GET is not allowed): unless it is `always`, a crash of the machine Redis runs \
                 on may lose the last acknowledged deliveries; {FIX}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persistence(aof: bool, appendfsync: Option<&str>) -> Persistence {
        Persistence {
            aof,
            appendfsync: appendfsync.map(str::to_string),
        }
    }

    #[test]
    fn only_aof_fsynced_on_every_write_is_without_risk() {
        assert_eq!(persistence(true, Some("always")).risk(), None);
        assert!(matches!(
            persistence(false, Some("always")).risk(),
            Some(Risk::Volatile(_))
        ));
        for appendfsync in [Some("everysec"), Some("no"), None] {
            assert!(
                matches!(persistence(true, appendfsync).risk(), Some(Risk::Window(_))),
                "{appendfsync:?}"
            );
        }
    }

    #[test]
    fn the_warning_names_what_would_be_lost_and_the_fix() {
        let risk = persistence(false, None).risk().unwrap();
        let message = risk.message();
        assert!(
            message.contains("acknowledged delivery")
                && message.contains("retry schedule")
                && message.contains("dead letters")
                && message.contains("appendonly yes"),
            "{message}"
        );
    }
}
