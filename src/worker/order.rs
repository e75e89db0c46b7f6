//! Order within a delivery: the events of one delivery that are about the same thing (one
//! record, one list entry, one note, ...) reach the sinks in the order Attio listed them;
//! events about different things still run side by side.
//!
//! In: each event as the worker dispatches it (its delivery key and index), and, once it has a
//! line to deliver, what it is about (its [`Subject`]). Out: the moment it may deliver: when
//! every earlier event of its delivery about the same subject has finished its deliveries (or
//! left the pipeline some other way: deferred, retried, done). A [`Ticket`] that is dropped
//! lets the events behind it go, so no path through the worker can hold them up.
//!
//! Only events in flight together are ordered: the worker dispatches a delivery's events in
//! index order (the channel and the journal keep it), so an earlier event is always registered
//! before a later one looks. Across deliveries nothing is ordered: Attio does not promise it
//! either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::enrich::Subject;

/// Where one event stands, as the events behind it see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Dispatched; what it is about is not known yet.
    Started,
    /// Waiting for its turn or delivering: about this subject (`None`: an event type whose
    /// subject is unknown; such events are ordered among themselves).
    About(Option<Subject>),
    /// Its deliveries are over (or it left the pipeline without any).
    Done,
}

struct Slot {
    index: u32,
    stage: watch::Receiver<Stage>,
}

/// The events in flight, by delivery.
#[derive(Clone, Default)]
pub(crate) struct DeliveryOrder {
    deliveries: Arc<Mutex<HashMap<Arc<str>, Vec<Slot>>>>,
}

/// One event's place in its delivery's order.
pub(crate) struct Ticket {
    order: DeliveryOrder,
    /// Shared with the key of its delivery's entry.
    delivery_key: Arc<str>,
    index: u32,
    stage: watch::Sender<Stage>,
}

impl DeliveryOrder {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Vec<Slot>>> {
        // Each operation is one insert or removal: a panic elsewhere leaves nothing half-done.
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the event `index` of the delivery `delivery_key` as in flight.
    pub(crate) fn enter(&self, delivery_key: &str, index: u32) -> Ticket {
        let (stage, receiver) = watch::channel(Stage::Started);
        let delivery_key: Arc<str> = Arc::from(delivery_key);
        self.lock()
            .entry(delivery_key.clone())
            .or_default()
            .push(Slot {
                index,
                stage: receiver,
            });
        Ticket {
            order: self.clone(),
            delivery_key,
            index,
            stage,
        }
    }

    /// Number of deliveries with events in flight (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ticket {
    /// Whether other events of this delivery are in flight: only then does the order matter.
    pub(crate) fn has_company(&self) -> bool {
        self.order
            .lock()
            .get(&*self.delivery_key)
            .is_some_and(|slots| slots.len() > 1)
    }

    /// Says what this event is about and waits until every earlier event of its delivery about
    /// the same subject is done. `subject` is called only when the delivery has other events in
    /// flight (a delivery holds one event today).
    pub(crate) async fn wait_turn(&self, subject: impl FnOnce() -> Option<Subject>) {
        if self.index == 0 && !self.has_company() {
            // Nothing was listed before it; a later event that finds it `Started` waits for it.
            return;
        }
        let mine = subject();
        self.stage.send_replace(Stage::About(mine.clone()));
        let earlier: Vec<watch::Receiver<Stage>> = self
            .order
            .lock()
            .get(&*self.delivery_key)
            .map(|slots| {
                slots
                    .iter()
                    .filter(|slot| slot.index < self.index)
                    .map(|slot| slot.stage.clone())
                    .collect()
            })
            .unwrap_or_default();
        for mut stage in earlier {
            // Either it is about something else, or it is done (a dropped sender is done too).
            let _ = stage
                .wait_for(|stage| match stage {
                    Stage::Started => false,
                    Stage::About(theirs) => *theirs != mine,
                    Stage::Done => true,
                })
                .await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.stage.send_replace(Stage::Done);
        let mut deliveries = self.order.lock();
        if let Some(slots) = deliveries.get_mut(&*self.delivery_key) {
            slots.retain(|slot| slot.index != self.index);
            if slots.is_empty() {
                deliveries.remove(&*self.delivery_key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
