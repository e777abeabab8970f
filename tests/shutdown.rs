//! Graceful shutdown of the real binary on SIGTERM and SIGINT: it stops accepting at once, a
//! chunk whose body arrives within `--shutdown-grace` is stored and answered, and a chunk still
//! arriving at the deadline is cut off and absent: no row, no spool file, never half-present.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::{Chunkd, audit};
use common::*;

/// Sends the head and the first half of chunk 1 of `up` on a fresh connection.
fn half_sent(server: &Chunkd, up: &Upload) -> (TcpStream, Vec<u8>) {
    let body = up.chunk(1).to_vec();
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let head = format!(
        "POST /upload?{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        up.query(1),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    // Let chunkd start reading it (and create the chunk's spool file) before the signal.
    std::thread::sleep(Duration::from_millis(300));
    (s, body)
}

/// Everything the server sends until it closes the connection.
fn read_all(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_refuses_connections(server: &Chunkd) {
    // The listener is closed as soon as the signal is handled.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(("127.0.0.1", server.port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting during the grace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn chunk_state(data: &Path, up: &Upload) -> (u16, u16) {
    let server = Chunkd::start(data, &[]);
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let probe = http
        .get(format!("{base}/upload?{}", up.query(1)))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let q = serde_urlencoded::to_string([("resumableIdentifier", &up.identifier)]).unwrap();
    let status = http
        .get(format!("{base}/upload/status?{q}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(server.stop().success());
    (probe, status)
}

async fn finishes_within_the_grace(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Chunkd::start(&data_dir, &["--shutdown-grace", "10"]);
    let up = Upload::new("grace", data(2_000_000, 1), 1_000_000);
    let (mut s, body) = half_sent(&server, &up);
    server.signal(signal);
    assert_refuses_connections(&server);
    // The rest of the body, well within the grace: stored and answered.
    s.write_all(&body[body.len() / 2..]).unwrap();
    let reply = read_all(&mut s);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"received\":1"), "{reply}");
    let started = Instant::now();
    assert!(server.wait().success(), "a clean exit on SIG{signal}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exits once idle"
    );
    assert_eq!(spool_files(&data_dir).len(), 1);
    assert_eq!(chunk_state(&data_dir, &up).await, (200, 200));
    let a = audit(&data_dir);
    assert!(a.clean(), "{a:?}");
}

async fn cut_off_at_the_deadline(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Chunkd::start(&data_dir, &["--shutdown-grace", "1"]);
    let up = Upload::new("cut", data(2_000_000, 2), 1_000_000);
    let (mut s, _body) = half_sent(&server, &up);
    assert!(spool_bytes(&data_dir) > 0, "the chunk is being written");
    let started = Instant::now();
    server.signal(signal);
    assert_refuses_connections(&server);
    // The client never sends the rest: at the deadline the request is cut off.
    let reply = read_all(&mut s);
    assert!(!reply.contains("200 OK"), "{reply}");
    assert!(server.wait().success(), "a clean exit on SIG{signal}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the grace is kept, then ended: {took:?}"
    );
    // Nothing half-present: the half-written chunk's region is given back before the next
    // start...
    assert_eq!(spool_bytes(&data_dir), 0);
    // ...and the chunk is absent after it.
    let (probe, _) = chunk_state(&data_dir, &up).await;
    assert_eq!(probe, 204);
    let a = audit(&data_dir);
    assert!(a.clean(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_chunk_in_flight_finish_within_the_grace() {
    finishes_within_the_grace("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_lets_a_chunk_in_flight_finish_within_the_grace() {
    finishes_within_the_grace("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_off_a_chunk_at_the_deadline_and_stores_nothing_of_it() {
    cut_off_at_the_deadline("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_cuts_off_a_chunk_at_the_deadline_and_stores_nothing_of_it() {
    cut_off_at_the_deadline("INT").await;
}

/// A signal sent the moment the "listening" line is out is already a graceful stop (the handlers
/// used to be installed only once the server first waited for them, and a SIGTERM that came
/// earlier killed chunkd outright).
#[test]
fn a_signal_right_after_the_listening_line_is_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for i in 0..20 {
        let server = Chunkd::start(&data_dir, &[]);
        server.signal(if i % 2 == 0 { "TERM" } else { "INT" });
        let status = server.wait();
        assert!(status.success(), "start {i}: {status:?}");
    }
}
