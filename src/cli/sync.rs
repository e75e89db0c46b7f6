//! `attio-webhooks sync`: fill and reconcile a `postgres` sink's tables from Attio.
//!
//! In: the settings (`--config`, the same as `serve`: the sink's database and schema, the Attio
//! key and rate limits) and what to sync. Out: every row written through the sink's own
//! statements, progress on standard error (a bar on a terminal, plain lines otherwise, JSON
//! lines on standard output with `--json`), and a closing table of created / updated /
//! unchanged / deleted per object and list. Ctrl-C stops after the page being written; running
//! the same command again resumes from there. Exit codes: 0 done, 1 failed, 2 bad usage,
//! 130 interrupted.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::attio::AttioClient;
use crate::config::{LoadOptions, Settings};
use crate::mirror::store::Store;
use crate::mirror::sync::{
    self, postgres_sink, Progress, Scope, ScopeReport, SyncError, SyncOptions,
};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The `postgres` sink to fill (needed when several are configured).
    #[arg(long, value_name = "NAME")]
    pub(crate) sink: Option<String>,
    /// An object's records, by slug or id (repeatable).
    #[arg(long = "object", value_name = "SLUG")]
    pub(crate) objects: Vec<String>,
    /// A list's entries, by slug or id (repeatable).
    #[arg(long = "list", value_name = "SLUG")]
    pub(crate) lists: Vec<String>,
    /// Every note.
    #[arg(long)]
    pub(crate) notes: bool,
    /// Every task.
    #[arg(long)]
    pub(crate) tasks: bool,
    /// Every workspace member.
    #[arg(long)]
    pub(crate) members: bool,
    /// Every object and list of the workspace, notes, tasks and members.
    #[arg(long)]
    pub(crate) all: bool,
    /// Mark rows that a complete pass did not see, and Attio no longer has, as deleted.
    #[arg(long)]
    pub(crate) prune: bool,
    /// Count what would change; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Progress and the summary as JSON lines on standard output.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn run(args: SyncArgs, options: LoadOptions) -> ExitCode {
    let runtime = match super::multi_thread_runtime(Some(2)) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(execute(args, options))
}

async fn execute(args: SyncArgs, options: LoadOptions) -> ExitCode {
    let usage = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    let settings = match Settings::load_without_secret(&options) {
        Ok(settings) => settings,
        Err(error) => return usage(error.to_string()),
    };
    let sync_options = SyncOptions {
        objects: args.objects.clone(),
        lists: args.lists.clone(),
        notes: args.notes,
        tasks: args.tasks,
        members: args.members,
        all: args.all,
        prune: args.prune,
        dry_run: args.dry_run,
    };
    if !(sync_options.all
        || sync_options.notes
        || sync_options.tasks
        || sync_options.members
        || !sync_options.objects.is_empty()
        || !sync_options.lists.is_empty())
    {
        return usage(
            "nothing to sync: name --object SLUG, --list SLUG, --notes, --tasks, --members, or --all"
                .to_string(),
        );
    }
    let (name, sink) = match postgres_sink(&settings, args.sink.as_deref()) {
        Ok(found) => found,
        Err(message) => return usage(message),
    };
    let Some(api_key) = &settings.attio.api_key else {
        return usage(
            "no Attio API key: set ATTIO_API_KEY to a token that can read what you sync"
                .to_string(),
        );
    };
    let attio = match AttioClient::for_command(&settings.attio, api_key) {
        Ok(client) => client,
        Err(error) => return usage(error.to_string()),
    };
    let store = match Store::open(&format!("sinks.{name}"), &sink) {
        Ok(store) => store,
        Err(error) => return usage(error.message),
    };
    if let Err(error) = store.migrate().await {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }

    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing the page being written");
            on_signal.cancel();
        }
    });
    let display = Display::new(args.json);
    let result = sync::run(&attio, &store, &sync_options, &display, &stop).await;
    display.finish();
    match result {
        Ok(reports) => {
            display.summary(&reports, args.dry_run);
            ExitCode::SUCCESS
        }
        Err(SyncError::Interrupted { done }) => {
            display.summary(&done, args.dry_run);
            eprintln!("{}", SyncError::Interrupted { done: Vec::new() });
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Progress as a bar on a terminal, plain lines otherwise, or JSON lines.
struct Display {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_scope: Mutex<Option<String>>,
}

impl Display {
    fn new(json: bool) -> Display {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Display {
            json,
            bar,
            started: Instant::now(),
            last_scope: Mutex::new(None),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn summary(&self, reports: &[ScopeReport], dry_run: bool) {
        if self.json {
            let line = serde_json::json!({"summary": reports, "dry_run": dry_run});
            println!("{line}");
            return;
        }
        let width = reports
            .iter()
            .map(|r| r.scope.len())
            .max()
            .unwrap_or(5)
            .max(5);
        println!(
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}",
            "scope", "created", "updated", "unchanged", "deleted"
        );
        for report in reports {
            println!(
                "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}",
                report.scope,
                report.counts.created,
                report.counts.updated,
                report.counts.unchanged,
                report.counts.deleted
            );
        }
        if dry_run {
            println!("(dry run: nothing was written)");
        }
    }
}

impl Progress for Display {
    fn page(&self, scope: &Scope, report: &ScopeReport) {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = report.fetched as f64 / seconds;
        if self.json {
            let line = serde_json::json!({"progress": report, "rows_per_second": rate.round()});
            println!("{line}");
            return;
        }
        let text = format!(
            "{}: {} rows (created {}, updated {}, unchanged {}, deleted {}), {:.0} rows/s",
            scope.label(),
            report.counts.created + report.counts.updated + report.counts.unchanged,
            report.counts.created,
            report.counts.updated,
            report.counts.unchanged,
            report.counts.deleted,
            rate
        );
        match &self.bar {
            Some(bar) => {
                let mut last = self.last_scope.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_deref().is_some_and(|l| l != report.scope) {
                    bar.println(last.take().unwrap_or_default());
                }
                *last = Some(text.clone());
                bar.set_message(text);
            }
            None => eprintln!("{text}"),
        }
    }
}
