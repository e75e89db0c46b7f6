//! The Attio REST client: one `reqwest::Client` per process, rate-limited, retrying, and
//! protected by a circuit breaker.
//!
//! In: typed calls (`get_record`, `list_webhooks`, ...). Out: typed models or an [`AttioError`].
//! Every request, whoever makes it, passes the same gates in this order: the circuit breaker
//! (refuse at once while Attio is down), then [`crate::attio::rate_limit`]: a pause Attio asked
//! for with `Retry-After`, and the rate limits (reads and writes separately, docs/attio.md §6).
//! Transient failures are retried with full-jitter exponential backoff until
//! `attio.retry_total` runs out. The API key lives only inside a sensitive header value; it is
//! never logged nor part of an error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backon::Retryable;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::attio::breaker::{Admission, CircuitBreaker};
use crate::attio::error::{AttioError, Cause};
use crate::attio::models::{
    Attribute, CallRecording, Comment, CreatedWebhook, Envelope, List, ListEntry, NewWebhook, Note,
    Object, Record, Task, TokenInfo, Webhook, WebhookUpdate, WorkspaceMember,
};
use crate::attio::rate_limit::{RateLimits, SharedRateLimit};
use crate::attio::retry::{parse_retry_after, FullJitter};
use crate::config::AttioSettings;

/// Sent with every request, so Attio (and proxies) can tell who is calling.
pub const USER_AGENT: &str = concat!(
    env!("CARGO_PKG_NAME"),
    "/",
    env!("CARGO_PKG_VERSION"),
    " (Attio webhook receiver)"
);

/// Page size used when walking every webhook (Attio allows 10 to 100).
const WEBHOOK_PAGE: u32 = 100;

/// Whether an attribute belongs to an object or a list (the `{target}` of the attribute paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttributeParent {
    Object,
    List,
}

impl AttributeParent {
    fn segment(self) -> &'static str {
        match self {
            AttributeParent::Object => "objects",
            AttributeParent::List => "lists",
        }
    }
}

/// A cheap handle: clones share one connection pool, one rate limiter and one breaker.
#[derive(Clone)]
pub struct AttioClient {
    inner: Arc<Inner>,
    /// Called right before each request of this handle goes out (after the rate limiter).
    on_send: Option<SendHook>,
}

/// See [`AttioClient::on_send`].
pub(crate) type SendHook = Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for AttioClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttioClient")
            .field("base_url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    limits: RateLimits,
    breaker: CircuitBreaker,
    retry_initial: Duration,
    retry_max_delay: Duration,
    retry_total: Duration,
    /// A command that makes a few calls and exits: see [`AttioClient::for_command`].
    one_shot: bool,
}

/// One logical call (possibly several HTTP attempts).
struct Call {
    /// Metric label and log field: method and path template. A `POST .../query` is a read.
    endpoint: &'static str,
    method: Method,
    url: Url,
    body: Option<Bytes>,
}

impl Call {
    /// Attio counts its list endpoints that take a body (`POST .../query`) as reads.
    fn is_read(&self) -> bool {
        self.method == Method::GET || self.endpoint.ends_with("/query")
    }
}

impl AttioClient {
    /// Builds the daemon's client. Fails only on an API key that cannot be an HTTP header value
    /// or a TLS backend that cannot start; the message never contains the key.
    pub fn new(
        settings: &AttioSettings,
        api_key: &SecretString,
    ) -> Result<AttioClient, AttioError> {
        Self::build(settings, api_key, None, false)
    }

    /// [`AttioClient::new`] whose rate limits are shared through Redis with every other process
    /// given the same `shared` settings (replicas), each falling back to its own limits while
    /// Redis does not answer.
    pub fn with_rate_limit(
        settings: &AttioSettings,
        api_key: &SecretString,
        shared: Option<SharedRateLimit>,
    ) -> Result<AttioClient, AttioError> {
        Self::build(settings, api_key, shared, false)
    }

    /// Builds the client of a command that exits when its calls are done (`webhooks list`).
    /// It retries and stops on the breaker like the daemon's, but when it gives up on an
    /// unreachable Attio its error is the last real failure (a refused connection, a DNS or TLS
    /// error), not the breaker's "next try in ...", which means nothing to a process that exits.
    pub(crate) fn for_command(
        settings: &AttioSettings,
        api_key: &SecretString,
    ) -> Result<AttioClient, AttioError> {
        Self::build(settings, api_key, None, true)
    }

    fn build(
        settings: &AttioSettings,
        api_key: &SecretString,
        shared: Option<SharedRateLimit>,
        one_shot: bool,
    ) -> Result<AttioClient, AttioError> {
        let base = Url::parse(&settings.base_url).map_err(|e| {
            AttioError::InvalidRequest(Cause::new(
                format!(
                    "attio.base_url {:?}: {e}",
                    crate::redact::redacted_url(&settings.base_url)
                ),
                e,
            ))
        })?;
        if base.cannot_be_a_base() {
            return Err(AttioError::InvalidRequest(
                format!(
                    "attio.base_url {:?} cannot have paths",
                    crate::redact::redacted_url(&settings.base_url)
                )
                .into(),
            ));
        }
        let mut authorization = HeaderValue::from_str(&format!(
            "Bearer {}",
            api_key.expose_secret().trim()
        ))
        .map_err(|_| {
            AttioError::InvalidRequest(
                "the Attio API key contains characters that cannot be sent in a header".into(),
            )
        })?;
        // Keeps the value out of reqwest's and hyper's Debug output.
        authorization.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, authorization);
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(USER_AGENT)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .gzip(true)
            .build()
            .map_err(|e| {
                AttioError::InvalidRequest(Cause::new(
                    format!("cannot build the HTTP client: {e}"),
                    e,
                ))
            })?;
        Ok(AttioClient {
            inner: Arc::new(Inner {
                http,
                base,
                limits: RateLimits::new(settings, shared.as_ref()),
                breaker: CircuitBreaker::new(
                    settings.breaker_threshold,
                    settings.breaker_cooldown,
                    settings.connect_timeout + settings.request_timeout,
                ),
                retry_initial: settings.retry_initial,
                retry_max_delay: settings.retry_max_delay,
                retry_total: settings.retry_total,
                one_shot,
            }),
            on_send: None,
        })
    }

    /// A handle on the same client that calls `hook` right before each of its requests goes
    /// out, once the rate limiter let it through. Coalescing uses it to know until when an
    /// event may still share a fetch.
    pub(crate) fn on_send(&self, hook: SendHook) -> AttioClient {
        AttioClient {
            inner: self.inner.clone(),
            on_send: Some(hook),
        }
    }

    /// While the circuit breaker is open: how long until Attio is asked again.
    pub fn unavailable_for(&self) -> Option<Duration> {
        self.inner.breaker.open_for()
    }

    // ---- reads used by enrichment (docs/attio.md §2) ----

    pub async fn get_record(&self, object: &str, record_id: &str) -> Result<Record, AttioError> {
        self.get(
            "GET /v2/objects/{object}/records/{record_id}",
            &["v2", "objects", object, "records", record_id],
        )
        .await
    }

    pub async fn get_list_entry(
        &self,
        list: &str,
        entry_id: &str,
    ) -> Result<ListEntry, AttioError> {
        self.get(
            "GET /v2/lists/{list}/entries/{entry_id}",
            &["v2", "lists", list, "entries", entry_id],
        )
        .await
    }

    pub async fn get_note(&self, note_id: &str) -> Result<Note, AttioError> {
        self.get("GET /v2/notes/{note_id}", &["v2", "notes", note_id])
            .await
    }

    pub async fn get_task(&self, task_id: &str) -> Result<Task, AttioError> {
        self.get("GET /v2/tasks/{task_id}", &["v2", "tasks", task_id])
            .await
    }

    pub async fn get_comment(&self, comment_id: &str) -> Result<Comment, AttioError> {
        self.get(
            "GET /v2/comments/{comment_id}",
            &["v2", "comments", comment_id],
        )
        .await
    }

    pub async fn get_list(&self, list: &str) -> Result<List, AttioError> {
        self.get("GET /v2/lists/{list}", &["v2", "lists", list])
            .await
    }

    pub async fn get_object(&self, object: &str) -> Result<Object, AttioError> {
        self.get("GET /v2/objects/{object}", &["v2", "objects", object])
            .await
    }

    pub async fn get_attribute(
        &self,
        parent: AttributeParent,
        parent_id: &str,
        attribute: &str,
    ) -> Result<Attribute, AttioError> {
        self.get(
            "GET /v2/{target}/{identifier}/attributes/{attribute}",
            &["v2", parent.segment(), parent_id, "attributes", attribute],
        )
        .await
    }

    pub async fn get_workspace_member(
        &self,
        workspace_member_id: &str,
    ) -> Result<WorkspaceMember, AttioError> {
        self.get(
            "GET /v2/workspace_members/{workspace_member_id}",
            &["v2", "workspace_members", workspace_member_id],
        )
        .await
    }

    pub async fn get_call_recording(
        &self,
        meeting_id: &str,
        call_recording_id: &str,
    ) -> Result<CallRecording, AttioError> {
        self.get(
            "GET /v2/meetings/{meeting_id}/call_recordings/{call_recording_id}",
            &[
                "v2",
                "meetings",
                meeting_id,
                "call_recordings",
                call_recording_id,
            ],
        )
        .await
    }

    // ---- paged lists, for `sync` (answers kept as JSON: every field Attio sent) ----

    /// One page of an object's records, oldest first.
    pub(crate) async fn query_records(
        &self,
        object: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, AttioError> {
        self.query(
            "POST /v2/objects/{object}/records/query",
            &["v2", "objects", object, "records", "query"],
            limit,
            offset,
        )
        .await
    }

    /// One page of a list's entries, oldest first.
    pub(crate) async fn query_list_entries(
        &self,
        list: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, AttioError> {
        self.query(
            "POST /v2/lists/{list}/entries/query",
            &["v2", "lists", list, "entries", "query"],
            limit,
            offset,
        )
        .await
    }

    /// One page of notes (Attio allows at most 50 per page).
    pub(crate) async fn list_notes(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, AttioError> {
        self.get_page("GET /v2/notes", &["v2", "notes"], limit.min(50), offset)
            .await
    }

    /// One page of tasks, oldest first.
    pub(crate) async fn list_tasks(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, AttioError> {
        self.get_page("GET /v2/tasks", &["v2", "tasks"], limit, offset)
            .await
    }

    /// Every workspace member (one answer, not paged).
    pub(crate) async fn list_workspace_members(&self) -> Result<Vec<Value>, AttioError> {
        self.get("GET /v2/workspace_members", &["v2", "workspace_members"])
            .await
    }

    async fn query(
        &self,
        endpoint: &'static str,
        segments: &[&str],
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, AttioError> {
        let url = self.url(segments, &[])?;
        let body = serde_json::to_vec(&serde_json::json!({
            "limit": limit,
            "offset": offset,
            "sorts": [{"attribute": "created_at", "direction": "asc"}]
        }))
        .map_err(|e| {
            AttioError::InvalidRequest(Cause::new(format!("cannot encode the body: {e}"), e))
        })?;
        let answer = self
            .execute(Call {
                endpoint,
                method: Method::POST,
                url,
                body: Some(Bytes::from(body)),
            })
            .await?;
        decode::<Envelope<Vec<Value>>>(&answer).map(|e| e.data)
    }

    async fn get_page(
        &self,
        endpoint: &'static str,
        segments: &[&str],
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, AttioError> {
        let query = [("limit", limit.to_string()), ("offset", offset.to_string())];
        let url = self.url(segments, &query)?;
        let answer = self
            .execute(Call {
                endpoint,
                method: Method::GET,
                url,
                body: None,
            })
            .await?;
        decode::<Envelope<Vec<Value>>>(&answer).map(|e| e.data)
    }

    // ---- schema, for slug ↔ UUID resolution ----

    pub async fn list_objects(&self) -> Result<Vec<Object>, AttioError> {
        self.get("GET /v2/objects", &["v2", "objects"]).await
    }

    pub async fn list_lists(&self) -> Result<Vec<List>, AttioError> {
        self.get("GET /v2/lists", &["v2", "lists"]).await
    }

    pub async fn list_attributes(
        &self,
        parent: AttributeParent,
        parent_id: &str,
    ) -> Result<Vec<Attribute>, AttioError> {
        self.get(
            "GET /v2/{target}/{identifier}/attributes",
            &["v2", parent.segment(), parent_id, "attributes"],
        )
        .await
    }

    /// `GET /v2/self`: whether the token is valid, and its workspace. Not wrapped in `data`.
    pub async fn identify(&self) -> Result<TokenInfo, AttioError> {
        let url = self.url(&["v2", "self"], &[])?;
        let body = self
            .execute(Call {
                endpoint: "GET /v2/self",
                method: Method::GET,
                url,
                body: None,
            })
            .await?;
        decode(&body)
    }

    // ---- webhook management (docs/attio.md §4) ----

    /// One page of webhooks. `limit` is clamped to Attio's 10..=100.
    pub async fn list_webhooks(&self, limit: u32, offset: u32) -> Result<Vec<Webhook>, AttioError> {
        let query = [
            ("limit", limit.clamp(10, 100).to_string()),
            ("offset", offset.to_string()),
        ];
        let url = self.url(&["v2", "webhooks"], &query)?;
        let body = self
            .execute(Call {
                endpoint: "GET /v2/webhooks",
                method: Method::GET,
                url,
                body: None,
            })
            .await?;
        decode::<Envelope<Vec<Webhook>>>(&body).map(|e| e.data)
    }

    /// Every webhook, walking the pages.
    pub async fn list_all_webhooks(&self) -> Result<Vec<Webhook>, AttioError> {
        let mut all = Vec::new();
        loop {
            let offset = u32::try_from(all.len()).unwrap_or(u32::MAX);
            let page = self.list_webhooks(WEBHOOK_PAGE, offset).await?;
            let full = page.len() as u32 >= WEBHOOK_PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    pub async fn get_webhook(&self, webhook_id: &str) -> Result<Webhook, AttioError> {
        self.get(
            "GET /v2/webhooks/{webhook_id}",
            &["v2", "webhooks", webhook_id],
        )
        .await
    }

    /// Creates a webhook. The answer holds its signing secret, shown by Attio only this once.
    pub async fn create_webhook(&self, webhook: &NewWebhook) -> Result<CreatedWebhook, AttioError> {
        self.send_data(
            "POST /v2/webhooks",
            Method::POST,
            &["v2", "webhooks"],
            webhook,
        )
        .await
    }

    /// Replaces the target URL and/or the whole subscription list.
    pub async fn update_webhook(
        &self,
        webhook_id: &str,
        update: &WebhookUpdate,
    ) -> Result<Webhook, AttioError> {
        self.send_data(
            "PATCH /v2/webhooks/{webhook_id}",
            Method::PATCH,
            &["v2", "webhooks", webhook_id],
            update,
        )
        .await
    }

    pub async fn delete_webhook(&self, webhook_id: &str) -> Result<(), AttioError> {
        let url = self.url(&["v2", "webhooks", webhook_id], &[])?;
        self.execute(Call {
            endpoint: "DELETE /v2/webhooks/{webhook_id}",
            method: Method::DELETE,
            url,
            body: None,
        })
        .await
        .map(|_| ())
    }

    // ---- plumbing ----

    async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        segments: &[&str],
    ) -> Result<T, AttioError> {
        let url = self.url(segments, &[])?;
        let body = self
            .execute(Call {
                endpoint,
                method: Method::GET,
                url,
                body: None,
            })
            .await?;
        decode::<Envelope<T>>(&body).map(|e| e.data)
    }

    async fn send_data<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        segments: &[&str],
        data: &B,
    ) -> Result<T, AttioError> {
        let url = self.url(segments, &[])?;
        let body = serde_json::to_vec(&Envelope { data }).map_err(|e| {
            AttioError::InvalidRequest(Cause::new(format!("cannot encode the body: {e}"), e))
        })?;
        let answer = self
            .execute(Call {
                endpoint,
                method,
                url,
                body: Some(Bytes::from(body)),
            })
            .await?;
        decode::<Envelope<T>>(&answer).map(|e| e.data)
    }

    /// The base URL plus path segments, each percent-encoded (ids come from webhook bodies).
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, AttioError> {
        let mut url = self.inner.base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|_| {
                AttioError::InvalidRequest("attio.base_url cannot have paths".into())
            })?;
            path.pop_if_empty();
            for segment in segments {
                if segment.is_empty() || *segment == "." || *segment == ".." {
                    return Err(AttioError::InvalidRequest(
                        format!("{segment:?} is not a valid id").into(),
                    ));
                }
                path.push(segment);
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// Runs one call with retries of transient failures, within `attio.retry_total`.
    async fn execute(&self, call: Call) -> Result<Bytes, AttioError> {
        let inner = &self.inner;
        let started = Instant::now();
        let endpoint = call.endpoint;
        let call = &call;
        let attempt = || self.attempt(call);
        // The last failure that was retried: what a one-shot command reports when the breaker
        // ends its retries.
        let last_failure: Mutex<Option<AttioError>> = Mutex::new(None);
        let result = attempt
            .retry(FullJitter::new(inner.retry_initial, inner.retry_max_delay))
            .sleep(tokio::time::sleep)
            .when(|error: &AttioError| {
                error.is_transient() && !matches!(error, AttioError::CircuitOpen { .. })
            })
            .adjust(|error: &AttioError, backoff: Option<Duration>| {
                // Attio's own word on when to come back wins over our backoff.
                let delay = error.retry_after().or(backoff)?;
                (started.elapsed() + delay <= inner.retry_total).then_some(delay)
            })
            .notify(|error: &AttioError, delay: Duration| {
                metrics::counter!(crate::metrics::ATTIO_RETRIES, "endpoint" => endpoint)
                    .increment(1);
                tracing::debug!(endpoint, %error, retry_in = ?delay, "Attio request failed; retrying");
                if inner.one_shot {
                    *last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
                }
            })
            .await;
        match result {
            Err(AttioError::CircuitOpen { retry_in }) if inner.one_shot => Err(last_failure
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(AttioError::CircuitOpen { retry_in })),
            other => other,
        }
    }

    /// One HTTP attempt through the breaker, the pause and the rate limiter.
    async fn attempt(&self, call: &Call) -> Result<Bytes, AttioError> {
        let inner = &self.inner;
        if let Admission::Refused { retry_in } = inner.breaker.admit() {
            count(call.endpoint, "circuit_open");
            return Err(AttioError::CircuitOpen { retry_in });
        }
        // Held until the answer is in (or the attempt failed): see `attio::rate_limit`.
        let _slot = inner.limits.wait_for_turn(call.is_read()).await;
        if let Some(hook) = &self.on_send {
            hook();
        }

        let mut request = inner.http.request(call.method.clone(), call.url.clone());
        if let Some(body) = &call.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Err(self.transport_failed(call.endpoint, error)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return Err(self.transport_failed(call.endpoint, error)),
        };
        count(call.endpoint, status.as_str());
        if status.is_success() {
            inner.breaker.record_success();
            return Ok(body);
        }
        let error = AttioError::from_response(status.as_u16(), &body, retry_after);
        if error.is_outage() {
            inner.breaker.record_outage();
        } else {
            inner.breaker.record_success();
        }
        if status.as_u16() == 429 {
            inner.limits.refused(retry_after);
        }
        Err(error)
    }

    fn transport_failed(&self, endpoint: &'static str, error: reqwest::Error) -> AttioError {
        let error = AttioError::from_transport(error);
        count(
            endpoint,
            if matches!(error, AttioError::Timeout) {
                "timeout"
            } else {
                "error"
            },
        );
        if error.is_outage() {
            self.inner.breaker.record_outage();
        }
        error
    }
}

fn count(endpoint: &'static str, status: &str) {
    metrics::counter!(
        crate::metrics::ATTIO_REQUESTS,
        "endpoint" => endpoint,
        "status" => status.to_string()
    )
    .increment(1);
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, AttioError> {
    serde_json::from_slice(body).map_err(|e| AttioError::Decode(Cause::new(e.to_string(), e)))
}
