//! Single flight: callers asking for the same thing at about the same time share one request.
//!
//! In: a key, a window and the request to make. Out: the request's result, given to every caller
//! that joined. Two ways to close a flight to newcomers:
//! - [`Closes::AtSend`]: the flight stays open for `window` and then until the request is
//!   actually sent (it may wait for the rate limiter meanwhile): the request calls
//!   [`Closer::close`] right before it goes out, and later callers start a new flight. Used to
//!   coalesce re-fetches of one record: an event that arrives before the request left is answered
//!   with state read after it, but one arriving later must not get state read before it.
//! - [`Closes::AtEnd`]: callers join until the answer is there. Used for schema look-ups, where
//!   any answer of the moment will do.
//!
//! The request runs in a task of its own, so a caller that gives up (its event was cancelled by
//! shutdown) does not take the answer away from the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closes {
    AtSend,
    AtEnd,
}

/// Open flights: key → (flight number, where its answer will appear, callers that joined).
type Flights<K, V> = HashMap<K, (u64, watch::Receiver<Option<V>>, Arc<AtomicUsize>)>;
type Pending<K, V> = Arc<Mutex<Flights<K, V>>>;

/// Handed to the request of a [`Closes::AtSend`] flight: closes the flight to newcomers.
pub(crate) struct Closer<K, V> {
    flight: Option<(SingleFlight<K, V>, K, u64)>,
}

impl<K: Hash + Eq, V> Closer<K, V> {
    /// Later callers start a new flight. Safe to call more than once.
    pub(crate) fn close(&self) {
        if let Some((flights, key, number)) = &self.flight {
            let mut pending = flights.lock();
            if pending.get(key).is_some_and(|(n, _, _)| n == number) {
                pending.remove(key);
            }
        }
    }
}

pub(crate) struct SingleFlight<K, V> {
    pending: Pending<K, V>,
    numbers: Arc<std::sync::atomic::AtomicU64>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            pending: self.pending.clone(),
            numbers: self.numbers.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            pending: Arc::new(Mutex::new(HashMap::new())),
            numbers: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }
}

impl<K, V> SingleFlight<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Flights<K, V>> {
        // Inserts and removes of single keys: a panic elsewhere leaves no broken state.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How one caller took part in a flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Joined {
    /// This caller opened the flight (its request was made for it).
    pub(crate) leader: bool,
    /// The flight's number, unique within this [`SingleFlight`].
    pub(crate) flight: u64,
    /// How many callers shared the answer, this one included. Final once the answer is there:
    /// a flight closes to newcomers before its answer is published.
    pub(crate) members: usize,
    /// When this caller joined: 0 for the leader, then 1, 2, ... in the order callers came.
    pub(crate) position: usize,
}

/// The flight's task ended without an answer (the runtime is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared request was abandoned")]
pub(crate) struct Abandoned;

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the open flight for `key`, or opens one that runs `request` after `window`.
    /// Returns the answer and how this caller took part ([`Joined`]). The flight closes to
    /// newcomers when `request` calls its [`Closer`] ([`Closes::AtSend`]) or when the answer
    /// is there, whichever comes first.
    pub(crate) async fn run<F, Fut>(
        &self,
        key: K,
        window: Duration,
        closes: Closes,
        request: F,
    ) -> Result<(V, Joined), Abandoned>
    where
        F: FnOnce(Closer<K, V>) -> Fut + Send + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut receiver, leader, number, members, position) = {
            let mut pending = self.lock();
            match pending.get(&key) {
                Some((number, receiver, members)) => {
                    // Counted under the lock that also closes the flight: no join is missed.
                    let position = members.fetch_add(1, Ordering::Relaxed);
                    (receiver.clone(), false, *number, members.clone(), position)
                }
                None => {
                    let (sender, receiver) = watch::channel(None);
                    let number = self.numbers.fetch_add(1, Ordering::Relaxed);
                    let members = Arc::new(AtomicUsize::new(1));
                    pending.insert(key.clone(), (number, receiver.clone(), members.clone()));
                    let at_end = Closer {
                        flight: Some((self.clone(), key, number)),
                    };
                    let closer = Closer {
                        flight: match (&at_end.flight, closes) {
                            (Some((flights, key, number)), Closes::AtSend) => {
                                Some((flights.clone(), key.clone(), *number))
                            }
                            _ => None,
                        },
                    };
                    tokio::spawn(async move {
                        if !window.is_zero() {
                            tokio::time::sleep(window).await;
                        }
                        let answer = request(closer).await;
                        at_end.close();
                        // Nobody listening any more is fine: every caller gave up.
                        let _ = sender.send(Some(answer));
                    });
                    (receiver, true, number, members, 0)
                }
            }
        };
        let answer = receiver
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Abandoned)?;
        let joined = Joined {
            leader,
            flight: number,
            members: members.load(Ordering::Relaxed),
            position,
        };
        match answer.as_ref() {
            Some(value) => Ok((value.clone(), joined)),
            None => Err(Abandoned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                        Closes::AtSend,
                        move |_| async move { calls.fetch_add(1, Ordering::SeqCst) + 1 },
                    )
                    .await
            }));
        }
        let mut leaders = 0;
        let mut flights_seen = std::collections::HashSet::new();
        for task in tasks {
            let (value, joined) = task.await.unwrap().unwrap();
            assert_eq!(value, 1);
            assert_eq!(joined.members, 10, "every caller counts as a member");
            flights_seen.insert(joined.flight);
            leaders += usize::from(joined.leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(flights_seen.len(), 1);
    }

    #[tokio::test]
    async fn a_caller_after_the_request_was_sent_gets_a_fresh_request() {
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
                        Closes::AtSend,
                        move |closer| async move {
                            // Waits (as for the rate limiter), then sends.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            closer.close();
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            calls.fetch_add(1, Ordering::SeqCst) + 1
                        },
                    )
                    .await
            })
        };
        // Before the send: joins.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let joiner = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run("k", Duration::ZERO, Closes::AtSend, |_| async { 99 })
                    .await
            })
        };
        // After the send: a new flight.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let counter = calls.clone();
        let (_, late) = flights
            .run("k", Duration::ZERO, Closes::AtSend, move |_| async move {
                counter.fetch_add(1, Ordering::SeqCst) + 1
            })
            .await
            .unwrap();
        assert!(
            late.leader && late.members == 1,
            "the first request had been sent: a new one was made"
        );
        let (joined, joiner) = joiner.await.unwrap().unwrap();
        assert!(
            !joiner.leader && joined >= 1,
            "a caller before the send shares the answer"
        );
        let (_, first) = slow.await.unwrap().unwrap();
        assert_eq!((first.flight, first.members), (joiner.flight, 2));
        assert_ne!(first.flight, late.flight);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
