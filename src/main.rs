//! The `attio-webhooks` binary: parse the command line and run the command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = attio_webhooks::cli::Cli::parse();
    attio_webhooks::cli::run(cli)
}
