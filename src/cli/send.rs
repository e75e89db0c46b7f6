//! `attio-webhooks send`: post correctly signed deliveries to a receiver, as Attio would.
//!
//! In: an event type (or a pattern such as `record.*`) whose bundled template is filled with
//! fresh UUIDs, or a file sent byte for byte; a secret; a target URL (default: the local
//! daemon's address from the settings). Out: the receiver's status and body on stdout, or, with
//! `--count N`, a summary (statuses, rate, latency percentiles). Exit 0 only when every delivery
//! was answered 2xx.
//!
//! `--count` is also the benchmark's load generator: one HTTP/1.1 client with a connection pool
//! shared by `--concurrency` tasks, each rendering, signing and posting its own deliveries.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::secret::{self, SecretSource};
use super::templates::{event_types_for, Fixed, FixedIds, Template, TemplateError};
use crate::config::{LoadOptions, Settings};
use crate::signature::sign;

/// The User-Agent Attio's deliveries carry (docs/attio.md §1).
pub(crate) const ATTIO_USER_AGENT: &str = "Attio 2.0 (https://attio.com/developers/using-webhooks)";

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Event type to send (`record.updated`), or a pattern (`record.*`, `*`) for one of each
    /// matching type.
    #[arg(
        value_name = "EVENT_TYPE",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub(crate) event_type: Option<String>,

    /// Send this file's bytes exactly as they are instead of a template.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,

    /// Where to post. Default: the daemon from the settings, http://{server.listen}{server.path}.
    #[arg(long, value_name = "URL")]
    pub(crate) to: Option<String>,

    /// Signing secret. Default: ATTIO_WEBHOOK_SECRET (the first, if it lists several); outside
    /// production, the configured secret (the development secret in development).
    #[arg(long, value_name = "SECRET", hide_default_value = true)]
    pub(crate) secret: Option<SecretString>,

    /// Use this Idempotency-Key instead of a fresh one (the same key twice tests deduplication;
    /// with --count, every copy is the same delivery, as an Attio retry would be).
    #[arg(long, value_name = "KEY")]
    pub(crate) idempotency_key: Option<String>,

    /// Number of deliveries to send, each with its own Idempotency-Key and fresh ids
    /// [default: 1, or one per type for a pattern].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,

    /// Deliveries in flight at once (connections) when --count is above 1.
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) concurrency: u64,

    /// How long to wait for each answer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,

    /// Print the deliveries (headers on stderr, bodies on stdout) instead of sending them.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Print the result as JSON (status and body, or the --count summary).
    #[arg(long)]
    pub(crate) json: bool,

    /// Also trust the certificates in this PEM file for an https:// target (a staging proxy
    /// with a self-signed certificate or a private CA).
    #[arg(long, value_name = "FILE")]
    pub(crate) cacert: Option<PathBuf>,

    /// Do not check the https:// target's certificate at all (prints a warning). For throwaway
    /// test setups only: prefer --cacert.
    #[arg(long)]
    pub(crate) insecure: bool,

    #[command(flatten)]
    pub(crate) ids: IdArgs,
}

/// Ids to fix instead of fresh UUIDs. The webhook, workspace and actor stay the same for a whole
/// run; every other id is fresh for each delivery unless given here.
#[derive(Debug, Args)]
#[command(next_help_heading = "Ids (default: fresh UUIDs)")]
pub(crate) struct IdArgs {
    /// The envelope's webhook_id (one value for the whole run).
    #[arg(long, value_name = "ID")]
    pub(crate) webhook_id: Option<String>,
    /// id.workspace_id (one value for the whole run).
    #[arg(long, value_name = "ID")]
    pub(crate) workspace_id: Option<String>,
    /// Object id (also the parent object of list entries and notes, and a comment's object).
    #[arg(long, value_name = "ID")]
    pub(crate) object_id: Option<String>,
    /// Record id (also the parent record of list entries and notes, and a comment's record).
    #[arg(long, value_name = "ID")]
    pub(crate) record_id: Option<String>,
    /// id.attribute_id (record.updated, list-entry.updated, *-attribute.* events).
    #[arg(long, value_name = "ID")]
    pub(crate) attribute_id: Option<String>,
    /// The record merged away by record.merged.
    #[arg(long, value_name = "ID")]
    pub(crate) duplicate_record_id: Option<String>,
    /// List id (comments: null unless given).
    #[arg(long, value_name = "ID")]
    pub(crate) list_id: Option<String>,
    /// Entry id (comments: null unless given).
    #[arg(long, value_name = "ID")]
    pub(crate) entry_id: Option<String>,
    /// id.note_id (note.* and note-content.* events).
    #[arg(long, value_name = "ID")]
    pub(crate) note_id: Option<String>,
    /// id.task_id (task.* events).
    #[arg(long, value_name = "ID")]
    pub(crate) task_id: Option<String>,
    /// id.comment_id (comment.* events).
    #[arg(long, value_name = "ID")]
    pub(crate) comment_id: Option<String>,
    /// A comment's thread_id (comment.* events).
    #[arg(long, value_name = "ID")]
    pub(crate) thread_id: Option<String>,
    /// id.workspace_member_id (workspace-member.created).
    #[arg(long, value_name = "ID")]
    pub(crate) workspace_member_id: Option<String>,
    /// id.meeting_id (call-recording.created).
    #[arg(long, value_name = "ID")]
    pub(crate) meeting_id: Option<String>,
    /// id.call_recording_id (call-recording.created).
    #[arg(long, value_name = "ID")]
    pub(crate) call_recording_id: Option<String>,
    /// id.activity_id (activity-attribute.* events).
    #[arg(long, value_name = "ID")]
    pub(crate) activity_id: Option<String>,
    /// actor.type: workspace-member, api-token, system, app, ...
    #[arg(long, value_name = "TYPE", default_value = "workspace-member")]
    pub(crate) actor_type: String,
    /// actor.id (default: a fresh UUID; null for --actor-type system).
    #[arg(long, value_name = "ID")]
    pub(crate) actor_id: Option<String>,
}

impl IdArgs {
    /// The values fixed for the whole run.
    fn fixed(&self) -> FixedIds {
        let mut fixed = FixedIds::for_one_run();
        fixed.set("actor_type", Fixed::Value(self.actor_type.clone()));
        match (&self.actor_id, self.actor_type.as_str()) {
            (Some(id), _) => fixed.set("actor_id", Fixed::Value(id.clone())),
            // Attio sends `"id": null` for the system actor (docs/attio.md §2).
            (None, "system") => fixed.set("actor_id", Fixed::Null),
            (None, _) => {}
        }
        let optional = [
            ("webhook_id", &self.webhook_id),
            ("workspace_id", &self.workspace_id),
            ("object_id", &self.object_id),
            ("record_id", &self.record_id),
            ("attribute_id", &self.attribute_id),
            ("duplicate_record_id", &self.duplicate_record_id),
            ("list_id", &self.list_id),
            ("entry_id", &self.entry_id),
            ("note_id", &self.note_id),
            ("task_id", &self.task_id),
            ("comment_id", &self.comment_id),
            ("thread_id", &self.thread_id),
            ("workspace_member_id", &self.workspace_member_id),
            ("meeting_id", &self.meeting_id),
            ("call_recording_id", &self.call_recording_id),
            ("activity_id", &self.activity_id),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                fixed.set(name, Fixed::Value(value.clone()));
            }
        }
        fixed
    }
}

/// Why `send` could not start. All are permanent: fix the command line or the settings.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot work out the daemon's address because the configuration does not load ({0}); \
         pass --to URL"
    )]
    NoTarget(String),
    #[error("--to {0:?} is not an http:// or https:// URL")]
    BadTarget(String),
    #[error(
        "no secret to sign with: pass --secret or set ATTIO_WEBHOOK_SECRET (APP_ENV=production \
         never falls back to a configured secret)"
    )]
    NoSecret,
    #[error("--idempotency-key names one delivery, so it needs one event type, not a pattern")]
    KeyWithPattern,
    #[error(
        "--cacert {path}: no PEM certificate could be read from it ({reason}); give the \
         receiver's certificate (or its CA's) as a PEM file (-----BEGIN CERTIFICATE-----)"
    )]
    BadCertificate { path: String, reason: String },
    #[error("cannot build the HTTP client: {}", error_chain(.0))]
    Client(#[source] reqwest::Error),
}

/// What each delivery's body is.
enum Bodies {
    /// The same bytes every time (a file, or a template rendered once for a fixed key).
    Same(Bytes, Option<&'static str>),
    /// Templates rendered afresh for each delivery, cycling through the types.
    Rendered(Vec<Template>, FixedIds),
}

impl Bodies {
    fn body(&self, index: u64) -> (Bytes, Option<&'static str>) {
        match self {
            Bodies::Same(bytes, event_type) => (bytes.clone(), *event_type),
            Bodies::Rendered(templates, fixed) => {
                // `templates` is never empty: a pattern matching nothing is refused earlier.
                let template = &templates[(index % templates.len() as u64) as usize];
                (
                    Bytes::from(template.render(fixed)),
                    Some(template.event_type()),
                )
            }
        }
    }

    fn label(&self) -> String {
        match self {
            Bodies::Same(_, Some(event_type)) => (*event_type).to_string(),
            Bodies::Same(_, None) => "file".to_string(),
            Bodies::Rendered(templates, _) if templates.len() == 1 => {
                templates[0].event_type().to_string()
            }
            Bodies::Rendered(templates, _) => format!("{} event types", templates.len()),
        }
    }
}

struct Plan {
    url: String,
    secret: SecretString,
    secret_source: SecretSource,
    bodies: Bodies,
    idempotency_key: Option<String>,
    count: u64,
    concurrency: u64,
    timeout: Duration,
    /// Extra trusted certificates (`--cacert`).
    certificates: Vec<reqwest::Certificate>,
    /// `--insecure`: the target's certificate is not checked.
    insecure: bool,
}

pub(crate) fn run(args: SendArgs, options: LoadOptions) -> ExitCode {
    let plan = match plan(&args, &options) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if args.dry_run {
        return dry_run(&plan);
    }
    let runtime = match super::multi_thread_runtime(None) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let client = match client(&plan) {
            Ok(client) => client,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
        if plan.count == 1 {
            send_one(&client, &plan, args.json).await
        } else {
            send_many(client, plan, args.json).await
        }
    })
}

fn plan(args: &SendArgs, options: &LoadOptions) -> Result<Plan, SendError> {
    let bodies = match (&args.file, &args.event_type) {
        (Some(path), _) => {
            let bytes = std::fs::read(path).map_err(|source| SendError::ReadFile {
                path: path.display().to_string(),
                source,
            })?;
            Bodies::Same(Bytes::from(bytes), None)
        }
        (None, Some(spec)) => {
            let templates = event_types_for(spec)?
                .into_iter()
                .map(Template::bundled)
                .collect::<Result<Vec<_>, _>>()?;
            let fixed = args.ids.fixed();
            match (&args.idempotency_key, templates.as_slice()) {
                // A fixed key names one delivery: every copy must be the same bytes, as
                // Attio's retries are.
                (Some(_), [template]) => Bodies::Same(
                    Bytes::from(template.render(&fixed)),
                    Some(template.event_type()),
                ),
                (Some(_), _) => return Err(SendError::KeyWithPattern),
                (None, _) => Bodies::Rendered(templates, fixed),
            }
        }
        // clap requires one of the two.
        (None, None) => {
            return Err(SendError::Template(TemplateError::UnknownEventType(
                "give an EVENT_TYPE or --file".to_string(),
            )))
        }
    };
    let count = args.count.unwrap_or(match &bodies {
        Bodies::Rendered(templates, _) => templates.len() as u64,
        Bodies::Same(..) => 1,
    });

    // The settings are only needed for the default target and the development secret. A
    // missing secret is not an error here: it may come from --secret.
    let settings = if args.to.is_none() || args.secret.is_none() {
        Some(Settings::load_without_secret(options))
    } else {
        None
    };
    let url = match &args.to {
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(SendError::BadTarget(url.clone()));
            }
            url.clone()
        }
        None => match &settings {
            Some(Ok(settings)) => daemon_url(settings),
            Some(Err(error)) => return Err(SendError::NoTarget(error.to_string())),
            None => return Err(SendError::NoTarget("not loaded".to_string())),
        },
    };

    let (mut secrets, secret_source) =
        secret::given_or_configured(args.secret.clone(), || match settings {
            Some(Ok(settings)) => Ok(settings),
            Some(Err(error)) => Err(error),
            None => Settings::load_without_secret(options),
        })
        .map_err(|_| SendError::NoSecret)?;
    if secrets.len() > 1 {
        eprintln!(
            "note: {} lists {} secrets; signing with the first",
            secret_source.describe(),
            secrets.len()
        );
    }
    // `given_or_configured` never returns an empty list.
    if secrets.is_empty() {
        return Err(SendError::NoSecret);
    }
    let secret = secrets.swap_remove(0);

    let certificates = match &args.cacert {
        Some(path) => certificates(path)?,
        None => Vec::new(),
    };

    Ok(Plan {
        url,
        secret,
        secret_source,
        bodies,
        idempotency_key: args.idempotency_key.clone(),
        count,
        concurrency: args.concurrency.min(count),
        timeout: args.timeout,
        certificates,
        insecure: args.insecure,
    })
}

/// The certificates of a `--cacert` PEM file (one, or a bundle).
fn certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, SendError> {
    let bytes = std::fs::read(path).map_err(|source| SendError::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    let bad = |reason: String| SendError::BadCertificate {
        path: path.display().to_string(),
        reason,
    };
    let certificates =
        reqwest::Certificate::from_pem_bundle(&bytes).map_err(|error| bad(error_chain(&error)))?;
    if certificates.is_empty() {
        return Err(bad("it holds no certificate".to_string()));
    }
    Ok(certificates)
}

/// The daemon's webhook URL from its settings. A wildcard listen address (0.0.0.0) is reached
/// through loopback.
pub(crate) fn daemon_url(settings: &Settings) -> String {
    let host = match settings.listen_addr() {
        Ok(addr) if addr.ip().is_unspecified() => {
            let loopback = match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(loopback, addr.port()).to_string()
        }
        Ok(addr) => addr.to_string(),
        Err(_) => settings.server.listen.clone(),
    };
    format!("http://{host}{}", settings.server.path)
}

fn client(plan: &Plan) -> Result<reqwest::Client, SendError> {
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .no_gzip()
        .user_agent(ATTIO_USER_AGENT)
        .timeout(plan.timeout)
        .pool_max_idle_per_host(plan.concurrency as usize)
        .tcp_nodelay(true)
        .tls_certs_merge(plan.certificates.iter().cloned());
    if plan.insecure {
        eprintln!(
            "warning: --insecure: the receiver's certificate is not checked, so anyone between \
             here and {} can read and change these deliveries; use --cacert FILE outside a \
             throwaway test setup",
            plan.url
        );
        builder = builder
            .tls_danger_accept_invalid_certs(true)
            .tls_danger_accept_invalid_hostnames(true);
    }
    builder.build().map_err(SendError::Client)
}

/// The headers of one delivery, as Attio sends them.
fn request(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    signature: &str,
    key: &str,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Attio-Signature", signature)
        // Attio sends the legacy copy too (docs/attio.md §1).
        .header("X-Attio-Signature", signature)
        .header("Idempotency-Key", key)
        .body(body)
}

fn delivery_key(plan: &Plan) -> String {
    plan.idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn dry_run(plan: &Plan) -> ExitCode {
    for index in 0..plan.count {
        let (body, _) = plan.bodies.body(index);
        let signature = sign(plan.secret.expose_secret(), &body);
        eprintln!(
            "POST {}\nContent-Type: application/json\nUser-Agent: {ATTIO_USER_AGENT}\n\
             Attio-Signature: {signature}\nX-Attio-Signature: {signature}\nIdempotency-Key: {}\n",
            plan.url,
            delivery_key(plan)
        );
        println!("{}", String::from_utf8_lossy(&body));
    }
    ExitCode::SUCCESS
}

async fn send_one(client: &reqwest::Client, plan: &Plan, json: bool) -> ExitCode {
    let (body, event_type) = plan.bodies.body(0);
    let key = delivery_key(plan);
    let signature = sign(plan.secret.expose_secret(), &body);
    eprintln!(
        "POST {} ({}, Idempotency-Key {key})",
        plan.url,
        event_type.unwrap_or("file")
    );
    let started = Instant::now();
    let response = match request(client, &plan.url, body, &signature, &key)
        .send()
        .await
    {
        Ok(response) => response,
        Err(error) => {
            eprintln!("error: {}", transport_problem(&plan.url, &error));
            return ExitCode::FAILURE;
        }
    };
    let status = response.status();
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => {
            eprintln!("error: the answer's body could not be read: {error}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = started.elapsed();
    if json {
        let body = serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or(serde_json::Value::String(text.clone()));
        println!(
            "{}",
            serde_json::json!({
                "status": status.as_u16(),
                "body": body,
                "idempotency_key": key,
                "latency_ms": elapsed.as_secs_f64() * 1000.0,
            })
        );
    } else {
        println!("{status} in {}", format_duration(elapsed));
        if !text.is_empty() {
            println!("{text}");
        }
    }
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {}", status_problem(status, plan.secret_source));
        ExitCode::FAILURE
    }
}

/// What a worker task saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_transport_error: Option<String>,
    first_failure_body: BTreeMap<u16, String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error;
        }
        for (status, body) in other.first_failure_body {
            self.first_failure_body.entry(status).or_insert(body);
        }
    }
}

async fn send_many(client: reqwest::Client, plan: Plan, json: bool) -> ExitCode {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    // Set when the target refuses connections: sending the rest would only repeat that.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency {
        let client = client.clone();
        let plan = Arc::clone(&plan);
        let next = Arc::clone(&next);
        let stop = Arc::clone(&stop);
        tasks.spawn(async move {
            let mut tally = Tally {
                latencies: Vec::with_capacity((plan.count / plan.concurrency + 1) as usize),
                ..Tally::default()
            };
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= plan.count {
                    break;
                }
                let (body, _) = plan.bodies.body(index);
                let signature = sign(plan.secret.expose_secret(), &body);
                let key = delivery_key(&plan);
                let sent = Instant::now();
                let result = request(&client, &plan.url, body, &signature, &key)
                    .send()
                    .await;
                match result {
                    Ok(response) => {
                        let status = response.status();
                        // Read the whole answer so the connection goes back to the pool.
                        let text = response.bytes().await;
                        tally.latencies.push(sent.elapsed());
                        *tally.statuses.entry(status.as_u16()).or_default() += 1;
                        if !status.is_success() {
                            if let Ok(text) = text {
                                tally
                                    .first_failure_body
                                    .entry(status.as_u16())
                                    .or_insert_with(|| String::from_utf8_lossy(&text).into_owned());
                            }
                        }
                    }
                    Err(error) => {
                        if error.is_connect() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        tally.transport_errors += 1;
                        if tally.first_transport_error.is_none() {
                            tally.first_transport_error =
                                Some(transport_problem(&plan.url, &error));
                        }
                    }
                }
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(part) => tally.merge(part),
            Err(error) => {
                eprintln!("error: a sending task failed: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let elapsed = started.elapsed();
    let summary = Summary::new(&plan, &mut tally, elapsed);
    if json {
        match serde_json::to_string(&summary) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("error: cannot print the summary: {error}"),
        }
    } else {
        summary.print();
    }
    let failed = summary.failed;
    for (status, body) in &tally.first_failure_body {
        if let Ok(status) = StatusCode::from_u16(*status) {
            eprintln!(
                "error: {} (first answer: {body})",
                status_problem(status, plan.secret_source)
            );
        }
    }
    if let Some(problem) = &tally.first_transport_error {
        eprintln!("error: {problem}");
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    url: String,
    events: String,
    requested: u64,
    /// Requests that went out (answered or not).
    sent: u64,
    /// Deliveries answered 2xx.
    succeeded: u64,
    /// Deliveries answered otherwise, or not at all, or never sent.
    failed: u64,
    /// Deliveries not attempted because the target refused connections.
    not_sent: u64,
    concurrency: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    seconds: f64,
    /// Answers (of any status) per second; 0 when nothing answered.
    per_second: f64,
    latency_ms: Percentiles,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn new(plan: &Plan, tally: &mut Tally, elapsed: Duration) -> Summary {
        tally.latencies.sort_unstable();
        let percentile = |q: f64| -> f64 {
            let n = tally.latencies.len();
            if n == 0 {
                return 0.0;
            }
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            tally.latencies[rank - 1].as_secs_f64() * 1000.0
        };
        let answered = tally.statuses.values().sum::<u64>();
        let sent = answered + tally.transport_errors;
        let succeeded = tally
            .statuses
            .iter()
            .filter(|(status, _)| (200..300).contains(*status))
            .map(|(_, count)| count)
            .sum::<u64>();
        let seconds = elapsed.as_secs_f64();
        Summary {
            url: plan.url.clone(),
            events: plan.bodies.label(),
            requested: plan.count,
            sent,
            succeeded,
            failed: plan.count.saturating_sub(succeeded),
            not_sent: plan.count.saturating_sub(sent),
            concurrency: plan.concurrency,
            statuses: tally.statuses.clone(),
            transport_errors: tally.transport_errors,
            seconds,
            // A request that got no answer is not throughput: counting it made a run against a
            // dead target look fast.
            per_second: if seconds > 0.0 {
                answered as f64 / seconds
            } else {
                0.0
            },
            latency_ms: Percentiles {
                p50: percentile(0.50),
                p90: percentile(0.90),
                p99: percentile(0.99),
                max: percentile(1.0),
            },
        }
    }

    fn print(&self) {
        if self.failed == 0 {
            println!(
                "sent {} deliveries ({}) to {} over {} connections in {:.2}s",
                self.sent, self.events, self.url, self.concurrency, self.seconds
            );
        } else {
            println!(
                "FAILED: {} of {} deliveries ({}) to {} were not accepted ({} accepted, {} \
                 answered otherwise, {} got no answer, {} not sent) over {} connections in \
                 {:.2}s",
                self.failed,
                self.requested,
                self.events,
                self.url,
                self.succeeded,
                self.sent - self.transport_errors - self.succeeded,
                self.transport_errors,
                self.not_sent,
                self.concurrency,
                self.seconds
            );
        }
        let mut statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| {
                let reason = StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                format!("{status} {reason}: {count}")
            })
            .collect();
        if self.transport_errors > 0 {
            statuses.push(format!("no answer: {}", self.transport_errors));
        }
        println!("status:  {}", statuses.join(", "));
        if self.not_sent > 0 {
            println!(
                "stopped: {} of {} not sent (the target refused connections)",
                self.not_sent, self.requested
            );
        }
        if self.statuses.is_empty() {
            println!("rate:    n/a (no answers)");
            println!("latency: n/a (no answers)");
        } else {
            // Every answer was a delivery accepted only when nothing failed.
            let unit = if self.failed == 0 {
                "deliveries/s"
            } else {
                "answers/s"
            };
            println!("rate:    {:.0} {unit}", self.per_second);
            println!(
                "latency: p50 {:.2}ms  p90 {:.2}ms  p99 {:.2}ms  max {:.2}ms",
                self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
            );
        }
    }
}

fn format_duration(duration: Duration) -> String {
    format!("{:.1}ms", duration.as_secs_f64() * 1000.0)
}

/// A non-2xx answer, explained.
fn status_problem(status: StatusCode, secret_source: SecretSource) -> String {
    match status.as_u16() {
        401 => format!(
            "the daemon refused the signature ({status}): check the secret; {} must be one of \
             the daemon's webhook.secrets (ATTIO_WEBHOOK_SECRET)",
            secret_source.describe()
        ),
        404 => format!(
            "{status}: nothing listens on that path; the daemon's webhook path is server.path \
             (default /webhooks/attio)"
        ),
        413 => format!("{status}: the body is larger than the daemon's server.body_limit"),
        503 => format!(
            "{status}: the daemon cannot accept deliveries right now (journal unavailable or \
             backlog full); Attio would retry"
        ),
        _ => format!("the receiver answered {status}"),
    }
}

/// A request that got no answer, explained, with the underlying cause (refused, DNS, TLS).
fn transport_problem(url: &str, error: &reqwest::Error) -> String {
    let cause = error_chain(error);
    if error.is_timeout() {
        format!("no answer from {url} within --timeout ({cause})")
    } else if is_tls_failure(error) {
        format!(
            "the TLS handshake with {url} failed: {cause}; if the receiver's certificate is \
             self-signed or from a private CA, pass --cacert FILE with it (PEM), or --insecure \
             for a throwaway test setup"
        )
    } else if error.is_connect() {
        format!(
            "cannot connect to {url}: {cause}; is the daemon running? Start it with \
             `attio-webhooks serve`, or pass --to URL"
        )
    } else {
        format!("request to {url} failed: {cause}")
    }
}

/// Whether a transport error was the TLS library's: its errors are reached only as boxed
/// sources of reqwest's, so their words are what tells them apart. Only the causes are read,
/// not reqwest's own text, which quotes the URL.
fn is_tls_failure(error: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string().to_ascii_lowercase();
        if ["certificate", "ssl routines", "tls", "handshake"]
            .iter()
            .any(|word| text.contains(word))
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error and its causes on one line: reqwest's own text ("error sending request") hides
/// the part that explains it (connection refused, DNS, a certificate that is not trusted).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        // hyper and reqwest sometimes repeat their cause's text in their own.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_target_is_the_daemons_listen_address_and_path() {
        let settings = Settings::from_toml(
            "test",
            "[webhook]\nsecrets=[\"s\"]\n[server]\nlisten=\"0.0.0.0:9090\"\npath=\"/hooks\"",
        )
        .unwrap();
        assert_eq!(daemon_url(&settings), "http://127.0.0.1:9090/hooks");
        let settings = Settings::from_toml("test", "[webhook]\nsecrets=[\"s\"]").unwrap();
        assert_eq!(
            daemon_url(&settings),
            "http://127.0.0.1:8080/webhooks/attio"
        );
    }

    #[derive(Debug, clap::Parser)]
    struct IdsOnly {
        #[command(flatten)]
        ids: IdArgs,
    }

    fn ids(args: &[&str]) -> FixedIds {
        use clap::Parser;
        let mut argv = vec!["send"];
        argv.extend(args);
        IdsOnly::try_parse_from(argv).unwrap().ids.fixed()
    }

    #[test]
    fn a_system_actor_has_a_null_id() {
        let fixed = ids(&["--actor-type", "system", "--record-id", "r"]);
        assert_eq!(fixed.get("actor_id"), Some(&Fixed::Null));
        assert_eq!(fixed.get("record_id"), Some(&Fixed::Value("r".into())));
        assert_eq!(fixed.get("object_id"), None);
    }

    #[test]
    fn every_template_slot_can_be_set_from_the_command_line() {
        let mut argv: Vec<String> = Vec::new();
        for name in crate::cli::templates::ID_NAMES {
            argv.push(format!("--{}", name.replace('_', "-")));
            argv.push(format!("value-of-{name}"));
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let fixed = ids(&argv);
        for name in crate::cli::templates::ID_NAMES {
            assert_eq!(
                fixed.get(name),
                Some(&Fixed::Value(format!("value-of-{name}"))),
                "{name}"
            );
        }
    }
}
