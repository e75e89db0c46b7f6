//! attio-webhooks: receive Attio webhooks, verify them, keep them durably, deduplicate them,
//! route them, and deliver them to the team's own systems.
//!
//! ```text
//! Attio ──POST──► ingress ──► verify ──► journal ──200──► Attio
//!                 (axum)      (HMAC,     (durable,
//!                              raw body)  group commit)
//!                                           │ tokio channel (wake-up / hand-off)
//!                                           ▼
//!                sinks ◄── enrich ◄── route ◄── dedupe ◄── worker
//!                          (Attio REST:
//!                           rate-limited,
//!                           retrying, cached)
//! ```
//!
//! Modules, in the order an event meets them:
//! - `config`: layered settings (embedded defaults < files < environment), checked at start and
//!   parsed into what the daemon runs with (`config::load`, `config::validate`); the settings of
//!   routes and sinks are their own modules' (`routing::settings`, `sinks::settings`).
//! - `redact`, `settings_format`: leaves under every settings type: what of a setting may be
//!   shown (URLs without credentials, secrets as markers), and durations written with a unit.
//! - `ingress`: the HTTP edge: webhook endpoint, health and readiness, errors → status codes.
//! - `signature`: Attio's HMAC-SHA256 over the raw body; the only maker of a `VerifiedBody`.
//! - `event`: the delivery envelope, event kinds (with `Unknown`), event identity, where each
//!   kind carries its object / list / attribute.
//! - `signature::properties`, `event::properties` (tests, and feature `fuzzing`): the promises
//!   of both as checks shared by the property tests and the fuzz targets in `fuzz/`.
//! - `journal`: durable store of accepted deliveries (SQLite, whose writer keeps a transaction
//!   open over many batches and makes each batch durable in a redo log, `journal::redo`; or a Redis
//!   stream shared by replicas), dead letters, signed bodies that were not deliveries
//!   (`journal::repair`: check and recover a damaged SQLite journal), and the event history
//!   with its one query interface (`journal::history`). Both backends keep one contract
//!   (`journal::Backend`, tested on both by `tests/it/journal_contract.rs`).
//! - `worker`: takes events from the channel and the journal, reads each one once into a work
//!   item (`worker::item`) and drives it to the sinks, one module per stage (`worker::claim`,
//!   `worker::route`, `worker::deliver`, `worker::settle`; `worker::backoff`: when an event comes
//!   back and when it is dead;
//!   `worker::collapse`: one line for the updates that shared a fetch, on `collapse = true` routes;
//!   `worker::send`: one line to one sink, for both of them;
//!   `worker::order`: the events of one delivery about one record reach the sinks in their order;
//!   `worker::outage`: a dependency that is down is logged once per outage, not per event;
//!   `worker::unrecorded`: outcomes the journal could not record, kept until it can).
//! - `dedupe`: two-phase claim → done, on Redis or embedded.
//! - `routing`: rules that match events to sinks (event-type patterns, `object` / `list` /
//!   `attribute` keys, Attio-style filters).
//! - `enrich`: re-fetch what each event is about; resolve object/list/attribute slugs.
//! - `attio`: the only module that speaks Attio's REST API (client, retry, rate limit, breaker,
//!   models, schema cache).
//! - `sinks`: one file per sink kind (jsonl/stdout, http, redis_stream, command, postgres).
//! - `mirror`: what the `postgres` sink and `sync` keep in PostgreSQL: tables and typed views
//!   equal to Attio (settings, SQL store with embedded migrations, view mapping, sync).
//! - `api`: the events API (`/api/v1`: history, replay, unparsed, status, stream) and who may
//!   use it (`api::auth`: admin token, console sessions, throttled failures, same-origin
//!   mutations).
//! - `console`: the web console (`/console`), server-rendered pages over the API.
//! - `app`: builds the daemon from settings; graceful shutdown.
//! - `telemetry`: logging (`serve` writes from a thread of its own, so a stalled stderr drops
//!   lines instead of stalling the daemon).
//! - `metrics`: Prometheus registry and metric names.
//! - `threads`: the helper threads (journal writer, line sinks), which do not preempt the async
//!   thread that wakes them.
//! - `cli`: the command line: `serve`, `events list|show|tail|replay`, `dead-letters list|show|replay`, `unparsed list|show|delete`,
//!   `journal check|recover`,
//!   `webhooks list|get|create|update|delete` (Attio subscriptions), `sync` (fill and
//!   reconcile a `postgres` sink from Attio), and the developer tools
//!   `send`, `sign`, `verify`, `check-config`.

#![warn(unreachable_pub)]

pub(crate) mod api;
pub mod app;
pub mod attio;
pub mod cli;
pub mod config;
pub(crate) mod console;
pub mod dedupe;
pub(crate) mod enrich;
pub mod event;
pub(crate) mod ingress;
pub mod journal;
pub(crate) mod metrics;
pub mod mirror;
pub(crate) mod redact;
pub(crate) mod routing;
mod settings_format;
pub mod signature;
pub mod sinks;
pub(crate) mod telemetry;
pub(crate) mod threads;
pub(crate) mod worker;
