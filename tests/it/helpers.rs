//! Shared test scaffolding: spawn the daemon in-process on port 0 (or the real binary), sign and
//! post deliveries, read what reached the sinks, and talk to the real Redis on 127.0.0.1:6379.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attio_webhooks::app::Application;
use attio_webhooks::config::Config;
use attio_webhooks::signature::sign;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-0123456789";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A fixture file's bytes, exactly as stored.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A fresh key prefix, so tests sharing one Redis never see each other's keys.
pub fn unique_prefix() -> String {
    format!("it-{}", uuid::Uuid::new_v4().simple())
}

/// A distinct, realistic record.updated delivery.
pub fn record_updated_body(n: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "webhook_id": "23e42eaf-323a-41da-b5bb-fd67eebda553",
        "events": [{
            "event_type": "record.updated",
            "id": {
                "workspace_id": "14beef7a-99f7-4534-a87e-70b564330a4c",
                "object_id": "97052eb9-e65e-443f-a297-f2d9a4a7f795",
                "record_id": format!("00000000-0000-4000-8000-{n:012}"),
                "attribute_id": "41252299-f8c7-4b5e-99c9-4ff8321d2f96"
            },
            "actor": {"type": "workspace-member", "id": "50cf242c-7fa3-4cad-87d0-75b1af71c57b"}
        }]
    }))
    .unwrap()
}

/// How a test app is configured.
pub struct TestAppBuilder {
    redis_prefix: Option<String>,
    extra_toml: String,
    routes_toml: Option<String>,
    worker_enabled: bool,
    storage: Option<PathBuf>,
    secrets: Vec<String>,
}

impl TestAppBuilder {
    /// Replaces the configured secrets (default: [`SECRET`]).
    pub fn secrets(mut self, secrets: &[&str]) -> Self {
        self.secrets = secrets.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Deduplicate on the real Redis under a fresh key prefix.
    pub fn redis(mut self) -> Self {
        self.redis_prefix = Some(unique_prefix());
        self
    }

    /// Deduplicate on the real Redis under `prefix`, shared with other apps given the same one
    /// (replicas).
    pub fn redis_with_prefix(mut self, prefix: &str) -> Self {
        self.redis_prefix = Some(prefix.to_string());
        self
    }

    /// Extra TOML appended to the test settings (may add sections, not repeat them).
    pub fn toml(mut self, extra: &str) -> Self {
        self.extra_toml.push_str(extra);
        self.extra_toml.push('\n');
        self
    }

    /// Replaces the default sinks and routes (everything to `events.jsonl`).
    pub fn routes(mut self, routes_and_sinks: &str) -> Self {
        self.routes_toml = Some(routes_and_sinks.to_string());
        self
    }

    pub fn worker(mut self, enabled: bool) -> Self {
        self.worker_enabled = enabled;
        self
    }

    /// Reuse a storage directory (to test restarts).
    pub fn storage(mut self, dir: &Path) -> Self {
        self.storage = Some(dir.to_path_buf());
        self
    }

    pub async fn spawn(self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let storage = self
            .storage
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let sink_path = dir.path().join("events.jsonl");
        let routes = self
            .routes_toml
            .clone()
            .unwrap_or_else(|| jsonl_sink(&sink_path));
        let redis = match &self.redis_prefix {
            Some(prefix) => format!("[redis]\nurl = \"{REDIS_URL}\"\nkey_prefix = \"{prefix}\"\n"),
            None => String::new(),
        };
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [webhook]\nsecrets = {:?}\n\
             [storage]\npath = {:?}\n\
             [worker]\nenabled = {}\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\npoll_interval = \"100ms\"\nshutdown_grace = \"5s\"\n\
             {redis}\n{routes}",
            self.secrets,
            storage.display().to_string(),
            self.worker_enabled,
        );
        let config = Config::from_toml_layers("test", &[&toml, &self.extra_toml])
            .unwrap_or_else(|e| panic!("test settings invalid: {e}\n{toml}"));
        let application = Application::build(config).await.expect("app builds");
        let addr = application.local_addr().unwrap();
        let admin_addr = application.admin_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(application.run(shutdown.clone()));
        TestApp {
            addr,
            admin_addr,
            dir,
            sink_path,
            storage,
            handle: Some(handle),
            redis_prefix: self.redis_prefix,
            client: reqwest::Client::new(),
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
        }
    }
}

/// A daemon running inside the test process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub sink_path: PathBuf,
    pub storage: PathBuf,
    pub shutdown: CancellationToken,
    pub handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub redis_prefix: Option<String>,
    pub client: reqwest::Client,
    /// Stops the app when the test drops it without calling `stop`.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            redis_prefix: None,
            extra_toml: String::new(),
            routes_toml: None,
            worker_enabled: true,
            storage: None,
            secrets: vec![SECRET.to_string()],
        }
    }

    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts `body` signed with the test secret.
    pub async fn post_signed(
        &self,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> reqwest::Response {
        let signature = sign(SECRET, body);
        self.post_raw(body, Some(&signature), idempotency_key).await
    }

    /// Posts `body` with the given signature header (or none).
    pub async fn post_raw(
        &self,
        body: &[u8],
        signature: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/webhooks/attio"))
            .header("content-type", "application/json")
            .header(
                "user-agent",
                "Attio 2.0 (https://attio.com/developers/using-webhooks)",
            )
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("attio-signature", signature);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.expect("request reaches the app")
    }

    /// Lines in the default jsonl sink.
    pub fn sink_lines(&self) -> Vec<Value> {
        read_jsonl(&self.sink_path)
    }

    /// Waits until the default sink holds at least `count` lines (or fails after `timeout`).
    pub async fn wait_for_lines(&self, count: usize, timeout: Duration) -> Vec<Value> {
        wait_for_jsonl(&self.sink_path, count, timeout).await
    }

    /// The journal's pending events, as `/readyz` reports them.
    pub async fn backlog(&self) -> u64 {
        let ready: Value = self
            .client
            .get(self.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ready["checks"]["backlog"].as_u64().unwrap()
    }

    /// Waits until no event is pending (or `timeout` passed); returns the last backlog seen.
    pub async fn wait_until_drained(&self, timeout: Duration) -> u64 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let backlog = self.backlog().await;
            if backlog == 0 || std::time::Instant::now() > deadline {
                return backlog;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the app and waits for it to exit cleanly.
    pub async fn stop(mut self) -> TestStopped {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("app task").expect("app exits cleanly");
        }
        TestStopped {
            dir: self.dir,
            sink_path: self.sink_path,
            storage: self.storage,
        }
    }
}

/// What is left of a stopped app: its files.
pub struct TestStopped {
    pub dir: tempfile::TempDir,
    pub sink_path: PathBuf,
    pub storage: PathBuf,
}

/// The sections of a daemon's config.toml that the tests repeat, in the order they are added.
#[derive(Debug, Default)]
pub struct ConfigToml {
    text: String,
}

impl ConfigToml {
    pub fn new() -> ConfigToml {
        ConfigToml::default()
    }

    /// `[storage]`: the journal under `path`.
    pub fn storage(self, path: &Path) -> ConfigToml {
        self.raw(&format!(
            "[storage]\npath = {:?}",
            path.display().to_string()
        ))
    }

    /// `[worker]` retrying within a test's patience (from 50 ms, at most 200 ms, looking every
    /// 100 ms); `extra` holds more `[worker]` keys, one a line.
    pub fn fast_worker(self, extra: &str) -> ConfigToml {
        self.raw(&format!(
            "[worker]\n{extra}retry_initial = \"50ms\"\nretry_max = \"200ms\"\npoll_interval = \"100ms\""
        ))
    }

    /// `[redis]` at `url`, keys under `prefix`.
    pub fn redis(self, url: &str, prefix: &str) -> ConfigToml {
        self.raw(&format!(
            "[redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\""
        ))
    }

    /// A jsonl sink `file` at `path` and a route `all` that sends it every event.
    pub fn jsonl_for_all(self, path: &Path) -> ConfigToml {
        self.raw(&jsonl_sink(path))
    }

    /// Any other text, as it is, on lines of its own.
    pub fn raw(mut self, text: &str) -> ConfigToml {
        self.text.push_str(text);
        if !self.text.ends_with('\n') {
            self.text.push('\n');
        }
        self
    }

    pub fn build(self) -> String {
        self.text
    }

    /// Writes `dir/config.toml` and returns its path.
    pub fn write(self, dir: &Path) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, self.text).unwrap();
        path
    }
}

/// A jsonl sink `file` at `path` and a route `all` that sends it every event.
pub fn jsonl_sink(path: &Path) -> String {
    format!(
        "[sinks.file]\nkind = \"jsonl\"\npath = {:?}\n\n[[routes]]\nname = \"all\"\nevents = [\"*\"]\nsinks = [\"file\"]\n",
        path.display().to_string()
    )
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("sink line is not JSON ({e}): {l}"))
        })
        .collect()
}

pub async fn wait_for_jsonl(path: &Path, count: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = read_jsonl(path);
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis connection for assertions. It waits up to 10 s for an answer (the crate's default is
/// 500 ms): the Redis the tests share may be busy with a benchmark or another test binary.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis on 127.0.0.1:6379 (start it with redis-server)")
}

/// The real binary, for tests where a process boundary matters (signals, crashes, env vars).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_attio-webhooks"))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon as a child process.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `attio-webhooks serve` with `config_file`, in `workdir`, with extra environment.
    pub fn start(workdir: &Path, config_file: &Path, env: &[(&str, &str)]) -> Daemon {
        Self::start_on(free_port(), workdir, config_file, env)
    }

    /// [`Daemon::start`] on a given port (to restart on the same address); the log file is
    /// appended to, so a restart keeps the earlier lives' logs.
    pub fn start_on(port: u16, workdir: &Path, config_file: &Path, env: &[(&str, &str)]) -> Daemon {
        let stderr_path = workdir.join(format!("daemon-{port}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        Self::spawn(port, workdir, config_file, env, stderr.into(), stderr_path)
    }

    /// [`Daemon::start`] with standard error on a pipe that the caller holds, and may never read
    /// (`Daemon::stderr` is then empty).
    pub fn start_with_stderr_pipe(
        workdir: &Path,
        config_file: &Path,
        env: &[(&str, &str)],
    ) -> (Daemon, std::process::ChildStderr) {
        let port = free_port();
        let stderr_path = workdir.join(format!("daemon-{port}.piped"));
        let mut daemon = Self::spawn(port, workdir, config_file, env, Stdio::piped(), stderr_path);
        let pipe = daemon.child.stderr.take().expect("stderr is piped");
        (daemon, pipe)
    }

    fn spawn(
        port: u16,
        workdir: &Path,
        config_file: &Path,
        env: &[(&str, &str)],
        stderr: Stdio,
        stderr_path: PathBuf,
    ) -> Daemon {
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(config_file)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(workdir)
            .env("APP_ENV", "test")
            .env(
                "APP_CONFIG_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
            )
            .env_remove("ATTIO_WEBHOOK_SECRET")
            .env_remove("REDIS_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("binary starts");
        Daemon {
            child,
            port,
            stderr_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until /healthz answers (or the process died).
    pub async fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon exited early with {status}: {}",
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                );
            }
            if let Ok(response) = client.get(self.url("/healthz")).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "daemon did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts a signed body to `url`.
pub async fn post_signed_to(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    key: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("attio-signature", sign(SECRET, body))
        .body(body.to_vec());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await
}

/// Posts the deliveries `record_updated_body(0..count)` to `url` one after another, with the
/// Idempotency-Keys `{prefix}-{n}`, and checks that each is answered 200.
pub async fn send_distinct_to(client: &reqwest::Client, url: &str, prefix: &str, count: usize) {
    for n in 0..count {
        let response = post_signed_to(
            client,
            url,
            &record_updated_body(n),
            Some(&format!("{prefix}-{n}")),
        )
        .await
        .unwrap_or_else(|error| panic!("delivery {n} was not answered: {error}"));
        assert_eq!(response.status(), 200, "delivery {n}");
    }
}

/// A private redis-server on a port of its own, in its own directory, that a test stops and
/// starts again. `None` when `redis-server` is not installed (`.ci/run` installs it).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    persistence: &'static [&'static str],
}

impl RedisServer {
    /// Without persistence: a restart starts empty, as after losing the machine.
    pub async fn ephemeral() -> Option<RedisServer> {
        Self::start(&["--save", "", "--appendonly", "no"]).await
    }

    /// With AOF fsynced on every write: a restart keeps whatever was acknowledged.
    pub async fn with_aof() -> Option<RedisServer> {
        Self::start(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .await
    }

    async fn start(persistence: &'static [&'static str]) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return None;
        }
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            persistence,
        };
        server.resume().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers PING.
    pub async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(self.persistence)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server with SIGKILL: nothing that was not already on disk survives.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
