//! Enrichment: re-fetch what an event is about, and name its object, list and attribute.
//!
//! In: an event's kind and [`Plan`] (made from the ids the worker read once, docs/attio.md §2)
//! and how much the matching routes want it enriched. Out: an [`Enrichment`]: the fetched
//! resource (the `data` member of Attio's answer), the resolved `object` / `list` /
//! `attribute` slugs, and a status: `ok`, `not_found`
//! (expected for `*.deleted`), `disabled` (no API key), `skipped` (nothing to fetch, or no
//! route wants it) or `failed` (with the error, after the client's retries ran out).
//!
//! One exhaustive `match` on [`EventKind`] ([`plan`]) decides what to fetch. `record.updated`
//! and `list-entry.updated` re-fetches of one record or entry that come within
//! `enrichment.coalesce_window` share one request; every event still gets the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::attio::single_flight::{Closes, Joined, SingleFlight};
use crate::attio::{AttioClient, AttioError, AttributeParent, SchemaCache, SchemaKey};
use crate::config::EnrichmentSettings;
pub(crate) use crate::event::EventIds;
use crate::event::EventKind;
use crate::routing::settings::RouteEnrich;
use crate::routing::{DimensionValue, EventDimensions, Names};

/// How enrichment of one event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EnrichmentStatus {
    Ok,
    NotFound,
    Disabled,
    Skipped,
    Failed,
}

impl EnrichmentStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EnrichmentStatus::Ok => "ok",
            EnrichmentStatus::NotFound => "not_found",
            EnrichmentStatus::Disabled => "disabled",
            EnrichmentStatus::Skipped => "skipped",
            EnrichmentStatus::Failed => "failed",
        }
    }
}

/// What enrichment adds to one event's sink line.
#[derive(Debug, Clone)]
pub(crate) struct Enrichment {
    pub(crate) status: EnrichmentStatus,
    /// The fetched resource (Attio's `data`), when found.
    pub(crate) data: Option<Value>,
    /// When Attio's answer (found or not) was in hand: a mirror keeps the newest fetch.
    pub(crate) fetched_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Slug of the event's object (or of the parent object of an entry, note or comment).
    pub(crate) object: Option<String>,
    pub(crate) list: Option<String>,
    pub(crate) attribute: Option<String>,
    /// Why it failed, when `status` is `failed`.
    pub(crate) error: Option<AttioError>,
    /// The coalesced fetch this event shared with others of the same record or entry, if any
    /// (routes with `collapse = true` deliver such events as one line).
    pub(crate) shared: Option<Joined>,
}

impl Enrichment {
    fn bare(status: EnrichmentStatus) -> Enrichment {
        Enrichment {
            status,
            data: None,
            fetched_at: None,
            object: None,
            list: None,
            attribute: None,
            error: None,
            shared: None,
        }
    }

    /// An event that was not enriched (`data` given by the caller, if any).
    #[cfg(test)]
    pub(crate) fn skipped(data: Option<Value>) -> Enrichment {
        Enrichment {
            data,
            ..Enrichment::bare(EnrichmentStatus::Skipped)
        }
    }
}

/// The one thing an event is about, as Attio's API names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    Record {
        object_id: String,
        record_id: String,
    },
    ListEntry {
        list_id: String,
        entry_id: String,
    },
    Note {
        note_id: String,
    },
    Task {
        task_id: String,
    },
    Comment {
        comment_id: String,
    },
    List {
        list_id: String,
    },
    Attribute {
        parent: AttributeParent,
        parent_id: String,
        attribute_id: String,
    },
    WorkspaceMember {
        workspace_member_id: String,
    },
    CallRecording {
        meeting_id: String,
        call_recording_id: String,
    },
}

/// What to do for one event: fetch, name, forget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) subject: Option<Subject>,
    /// Share the fetch with events of the same subject inside the coalescing window.
    pub(crate) coalesce: bool,
    pub(crate) object_id: Option<String>,
    pub(crate) list_id: Option<String>,
    pub(crate) attribute: Option<SchemaKey>,
    /// Schema entries this event makes stale.
    pub(crate) invalidate: Vec<SchemaKey>,
}

impl Plan {
    /// The id of the attribute the event names, if any.
    pub(crate) fn attribute_id(&self) -> Option<&str> {
        match &self.attribute {
            Some(SchemaKey::Attribute { attribute_id, .. }) => Some(attribute_id),
            _ => None,
        }
    }
}

/// Why an event cannot be planned: it lacks an id its type promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MissingId(pub &'static str);

/// Decides, for each kind of event, what to fetch and which names to resolve (docs/attio.md §2).
pub(crate) fn plan(kind: &EventKind, ids: &EventIds) -> Result<Plan, MissingId> {
    let id = |key: &'static str| ids.get(key).map(str::to_string);
    let need = |key: &'static str| id(key).ok_or(MissingId(key));
    let attribute_of = |parent: AttributeParent, parent_id: &str| {
        id("attribute_id").map(|attribute_id| SchemaKey::Attribute {
            parent,
            parent_id: parent_id.to_string(),
            attribute_id,
        })
    };
    let plan = match kind {
        EventKind::RecordCreated
        | EventKind::RecordUpdated
        | EventKind::RecordDeleted
        | EventKind::RecordMerged => {
            // For record.merged `record_id` is the survivor; the duplicate now answers 404.
            let object_id = need("object_id")?;
            let record_id = need("record_id")?;
            Plan {
                coalesce: *kind == EventKind::RecordUpdated,
                attribute: attribute_of(AttributeParent::Object, &object_id),
                subject: Some(Subject::Record {
                    object_id: object_id.clone(),
                    record_id,
                }),
                object_id: Some(object_id),
                ..Plan::default()
            }
        }
        EventKind::ListEntryCreated | EventKind::ListEntryUpdated | EventKind::ListEntryDeleted => {
            let list_id = need("list_id")?;
            let entry_id = need("entry_id")?;
            Plan {
                coalesce: *kind == EventKind::ListEntryUpdated,
                attribute: attribute_of(AttributeParent::List, &list_id),
                subject: Some(Subject::ListEntry {
                    list_id: list_id.clone(),
                    entry_id,
                }),
                object_id: id("parent_object_id"),
                list_id: Some(list_id),
                ..Plan::default()
            }
        }
        EventKind::NoteCreated
        | EventKind::NoteUpdated
        | EventKind::NoteDeleted
        | EventKind::NoteContentUpdated => Plan {
            subject: Some(Subject::Note {
                note_id: need("note_id")?,
            }),
            object_id: id("parent_object_id"),
            ..Plan::default()
        },
        EventKind::TaskCreated | EventKind::TaskUpdated | EventKind::TaskDeleted => Plan {
            subject: Some(Subject::Task {
                task_id: need("task_id")?,
            }),
            ..Plan::default()
        },
        EventKind::CommentCreated
        | EventKind::CommentResolved
        | EventKind::CommentUnresolved
        | EventKind::CommentDeleted => Plan {
            subject: Some(Subject::Comment {
                comment_id: need("comment_id")?,
            }),
            object_id: id("object_id"),
            list_id: id("list_id"),
            ..Plan::default()
        },
        EventKind::ListCreated | EventKind::ListUpdated | EventKind::ListDeleted => {
            let list_id = need("list_id")?;
            Plan {
                subject: Some(Subject::List {
                    list_id: list_id.clone(),
                }),
                invalidate: vec![SchemaKey::List(list_id.clone())],
                list_id: Some(list_id),
                ..Plan::default()
            }
        }
        EventKind::ListAttributeCreated | EventKind::ListAttributeUpdated => {
            let list_id = need("list_id")?;
            let attribute_id = need("attribute_id")?;
            let key = SchemaKey::Attribute {
                parent: AttributeParent::List,
                parent_id: list_id.clone(),
                attribute_id: attribute_id.clone(),
            };
            Plan {
                subject: Some(Subject::Attribute {
                    parent: AttributeParent::List,
                    parent_id: list_id.clone(),
                    attribute_id,
                }),
                invalidate: vec![key.clone()],
                attribute: Some(key),
                list_id: Some(list_id),
                ..Plan::default()
            }
        }
        EventKind::ObjectAttributeCreated | EventKind::ObjectAttributeUpdated => {
            let object_id = need("object_id")?;
            let attribute_id = need("attribute_id")?;
            let key = SchemaKey::Attribute {
                parent: AttributeParent::Object,
                parent_id: object_id.clone(),
                attribute_id: attribute_id.clone(),
            };
            Plan {
                subject: Some(Subject::Attribute {
                    parent: AttributeParent::Object,
                    parent_id: object_id.clone(),
                    attribute_id,
                }),
                invalidate: vec![key.clone()],
                attribute: Some(key),
                object_id: Some(object_id),
                ..Plan::default()
            }
        }
        EventKind::WorkspaceMemberCreated => Plan {
            subject: Some(Subject::WorkspaceMember {
                workspace_member_id: need("workspace_member_id")?,
            }),
            ..Plan::default()
        },
        EventKind::CallRecordingCreated => Plan {
            subject: Some(Subject::CallRecording {
                meeting_id: need("meeting_id")?,
                call_recording_id: need("call_recording_id")?,
            }),
            ..Plan::default()
        },
        // Documented, but Attio's API has no endpoint to read an activity attribute.
        EventKind::ActivityAttributeCreated | EventKind::ActivityAttributeUpdated => {
            Plan::default()
        }
        // A type this build does not know: delivered as it came.
        EventKind::Unknown(_) => Plan::default(),
    };
    Ok(plan)
}

/// The object, list and attribute an event is about, for the routes' `object` / `list` /
/// `attribute` keys: the ids [`plan`] names (so they are exactly the ones whose slugs
/// enrichment resolved: `id.object_id` for records, `parent_object_id` for list entries and
/// notes, a comment's `object_id` and `list_id`, ...) with the slugs `enrichment` found.
pub(crate) fn dimensions(
    plan: &Result<Plan, MissingId>,
    enrichment: &Enrichment,
) -> EventDimensions {
    // An event lacking an id its type promises has no dimensions: routes narrowed by them skip it.
    let plan = plan.as_ref().ok();
    EventDimensions {
        object: DimensionValue {
            id: plan.and_then(|plan| plan.object_id.clone()),
            slug: enrichment.object.clone(),
        },
        list: DimensionValue {
            id: plan.and_then(|plan| plan.list_id.clone()),
            slug: enrichment.list.clone(),
        },
        attribute: DimensionValue {
            id: plan.and_then(Plan::attribute_id).map(str::to_string),
            slug: enrichment.attribute.clone(),
        },
        names: match enrichment.status {
            EnrichmentStatus::Ok | EnrichmentStatus::NotFound => Names::Resolved,
            EnrichmentStatus::Failed => Names::Failed,
            EnrichmentStatus::Disabled | EnrichmentStatus::Skipped => Names::Unavailable,
        },
    }
}

/// What the history keeps to find an event by: its object and list (slug when resolved, else
/// id) and the record or entry it is about.
pub(crate) fn history_keys(
    plan: &Result<Plan, MissingId>,
    ids: &EventIds,
    enrichment: &Enrichment,
) -> HistoryKeys {
    let plan = plan.as_ref().ok();
    HistoryKeys {
        object: (enrichment.object.clone())
            .or_else(|| plan.and_then(|plan| plan.object_id.clone())),
        list: (enrichment.list.clone()).or_else(|| plan.and_then(|plan| plan.list_id.clone())),
        record_id: ids
            .get("record_id")
            .or_else(|| ids.get("entry_id"))
            .map(str::to_string),
    }
}

/// See [`history_keys`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HistoryKeys {
    pub(crate) object: Option<String>,
    pub(crate) list: Option<String>,
    pub(crate) record_id: Option<String>,
}

/// The enrichment stage. Without an API key every event passes with `disabled`.
#[derive(Clone)]
pub(crate) struct Enricher {
    active: Option<Active>,
}

impl Enricher {
    /// Attio's state for the status API: `None` when enrichment is disabled, else how long its
    /// circuit breaker stays open (`Some(None)`: closed, requests flow).
    pub(crate) fn attio_unavailable_for(&self) -> Option<Option<Duration>> {
        self.active
            .as_ref()
            .map(|active| active.client.unavailable_for())
    }
}

#[derive(Clone)]
struct Active {
    client: AttioClient,
    schema: SchemaCache,
    fetches: SingleFlight<Subject, Result<Value, AttioError>>,
    window: Duration,
}

impl Enricher {
    pub(crate) fn new(client: Option<AttioClient>, settings: &EnrichmentSettings) -> Enricher {
        Enricher {
            active: client.map(|client| Active {
                schema: SchemaCache::new(client.clone(), settings.schema_ttl),
                client,
                fetches: SingleFlight::default(),
                window: settings.coalesce_window,
            }),
        }
    }

    /// An enricher that marks every event `disabled`.
    #[cfg(test)]
    pub(crate) fn disabled() -> Enricher {
        Enricher { active: None }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.active.is_some()
    }

    /// While Attio is considered down (circuit breaker open): how long until it is tried again.
    pub(crate) fn unavailable_for(&self) -> Option<Duration> {
        self.active.as_ref()?.client.unavailable_for()
    }

    /// Reads the workspace's lists once and remembers their slugs, so that the `list.deleted`
    /// of a list no event named since the start still carries its slug. Best effort: without
    /// it only such a list goes unnamed.
    pub(crate) async fn learn_lists(&self) {
        let Some(active) = &self.active else { return };
        match active.client.list_lists().await {
            Ok(lists) => {
                for list in lists {
                    active
                        .schema
                        .remember(SchemaKey::List(list.id.list_id), list.api_slug);
                }
            }
            Err(error) => tracing::warn!(
                %error,
                "cannot read the workspace's lists; a list deleted before any event named it \
                 will reach routes that select it by UUID only"
            ),
        }
    }

    /// Enriches one event (planned by [`plan`]), as much as `wanted` asks.
    #[cfg(test)]
    pub(crate) async fn enrich(
        &self,
        kind: &EventKind,
        plan: &Result<Plan, MissingId>,
        wanted: RouteEnrich,
    ) -> Enrichment {
        self.enrich_settled(kind, plan, wanted, None).await
    }

    /// [`Enricher::enrich`], holding a coalesced fetch (`record.updated`, `list-entry.updated`)
    /// for `settle` rather than `enrichment.coalesce_window` when that is longer: the updates of
    /// the record that arrive meanwhile share the fetch, which then reads the state after all
    /// of them.
    pub(crate) async fn enrich_settled(
        &self,
        kind: &EventKind,
        plan: &Result<Plan, MissingId>,
        wanted: RouteEnrich,
        settle: Option<Duration>,
    ) -> Enrichment {
        if wanted == RouteEnrich::Off {
            return Enrichment::bare(EnrichmentStatus::Skipped);
        }
        let Some(active) = &self.active else {
            return Enrichment::bare(EnrichmentStatus::Disabled);
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err(MissingId(key)) => {
                return Enrichment {
                    error: Some(AttioError::InvalidRequest(
                        format!("the {kind} event carries no `{key}`").into(),
                    )),
                    ..Enrichment::bare(EnrichmentStatus::Failed)
                }
            }
        };
        let Some(subject) = plan.subject.clone() else {
            return Enrichment::bare(EnrichmentStatus::Skipped);
        };
        let started = Instant::now();
        let window = settle.map_or(active.window, |settle| settle.max(active.window));
        // Boxed: fetching from Attio is a large future, and without the box every event's task
        // would carry its size (and copy it when spawned), enriched or not.
        let enrichment = Box::pin(active.run(subject, plan, window)).await;
        metrics::histogram!(crate::metrics::ENRICHMENT_DURATION)
            .record(started.elapsed().as_secs_f64());
        enrichment
    }
}

impl Active {
    async fn run(&self, subject: Subject, plan: &Plan, window: Duration) -> Enrichment {
        // What the things this event changes were called before it: a deleted list answers 404
        // from now on, yet routes that select it by slug must still take its `list.deleted`.
        let before: Vec<(SchemaKey, String)> = plan
            .invalidate
            .iter()
            .filter_map(|key| Some((key.clone(), self.schema.invalidate(key)?)))
            .collect();
        let fetch = async {
            let answer = self
                .fetch_shared(subject.clone(), plan.coalesce, window)
                .await;
            (answer, chrono::Utc::now())
        };
        let names = async {
            let object = self.name(plan.object_id.clone().map(SchemaKey::Object));
            // List and attribute events fetch the list or attribute itself: its slug comes with
            // it below.
            let list = self.name(match subject {
                Subject::List { .. } => None,
                _ => plan.list_id.clone().map(SchemaKey::List),
            });
            let attribute = self.name(match subject {
                Subject::Attribute { .. } => None,
                _ => plan.attribute.clone(),
            });
            tokio::join!(object, list, attribute)
        };
        let (((fetched, shared), fetched_at), (object, list, attribute)) =
            tokio::join!(fetch, names);

        let mut enrichment = Enrichment::bare(EnrichmentStatus::Ok);
        enrichment.shared = shared;
        match fetched {
            Ok(data) => {
                self.learn(&subject, &data);
                enrichment.data = Some(data);
                enrichment.fetched_at = Some(fetched_at);
            }
            Err(error) if error.is_not_found() => {
                enrichment.status = EnrichmentStatus::NotFound;
                enrichment.fetched_at = Some(fetched_at);
            }
            Err(error) => {
                enrichment.status = EnrichmentStatus::Failed;
                enrichment.error = Some(error);
            }
        }
        let mut names = [object, list, attribute];
        // The fetched list or attribute names itself (its new slug, after an update); once it is
        // gone, the name it had before this event.
        let own_name = |key: SchemaKey| {
            let fetched = enrichment
                .data
                .as_ref()
                .and_then(|d| d.get("api_slug"))
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(fetched.or_else(|| {
                (enrichment.status == EnrichmentStatus::NotFound)
                    .then(|| {
                        before
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map(|(_, s)| s.clone())
                    })
                    .flatten()
            }))
        };
        match &subject {
            Subject::List { list_id } => names[1] = own_name(SchemaKey::List(list_id.clone())),
            Subject::Attribute {
                parent,
                parent_id,
                attribute_id,
            } => {
                names[2] = own_name(SchemaKey::Attribute {
                    parent: *parent,
                    parent_id: parent_id.clone(),
                    attribute_id: attribute_id.clone(),
                })
            }
            _ => {}
        }
        let [object, list, attribute] = names;
        for (slot, name) in [
            (&mut enrichment.object, object),
            (&mut enrichment.list, list),
            (&mut enrichment.attribute, attribute),
        ] {
            match name {
                Ok(slug) => *slot = slug,
                // A name that could not be looked up fails the enrichment like the fetch would:
                // routes and consumers rely on it.
                Err(error) if enrichment.error.is_none() => {
                    enrichment.status = EnrichmentStatus::Failed;
                    enrichment.error = Some(error);
                }
                Err(_) => {}
            }
        }
        enrichment
    }

    async fn name(&self, key: Option<SchemaKey>) -> Result<Option<String>, AttioError> {
        match key {
            Some(key) => self.schema.slug(key).await,
            None => Ok(None),
        }
    }

    /// The event's own fetch told us a slug: keep it, saving a look-up.
    fn learn(&self, subject: &Subject, data: &Value) {
        let slug = data
            .get("api_slug")
            .and_then(Value::as_str)
            .map(str::to_string);
        match subject {
            Subject::List { list_id } => {
                self.schema.remember(SchemaKey::List(list_id.clone()), slug)
            }
            Subject::Attribute {
                parent,
                parent_id,
                attribute_id,
            } => self.schema.remember(
                SchemaKey::Attribute {
                    parent: *parent,
                    parent_id: parent_id.clone(),
                    attribute_id: attribute_id.clone(),
                },
                slug,
            ),
            _ => {}
        }
    }

    /// Fetches `subject`, sharing the request with other events of the same subject within
    /// `window` when `coalesce` says so; then also says which flight it shared.
    async fn fetch_shared(
        &self,
        subject: Subject,
        coalesce: bool,
        window: Duration,
    ) -> (Result<Value, AttioError>, Option<Joined>) {
        if !coalesce || window.is_zero() {
            return (fetch(&self.client, &subject).await, None);
        }
        let client = self.client.clone();
        let key = subject.clone();
        match self
            .fetches
            .run(key, window, Closes::AtSend, move |closer| async move {
                // Events arriving until the request leaves (it may queue for the rate limiter)
                // still share it: the state it reads is newer than all of them.
                let client = client.on_send(Arc::new(move || closer.close()));
                fetch(&client, &subject).await
            })
            .await
        {
            Ok((answer, joined)) => {
                if !joined.leader {
                    tracing::debug!("re-fetch shared with an earlier event of the same record");
                }
                (answer, Some(joined))
            }
            Err(_) => (
                Err(AttioError::Connect("shared fetch abandoned".into())),
                None,
            ),
        }
    }
}

/// One request for `subject`; the answer's `data` as JSON.
async fn fetch(client: &AttioClient, subject: &Subject) -> Result<Value, AttioError> {
    fn json<T: Serialize>(value: T) -> Result<Value, AttioError> {
        serde_json::to_value(value).map_err(|e| AttioError::Decode(e.to_string().into()))
    }
    match subject {
        Subject::Record {
            object_id,
            record_id,
        } => json(client.get_record(object_id, record_id).await?),
        Subject::ListEntry { list_id, entry_id } => {
            json(client.get_list_entry(list_id, entry_id).await?)
        }
        Subject::Note { note_id } => json(client.get_note(note_id).await?),
        Subject::Task { task_id } => json(client.get_task(task_id).await?),
        Subject::Comment { comment_id } => json(client.get_comment(comment_id).await?),
        Subject::List { list_id } => json(client.get_list(list_id).await?),
        Subject::Attribute {
            parent,
            parent_id,
            attribute_id,
        } => json(
            client
                .get_attribute(*parent, parent_id, attribute_id)
                .await?,
        ),
        Subject::WorkspaceMember {
            workspace_member_id,
        } => json(client.get_workspace_member(workspace_member_id).await?),
        Subject::CallRecording {
            meeting_id,
            call_recording_id,
        } => json(
            client
                .get_call_recording(meeting_id, call_recording_id)
                .await?,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_event(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        match value.get("events") {
            Some(events) => events[0].to_string(),
            None => value.to_string(),
        }
    }

    fn plan_for(name: &str) -> Plan {
        let raw = fixture_event(name);
        let ids = EventIds::parse(&raw);
        let kind_name = serde_json::from_str::<Value>(&raw).unwrap()["event_type"]
            .as_str()
            .unwrap()
            .to_string();
        plan(&EventKind::parse(&kind_name), &ids).unwrap()
    }

    #[test]
    fn record_updated_fetches_the_record_and_names_object_and_attribute() {
        let plan = plan_for("attio_docs__record.updated_delivery.json");
        assert_eq!(
            plan.subject,
            Some(Subject::Record {
                object_id: "97052eb9-e65e-443f-a297-f2d9a4a7f795".into(),
                record_id: "bf071e1f-6035-429d-b874-d83ea64ea13b".into(),
            })
        );
        assert!(plan.coalesce);
        assert_eq!(
            plan.object_id.as_deref(),
            Some("97052eb9-e65e-443f-a297-f2d9a4a7f795")
        );
        assert!(matches!(
            plan.attribute,
            Some(SchemaKey::Attribute {
                parent: AttributeParent::Object,
                ..
            })
        ));
    }

    #[test]
    fn list_entry_events_name_the_parent_object_from_beside_the_id() {
        let plan = plan_for("attio_docs__list-entry.updated_delivery.json");
        assert!(matches!(plan.subject, Some(Subject::ListEntry { .. })));
        assert!(plan.coalesce);
        assert_eq!(
            plan.object_id.as_deref(),
            Some("97052eb9-e65e-443f-a297-f2d9a4a7f795")
        );
        assert_eq!(
            plan.list_id.as_deref(),
            Some("33ebdbe9-e529-47c9-b894-0ba25e9c15c0")
        );
        let deleted = plan_for("attio_docs__list-entry.deleted_delivery.json");
        assert!(!deleted.coalesce);
    }

    #[test]
    fn schema_events_invalidate_what_they_change() {
        let plan = plan_for("attio_docs__object-attribute.updated_delivery.json");
        assert_eq!(plan.invalidate.len(), 1);
        assert!(matches!(plan.subject, Some(Subject::Attribute { .. })));
        let plan = plan_for("attio_docs__list-attribute.created_delivery.json");
        assert!(matches!(
            &plan.invalidate[0],
            SchemaKey::Attribute {
                parent: AttributeParent::List,
                ..
            }
        ));
    }

    #[test]
    fn other_kinds_fetch_what_facts_say() {
        assert!(matches!(
            plan_for("attio_docs__note-content.updated_delivery.json").subject,
            Some(Subject::Note { .. })
        ));
        assert!(matches!(
            plan_for("attio_docs__workspace-member.created_event.json").subject,
            Some(Subject::WorkspaceMember { .. })
        ));
        assert_eq!(
            plan_for("attio_docs__activity-attribute.updated_delivery.json").subject,
            None
        );
        let unknown = plan(
            &EventKind::parse("spaceship.launched"),
            &EventIds::parse(r#"{"event_type":"spaceship.launched","id":{}}"#),
        )
        .unwrap();
        assert_eq!(unknown.subject, None);
    }

    #[test]
    fn an_event_without_its_ids_says_which_is_missing() {
        let ids = EventIds::parse(r#"{"event_type":"task.created","id":{"workspace_id":"w"}}"#);
        assert_eq!(
            plan(&EventKind::TaskCreated, &ids),
            Err(MissingId("task_id"))
        );
    }

    #[tokio::test]
    async fn without_a_client_events_are_marked_disabled() {
        let enricher = Enricher::disabled();
        let raw = fixture_event("pipedream__record.created_event.json");
        let planned = plan(&EventKind::RecordCreated, &EventIds::parse(&raw));
        let result = enricher
            .enrich(&EventKind::RecordCreated, &planned, RouteEnrich::Required)
            .await;
        assert_eq!(result.status, EnrichmentStatus::Disabled);
        let skipped = enricher
            .enrich(&EventKind::RecordCreated, &planned, RouteEnrich::Off)
            .await;
        assert_eq!(skipped.status, EnrichmentStatus::Skipped);
    }

    fn resolved(object: Option<&str>, list: Option<&str>, attribute: Option<&str>) -> Enrichment {
        Enrichment {
            object: object.map(str::to_string),
            list: list.map(str::to_string),
            attribute: attribute.map(str::to_string),
            ..Enrichment::bare(EnrichmentStatus::Ok)
        }
    }

    fn dimensions_of(raw: &str, enrichment: &Enrichment) -> EventDimensions {
        let kind_name = serde_json::from_str::<Value>(raw).unwrap()["event_type"]
            .as_str()
            .unwrap()
            .to_string();
        dimensions(
            &plan(&EventKind::parse(&kind_name), &EventIds::parse(raw)),
            enrichment,
        )
    }

    #[test]
    fn dimensions_take_each_kinds_own_ids_and_the_resolved_slugs() {
        let entry = dimensions_of(
            &fixture_event("attio_docs__list-entry.updated_delivery.json"),
            &resolved(Some("deals"), Some("sales_pipeline"), Some("stage")),
        );
        assert_eq!(
            entry.object,
            DimensionValue {
                id: Some("97052eb9-e65e-443f-a297-f2d9a4a7f795".into()),
                slug: Some("deals".into())
            }
        );
        assert_eq!(
            entry.list.id.as_deref(),
            Some("33ebdbe9-e529-47c9-b894-0ba25e9c15c0")
        );
        assert_eq!(
            entry.attribute.id.as_deref(),
            Some("41252299-f8c7-4b5e-99c9-4ff8321d2f96")
        );
        assert_eq!(entry.names, Names::Resolved);

        let note = dimensions_of(
            &fixture_event("pipedream__note.created_event.json"),
            &resolved(Some("people"), None, None),
        );
        assert_eq!(
            note.object.id.as_deref(),
            Some("6a3d5e81-0de0-4e96-a535-957b28ba8211")
        );
        assert_eq!(note.list.id, None);
        assert_eq!(note.attribute.id, None);

        let comment = r#"{"event_type":"comment.created","id":{"workspace_id":"w","comment_id":"c"},
            "thread_id":"t","object_id":"o-1","record_id":"r","list_id":"l-1","entry_id":"e","actor":{"type":"system","id":null}}"#;
        let comment = dimensions_of(comment, &Enrichment::bare(EnrichmentStatus::Failed));
        assert_eq!(comment.object.id.as_deref(), Some("o-1"));
        assert_eq!(comment.list.id.as_deref(), Some("l-1"));
        assert_eq!(comment.names, Names::Failed);

        let created = dimensions_of(
            &fixture_event("pipedream__record.created_event.json"),
            &Enrichment::bare(EnrichmentStatus::Disabled),
        );
        assert!(created.object.id.is_some());
        assert_eq!(
            created.attribute.id, None,
            "record.created names no attribute"
        );
        assert_eq!(created.names, Names::Unavailable);

        let member = dimensions_of(
            &fixture_event("attio_docs__workspace-member.created_event.json"),
            &resolved(None, None, None),
        );
        assert_eq!(
            (member.object.id, member.list.id, member.attribute.id),
            (None, None, None)
        );
    }
}
