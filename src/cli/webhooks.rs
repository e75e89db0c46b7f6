//! `attio-webhooks webhooks list|get|create|update|delete`: manage the workspace's Attio webhook
//! subscriptions through the client in `src/attio/` (its rate limiter, retries and breaker).
//!
//! In: the settings (`attio.base_url`, `ATTIO_API_KEY`; no webhook secret needed), `--api-key`
//! and `--base-url` overriding them, and the subcommand's flags. Out: a table (or `--json`) on
//! standard output; for `create`, the new webhook's signing secret, shown once (or written to
//! `--secret-file`). Everything that can be checked locally (an `https://` URL, the event types,
//! `--filter`, the secret file) is checked before the first request; slugs given with
//! `--object` / `--list` / `--attribute` are resolved to the UUIDs Attio's filters compare.
//! Exit codes: 0 done; 1 Attio refused or could not be reached, or a deletion was declined;
//! 2 a bad command line or configuration (including a slug the workspace does not have).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::templates::MYTHICAL_EVENT_TYPES;
use crate::attio::models::{
    CreatedWebhook, FilterCondition, FilterOperator, NewWebhook, Subscription, Webhook,
    WebhookFilter, WebhookUpdate,
};
use crate::attio::{AttioClient, AttioError, AttributeParent};
use crate::config::{ConfigError, LoadOptions, Settings};
use crate::event::{Dimension, EventKind, SUBSCRIBABLE_EVENT_TYPES};
use crate::routing::{closest_event_type, is_slug, is_uuid, EventFilter, EventPattern};

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Attio access token with the webhook:read-write scope (default: ATTIO_API_KEY, which is
    /// safer: arguments are visible to other users of the machine).
    #[arg(long, global = true, value_name = "TOKEN", value_parser = secret)]
    pub(crate) api_key: Option<SecretString>,
    /// Attio's API (default: attio.base_url, https://api.attio.com).
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) base_url: Option<String>,
    /// Print JSON for scripts instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) action: Action,
}

fn secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_string()))
}

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// List every webhook of the workspace (all pages).
    List,
    /// Show one webhook and its subscriptions.
    Get {
        /// The webhook's id, as `list` shows it.
        id: String,
    },
    /// Create a webhook. Prints its signing secret, which Attio never shows again.
    Create {
        /// Where Attio delivers: the daemon's public https:// address, e.g.
        /// https://hooks.example.com/webhooks/attio.
        #[arg(long, value_name = "URL")]
        url: String,
        #[command(flatten)]
        subscriptions: SubscriptionArgs,
        /// Write the signing secret to this file (mode 0600) instead of printing it.
        #[arg(long, value_name = "PATH")]
        secret_file: Option<PathBuf>,
        /// Overwrite an existing --secret-file.
        #[arg(long, requires = "secret_file")]
        force: bool,
    },
    /// Change a webhook's URL and/or replace all of its subscriptions.
    Update {
        /// The webhook's id, as `list` shows it.
        id: String,
        /// The new https:// target.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Replaces every subscription of the webhook (the same flags as `create`).
        #[command(flatten)]
        subscriptions: SubscriptionArgs,
    },
    /// Delete a webhook: Attio stops delivering its events.
    Delete {
        /// The webhook's id, as `list` shows it.
        id: String,
        /// Do not ask for confirmation (required when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// The subscriptions of `create` and `update`: one per event type, each with the same filter.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct SubscriptionArgs {
    /// An event type to subscribe to (repeatable), or a pattern such as `record.*`.
    #[arg(long = "event", value_name = "TYPE")]
    pub(crate) events: Vec<String>,
    /// Only events about this object: a slug (`deals`) or a UUID.
    #[arg(long, value_name = "SLUG|UUID")]
    pub(crate) object: Option<String>,
    /// Only events about this list: a slug (`sales_pipeline`) or a UUID.
    #[arg(long, value_name = "SLUG|UUID")]
    pub(crate) list: Option<String>,
    /// Only events naming this attribute (`stage`), resolved within --list, else --object.
    #[arg(long, value_name = "SLUG|UUID")]
    pub(crate) attribute: Option<String>,
    /// An Attio filter as JSON, `{"$and"|"$or": [{"field", "operator", "value"}]}`, combined
    /// (with $and) with --object/--list/--attribute.
    #[arg(long, value_name = "JSON")]
    pub(crate) filter: Option<String>,
}

impl SubscriptionArgs {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.object.is_none()
            && self.list.is_none()
            && self.attribute.is_none()
            && self.filter.is_none()
    }

    fn value(&self, dimension: Dimension) -> Option<&str> {
        match dimension {
            Dimension::Object => self.object.as_deref(),
            Dimension::List => self.list.as_deref(),
            Dimension::Attribute => self.attribute.as_deref(),
        }
    }
}

/// Why a `webhooks` command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhooksError {
    /// The command line or the settings are wrong; nothing was changed in Attio.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Attio refused, or could not be reached (after the client's retries).
    #[error("{0}")]
    Attio(#[from] AttioError),
    /// The user said no, or a local file could not be written.
    #[error("{0}")]
    Failed(String),
}

impl WebhooksError {
    fn exit_code(&self) -> ExitCode {
        match self {
            WebhooksError::Usage(_) | WebhooksError::Config(_) => ExitCode::from(2),
            WebhooksError::Attio(_) | WebhooksError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

fn usage(message: impl Into<String>) -> WebhooksError {
    WebhooksError::Usage(message.into())
}

pub(crate) fn run(args: WebhooksArgs, options: LoadOptions) -> ExitCode {
    let json_output = args.json;
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(execute(args, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error, json_output);
            error.exit_code()
        }
    }
}

/// The error on standard error, with what to do about it; with `--json` also as JSON on
/// standard output.
fn report(error: &WebhooksError, json_output: bool) {
    eprintln!("error: {error}");
    if let Some(hint) = hint(error) {
        eprintln!("hint: {hint}");
    }
    if json_output {
        let body = match error {
            WebhooksError::Attio(AttioError::Api {
                status,
                code,
                message,
                ..
            }) => json!({"error": {"status": status, "code": code, "message": message}}),
            other => json!({"error": {"message": other.to_string()}}),
        };
        println!("{body}");
    }
}

fn hint(error: &WebhooksError) -> Option<String> {
    let WebhooksError::Attio(error) = error else {
        return None;
    };
    match error {
        AttioError::Api { status: 401, .. } => Some(
            "Attio did not accept the API key: check ATTIO_API_KEY (or --api-key); the token \
             needs the webhook:read-write scope"
                .to_string(),
        ),
        AttioError::Api { status: 403, .. } => Some(
            "the token lacks a scope: webhooks need webhook:read-write; resolving --object / \
             --attribute needs object_configuration:read, --list needs list_configuration:read"
                .to_string(),
        ),
        AttioError::Api {
            status: 409, code, ..
        } if code == "uniqueness_conflict" => Some(
            "an identical subscription (same URL, event type and filter) already exists: \
             `attio-webhooks webhooks list` shows it, `webhooks update ID` changes it"
                .to_string(),
        ),
        AttioError::Api { status: 404, .. } => Some(
            "no such webhook in this workspace: `attio-webhooks webhooks list` shows them"
                .to_string(),
        ),
        AttioError::Timeout | AttioError::Connect(_) | AttioError::CircuitOpen { .. } => Some(
            "Attio could not be reached: check --base-url / attio.base_url and the network"
                .to_string(),
        ),
        _ => None,
    }
}

async fn execute(args: WebhooksArgs, options: LoadOptions) -> Result<(), WebhooksError> {
    let mut settings = Settings::load_without_secret(&options)?;
    if let Some(base_url) = &args.base_url {
        check_base_url(base_url)?;
        settings.attio.base_url = base_url.clone();
    }
    let api_key = args.api_key.clone().or(settings.attio.api_key.clone());
    let json_output = args.json;

    // Everything that can be wrong locally is found before Attio is asked anything.
    let plan = match &args.action {
        Action::Create {
            url,
            subscriptions,
            secret_file,
            force,
        } => {
            check_target_url(url)?;
            if subscriptions.events.is_empty() {
                return Err(usage(
                    "create needs at least one --event TYPE (or a pattern such as record.*)",
                ));
            }
            if let Some(path) = secret_file {
                check_secret_file(path, *force)?;
            }
            Some(SubscriptionPlan::new(subscriptions)?)
        }
        Action::Update {
            id,
            url,
            subscriptions,
        } => {
            check_webhook_id(id)?;
            if let Some(url) = url {
                check_target_url(url)?;
            }
            if subscriptions.is_empty() {
                if url.is_none() {
                    return Err(usage(
                        "nothing to update: give --url and/or --event (which replaces every \
                         subscription)",
                    ));
                }
                None
            } else if subscriptions.events.is_empty() {
                return Err(usage(
                    "--object, --list, --attribute and --filter replace the subscriptions: list \
                     them with --event TYPE",
                ));
            } else {
                Some(SubscriptionPlan::new(subscriptions)?)
            }
        }
        Action::Get { id } | Action::Delete { id, .. } => {
            check_webhook_id(id)?;
            None
        }
        Action::List => None,
    };

    let Some(api_key) = api_key else {
        return Err(usage(
            "no Attio API key: set ATTIO_API_KEY (or pass --api-key) to a token with the \
             webhook:read-write scope",
        ));
    };
    warn_if_unencrypted(&settings.attio.base_url);
    let client =
        AttioClient::for_command(&settings.attio, &api_key).map_err(|e| usage(e.to_string()))?;

    match args.action {
        Action::List => {
            let webhooks = client.list_all_webhooks().await?;
            if json_output {
                print_json(&webhooks)?;
            } else if webhooks.is_empty() {
                println!("no webhooks");
            } else {
                print!("{}", table(&webhooks));
            }
        }
        Action::Get { id } => {
            let webhook = client.get_webhook(&id).await?;
            if json_output {
                print_json(&webhook)?;
            } else {
                print!("{}", details(&webhook));
            }
        }
        Action::Create {
            url,
            secret_file,
            force,
            ..
        } => {
            let plan = plan.ok_or_else(|| usage("no subscriptions"))?;
            let resolved = plan.resolve(&client).await?;
            let created = client
                .create_webhook(&NewWebhook {
                    target_url: url,
                    subscriptions: plan.subscriptions(&resolved)?,
                })
                .await?;
            created_output(
                &created,
                &resolved,
                secret_file.as_deref(),
                force,
                json_output,
            )?;
        }
        Action::Update { id, url, .. } => {
            let (subscriptions, resolved) = match plan {
                Some(plan) => {
                    let resolved = plan.resolve(&client).await?;
                    (Some(plan.subscriptions(&resolved)?), resolved)
                }
                None => (None, Vec::new()),
            };
            let webhook = client
                .update_webhook(
                    &id,
                    &WebhookUpdate {
                        target_url: url,
                        subscriptions,
                    },
                )
                .await?;
            if json_output {
                print_json(&webhook)?;
            } else {
                println!("Updated webhook {}\n", webhook.id.webhook_id);
                print!("{}{}", details(&webhook), resolved_lines(&resolved));
            }
        }
        Action::Delete { id, yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(usage(format!(
                        "refusing to delete webhook {id} without --yes: standard input is not a \
                         terminal to confirm on"
                    )));
                }
                let webhook = client.get_webhook(&id).await?;
                if !confirm_deletion(&webhook).await? {
                    return Err(WebhooksError::Failed(
                        "not deleted: not confirmed".to_string(),
                    ));
                }
            }
            client.delete_webhook(&id).await?;
            if json_output {
                println!("{}", json!({ "deleted": id }));
            } else {
                println!("Deleted webhook {id}: Attio no longer delivers its events.");
            }
        }
    }
    Ok(())
}

// ---- local checks ----

fn check_base_url(base_url: &str) -> Result<(), WebhooksError> {
    match reqwest::Url::parse(base_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
        _ => Err(usage(format!(
            "--base-url must be an http(s) URL such as https://api.attio.com, got {:?}",
            crate::redact::redacted_url(base_url)
        ))),
    }
}

fn warn_if_unencrypted(base_url: &str) {
    let Ok(url) = reqwest::Url::parse(base_url) else {
        return;
    };
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !loopback {
        eprintln!("warning: {base_url} is plain http: the API key travels unencrypted");
    }
}

/// Attio delivers only to `https://` targets (docs/attio.md §1); it would refuse anything else.
fn check_target_url(url: &str) -> Result<(), WebhooksError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "https" && parsed.has_host() => Ok(()),
        Ok(parsed) if parsed.scheme() == "http" => Err(usage(format!(
            "--url {url} is not https: Attio delivers only to https:// targets. Put the daemon \
             behind a TLS reverse proxy (Caddy, nginx) or a tunnel (ngrok) and give that \
             https:// address (docs/cli.md, \"Go live\")"
        ))),
        _ => Err(usage(format!(
            "--url {url:?} is not an https:// URL such as https://hooks.example.com/webhooks/attio"
        ))),
    }
}

fn check_webhook_id(id: &str) -> Result<(), WebhooksError> {
    if is_uuid(id) {
        Ok(())
    } else {
        Err(usage(format!(
            "{id:?} is not a webhook id (a UUID): `attio-webhooks webhooks list` shows them"
        )))
    }
}

/// The secret file must be writable without losing anything, before the webhook exists:
/// a secret Attio showed once and we could not store would be lost.
fn check_secret_file(path: &Path, force: bool) -> Result<(), WebhooksError> {
    if path.exists() && !force {
        return Err(usage(format!(
            "--secret-file {} exists; pass --force to overwrite it",
            path.display()
        )));
    }
    if path.is_dir() {
        return Err(usage(format!(
            "--secret-file {} is a directory",
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(usage(format!(
            "--secret-file {}: directory {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

// ---- subscriptions ----

/// What `create` / `update` subscribe to, checked but not yet resolved.
#[derive(Debug, Clone)]
struct SubscriptionPlan {
    event_types: Vec<&'static str>,
    /// The values of --object, --list, --attribute, in [`Dimension::ALL`] order.
    dimensions: Vec<(Dimension, String)>,
    filter: Option<WebhookFilter>,
}

/// One resolved dimension: what the user wrote and the UUID Attio's filter compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    dimension: Dimension,
    given: String,
    id: String,
    /// For an attribute: whether it is the object's or the list's (the events of a type name
    /// one or the other).
    parent: Option<AttributeParent>,
}

/// Whose attribute the `id.attribute_id` of an event type is: a record's changes name the
/// object's attributes, a list entry's changes name the list's own attributes (a list keeps
/// attributes of its own, apart from its parent object's).
fn attribute_parent(event_type: &str) -> Option<AttributeParent> {
    match EventKind::parse(event_type) {
        EventKind::RecordUpdated
        | EventKind::ObjectAttributeCreated
        | EventKind::ObjectAttributeUpdated => Some(AttributeParent::Object),
        EventKind::ListEntryUpdated
        | EventKind::ListAttributeCreated
        | EventKind::ListAttributeUpdated => Some(AttributeParent::List),
        _ => None,
    }
}

impl SubscriptionPlan {
    fn new(args: &SubscriptionArgs) -> Result<SubscriptionPlan, WebhooksError> {
        let mut dimensions = Vec::new();
        for dimension in Dimension::ALL {
            if let Some(value) = args.value(dimension) {
                let flag = dimension.key();
                if !(is_uuid(value) || is_slug(value)) {
                    return Err(usage(format!(
                        "--{flag} {value:?} is neither a UUID nor an api slug (lower-case \
                         snake_case as Attio shows it)"
                    )));
                }
                dimensions.push((dimension, value.to_string()));
            }
        }
        let filter = match &args.filter {
            Some(text) => parse_filter(text)?,
            None => None,
        };
        if matches!(filter, Some(WebhookFilter::Any(_))) && !dimensions.is_empty() {
            return Err(usage(
                "an \"$or\" --filter cannot be combined with --object/--list/--attribute: \
                 Attio's filters do not nest. Use \"$and\", or put the ids in the filter",
            ));
        }
        let given: Vec<Dimension> = dimensions.iter().map(|(d, _)| *d).collect();
        let mut event_types: Vec<&'static str> = Vec::new();
        for spec in &args.events {
            for event_type in event_types_for(spec, &given)? {
                if !event_types.contains(&event_type) {
                    event_types.push(event_type);
                }
            }
        }
        if let Some(attribute) = &args.attribute {
            let naming = |parent: AttributeParent| {
                event_types
                    .iter()
                    .copied()
                    .filter(|t| attribute_parent(t) == Some(parent))
                    .collect::<Vec<_>>()
            };
            let list_typed = naming(AttributeParent::List);
            if !list_typed.is_empty() && args.list.is_none() {
                return Err(usage(format!(
                    "--attribute {attribute} with {}: a list entry's attributes are the list's                      own, not its parent object's, so the attribute must be looked up in the                      list: add --list (and subscribe to record events in a webhook of their own)",
                    list_typed.join(", ")
                )));
            }
            let object_typed = naming(AttributeParent::Object);
            if !object_typed.is_empty() && !is_uuid(attribute) && args.object.is_none() {
                return Err(usage(format!(
                    "--attribute {attribute} is a slug, and {} name the object's attributes:                      add --object (or give the attribute's UUID)",
                    object_typed.join(", ")
                )));
            }
        }
        Ok(SubscriptionPlan {
            event_types,
            dimensions,
            filter,
        })
    }

    /// Turns slugs into UUIDs through Attio (a UUID is taken as it is). An attribute slug is
    /// looked up where the subscribed event types name attributes: the list's attributes for
    /// list entries and list attributes, the object's for records and object attributes.
    async fn resolve(&self, client: &AttioClient) -> Result<Vec<Resolved>, WebhooksError> {
        let mut resolved: Vec<Resolved> = Vec::new();
        for (dimension, value) in &self.dimensions {
            if *dimension == Dimension::Attribute {
                for parent in [AttributeParent::Object, AttributeParent::List] {
                    if !self
                        .event_types
                        .iter()
                        .any(|t| attribute_parent(t) == Some(parent))
                    {
                        continue;
                    }
                    let id = if is_uuid(value) {
                        value.to_ascii_lowercase()
                    } else {
                        self.attribute_id(client, parent, value, &resolved).await?
                    };
                    resolved.push(Resolved {
                        dimension: *dimension,
                        given: value.clone(),
                        id,
                        parent: Some(parent),
                    });
                }
                continue;
            }
            let id = if is_uuid(value) {
                value.to_ascii_lowercase()
            } else {
                match dimension {
                    Dimension::Object => {
                        let objects = client.list_objects().await?;
                        find_slug(
                            value,
                            objects
                                .iter()
                                .map(|o| (o.api_slug.as_deref(), o.id.object_id.as_str())),
                            "object",
                            "this workspace",
                        )?
                    }
                    Dimension::List => {
                        let lists = client.list_lists().await?;
                        find_slug(
                            value,
                            lists
                                .iter()
                                .map(|l| (l.api_slug.as_deref(), l.id.list_id.as_str())),
                            "list",
                            "this workspace",
                        )?
                    }
                    // Resolved above, once per kind of parent.
                    Dimension::Attribute => continue,
                }
            };
            resolved.push(Resolved {
                dimension: *dimension,
                given: value.clone(),
                id,
                parent: None,
            });
        }
        Ok(resolved)
    }

    /// The UUID of the attribute `slug` of the object or list already resolved.
    async fn attribute_id(
        &self,
        client: &AttioClient,
        parent: AttributeParent,
        slug: &str,
        resolved: &[Resolved],
    ) -> Result<String, WebhooksError> {
        let (dimension, noun, flag) = match parent {
            AttributeParent::Object => (Dimension::Object, "object", "--object"),
            AttributeParent::List => (Dimension::List, "list", "--list"),
        };
        // `new` refused an attribute slug without the flag its events need; --object and
        // --list come before --attribute in `dimensions`.
        let Some(owner) = resolved.iter().find(|r| r.dimension == dimension) else {
            return Err(usage(format!("--attribute {slug} is a slug: add {flag}")));
        };
        let attributes = client.list_attributes(parent, &owner.id).await?;
        find_slug(
            slug,
            attributes
                .iter()
                .map(|a| (a.api_slug.as_deref(), a.id.attribute_id.as_str())),
            "attribute",
            &format!("{noun} {}", owner.given),
        )
    }

    /// One subscription per event type, each filtered on the resolved ids where its events
    /// carry them, plus `--filter`.
    fn subscriptions(&self, resolved: &[Resolved]) -> Result<Vec<Subscription>, WebhooksError> {
        self.event_types
            .iter()
            .map(|event_type| {
                let kind = EventKind::parse(event_type);
                let mut conditions = Vec::new();
                let parent = attribute_parent(event_type);
                for resolved in resolved {
                    if resolved.dimension == Dimension::Attribute && resolved.parent != parent {
                        // The attribute as the other kind of event names it.
                        continue;
                    }
                    let field = kind.dimension_field(resolved.dimension).ok_or_else(|| {
                        usage(format!(
                            "{event_type} events carry no {}",
                            resolved.dimension.key()
                        ))
                    })?;
                    conditions.push(FilterCondition {
                        field: field.to_string(),
                        operator: FilterOperator::Equals,
                        value: resolved.id.clone(),
                    });
                }
                let filter = match (&self.filter, conditions.is_empty()) {
                    (None, true) => None,
                    (None, false) => Some(WebhookFilter::All(conditions)),
                    (Some(WebhookFilter::All(given)), _) => {
                        let mut all = given.clone();
                        all.extend(conditions);
                        Some(WebhookFilter::All(all))
                    }
                    (Some(any @ WebhookFilter::Any(_)), true) => Some(any.clone()),
                    (Some(WebhookFilter::Any(_)), false) => {
                        return Err(usage("an \"$or\" --filter cannot be combined with ids"))
                    }
                };
                Ok(Subscription {
                    event_type: event_type.to_string(),
                    filter,
                })
            })
            .collect()
    }
}

/// The subscribable types `spec` names (one type, or a pattern's matches), keeping only those
/// whose events carry every dimension given.
fn event_types_for(
    spec: &str,
    dimensions: &[Dimension],
) -> Result<Vec<&'static str>, WebhooksError> {
    let carries_all = |event_type: &str| {
        let kind = EventKind::parse(event_type);
        dimensions
            .iter()
            .all(|d| kind.dimension_field(*d).is_some())
    };
    let missing = |event_type: &str| {
        let kind = EventKind::parse(event_type);
        dimensions
            .iter()
            .copied()
            .find(|d| kind.dimension_field(*d).is_none())
    };
    if let Some(known) = SUBSCRIBABLE_EVENT_TYPES.iter().find(|k| **k == spec) {
        if let Some(dimension) = missing(known) {
            return Err(usage(format!(
                "{known} events carry no {key}, so --{key} would never match them; --{key} \
                 applies to {}",
                carrying(dimension),
                key = dimension.key()
            )));
        }
        return Ok(vec![known]);
    }
    if spec.contains('*') {
        let pattern = EventPattern::parse(spec).map_err(usage)?;
        let matching: Vec<&'static str> = SUBSCRIBABLE_EVENT_TYPES
            .iter()
            .copied()
            .filter(|t| pattern.matches(t))
            .collect();
        if matching.is_empty() {
            return Err(usage(format!(
                "no subscribable Attio event type matches {spec:?}"
            )));
        }
        let fitting: Vec<&'static str> = matching
            .iter()
            .copied()
            .filter(|t| carries_all(t))
            .collect();
        if fitting.is_empty() {
            let absent = dimensions.iter().copied().find(|d| {
                matching
                    .iter()
                    .all(|t| EventKind::parse(t).dimension_field(*d).is_none())
            });
            return Err(usage(match absent {
                Some(dimension) => format!(
                    "events matching {spec:?} carry no {key}, so --{key} would never match them; \
                     --{key} applies to {}",
                    carrying(dimension),
                    key = dimension.key()
                ),
                None => format!(
                    "no event type matching {spec:?} carries all of {}",
                    dimensions
                        .iter()
                        .map(|d| format!("--{}", d.key()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }));
        }
        return Ok(fitting);
    }
    Err(usage(unknown_event_type(spec)))
}

/// The subscribable types carrying `dimension`, for messages.
fn carrying(dimension: Dimension) -> String {
    SUBSCRIBABLE_EVENT_TYPES
        .iter()
        .filter(|t| EventKind::parse(t).dimension_field(dimension).is_some())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_event_type(name: &str) -> String {
    let kind = EventKind::parse(name);
    if kind.is_known() {
        return format!(
            "{name:?} is documented by Attio but webhooks cannot subscribe to it (yet); \
             subscribable types: {}",
            SUBSCRIBABLE_EVENT_TYPES.join(", ")
        );
    }
    let mut message = if MYTHICAL_EVENT_TYPES.contains(&name) {
        format!("Attio has no {name:?} event (some guides invent it)")
    } else {
        format!("{name:?} is not an Attio event type")
    };
    match closest_event_type(name) {
        Some(known) => message.push_str(&format!("; did you mean {known:?}?")),
        None => message.push_str(&format!(
            "; subscribable types: {}",
            SUBSCRIBABLE_EVENT_TYPES.join(", ")
        )),
    }
    message
}

/// `--filter` in Attio's shape. Values of `*_id` fields must be UUIDs: that is what events
/// carry, so a slug there would silently never match.
fn parse_filter(text: &str) -> Result<Option<WebhookFilter>, WebhooksError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| usage(format!("--filter is not valid JSON: {e}")))?;
    if value.is_null() {
        return Ok(None);
    }
    EventFilter::parse(&value).map_err(|e| usage(format!("--filter: {e}")))?;
    let filter: WebhookFilter = serde_json::from_value(value).map_err(|e| {
        usage(format!(
            "--filter: {e} (values are strings: Attio compares ids)"
        ))
    })?;
    let conditions = match &filter {
        WebhookFilter::All(conditions) | WebhookFilter::Any(conditions) => conditions,
    };
    for condition in conditions {
        if condition.field.ends_with("_id") && !is_uuid(&condition.value) {
            return Err(usage(format!(
                "--filter compares {} with {:?}, but events carry UUIDs there; give the UUID, or \
                 use --object / --list / --attribute, which resolve slugs",
                condition.field, condition.value
            )));
        }
    }
    Ok(Some(filter))
}

/// The UUID of the item whose slug is `slug`, or an error listing the valid slugs.
fn find_slug<'a>(
    slug: &str,
    items: impl Iterator<Item = (Option<&'a str>, &'a str)>,
    noun: &str,
    within: &str,
) -> Result<String, WebhooksError> {
    let mut known: Vec<&str> = Vec::new();
    for (item_slug, id) in items {
        match item_slug {
            Some(item_slug) if item_slug == slug => return Ok(id.to_string()),
            Some(item_slug) => known.push(item_slug),
            None => {}
        }
    }
    known.sort_unstable();
    let suggestion = known
        .iter()
        .map(|k| (strsim::levenshtein(slug, k), *k))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, k)| format!("; did you mean {k:?}?"))
        .unwrap_or_default();
    Err(usage(format!(
        "no {noun} {slug:?} in {within}{suggestion}; valid slugs: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )))
}

// ---- output ----

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), WebhooksError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| WebhooksError::Failed(format!("cannot print JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// `id.object_id = 9705… and id.attribute_id = 4125…`, or `every event`.
fn describe_filter(filter: &Option<WebhookFilter>) -> String {
    let (conditions, joiner) = match filter {
        None => return "every event".to_string(),
        Some(WebhookFilter::All(conditions)) => (conditions, " and "),
        Some(WebhookFilter::Any(conditions)) => (conditions, " or "),
    };
    conditions
        .iter()
        .map(|c| {
            let operator = match c.operator {
                FilterOperator::Equals => "=",
                FilterOperator::NotEquals => "!=",
            };
            format!("{} {operator} {}", c.field, c.value)
        })
        .collect::<Vec<_>>()
        .join(joiner)
}

fn table(webhooks: &[Webhook]) -> String {
    let rows: Vec<[String; 4]> = webhooks
        .iter()
        .map(|w| {
            let subscriptions = w
                .subscriptions
                .iter()
                .map(|s| {
                    if s.filter.is_some() {
                        format!("{} (filtered)", s.event_type)
                    } else {
                        s.event_type.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            [
                w.id.webhook_id.clone(),
                w.status.clone(),
                w.target_url.clone(),
                subscriptions,
            ]
        })
        .collect();
    let header = [
        "ID".to_string(),
        "STATUS".to_string(),
        "URL".to_string(),
        "SUBSCRIPTIONS".to_string(),
    ];
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "{} webhook{}\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

fn details(webhook: &Webhook) -> String {
    let mut out = format!(
        "webhook        {}\nurl            {}\nstatus         {}\ncreated        {}\nsubscriptions  {}\n",
        webhook.id.webhook_id,
        webhook.target_url,
        webhook.status,
        webhook.created_at.as_deref().unwrap_or("-"),
        webhook.subscriptions.len()
    );
    let width = webhook
        .subscriptions
        .iter()
        .map(|s| s.event_type.len())
        .max()
        .unwrap_or(0);
    for subscription in &webhook.subscriptions {
        out.push_str(&format!(
            "  {:<width$}  {}\n",
            subscription.event_type,
            describe_filter(&subscription.filter)
        ));
    }
    out
}

fn resolved_lines(resolved: &[Resolved]) -> String {
    resolved
        .iter()
        .filter(|r| r.given != r.id)
        .map(|r| format!("  ({} {} is {})\n", r.dimension.key(), r.given, r.id))
        .collect()
}

/// Shows the new webhook and hands over its secret: printed once, or written to the file.
fn created_output(
    created: &CreatedWebhook,
    resolved: &[Resolved],
    secret_file: Option<&Path>,
    force: bool,
    json_output: bool,
) -> Result<(), WebhooksError> {
    let written = match secret_file {
        Some(path) => match write_secret(path, &created.secret, force) {
            Ok(()) => Some(path),
            Err(error) => {
                // Attio will not show the secret again: never lose it to a file error.
                eprintln!(
                    "error: cannot write the secret to {}: {error}; printing it instead",
                    path.display()
                );
                None
            }
        },
        None => None,
    };
    if json_output {
        let mut body = serde_json::to_value(&created.webhook)
            .map_err(|e| WebhooksError::Failed(format!("cannot print JSON: {e}")))?;
        if let Value::Object(map) = &mut body {
            match written {
                Some(path) => {
                    map.insert("secret_file".into(), json!(path.display().to_string()));
                }
                None => {
                    map.insert("secret".into(), json!(created.secret.expose_secret()));
                }
            }
        }
        print_json(&body)?;
    } else {
        let mut out = std::io::stdout().lock();
        let mut text = format!("Created webhook {}\n\n", created.webhook.id.webhook_id);
        text.push_str(&details(&created.webhook));
        text.push_str(&resolved_lines(resolved));
        text.push('\n');
        match written {
            Some(path) => text.push_str(&format!(
                "Signing secret written to {} (mode 0600). Attio never shows it again.\n\
                 Give it to the daemon as ATTIO_WEBHOOK_SECRET (comma-separated after any \
                 secrets it already has), e.g. ATTIO_WEBHOOK_SECRET=\"$(cat {})\", then restart it.\n",
                path.display(),
                path.display()
            )),
            None => text.push_str(&format!(
                "Signing secret (Attio never shows it again; store it now):\n\n    {}\n\n\
                 Give it to the daemon as ATTIO_WEBHOOK_SECRET (comma-separated after any \
                 secrets it already has), then restart it.\n",
                created.secret.expose_secret()
            )),
        }
        out.write_all(text.as_bytes())
            .map_err(|e| WebhooksError::Failed(format!("cannot write to standard output: {e}")))?;
    }
    Ok(())
}

/// Writes the secret readable by its owner only. Without `force` the file must not exist
/// (checked again here: it may have appeared since the check before creating the webhook).
fn write_secret(path: &Path, secret: &SecretString, force: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // An overwritten file keeps its old mode: tighten it before the secret goes in.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(secret.expose_secret().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Asks on the terminal; only `y` or `yes` deletes.
async fn confirm_deletion(webhook: &Webhook) -> Result<bool, WebhooksError> {
    eprint!(
        "Delete webhook {} ({}, {} subscription{})? Attio stops delivering its events. [y/N] ",
        webhook.id.webhook_id,
        webhook.target_url,
        webhook.subscriptions.len(),
        if webhook.subscriptions.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    let _ = std::io::stderr().flush();
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| WebhooksError::Failed(format!("cannot read the answer: {e}")))?
    .map_err(|e| WebhooksError::Failed(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

#[cfg(test)]
#[path = "webhooks_tests.rs"]
mod tests;
