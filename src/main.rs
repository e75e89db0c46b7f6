//! The `attio-webhooks` binary: parse the command line and run the command.

use std::process::ExitCode;

use attio_webhooks::cli::{Cli, Command};
use clap::Parser;

/// mimalloc rather than the system allocator: the daemon allocates on one thread and frees on
/// another for every event (ingress, the journal writer, the worker, the sinks), and glibc's
/// arenas showed in profiles as lock contention and as a tenth of the CPU per event. Built without
/// transparent huge pages (`no_thp`): with them, idle RSS rose from 18 to 31 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A one-shot command whose reader went away (`check-config | head -3`) stops quietly, as
    // Unix tools do: with SIGPIPE at its default the write ends the process, where Rust's
    // default (ignored) would make `println!` panic. The daemon keeps it ignored, so that a
    // closed pipe (the stdout sink, a command sink's stdin) is an error it handles and retries.
    if !matches!(cli.command, Command::Serve(_)) {
        sigpipe::reset();
    }
    attio_webhooks::cli::run(cli)
}
