//! `attio-webhooks journal check|recover`: the way out of a damaged embedded journal.
//!
//! In: the settings (`--config`, so that `storage.path` names the daemon's journal). Out:
//! `check` prints SQLite's integrity check of the journal, read-only (exit 0 sound, 1 damaged);
//! `recover`, with the daemon stopped (it takes the journal's lock), moves the damaged file aside
//! untouched and builds a new journal from every row that can still be read, whose pending events
//! the next start processes again. The Redis queue has no file to check: Redis keeps it.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::{LoadOptions, QueueBackend, Settings};
use crate::journal::repair;
use crate::journal::JournalLock;

#[derive(Debug, Args)]
pub struct JournalArgs {
    #[command(subcommand)]
    pub(crate) action: Action,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Action {
    /// Run SQLite's integrity check on the journal, read-only: exit 0 if sound, 1 if damaged.
    Check,
    /// With the daemon stopped: move a damaged journal aside (kept as it is) and build a new one
    /// from every row that can still be read; the next start processes its pending events. A
    /// sound journal is left alone.
    Recover,
}

pub(crate) fn run(args: JournalArgs, options: LoadOptions) -> ExitCode {
    let settings = match Settings::load_without_secret(&options) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if settings.queue.backend == QueueBackend::Redis {
        eprintln!(
            "error: queue.backend is \"redis\": the journal is in Redis, which keeps it (see its \
             own persistence settings); `journal` checks the embedded journal only"
        );
        return ExitCode::from(2);
    }
    let path = settings.journal_path();
    if !path.is_file() {
        eprintln!(
            "error: no journal at {} (storage.path = {}): the daemon has not run with these \
             settings; pass the same --config as `serve`",
            path.display(),
            settings.storage.path.display()
        );
        return ExitCode::from(2);
    }
    match args.action {
        Action::Check => check(&path),
        Action::Recover => recover(&path),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match repair::check(path) {
        Ok(report) if report.is_sound() => {
            println!(
                "{}: sound (SQLite's integrity check found nothing wrong)",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!(
                "{}: damaged. SQLite's integrity check says:",
                path.display()
            );
            for problem in &report.problems {
                println!("  {problem}");
            }
            println!(
                "Nothing was changed. With the daemon stopped, `attio-webhooks journal recover` \
                 moves the file aside (kept as it is) and keeps every event that can still be \
                 read in a new journal."
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn recover(path: &std::path::Path) -> ExitCode {
    // Held until the end: no daemon may start on the journal while it is rebuilt.
    let _lock = match JournalLock::acquire(path) {
        Ok(lock) => lock,
        Err(error) => {
            eprintln!("error: {error}; stop it before `journal recover`");
            return ExitCode::FAILURE;
        }
    };
    // A sound journal is left as it is: rebuilding it would only move it.
    match repair::check(path) {
        Ok(check) if check.is_sound() => {
            println!(
                "{}: sound (SQLite's integrity check found nothing wrong); nothing to recover, \
                 nothing was changed",
                path.display()
            );
            return ExitCode::SUCCESS;
        }
        Ok(_) => {}
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    let report = match repair::recover(path) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "moved the damaged journal to {} (kept as it was)",
        report.damaged_copy.display()
    );
    println!("recovered into a new {}:", path.display());
    for table in &report.tables {
        match &table.stopped {
            None => println!("  {:<16} {} rows", table.table, table.rows),
            Some(why) => println!(
                "  {:<16} {} rows (reading stopped at damage: {why}; rows there are lost)",
                table.table, table.rows
            ),
        }
    }
    println!(
        "{} pending event(s), due at once: the next `attio-webhooks serve` processes them (a sink \
         that already had one may get it again, with the same event id). {} dead letter(s): \
         `attio-webhooks dead-letters list`.",
        report.pending, report.dead
    );
    match repair::check(path) {
        Ok(check) if check.is_sound() => ExitCode::SUCCESS,
        Ok(check) => {
            eprintln!(
                "error: the new journal does not pass SQLite's integrity check: {}",
                check.problems.join("; ")
            );
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
