//! Slow, silent and idle clients against the real binary, over raw TCP sockets (issue 12,
//! item 1): each connection is closed within its timeout, the connection cap holds, and a
//! well-behaved client keeps getting answers while hundreds of slow ones are connected. The run
//! under a low open-files limit is `faults::slow_clients`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::helpers::{post_signed_to, record_updated_body, Daemon, SECRET};

/// A daemon with `server` settings of the test's own, a jsonl sink, the worker off.
async fn daemon_with(dir: &Path, server: &str) -> Daemon {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\n{server}\n[storage]\npath = {:?}\nsync = \"normal\"\n[worker]\nenabled = false\n",
            dir.join("data").display().to_string(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(dir, &config, &[("ATTIO_WEBHOOK_SECRET", SECRET)]);
    daemon.wait_healthy(Duration::from_secs(20)).await;
    daemon
}

fn connect(daemon: &Daemon) -> TcpStream {
    TcpStream::connect(("127.0.0.1", daemon.port)).expect("connects")
}

/// Reads until the server closes the connection (or `limit` passes): what it sent, and after
/// how long it closed (`None`: still open after `limit`).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return (String::from_utf8_lossy(&received).into_owned(), None);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    Some(started.elapsed()),
                )
            }
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (String::from_utf8_lossy(&received).into_owned(), None)
            }
            // A reset is the server closing too.
            Err(_) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    Some(started.elapsed()),
                )
            }
        }
    }
}

#[tokio::test]
async fn silent_connections_and_partial_headers_are_closed_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with(
        dir.path(),
        "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"",
    )
    .await;
    let mut silent = connect(&daemon);
    let mut partial = connect(&daemon);
    partial
        .write_all(b"POST /webhooks/attio HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let check = tokio::task::spawn_blocking(move || {
        let silent = read_until_closed(&mut silent, Duration::from_secs(8));
        let partial = read_until_closed(&mut partial, Duration::from_secs(8));
        (silent, partial)
    });
    let ((_, silent_closed), (_, partial_closed)) = check.await.unwrap();
    // 1 s of timeout, and up to a quarter of it for the watchdog to look again; the rest is
    // the slack of a busy machine. Without a header timeout both stay open.
    let silent_closed = silent_closed.expect("a silent connection is closed");
    let partial_closed = partial_closed.expect("a connection with partial headers is closed");
    assert!(silent_closed < Duration::from_secs(5), "{silent_closed:?}");
    assert!(
        partial_closed < Duration::from_secs(5),
        "{partial_closed:?}"
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_at_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with(dir.path(), "body_read_timeout = \"1s\"").await;
    let mut stream = connect(&daemon);
    stream
        .write_all(
            b"POST /webhooks/attio HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"webhook_id\":",
        )
        .unwrap();
    let (answer, closed) =
        tokio::task::spawn_blocking(move || read_until_closed(&mut stream, Duration::from_secs(8)))
            .await
            .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "answered 408 Request Timeout: {answer:?}"
    );
    assert!(answer.contains("body_timeout"), "{answer:?}");
    assert!(closed.is_some(), "and the connection is closed: {answer:?}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with(
        dir.path(),
        "header_read_timeout = \"6s\"\nidle_timeout = \"2s\"",
    )
    .await;
    let mut stream = connect(&daemon);
    let outcome = tokio::task::spawn_blocking(move || {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut answers = Vec::new();
        // Two requests 1 s apart, within the idle timeout: the connection is kept.
        for _ in 0..2 {
            stream.write_all(request).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buffer = [0u8; 1024];
            let n = stream.read(&mut buffer).unwrap();
            answers.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            std::thread::sleep(Duration::from_secs(1));
        }
        let idle_since = Instant::now() - Duration::from_secs(1);
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
        (answers, closed.map(|_| idle_since.elapsed()))
    });
    let (answers, idle_for) = outcome.await.unwrap();
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
    let idle_for = idle_for.expect("an idle connection is closed");
    // Closed after the 2 s idle timeout, well before the 6 s header timeout would have.
    assert!(
        idle_for >= Duration::from_millis(1900) && idle_for < Duration::from_secs(5),
        "closed after {idle_for:?} idle"
    );
}

/// Sockets the process `pid` has open.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test]
async fn open_connections_never_exceed_max_connections_and_a_waiting_client_is_served_after() {
    const CAP: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon_with(
        dir.path(),
        &format!("max_connections = {CAP}\nheader_read_timeout = \"2s\""),
    )
    .await;
    let pid = daemon.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = open_sockets(pid);
    let silent: Vec<TcpStream> = (0..3 * CAP).map(|_| connect(&daemon)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = open_sockets(pid) - before;
    assert_eq!(
        held,
        CAP,
        "the daemon holds exactly server.max_connections of the {} connections",
        silent.len()
    );
    // A client waiting in the listen queue is served once the silent ones time out.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let response = post_signed_to(
        &client,
        &daemon.url("/webhooks/attio"),
        &record_updated_body(1),
        Some("capped-1"),
    )
    .await
    .expect("answered once a place is free");
    assert_eq!(response.status(), 200);
    assert!(open_sockets(pid) - before <= CAP);
    assert!(
        daemon.stderr().contains("server.max_connections"),
        "the cap is logged:\n{}",
        daemon.stderr()
    );
}

#[tokio::test]
async fn a_well_behaved_client_is_answered_while_hundreds_of_slow_clients_are_connected() {
    const SLOW: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    // Timeouts far longer than the test: the answers cannot come from slow clients being cut off.
    let daemon = daemon_with(
        dir.path(),
        "header_read_timeout = \"60s\"\nbody_read_timeout = \"60s\"",
    )
    .await;
    let mut slow = Vec::new();
    for n in 0..SLOW {
        let mut stream = connect(&daemon);
        match n % 3 {
            0 => {}
            1 => stream
                .write_all(b"POST /webhooks/attio HTTP/1.1\r\nHost: x\r\n")
                .unwrap(),
            _ => stream
                .write_all(
                    b"POST /webhooks/attio HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{",
                )
                .unwrap(),
        }
        slow.push(stream);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for n in 0..20 {
        let response = post_signed_to(
            &client,
            &daemon.url("/webhooks/attio"),
            &record_updated_body(n),
            Some(&format!("beside-slow-{n}")),
        )
        .await
        .unwrap_or_else(|error| panic!("delivery {n} not answered: {error}"));
        assert_eq!(response.status(), 200);
    }
    drop(slow);
}
