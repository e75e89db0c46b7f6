//! The only module that speaks Attio's REST API.
//!
//! In: typed calls from the enrichment stage and the `webhooks` commands. Out: typed models
//! ([`models`]) or an [`AttioError`] saying whether trying again can help. Everything that keeps
//! the daemon a good citizen of Attio's API lives here: one shared HTTP client ([`client`]),
//! the rate limiter, per process or shared by replicas through Redis ([`rate_limit`]), retries that honour `Retry-After` ([`retry`]), the circuit
//! breaker ([`breaker`]), and the cache of object/list/attribute slugs ([`schema`]).

pub(crate) mod breaker;
pub(crate) mod client;
pub(crate) mod error;
pub mod models;
pub mod rate_limit;
pub(crate) mod retry;
pub(crate) mod schema;
pub(crate) mod single_flight;

pub use client::{AttioClient, AttributeParent, USER_AGENT};
pub use error::AttioError;
pub(crate) use schema::{SchemaCache, SchemaKey};
