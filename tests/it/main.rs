//! Integration tests: one binary. The daemon runs on port 0 (in-process, or as the real binary
//! where a process boundary matters), against the real Redis on 127.0.0.1:6379, the real PostgreSQL on 127.0.0.1:5432 and, for
//! enrichment, a fake Attio API served by axum on 127.0.0.1:0.

mod fake_attio;
mod fake_workspace;
mod helpers;

mod api;
mod attio_client;
mod attio_edges;
mod cli;
mod configuration;
mod contract;
mod deploy;
mod enrichment;
mod faults;
mod ingress;
mod journal_contract;
mod lifecycle;
mod memory;
mod observability;
mod pipeline;
mod postgres;
mod redis_setup;
mod routing;
mod scale_out;
mod sinks;
mod slow_clients;
mod webhooks_cli;
