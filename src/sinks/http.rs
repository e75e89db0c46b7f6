//! The `http` sink: POSTs each event's line as JSON to a URL, signed the Standard Webhooks way.
//!
//! In: a [`SinkLine`] and the attempt number. Out: `Ok` on any 2xx; a transient [`SinkError`] on
//! 5xx, 429 (carrying `Retry-After`), timeouts and connection errors; a permanent one on every
//! other status (a receiver that refuses an event with 4xx will refuse it again). Headers:
//! `webhook-id` (the stable event id), `webhook-timestamp` (unix seconds), and with a `secret`
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, so receivers verify
//! with any Standard Webhooks library. One `reqwest::Client` (one connection pool) per sink.
//!
//! A refusing receiver's answer is quoted in the error (logged, and stored as a dead letter's
//! `last_error`), so it is scrubbed first: receivers that echo the request back would otherwise
//! put the configured header values, the signing secret or the URL's credentials there.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::settings::HttpSinkSettings;
pub(crate) use super::settings::{check_header, decode_secret, ATTEMPT_HEADER, SECRET_PREFIX};
use super::{SinkError, SinkLine};

/// Most bytes of a refusing receiver's answer quoted in the error.
const ERROR_BODY_LIMIT: usize = 200;
/// A `Retry-After` beyond this is not honoured as such: the sink's own backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

type HmacSha256 = Hmac<Sha256>;

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub(crate) fn signature(
    key: &[u8],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SinkError> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .map_err(|_| SinkError::permanent("the signing key cannot be used for HMAC"))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        BASE64.encode(mac.finalize().into_bytes().as_slice())
    ))
}

pub(crate) struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    key: Option<SecretSlice<u8>>,
    headers: HeaderMap,
    timeout: Duration,
    limit: Option<Arc<Semaphore>>,
    /// What must never be quoted back from the receiver's answer.
    scrubber: Scrubber,
}

/// Replaces configured credentials in text a remote server sent back, so that an answer that
/// echoes the request cannot carry them into a log line or a stored failure.
pub(crate) struct Scrubber {
    /// Longest first, so that a whole value is replaced before any part of it.
    secrets: Vec<SecretString>,
}

/// What a scrubbed credential is shown as.
const SCRUBBED: &str = "[redacted]";

impl Scrubber {
    /// Scrubs the sink's header values (whole, and each word of 8 characters or more, such as
    /// the token after `Bearer`), its signing secret (with and without `whsec_`), and its URL's
    /// password and query values. Each also in its JSON-escaped form, the way an echo in a JSON
    /// body shows it.
    pub(crate) fn for_sink(settings: &HttpSinkSettings) -> Scrubber {
        let mut texts: Vec<String> = Vec::new();
        for value in settings.headers.values() {
            let value = value.expose_secret();
            texts.push(value.to_string());
            texts.extend(
                value
                    .split_whitespace()
                    .filter(|word| word.chars().count() >= 8)
                    .map(str::to_string),
            );
        }
        if let Some(secret) = &settings.secret {
            let secret = secret.expose_secret().trim();
            texts.push(secret.to_string());
            if let Some(key) = secret.strip_prefix(SECRET_PREFIX) {
                texts.push(key.to_string());
            }
        }
        if let Ok(url) = reqwest::Url::parse(&settings.url) {
            texts.extend(url.password().map(str::to_string));
            texts.extend(url.query_pairs().map(|(_, value)| value.into_owned()));
        }
        let escaped: Vec<String> = texts
            .iter()
            .filter_map(|text| {
                let json = serde_json::to_string(text).ok()?;
                let inner = json.get(1..json.len().saturating_sub(1))?;
                (inner != text).then(|| inner.to_string())
            })
            .collect();
        texts.extend(escaped);
        texts.retain(|text| !text.is_empty());
        texts.sort_by_key(|text| std::cmp::Reverse(text.len()));
        texts.dedup();
        Scrubber {
            secrets: texts.into_iter().map(SecretString::from).collect(),
        }
    }

    /// The length in bytes of the longest credential.
    fn longest(&self) -> usize {
        self.secrets
            .first()
            .map_or(0, |secret| secret.expose_secret().len())
    }

    /// `text` with every credential replaced. When `cut` says the text was cut off, a tail
    /// that may be the start of a credential is dropped too.
    pub(crate) fn scrub(&self, text: &str, cut: bool) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            let secret = secret.expose_secret();
            if text.contains(secret) {
                text = text.replace(secret, SCRUBBED);
            }
        }
        if cut {
            for secret in &self.secrets {
                let secret = secret.expose_secret();
                // The longest start of the credential that the text ends with.
                let partial = secret
                    .char_indices()
                    .map(|(index, _)| index)
                    .skip(1)
                    .filter(|&index| text.ends_with(&secret[..index]))
                    .last();
                if let Some(length) = partial {
                    text.truncate(text.len() - length);
                    text.push_str(SCRUBBED);
                }
            }
        }
        text
    }
}

impl HttpSink {
    pub(crate) fn open(name: &str, settings: &HttpSinkSettings) -> Result<HttpSink, SinkError> {
        let invalid = |key: &str, problem: String| {
            SinkError::permanent(format!("sinks.{name}.{key}: {problem}"))
        };
        let url = reqwest::Url::parse(&settings.url)
            .map_err(|e| invalid("url", format!("is not a URL: {e}")))?;
        let key = match &settings.secret {
            Some(secret) => Some(SecretSlice::from(
                decode_secret(secret.expose_secret()).map_err(|p| invalid("secret", p))?,
            )),
            None => None,
        };
        let mut headers = HeaderMap::new();
        for (header, value) in &settings.headers {
            check_header(header, value.expose_secret())
                .map_err(|p| invalid(&format!("headers.{header}"), p))?;
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| invalid("headers", format!("{header:?} is not a header name")))?;
            let mut value = HeaderValue::from_str(value.expose_secret())
                .map_err(|_| invalid(&format!("headers.{header}"), "bad value".to_string()))?;
            // Static headers often carry credentials: keep them out of any debug output.
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            // A redirected POST would silently turn into a GET elsewhere: refuse instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("attio-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError::permanent(format!("sinks.{name}: cannot build client: {e}")))?;
        Ok(HttpSink {
            client,
            url,
            key,
            headers,
            scrubber: Scrubber::for_sink(settings),
            timeout: settings.timeout,
            limit: settings
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
        })
    }

    pub(crate) async fn deliver(&self, line: &SinkLine, attempt: u32) -> Result<(), SinkError> {
        let _permit = match &self.limit {
            Some(limit) => Some(
                limit
                    .acquire()
                    .await
                    .map_err(|_| SinkError::transient("sink is shutting down"))?,
            ),
            None => None,
        };
        let timestamp = chrono::Utc::now().timestamp();
        let id = HeaderValue::from_str(&line.id).map_err(|_| {
            SinkError::permanent("the event id cannot be sent as a webhook-id header")
        })?;
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp)
            .header(ATTEMPT_HEADER, attempt);
        if let Some(key) = &self.key {
            let signature = signature(key.expose_secret(), &line.id, timestamp, &line.json)?;
            request = request.header("webhook-signature", signature);
        }
        let response = request
            .body(line.json.clone())
            .send()
            .await
            .map_err(|error| self.request_error(error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        let excerpt = error_excerpt(response, &self.scrubber).await;
        let message = format!("receiver answered {status}{excerpt}");
        if status.as_u16() == 429 || status.is_server_error() {
            let error = SinkError::transient(message);
            Err(match retry_after {
                Some(delay) => error.with_retry_after(delay),
                None => error,
            })
        } else if status.is_redirection() {
            Err(SinkError::permanent(format!(
                "{message}; redirects are not followed, configure the final URL"
            )))
        } else {
            Err(SinkError::permanent(message))
        }
    }

    fn request_error(&self, error: reqwest::Error) -> SinkError {
        // The URL may carry a token in its query: never repeat it.
        let error = error.without_url();
        if error.is_timeout() {
            SinkError::transient(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ))
        } else if error.is_connect() {
            SinkError::transient(format!("cannot connect: {}", error_chain(&error)))
        } else {
            SinkError::transient(format!("request failed: {}", error_chain(&error)))
        }
    }
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    (delay <= MAX_RETRY_AFTER).then_some(delay)
}

/// The start of a refusing receiver's answer, scrubbed of credentials, on one line, for the
/// error message.
async fn error_excerpt(mut response: reqwest::Response, scrubber: &Scrubber) -> String {
    // Read past the limit by the longest credential, so that one starting before the limit is
    // whole when it is scrubbed.
    let wanted = ERROR_BODY_LIMIT * 4 + scrubber.longest();
    let mut body = Vec::new();
    let mut cut = false;
    loop {
        if body.len() >= wanted {
            cut = true;
            break;
        }
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    let text = scrubber.scrub(&String::from_utf8_lossy(&body), cut);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_BODY_LIMIT)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_secrets_are_decoded_and_others_refused() {
        assert_eq!(
            decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            BASE64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
        );
        let error = decode_secret("plain-text-secret").unwrap_err();
        assert!(error.contains("whsec_") && !error.contains("plain-text-secret"));
        assert!(decode_secret("whsec_not*base64").is_err());
        assert!(decode_secret("whsec_").is_err());
    }

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification and its reference libraries.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    fn sink_with_credentials() -> HttpSinkSettings {
        HttpSinkSettings {
            url: "https://user:url-password@hooks.test/in?token=query-token".to_string(),
            secret: Some(SecretString::from(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
            )),
            headers: [
                ("Authorization", "Bearer header-token-1"),
                ("X-Api-Key", "key\"with-quote"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), SecretString::from(v.to_string())))
            .collect(),
            timeout: Duration::from_secs(1),
            max_concurrency: None,
        }
    }

    #[test]
    fn echoed_credentials_are_scrubbed_whole_in_part_and_json_escaped() {
        let scrubber = Scrubber::for_sink(&sink_with_credentials());
        let echoed = r#"{"authorization":"Bearer header-token-1","token":"header-token-1",
            "x-api-key":"key\"with-quote","secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "key":"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","url":"/in?token=query-token",
            "password":"url-password"}"#;
        let scrubbed = scrubber.scrub(echoed, false);
        for secret in [
            "header-token-1",
            "with-quote",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "query-token",
            "url-password",
        ] {
            assert!(!scrubbed.contains(secret), "{secret}: {scrubbed}");
        }
        assert!(
            scrubbed.contains("\"authorization\":\"[redacted]\""),
            "{scrubbed}"
        );
    }

    #[test]
    fn a_credential_cut_off_at_the_end_of_what_was_read_is_scrubbed_too() {
        let scrubber = Scrubber::for_sink(&sink_with_credentials());
        let scrubbed = scrubber.scrub("refused: Bearer header-tok", true);
        assert_eq!(scrubbed, "refused: [redacted]");
        // Text that was read to its end keeps its last word.
        assert_eq!(scrubber.scrub("refused: Bear", false), "refused: Bear");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let delay = retry_after(&headers).unwrap();
        assert!(delay > Duration::from_secs(25) && delay <= Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
