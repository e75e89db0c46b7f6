//! `attio-webhooks events list|show|tail|replay`: the event history of a running daemon,
//! through its events API.
//!
//! In: the settings (for the default `--admin-url`: `admin.listen` when set, else
//! `server.listen`, and the token `admin.token`), `--admin-url`, `--admin-token` (or
//! `ATTIO_WEBHOOKS_ADMIN_TOKEN`), and the same filters as the API. Out: a readable table (or
//! `--json`) on standard output; `tail` prints each status change as it happens until
//! interrupted. Exit 1 when the daemon refuses (an error it names), 2 for bad arguments.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::{LoadOptions, Settings};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The daemon's API (default: admin.listen when set, else server.listen, from the
    /// configuration).
    #[arg(
        long,
        global = true,
        env = "ATTIO_WEBHOOKS_ADMIN_URL",
        value_name = "URL"
    )]
    pub(crate) admin_url: Option<String>,
    /// The daemon's admin token (default: admin.token from the configuration).
    #[arg(
        long,
        global = true,
        env = "ATTIO_WEBHOOKS_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) admin_token: Option<SecretString>,
    #[command(subcommand)]
    pub(crate) action: Action,
}

/// The list filters (as the API takes them).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Filters {
    /// pending, retrying, delivered or dead.
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// An exact type, or a family such as `record.*`.
    #[arg(long, value_name = "TYPE")]
    pub(crate) event_type: Option<String>,
    /// Object slug (or id).
    #[arg(long)]
    pub(crate) object: Option<String>,
    /// List slug (or id).
    #[arg(long)]
    pub(crate) list: Option<String>,
    /// Events that met this sink.
    #[arg(long)]
    pub(crate) sink: Option<String>,
    /// Received at or after (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Received before (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub(crate) until: Option<String>,
    /// An event id, delivery key or record id.
    #[arg(long)]
    pub(crate) q: Option<String>,
}

impl Filters {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let fields = [
            ("status", &self.status),
            ("event_type", &self.event_type),
            ("object", &self.object),
            ("list", &self.list),
            ("sink", &self.sink),
            ("since", &self.since),
            ("until", &self.until),
            ("q", &self.q),
        ];
        fields
            .into_iter()
            .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
            .collect()
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// Events kept in the history, newest first.
    List {
        #[command(flatten)]
        filters: Filters,
        /// Most events shown (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Go on from a previous page's next cursor.
        #[arg(long)]
        cursor: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything kept about one event, as JSON.
    Show {
        /// The event id, as `list` shows it.
        id: String,
    },
    /// Print each status change as it happens (until interrupted).
    Tail {
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay events (dead or delivered) by id, or every one matching the filters.
    Replay {
        /// Event ids to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead or delivered event matching the filters (at most 1000).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filters: Filters,
        /// Replay to this sink only.
        #[arg(long = "to-sink", value_name = "NAME")]
        to_sink: Option<String>,
        /// Print the API's answers as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the daemon's API is, from the settings.
fn default_url(settings: &Settings) -> String {
    let addr = match settings.admin_addr() {
        Ok(Some(addr)) => Some(addr),
        _ => settings.listen_addr().ok(),
    };
    match addr {
        Some(addr) if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        Some(addr) => format!("http://{addr}"),
        None => "http://127.0.0.1:8080".to_string(),
    }
}

pub(crate) fn run(args: EventsArgs, options: LoadOptions) -> ExitCode {
    let settings = Settings::load_without_secret(&options).ok();
    let base = args
        .admin_url
        .clone()
        .or_else(|| settings.as_ref().map(default_url))
        .unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    let token = args
        .admin_token
        .clone()
        .or_else(|| settings.as_ref().and_then(|s| s.admin.token.clone()));
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let client = Client {
        http: reqwest::Client::new(),
        base: base.trim_end_matches('/').to_string(),
        token,
    };
    runtime.block_on(async move {
        match act(&client, args.action).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<SecretString>,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token.expose_secret()),
            None => request,
        }
    }

    /// Sends and reads a JSON answer; an error answer becomes its message.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the daemon at {}: {e}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["message"].as_str().unwrap_or("no details").to_string();
        Err(match status.as_u16() {
            401 => format!(
                "the daemon refused the token ({message}); pass --admin-token or set \
                 ATTIO_WEBHOOKS_ADMIN_TOKEN"
            ),
            _ => format!("{status}: {message}"),
        })
    }
}

async fn act(client: &Client, action: Action) -> Result<ExitCode, String> {
    match action {
        Action::List {
            filters,
            limit,
            cursor,
            json,
        } => {
            let mut query = filters.pairs();
            query.push(("limit", limit.to_string()));
            if let Some(cursor) = cursor {
                query.push(("cursor", cursor));
            }
            let page = client
                .send(client.request(reqwest::Method::GET, &with_query("/api/v1/events", &query)))
                .await?;
            if json {
                println!("{}", pretty(&page));
            } else {
                print!("{}", table(&page));
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Show { id } => {
            let path = format!("/api/v1/events/{}", segment(&id));
            let event = client
                .send(client.request(reqwest::Method::GET, &path))
                .await?;
            println!("{}", pretty(&event));
            Ok(ExitCode::SUCCESS)
        }
        Action::Tail { json } => tail(client, json).await,
        Action::Replay {
            ids,
            all,
            filters,
            to_sink,
            json,
        } => {
            let body = to_sink.map(|sink| serde_json::json!({ "sink": sink }));
            let with_body = |request: reqwest::RequestBuilder| match &body {
                Some(body) => request.json(body),
                None => request,
            };
            if all {
                let answer = client
                    .send(with_body(client.request(
                        reqwest::Method::POST,
                        &with_query("/api/v1/events/replay", &filters.pairs()),
                    )))
                    .await?;
                if json {
                    println!("{}", pretty(&answer));
                } else {
                    println!(
                        "{} of {} matching event(s) replayed{}",
                        answer["replayed"],
                        answer["matched"],
                        if answer["truncated"] == true {
                            " (more matched: run it again)"
                        } else {
                            ""
                        }
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut failed = false;
            for id in ids {
                let path = format!("/api/v1/events/{}/replay", segment(&id));
                match client
                    .send(with_body(client.request(reqwest::Method::POST, &path)))
                    .await
                {
                    Ok(answer) if json => println!("{}", answer),
                    Ok(_) => println!("replayed {id}"),
                    Err(error) => {
                        failed = true;
                        eprintln!("{id}: {error}");
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Follows `/api/v1/stream`: each `data:` line of a `status` event is one change.
async fn tail(client: &Client, json: bool) -> Result<ExitCode, String> {
    let mut response = client
        .request(reqwest::Method::GET, "/api/v1/stream")
        .send()
        .await
        .map_err(|e| format!("cannot reach the daemon at {}: {e}", client.base))?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(format!(
            "{status}: the daemon refused the stream (check --admin-token)"
        ));
    }
    let mut pending = String::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|e| format!("the stream broke: {e}"))?;
        let Some(chunk) = chunk else {
            return Ok(ExitCode::SUCCESS);
        };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let Ok(change) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if json {
                println!("{change}");
            } else if change.is_object() {
                println!(
                    "{}  {:<9}  {}  {}",
                    change["at"].as_str().unwrap_or(""),
                    change["status"].as_str().unwrap_or(""),
                    change["id"].as_str().unwrap_or(""),
                    change["event_type"].as_str().unwrap_or("")
                );
            }
        }
    }
}

/// `path?name=value&...` with each value escaped.
fn with_query(path: &str, pairs: &[(&'static str, String)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}={}", segment(value)))
        .collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// An id as one path segment.
fn segment(id: &str) -> String {
    let mut out = String::new();
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~:".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn table(page: &Value) -> String {
    let events = page["data"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        return "no events match\n".to_string();
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let rows: Vec<[String; 5]> = events
        .iter()
        .map(|e| {
            [
                text(&e["id"]),
                text(&e["event_type"]),
                text(&e["status"]),
                text(&e["object"]),
                text(&e["received_at"]),
            ]
        })
        .collect();
    let header = ["ID", "EVENT TYPE", "STATUS", "OBJECT", "RECEIVED"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        out.push_str(&format!("(more: --cursor {cursor})\n"));
    }
    out
}
