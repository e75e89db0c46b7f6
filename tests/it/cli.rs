//! The developer tools, run as the real binary: `send` against a running daemon (and against a
//! capturing HTTP server for byte-exactness), `sign`, `verify` and `check-config`.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attio_webhooks::cli::templates::TEMPLATES;
use attio_webhooks::config::DEVELOPMENT_SECRET;
use attio_webhooks::journal::Backend;
use attio_webhooks::signature::sign;
use axum::http::HeaderMap;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::helpers::{binary, fixture, free_port, record_updated_body, TestApp, SECRET};

/// Runs the binary with a clean environment (plus `env`), in a scratch directory.
async fn run(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let workdir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .current_dir(workdir.path())
        .env_clear()
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("binary starts");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn webhook_url(app: &TestApp) -> String {
    app.url("/webhooks/attio")
}

#[tokio::test]
async fn send_delivers_an_event_the_daemon_accepts() {
    let app = TestApp::spawn().await;
    let record_id = "bf071e1f-6035-429d-b874-d83ea64ea13b";
    let url = webhook_url(&app);
    let output = run(
        &[
            "send",
            "record.updated",
            "--to",
            &url,
            "--secret",
            SECRET,
            "--record-id",
            record_id,
        ],
        &[],
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("200 OK"), "{}", stdout(&output));
    assert!(stdout(&output).contains("accepted"), "{}", stdout(&output));

    let lines = app.wait_for_lines(1, Duration::from_secs(10)).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event_type"], "record.updated");
    assert_eq!(lines[0]["event"]["id"]["record_id"], record_id);
    assert_eq!(lines[0]["event"]["actor"]["type"], "workspace-member");
}

#[tokio::test]
async fn send_with_a_wrong_secret_is_refused_and_exits_non_zero() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let wrong = "not-the-daemons-secret";
    let output = run(
        &["send", "record.created", "--to", &url, "--secret", wrong],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).starts_with("401"), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(
        message.contains("refused the signature") && message.contains("check the secret"),
        "{message}"
    );
    assert!(!message.contains(wrong) && !stdout(&output).contains(wrong));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.sink_lines().is_empty());
}

#[tokio::test]
async fn the_same_idempotency_key_twice_yields_one_event() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let args = [
        "send",
        "task.created",
        "--to",
        &url,
        "--secret",
        SECRET,
        "--idempotency-key",
        "retry-me-once",
    ];
    let first = run(&args, &[], b"").await;
    assert!(first.status.success(), "{}", stderr(&first));
    let second = run(&args, &[], b"").await;
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stdout(&second).contains("duplicate"), "{}", stdout(&second));

    let lines = app.wait_for_lines(1, Duration::from_secs(10)).await;
    assert_eq!(lines.len(), 1);
    // Give a wrongly accepted second copy the time to reach the sink.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = app.sink_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["delivery_key"], "retry-me-once");
}

#[tokio::test]
async fn send_count_50_yields_50_distinct_events() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let output = run(
        &[
            "send",
            "record.updated",
            "--to",
            &url,
            "--secret",
            SECRET,
            "--count",
            "50",
            "--concurrency",
            "8",
        ],
        &[],
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("200 OK: 50"),
        "{}",
        stdout(&output)
    );

    let lines = app.wait_for_lines(50, Duration::from_secs(20)).await;
    assert_eq!(lines.len(), 50);
    let keys: HashSet<&str> = lines
        .iter()
        .map(|l| l["delivery_key"].as_str().unwrap())
        .collect();
    let records: HashSet<&str> = lines
        .iter()
        .map(|l| l["event"]["id"]["record_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 50);
    assert_eq!(records.len(), 50);
    // One run is one webhook in one workspace.
    let webhooks: HashSet<&str> = lines
        .iter()
        .map(|l| l["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(webhooks.len(), 1);
}

#[tokio::test]
async fn every_template_is_accepted_and_parsed_as_its_event_type() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let output = run(&["send", "*", "--to", &url, "--secret", SECRET], &[], b"").await;
    assert!(output.status.success(), "{}", stderr(&output));

    let lines = app
        .wait_for_lines(TEMPLATES.len(), Duration::from_secs(20))
        .await;
    assert_eq!(lines.len(), TEMPLATES.len());
    let delivered: HashSet<&str> = lines
        .iter()
        .map(|l| l["event_type"].as_str().unwrap())
        .collect();
    let expected: HashSet<&str> = TEMPLATES.iter().map(|(name, _)| *name).collect();
    assert_eq!(delivered, expected);
    for line in &lines {
        assert_eq!(line["event"]["event_type"], line["event_type"]);
        assert!(line["event"]["id"]["workspace_id"].is_string(), "{line}");
    }
}

/// What the capturing receiver got: each request's headers and body.
type Captured = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver that records what it got and answers 202.
async fn capturing_server() -> (String, Captured) {
    let seen: Captured = Arc::default();
    let store = Arc::clone(&seen);
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push((headers, body.to_vec()));
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/hook"), seen)
}

#[tokio::test]
async fn send_file_posts_the_bytes_exactly_with_attios_headers() {
    let (url, seen) = capturing_server().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/attio_docs__record.updated_delivery.json");
    let file = fixture("attio_docs__record.updated_delivery.json");
    let output = run(
        &[
            "send",
            "--file",
            path.to_str().unwrap(),
            "--to",
            &url,
            "--secret",
            SECRET,
            "--idempotency-key",
            "key-1",
        ],
        &[],
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    assert_eq!(body, &file, "the file is sent byte for byte");
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_string();
    let signature = sign(SECRET, &file);
    assert_eq!(header("attio-signature"), signature);
    assert_eq!(header("x-attio-signature"), signature);
    assert_eq!(header("idempotency-key"), "key-1");
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(
        header("user-agent"),
        "Attio 2.0 (https://attio.com/developers/using-webhooks)"
    );
}

#[tokio::test]
async fn send_without_a_secret_in_development_signs_with_the_development_secret() {
    let app = TestApp::builder()
        .secrets(&[DEVELOPMENT_SECRET])
        .spawn()
        .await;
    let listen = app.addr.to_string();
    // No --to either: the address comes from the settings, as `serve` would read them.
    let output = run(
        &["send", "list-entry.created"],
        &[
            ("APP_ENV", "development"),
            ("ATTIO_WEBHOOKS__SERVER__LISTEN", &listen),
        ],
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("development secret"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains(DEVELOPMENT_SECRET));
    assert!(!stdout(&output).contains(DEVELOPMENT_SECRET));
    let lines = app.wait_for_lines(1, Duration::from_secs(10)).await;
    assert_eq!(lines[0]["event_type"], "list-entry.created");
}

#[tokio::test]
async fn send_without_a_secret_in_production_refuses() {
    let output = run(
        &["send", "record.created", "--to", "http://127.0.0.1:9/x"],
        &[("APP_ENV", "production")],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("ATTIO_WEBHOOK_SECRET"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn send_refuses_an_invented_event_type_with_a_suggestion() {
    let output = run(
        &["send", "workspace-member.updated", "--secret", SECRET],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("Attio has no"), "{message}");
    assert!(message.contains("workspace-member.created"), "{message}");
}

#[tokio::test]
async fn send_to_a_daemon_that_is_not_running_says_so() {
    let url = format!("http://127.0.0.1:{}/webhooks/attio", free_port());
    let output = run(
        &["send", "record.created", "--to", &url, "--secret", SECRET],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("is the daemon running"),
        "{}",
        stderr(&output)
    );
    // The underlying cause is shown, not only a guess.
    assert!(
        stderr(&output).contains("Connection refused"),
        "{}",
        stderr(&output)
    );

    // A load run stops at the first refused connection instead of repeating it.
    let output = run(
        &[
            "send",
            "record.created",
            "--to",
            &url,
            "--secret",
            SECRET,
            "--count",
            "100000",
            "--json",
        ],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(summary["sent"].as_u64().unwrap() < 100_000, "{summary}");
    assert_eq!(summary["succeeded"], 0, "{summary}");
    assert_eq!(summary["failed"], 100_000, "{summary}");
    assert_eq!(summary["per_second"], 0.0, "{summary}");
}

#[tokio::test]
async fn a_load_run_that_delivered_nothing_reports_a_failure_not_a_rate() {
    let url = format!("http://127.0.0.1:{}/x", free_port());
    let output = run(
        &[
            "send",
            "record.updated",
            "--to",
            &url,
            "--secret",
            SECRET,
            "--count",
            "1000",
        ],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let summary = stdout(&output);
    assert!(
        summary.starts_with("FAILED: 1000 of 1000 deliveries"),
        "{summary}"
    );
    assert!(summary.contains("0 accepted"), "{summary}");
    assert!(!summary.contains("deliveries/s"), "{summary}");
    assert!(summary.contains("rate:    n/a (no answers)"), "{summary}");
}

#[tokio::test]
async fn a_load_run_with_refused_signatures_counts_them_as_failures() {
    let app = TestApp::spawn().await;
    let url = webhook_url(&app);
    let output = run(
        &[
            "send",
            "record.updated",
            "--to",
            &url,
            "--secret",
            "not-the-secret",
            "--count",
            "20",
            "--json",
        ],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["statuses"]["401"], 20, "{summary}");
    assert_eq!(summary["succeeded"], 0, "{summary}");
    assert_eq!(summary["failed"], 20, "{summary}");
}

#[derive(serde::Deserialize)]
struct Vector {
    secret: String,
    raw_body: String,
    attio_signature: String,
    wrong_if_secret_hex_decoded: String,
}

fn vector() -> Vector {
    serde_json::from_slice(&fixture("signature_vector.json")).unwrap()
}

#[tokio::test]
async fn sign_prints_the_attio_signature_of_stdin() {
    let v = vector();
    let output = run(&["sign", "--secret", &v.secret], &[], v.raw_body.as_bytes()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{}\n", v.attio_signature));

    // The secret may come from the environment instead, and is never echoed.
    let output = run(
        &["sign"],
        &[("ATTIO_WEBHOOK_SECRET", &v.secret)],
        v.raw_body.as_bytes(),
    )
    .await;
    assert_eq!(stdout(&output), format!("{}\n", v.attio_signature));
    assert!(!stderr(&output).contains(&v.secret));
}

#[tokio::test]
async fn sign_without_a_secret_in_development_agrees_with_send() {
    let development = [("APP_ENV", "development")];
    // What `send` would post, signed with the secret it falls back to.
    let sent = run(
        &[
            "send",
            "record.updated",
            "--dry-run",
            "--to",
            "http://127.0.0.1:9/x",
        ],
        &development,
        b"",
    )
    .await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    let body = stdout(&sent);
    let body = body.strip_suffix('\n').unwrap();
    let headers = stderr(&sent);
    let sent_signature = headers
        .lines()
        .find_map(|line| line.strip_prefix("Attio-Signature: "))
        .unwrap_or_else(|| panic!("no signature in {headers}"));

    let signed = run(&["sign"], &development, body.as_bytes()).await;
    assert!(signed.status.success(), "{}", stderr(&signed));
    assert_eq!(stdout(&signed).trim_end(), sent_signature);
    assert_eq!(sent_signature, sign(DEVELOPMENT_SECRET, body.as_bytes()));
    assert!(
        stderr(&signed).contains("development secret"),
        "{}",
        stderr(&signed)
    );
    assert!(!stderr(&signed).contains(DEVELOPMENT_SECRET));

    // `verify` accepts it the same way, and production never falls back.
    let verified = run(
        &["verify", "--signature", sent_signature],
        &development,
        body.as_bytes(),
    )
    .await;
    assert_eq!(verified.status.code(), Some(0), "{}", stderr(&verified));
    let production = run(&["sign"], &[("APP_ENV", "production")], body.as_bytes()).await;
    assert_eq!(production.status.code(), Some(2));
    assert!(
        stderr(&production).contains("ATTIO_WEBHOOK_SECRET"),
        "{}",
        stderr(&production)
    );
}

#[tokio::test]
async fn dead_letters_replay_without_ids_shows_all_in_its_usage() {
    let output = run(&["dead-letters", "replay"], &[], b"").await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("<IDS|--all>"), "{message}");
}

#[tokio::test]
async fn verify_exits_0_for_a_valid_signature_and_1_otherwise() {
    let v = vector();
    let valid = run(
        &[
            "verify",
            "--secret",
            &v.secret,
            "--signature",
            &v.attio_signature,
        ],
        &[],
        v.raw_body.as_bytes(),
    )
    .await;
    assert_eq!(valid.status.code(), Some(0), "{}", stdout(&valid));
    assert!(stdout(&valid).starts_with("valid"));

    let wrong = run(
        &[
            "verify",
            "--secret",
            &v.secret,
            "--signature",
            &v.wrong_if_secret_hex_decoded,
        ],
        &[],
        v.raw_body.as_bytes(),
    )
    .await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stdout(&wrong).starts_with("invalid"));

    // One added newline is a different body.
    let mut changed = v.raw_body.clone().into_bytes();
    changed.push(b'\n');
    let changed = run(
        &[
            "verify",
            "--secret",
            &v.secret,
            "--signature",
            &v.attio_signature,
        ],
        &[],
        &changed,
    )
    .await;
    assert_eq!(changed.status.code(), Some(1));
    assert!(!stdout(&changed).contains(&v.secret));
}

#[tokio::test]
async fn check_config_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[redis]\nurl = \"redis://:redis-password-xyz@127.0.0.1:6379\"\n\
         [[routes]]\nname = \"r\"\nevents = [\"record.update\"]\nsinks = [\"stdout\"]\n\
         [sinks.stdout]\nkind = \"stdout\"\n",
    )
    .unwrap();
    let env = [
        ("ATTIO_WEBHOOK_SECRET", "first-secret-abc,second-secret-def"),
        ("ATTIO_API_KEY", "attio-api-key-ghi"),
    ];
    let secrets = [
        "first-secret-abc",
        "second-secret-def",
        "redis-password-xyz",
        "attio-api-key-ghi",
    ];

    let output = run(
        &["check-config", "--config", file.to_str().unwrap()],
        &env,
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output) + &stderr(&output);
    assert!(text.contains("[redacted: 2 secrets]"), "{text}");
    assert!(text.contains("did you mean \"record.updated\""), "{text}");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }

    let output = run(
        &["check-config", "--json", "--config", file.to_str().unwrap()],
        &env,
        b"",
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(
        report["settings"]["webhook"]["secrets"],
        "[redacted: 2 secrets]"
    );
    assert_eq!(report["settings"]["redis"]["url"], "[redacted]");
    let text = stdout(&output);
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn check_config_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let output = run(
        &["check-config", "--config", file.to_str().unwrap()],
        &[("ATTIO_WEBHOOK_SECRET", "s")],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("server.listen"),
        "{}",
        stderr(&output)
    );

    // A secret in the wrong shape is named by its key, never quoted.
    std::fs::write(&file, "[webhook]\nsecrets = \"leaky-secret-value\"\n").unwrap();
    let output = run(
        &["check-config", "--config", file.to_str().unwrap()],
        &[],
        b"",
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("webhook.secrets"), "{message}");
    assert!(!message.contains("leaky-secret-value"), "{message}");
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (PEM), with its key (PKCS#8 PEM),
/// made afresh for each test as a staging proxy's would be.
fn self_signed_certificate() -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509NameBuilder, X509};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
    builder.set_serial_number(&serial).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    // As `openssl req -x509` makes them: its own CA, valid for the names it is reached by.
    builder
        .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let names = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&builder.x509v3_context(None, None))
        .unwrap();
    builder.append_extension(names).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    let certificate = builder.build().to_pem().unwrap();
    (certificate, key.private_key_to_pem_pkcs8().unwrap())
}

/// Accepts TLS connections for axum; a client that gives up on the handshake (an untrusted
/// certificate) is skipped, as a TLS proxy would.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_native_tls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_native_tls::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(stream) = self.acceptor.accept(stream).await {
                return (stream, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An HTTPS receiver with a self-signed certificate that answers 200 to a delivery signed with
/// `SECRET` (401 otherwise). Returns its URL (by the name `localhost`), the certificate's PEM,
/// and how many signed deliveries it accepted.
async fn tls_receiver() -> (String, Vec<u8>, Arc<Mutex<u32>>) {
    let (certificate, key) = self_signed_certificate();
    let identity = tokio_native_tls::native_tls::Identity::from_pkcs8(&certificate, &key).unwrap();
    let acceptor = tokio_native_tls::native_tls::TlsAcceptor::new(identity).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(0u32));
    let counter = accepted.clone();
    let router = axum::Router::new().route(
        "/webhooks/attio",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                let signature = headers
                    .get("attio-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if signature == sign(SECRET, &body) {
                    *counter.lock().unwrap() += 1;
                    (axum::http::StatusCode::OK, r#"{"status":"accepted"}"#)
                } else {
                    (
                        axum::http::StatusCode::UNAUTHORIZED,
                        r#"{"error":"signature"}"#,
                    )
                }
            }
        }),
    );
    let listener = TlsListener {
        tcp,
        acceptor: tokio_native_tls::TlsAcceptor::from(acceptor),
    };
    tokio::spawn(async move { axum::serve(listener, router).await });
    (
        format!("https://localhost:{port}/webhooks/attio"),
        certificate,
        accepted,
    )
}

#[tokio::test]
async fn send_to_an_untrusted_certificate_says_so_and_cacert_or_insecure_get_through() {
    let (url, certificate, accepted) = tls_receiver().await;
    let send = ["send", "record.updated", "--to", &url, "--secret", SECRET];

    // Not "is the daemon running?": the certificate is what failed, and the way out is named.
    let output = run(&send, &[], b"").await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("TLS handshake"), "{message}");
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("--cacert"), "{message}");
    assert!(!message.contains("is the daemon running"), "{message}");
    assert_eq!(*accepted.lock().unwrap(), 0);

    // --cacert trusts the receiver's own certificate: the delivery goes through, checked.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("staging.pem");
    std::fs::write(&pem, &certificate).unwrap();
    let pem = pem.to_str().unwrap();
    let mut with_cacert = send.to_vec();
    with_cacert.extend(["--cacert", pem]);
    let output = run(&with_cacert, &[], b"").await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("200 OK"), "{}", stdout(&output));
    assert!(!stderr(&output).contains("warning"), "{}", stderr(&output));
    assert_eq!(*accepted.lock().unwrap(), 1);

    // --insecure gets through too, with a warning.
    let mut insecure = send.to_vec();
    insecure.push("--insecure");
    let output = run(&insecure, &[], b"").await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("warning: --insecure"),
        "{}",
        stderr(&output)
    );
    assert_eq!(*accepted.lock().unwrap(), 2);

    // A file that is not a certificate is refused before anything is sent.
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let mut bad = send.to_vec();
    bad.extend(["--cacert", not_pem.to_str().unwrap()]);
    let output = run(&bad, &[], b"").await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--cacert"), "{}", stderr(&output));
}

#[tokio::test]
async fn unparsed_bodies_are_listed_shown_byte_for_byte_and_deleted() {
    let app = TestApp::spawn().await;
    let text = b"hello, not json\n";
    let binary = b"\xff\x00{\"events\":";
    for (body, key) in [(&text[..], "text"), (&binary[..], "binary")] {
        let response = app.post_signed(body, Some(key)).await;
        assert_eq!(response.status(), 202);
    }
    // The tool reads the running daemon's own journal.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {:?}\n",
            app.storage.display().to_string()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let listed = run(&["unparsed", "list", "--config", config], &[], b"").await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let table = stdout(&listed);
    assert!(table.contains("hello, not json\\n"), "{table}");
    assert!(table.contains("2 kept"), "{table}");
    assert!(table.contains("attio-webhooks unparsed delete"), "{table}");

    let shown = run(&["unparsed", "show", "1", "--config", config], &[], b"").await;
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(shown.stdout.ends_with(text), "{}", stdout(&shown));
    assert!(
        stdout(&shown).contains("idempotency key  text"),
        "{}",
        stdout(&shown)
    );
    assert!(
        stderr(&shown).contains("unparsed delete"),
        "{}",
        stderr(&shown)
    );
    let raw = run(
        &["unparsed", "show", "2", "--body-only", "--config", config],
        &[],
        b"",
    )
    .await;
    assert_eq!(raw.stdout, binary, "the body exactly as received");
    let json = run(
        &["unparsed", "list", "--json", "--config", config],
        &[],
        b"",
    )
    .await;
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json[0]["body"], "hello, not json\n");
    assert_eq!(json[1]["body_base64"], "/wB7ImV2ZW50cyI6");
    assert_eq!(json[1]["idempotency_key"], "binary");

    let deleted = run(&["unparsed", "delete", "1", "--config", config], &[], b"").await;
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let again = run(&["unparsed", "delete", "1", "--config", config], &[], b"").await;
    assert_eq!(again.status.code(), Some(1), "a body that is not there");
    let shown = run(&["unparsed", "show", "1", "--config", config], &[], b"").await;
    assert_eq!(shown.status.code(), Some(1));
    let all = run(
        &["unparsed", "delete", "--all", "--config", config],
        &[],
        b"",
    )
    .await;
    assert!(stdout(&all).contains("deleted 2"), "{}", stdout(&all));
    let listed = run(&["unparsed", "list", "--config", config], &[], b"").await;
    assert_eq!(stdout(&listed), "no unparsed bodies\n");
}

#[tokio::test]
async fn a_damaged_journal_is_named_left_unchanged_and_recovered_by_journal_recover() {
    const DELIVERIES: usize = 600;
    // Events stay pending in the journal: no worker takes them.
    let app = TestApp::builder().worker(false).spawn().await;
    for n in 0..DELIVERIES {
        let response = app
            .post_signed(&record_updated_body(n), Some(&format!("d-{n}")))
            .await;
        assert_eq!(response.status(), 200);
    }
    let stopped = app.stop().await;
    let journal = stopped.storage.join("journal.sqlite3");
    // Cut short, as a full disk or an interrupted copy leaves it.
    let length = std::fs::metadata(&journal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(length * 6 / 10)
        .unwrap();
    let damaged = std::fs::read(&journal).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\n",
            stopped.storage.display().to_string()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // The daemon does not start, names the file, says nothing changed and gives the way out.
    let serve = tokio::process::Command::new(binary())
        .args(["serve", "--config", config])
        .env_clear()
        .env("APP_ENV", "test")
        .env(
            "APP_CONFIG_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .env("ATTIO_WEBHOOK_SECRET", SECRET)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), serve)
        .await
        .expect("serve refuses a damaged journal instead of starting")
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&journal.display().to_string()),
        "{message}"
    );
    assert!(message.contains("damaged"), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(message.contains("journal recover"), "{message}");
    assert!(
        std::fs::read(&journal).unwrap() == damaged,
        "the file was changed"
    );

    let checked = run(&["journal", "check", "--config", config], &[], b"").await;
    assert_eq!(checked.status.code(), Some(1), "{}", stdout(&checked));
    assert!(stdout(&checked).contains("damaged"), "{}", stdout(&checked));
    assert!(
        std::fs::read(&journal).unwrap() == damaged,
        "check changed the file"
    );

    let recovered = run(&["journal", "recover", "--config", config], &[], b"").await;
    assert!(recovered.status.success(), "{}", stderr(&recovered));
    let report = stdout(&recovered);
    let pending: usize = report
        .lines()
        .find(|line| line.contains(" pending event(s)"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no pending count in {report}"));
    assert!(pending > 0 && pending < DELIVERIES, "{report}");
    // The damaged file is kept as it was, beside the new journal.
    let kept: Vec<std::path::PathBuf> = std::fs::read_dir(&stopped.storage)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("journal.sqlite3.damaged-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{report}");
    assert!(std::fs::read(&kept[0]).unwrap() == damaged);

    let checked = run(&["journal", "check", "--config", config], &[], b"").await;
    assert_eq!(checked.status.code(), Some(0), "{}", stdout(&checked));
    // Recovering a sound journal changes nothing.
    let sound = std::fs::read(&journal).unwrap();
    let again = run(&["journal", "recover", "--config", config], &[], b"").await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing to recover"),
        "{}",
        stdout(&again)
    );
    assert!(std::fs::read(&journal).unwrap() == sound);
    // What was recovered is there to be processed: every pending event is due.
    let reopened = attio_webhooks::journal::SqliteJournal::open(&journal).unwrap();
    assert_eq!(reopened.due(DELIVERIES * 2).await.unwrap().len(), pending);
    reopened.close().await;
}

#[tokio::test]
async fn urls_lose_their_user_info_and_query_values_in_check_config_and_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let credentials = ["url-password-text", "query-token-text", "base-token-text"];
    let routes = "[[routes]]\nname = \"r\"\nevents = [\"*\"]\nsinks = [\"hook\"]\n";

    // A valid URL: check-config shows it, without what may be a credential.
    std::fs::write(
        &file,
        format!(
            "[attio]\nbase_url = \"https://api.attio.com/?key=base-token-text\"\n\
             [sinks.hook]\nkind = \"http\"\n\
             url = \"https://user:url-password-text@hooks.test/in?token=query-token-text&team=sales\"\n{routes}"
        ),
    )
    .unwrap();
    for json in [false, true] {
        let mut args = vec!["check-config", "--config", file.to_str().unwrap()];
        if json {
            args.insert(1, "--json");
        }
        let output = run(&args, &[("ATTIO_WEBHOOK_SECRET", "s")], b"").await;
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output) + &stderr(&output);
        assert!(
            text.contains("https://redacted@hooks.test/in?token=redacted&team=redacted"),
            "{text}"
        );
        for credential in credentials {
            assert!(!text.contains(credential), "{credential} leaked: {text}");
        }
    }

    // A mistyped scheme: both check-config and serve refuse it, quoting it redacted.
    std::fs::write(
        &file,
        format!(
            "[sinks.hook]\nkind = \"http\"\n\
             url = \"http//user:url-password-text@hooks.test/in?token=query-token-text\"\n{routes}"
        ),
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let output = run(
            &[command, "--config", file.to_str().unwrap()],
            &[("ATTIO_WEBHOOK_SECRET", "s")],
            b"",
        )
        .await;
        assert_eq!(output.status.code(), Some(2), "{command}");
        let text = stdout(&output) + &stderr(&output);
        assert!(
            text.contains("sinks.hook.url")
                && text.contains("http//redacted@hooks.test/in?token=redacted"),
            "{command}: {text}"
        );
        for credential in credentials {
            assert!(
                !text.contains(credential),
                "{command}: {credential} leaked: {text}"
            );
        }
    }
}

#[tokio::test]
async fn unparsed_works_on_the_redis_queue_as_on_the_embedded_journal() {
    let prefix = crate::helpers::unique_prefix();
    let queue = format!(
        "[queue]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n",
        crate::helpers::REDIS_URL
    );
    let app = TestApp::builder().toml(&queue).spawn().await;
    let response = app.post_signed(b"[1,2,3]", Some("array")).await;
    assert_eq!(response.status(), 202);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &queue).unwrap();
    let config = config.to_str().unwrap();

    let listed = run(
        &["unparsed", "list", "--json", "--config", config],
        &[],
        b"",
    )
    .await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["body"], "[1,2,3]");
    assert_eq!(listed[0]["idempotency_key"], "array");
    let id = listed[0]["id"].to_string();
    let raw = run(
        &["unparsed", "show", &id, "--body-only", "--config", config],
        &[],
        b"",
    )
    .await;
    assert_eq!(raw.stdout, b"[1,2,3]");
    let deleted = run(
        &["unparsed", "delete", "--all", "--config", config],
        &[],
        b"",
    )
    .await;
    assert!(
        stdout(&deleted).contains("1 unparsed body(ies) deleted"),
        "{}",
        stdout(&deleted)
    );
    let listed = run(&["unparsed", "list", "--config", config], &[], b"").await;
    assert_eq!(stdout(&listed), "no unparsed bodies\n");

    app.stop().await;
    let mut redis = crate::helpers::redis().await;
    let keys: Vec<String> = [
        "events",
        "pending",
        "retry",
        "dead",
        "dead-deliveries",
        "dead-delivery-seq",
        "probe",
    ]
    .iter()
    .map(|name| format!("{{{prefix}}}:{name}"))
    .collect();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
}
