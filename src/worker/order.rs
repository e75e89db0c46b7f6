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

/// Where one event stands, as the events behind it see it. Once its deliveries are over (or it
/// left the pipeline without any) its slot is gone, and its channel closed with it: done.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Dispatched; what it is about is not known yet.
    Started,
    /// Waiting for its turn or delivering: about this subject (`None`: an event type whose
    /// subject is unknown; such events are ordered among themselves).
    About(Option<Subject>),
}

/// One event in flight. Its stage is told through a watch channel made only once another event
/// of its delivery looks at it or it has something to say to one: a delivery holds a single
/// event as a rule, and then nothing is made or announced.
struct Slot {
    index: u32,
    stage: Option<watch::Sender<Stage>>,
}

impl Slot {
    /// Sets this event's stage, for the events that look at it now or later.
    fn tell(&mut self, stage: Stage) {
        match &self.stage {
            Some(sender) => {
                sender.send_replace(stage);
            }
            None => self.stage = Some(watch::channel(stage).0),
        }
    }

    /// A view of this event's stage (`Started` until it says otherwise). Once it is gone (its
    /// ticket dropped, and with it the sender), the view counts it done.
    fn watch(&mut self) -> watch::Receiver<Stage> {
        self.stage
            .get_or_insert_with(|| watch::channel(Stage::Started).0)
            .subscribe()
    }
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
}

impl DeliveryOrder {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Vec<Slot>>> {
        // Each operation is one insert or removal: a panic elsewhere leaves nothing half-done.
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the event `index` of the delivery `delivery_key` as in flight.
    pub(crate) fn enter(&self, delivery_key: &str, index: u32) -> Ticket {
        let delivery_key: Arc<str> = Arc::from(delivery_key);
        self.lock()
            .entry(delivery_key.clone())
            .or_default()
            .push(Slot { index, stage: None });
        Ticket {
            order: self.clone(),
            delivery_key,
            index,
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
        let earlier: Vec<watch::Receiver<Stage>> = {
            let mut deliveries = self.order.lock();
            let Some(slots) = deliveries.get_mut(&*self.delivery_key) else {
                return;
            };
            if let Some(slot) = slots.iter_mut().find(|slot| slot.index == self.index) {
                slot.tell(Stage::About(mine.clone()));
            }
            slots
                .iter_mut()
                .filter(|slot| slot.index < self.index)
                .map(Slot::watch)
                .collect()
        };
        for mut stage in earlier {
            // Until it is about something else, or done (its sender dropped: an error here).
            let _ = stage
                .wait_for(|stage| match stage {
                    Stage::Started => false,
                    Stage::About(theirs) => *theirs != mine,
                })
                .await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut deliveries = self.order.lock();
        if let Some(slots) = deliveries.get_mut(&*self.delivery_key) {
            // The slot's sender goes with it: whoever watches this event sees it done.
            slots.retain(|slot| slot.index != self.index);
            if slots.is_empty() {
                deliveries.remove(&*self.delivery_key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
