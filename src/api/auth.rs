//! Who may use the events API and the console.
//!
//! In: each request to `/api/v1` and `/console`. Out: the request passed on, or refused (401 for
//! the API, the sign-in page for the console, 403 for a cross-site mutation, 429 while failed
//! sign-ins are being throttled). With a token (`ATTIO_WEBHOOKS_ADMIN_TOKEN`, `admin.token`), a
//! request carries `Authorization: Bearer TOKEN`, or the session cookie that signing in at
//! `/console/login` sets (HttpOnly, SameSite=Strict). Without one the daemon serves them only on
//! a loopback listener (decided in `app`), and lets every local request in.
//!
//! Tokens are compared in constant time (over their SHA-256 digests, so their lengths do not
//! show either). After [`FAILURES_PER_MINUTE`] failed attempts in a minute, every attempt to
//! present a token is answered 429 until the minute has passed; sessions already open go on.
//! A mutation (anything but GET and HEAD) that does not carry the bearer token must come from
//! the console's own origin: its `Origin` (or, lacking that, `Referer`) names the host it was
//! sent to, so another site cannot make a signed-in browser replay events.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Method};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Name of the console's session cookie.
pub(crate) const SESSION_COOKIE: &str = "attio_webhooks_session";
/// How long a console session lasts.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Failed token attempts allowed per minute before attempts are refused for a while.
pub(crate) const FAILURES_PER_MINUTE: u32 = 10;
/// How long attempts are refused once the failures ran out.
const LOCKOUT: Duration = Duration::from_secs(60);
/// Most console sessions open at once (the oldest is dropped beyond it).
const MAX_SESSIONS: usize = 1000;

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// `Authorization: Bearer` with the token.
    Bearer,
    /// The console's session cookie.
    Session,
    /// No token is configured and the listener is a loopback address.
    Local,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No credential, or a wrong one.
    Unauthorized,
    /// Too many failed attempts lately; try again after this long.
    Throttled(Duration),
    /// A mutation from another origin (or with no origin at all, from a browser session).
    CrossSite,
}

pub(crate) struct Auth {
    /// SHA-256 of the token; `None`: open to local requests.
    token: Option<[u8; 32]>,
    sessions: Mutex<HashMap<String, Instant>>,
    failures: DefaultDirectRateLimiter,
    locked_until: Mutex<Option<Instant>>,
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each use is one lookup, insert or removal: a poisoned lock holds no broken state.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Auth {
    pub(crate) fn new(token: Option<&SecretString>) -> Auth {
        let per_minute = NonZeroU32::new(FAILURES_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        Auth {
            token: token.map(|t| digest(t.expose_secret())),
            sessions: Mutex::new(HashMap::new()),
            failures: RateLimiter::direct(Quota::per_minute(per_minute)),
            locked_until: Mutex::new(None),
        }
    }

    /// Whether a token protects the API and console.
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks a presented token. Failures count towards the lockout.
    pub(crate) fn check_token(&self, presented: &str) -> Result<(), Refusal> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        if let Some(wait) = self.locked_for() {
            return Err(Refusal::Throttled(wait));
        }
        if bool::from(digest(presented).ct_eq(expected)) {
            return Ok(());
        }
        if self.failures.check().is_err() {
            *lock(&self.locked_until) = Some(Instant::now() + LOCKOUT);
            tracing::warn!("too many failed console or API sign-ins; refusing attempts for 60 s");
            return Err(Refusal::Throttled(LOCKOUT));
        }
        Err(Refusal::Unauthorized)
    }

    fn locked_for(&self) -> Option<Duration> {
        let mut locked = lock(&self.locked_until);
        match *locked {
            Some(until) if until > Instant::now() => Some(until - Instant::now()),
            Some(_) => {
                *locked = None;
                None
            }
            None => None,
        }
    }

    /// Opens a console session after a correct token; returns the cookie value.
    pub(crate) fn open_session(&self) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, _)| id.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), now + SESSION_LIFETIME);
        id
    }

    pub(crate) fn close_session(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            lock(&self.sessions).remove(id);
        }
    }

    fn session_is_open(&self, id: &str) -> bool {
        let sessions = lock(&self.sessions);
        // Session ids are random and long; a lookup by value does not reveal a token.
        sessions
            .get(id)
            .is_some_and(|expires| *expires > Instant::now())
    }

    /// Decides whether a request may go on, and as whom.
    pub(crate) fn admit(&self, method: &Method, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let caller = self.identify(headers)?;
        let mutation = !matches!(*method, Method::GET | Method::HEAD);
        if mutation && caller != Caller::Bearer && !same_origin(headers, caller) {
            return Err(Refusal::CrossSite);
        }
        Ok(caller)
    }

    fn identify(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        if self.token.is_none() {
            return Ok(Caller::Local);
        }
        if let Some(presented) = bearer(headers) {
            return self.check_token(presented).map(|()| Caller::Bearer);
        }
        match cookie(headers, SESSION_COOKIE) {
            Some(id) if self.session_is_open(id) => Ok(Caller::Session),
            _ => Err(Refusal::Unauthorized),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of one cookie of the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether a mutation comes from the page's own origin: its `Origin` (else `Referer`) names the
/// host the request was sent to. A local caller without a token (curl on the same machine) may
/// send neither; a browser session must send one.
fn same_origin(headers: &HeaderMap, caller: Caller) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|value| value.to_str().ok());
    match source {
        Some(source) => authority(source) == Some(host),
        None => caller == Caller::Local,
    }
}

/// `host[:port]` of an absolute URL.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split(['/', '?', '#']).next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn protected() -> Auth {
        Auth::new(Some(&SecretString::from("s3cret")))
    }

    #[test]
    fn the_bearer_token_is_accepted_and_a_wrong_one_refused() {
        let auth = protected();
        let good = headers(&[(header::AUTHORIZATION, "Bearer s3cret")]);
        assert_eq!(auth.admit(&Method::POST, &good), Ok(Caller::Bearer));
        let wrong = headers(&[(header::AUTHORIZATION, "Bearer s3cre")]);
        assert_eq!(auth.admit(&Method::GET, &wrong), Err(Refusal::Unauthorized));
        assert_eq!(
            auth.admit(&Method::GET, &HeaderMap::new()),
            Err(Refusal::Unauthorized)
        );
    }

    #[test]
    fn failed_attempts_lock_out_even_the_right_token_for_a_while() {
        let auth = protected();
        let wrong = headers(&[(header::AUTHORIZATION, "Bearer nope")]);
        let mut throttled = false;
        for _ in 0..=FAILURES_PER_MINUTE {
            throttled |= matches!(auth.admit(&Method::GET, &wrong), Err(Refusal::Throttled(_)));
        }
        assert!(throttled, "the attempt after the allowance is throttled");
        let good = headers(&[(header::AUTHORIZATION, "Bearer s3cret")]);
        assert!(matches!(
            auth.admit(&Method::GET, &good),
            Err(Refusal::Throttled(_))
        ));
    }

    #[test]
    fn a_session_may_mutate_only_from_its_own_origin() {
        let auth = protected();
        let session = auth.open_session();
        let cookie = format!("other=1; {SESSION_COOKIE}={session}");
        let from = |origin: Option<&str>| {
            let mut map = headers(&[(header::COOKIE, &cookie), (header::HOST, "127.0.0.1:8080")]);
            if let Some(origin) = origin {
                map.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            }
            map
        };
        assert_eq!(auth.admit(&Method::GET, &from(None)), Ok(Caller::Session));
        assert_eq!(
            auth.admit(&Method::POST, &from(Some("http://127.0.0.1:8080"))),
            Ok(Caller::Session)
        );
        assert_eq!(
            auth.admit(&Method::POST, &from(Some("https://evil.example"))),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            auth.admit(&Method::POST, &from(None)),
            Err(Refusal::CrossSite)
        );
        auth.close_session(&from(None));
        assert_eq!(
            auth.admit(&Method::GET, &from(None)),
            Err(Refusal::Unauthorized)
        );
    }

    #[test]
    fn without_a_token_local_requests_pass_but_not_cross_site_mutations() {
        let auth = Auth::new(None);
        let plain = headers(&[(header::HOST, "127.0.0.1:8080")]);
        assert_eq!(auth.admit(&Method::POST, &plain), Ok(Caller::Local));
        let cross = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "https://evil.example"),
        ]);
        assert_eq!(auth.admit(&Method::POST, &cross), Err(Refusal::CrossSite));
    }
}
