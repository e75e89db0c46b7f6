//! `attio-webhooks serve`: load the settings, start the daemon, stop cleanly on SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::app::{shutdown_signal, Application};
use crate::config::{Config, LoadOptions};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides server.listen), e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
}

pub(crate) fn run(args: ServeArgs, options: LoadOptions) -> ExitCode {
    let mut config = match Config::load(&options) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = args.listen {
        if let Err(error) = config.listen_on(listen) {
            eprintln!("error: --listen: {error}");
            return ExitCode::from(2);
        }
    }
    // Held until `run` returns: dropping it writes out the lines still queued for stderr.
    let _log_writer = crate::telemetry::init(&config.settings.log);
    let runtime = match super::multi_thread_runtime(None) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let application = match Application::build(config).await {
            Ok(application) => application,
            Err(error) => {
                // Once, on stderr as every other refusal to start is; not also as a log line.
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        };
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            trigger.cancel();
        });
        match application.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "server error");
                ExitCode::FAILURE
            }
        }
    })
}
