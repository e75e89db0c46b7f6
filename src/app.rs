//! Builds the running daemon from settings and runs it until shutdown.
//!
//! In: a parsed [`Config`]. Out: a bound listener ([`Application::port`] works with port 0 in
//! tests), the worker, and the background upkeep, all stopped in pipeline order on shutdown:
//! first ingress (in-flight requests finish), then the worker (in-flight events finish or stay
//! in the journal), then the journal (everything queued is committed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::auth::Auth;
use crate::api::ApiState;
use crate::attio::rate_limit::SharedRateLimit;
use crate::attio::AttioClient;
use crate::config::{Config, Queue, RedisTarget, Settings};
use crate::dedupe::{self, ClaimOwner, DedupeStore, EmbeddedDedupe, RedisDedupe};
use crate::enrich::Enricher;
use crate::ingress::connections::{self, ConnectionLimits};
use crate::ingress::{self, IngressState};
use crate::journal::history::{Changes, Retention};
use crate::journal::{Journal, JournalLock, RedisJournal, SqliteJournal};
use crate::routing::closest_event_type;
use crate::sinks::{FileReopener, Sinks};
use crate::worker::outage::Outages;
use crate::worker::{self, Pipeline, Worker};

/// Connections open at once on the admin listener (probes, metrics): enough for every scraper
/// and probe, and it leaves the open-files limit to the webhook listener.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Descriptors kept for what is not a connection: the journal, sink files, outgoing connections
/// to Attio, Redis and sinks, command sinks' pipes.
const DESCRIPTORS_FOR_THE_REST: u64 = 256;

/// How often expired delivery keys are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source} (is another process using it? set {setting})")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        /// The setting that chose the address, for the hint.
        setting: &'static str,
    },
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("{0}")]
    Dedupe(#[from] crate::dedupe::DedupeError),
    #[error("{0}")]
    Sink(#[from] crate::sinks::SinkError),
    #[error("{0}")]
    Attio(#[from] crate::attio::AttioError),
    #[error(
        "refusing to start with APP_ENV=production: {0}; or set queue.allow_volatile_redis = true \
         to accept that loss"
    )]
    VolatileRedis(String),
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    admin: Option<(TcpListener, axum::Router)>,
    worker: Option<Worker>,
    journal: Journal,
    /// With the embedded journal: this process is the only daemon working on it.
    journal_lock: Option<JournalLock>,
    /// `[sync]`: the scheduled reconciliation of a `postgres` sink, when configured.
    scheduled_sync: Option<crate::mirror::sync::Scheduled>,
    /// Reopens the `jsonl` sinks' files on SIGHUP.
    file_sinks: FileReopener,
    settings: Settings,
    /// The events API and console's shared state, when they are served.
    api: Option<Arc<ApiState>>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartError> {
        let Config {
            listen: addr,
            admin_listen,
            queue,
            routes,
            sinks: sink_settings,
            settings,
        } = config;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr,
                source,
                setting: "--listen or server.listen",
            })?;

        let admin_listener = match admin_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            addr,
                            source,
                            setting: "admin.listen",
                        })?,
                )
            }
            None => None,
        };

        let mut journal_lock = None;
        let (journal, dedupe, redis) = match &queue {
            Queue::Redis(redis) => {
                let connection = dedupe::redis::connect_client(redis.client.clone())?;
                check_redis_persistence(connection.clone(), &settings).await?;
                let journal = Journal::Redis(
                    RedisJournal::new(
                        connection.clone(),
                        &redis.key_prefix,
                        settings.dedupe.claim_lease,
                        settings.dedupe.done_ttl,
                    )
                    .with_history(settings.storage.history),
                );
                let dedupe = redis_dedupe(connection.clone(), redis, &settings, None);
                (journal, dedupe, Some((connection, redis)))
            }
            Queue::Embedded {
                journal,
                sync,
                redis,
            } => {
                let redis = match redis {
                    Some(redis) => {
                        Some((dedupe::redis::connect_client(redis.client.clone())?, redis))
                    }
                    None => None,
                };
                let lock = JournalLock::acquire(journal)?;
                let sqlite = SqliteJournal::open_owned(journal, *sync, &lock)?;
                journal_lock = Some(lock);
                let dedupe = match &redis {
                    Some((connection, redis)) => redis_dedupe(
                        connection.clone(),
                        redis,
                        &settings,
                        Some(ClaimOwner::new_instance(sqlite.id())),
                    ),
                    None => DedupeStore::Embedded(EmbeddedDedupe::new(settings.dedupe.claim_lease)),
                };
                (Journal::Sqlite(sqlite), dedupe, redis)
            }
        };
        // With Redis, replicas share Attio's rate limits through it too.
        let shared_rate_limit = redis.map(|(connection, redis)| SharedRateLimit {
            connection,
            key_prefix: redis.key_prefix.clone(),
        });
        for (route, name) in routes.unknown_event_types() {
            match closest_event_type(&name) {
                Some(hint) => {
                    tracing::warn!(route = %route, event_type = %name, "route names an event type Attio does not document; did you mean {hint:?}?")
                }
                None => {
                    tracing::warn!(route = %route, event_type = %name, "route names an event type Attio does not document")
                }
            }
        }
        for warning in settings.unused_sinks() {
            tracing::warn!("{warning}");
        }
        let attio = build_attio_client(&settings, shared_rate_limit)?;
        let sinks = Sinks::open_with(&sink_settings, attio.as_ref())?;
        sinks.prepare().await;
        let scheduled_sync =
            crate::mirror::sync::Scheduled::from_settings(&settings, attio.as_ref())?;
        let file_sinks = sinks.file_reopener();
        let enricher = Enricher::new(attio, &settings.enrichment);
        let changes = Changes::default();
        let outages = Arc::new(Outages::default());
        let api_enricher = enricher.clone();

        let (handoff, worker) = worker::channel(
            Pipeline {
                journal: journal.clone(),
                dedupe: dedupe.clone(),
                routes,
                sinks,
                enricher,
                settings: settings.worker.clone(),
                collapser: Default::default(),
                outages: outages.clone(),
                unrecorded: Default::default(),
                changes: changes.clone(),
            },
            settings.queue.channel_capacity,
        );
        let (handoff, worker) = if settings.worker.enabled {
            (Some(handoff), Some(worker))
        } else {
            tracing::warn!("worker.enabled = false: deliveries are journaled but not processed");
            (None, None)
        };
        let state = Arc::new(IngressState {
            secrets: settings.webhook.secrets.clone(),
            body_limit: settings.server.body_limit,
            body_read_timeout: settings.server.body_read_timeout,
            max_backlog: settings.queue.max_backlog,
            journal: journal.clone(),
            handoff,
            dedupe: dedupe.clone(),
            metrics_on_main: settings.metrics_on_main_listener(),
            changes: changes.clone(),
        });
        crate::metrics::handle();
        let mut router = ingress::router(&settings.server.path, state.clone());
        let mut admin = admin_listener.map(|listener| (listener, ingress::admin_router(state)));
        // The API and console go where the metrics go: the admin listener when there is one.
        let console_addr = match &admin {
            Some((listener, _)) => listener.local_addr(),
            None => listener.local_addr(),
        }
        .map_err(|source| StartError::Bind {
            addr,
            source,
            setting: "server.listen or admin.listen",
        })?;
        let api = if settings.admin.token.is_none() && !console_addr.ip().is_loopback() {
            tracing::warn!(
                listen = %console_addr,
                "the events API and console are not served: without an admin token they are \
                 served only on a loopback address (set ATTIO_WEBHOOKS_ADMIN_TOKEN)"
            );
            None
        } else {
            Some(Arc::new(ApiState {
                journal: journal.clone(),
                dedupe: dedupe.clone(),
                changes,
                outages,
                enricher: api_enricher,
                auth: Auth::new(settings.admin.token.as_ref()),
                started: std::time::Instant::now(),
                shutdown: CancellationToken::new(),
            }))
        };
        if let Some(api) = &api {
            let served = crate::api::router(api.clone()).merge(crate::console::router(api.clone()));
            match admin.take() {
                Some((listener, admin_router)) => {
                    admin = Some((listener, admin_router.merge(served)))
                }
                None => router = router.merge(served),
            }
        }
        Ok(Application {
            listener,
            router,
            admin,
            worker,
            journal,
            journal_lock,
            scheduled_sync,
            file_sinks,
            settings,
            api,
        })
    }

    /// The bound port (useful when `server.listen` asked for port 0).
    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address, when `admin.listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled, then drains in pipeline order.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Application {
            listener,
            router,
            admin,
            worker,
            journal,
            journal_lock,
            scheduled_sync,
            file_sinks,
            settings,
            api,
        } = self;
        if settings.uses_development_secret() {
            tracing::warn!(
                "!!! USING THE DEVELOPMENT WEBHOOK SECRET: anyone can sign deliveries. Set ATTIO_WEBHOOK_SECRET before exposing this daemon !!!"
            );
        }
        tracing::info!(
            listen = %listener.local_addr()?,
            path = %settings.server.path,
            dedupe = if settings.redis.url.is_some() { "redis" } else { "embedded" },
            queue = journal.name(),
            journal = %match &journal {
                Journal::Sqlite(_) => settings.journal_path().display().to_string(),
                Journal::Redis(redis) => format!("redis {{{}}} as {}", settings.redis.key_prefix, redis.consumer()),
            },
            secrets = settings.webhook.secrets.len(),
            enrichment = settings.attio.api_key.is_some(),
            "attio-webhooks listening"
        );
        let admin_addr = admin
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok());
        if let Some(addr) = admin_addr {
            tracing::info!(listen = %addr, "admin listener (metrics, probes)");
        }
        log_metrics_location(&settings, listener.local_addr()?, admin_addr);
        check_open_files_limit(&settings, admin_addr.is_some());

        let sync_stop = CancellationToken::new();
        let sync_task =
            scheduled_sync.map(|scheduled| tokio::spawn(scheduled.run(sync_stop.clone())));
        let reopen_on_hangup = tokio::spawn(reopen_on_hangup(file_sinks));
        if let Some(api) = &api {
            let at = match &admin {
                Some((listener, _)) => listener.local_addr(),
                None => listener.local_addr(),
            };
            if let Ok(at) = at {
                let access = if api.auth.has_token() {
                    "sign in with the admin token"
                } else {
                    "no admin token: open to local requests only"
                };
                tracing::info!(
                    console = %format!("http://{at}/console"),
                    api = %format!("http://{at}/api/v1"),
                    "console and events API ({access})"
                );
            }
            // Open streams end when the daemon begins to stop, so the graceful shutdown does
            // not wait for them.
            let stop = api.shutdown.clone();
            let begun = shutdown.clone();
            tokio::spawn(async move {
                begun.cancelled().await;
                stop.cancel();
            });
        }
        let worker_stop = CancellationToken::new();
        let worker_task = worker.map(|worker| tokio::spawn(worker.run(worker_stop.clone())));
        let upkeep_stop = CancellationToken::new();
        let upkeep = tokio::spawn(upkeep(
            journal.clone(),
            settings.dedupe.done_ttl,
            retention(&settings),
            upkeep_stop.clone(),
        ));
        let metrics_upkeep = tokio::spawn(metrics_upkeep(upkeep_stop.clone()));

        let limits = ConnectionLimits {
            header_read_timeout: settings.server.header_read_timeout,
            idle_timeout: settings.server.idle_timeout,
            max_connections: settings.server.max_connections,
        };
        let admin_task = admin.map(|(listener, router)| {
            let admin_limits = ConnectionLimits {
                max_connections: ADMIN_MAX_CONNECTIONS.min(limits.max_connections),
                ..limits
            };
            tokio::spawn(connections::serve(
                "admin",
                listener,
                router,
                admin_limits,
                shutdown.clone(),
            ))
        });
        let serve = connections::serve("main", listener, router, limits, shutdown.clone());
        tokio::pin!(serve);
        // In-flight requests get the same grace as in-flight events; a client that keeps a
        // request open longer does not hold the shutdown up.
        let grace = settings.worker.shutdown_grace;
        tokio::select! {
            () = &mut serve => {}
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("in-flight requests did not finish within the shutdown grace");
            }
        }
        tracing::info!("ingress stopped; draining the worker");
        // A scheduled sync stops after the page it is writing (its checkpoint is committed).
        sync_stop.cancel();
        if let Some(task) = sync_task {
            let _ = task.await;
        }
        worker_stop.cancel();
        if let Some(task) = worker_task {
            if let Err(error) = task.await {
                tracing::error!(%error, "worker task ended abnormally");
            }
        }
        upkeep_stop.cancel();
        let _ = upkeep.await;
        let _ = metrics_upkeep.await;
        if let Some(task) = admin_task {
            task.abort();
        }
        reopen_on_hangup.abort();
        journal.close().await;
        drop(journal_lock);
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// How long history is kept (`storage.history`, `storage.dead_letter_history`).
fn retention(settings: &Settings) -> Retention {
    Retention {
        history: settings.storage.history,
        dead_letters: settings.storage.dead_letter_history,
    }
}

/// Says at start where `/metrics` can be scraped, or why it is served nowhere.
fn log_metrics_location(settings: &Settings, main: SocketAddr, admin: Option<SocketAddr>) {
    let mut places: Vec<String> = Vec::new();
    if let Some(admin) = admin {
        places.push(format!("http://{admin}/metrics"));
    }
    if settings.metrics_on_main_listener() {
        places.push(format!("http://{main}/metrics"));
    }
    if places.is_empty() {
        tracing::warn!(
            "/metrics is not served: with APP_ENV=production it is served only on admin.listen; \
             set admin.listen (or server.metrics = true to serve it on server.listen)"
        );
    } else {
        tracing::info!(at = %places.join(" and "), "metrics");
    }
}

/// Raises the open-files limit where the hard limit allows, and warns when the connection caps
/// do not fit under it: `accept` would then fail (EMFILE) before the cap is reached.
fn check_open_files_limit(settings: &Settings, admin: bool) {
    let Some(limit) = connections::raise_open_files_limit() else {
        return;
    };
    let admin_connections = if admin { ADMIN_MAX_CONNECTIONS } else { 0 };
    let needed =
        (settings.server.max_connections + admin_connections) as u64 + DESCRIPTORS_FOR_THE_REST;
    if needed > limit {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = settings.server.max_connections,
            "server.max_connections does not fit under the open-files limit with the daemon's \
             other files; when descriptors run out, accepting pauses until connections close. \
             Raise the limit (ulimit -n, LimitNOFILE= under systemd) to at least {needed}, or \
             lower server.max_connections"
        );
    }
}

/// The Attio client shared by enrichment and the sinks that read Attio: with an API key, one
/// client for every event (its rate limits shared with the other replicas through Redis when
/// there is one); without, a warning and events delivered with `enrichment: "disabled"`.
fn build_attio_client(
    settings: &Settings,
    shared_rate_limit: Option<SharedRateLimit>,
) -> Result<Option<AttioClient>, StartError> {
    let Some(api_key) = &settings.attio.api_key else {
        tracing::warn!(
            "no Attio API key (set ATTIO_API_KEY): events are delivered without enrichment \
             (enrichment: \"disabled\")"
        );
        return Ok(None);
    };
    if settings.attio.base_url.starts_with("http://") {
        tracing::warn!(
            base_url = %crate::redact::redacted_url(&settings.attio.base_url),
            "attio.base_url is plain http: the API key travels unencrypted"
        );
    }
    Ok(Some(AttioClient::with_rate_limit(
        &settings.attio,
        api_key,
        shared_rate_limit,
    )?))
}

/// With the Redis queue, acknowledged deliveries live only in Redis: says what a Redis restart
/// would lose, and refuses a Redis without AOF in production unless that is explicitly allowed.
/// A Redis that does not answer is not checked (the daemon starts and reports not ready).
async fn check_redis_persistence(
    mut connection: redis::aio::ConnectionManager,
    settings: &Settings,
) -> Result<(), StartError> {
    use crate::journal::redis_persistence::{Persistence, Risk, CHECK_TIMEOUT};
    let persistence =
        match tokio::time::timeout(CHECK_TIMEOUT, Persistence::read(&mut connection)).await {
            Ok(Ok(persistence)) => persistence,
            Ok(Err(problem)) => {
                tracing::warn!(
                    %problem,
                    "cannot read Redis's persistence settings: check that it runs with \
                     appendonly yes and appendfsync always (docs/scale-out.md)"
                );
                return Ok(());
            }
            Err(_) => {
                tracing::warn!(
                    "Redis did not answer within {}: its persistence settings were not checked \
                     (docs/scale-out.md)",
                    humantime::format_duration(CHECK_TIMEOUT)
                );
                return Ok(());
            }
        };
    match persistence.risk() {
        None => tracing::info!(
            "Redis keeps every acknowledged delivery (appendonly yes, appendfsync always)"
        ),
        Some(Risk::Volatile(message))
            if settings.environment == "production" && !settings.queue.allow_volatile_redis =>
        {
            return Err(StartError::VolatileRedis(message));
        }
        Some(risk) => tracing::warn!("{}", risk.message()),
    }
    Ok(())
}

/// `owner`: with the embedded journal, who this process is, so that its next run can take over
/// the claims it leaves if it is killed (see `dedupe::redis`).
fn redis_dedupe(
    connection: redis::aio::ConnectionManager,
    redis: &RedisTarget,
    settings: &Settings,
    owner: Option<ClaimOwner>,
) -> DedupeStore {
    let store = RedisDedupe::new(
        connection,
        &redis.key_prefix,
        settings.dedupe.claim_lease,
        settings.dedupe.done_ttl,
    );
    DedupeStore::Redis(match owner {
        Some(owner) => store.with_owner(owner),
        None => store,
    })
}

/// Forgets delivery keys older than `dedupe.done_ttl`, deletes history older than
/// `storage.history` (dead letters: `storage.dead_letter_history`), and with the Redis journal
/// forgets replicas long gone from the consumer group.
async fn upkeep(journal: Journal, keep: Duration, retention: Retention, stop: CancellationToken) {
    let mut interval = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {
                match journal.purge(keep, retention).await {
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(purged, journal = journal.name(), "purged expired journal entries"),
                    Err(error) => tracing::warn!(%error, "purge of expired keys failed"),
                }
            }
        }
    }
}

/// Folds histogram samples into their buckets every [`crate::metrics::UPKEEP_INTERVAL`]: without
/// it the recorder keeps every sample until the next scrape, and a daemon nobody scrapes grows
/// for ever.
async fn metrics_upkeep(stop: CancellationToken) {
    let mut interval = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => crate::metrics::run_upkeep(),
        }
    }
}

/// Reopens the file sinks on every SIGHUP (the log-rotation convention), until aborted. Without
/// it SIGHUP would end the process, as it does by default.
async fn reopen_on_hangup(file_sinks: FileReopener) {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            while hangup.recv().await.is_some() {
                let files = file_sinks.reopen();
                tracing::info!(files, "SIGHUP received; reopening the file sinks");
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP; file sinks are not reopened on it")
        }
    }
    #[cfg(not(unix))]
    let _ = file_sinks;
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
