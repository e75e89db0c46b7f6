//! Settings as an operator meets them, through the real binary: a bad value stops `serve` and
//! `check-config` naming the key, where it came from and what is allowed; warnings for settings
//! that do nothing; the start error printed once; logs without colour codes off a terminal; and
//! one-shot commands that end quietly when their reader goes away.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use attio_webhooks::config::DEVELOPMENT_SECRET;
use serde_json::Value;

use crate::helpers::{binary, Daemon};

/// The binary with a clean environment (plus `env`), in `workdir`, standard input empty.
fn command(workdir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    command
        .args(args)
        .current_dir(workdir)
        .env_clear()
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

fn run(workdir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(workdir, args, env)
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A scratch directory holding `config.toml` with `toml` in it.
fn with_config(toml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, toml).unwrap();
    let file = file.to_str().unwrap().to_string();
    (dir, file)
}

const SECRET_ENV: [(&str, &str); 1] = [("ATTIO_WEBHOOK_SECRET", "s")];

#[test]
fn check_config_and_serve_refuse_a_misspelt_log_level() {
    let (dir, file) = with_config("[log]\nlevel = \"warning\"\n");
    for args in [
        vec!["check-config", "--config", &file],
        vec!["serve", "--config", &file, "--listen", "127.0.0.1:0"],
    ] {
        let output = run(dir.path(), &args, &SECRET_ENV);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(
            message.contains("`log.level`")
                && message.contains("\"warning\"")
                && message.contains("trace, debug, info, warn, error or off"),
            "{args:?}: {message}"
        );
    }
    // RUST_LOG overrides log.level, so it is checked the same way.
    let output = run(
        dir.path(),
        &["check-config"],
        &[("ATTIO_WEBHOOK_SECRET", "s"), ("RUST_LOG", "debugg")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("RUST_LOG"), "{}", stderr(&output));
}

#[test]
fn serve_refuses_a_tokio_worker_threads_that_is_not_a_count_of_threads() {
    let (dir, file) = with_config("");
    let output = run(
        dir.path(),
        &["serve", "--config", &file, "--listen", "127.0.0.1:0"],
        &[("ATTIO_WEBHOOK_SECRET", "s"), ("TOKIO_WORKER_THREADS", "0")],
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("TOKIO_WORKER_THREADS is \"0\"") && message.contains("above 0"),
        "{message}"
    );
}

#[test]
fn an_unknown_key_names_the_file_or_the_environment_variable_it_came_from() {
    let (dir, file) = with_config("[storage]\npth = \"x\"\n");
    let output = run(
        dir.path(),
        &["check-config", "--config", &file],
        &SECRET_ENV,
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("`storage.pth`")
            && message.contains(&format!("in {file}"))
            && message.contains("`path`")
            && message.contains("`sync`"),
        "{message}"
    );

    let output = run(
        dir.path(),
        &["check-config"],
        &[
            ("ATTIO_WEBHOOK_SECRET", "s"),
            ("ATTIO_WEBHOOKS__STORAGE__PTH", "x"),
        ],
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("`storage.pth`")
            && message.contains("environment variable ATTIO_WEBHOOKS__STORAGE__PTH"),
        "{message}"
    );
}

#[test]
fn app_env_in_another_case_is_production_and_an_unknown_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        dir.path(),
        &["check-config"],
        &[
            ("APP_ENV", "Production"),
            ("ATTIO_WEBHOOK_SECRET", DEVELOPMENT_SECRET),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("APP_ENV=production"),
        "{}",
        stderr(&output)
    );

    // With a real secret it runs as production: production.toml's JSON logs apply.
    let output = run(
        dir.path(),
        &["check-config", "--json"],
        &[
            ("APP_ENV", "PRODUCTION"),
            ("ATTIO_WEBHOOK_SECRET", "s"),
            ("ATTIO_WEBHOOKS_ADMIN_TOKEN", "t"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["environment"], "production");
    assert_eq!(report["settings"]["log"]["format"], "json");

    let output = run(
        dir.path(),
        &["check-config"],
        &[("APP_ENV", "prod"), ("ATTIO_WEBHOOK_SECRET", "s")],
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("`APP_ENV`")
            && message.contains("prod.toml")
            && message.contains("development, test, production"),
        "{message}"
    );
}

/// Waits until the daemon's log holds `text`.
async fn wait_for_log(daemon: &Daemon, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = daemon.stderr();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "no {text:?} in the log: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn check_config_and_serve_warn_about_a_sink_that_no_route_names() {
    let (dir, file) = with_config("[sinks.audit]\nkind = \"jsonl\"\npath = \"events.jsonl\"\n");
    let output = run(
        dir.path(),
        &["check-config", "--config", &file],
        &SECRET_ENV,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("# warning: sink \"audit\" is named by no route"),
        "{}",
        stdout(&output)
    );

    let mut daemon = Daemon::start(dir.path(), Path::new(&file), &SECRET_ENV);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    wait_for_log(&daemon, "sink \"audit\" is named by no route").await;
}

#[test]
fn check_config_refuses_a_storage_path_it_cannot_create_and_leaves_a_creatable_one_as_it_was() {
    let (dir, file) = with_config("[storage]\npath = \"blocker/data\"\n");
    std::fs::write(dir.path().join("blocker"), "a file in the way").unwrap();
    let output = run(
        dir.path(),
        &["check-config", "--config", &file],
        &SECRET_ENV,
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("`storage.path`") && message.contains("blocker/data"),
        "{message}"
    );

    std::fs::write(&file, "[storage]\npath = \"new/deeper/data\"\n").unwrap();
    let output = run(
        dir.path(),
        &["check-config", "--config", &file],
        &SECRET_ENV,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !dir.path().join("new").exists(),
        "the check removed what it created"
    );
}

#[test]
fn a_start_error_is_printed_once_and_a_taken_admin_port_names_admin_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (dir, file) = with_config(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
    let output = command(
        dir.path(),
        &["serve", "--config", &file, "--listen", "127.0.0.1:0"],
        &SECRET_ENV,
    )
    .stdout(Stdio::null())
    .output()
    .unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert_eq!(message.matches("cannot listen").count(), 1, "{message}");
    assert!(message.contains("admin.listen"), "{message}");
    assert!(!message.contains("--listen"), "{message}");
    drop(taken);
}

#[tokio::test]
async fn pretty_logs_written_to_a_file_carry_no_colour_codes() {
    let (dir, file) = with_config("[log]\nformat = \"pretty\"\n");
    let mut daemon = Daemon::start(
        dir.path(),
        Path::new(&file),
        &[("ATTIO_WEBHOOK_SECRET", DEVELOPMENT_SECRET)],
    );
    daemon.wait_healthy(Duration::from_secs(20)).await;
    let log = wait_for_log(&daemon, "DEVELOPMENT WEBHOOK SECRET").await;
    assert!(!log.contains('\u{1b}'), "escape codes in {log:?}");
}

#[tokio::test]
async fn every_one_shot_command_ends_quietly_when_its_reader_has_gone() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["check-config"][..],
        &["check-config", "--json"],
        &["sign", "--secret", "s"],
        &["send", "--help"],
        &["--help"],
        &["webhooks", "--help"],
    ] {
        // A pipe whose reading end is closed before the command starts: its first write fails
        // with EPIPE, every time.
        let (writer, reader) = tokio::net::unix::pipe::pipe().unwrap();
        drop(reader);
        let output = command(dir.path(), args, &SECRET_ENV)
            .stdout(writer.into_blocking_fd().unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let message = stderr(&output);
        assert!(
            !message.contains("panicked") && !message.contains("Broken pipe"),
            "{args:?}: {message}"
        );
        assert!(
            output.status.success() || output.status.signal() == Some(13),
            "{args:?} ended with {:?}: {message}",
            output.status
        );
    }
}
