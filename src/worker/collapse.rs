//! Collapsing: the `record.updated` / `list-entry.updated` events that shared one coalesced
//! fetch reach the sinks of a route with `collapse = true` as one line.
//!
//! In: each event of such a flight, once its line is built, with the collapsing sinks it still
//! has to reach. Out: for each of those sinks, the result of the one delivery made for the whole
//! group. The first member with something to deliver leads: it waits until every member of the
//! flight has arrived (their fetch answered them all at once, so this is quick; [`GATHER`]
//! bounds it), builds one line per sink from the members that want that sink, in the order they
//! joined the fetch (the first one's line plus `changed_attributes` and
//! `collapsed_event_ids`), delivers it, and tells the others
//! how it went. A member records a sink as done only after the group's line reached it, so a
//! crash at any point repeats a delivery rather than losing one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{oneshot, Notify};

use super::item::WorkItem;
use super::send::deliver_to;
use super::Pipeline;
use crate::attio::single_flight::Joined;
use crate::enrich::{Enrichment, Plan};
use crate::event::EventKind;
use crate::journal::SinkProgress;
use crate::sinks::{SinkError, SinkLine};

/// Longest wait of a group's leader for the other members of its flight.
pub(crate) const GATHER: Duration = Duration::from_secs(1);

/// Groups older than this are forgotten (members that never arrived: cancelled by shutdown).
const STALE: Duration = Duration::from_secs(60);

/// What each collapsing sink answered to the group's line.
pub(crate) type Results = HashMap<String, Result<(), SinkError>>;

/// One event of a flight, with what it wants delivered together.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) event_id: String,
    /// When it joined the shared fetch (see [`Joined::position`]): the order of the line.
    pub(crate) position: usize,
    /// The changed attribute's slug (its id when the slug is unknown), if the event names one.
    pub(crate) attribute: Option<String>,
    /// The event's own line.
    pub(crate) line: SinkLine,
    /// The collapsing sinks this event still has to reach.
    pub(crate) sinks: Vec<String>,
}

/// This event's part in its group.
pub(crate) enum Role {
    /// Nothing to deliver together: the event was only counted.
    Counted,
    /// Delivers for the group once [`Leader::gather`] returns.
    Leader(Leader),
    /// Waits for the leader's results.
    Follower(oneshot::Receiver<Results>),
}

pub(crate) struct Leader {
    collapser: Collapser,
    flight: u64,
    complete: Arc<Notify>,
}

struct Group {
    expected: usize,
    arrived: usize,
    has_leader: bool,
    members: Vec<Member>,
    followers: Vec<oneshot::Sender<Results>>,
    complete: Arc<Notify>,
    opened: tokio::time::Instant,
}

/// The groups of this process, keyed by flight number.
#[derive(Clone, Default)]
pub(crate) struct Collapser {
    groups: Arc<Mutex<HashMap<u64, Group>>>,
}

/// A group, gathered: every member that arrived (in the order they joined the fetch) and how to
/// answer the others.
pub(crate) struct Gathered {
    pub(crate) members: Vec<Member>,
    followers: Vec<oneshot::Sender<Results>>,
}

impl Gathered {
    /// Tells every follower what the sinks answered.
    pub(crate) fn answer(self, results: &Results) {
        for follower in self.followers {
            // A follower that is gone (shutdown) has nothing to record.
            let _ = follower.send(results.clone());
        }
    }
}

impl Collapser {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Group>> {
        // Each operation leaves the map consistent before it can panic.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers one member of `flight`. Every event of a shared flight must arrive exactly
    /// once, with `None` when it has nothing to deliver together, so that the leader knows when
    /// the group is complete.
    pub(crate) fn arrive(&self, flight: &Joined, member: Option<Member>) -> Role {
        let now = tokio::time::Instant::now();
        let mut groups = self.lock();
        groups.retain(|_, group| now.duration_since(group.opened) < STALE);
        let group = groups.entry(flight.flight).or_insert_with(|| Group {
            expected: flight.members,
            arrived: 0,
            has_leader: false,
            members: Vec::new(),
            followers: Vec::new(),
            complete: Arc::new(Notify::new()),
            opened: now,
        });
        group.arrived += 1;
        let complete = group.arrived >= group.expected;
        let role = match member.filter(|m| !m.sinks.is_empty()) {
            None => Role::Counted,
            Some(member) => {
                if !group.has_leader {
                    group.has_leader = true;
                    group.members.insert(0, member);
                    Role::Leader(Leader {
                        collapser: self.clone(),
                        flight: flight.flight,
                        complete: group.complete.clone(),
                    })
                } else {
                    let (sender, receiver) = oneshot::channel();
                    group.members.push(member);
                    group.followers.push(sender);
                    Role::Follower(receiver)
                }
            }
        };
        if complete {
            // `notify_one` keeps a permit, so a leader that has not started waiting still sees it.
            group.complete.notify_one();
            if !group.has_leader {
                groups.remove(&flight.flight);
            }
        }
        role
    }
}

impl Leader {
    /// Waits until every member arrived (or [`GATHER`] passed), then closes the group: members
    /// arriving later deliver on their own.
    pub(crate) async fn gather(self) -> Gathered {
        let _ = tokio::time::timeout(GATHER, self.complete.notified()).await;
        let group = self.collapser.lock().remove(&self.flight);
        match group {
            Some(mut group) => {
                // In the order the events came, not the order they were answered in.
                group.members.sort_by_key(|member| member.position);
                Gathered {
                    members: group.members,
                    followers: group.followers,
                }
            }
            None => Gathered {
                members: Vec::new(),
                followers: Vec::new(),
            },
        }
    }
}

/// The one line `sink` receives for `members` (those of the group that want it, in arrival
/// order): the first one's line with `changed_attributes` (each slug once) and
/// `collapsed_event_ids`.
pub(crate) fn collapsed_line(members: &[&Member]) -> Result<SinkLine, SinkError> {
    let Some(first) = members.first() else {
        return Err(SinkError::permanent("an empty group has no line"));
    };
    let mut line: Map<String, Value> = serde_json::from_slice(&first.line.json)
        .map_err(|e| SinkError::permanent(format!("cannot read the sink line: {e}")))?;
    let mut attributes: Vec<Value> = Vec::new();
    for member in members {
        if let Some(attribute) = &member.attribute {
            let attribute = Value::String(attribute.clone());
            if !attributes.contains(&attribute) {
                attributes.push(attribute);
            }
        }
    }
    line.insert("changed_attributes".into(), Value::Array(attributes));
    line.insert(
        "collapsed_event_ids".into(),
        Value::Array(
            members
                .iter()
                .map(|m| Value::String(m.event_id.clone()))
                .collect(),
        ),
    );
    let json = serde_json::to_vec(&line)
        .map_err(|e| SinkError::permanent(format!("cannot serialise the sink line: {e}")))?;
    Ok(SinkLine {
        id: first.line.id.clone(),
        event_type: first.line.event_type.clone(),
        json: bytes::Bytes::from(json),
    })
}

/// Counts the event in its group, if it has one, with nothing to deliver together: every event
/// of a shared flight arrives, so that the leader knows when the group is complete.
pub(crate) fn count(pipeline: &Pipeline, group: Option<&Joined>) {
    if let Some(shared) = group {
        pipeline.collapser.arrive(shared, None);
    }
}

/// The event's part in its group, if it has one: it arrives with its line and `together`, the
/// collapsing sinks it still has to reach (none: it is only counted).
pub(crate) fn join(
    pipeline: &Pipeline,
    group: Option<&Joined>,
    item: &WorkItem,
    enrichment: &Enrichment,
    line: &SinkLine,
    together: &[String],
) -> Option<Role> {
    let shared = group?;
    let member = (!together.is_empty()).then(|| Member {
        event_id: item.id.clone(),
        position: shared.position,
        attribute: changed_attribute(item, enrichment),
        line: line.clone(),
        sinks: together.to_vec(),
    });
    Some(pipeline.collapser.arrive(shared, member))
}

/// The line a collapsing sink gets for an update that shared its fetch with no other: the shape
/// of a group of one. `None` for the events that are never collapsed.
pub(crate) fn single_line(
    item: &WorkItem,
    enrichment: &Enrichment,
    line: &SinkLine,
) -> Option<SinkLine> {
    if !matches!(
        item.kind,
        EventKind::RecordUpdated | EventKind::ListEntryUpdated
    ) {
        return None;
    }
    let member = Member {
        event_id: item.id.clone(),
        position: 0,
        attribute: changed_attribute(item, enrichment),
        line: line.clone(),
        sinks: Vec::new(),
    };
    collapsed_line(&[&member]).ok()
}

/// The attribute an update names: its slug, or its id when the slug is unknown.
fn changed_attribute(item: &WorkItem, enrichment: &Enrichment) -> Option<String> {
    enrichment.attribute.clone().or_else(|| {
        item.plan
            .as_ref()
            .ok()
            .and_then(Plan::attribute_id)
            .map(str::to_string)
    })
}

/// This event's part in a collapsed delivery: the leader gathers its group and delivers one line
/// per sink for the members that want it; a follower waits for the leader's results. Returns what
/// each of this event's collapsing sinks answered.
pub(crate) async fn deliver_together(
    pipeline: &Pipeline,
    role: Role,
    progress: &SinkProgress,
) -> Results {
    match role {
        Role::Counted => Results::new(),
        // A leader that is gone (shutdown) leaves the result out: a transient failure.
        Role::Follower(results) => results.await.unwrap_or_default(),
        Role::Leader(leader) => {
            let gathered = leader.gather().await;
            let mut sinks: Vec<&str> = Vec::new();
            for member in &gathered.members {
                for sink in &member.sinks {
                    if !sinks.contains(&sink.as_str()) {
                        sinks.push(sink);
                    }
                }
            }
            let mut results = Results::new();
            for name in sinks {
                let members: Vec<&Member> = gathered
                    .members
                    .iter()
                    .filter(|m| m.sinks.iter().any(|s| s == name))
                    .collect();
                let result = match collapsed_line(&members) {
                    Ok(line) => {
                        tracing::info!(sink = %name, events = members.len(), "delivering collapsed events as one line");
                        deliver_to(pipeline, name, &line, progress).await
                    }
                    Err(error) => {
                        metrics::counter!(
                            crate::metrics::SINK_DELIVERIES,
                            "sink" => name.to_string(),
                            "outcome" => "error"
                        )
                        .increment(1);
                        Err(error)
                    }
                };
                results.insert(name.to_string(), result);
            }
            gathered.answer(&results);
            results
        }
    }
}

#[cfg(test)]
mod tests;
