//! `attio-webhooks dead-letters list|show|replay`: inspect events that used up their attempts
//! and put them back through the pipeline.
//!
//! In: the settings (`--config`, so `storage.path` points at the same journal as the daemon's)
//! and the subcommand's arguments. Out: a table or JSON on standard output, and for `replay`
//! the events set back to pending in the journal. Works directly on the SQLite journal, also
//! while the daemon runs: SQLite (WAL, busy timeout, IMMEDIATE transactions) serialises the two
//! writers, and the daemon's periodic journal scan picks replayed events up within
//! `worker.poll_interval`. With `queue.backend = "redis"` it works on the Redis queue instead
//! (every replica sees the change at once). No webhook secret is needed: nothing here verifies a
//! delivery.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::{Config, LoadOptions, Queue, Settings};
use crate::event::printable;
use crate::journal::{
    DeadLetter, DeadLetterQuery, Journal, RedisJournal, ReplaySelection, SqliteJournal,
};

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub(crate) action: Action,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// List dead letters, oldest first.
    List {
        /// Print JSON (an array) instead of a table.
        #[arg(long)]
        json: bool,
        /// Only events that failed on this sink.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
        /// Only this event type, or a family such as `record.*`.
        #[arg(long, value_name = "TYPE")]
        event_type: Option<String>,
        /// Most dead letters shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one stored event (as Attio sent it) with its attempts and errors, as JSON.
    Show {
        /// The event id, as `list` shows it.
        id: String,
    },
    /// Put dead letters back through the pipeline with their attempts reset: the ids named, or
    /// --all.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["ids", "all"]))]
    Replay {
        /// Event ids to replay, as `list` shows them.
        #[arg(conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead letter (with --sink: every one that failed on that sink).
        #[arg(long)]
        all: bool,
        /// Retry only this sink; the other sinks that failed are marked done.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The daemon's configuration, for a tool that works on its journal; the exit code (the error
/// printed) when it does not load or names a journal the daemon never wrote.
pub(super) fn journal_settings(options: &LoadOptions) -> Result<Config, ExitCode> {
    let config = match Config::load_without_secret(options) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return Err(ExitCode::from(2));
        }
    };
    if let Queue::Embedded { journal, .. } = &config.queue {
        if !journal.is_file() {
            eprintln!(
                "error: no journal at {} (storage.path = {}): the daemon has not run with these \
                 settings; pass the same --config as `serve`",
                journal.display(),
                config.settings.storage.path.display()
            );
            return Err(ExitCode::from(2));
        }
    }
    Ok(config)
}

pub(crate) fn run(args: DeadLettersArgs, options: LoadOptions) -> ExitCode {
    let config = match journal_settings(&options) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Action::Replay {
        sink: Some(sink), ..
    } = &args.action
    {
        if !config.sinks.contains_key(sink) {
            let names: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
            eprintln!(
                "error: --sink {sink:?} is not a configured sink; configured: {}",
                names.join(", ")
            );
            return ExitCode::from(2);
        }
    }
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
        let code = match act(&journal, args.action, &config.settings).await {
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

/// The journal the daemon uses with this configuration.
pub(super) fn open_journal(config: &Config) -> Result<Journal, String> {
    match &config.queue {
        Queue::Redis(redis) => {
            let connection = crate::dedupe::redis::connect_client(redis.client.clone())
                .map_err(|e| e.to_string())?;
            Ok(Journal::Redis(RedisJournal::new(
                connection,
                &redis.key_prefix,
                config.settings.dedupe.claim_lease,
                config.settings.dedupe.done_ttl,
            )))
        }
        Queue::Embedded { journal, .. } => SqliteJournal::open(journal)
            .map(Journal::Sqlite)
            .map_err(|e| e.to_string()),
    }
}

async fn act(
    journal: &Journal,
    action: Action,
    settings: &Settings,
) -> Result<ExitCode, crate::journal::JournalError> {
    match action {
        Action::List {
            json,
            sink,
            event_type,
            limit,
        } => {
            let letters = journal
                .list_dead_letters(&DeadLetterQuery {
                    sink,
                    event_type,
                    limit,
                })
                .await?;
            if json {
                println!("{}", to_json(&letters));
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                print!("{}", table(&letters));
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Show { id } => match journal.event(&id).await? {
            Some(event) => {
                println!("{}", to_json(&event));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!(
                    "error: no event {id:?} in the journal (unknown, or older than storage.history)"
                );
                Ok(ExitCode::FAILURE)
            }
        },
        Action::Replay {
            ids,
            all,
            sink,
            json,
        } => {
            let named = !all;
            let selection = if all {
                ReplaySelection::All
            } else {
                ReplaySelection::Ids(ids)
            };
            let report = journal.replay(&selection, sink.as_deref(), false).await?;
            if json {
                println!("{}", to_json(&report));
            } else {
                for id in &report.replayed {
                    println!("replayed {}", printable(id));
                }
                for skipped in &report.skipped {
                    eprintln!(
                        "skipped {}: {}",
                        printable(&skipped.id),
                        printable(&skipped.reason)
                    );
                }
                println!(
                    "{} event(s) replayed; a running daemon picks them up within {} \
                     (worker.poll_interval), otherwise at its next start",
                    report.replayed.len(),
                    humantime::format_duration(settings.worker.poll_interval)
                );
            }
            // Naming an event that could not be replayed is an error worth an exit code.
            if named && !report.skipped.is_empty() {
                Ok(ExitCode::FAILURE)
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn to_json(value: &impl serde::Serialize) -> String {
    // Through `Value` so the stored event (kept as raw JSON) is indented like the rest.
    serde_json::to_value(value)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot print as JSON: {e}\"}}"))
}

/// A plain-text table, one dead letter per line, the error cut to fit.
fn table(letters: &[DeadLetter]) -> String {
    const ERROR_WIDTH: usize = 80;
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|letter| {
            let error = letter
                .last_error
                .as_deref()
                .unwrap_or("-")
                .replace('\n', " ");
            let error = printable(&error).into_owned();
            let error = if error.chars().count() > ERROR_WIDTH {
                let cut: String = error.chars().take(ERROR_WIDTH - 1).collect();
                format!("{cut}…")
            } else {
                error
            };
            // Stored values came from deliveries: a control character in them must not reach
            // the terminal as it is.
            [
                letter.id.clone(),
                letter.event_type.clone(),
                letter.attempts.to_string(),
                letter.failed_sinks.join(","),
                letter.dead_at.clone().unwrap_or_else(|| "-".to_string()),
                error,
            ]
            .map(|cell| printable(&cell).into_owned())
        })
        .collect();
    let header = [
        "ID",
        "EVENT TYPE",
        "ATTEMPTS",
        "FAILED SINKS",
        "DEAD AT",
        "LAST ERROR",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (index, cell) in cells.iter().enumerate() {
            if index == last {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = widths[index] - cell.chars().count() + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}
