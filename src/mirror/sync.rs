//! Sync: backfill and reconcile the mirror by paging through Attio.
//!
//! In: what to sync ([`SyncOptions`]: objects, lists, notes, tasks, workspace members, or all),
//! the shared [`AttioClient`] (its rate limits, retries and breaker) and a migrated [`Store`].
//! Out: every row upserted through the same statements as the `postgres` sink, a checkpoint per
//! scope after each page (an interrupted run resumes where it stopped), with `prune` the rows a
//! complete pass did not see and Attio confirms gone marked deleted, and a [`ScopeReport`] per
//! scope. Used by `attio-webhooks sync` and by the daemon's `[sync]` schedule.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::settings::PostgresSinkSettings;
use super::store::{Change, Counts, Store, StoreError, Table};
use super::views::Parent;
use crate::attio::{AttioClient, AttioError};
use crate::config::{ConfigError, Settings, SinkKind};
use crate::sinks::postgres::{load_schema, SchemaError};

/// Records and entries per page (Attio's query endpoints allow up to 500).
const PAGE: u32 = 500;
/// Notes per page (Attio allows at most 50).
const NOTES_PAGE: u32 = 50;
/// Rows checked against Attio per prune at most, per scope.
const PRUNE_LIMIT: i64 = 100_000;

/// What to sync.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Object slugs or ids.
    pub objects: Vec<String>,
    /// List slugs or ids.
    pub lists: Vec<String>,
    pub notes: bool,
    pub tasks: bool,
    pub members: bool,
    /// Every object and list of the workspace, notes, tasks and members.
    pub all: bool,
    pub prune: bool,
    /// Count what would change, write nothing.
    pub dry_run: bool,
}

impl SyncOptions {
    pub fn everything(prune: bool) -> SyncOptions {
        SyncOptions {
            all: true,
            prune,
            ..SyncOptions::default()
        }
    }
}

/// One thing paged through: an object's records, a list's entries, notes, tasks or members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Object { id: String, slug: String },
    List { id: String, slug: String },
    Notes,
    Tasks,
    Members,
}

impl Scope {
    /// The checkpoint's key.
    fn key(&self) -> String {
        match self {
            Scope::Object { id, .. } => format!("records:{id}"),
            Scope::List { id, .. } => format!("list_entries:{id}"),
            Scope::Notes => "notes".to_string(),
            Scope::Tasks => "tasks".to_string(),
            Scope::Members => "workspace_members".to_string(),
        }
    }

    /// How people name it: `object deals`, `list sales_pipeline`, `notes`.
    pub(crate) fn label(&self) -> String {
        match self {
            Scope::Object { slug, .. } => format!("object {slug}"),
            Scope::List { slug, .. } => format!("list {slug}"),
            Scope::Notes => "notes".to_string(),
            Scope::Tasks => "tasks".to_string(),
            Scope::Members => "workspace members".to_string(),
        }
    }

    fn table(&self) -> Table {
        match self {
            Scope::Object { .. } => Table::Records,
            Scope::List { .. } => Table::ListEntries,
            Scope::Notes => Table::Notes,
            Scope::Tasks => Table::Tasks,
            Scope::Members => Table::WorkspaceMembers,
        }
    }
}

/// How one scope ended.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeReport {
    pub scope: String,
    #[serde(flatten)]
    pub counts: Counts,
    /// Rows fetched from Attio in this run (a resumed run counts from where it resumed).
    pub(crate) fetched: u64,
    /// The pass went through every page (a run resumed from a checkpoint included).
    pub complete: bool,
    pub resumed_at: Option<i64>,
}

/// Told after every page.
pub trait Progress: Send + Sync {
    fn page(&self, scope: &Scope, report: &ScopeReport);
}

/// A [`Progress`] that says nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn page(&self, _: &Scope, _: &ScopeReport) {}
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Attio: {0}")]
    Attio(#[from] AttioError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Schema(#[from] SchemaError),
    #[error("cannot encode what Attio answered: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("interrupted; run the same command again to resume from the last page written")]
    Interrupted { done: Vec<ScopeReport> },
    #[error(
        "another sync of this schema is running (it holds the sync lock); try again when it ends"
    )]
    Busy,
}

/// Runs a sync of `options` under the schema's sync lock.
pub async fn run(
    attio: &AttioClient,
    store: &Store,
    options: &SyncOptions,
    progress: &dyn Progress,
    stop: &CancellationToken,
) -> Result<Vec<ScopeReport>, SyncError> {
    let Some(lock) = store.try_lock_sync().await? else {
        return Err(SyncError::Busy);
    };
    let result = run_locked(attio, store, options, progress, stop).await;
    lock.release().await;
    result
}

async fn run_locked(
    attio: &AttioClient,
    store: &Store,
    options: &SyncOptions,
    progress: &dyn Progress,
    stop: &CancellationToken,
) -> Result<Vec<ScopeReport>, SyncError> {
    let scopes = scopes(attio, store, options).await?;
    let mut reports = Vec::new();
    for scope in scopes {
        match sync_scope(attio, store, &scope, options, progress, stop).await {
            Ok(report) => reports.push(report),
            Err(SyncError::Interrupted { .. }) => {
                return Err(SyncError::Interrupted { done: reports })
            }
            Err(error) => return Err(error),
        }
    }
    Ok(reports)
}

/// The scopes `options` names, with objects' and lists' schemas loaded (and their views made).
async fn scopes(
    attio: &AttioClient,
    store: &Store,
    options: &SyncOptions,
) -> Result<Vec<Scope>, SyncError> {
    let mut scopes = Vec::new();
    let (objects, lists) = if options.all {
        let objects = attio.list_objects().await?;
        let lists = attio.list_lists().await?;
        (
            objects.into_iter().map(|o| o.id.object_id).collect(),
            lists.into_iter().map(|l| l.id.list_id).collect(),
        )
    } else {
        (options.objects.clone(), options.lists.clone())
    };
    for object in objects {
        let found = attio.get_object(&object).await?;
        let id = found.id.object_id.clone();
        if !options.dry_run {
            load_schema(attio, store, Parent::Object, &id).await?;
        }
        scopes.push(Scope::Object {
            slug: found.api_slug.unwrap_or_else(|| id.clone()),
            id,
        });
    }
    for list in lists {
        let found = attio.get_list(&list).await?;
        let id = found.id.list_id.clone();
        if !options.dry_run {
            load_schema(attio, store, Parent::List, &id).await?;
        }
        scopes.push(Scope::List {
            slug: found.api_slug.unwrap_or_else(|| id.clone()),
            id,
        });
    }
    if options.all || options.notes {
        scopes.push(Scope::Notes);
    }
    if options.all || options.tasks {
        scopes.push(Scope::Tasks);
    }
    if options.all || options.members {
        scopes.push(Scope::Members);
    }
    Ok(scopes)
}

async fn sync_scope(
    attio: &AttioClient,
    store: &Store,
    scope: &Scope,
    options: &SyncOptions,
    progress: &dyn Progress,
    stop: &CancellationToken,
) -> Result<ScopeReport, SyncError> {
    let key = scope.key();
    let checkpoint = if options.dry_run {
        None
    } else {
        store.open_checkpoint(&key).await?
    };
    let (started_at, mut offset, counts) = match &checkpoint {
        Some(checkpoint) => (
            checkpoint.started_at,
            checkpoint.next_offset,
            checkpoint.counts,
        ),
        None => (Utc::now(), 0, Counts::default()),
    };
    if checkpoint.is_none() && !options.dry_run {
        store.start_checkpoint(&key, started_at).await?;
    }
    let mut report = ScopeReport {
        scope: scope.label(),
        counts,
        fetched: 0,
        complete: false,
        resumed_at: checkpoint.map(|c| c.next_offset),
    };
    loop {
        if stop.is_cancelled() {
            return Err(SyncError::Interrupted { done: Vec::new() });
        }
        let (page, size) = fetch_page(attio, scope, offset).await?;
        let fetched_at = Utc::now();
        let done = (page.len() as u64) < u64::from(size) || matches!(scope, Scope::Members);
        let changes = rows(scope, page, fetched_at);
        let next = offset + changes.len() as i64;
        report.fetched += changes.len() as u64;
        report.counts += store
            .apply_page(&key, &changes, next, done, options.dry_run)
            .await?;
        offset = next;
        progress.page(scope, &report);
        if done {
            break;
        }
    }
    report.complete = true;
    if options.prune {
        report.counts.deleted += prune(attio, store, scope, started_at, options.dry_run).await?;
        progress.page(scope, &report);
    }
    Ok(report)
}

async fn fetch_page(
    attio: &AttioClient,
    scope: &Scope,
    offset: i64,
) -> Result<(Vec<Value>, u32), AttioError> {
    let at = u64::try_from(offset).unwrap_or(0);
    match scope {
        Scope::Object { id, .. } => Ok((attio.query_records(id, PAGE, at).await?, PAGE)),
        Scope::List { id, .. } => Ok((attio.query_list_entries(id, PAGE, at).await?, PAGE)),
        Scope::Notes => Ok((attio.list_notes(NOTES_PAGE, at).await?, NOTES_PAGE)),
        Scope::Tasks => Ok((attio.list_tasks(PAGE, at).await?, PAGE)),
        Scope::Members => Ok((attio.list_workspace_members().await?, u32::MAX)),
    }
}

fn rows(scope: &Scope, page: Vec<Value>, fetched_at: DateTime<Utc>) -> Vec<Change> {
    let slug = match scope {
        Scope::Object { slug, .. } | Scope::List { slug, .. } => Some(slug.clone()),
        _ => None,
    };
    page.into_iter()
        .map(|data| Change::Upsert {
            table: scope.table(),
            data,
            slug: slug.clone(),
            fetched_at,
        })
        .collect()
}

/// Rows of the scope that the complete pass started at `started_at` did not see: each is asked
/// of Attio once more (a record can move between pages while they are read), and only those
/// Attio answers 404 for are marked deleted. Returns how many.
async fn prune(
    attio: &AttioClient,
    store: &Store,
    scope: &Scope,
    started_at: DateTime<Utc>,
    dry_run: bool,
) -> Result<u64, SyncError> {
    let parent = match scope {
        Scope::Object { id, .. } | Scope::List { id, .. } => Some(id.as_str()),
        _ => None,
    };
    let table = scope.table();
    let unseen = store.unseen(table, parent, started_at, PRUNE_LIMIT).await?;
    let slug = match scope {
        Scope::Object { slug, .. } | Scope::List { slug, .. } => Some(slug.clone()),
        _ => None,
    };
    let mut changes = Vec::new();
    for key in unseen {
        let answer = match (scope, key.as_slice()) {
            (Scope::Object { .. }, [object, record]) => {
                attio.get_record(object, record).await.map(to_value)
            }
            (Scope::List { .. }, [list, entry]) => {
                attio.get_list_entry(list, entry).await.map(to_value)
            }
            (Scope::Notes, [note]) => attio.get_note(note).await.map(to_value),
            (Scope::Tasks, [task]) => attio.get_task(task).await.map(to_value),
            (Scope::Members, [member]) => attio.get_workspace_member(member).await.map(to_value),
            _ => continue,
        };
        let at = Utc::now();
        match answer {
            Ok(data) => changes.push(Change::Upsert {
                table,
                data: data?,
                slug: slug.clone(),
                fetched_at: at,
            }),
            Err(error) if error.is_not_found() => changes.push(Change::Gone {
                table,
                key,
                slug: slug.clone(),
                at,
                merged_into: None,
            }),
            Err(error) => return Err(error.into()),
        }
    }
    if changes.is_empty() {
        return Ok(0);
    }
    let counts = store.apply_changes(&changes, dry_run).await?;
    Ok(counts.deleted)
}

fn to_value<T: Serialize>(value: T) -> Result<Value, serde_json::Error> {
    serde_json::to_value(value)
}

/// The `postgres` sink named `wanted`, or the only one.
pub(crate) fn postgres_sink(
    settings: &Settings,
    wanted: Option<&str>,
) -> Result<(String, PostgresSinkSettings), String> {
    let sinks: Vec<(String, PostgresSinkSettings)> = settings
        .sinks
        .iter()
        .filter_map(|(name, sink)| match &sink.kind {
            SinkKind::Postgres(postgres) => Some((name.clone(), postgres.clone())),
            _ => None,
        })
        .collect();
    if let Some(wanted) = wanted {
        return sinks
            .into_iter()
            .find(|(name, _)| name == wanted)
            .ok_or_else(|| format!("no postgres sink named {wanted:?} in the configuration"));
    }
    let names: Vec<String> = sinks.iter().map(|(name, _)| name.clone()).collect();
    let mut found = sinks.into_iter();
    match (found.next(), found.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => Err(
            "no postgres sink is configured: add [sinks.NAME] with kind = \"postgres\" \
                          (see docs/postgres.md)"
                .to_string(),
        ),
        (Some(_), Some(_)) => Err(format!(
            "several postgres sinks are configured ({}): pick one with --sink NAME (sync.sink)",
            names.join(", ")
        )),
    }
}

/// The daemon's `[sync]`: the whole workspace reconciled every `interval`, by one replica at a
/// time (the others find the sync lock taken and skip that round).
pub(crate) struct Scheduled {
    attio: AttioClient,
    store: Store,
    interval: Duration,
    prune: bool,
}

impl Scheduled {
    /// `None` when `[sync] interval` is not set.
    pub(crate) fn from_settings(
        settings: &Settings,
        attio: Option<&AttioClient>,
    ) -> Result<Option<Scheduled>, ConfigError> {
        let Some(interval) = settings.sync.interval.filter(|i| !i.is_zero()) else {
            return Ok(None);
        };
        let invalid = |problem: String| ConfigError::Invalid {
            key: "sync.sink".to_string(),
            problem,
        };
        let (name, sink) =
            postgres_sink(settings, settings.sync.sink.as_deref()).map_err(invalid)?;
        let Some(attio) = attio else {
            return Err(ConfigError::Invalid {
                key: "sync.interval".to_string(),
                problem: "needs ATTIO_API_KEY: the sync reads from Attio".to_string(),
            });
        };
        let store = Store::open(&format!("sinks.{name}"), &sink).map_err(|e| invalid(e.message))?;
        Ok(Some(Scheduled {
            attio: attio.clone(),
            store,
            interval,
            prune: settings.sync.prune,
        }))
    }

    /// Reconciles at once, then every `interval`, until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            self.round(&stop).await;
        }
    }

    async fn round(&self, stop: &CancellationToken) {
        if let Err(error) = self.store.migrate().await {
            tracing::warn!(%error, "scheduled sync skipped: PostgreSQL is not ready");
            return;
        }
        let started = std::time::Instant::now();
        let options = SyncOptions::everything(self.prune);
        match run(&self.attio, &self.store, &options, &Quiet, stop).await {
            Ok(reports) => {
                for report in &reports {
                    tracing::info!(
                        scope = %report.scope,
                        created = report.counts.created,
                        updated = report.counts.updated,
                        unchanged = report.counts.unchanged,
                        deleted = report.counts.deleted,
                        "scheduled sync"
                    );
                }
                tracing::info!(scopes = reports.len(), took = ?started.elapsed(), "scheduled sync finished");
            }
            Err(SyncError::Busy) => {
                tracing::debug!("scheduled sync skipped: another replica is syncing");
            }
            Err(SyncError::Interrupted { .. }) => {
                tracing::info!("scheduled sync stopped by shutdown; the next round resumes it");
            }
            Err(error) => tracing::warn!(%error, "scheduled sync failed; trying again next round"),
        }
    }
}
