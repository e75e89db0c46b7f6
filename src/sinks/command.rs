//! The `command` sink: runs a program once per event, with the event's line on standard input.
//!
//! In: a [`SinkLine`] and the attempt number. Out: `Ok` when the program exits 0; otherwise a
//! transient [`SinkError`] (non-zero exit, killed after `timeout`), or a permanent one when the
//! program cannot be started at all (not found, not executable) or not for this event (its id or
//! type holds a NUL byte, which no environment variable can carry). The environment carries
//! `ATTIO_EVENT_ID`, `ATTIO_EVENT_TYPE` and `ATTIO_EVENT_ATTEMPT`. The program runs in its own
//! process group so a timeout kills whatever it started too. Its output goes to the log,
//! truncated: a chatty program must not flood the log or the daemon's memory.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::settings::CommandSinkSettings;
use super::{SinkError, SinkLine};

/// Bytes of standard output and of standard error kept for the log.
const OUTPUT_LIMIT: usize = 4096;
/// After the program exited, how long its output pipes may stay open (held by a background
/// child it left behind) before we stop reading them.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

pub(crate) struct CommandSink {
    name: String,
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

impl CommandSink {
    pub(crate) fn open(name: &str, settings: &CommandSinkSettings) -> CommandSink {
        CommandSink {
            name: name.to_string(),
            program: settings.program.clone(),
            args: settings.args.clone(),
            timeout: settings.timeout,
        }
    }

    pub(crate) async fn deliver(&self, line: &SinkLine, attempt: u32) -> Result<(), SinkError> {
        // An environment variable cannot hold a NUL byte, and no later attempt changes the
        // event: a permanent failure of this one event, not an outage of the sink.
        for (variable, value) in [
            ("ATTIO_EVENT_ID", &*line.id),
            ("ATTIO_EVENT_TYPE", &*line.event_type),
        ] {
            if value.contains('\0') {
                return Err(SinkError::permanent(format!(
                    "{variable} would be {:?}, which holds a NUL byte: an environment variable \
                     cannot carry it, so the program cannot be run for this event",
                    crate::event::printable(value)
                )));
            }
        }
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env("ATTIO_EVENT_ID", &*line.id)
            .env("ATTIO_EVENT_TYPE", &*line.event_type)
            .env("ATTIO_EVENT_ATTEMPT", attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().map_err(|error| {
            let message = format!("cannot run {:?}: {error}", self.program);
            match error.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    SinkError::permanent(message)
                }
                _ => SinkError::transient(message),
            }
        })?;
        let pid = child.id();

        let stdin = child.stdin.take().map(|mut stdin| {
            let mut input = Vec::with_capacity(line.json.len() + 1);
            input.extend_from_slice(&line.json);
            input.push(b'\n');
            tokio::spawn(async move {
                // A program that does not read its input closes the pipe: that is its business.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            })
        });
        let stdout = child
            .stdout
            .take()
            .map(|pipe| tokio::spawn(read_capped(pipe)));
        let stderr = child
            .stderr
            .take()
            .map(|pipe| tokio::spawn(read_capped(pipe)));

        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(error)) => Err(SinkError::transient(format!(
                "waiting for {:?} failed: {error}",
                self.program
            ))),
            Err(_) => {
                kill_group(pid);
                let _ = child.kill().await;
                Err(SinkError::transient(format!(
                    "{:?} did not finish within {} and was killed",
                    self.program,
                    humantime::format_duration(self.timeout)
                )))
            }
        };
        if let Some(task) = stdin {
            task.abort();
        }
        let stdout = collect(stdout).await;
        let stderr = collect(stderr).await;
        let failed = !matches!(&status, Ok(s) if s.success());
        if !stdout.is_empty() {
            tracing::info!(sink = %self.name, output = %stdout, "command standard output");
        }
        if !stderr.is_empty() {
            if failed {
                tracing::warn!(sink = %self.name, output = %stderr, "command standard error");
            } else {
                tracing::info!(sink = %self.name, output = %stderr, "command standard error");
            }
        }
        let status = status?;
        if status.success() {
            Ok(())
        } else {
            Err(SinkError::transient(format!(
                "{:?} exited with {status}",
                self.program
            )))
        }
    }
}

/// Kills the program's whole process group (it leads its own, see `process_group(0)`).
fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_LIMIT`] bytes and dropping the rest (so
/// the program never blocks on a full pipe).
async fn read_capped(mut pipe: impl AsyncRead + Unpin) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

async fn collect(task: Option<tokio::task::JoinHandle<(Vec<u8>, bool)>>) -> String {
    let Some(mut task) = task else {
        return String::new();
    };
    let (bytes, truncated) = match tokio::time::timeout(OUTPUT_GRACE, &mut task).await {
        Ok(Ok(output)) => output,
        _ => {
            task.abort();
            return String::new();
        }
    };
    let mut text = String::from_utf8_lossy(&bytes).trim_end().to_string();
    if truncated {
        text.push_str(" [truncated]");
    }
    text
}
