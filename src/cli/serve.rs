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
    let threads = match serve_threads(std::env::var_os("TOKIO_WORKER_THREADS"), cores()) {
        Ok(threads) => threads,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match super::multi_thread_runtime(Some(threads)) {
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

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// How many threads run the daemon's async work: `TOKIO_WORKER_THREADS` when set (tokio's own
/// variable), else one a core but one, at least one. The journal's writer and each file sink
/// write on threads of their own, so one core is left to them: on two cores a second async
/// thread would only take turns with the writer on the same core, paying a context switch and a
/// hand-off between the async threads for each event (measured with bench/cpu.sh: about 10%
/// of the CPU per event).
fn serve_threads(variable: Option<std::ffi::OsString>, cores: usize) -> Result<usize, String> {
    let Some(value) = variable else {
        return Ok(cores.saturating_sub(1).max(1));
    };
    value
        .to_str()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .filter(|threads| *threads > 0)
        .ok_or_else(|| {
            format!(
                "TOKIO_WORKER_THREADS is {:?}: expected a whole number of threads above 0, or \
                 leave it unset for one a core but one",
                value.to_string_lossy()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::serve_threads;

    #[test]
    fn the_daemon_leaves_one_core_to_its_writer_threads() {
        assert_eq!(serve_threads(None, 1), Ok(1));
        assert_eq!(serve_threads(None, 2), Ok(1));
        assert_eq!(serve_threads(None, 8), Ok(7));
    }

    #[test]
    fn tokio_worker_threads_sets_the_threads_and_a_bad_value_is_refused_by_name() {
        assert_eq!(serve_threads(Some("3".into()), 2), Ok(3));
        for bad in ["0", "many", "-1", ""] {
            let error = serve_threads(Some(bad.into()), 2).unwrap_err();
            assert!(error.starts_with("TOKIO_WORKER_THREADS is "), "{error}");
        }
    }
}
