//! Single flight: callers asking for the same thing at about the same time share one request.
//!
//! In: a key, a window and the request to make. Out: the request's result, given to every caller
//! that joined. Two ways to close a flight to newcomers:
//! - [`Closes::AtStart`]: the flight stays open for `window`, then the request starts and later
//!   callers start a new flight. Used to coalesce re-fetches of one record: an edit that happens
//!   after the fetch started must not be answered with state read before it.
//! - [`Closes::AtEnd`]: callers join until the answer is there. Used for schema look-ups, where
//!   any answer of the moment will do.
//!
//! The request runs in a task of its own, so a caller that gives up (its event was cancelled by
//! shutdown) does not take the answer away from the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closes {
    AtStart,
    AtEnd,
}

type Pending<K, V> = Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>;

pub struct SingleFlight<K, V> {
    pending: Pending<K, V>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            pending: self.pending.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// The flight's task ended without an answer (the runtime is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared request was abandoned")]
pub struct Abandoned;

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the open flight for `key`, or opens one that runs `request` after `window`.
    /// Returns the answer and whether this caller started the flight.
    pub async fn run<F, Fut>(
        &self,
        key: K,
        window: Duration,
        closes: Closes,
        request: F,
    ) -> Result<(V, bool), Abandoned>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut receiver, leader) = {
            let mut pending = self.lock();
            match pending.get(&key) {
                Some(receiver) => (receiver.clone(), false),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    pending.insert(key.clone(), receiver.clone());
                    let flights = self.clone();
                    tokio::spawn(async move {
                        if !window.is_zero() {
                            tokio::time::sleep(window).await;
                        }
                        if closes == Closes::AtStart {
                            flights.lock().remove(&key);
                        }
                        let answer = request().await;
                        if closes == Closes::AtEnd {
                            flights.lock().remove(&key);
                        }
                        // Nobody listening any more is fine: every caller gave up.
                        let _ = sender.send(Some(answer));
                    });
                    (receiver, true)
                }
            }
        };
        let answer = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Abandoned)?;
        match answer.as_ref() {
            Some(value) => Ok((value.clone(), leader)),
            None => Err(Abandoned),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, watch::Receiver<Option<V>>>> {
        // Inserts and removes of single keys: a panic elsewhere leaves no broken state.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn callers_inside_the_window_share_one_request() {
        let flights: SingleFlight<&str, usize> = SingleFlight::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let flights = flights.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                flights
                    .run(
                        "k",
                        Duration::from_millis(100),
                        Closes::AtStart,
                        move || async move { calls.fetch_add(1, Ordering::SeqCst) + 1 },
                    )
                    .await
            }));
        }
        let mut leaders = 0;
        for task in tasks {
            let (value, leader) = task.await.unwrap().unwrap();
            assert_eq!(value, 1);
            leaders += usize::from(leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
    }

    #[tokio::test]
    async fn a_caller_after_the_request_started_gets_a_fresh_request() {
        let flights: SingleFlight<&str, usize> = SingleFlight::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = {
            let flights = flights.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                flights
                    .run(
                        "k",
                        Duration::from_millis(10),
                        Closes::AtStart,
                        move || async move {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            calls.fetch_add(1, Ordering::SeqCst) + 1
                        },
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let counter = calls.clone();
        let (_, leader) = flights
            .run("k", Duration::ZERO, Closes::AtStart, move || async move {
                counter.fetch_add(1, Ordering::SeqCst) + 1
            })
            .await
            .unwrap();
        assert!(leader, "the first request had started: a new one was made");
        slow.await.unwrap().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
