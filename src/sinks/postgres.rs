//! The `postgres` sink: keeps tables and typed views in PostgreSQL equal to Attio.
//!
//! In: a [`SinkLine`] (an event with the state the daemon re-fetched). Out: the row changes of
//! [`crate::mirror::plan`], written in batches (the events that arrive together share one
//! transaction), or a [`SinkError`]: a database that is down is transient (the worker retries
//! and logs the outage once), a row the database refuses is permanent for that event. The
//! schema is migrated at start; an object or list seen for the first time has its attributes
//! fetched (through the daemon's shared Attio client) and its view created.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot, OnceCell};

use crate::attio::{AttioClient, AttioError, AttributeParent};
use crate::mirror::settings::PostgresSinkSettings;
use crate::mirror::store::{Change, Store, StoreError};
use crate::mirror::views::Parent;
use crate::mirror::{plan, LineView, PlanError, SchemaWork};
use crate::sinks::{SinkError, SinkLine};

/// Events waiting for the writer at most; a full queue makes `deliver` wait.
const QUEUE: usize = 4096;

struct Job {
    changes: Vec<Change>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

pub struct PostgresSink {
    name: String,
    store: Store,
    attio: AttioClient,
    migrated: OnceCell<()>,
    /// Objects and lists whose schema is loaded and whose view exists.
    known: Mutex<HashSet<String>>,
    writer: mpsc::Sender<Job>,
}

impl PostgresSink {
    /// Builds the pool and the batch writer; connects on first use. Needs a runtime.
    pub fn open(
        name: &str,
        settings: &PostgresSinkSettings,
        attio: Option<&AttioClient>,
    ) -> Result<PostgresSink, SinkError> {
        settings.check().map_err(|(key, problem)| {
            SinkError::permanent(format!("sinks.{name}.{key} {problem}"))
        })?;
        let Some(attio) = attio else {
            return Err(SinkError::permanent(format!(
                "sinks.{name}: the postgres sink writes the state re-fetched from Attio: set \
                 ATTIO_API_KEY"
            )));
        };
        let store = Store::open(&format!("sinks.{name}"), settings)
            .map_err(|e| SinkError::permanent(e.message))?;
        let (writer, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store.clone(), queue, settings.batch_size));
        Ok(PostgresSink {
            name: name.to_string(),
            store,
            attio: attio.clone(),
            migrated: OnceCell::new(),
            known: Mutex::new(HashSet::new()),
            writer,
        })
    }

    /// Migrates the schema. At start a database that is down is not fatal: the first delivery
    /// tries again (and fails as an outage of this sink until it answers).
    pub(crate) async fn prepare(&self) {
        if let Err(error) = self.ready().await {
            tracing::warn!(sink = %self.name, error = %error.message, "PostgreSQL is not ready; migrating on the first delivery");
        }
    }

    async fn ready(&self) -> Result<(), SinkError> {
        self.migrated
            .get_or_try_init(|| async {
                self.store.migrate().await?;
                tracing::info!(sink = %self.name, schema = self.store.schema(), "PostgreSQL schema is current");
                Ok::<(), StoreError>(())
            })
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    pub async fn deliver(&self, line: &SinkLine) -> Result<(), SinkError> {
        self.ready().await?;
        let view: LineView = serde_json::from_slice(&line.json)
            .map_err(|e| SinkError::permanent(format!("the sink line is not readable: {e}")))?;
        let plan = plan(&view).map_err(|error| match error {
            PlanError::NotFetched(message) => SinkError::transient(message),
            PlanError::Unusable(message) => SinkError::permanent(message),
        })?;
        for work in plan.schema {
            self.apply_schema(work).await?;
        }
        self.write(plan.changes).await
    }

    async fn write(&self, changes: Vec<Change>) -> Result<(), SinkError> {
        let (done, result) = oneshot::channel();
        self.writer
            .send(Job { changes, done })
            .await
            .map_err(|_| SinkError::transient("the PostgreSQL writer stopped"))?;
        result
            .await
            .map_err(|_| SinkError::transient("the PostgreSQL writer stopped"))?
            .map_err(store_error)
    }

    fn is_known(&self, parent_id: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(parent_id)
    }

    fn remember(&self, parent_id: &str) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(parent_id.to_string());
    }

    async fn apply_schema(&self, work: SchemaWork) -> Result<(), SinkError> {
        match work {
            SchemaWork::Ensure { parent, parent_id } => self.ensure(parent, &parent_id).await,
            SchemaWork::Attribute {
                parent,
                parent_id,
                data,
            } => {
                self.ensure(parent, &parent_id).await?;
                self.store
                    .upsert_attribute(parent, &parent_id, &data)
                    .await
                    .map_err(store_error)?;
                self.store
                    .refresh_view(parent, &parent_id)
                    .await
                    .map_err(store_error)
            }
            SchemaWork::List { data } => {
                let Some(list_id) = data
                    .pointer("/id/list_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                else {
                    return Err(SinkError::permanent("the fetched list has no id.list_id"));
                };
                self.store.upsert_list(&data).await.map_err(store_error)?;
                if !self.is_known(&list_id) {
                    return self.ensure(Parent::List, &list_id).await;
                }
                self.store
                    .refresh_view(Parent::List, &list_id)
                    .await
                    .map_err(store_error)
            }
            SchemaWork::ListGone { list_id } => {
                self.known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&list_id);
                self.store.list_gone(&list_id).await.map_err(store_error)
            }
        }
    }

    /// Loads an object's or list's schema from Attio the first time it is seen, and makes its
    /// view.
    async fn ensure(&self, parent: Parent, parent_id: &str) -> Result<(), SinkError> {
        if self.is_known(parent_id) {
            return Ok(());
        }
        if self.store.has_view(parent_id).await.map_err(store_error)? {
            self.remember(parent_id);
            return Ok(());
        }
        match load_schema(&self.attio, &self.store, parent, parent_id).await {
            Ok(()) => {}
            // The object or list is gone: its rows are still written, without a view.
            Err(SchemaError::Attio(error)) if error.is_not_found() => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        self.remember(parent_id);
        Ok(())
    }
}

/// Why the schema of an object or list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read the schema from Attio: {0}")]
    Attio(#[from] AttioError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot encode what Attio answered: {0}")]
    Encode(#[from] serde_json::Error),
}

impl From<SchemaError> for SinkError {
    fn from(error: SchemaError) -> SinkError {
        let permanent = match &error {
            SchemaError::Attio(attio) => !attio.is_transient(),
            SchemaError::Store(store) => store.permanent,
            SchemaError::Encode(_) => true,
        };
        if permanent {
            SinkError::permanent(error.to_string())
        } else {
            SinkError::transient(error.to_string())
        }
    }
}

/// Fetches an object or list and its attributes, keeps them, and (re)makes its view.
pub(crate) async fn load_schema(
    attio: &AttioClient,
    store: &Store,
    parent: Parent,
    parent_id: &str,
) -> Result<(), SchemaError> {
    let attributes = match parent {
        Parent::Object => {
            let object = attio.get_object(parent_id).await?;
            store.upsert_object(&serde_json::to_value(&object)?).await?;
            attio
                .list_attributes(AttributeParent::Object, parent_id)
                .await?
        }
        Parent::List => {
            let list = attio.get_list(parent_id).await?;
            store.upsert_list(&serde_json::to_value(&list)?).await?;
            attio
                .list_attributes(AttributeParent::List, parent_id)
                .await?
        }
    };
    let attributes = attributes
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    store
        .replace_attributes(parent, parent_id, &attributes)
        .await?;
    store.refresh_view(parent, parent_id).await?;
    Ok(())
}

fn store_error(error: StoreError) -> SinkError {
    if error.permanent {
        SinkError::permanent(error.message)
    } else {
        SinkError::transient(error.message)
    }
}

/// Writes queued events in batches: whatever waits when the writer is free goes into one
/// transaction. A batch the database refuses is written again event by event, so that only the
/// event whose row is refused fails.
async fn write_batches(store: Store, mut queue: mpsc::Receiver<Job>, batch_size: usize) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < batch_size {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let changes: Vec<Change> = jobs.iter().flat_map(|j| j.changes.clone()).collect();
        match store.apply(&changes).await {
            Ok(_) => {
                for job in jobs {
                    let _ = job.done.send(Ok(()));
                }
            }
            Err(error) if error.permanent && jobs.len() > 1 => {
                for job in jobs {
                    let result = store.apply(&job.changes).await.map(|_| ());
                    let _ = job.done.send(result);
                }
            }
            Err(error) => {
                for job in jobs {
                    let _ = job.done.send(Err(error.clone()));
                }
            }
        }
    }
}
