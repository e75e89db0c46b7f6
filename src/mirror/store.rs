//! The mirror's storage: every SQL statement the `postgres` sink and `sync` run.
//!
//! In: [`Change`]s (a fetched resource to upsert, or a resource Attio no longer has), catalog
//! updates (objects, lists, attributes) and sync checkpoints. Out: rows in the configured schema,
//! [`Counts`] of what changed, and a [`StoreError`] that says whether trying again can help.
//! Control flow lives in the sink and in `sync`; this module only speaks SQL. Every write is
//! guarded by `fetched_at`, so an older fetch never overwrites a newer row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use serde_json::{json, Value};

use super::settings::PostgresSinkSettings;
use super::views::{self, AttributeColumn, Parent};

/// Embedded, versioned migrations, applied in order at start (see [`Store::migrate`]).
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "tables", include_str!("migrations/V1__tables.sql"))];

/// Advisory lock keys (with the schema's hash) for migrations, view changes and sync runs.
const LOCK_MIGRATIONS: i32 = 0x6d69_6772;
const LOCK_VIEWS: i32 = 0x7669_6577;
const LOCK_SYNC: i32 = 0x7379_6e63;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub(crate) message: String,
    /// The database refused this row (a constraint, a value of the wrong type): trying the same
    /// write again cannot help.
    pub(crate) permanent: bool,
    /// The database's, the pool's or the file system's own error, when there is one. Shared
    /// (`Arc`) so that one failed batch can answer each of its writers.
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    fn transient(message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
            permanent: false,
            source: None,
        }
    }

    pub(crate) fn permanent(message: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
            permanent: true,
            source: None,
        }
    }

    /// This error, caused by `source` (which its message already quotes).
    fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        self.source = Some(Arc::new(source));
        self
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        match error.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                // Class 22 (data exception) and 23 (integrity constraint violation) are about the
                // row; everything else (connections, locks, a restarting server) may pass.
                let permanent = code.starts_with("22") || code.starts_with("23");
                let message = format!("PostgreSQL refused the write ({code}): {}", db.message());
                StoreError {
                    message,
                    permanent,
                    source: None,
                }
                .caused_by(error)
            }
            None => StoreError::transient(format!("PostgreSQL is unavailable: {error}"))
                .caused_by(error),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> StoreError {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => StoreError::transient(format!("PostgreSQL is unavailable: {other}"))
                .caused_by(other),
        }
    }
}

/// The tables that hold Attio resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Records,
    ListEntries,
    Notes,
    Tasks,
    Comments,
    WorkspaceMembers,
}

/// How one table is written: its keys and the columns taken from the fetched resource.
struct TableSql {
    name: &'static str,
    /// Key column and where it sits in the fetched resource.
    keys: &'static [(&'static str, &'static str)],
    /// Column and the SQL expression over the input element `e` (`e->'data'` is the resource,
    /// `e->>'slug'` the object's or list's slug).
    columns: &'static [(&'static str, &'static str)],
    /// The column whose change makes a row "updated" rather than "unchanged".
    content: &'static str,
    /// The slug column, kept when an input has none.
    slug: Option<&'static str>,
}

const RECORDS: TableSql = TableSql {
    name: "records",
    keys: &[
        ("object_id", "{id,object_id}"),
        ("record_id", "{id,record_id}"),
    ],
    columns: &[
        ("object", "e->>'slug'"),
        ("\"values\"", "coalesce(e#>'{data,values}', '{}'::jsonb)"),
        ("web_url", "e#>>'{data,web_url}'"),
        ("created_at", "(e#>>'{data,created_at}')::timestamptz"),
    ],
    content: "\"values\"",
    slug: Some("object"),
};

const LIST_ENTRIES: TableSql = TableSql {
    name: "list_entries",
    keys: &[("list_id", "{id,list_id}"), ("entry_id", "{id,entry_id}")],
    columns: &[
        ("list", "e->>'slug'"),
        ("parent_object", "e#>>'{data,parent_object}'"),
        ("parent_record_id", "(e#>>'{data,parent_record_id}')::uuid"),
        (
            "entry_values",
            "coalesce(e#>'{data,entry_values}', '{}'::jsonb)",
        ),
        ("created_at", "(e#>>'{data,created_at}')::timestamptz"),
    ],
    content: "entry_values",
    slug: Some("list"),
};

const NOTES: TableSql = TableSql {
    name: "notes",
    keys: &[("note_id", "{id,note_id}")],
    columns: &[
        ("parent_object", "e#>>'{data,parent_object}'"),
        ("parent_record_id", "(e#>>'{data,parent_record_id}')::uuid"),
        ("title", "e#>>'{data,title}'"),
        ("created_by_id", "(e#>>'{data,created_by_actor,id}')::uuid"),
        ("created_at", "(e#>>'{data,created_at}')::timestamptz"),
        ("data", "e->'data'"),
    ],
    content: "data",
    slug: None,
};

const TASKS: TableSql = TableSql {
    name: "tasks",
    keys: &[("task_id", "{id,task_id}")],
    columns: &[
        ("content", "e#>>'{data,content_plaintext}'"),
        ("deadline_at", "(e#>>'{data,deadline_at}')::timestamptz"),
        ("is_completed", "(e#>>'{data,is_completed}')::boolean"),
        ("created_at", "(e#>>'{data,created_at}')::timestamptz"),
        ("data", "e->'data'"),
    ],
    content: "data",
    slug: None,
};

const COMMENTS: TableSql = TableSql {
    name: "comments",
    keys: &[("comment_id", "{id,comment_id}")],
    columns: &[
        ("thread_id", "(e#>>'{data,thread_id}')::uuid"),
        ("object_id", "(e#>>'{data,record,object_id}')::uuid"),
        ("record_id", "(e#>>'{data,record,record_id}')::uuid"),
        ("list_id", "(e#>>'{data,entry,list_id}')::uuid"),
        ("entry_id", "(e#>>'{data,entry,entry_id}')::uuid"),
        ("author_id", "(e#>>'{data,author,id}')::uuid"),
        ("content", "e#>>'{data,content_plaintext}'"),
        ("resolved_at", "(e#>>'{data,resolved_at}')::timestamptz"),
        ("created_at", "(e#>>'{data,created_at}')::timestamptz"),
        ("data", "e->'data'"),
    ],
    content: "data",
    slug: None,
};

const WORKSPACE_MEMBERS: TableSql = TableSql {
    name: "workspace_members",
    keys: &[("workspace_member_id", "{id,workspace_member_id}")],
    columns: &[
        ("email_address", "e#>>'{data,email_address}'"),
        ("first_name", "e#>>'{data,first_name}'"),
        ("last_name", "e#>>'{data,last_name}'"),
        ("access_level", "e#>>'{data,access_level}'"),
        ("created_at", "(e#>>'{data,created_at}')::timestamptz"),
        ("data", "e->'data'"),
    ],
    content: "data",
    slug: None,
};

impl Table {
    fn sql(self) -> &'static TableSql {
        match self {
            Table::Records => &RECORDS,
            Table::ListEntries => &LIST_ENTRIES,
            Table::Notes => &NOTES,
            Table::Tasks => &TASKS,
            Table::Comments => &COMMENTS,
            Table::WorkspaceMembers => &WORKSPACE_MEMBERS,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        self.sql().name
    }

    /// The key columns, in order.
    pub(crate) fn keys(self) -> Vec<&'static str> {
        self.sql().keys.iter().map(|(column, _)| *column).collect()
    }

    /// The key of a fetched resource, read from its `id`.
    pub(crate) fn key_of(self, data: &Value) -> Option<Vec<String>> {
        self.sql()
            .keys
            .iter()
            .map(|(_, path)| {
                let path = path.trim_matches(|c| c == '{' || c == '}');
                path.split(',')
                    .try_fold(data, |value, part| value.get(part))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    }
}

/// One change to the mirror.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Attio's current state of a resource (`data` is what it answered).
    Upsert {
        table: Table,
        data: Value,
        /// The object's or list's slug (records and entries).
        slug: Option<String>,
        fetched_at: DateTime<Utc>,
    },
    /// Attio no longer has it (a 404, a `*.deleted` event, or a merge).
    Gone {
        table: Table,
        key: Vec<String>,
        slug: Option<String>,
        at: DateTime<Utc>,
        /// The survivor of a merge.
        merged_into: Option<String>,
    },
    /// An event that reached the sink, kept for audit.
    Event {
        id: String,
        event_type: String,
        received_at: String,
        event: Value,
    },
}

/// What a batch did, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.deleted += other.deleted;
    }
}

/// A pool of connections to one schema, migrated.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    schema: String,
    hard_delete: bool,
    keep_events: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Builds the pool (no connection is made yet). `label` names the settings in errors.
    pub fn open(label: &str, settings: &PostgresSinkSettings) -> Result<Store, StoreError> {
        let url = match &settings.url {
            Some(url) => url.clone(),
            None => std::env::var("DATABASE_URL").map_err(|_| {
                StoreError::permanent(format!(
                    "{label}.url is not set and neither is DATABASE_URL: name the database, \
                     for example postgres://app@db:5432/crm"
                ))
            })?,
        };
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::permanent(format!(
                "{label}.url (or DATABASE_URL) is not a PostgreSQL URL such as \
                 postgres://user@host:5432/database"
            ))
        })?;
        if config.get_password().is_none() {
            if let Some(file) = &settings.password_file {
                let password = std::fs::read_to_string(file).map_err(|e| {
                    StoreError::permanent(format!("{label}.password_file {}: {e}", file.display()))
                        .caused_by(e)
                })?;
                config.password(password.trim_end_matches(['\r', '\n']));
            } else if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("attio-webhooks");
        }
        // Every connection works in the mirror's schema, so statements name tables unqualified.
        config.options(format!("-c search_path={}", settings.schema));

        let mut tls = native_tls::TlsConnector::builder();
        if let Some(file) = &settings.ca_file {
            let pem = std::fs::read(file).map_err(|e| {
                StoreError::permanent(format!("{label}.ca_file {}: {e}", file.display()))
                    .caused_by(e)
            })?;
            let certificate = native_tls::Certificate::from_pem(&pem).map_err(|e| {
                StoreError::permanent(format!("{label}.ca_file {}: {e}", file.display()))
                    .caused_by(e)
            })?;
            tls.add_root_certificate(certificate);
        }
        if !settings.tls_verify {
            tls.danger_accept_invalid_certs(true);
        }
        let tls = tls.build().map_err(|e| {
            StoreError::permanent(format!("{label}: TLS cannot start: {e}")).caused_by(e)
        })?;
        let manager = Manager::from_config(
            config,
            postgres_native_tls::MakeTlsConnector::new(tls),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::permanent(format!("{label}: {e}")).caused_by(e))?;
        Ok(Store {
            pool,
            schema: settings.schema.clone(),
            hard_delete: settings.hard_delete,
            keep_events: settings.events,
        })
    }

    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) async fn connection(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Creates the schema and applies the migrations it lacks, one replica at a time.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.connection().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_MIGRATIONS, &self.schema],
            )
            .await?;
        // The name was checked to be a plain identifier when the settings were read.
        transaction
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                     version integer PRIMARY KEY, name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
                schema = self.schema
            ))
            .await?;
        let applied: i32 = transaction
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        for (version, name, sql) in MIGRATIONS {
            if *version <= applied {
                continue;
            }
            transaction.batch_execute(sql).await?;
            transaction
                .execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .await?;
            tracing::info!(schema = %self.schema, version, name, "applied a PostgreSQL migration");
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Writes `changes` in one transaction; the counts are per table.
    pub async fn apply(&self, changes: &[Change]) -> Result<HashMap<Table, Counts>, StoreError> {
        let mut client = self.connection().await?;
        let transaction = client.transaction().await?;
        let counts = self.apply_in(&transaction, changes).await?;
        transaction.commit().await?;
        Ok(counts)
    }

    async fn apply_in(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        changes: &[Change],
    ) -> Result<HashMap<Table, Counts>, StoreError> {
        let batch = Batch::of(changes);
        let mut counts: HashMap<Table, Counts> = HashMap::new();
        for (table, rows) in batch.upserts {
            let input = Value::Array(rows.into_values().collect());
            let total = input.as_array().map_or(0, Vec::len) as u64;
            let row = transaction
                .query_one(&upsert_sql(table.sql()), &[&input])
                .await?;
            let created = row.get::<_, i64>(0) as u64;
            let updated = row.get::<_, i64>(1) as u64;
            *counts.entry(table).or_default() += Counts {
                created,
                updated,
                unchanged: total.saturating_sub(created + updated),
                deleted: 0,
            };
        }
        for (table, rows) in batch.gone {
            let input = Value::Array(rows.into_values().collect());
            let sql = if self.hard_delete {
                hard_delete_sql(table.sql())
            } else {
                gone_sql(table.sql())
            };
            let row = transaction.query_one(&sql, &[&input]).await?;
            counts.entry(table).or_default().deleted += row.get::<_, i64>(0) as u64;
        }
        if self.keep_events && !batch.events.is_empty() {
            transaction
                .execute(
                    "INSERT INTO events (id, event_type, received_at, event)
                     SELECT e->>'id', e->>'event_type', (e->>'received_at')::timestamptz, e->'event'
                     FROM jsonb_array_elements($1::jsonb) AS e
                     ON CONFLICT (id) DO NOTHING",
                    &[&Value::Array(batch.events)],
                )
                .await?;
        }
        Ok(counts)
    }

    /// Records or entries of one object or list whose last fetch is older than `before` and that
    /// are not deleted: what a complete sync pass did not see. At most `limit` keys.
    pub(crate) async fn unseen(
        &self,
        table: Table,
        parent_id: Option<&str>,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Vec<String>>, StoreError> {
        let keys = table.keys();
        let select = keys
            .iter()
            .map(|k| format!("{k}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let client = self.connection().await?;
        let rows = match (table, parent_id) {
            (Table::Records | Table::ListEntries, Some(parent)) => {
                let parent_column = keys[0];
                client
                    .query(
                        &format!(
                            "SELECT {select} FROM {} WHERE {parent_column}::text = $1 \
                             AND deleted_at IS NULL AND fetched_at < $2 LIMIT $3",
                            table.name()
                        ),
                        &[&parent, &before, &limit],
                    )
                    .await?
            }
            _ => {
                client
                    .query(
                        &format!(
                            "SELECT {select} FROM {} WHERE deleted_at IS NULL AND fetched_at < $1 \
                             LIMIT $2",
                            table.name()
                        ),
                        &[&before, &limit],
                    )
                    .await?
            }
        };
        Ok(rows
            .iter()
            .map(|row| (0..keys.len()).map(|i| row.get::<_, String>(i)).collect())
            .collect())
    }

    // ---- the catalog and the views ----

    /// Whether the object or list already has its view (its schema was loaded once).
    pub(crate) async fn has_view(&self, parent_id: &str) -> Result<bool, StoreError> {
        let client = self.connection().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM views WHERE parent_id::text = $1",
                &[&parent_id],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Keeps an object (`GET /v2/objects/{id}`'s `data`).
    pub(crate) async fn upsert_object(&self, data: &Value) -> Result<(), StoreError> {
        let client = self.connection().await?;
        client
            .execute(
                "INSERT INTO objects (object_id, api_slug, singular_noun, plural_noun, data, fetched_at)
                 SELECT ($1::jsonb#>>'{id,object_id}')::uuid, $1::jsonb->>'api_slug',
                        $1::jsonb->>'singular_noun', $1::jsonb->>'plural_noun', $1::jsonb, now()
                 ON CONFLICT (object_id) DO UPDATE SET api_slug = EXCLUDED.api_slug,
                     singular_noun = EXCLUDED.singular_noun, plural_noun = EXCLUDED.plural_noun,
                     data = EXCLUDED.data, fetched_at = EXCLUDED.fetched_at",
                &[data],
            )
            .await?;
        Ok(())
    }

    /// Keeps a list (`GET /v2/lists/{id}`'s `data`).
    pub(crate) async fn upsert_list(&self, data: &Value) -> Result<(), StoreError> {
        let client = self.connection().await?;
        client
            .execute(
                "INSERT INTO lists (list_id, api_slug, name, parent_object, data, fetched_at)
                 SELECT ($1::jsonb#>>'{id,list_id}')::uuid, $1::jsonb->>'api_slug', $1::jsonb->>'name',
                        CASE jsonb_typeof($1::jsonb->'parent_object')
                            WHEN 'array' THEN $1::jsonb#>>'{parent_object,0}'
                            ELSE $1::jsonb->>'parent_object' END,
                        $1::jsonb, now()
                 ON CONFLICT (list_id) DO UPDATE SET api_slug = EXCLUDED.api_slug,
                     name = EXCLUDED.name, parent_object = EXCLUDED.parent_object,
                     data = EXCLUDED.data, fetched_at = EXCLUDED.fetched_at, deleted_at = NULL",
                &[data],
            )
            .await?;
        Ok(())
    }

    /// A list Attio no longer has: marked deleted and its view dropped.
    pub(crate) async fn list_gone(&self, list_id: &str) -> Result<(), StoreError> {
        let mut client = self.connection().await?;
        let transaction = client.transaction().await?;
        self.lock_views(&transaction).await?;
        transaction
            .execute(
                "UPDATE lists SET deleted_at = coalesce(deleted_at, now()) WHERE list_id::text = $1",
                &[&list_id],
            )
            .await?;
        let old = transaction
            .query_opt(
                "DELETE FROM views WHERE parent_id::text = $1 RETURNING name",
                &[&list_id],
            )
            .await?;
        if let Some(old) = old {
            let name: String = old.get(0);
            transaction
                .batch_execute(&format!(
                    "DROP VIEW IF EXISTS {}",
                    views::quote_identifier(&name)
                ))
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Keeps one attribute of an object or list. When its slug changed, the values stored under
    /// the old slug move to the new one (Attio's answers use the new slug from now on).
    pub(crate) async fn upsert_attribute(
        &self,
        parent: Parent,
        parent_id: &str,
        data: &Value,
    ) -> Result<(), StoreError> {
        let mut client = self.connection().await?;
        let transaction = client.transaction().await?;
        self.upsert_attribute_in(&transaction, parent, parent_id, data)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Replaces the whole attribute catalog of an object or list (a sync, a first sighting).
    pub(crate) async fn replace_attributes(
        &self,
        parent: Parent,
        parent_id: &str,
        attributes: &[Value],
    ) -> Result<(), StoreError> {
        let mut client = self.connection().await?;
        let transaction = client.transaction().await?;
        for data in attributes {
            self.upsert_attribute_in(&transaction, parent, parent_id, data)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn upsert_attribute_in(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
        parent: Parent,
        parent_id: &str,
        data: &Value,
    ) -> Result<(), StoreError> {
        let Some(slug) = data.get("api_slug").and_then(Value::as_str) else {
            return Err(StoreError::permanent("the attribute has no api_slug"));
        };
        let old: Option<String> = transaction
            .query_opt(
                "SELECT api_slug FROM attributes
                 WHERE parent_id::text = $1 AND attribute_id = ($2::jsonb#>>'{id,attribute_id}')::uuid",
                &[&parent_id, data],
            )
            .await?
            .map(|row| row.get(0));
        transaction
            .execute(
                "INSERT INTO attributes (parent, parent_id, attribute_id, api_slug, title, type,
                                         is_multiselect, is_archived, data, fetched_at)
                 SELECT $1, $2::text::uuid, ($3::jsonb#>>'{id,attribute_id}')::uuid, $3::jsonb->>'api_slug',
                        $3::jsonb->>'title', $3::jsonb->>'type',
                        coalesce(($3::jsonb->>'is_multiselect')::boolean, false),
                        coalesce(($3::jsonb->>'is_archived')::boolean, false), $3::jsonb, now()
                 ON CONFLICT (parent_id, attribute_id) DO UPDATE SET api_slug = EXCLUDED.api_slug,
                     title = EXCLUDED.title, type = EXCLUDED.type,
                     is_multiselect = EXCLUDED.is_multiselect, is_archived = EXCLUDED.is_archived,
                     data = EXCLUDED.data, fetched_at = EXCLUDED.fetched_at",
                &[&parent.as_str(), &parent_id, data],
            )
            .await?;
        if let Some(old) = old.filter(|old| old != slug) {
            let (table, column, key) = match parent {
                Parent::Object => ("records", "\"values\"", "object_id"),
                Parent::List => ("list_entries", "entry_values", "list_id"),
            };
            transaction
                .execute(
                    &format!(
                        "UPDATE {table} SET {column} = ({column} - $2::text) || jsonb_build_object($3::text, {column}->$2::text)
                         WHERE {key}::text = $1 AND {column} ? $2::text AND NOT {column} ? $3::text"
                    ),
                    &[&parent_id, &old, &slug],
                )
                .await?;
            tracing::info!(parent = parent.as_str(), %old, new = slug, "attribute renamed; stored values moved to the new slug");
        }
        Ok(())
    }

    /// (Re)creates the view of one object or list from the catalog. Without a known slug
    /// (the object or list was never fetched) there is nothing to name the view after.
    pub(crate) async fn refresh_view(
        &self,
        parent: Parent,
        parent_id: &str,
    ) -> Result<(), StoreError> {
        let mut client = self.connection().await?;
        let transaction = client.transaction().await?;
        self.lock_views(&transaction).await?;
        let slug_sql = match parent {
            Parent::Object => "SELECT api_slug FROM objects WHERE object_id::text = $1",
            Parent::List => {
                "SELECT api_slug FROM lists WHERE list_id::text = $1 AND deleted_at IS NULL"
            }
        };
        let slug: Option<String> = transaction
            .query_opt(slug_sql, &[&parent_id])
            .await?
            .and_then(|row| row.get(0));
        let Some(slug) = slug else {
            transaction.commit().await?;
            return Ok(());
        };
        let attributes: Vec<AttributeColumn> = transaction
            .query(
                "SELECT api_slug, coalesce(type, ''), is_multiselect FROM attributes
                 WHERE parent_id::text = $1 AND NOT is_archived ORDER BY api_slug",
                &[&parent_id],
            )
            .await?
            .iter()
            .map(|row| AttributeColumn {
                slug: row.get(0),
                kind: row.get(1),
                multiselect: row.get(2),
            })
            .collect();
        let taken: Vec<String> = transaction
            .query(
                "SELECT name FROM views WHERE parent_id::text <> $1",
                &[&parent_id],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let name = views::view_name(parent, &slug, |candidate| {
            taken.iter().any(|t| t == candidate)
        });
        let old: Option<String> = transaction
            .query_opt(
                "SELECT name FROM views WHERE parent_id::text = $1",
                &[&parent_id],
            )
            .await?
            .map(|row| row.get(0));
        let mut sql = String::new();
        if let Some(old) = &old {
            sql.push_str(&format!(
                "DROP VIEW IF EXISTS {};\n",
                views::quote_identifier(old)
            ));
        }
        sql.push_str(&views::view_definition(
            &name,
            parent,
            parent_id,
            &attributes,
        ));
        transaction.batch_execute(&sql).await?;
        transaction
            .execute(
                "INSERT INTO views (parent_id, parent, name) VALUES ($1::text::uuid, $2, $3)
                 ON CONFLICT (parent_id) DO UPDATE SET name = EXCLUDED.name",
                &[&parent_id, &parent.as_str(), &name],
            )
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn lock_views(
        &self,
        transaction: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_VIEWS, &self.schema],
            )
            .await?;
        Ok(())
    }

    // ---- sync: one run at a time, and where it is ----

    /// Takes the sync lock of this schema on a connection of its own, if no other process
    /// holds it. The lock lasts as long as the returned [`SyncLock`].
    pub async fn try_lock_sync(&self) -> Result<Option<SyncLock>, StoreError> {
        let client = self.connection().await?;
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&LOCK_SYNC, &self.schema],
            )
            .await?
            .get(0);
        Ok(locked.then(|| SyncLock {
            client: Some(client),
            schema: self.schema.clone(),
        }))
    }

    /// The checkpoint of a scope, if a run of it has not finished.
    pub(crate) async fn open_checkpoint(
        &self,
        scope: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let client = self.connection().await?;
        let row = client
            .query_opt(
                "SELECT started_at, next_offset, created, updated, unchanged FROM sync_checkpoints
                 WHERE scope = $1 AND completed_at IS NULL",
                &[&scope],
            )
            .await?;
        Ok(row.map(|row| Checkpoint {
            started_at: row.get(0),
            next_offset: row.get(1),
            counts: Counts {
                created: row.get::<_, i64>(2) as u64,
                updated: row.get::<_, i64>(3) as u64,
                unchanged: row.get::<_, i64>(4) as u64,
                deleted: 0,
            },
        }))
    }

    /// Starts a scope's run from the beginning.
    pub(crate) async fn start_checkpoint(
        &self,
        scope: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let client = self.connection().await?;
        client
            .execute(
                "INSERT INTO sync_checkpoints (scope, started_at) VALUES ($1, $2)
                 ON CONFLICT (scope) DO UPDATE SET started_at = EXCLUDED.started_at, next_offset = 0,
                     created = 0, updated = 0, unchanged = 0, completed_at = NULL",
                &[&scope, &started_at],
            )
            .await?;
        Ok(())
    }

    /// Writes `changes` (with `dry_run`: counts them and rolls back) and sums the counts.
    pub(crate) async fn apply_changes(
        &self,
        changes: &[Change],
        dry_run: bool,
    ) -> Result<Counts, StoreError> {
        let mut client = self.connection().await?;
        let transaction = client.transaction().await?;
        let counts = sum(self.apply_in(&transaction, changes).await?);
        if dry_run {
            transaction.rollback().await?;
        } else {
            transaction.commit().await?;
        }
        Ok(counts)
    }

    /// Writes one page and moves the scope's checkpoint past it, in one transaction: a run
    /// stopped at any moment resumes at a page boundary with nothing counted twice. With
    /// `dry_run` the page is counted and rolled back.
    pub(crate) async fn apply_page(
        &self,
        scope: &str,
        changes: &[Change],
        next_offset: i64,
        done: bool,
        dry_run: bool,
    ) -> Result<Counts, StoreError> {
        let mut client = self.connection().await?;
        let transaction = client.transaction().await?;
        let counts = sum(self.apply_in(&transaction, changes).await?);
        if dry_run {
            transaction.rollback().await?;
            return Ok(counts);
        }
        transaction
            .execute(
                "UPDATE sync_checkpoints SET next_offset = $2, created = created + $3,
                     updated = updated + $4, unchanged = unchanged + $5,
                     completed_at = CASE WHEN $6 THEN now() END
                 WHERE scope = $1",
                &[
                    &scope,
                    &next_offset,
                    &(counts.created as i64),
                    &(counts.updated as i64),
                    &(counts.unchanged as i64),
                    &done,
                ],
            )
            .await?;
        transaction.commit().await?;
        Ok(counts)
    }
}

fn sum(counts: HashMap<Table, Counts>) -> Counts {
    counts.into_values().fold(Counts::default(), |mut sum, c| {
        sum += c;
        sum
    })
}

/// Where an unfinished sync of one scope stands.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoint {
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) next_offset: i64,
    pub(crate) counts: Counts,
}

/// The session advisory lock that makes one sync run at a time per schema.
pub struct SyncLock {
    client: Option<Object>,
    schema: String,
}

impl SyncLock {
    /// Releases the lock now (dropping the lock releases it too, by closing the session).
    pub async fn release(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client
                .execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))",
                    &[&LOCK_SYNC, &self.schema],
                )
                .await;
        }
    }
}

impl Drop for SyncLock {
    fn drop(&mut self) {
        // A session lock lives as long as its connection: this one must not go back to the pool.
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// Changes grouped into one statement per table and kind, each key once (the newest wins: one
/// statement may not touch a row twice).
struct Batch {
    upserts: std::collections::BTreeMap<Table, HashMap<Vec<String>, Value>>,
    gone: std::collections::BTreeMap<Table, HashMap<Vec<String>, Value>>,
    events: Vec<Value>,
}

impl Batch {
    fn of(changes: &[Change]) -> Batch {
        let mut batch = Batch {
            upserts: Default::default(),
            gone: Default::default(),
            events: Vec::new(),
        };
        let newer = |existing: Option<&Value>, at: &DateTime<Utc>| {
            existing
                .and_then(|e| e.get("fetched_at").or_else(|| e.get("at")))
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_none_or(|t| t.with_timezone(&Utc) <= *at)
        };
        for change in changes {
            match change {
                Change::Upsert {
                    table,
                    data,
                    slug,
                    fetched_at,
                } => {
                    let Some(key) = table.key_of(data) else {
                        continue;
                    };
                    let rows = batch.upserts.entry(*table).or_default();
                    if newer(rows.get(&key), fetched_at) {
                        rows.insert(
                            key,
                            json!({"data": data, "slug": slug, "fetched_at": timestamp(fetched_at)}),
                        );
                    }
                }
                Change::Gone {
                    table,
                    key,
                    slug,
                    at,
                    merged_into,
                } => {
                    let rows = batch.gone.entry(*table).or_default();
                    if newer(rows.get(key), at) {
                        let mut row =
                            json!({"slug": slug, "at": timestamp(at), "merged_into": merged_into});
                        for (column, value) in table.keys().iter().zip(key) {
                            row[*column] = Value::String(value.clone());
                        }
                        rows.insert(key.clone(), row);
                    }
                }
                Change::Event {
                    id,
                    event_type,
                    received_at,
                    event,
                } => batch.events.push(json!({
                    "id": id, "event_type": event_type, "received_at": received_at, "event": event
                })),
            }
        }
        batch
    }
}

pub(crate) fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn upsert_sql(table: &TableSql) -> String {
    let keys: Vec<&str> = table.keys.iter().map(|(k, _)| *k).collect();
    let key_list = keys.join(", ");
    let key_inputs: Vec<String> = table
        .keys
        .iter()
        .map(|(column, path)| format!("(e->'data'#>>'{path}')::uuid AS {column}"))
        .collect();
    let column_inputs: Vec<String> = table
        .columns
        .iter()
        .map(|(column, expression)| format!("{expression} AS {column}"))
        .collect();
    let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
    let updates: Vec<String> = table
        .columns
        .iter()
        .map(|(column, _)| {
            if Some(*column) == table.slug {
                format!("{column} = coalesce(EXCLUDED.{column}, t.{column})")
            } else {
                format!("{column} = EXCLUDED.{column}")
            }
        })
        .chain(std::iter::once(
            "fetched_at = EXCLUDED.fetched_at".to_string(),
        ))
        .chain(std::iter::once("deleted_at = NULL".to_string()))
        .chain((table.name == "records").then(|| "merged_into = NULL".to_string()))
        .collect();
    let t_keys: Vec<String> = keys.iter().map(|k| format!("t.{k}")).collect();
    let first_key = keys[0];
    format!(
        "WITH input AS (
            SELECT {key_inputs}, {column_inputs}, (e->>'fetched_at')::timestamptz AS fetched_at
            FROM jsonb_array_elements($1::jsonb) AS e
         ), before AS (
            SELECT {t_keys}, t.{content} AS content, t.deleted_at FROM {name} t JOIN input i USING ({key_list})
         ), written AS (
            INSERT INTO {name} AS t ({key_list}, {columns}, fetched_at)
            SELECT {key_list}, {columns}, fetched_at FROM input
            ON CONFLICT ({key_list}) DO UPDATE SET {updates}
            WHERE t.fetched_at <= EXCLUDED.fetched_at
            RETURNING {t_keys}
         )
         SELECT count(*) FILTER (WHERE b.{first_key} IS NULL),
                count(*) FILTER (WHERE b.{first_key} IS NOT NULL
                                 AND (b.content IS DISTINCT FROM i.{content} OR b.deleted_at IS NOT NULL))
         FROM written w JOIN input i USING ({key_list}) LEFT JOIN before b USING ({key_list})",
        key_inputs = key_inputs.join(", "),
        column_inputs = column_inputs.join(", "),
        t_keys = t_keys.join(", "),
        content = table.content,
        name = table.name,
        columns = columns.join(", "),
        updates = updates.join(", "),
    )
}

fn gone_sql(table: &TableSql) -> String {
    let keys: Vec<&str> = table.keys.iter().map(|(k, _)| *k).collect();
    let key_list = keys.join(", ");
    let key_inputs: Vec<String> = keys
        .iter()
        .map(|column| format!("(e->>'{column}')::uuid AS {column}"))
        .collect();
    let (slug_input, slug_column) = match table.slug {
        Some(column) => (format!(", e->>'slug' AS {column}"), format!(", {column}")),
        None => (String::new(), String::new()),
    };
    let is_records = table.name == "records";
    let (merged_input, merged_column, merged_update) = if is_records {
        (
            ", (e->>'merged_into')::uuid AS merged_into",
            ", merged_into",
            ", merged_into = coalesce(EXCLUDED.merged_into, t.merged_into)",
        )
    } else {
        ("", "", "")
    };
    let t_keys: Vec<String> = keys.iter().map(|k| format!("t.{k}")).collect();
    let first_key = keys[0];
    format!(
        "WITH input AS (
            SELECT {key_inputs}{slug_input}{merged_input}, (e->>'at')::timestamptz AS at
            FROM jsonb_array_elements($1::jsonb) AS e
         ), before AS (
            SELECT {t_keys}, t.deleted_at FROM {name} t JOIN input i USING ({key_list})
         ), written AS (
            INSERT INTO {name} AS t ({key_list}{slug_column}{merged_column}, fetched_at, deleted_at)
            SELECT {key_list}{slug_column}{merged_column}, at, at FROM input
            ON CONFLICT ({key_list}) DO UPDATE SET fetched_at = EXCLUDED.fetched_at,
                deleted_at = coalesce(t.deleted_at, EXCLUDED.deleted_at){merged_update}
            WHERE t.fetched_at <= EXCLUDED.fetched_at
            RETURNING {t_keys}
         )
         SELECT count(*) FILTER (WHERE b.{first_key} IS NOT NULL AND b.deleted_at IS NULL)
         FROM written w LEFT JOIN before b USING ({key_list})",
        key_inputs = key_inputs.join(", "),
        t_keys = t_keys.join(", "),
        name = table.name,
    )
}

fn hard_delete_sql(table: &TableSql) -> String {
    let keys: Vec<&str> = table.keys.iter().map(|(k, _)| *k).collect();
    let key_inputs: Vec<String> = keys
        .iter()
        .map(|column| format!("(e->>'{column}')::uuid AS {column}"))
        .collect();
    let matches: Vec<String> = keys.iter().map(|k| format!("t.{k} = i.{k}")).collect();
    format!(
        "WITH input AS (
            SELECT {key_inputs}, (e->>'at')::timestamptz AS at FROM jsonb_array_elements($1::jsonb) AS e
         ), removed AS (
            DELETE FROM {name} t USING input i WHERE {matches} AND t.fetched_at <= i.at
            RETURNING t.deleted_at
         )
         SELECT count(*) FILTER (WHERE deleted_at IS NULL) FROM removed",
        key_inputs = key_inputs.join(", "),
        name = table.name,
        matches = matches.join(" AND "),
    )
}
