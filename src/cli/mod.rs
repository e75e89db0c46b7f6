//! The command line. One file per subcommand; each returns an exit code.

mod dead_letters;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Inspect events that used up their attempts and replay them.
    DeadLetters(dead_letters::DeadLettersArgs),
}

pub fn run(cli: Cli) -> ExitCode {
    let options = crate::config::LoadOptions {
        config_dir: None,
        config_file: cli.config.clone(),
    };
    match cli.command {
        Command::Serve(args) => serve::run(args, options),
        Command::DeadLetters(args) => dead_letters::run(args, options),
    }
}
