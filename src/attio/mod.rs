//! The only module that speaks Attio's REST API.
//!
//! In: typed calls from the enrichment stage and the `webhooks` commands. Out: typed models
//! ([`models`]) or an [`AttioError`] saying whether trying again can help. Everything that keeps
//! the daemon a good citizen of Attio's API lives here: one shared HTTP client ([`client`]),
//! the rate limiter, per process or shared by replicas through Redis ([`rate_limit`]), retries that honour `Retry-After` ([`retry`]), the circuit
//! breaker ([`breaker`]), and the cache of object/list/attribute slugs ([`schema`]).

pub mod breaker;
pub mod client;
pub mod error;
pub mod models;
pub mod rate_limit;
pub mod retry;
pub mod schema;
pub mod single_flight;

pub use client::{AttioClient, AttributeParent, USER_AGENT};
pub use error::AttioError;
pub use schema::{SchemaCache, SchemaKey};
