//! The command line. One file per subcommand; each returns an exit code.
//!
//! `serve` runs the daemon. The developer tools around it: `send` (signed test deliveries, and
//! the benchmark's load generator), `sign` / `verify` (Attio's signature on standard input) and
//! `check-config` (the settings `serve` would run with, secrets redacted). `dead-letters` and
//! `webhooks` (Attio webhook subscriptions) manage what the daemon works with.

mod check_config;
mod dead_letters;
mod secret;
mod send;
mod serve;
mod sign;
pub mod templates;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use send::ATTIO_USER_AGENT;

#[derive(Debug, Parser)]
#[command(
    name = "attio-webhooks",
    version,
    about = "Receive, verify, deduplicate and route Attio webhooks"
)]
pub struct Cli {
    /// An extra TOML config file, applied after config/default.toml and config/{APP_ENV}.toml.
    #[arg(
        long,
        global = true,
        env = "ATTIO_WEBHOOKS_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

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
    /// Inspect events that used up their attempts and replay them.
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Manage the workspace's Attio webhooks: list, get, create, update, delete.
    Webhooks(webhooks::WebhooksArgs),
}

pub fn run(cli: Cli) -> ExitCode {
    let options = crate::config::LoadOptions {
        config_dir: None,
        config_file: cli.config.clone(),
    };
    match cli.command {
        Command::Serve(args) => serve::run(args, options),
        Command::Send(args) => send::run(*args, options),
        Command::Sign(args) => sign::sign(args),
        Command::Verify(args) => sign::verify(args),
        Command::CheckConfig(args) => check_config::run(args, options),
        Command::DeadLetters(args) => dead_letters::run(args, options),
        Command::Webhooks(args) => webhooks::run(args, options),
    }
}
