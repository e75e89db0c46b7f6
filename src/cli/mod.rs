//! The command line. One file per subcommand; each returns an exit code.
//!
//! `serve` runs the daemon. The developer tools around it: `send` (signed test deliveries, and
//! the benchmark's load generator), `sign` / `verify` (Attio's signature on standard input) and
//! `check-config` (the settings `serve` would run with, secrets redacted). `dead-letters`,
//! `unparsed` (signed bodies that were not deliveries), `journal` (check or recover a damaged
//! embedded journal) and `webhooks` (Attio webhook subscriptions) manage what the daemon works
//! with.

mod check_config;
mod dead_letters;
mod events;
mod journal;
mod secret;
mod send;
mod serve;
mod sign;
mod sync;
pub mod templates;
mod unparsed;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The environment the settings are read from, shown under the top-level help: most settings
/// are given this way in a deployment, and no flag mentions them.
const ENVIRONMENT_HELP: &str = "\
Environment:
  APP_ENV                       development (default), test or production (any case), or a
                                name of your own with its config/{APP_ENV}.toml: reads that
                                file; production refuses the development secret
  APP_CONFIG_DIR                where config/default.toml and config/{APP_ENV}.toml are
                                (default: ./config)
  ATTIO_WEBHOOKS_CONFIG         an extra TOML file, as --config
  ATTIO_WEBHOOKS__SECTION__KEY  any setting, e.g. ATTIO_WEBHOOKS__SERVER__LISTEN=0.0.0.0:8080
                                (double underscores between section and key)
  ATTIO_WEBHOOK_SECRET          the webhook signing secret(s), comma-separated
  ATTIO_API_KEY                 the Attio access token (enrichment, `webhooks`)
  REDIS_URL                     Redis, for shared deduplication and queue

`attio-webhooks check-config` prints the settings these give, secrets redacted.";

#[derive(Debug, Parser)]
#[command(
    name = "attio-webhooks",
    version,
    about = "Receive, verify, deduplicate and route Attio webhooks",
    after_help = ENVIRONMENT_HELP
)]
pub struct Cli {
    /// An extra TOML config file, applied after config/default.toml and config/{APP_ENV}.toml.
    #[arg(
        long,
        global = true,
        env = "ATTIO_WEBHOOKS_CONFIG",
        value_name = "FILE"
    )]
    pub(crate) config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: receive webhooks and process them.
    Serve(serve::ServeArgs),
    /// Send signed test deliveries to the daemon (or any receiver), as Attio would.
    Send(Box<send::SendArgs>),
    /// Print Attio's signature of standard input (raw bytes).
    Sign(sign::SignArgs),
    /// Check a signature of standard input (raw bytes): exit 0 if valid, 1 if not.
    Verify(sign::VerifyArgs),
    /// Load and validate the settings as `serve` would, and print them with secrets redacted.
    CheckConfig(check_config::CheckConfigArgs),
    /// The event history of a running daemon (through its API): list, show, tail, replay.
    Events(events::EventsArgs),
    /// Inspect events that used up their attempts and replay them.
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Show the signed bodies that were not deliveries (answered 202 stored_unparsed), and
    /// delete them once read.
    Unparsed(unparsed::UnparsedArgs),
    /// Check the embedded journal's file, or recover what can be read from a damaged one.
    Journal(journal::JournalArgs),
    /// Manage the workspace's Attio webhooks: list, get, create, update, delete.
    Webhooks(webhooks::WebhooksArgs),
    /// Fill and reconcile a postgres sink's tables from Attio (backfill, resumable).
    Sync(sync::SyncArgs),
}

/// The single-threaded runtime a one-shot command runs on; when it cannot be built, the error
/// is printed and the exit code to return comes back.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    built(tokio::runtime::Builder::new_current_thread().enable_all())
}

/// [`runtime`] on several threads, for the commands that do many things at once (`serve`,
/// `send`, `sync`); `worker_threads` defaults to one a core.
pub(crate) fn multi_thread_runtime(
    worker_threads: Option<usize>,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    built(builder.enable_all())
}

fn built(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.build().map_err(|error| {
        eprintln!("error: cannot start the async runtime: {error}");
        ExitCode::FAILURE
    })
}

pub fn run(cli: Cli) -> ExitCode {
    let options = crate::config::LoadOptions {
        config_dir: None,
        config_file: cli.config.clone(),
    };
    match cli.command {
        Command::Serve(args) => serve::run(args, options),
        Command::Send(args) => send::run(*args, options),
        Command::Sign(args) => sign::sign(args, options),
        Command::Verify(args) => sign::verify(args, options),
        Command::CheckConfig(args) => check_config::run(args, options),
        Command::Events(args) => events::run(args, options),
        Command::DeadLetters(args) => dead_letters::run(args, options),
        Command::Unparsed(args) => unparsed::run(args, options),
        Command::Journal(args) => journal::run(args, options),
        Command::Webhooks(args) => webhooks::run(args, options),
        Command::Sync(args) => sync::run(args, options),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every subcommand and argument below `command` that `--help` would show without a word
    /// of explanation.
    fn undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for argument in command.get_arguments() {
            if argument.get_help().is_none() && argument.get_long_help().is_none() {
                missing.push(format!("{path} {}", argument.get_id()));
            }
        }
        for subcommand in command.get_subcommands() {
            let path = format!("{path} {}", subcommand.get_name());
            if subcommand.get_about().is_none() && subcommand.get_long_about().is_none() {
                missing.push(path.clone());
            }
            undocumented(subcommand, &path, missing);
        }
    }

    #[test]
    fn every_command_and_argument_has_help_text() {
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        undocumented(&command, "attio-webhooks", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn the_top_level_help_names_the_environment_variables() {
        let help = Cli::command().render_long_help().to_string();
        for variable in [
            "APP_ENV",
            "ATTIO_WEBHOOKS__SECTION__KEY",
            "ATTIO_WEBHOOK_SECRET",
            "ATTIO_API_KEY",
        ] {
            assert!(help.contains(variable), "{variable} missing from:\n{help}");
        }
    }
}
