//! The Redis the daemon is pointed at, as the real binary sees it: `rediss://` against a private
//! `redis-server --tls-port` with certificates made for the test, and the persistence check
//! against private redis-servers with and without AOF.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{
    binary, free_port, post_signed_to, record_updated_body, unique_prefix, wait_for_jsonl,
    ConfigToml, Daemon, RedisServer, SECRET,
};

const WAIT: Duration = Duration::from_secs(20);

/// A config for the Redis queue; `extra` adds keys (sections must not repeat `[queue]`).
fn queue_config(dir: &Path, redis_url: &str, extra_redis: &str, extra: &str) -> PathBuf {
    ConfigToml::new()
        .storage(&dir.join("data"))
        .raw(&format!("[queue]\nbackend = \"redis\"\n{extra}"))
        .redis(redis_url, &unique_prefix())
        .raw(extra_redis)
        .fast_worker("")
        .jsonl_for_all(&dir.join("events.jsonl"))
        .write(dir)
}

/// Runs the binary to completion: (exit code, stdout and stderr together).
fn run_to_exit(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (i32, String) {
    let mut command = Command::new(binary());
    command
        .args(args)
        .current_dir(dir)
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env("APP_ENV", "test")
        .env("ATTIO_WEBHOOK_SECRET", SECRET)
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// A redis-server that only speaks TLS, with a CA and a server certificate for 127.0.0.1 made
/// by the openssl command. `None` (the test is skipped, saying so) without openssl or without a
/// redis-server built with TLS.
struct TlsRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> Option<TlsRedis> {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n",
        )
        .unwrap();
        let made = openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=attio-webhooks test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]) && openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]) && openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        if !made {
            eprintln!("skipping: the openssl command is missing or failed (.ci/run installs it)");
            return None;
        }
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut server = TlsRedis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if server.child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                eprintln!(
                    "skipping: redis-server does not start with --tls-port (built without TLS?)"
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_redis_queue_works_over_tls_with_a_rediss_url() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = queue_config(
        dir.path(),
        &redis.url(),
        &format!("tls_ca_file = {:?}", redis.ca_file().display().to_string()),
        "",
    );
    let (code, output) = run_to_exit(
        &["check-config", "--config", config.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_eq!(code, 0, "{output}");
    // A TLS-only Redis without AOF: check-config reached it and read its persistence.
    assert!(output.contains("appendonly no"), "{output}");

    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(WAIT).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    // Ready means the journal answered: over TLS.
    while client
        .get(daemon.url("/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "never ready: {}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = post_signed_to(
        &client,
        &daemon.url("/webhooks/attio"),
        &record_updated_body(1),
        Some("over-tls"),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200, "{}", daemon.stderr());
    let lines = wait_for_jsonl(&dir.path().join("events.jsonl"), 1, WAIT).await;
    assert_eq!(lines[0]["id"], "over-tls:0");
}

#[test]
fn a_redis_url_serve_would_refuse_is_refused_by_check_config_too_in_words() {
    let dir = tempfile::tempdir().unwrap();
    for (url, extra_redis, expected) in [
        (
            "rediss://:pw-text@/0",
            "",
            "is not a Redis URL: Redis URL did not parse",
        ),
        (
            "rediss://:pw-text@127.0.0.1:6380",
            "tls_ca_file = \"/nonexistent/ca.pem\"",
            "/nonexistent/ca.pem, which cannot be read",
        ),
        (
            "redis://:pw-text@127.0.0.1:6380",
            "tls_ca_file = \"/nonexistent/ca.pem\"",
            "does not start with rediss://",
        ),
    ] {
        let config = queue_config(dir.path(), url, extra_redis, "");
        for command in ["check-config", "serve"] {
            let (code, output) = run_to_exit(
                &[command, "--config", config.to_str().unwrap()],
                &[],
                dir.path(),
            );
            assert_eq!(code, 2, "{command} {url}: {output}");
            assert!(
                output.contains("redis.url") && output.contains(expected),
                "{command} {url}: {output}"
            );
            assert!(!output.contains("pw-text"), "{command}: {output}");
        }
    }
}

#[tokio::test]
async fn a_redis_without_aof_is_named_with_what_it_would_lose_and_refused_in_production() {
    let (Some(volatile), Some(durable)) = (
        RedisServer::ephemeral().await,
        RedisServer::with_aof().await,
    ) else {
        eprintln!("skipping: redis-server is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let production = [
        ("APP_ENV", "production"),
        ("ATTIO_WEBHOOK_SECRET", SECRET),
        ("ATTIO_WEBHOOKS_ADMIN_TOKEN", "admin-token"),
    ];

    // Without AOF: a warning outside production...
    let config = queue_config(dir.path(), &volatile.url(), "", "");
    let (code, output) = run_to_exit(
        &["check-config", "--config", config.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("warning: Redis keeps no append-only file")
            && output.contains("acknowledged delivery"),
        "{output}"
    );
    let mut daemon = Daemon::start(dir.path(), &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(WAIT).await;
    let log = daemon.stderr();
    daemon.kill();
    assert!(
        log.contains("Redis keeps no append-only file") && log.contains("retry schedule"),
        "{log}"
    );

    // ...a refusal in production, from check-config and from serve alike...
    for command in ["check-config", "serve"] {
        let (code, output) = run_to_exit(
            &[command, "--config", config.to_str().unwrap()],
            &production,
            dir.path(),
        );
        assert_eq!(code, 2, "{command}: {output}");
        assert!(
            output.contains("appendonly no") && output.contains("queue.allow_volatile_redis"),
            "{command}: {output}"
        );
    }

    // ...unless the operator accepts the loss.
    let accepted = queue_config(
        dir.path(),
        &volatile.url(),
        "",
        "allow_volatile_redis = true",
    );
    let mut daemon = Daemon::start(dir.path(), &accepted, &production);
    daemon.wait_healthy(WAIT).await;
    assert!(daemon.stderr().contains("Redis keeps no append-only file"));
    daemon.kill();

    // AOF fsynced on every write: nothing to warn about, production starts.
    let config = queue_config(dir.path(), &durable.url(), "", "");
    let (code, output) = run_to_exit(
        &["check-config", "--config", config.to_str().unwrap()],
        &production,
        dir.path(),
    );
    assert_eq!(code, 0, "{output}");
    assert!(!output.contains("append-only file"), "{output}");
    let mut daemon = Daemon::start(dir.path(), &config, &production);
    daemon.wait_healthy(WAIT).await;
    let log = daemon.stderr();
    daemon.kill();
    assert!(
        log.contains("Redis keeps every acknowledged delivery")
            && !log.contains("append-only file"),
        "{log}"
    );
}
