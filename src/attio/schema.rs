//! Schema cache: object, list and attribute UUIDs → their `api_slug`.
//!
//! In: UUIDs from events (which never carry slugs, FACTS §2), and invalidations from
//! `object-attribute.*`, `list-attribute.*` and `list.*` events. Out: the slug (`deals`, `stage`),
//! `None` when Attio says the thing does not exist, or the [`AttioError`] of the look-up.
//! Entries live for `enrichment.schema_ttl`; concurrent misses for one key share one request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::attio::client::{AttioClient, AttributeParent};
use crate::attio::error::AttioError;
use crate::attio::single_flight::{Closes, SingleFlight};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SchemaKey {
    Object(String),
    List(String),
    Attribute {
        parent: AttributeParent,
        parent_id: String,
        attribute_id: String,
    },
}

type Slug = Option<String>;

#[derive(Default)]
struct Entries {
    slugs: HashMap<SchemaKey, (Instant, Slug)>,
    /// Bumped by every invalidation, so that an answer read before it is not stored after it.
    generation: u64,
}

#[derive(Clone)]
pub struct SchemaCache {
    client: AttioClient,
    ttl: Duration,
    entries: Arc<Mutex<Entries>>,
    flights: SingleFlight<SchemaKey, Result<Slug, AttioError>>,
}

impl SchemaCache {
    pub fn new(client: AttioClient, ttl: Duration) -> SchemaCache {
        SchemaCache {
            client,
            ttl,
            entries: Arc::new(Mutex::new(Entries::default())),
            flights: SingleFlight::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Single inserts and removals: nothing half-done is left by a panic elsewhere.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slug for `key`, from the cache or from Attio.
    pub async fn slug(&self, key: SchemaKey) -> Result<Slug, AttioError> {
        let generation = {
            let entries = self.lock();
            if let Some((stored_at, slug)) = entries.slugs.get(&key) {
                if stored_at.elapsed() < self.ttl {
                    return Ok(slug.clone());
                }
            }
            entries.generation
        };
        let cache = self.clone();
        let lookup_key = key.clone();
        let answer = self
            .flights
            .run(key, Duration::ZERO, Closes::AtEnd, move |_| async move {
                let answer = cache.look_up(&lookup_key).await;
                match &answer {
                    Ok(slug) => cache.store(lookup_key, slug.clone(), generation),
                    Err(error) if error.is_not_found() => cache.store(lookup_key, None, generation),
                    Err(_) => {}
                }
                answer
            })
            .await
            .map_err(|_| AttioError::Connect("schema look-up abandoned".to_string()))?;
        match answer.0 {
            Err(error) if error.is_not_found() => Ok(None),
            other => other,
        }
    }

    async fn look_up(&self, key: &SchemaKey) -> Result<Slug, AttioError> {
        match key {
            SchemaKey::Object(id) => self.client.get_object(id).await.map(|o| o.api_slug),
            SchemaKey::List(id) => self.client.get_list(id).await.map(|l| l.api_slug),
            SchemaKey::Attribute {
                parent,
                parent_id,
                attribute_id,
            } => self
                .client
                .get_attribute(*parent, parent_id, attribute_id)
                .await
                .map(|a| a.api_slug),
        }
    }

    fn store(&self, key: SchemaKey, slug: Slug, generation: u64) {
        let mut entries = self.lock();
        if entries.generation == generation {
            entries.slugs.insert(key, (Instant::now(), slug));
        }
    }

    /// Stores a slug learnt another way (the event's own fetch returned the list or attribute).
    pub fn remember(&self, key: SchemaKey, slug: Slug) {
        self.lock().slugs.insert(key, (Instant::now(), slug));
    }

    /// Forgets one entry and, for an object or a list, the attributes under it.
    pub fn invalidate(&self, key: &SchemaKey) {
        let mut entries = self.lock();
        entries.generation += 1;
        entries.slugs.remove(key);
        let parent_id = match key {
            SchemaKey::Object(id) | SchemaKey::List(id) => id,
            SchemaKey::Attribute { .. } => return,
        };
        entries.slugs.retain(
            |k, _| !matches!(k, SchemaKey::Attribute { parent_id: p, .. } if p == parent_id),
        );
    }

    /// Number of cached entries (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.lock().slugs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
