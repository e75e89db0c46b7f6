//! The one error type of the Attio boundary, and which of its cases are worth trying again.
//!
//! In: an HTTP status with Attio's error body `{status_code, type, code, message}`, or a transport
//! failure. Out: an [`AttioError`] that says whether it is transient (429, 5xx, timeouts,
//! connection errors, 404 `merge_in_progress`, the open circuit) or permanent (400, 401, 403,
//! 404 `not_found`, an answer that cannot be read), and carries Attio's `code` and `message`.
//! Nothing here ever holds the API key or a request body.

use std::sync::Arc;
use std::time::Duration;

use crate::attio::models::ErrorBody;

#[derive(Debug, Clone)]
pub enum AttioError {
    /// Attio answered with a non-2xx status.
    Api {
        status: u16,
        /// Attio's `type` (`invalid_request_error`, `auth_error`, `rate_limit_error`, ...).
        kind: String,
        /// Attio's `code` (`not_found`, `merge_in_progress`, `rate_limit_exceeded`, ...).
        code: String,
        message: String,
        /// How long Attio asked us to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    Timeout,
    Connect(Cause),
    /// A 2xx answer whose body is not the JSON we expect.
    Decode(Cause),
    /// The circuit breaker is open: Attio failed repeatedly and is left alone for a while.
    CircuitOpen {
        retry_in: Duration,
    },
    /// The request could not be built (an id that cannot be a path segment, ...).
    InvalidRequest(Cause),
}

impl std::fmt::Display for AttioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttioError::Api {
                status,
                code,
                message,
                ..
            } => write!(f, "Attio answered {status} {code}: {message}"),
            AttioError::Timeout => f.write_str("request to Attio timed out"),
            AttioError::Connect(cause) => write!(f, "cannot reach Attio: {cause}"),
            AttioError::Decode(cause) => write!(f, "Attio's answer could not be read: {cause}"),
            AttioError::CircuitOpen { retry_in } => write!(
                f,
                "Attio is unavailable (circuit breaker open); next try in {}ms",
                retry_in.as_millis()
            ),
            AttioError::InvalidRequest(cause) => write!(f, "invalid request to Attio: {cause}"),
        }
    }
}

/// Written by hand rather than derived so that the source is the underlying error itself (the
/// reqwest or serde error), not the [`Cause`] that carries it.
impl std::error::Error for AttioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttioError::Connect(cause)
            | AttioError::Decode(cause)
            | AttioError::InvalidRequest(cause) => cause.source(),
            AttioError::Api { .. } | AttioError::Timeout | AttioError::CircuitOpen { .. } => None,
        }
    }
}

/// What an [`AttioError`] says went wrong below it: the words it shows, and the underlying error
/// when there is one, kept as the error's source. Shared (`Arc`) so that the error stays `Clone`
/// (the coalesced fetches hand one answer to every waiter).
#[derive(Debug, Clone)]
pub struct Cause {
    text: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// `text` (which usually quotes `source`) shown, `source` kept.
    pub(crate) fn new(
        text: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Cause {
        Cause {
            text: text.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The underlying error, when there is one.
    pub(crate) fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A cause in words only: nothing underneath.
impl From<String> for Cause {
    fn from(text: String) -> Cause {
        Cause { text, source: None }
    }
}

impl From<&str> for Cause {
    fn from(text: &str) -> Cause {
        Cause::from(text.to_string())
    }
}

impl AttioError {
    /// Builds the error for a non-2xx answer from its status, body and `Retry-After`.
    pub(crate) fn from_response(
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> AttioError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let parsed = parsed.unwrap_or_default();
        AttioError::Api {
            status,
            kind: parsed.kind.unwrap_or_default(),
            code: parsed.code.unwrap_or_default(),
            message: parsed
                .message
                .unwrap_or_else(|| "(no error message in the answer)".to_string()),
            retry_after,
        }
    }

    /// Trying the same request again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            AttioError::Api { status, code, .. } => {
                *status == 429
                    || *status == 408
                    || *status >= 500
                    || (*status == 404 && code == "merge_in_progress")
            }
            AttioError::Timeout | AttioError::Connect(_) | AttioError::CircuitOpen { .. } => true,
            AttioError::Decode(_) | AttioError::InvalidRequest(_) => false,
        }
    }

    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// The thing asked for does not exist (expected for `*.deleted` events).
    pub fn is_not_found(&self) -> bool {
        matches!(self, AttioError::Api { status: 404, code, .. } if code != "merge_in_progress")
    }

    /// The token is missing, wrong or lacks a scope. Retrying cannot help until an operator
    /// fixes the key, which is why the worker keeps such events on its slow retry path.
    pub(crate) fn is_auth(&self) -> bool {
        matches!(
            self,
            AttioError::Api {
                status: 401 | 403,
                ..
            }
        )
    }

    /// A sign that Attio itself is in trouble: counts towards opening the circuit breaker.
    /// A 429 does not (Attio is fine, we are too fast), nor does a merge in progress.
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            AttioError::Api { status, .. } => *status >= 500 || *status == 408,
            AttioError::Timeout | AttioError::Connect(_) => true,
            _ => false,
        }
    }

    /// Attio's `code`, when Attio answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            AttioError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            AttioError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttioError::Api { retry_after, .. } => *retry_after,
            AttioError::CircuitOpen { retry_in } => Some(*retry_in),
            _ => None,
        }
    }

    /// Classifies a transport error from reqwest. Its text names the URL, never headers.
    pub(crate) fn from_transport(error: reqwest::Error) -> AttioError {
        if error.is_timeout() {
            AttioError::Timeout
        } else if error.is_decode() {
            AttioError::Decode(Cause::new(error.to_string(), error))
        } else {
            AttioError::Connect(Cause::new(describe(&error), error))
        }
    }
}

/// The error and its causes on one line (reqwest's top-level text alone says little).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn api(status: u16, code: &str) -> AttioError {
        let body = format!(
            r#"{{"status_code":{status},"type":"invalid_request_error","code":"{code}","message":"m"}}"#
        );
        AttioError::from_response(status, body.as_bytes(), None)
    }

    #[test]
    fn statuses_are_classified_as_the_issue_says() {
        for transient in [api(429, "rate_limit_exceeded"), api(500, ""), api(503, "")] {
            assert!(transient.is_transient(), "{transient}");
        }
        assert!(api(404, "merge_in_progress").is_transient());
        assert!(!api(404, "merge_in_progress").is_not_found());
        for permanent in [
            api(400, "validation_type"),
            api(401, ""),
            api(403, ""),
            api(404, "not_found"),
        ] {
            assert!(permanent.is_permanent(), "{permanent}");
        }
        assert!(api(404, "not_found").is_not_found());
        assert!(AttioError::Timeout.is_transient());
        assert!(AttioError::Decode("x".into()).is_permanent());
    }

    #[test]
    fn error_carries_attios_code_and_message() {
        let error = AttioError::from_response(
            429,
            br#"{"status_code":429,"type":"rate_limit_error","code":"rate_limit_exceeded","message":"Rate limit exceeded, please try again later","extra":1}"#,
            Some(Duration::from_secs(1)),
        );
        assert_eq!(error.code(), Some("rate_limit_exceeded"));
        let text = error.to_string();
        assert!(
            text.contains("429") && text.contains("Rate limit exceeded"),
            "{text}"
        );
        assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
        assert!(!error.is_outage(), "a 429 does not open the breaker");
    }

    #[test]
    fn an_underlying_error_is_kept_as_the_source_and_the_message_stays_in_words() {
        let json = serde_json::from_slice::<Value>(b"{").unwrap_err();
        let text = json.to_string();
        let error = AttioError::Decode(Cause::new(text.clone(), json));
        assert_eq!(
            error.to_string(),
            format!("Attio's answer could not be read: {text}")
        );
        let source = std::error::Error::source(&error).expect("a source");
        assert_eq!(source.to_string(), text);
        assert!(std::error::Error::source(&AttioError::Decode("words".into())).is_none());
    }

    #[test]
    fn an_unreadable_error_body_still_gives_an_error() {
        let error = AttioError::from_response(502, b"<html>bad gateway</html>", None);
        assert!(error.is_transient() && error.is_outage());
        assert_eq!(error.status(), Some(502));
    }
}
