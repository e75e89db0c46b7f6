//! The connections under both listeners. In: a bound [`TcpListener`] and a router. Out: every
//! accepted connection served over HTTP/1.1 (hyper) until it closes, within limits that keep
//! slow, silent or idle clients from holding the daemon:
//!
//! - at most `server.max_connections` open at once: at the cap the daemon stops accepting, and
//!   new connections wait in the kernel's listen queue until one closes;
//! - a connection's request headers must arrive within `server.header_read_timeout`, counted from
//!   the accept, or on a kept-alive connection from the first byte of the next request;
//! - a kept-alive connection with no request in progress and no byte of a next one is closed
//!   after `server.idle_timeout`;
//! - the webhook handler reads the body within `server.body_read_timeout` (in `webhook`).
//!
//! Every request on either listener has a request id (`x-request-id`: the caller's when it is
//! acceptable, else a fresh one), answered back; see [`super::with_request_ids`].
//!
//! When `accept` fails for want of file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM),
//! the loop waits, doubling the pause up to a second, instead of retrying at once; the failure is
//! logged once when it starts, every 30 s while it lasts, and once when accepting works again.
//! Connections that time out free their descriptors, so the daemon recovers by itself.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long each connection may take, and how many may be open (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// Longest pause between two accepts that failed for want of descriptors or memory.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// First pause after such a failure.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// While a problem lasts, how often it is logged again.
const REMINDER_INTERVAL: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` is cancelled, then asks every open connection
/// to finish its request in progress and close, and returns once all have closed. `name` says
/// which listener it is in the log.
pub(crate) async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let request_ids = super::RequestIds::default();
    let mut accept_failures = Episode::default();
    let mut at_capacity = Episode::default();
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Some(waits) = at_capacity.end() {
                    tracing::info!(
                        listener = name,
                        waits,
                        "below server.max_connections again; accepting connections at once"
                    );
                }
                permit
            }
            Err(_) => {
                if at_capacity.begin_or_remind() {
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        "server.max_connections connections are open; new connections wait in \
                         the listen queue until one closes (raise server.max_connections if \
                         this is normal load)"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                if let Some(failures) = accept_failures.end() {
                    tracing::info!(listener = name, failures, "accepting connections again");
                }
                // Answers are small: send them without waiting to fill a segment.
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(
                    stream,
                    router.clone(),
                    request_ids.clone(),
                    limits,
                    shutdown.clone(),
                    permit,
                ));
            }
            // The client gave up before its connection was accepted: nothing to do.
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                if accept_failures.begin_or_remind() {
                    tracing::warn!(
                        listener = name,
                        %error,
                        "cannot accept connections; waiting for open connections to close \
                         (raise the open-files limit, ulimit -n, or lower server.max_connections)"
                    );
                }
                let pause = accept_failures.pause();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// Errors of one connection, not of the listener: the next accept may well succeed.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// A problem that lasts (accept failing, the connection cap reached), logged when it begins,
/// every [`REMINDER_INTERVAL`] while it lasts, and when it has ended: when things work again
/// and it has not happened for [`QUIET`]. Under steady pressure, accepts fail and succeed by
/// turns as connections close; that is one episode, not one per failure.
#[derive(Default)]
struct Episode {
    began: Option<Instant>,
    last_logged: Option<Instant>,
    last_occurred: Option<Instant>,
    occurrences: u64,
}

/// How long a problem must stay away for its episode to be over.
const QUIET: Duration = Duration::from_secs(5);

impl Episode {
    /// Counts one occurrence; true when it should be logged now.
    fn begin_or_remind(&mut self) -> bool {
        self.occurred_at(Instant::now())
    }

    fn occurred_at(&mut self, now: Instant) -> bool {
        if self
            .last_occurred
            .is_some_and(|last| now.duration_since(last) >= QUIET)
        {
            // The last one ended long ago without a success to close it: a new episode.
            *self = Episode::default();
        }
        self.occurrences += 1;
        self.last_occurred = Some(now);
        if self.began.is_none() {
            self.began = Some(now);
        }
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= REMINDER_INTERVAL);
        if due {
            self.last_logged = Some(now);
        }
        due
    }

    /// The pause before the next try: doubling from [`FIRST_ACCEPT_PAUSE`] up to
    /// [`MAX_ACCEPT_PAUSE`] with the occurrences of this episode.
    fn pause(&self) -> Duration {
        let doublings = self.occurrences.saturating_sub(1).min(16) as u32;
        FIRST_ACCEPT_PAUSE
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(MAX_ACCEPT_PAUSE)
    }

    /// Things work: ends the episode if the problem has stayed away for [`QUIET`], returning
    /// how many times it happened.
    fn end(&mut self) -> Option<u64> {
        self.end_at(Instant::now())
    }

    fn end_at(&mut self, now: Instant) -> Option<u64> {
        let last = self.last_occurred?;
        if now.duration_since(last) < QUIET {
            return None;
        }
        let occurrences = self.occurrences;
        *self = Episode::default();
        Some(occurrences)
    }
}

/// Serves one connection until it closes, times out, or the daemon shuts down. `_permit` is
/// this connection's place under `server.max_connections`, given back when it closes.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    request_ids: super::RequestIds,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let tower = TowerToHyperService::new(super::with_request_ids(router, request_ids));
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let busy = Busy::start(activity.clone());
            super::drop_odd_request_id(request.headers_mut());
            let response = tower.call(request);
            async move {
                // The request stays in progress until its answer's body has been read out to
                // the end (or dropped), so a streamed answer is not cut off as idle.
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    axum::body::Body::new(body.map_frame(move |frame| {
                        let _in_progress = &busy;
                        frame
                    }))
                }))
            }
        })
    };
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let mut builder = http1::Builder::new();
    // hyper's own header timer also runs while a kept-alive connection waits for its next
    // request, which would make the idle timeout no longer than the header one; the watchdog
    // below keeps the two apart.
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                // Finishes the request in progress, then closes.
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            expired = activity.expired(limits) => {
                // No request is in progress (the watchdog only fires then), so closing loses
                // nothing that was acknowledged.
                tracing::debug!(reason = expired.reason(), "closing a connection");
                return;
            }
        }
    }
}

/// Why a connection was closed by the watchdog.
#[derive(Debug, Clone, Copy)]
enum Expired {
    HeaderTimeout,
    IdleTimeout,
}

impl Expired {
    fn reason(self) -> &'static str {
        match self {
            Expired::HeaderTimeout => {
                "request headers not received within server.header_read_timeout"
            }
            Expired::IdleTimeout => "idle for server.idle_timeout",
        }
    }
}

/// What a connection is doing, for its watchdog.
struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    /// Requests handed to the router and not answered yet.
    in_progress: usize,
    /// When the connection last had no request in progress (the accept, or the last answer).
    waiting_since: Instant,
    /// Whether this connection has had a request yet: until then the header timeout runs from
    /// the accept.
    served_one: bool,
    /// The first byte read since `waiting_since`: the next request has begun.
    next_request_began: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                in_progress: 0,
                waiting_since: Instant::now(),
                served_one: false,
                next_request_began: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes_read(&self) {
        let mut state = self.state();
        if state.in_progress == 0 && state.next_request_began.is_none() {
            state.next_request_began = Some(Instant::now());
        }
    }

    /// When the connection should be closed as things stand, and why; `None` while a request
    /// is in progress.
    fn deadline(&self, limits: ConnectionLimits) -> Option<(Instant, Expired)> {
        let state = self.state();
        if state.in_progress > 0 {
            return None;
        }
        Some(match (state.served_one, state.next_request_began) {
            (false, _) => (
                state.waiting_since + limits.header_read_timeout,
                Expired::HeaderTimeout,
            ),
            (true, Some(began)) => (began + limits.header_read_timeout, Expired::HeaderTimeout),
            (true, None) => (
                state.waiting_since + limits.idle_timeout,
                Expired::IdleTimeout,
            ),
        })
    }

    /// Resolves once the connection has outlived its deadline. Deadlines move as requests come
    /// and go, so it looks again at least every quarter of the shorter timeout.
    async fn expired(&self, limits: ConnectionLimits) -> Expired {
        let check = limits
            .header_read_timeout
            .min(limits.idle_timeout)
            .checked_div(4)
            .unwrap_or(Duration::from_millis(250))
            .max(Duration::from_millis(50));
        loop {
            let now = Instant::now();
            match self.deadline(limits) {
                Some((deadline, why)) if deadline <= now => return why,
                Some((deadline, _)) => {
                    tokio::time::sleep(deadline.duration_since(now).min(check)).await
                }
                None => tokio::time::sleep(check).await,
            }
        }
    }
}

/// A request in progress on a connection, from the router's call until its answer's body has
/// been read to the end (or the request is dropped).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        {
            let mut state = activity.state();
            state.in_progress += 1;
            state.served_one = true;
            state.next_request_began = None;
        }
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_progress = state.in_progress.saturating_sub(1);
        if state.in_progress == 0 {
            state.waiting_since = Instant::now();
            state.next_request_began = None;
        }
    }
}

/// The socket, telling the watchdog when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buffer.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(context, buffer);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) && buffer.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(context, buffer)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

/// Raises this process's soft limit on open files to its hard limit (as Go's runtime and many
/// servers do), so that connections are limited by `server.max_connections` and not by a low
/// default, and returns the limit now in force (`None` when it cannot be read).
pub(crate) fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limits = getrlimit(Resource::Nofile);
    let current = limits.current?;
    if limits.maximum.is_none_or(|maximum| maximum > current) {
        let mut raised = limits;
        raised.current = limits.maximum;
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return getrlimit(Resource::Nofile).current;
        }
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_pauses_double_up_to_a_second() {
        let mut episode = Episode::default();
        let pauses: Vec<Duration> = (0..10)
            .map(|_| {
                episode.begin_or_remind();
                episode.pause()
            })
            .collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[6], Duration::from_millis(640));
        assert_eq!(pauses[7], MAX_ACCEPT_PAUSE);
        assert_eq!(pauses[9], MAX_ACCEPT_PAUSE);
    }

    #[test]
    fn failures_and_successes_by_turns_are_one_episode_logged_once() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut episode = Episode::default();
        assert!(episode.occurred_at(at(0)), "the first failure is logged");
        assert_eq!(
            episode.end_at(at(100)),
            None,
            "a success right after ends nothing"
        );
        for second in 1..30 {
            assert!(!episode.occurred_at(at(second * 1_000)), "{second} s");
            assert_eq!(episode.end_at(at(second * 1_000 + 100)), None);
        }
        assert!(episode.occurred_at(at(30_000)), "a reminder after 30 s");
        assert_eq!(episode.end_at(at(34_000)), None, "quiet for 4 s only");
        assert_eq!(episode.end_at(at(35_000)), Some(31), "quiet for 5 s: over");
        assert_eq!(episode.end_at(at(38_000)), None, "ended once");
        assert!(
            episode.occurred_at(at(40_000)),
            "a new episode is logged again"
        );
    }
}
