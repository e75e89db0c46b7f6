//! `attio-webhooks unparsed list|show|delete`: the correctly signed bodies that were not
//! deliveries (not JSON, or JSON without events), which the daemon answered 202
//! `stored_unparsed` and kept in the journal for inspection.
//!
//! In: the settings (`--config`, so that the tool reads the daemon's own journal, SQLite or
//! Redis) and the subcommand's arguments. Out: a table, one body exactly as it was received, or
//! JSON on standard output; `delete` removes bodies from the journal. Nothing ever retries these
//! bodies: once read (and the sender fixed), they are deleted here.

use std::io::Write;
use std::process::ExitCode;

use base64::Engine;
use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;

use super::dead_letters::{journal_settings, open_journal};
use crate::config::LoadOptions;
use crate::journal::history::UnparsedDelivery;
use crate::journal::{Journal, JournalError, UnparsedSelection};

#[derive(Debug, Args)]
pub struct UnparsedArgs {
    #[command(subcommand)]
    pub(crate) action: Action,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// List the kept bodies, oldest first: when, why, and the start of each body.
    List {
        /// Print JSON (an array, whole bodies included) instead of a table.
        #[arg(long)]
        json: bool,
        /// Most bodies shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one kept body exactly as it was received, after when and why it was kept.
    Show {
        /// The body's id, as `list` shows it.
        id: i64,
        /// Print only the body's bytes, exactly (to save it, or to send it again with
        /// `send --file`).
        #[arg(long, conflicts_with = "json")]
        body_only: bool,
        /// Print JSON (the body as text, or as base64 when it is not UTF-8).
        #[arg(long)]
        json: bool,
    },
    /// Delete kept bodies once they have been looked at: the ids named, or --all.
    #[command(group = ArgGroup::new("which").required(true).args(["ids", "all"]))]
    Delete {
        /// Ids of the bodies to delete, as `list` shows them.
        #[arg(conflicts_with = "all")]
        ids: Vec<i64>,
        /// Delete every kept body.
        #[arg(long)]
        all: bool,
    },
}

/// How to get rid of the bodies, said wherever they are shown: nothing else ever removes them.
const HOW_TO_DELETE: &str = "These bodies are never retried. Once read (and the sender fixed), \
     delete them: `attio-webhooks unparsed delete ID...` or `attio-webhooks unparsed delete --all`.";

pub(crate) fn run(args: UnparsedArgs, options: LoadOptions) -> ExitCode {
    let config = match journal_settings(&options) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let journal = match open_journal(&config) {
            Ok(journal) => journal,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
        let code = match act(&journal, args.action).await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
        journal.close().await;
        code
    })
}

async fn act(journal: &Journal, action: Action) -> Result<ExitCode, JournalError> {
    match action {
        Action::List { json, limit } => {
            let mut bodies = Vec::new();
            for id in oldest(journal, limit).await? {
                // Deleted between the two reads: nothing to show.
                if let Some(body) = journal.unparsed_delivery(id).await? {
                    bodies.push(body);
                }
            }
            if json {
                let shown: Vec<Shown> = bodies.iter().map(Shown::from).collect();
                println!("{}", to_json(&shown));
            } else if bodies.is_empty() {
                println!("no unparsed bodies");
            } else {
                print!("{}", table(&bodies));
                println!();
                println!(
                    "{} kept. `attio-webhooks unparsed show ID` prints one whole.",
                    bodies.len()
                );
                println!("{HOW_TO_DELETE}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Show {
            id,
            body_only,
            json,
        } => {
            let Some(body) = journal.unparsed_delivery(id).await? else {
                eprintln!(
                    "error: no unparsed body {id} in the journal (`attio-webhooks unparsed list` \
                     shows them)"
                );
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", to_json(&Shown::from(&body)));
            } else {
                if !body_only {
                    print!("{}", header(&body));
                }
                let mut out = std::io::stdout().lock();
                // A closed pipe (`| head`) is not an error worth reporting here.
                let _ = out.write_all(&body.body).and_then(|()| out.flush());
                if !body_only {
                    eprintln!("\n{HOW_TO_DELETE}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Delete { ids, all } => {
            let selection = if all {
                UnparsedSelection::All
            } else {
                UnparsedSelection::Ids(ids.clone())
            };
            let deleted = journal.delete_unparsed(&selection).await?;
            for id in &deleted {
                println!("deleted {id}");
            }
            let missing: Vec<&i64> = ids.iter().filter(|id| !deleted.contains(id)).collect();
            for id in &missing {
                eprintln!("error: no unparsed body {id} in the journal");
            }
            println!("{} unparsed body(ies) deleted", deleted.len());
            Ok(if missing.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The ids of the oldest `limit` kept bodies, oldest first. The journal lists newest first (as
/// the API and the console page); there are few such bodies, so their summaries are read whole.
async fn oldest(journal: &Journal, limit: usize) -> Result<Vec<i64>, JournalError> {
    const PAGE: usize = 500;
    let mut oldest = std::collections::VecDeque::with_capacity(limit.min(PAGE));
    let mut before = None;
    loop {
        let page = journal.unparsed(PAGE, before).await?;
        before = page.last().map(|summary| summary.id);
        for summary in &page {
            oldest.push_front(summary.id);
            oldest.truncate(limit);
        }
        if page.len() < PAGE {
            return Ok(oldest.into_iter().collect());
        }
    }
}

/// One kept body as JSON: the bytes as text when they are UTF-8, else as base64.
#[derive(Debug, Serialize)]
struct Shown {
    id: i64,
    received_at: String,
    idempotency_key: Option<String>,
    request_id: Option<String>,
    reason: String,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

impl From<&UnparsedDelivery> for Shown {
    fn from(kept: &UnparsedDelivery) -> Shown {
        let (body, body_base64) = match std::str::from_utf8(&kept.body) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&kept.body)),
            ),
        };
        Shown {
            id: kept.summary.id,
            received_at: kept.summary.received_at.clone(),
            idempotency_key: kept.summary.key.clone(),
            request_id: kept.summary.request_id.clone(),
            reason: kept.summary.reason.clone(),
            size: kept.body.len(),
            body,
            body_base64,
        }
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot print as JSON: {e}\"}}"))
}

/// What is known about a body, before the body itself.
fn header(kept: &UnparsedDelivery) -> String {
    format!(
        "id               {}\nreceived at      {}\nidempotency key  {}\nrequest id       {}\n\
         reason           {}\nsize             {} bytes\n\n",
        kept.summary.id,
        kept.summary.received_at,
        kept.summary.key.as_deref().unwrap_or("-"),
        kept.summary.request_id.as_deref().unwrap_or("-"),
        kept.summary.reason,
        kept.body.len(),
    )
}

/// The start of a body on one line: control characters and invalid UTF-8 escaped.
fn preview(body: &[u8]) -> String {
    const WIDTH: usize = 60;
    let text = String::from_utf8_lossy(body);
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() > WIDTH {
        let cut: String = escaped.chars().take(WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        escaped
    }
}

/// A plain-text table, one body per line.
fn table(bodies: &[UnparsedDelivery]) -> String {
    let header = ["ID", "RECEIVED AT", "SIZE", "REASON", "BODY"];
    let rows: Vec<[String; 5]> = bodies
        .iter()
        .map(|kept| {
            [
                kept.summary.id.to_string(),
                kept.summary.received_at.clone(),
                kept.body.len().to_string(),
                kept.summary.reason.replace('\n', " "),
                preview(&kept.body),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        for (index, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if index + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[index] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::history::UnparsedSummary;

    #[test]
    fn a_preview_is_one_line_with_control_bytes_escaped_and_cut_to_fit() {
        assert_eq!(preview(b"not json\n"), "not json\\n");
        assert_eq!(preview(b"\xff\x00"), "\u{fffd}\\0");
        let long = preview(&[b'a'; 200]);
        assert_eq!(long.chars().count(), 60);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn a_body_that_is_not_utf8_is_shown_as_base64_in_json() {
        let kept = UnparsedDelivery {
            summary: UnparsedSummary {
                id: 1,
                key: None,
                received_at: "t".to_string(),
                request_id: None,
                reason: "r".to_string(),
                body_len: 2,
            },
            body: vec![0xff, 0xfe],
        };
        let shown = Shown::from(&kept);
        assert_eq!(shown.body, None);
        assert_eq!(shown.body_base64.as_deref(), Some("//4="));
    }
}
