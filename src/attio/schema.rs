//! Schema cache: object, list and attribute UUIDs → their `api_slug`.
//!
//! In: UUIDs from events (which never carry slugs, docs/attio.md §2), and invalidations from
//! `object-attribute.*`, `list-attribute.*` and `list.*` events. Out: the slug (`deals`, `stage`),
//! `None` when Attio says the thing does not exist, or the [`AttioError`] of the look-up.
//! Entries live for `enrichment.schema_ttl`; concurrent misses for one key share one request.
//! Apart from them the cache remembers the last slug it saw for each key, past the TTL and past
//! invalidations: a deleted list answers 404 from then on, but its `list.deleted` event must
//! still be named (routes select lists by slug).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::attio::client::{AttioClient, AttributeParent};
use crate::attio::error::AttioError;
use crate::attio::single_flight::{Closes, SingleFlight};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SchemaKey {
    Object(String),
    List(String),
    Attribute {
        parent: AttributeParent,
        parent_id: String,
        attribute_id: String,
    },
}

type Slug = Option<String>;

/// How many last-known slugs are kept. A workspace has far fewer objects, lists and attributes;
/// the bound only keeps a flood of made-up ids from growing the map without end.
const KNOWN_LIMIT: usize = 100_000;

#[derive(Default)]
struct Entries {
    slugs: HashMap<SchemaKey, (Instant, Slug)>,
    /// The last slug seen for each key, kept past the TTL and past invalidations.
    known: HashMap<SchemaKey, String>,
    /// Bumped by every invalidation, so that an answer read before it is not stored after it.
    generation: u64,
}

#[derive(Clone)]
pub(crate) struct SchemaCache {
    client: AttioClient,
    ttl: Duration,
    entries: Arc<Mutex<Entries>>,
    flights: SingleFlight<SchemaKey, Result<Slug, AttioError>>,
}

impl SchemaCache {
    pub(crate) fn new(client: AttioClient, ttl: Duration) -> SchemaCache {
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
    pub(crate) async fn slug(&self, key: SchemaKey) -> Result<Slug, AttioError> {
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
            .map_err(|_| AttioError::Connect("schema look-up abandoned".into()))?;
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
            entries.insert(key, slug);
        }
    }

    /// Stores a slug learnt another way (the event's own fetch returned the list or attribute,
    /// or the workspace's lists were read at start).
    pub(crate) fn remember(&self, key: SchemaKey, slug: Slug) {
        self.lock().insert(key, slug);
    }

    /// Forgets one entry and, for an object or a list, the attributes under it. Returns the last
    /// slug seen for `key`, however old: what the thing was called before this change.
    pub(crate) fn invalidate(&self, key: &SchemaKey) -> Slug {
        let mut entries = self.lock();
        entries.generation += 1;
        entries.slugs.remove(key);
        let before = entries.known.get(key).cloned();
        let parent_id = match key {
            SchemaKey::Object(id) | SchemaKey::List(id) => id,
            SchemaKey::Attribute { .. } => return before,
        };
        entries.slugs.retain(
            |k, _| !matches!(k, SchemaKey::Attribute { parent_id: p, .. } if p == parent_id),
        );
        before
    }
}

impl Entries {
    fn insert(&mut self, key: SchemaKey, slug: Slug) {
        if let Some(slug) = &slug {
            if self.known.len() >= KNOWN_LIMIT && !self.known.contains_key(&key) {
                self.known.clear();
            }
            self.known.insert(key.clone(), slug.clone());
        }
        self.slugs.insert(key, (Instant::now(), slug));
    }
}
