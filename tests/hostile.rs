//! Hostile and malformed input over real TCP: oversize and lying bodies, slow clients, the
//! connection limit, the open-upload limit, hostile strings and numbers, broken multipart,
//! duplicate keys and methods. Every case must get a precise 4xx with the JSON error body and
//! leave nothing stored: no spool file, no chunk row (checked in the index itself, opened
//! read-only).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use chunkd::Config;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn start(edit: impl FnOnce(&mut Config)) -> (tempfile::TempDir, TestServer, Client) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path().join("data"));
    edit(&mut config);
    let server = TestServer::start_with(config);
    let client = Client::new(&server);
    (dir, server, client)
}

/// What the index and the spool hold.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    /// Disk space the spool's files take: a refused chunk's region is given back.
    spool_bytes: u64,
    chunks: i64,
    /// Uploads with at least one chunk, or complete.
    started: i64,
}

fn held(data: &Path) -> Held {
    let db = rusqlite::Connection::open_with_flags(
        data.join("index.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    Held {
        spool_bytes: spool_bytes(data),
        chunks: count("SELECT COUNT(*) FROM chunks"),
        started: count(
            "SELECT COUNT(*) FROM uploads WHERE received > 0 OR completed_at IS NOT NULL",
        ),
    }
}

fn nothing() -> Held {
    Held {
        spool_bytes: 0,
        chunks: 0,
        started: 0,
    }
}

/// Checks a JSON error reply: the status, the code, and a message.
#[track_caller]
fn assert_error(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.json);
    assert_eq!(r.json["error"], code, "{what}: {}", r.json);
    assert!(
        !r.json["message"].as_str().unwrap_or("").is_empty(),
        "{what}: {}",
        r.json
    );
    assert_eq!(
        r.headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{what}"
    );
}

/// An answer read off a raw socket.
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    json: Value,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (headers and a Content-Length body) within `wait`.
async fn read_reply(s: &mut (impl AsyncRead + Unpin), wait: Duration) -> Option<RawReply> {
    let mut buf = Vec::new();
    let read = async {
        let mut piece = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    let json =
                        serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
                    return Some(RawReply { status, head, json });
                }
            }
            match s.read(&mut piece).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&piece[..n]),
            }
        }
        // Closed: whatever head arrived (a HEAD answer has a length but no body).
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status = head.get(9..12)?.parse().ok()?;
        Some(RawReply {
            status,
            head,
            json: Value::Null,
        })
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

/// True once the server has closed `s` (EOF or reset), within `wait`.
async fn closed_within(s: &mut (impl AsyncRead + Unpin), wait: Duration) -> bool {
    let mut piece = [0u8; 4096];
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut piece)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends `head`, then `piece` over and over (up to `max` bytes of pieces), while reading the
/// answer. Returns the answer and how many piece bytes went out before the server stopped
/// taking them (a reset, a broken pipe, or a second without progress: nobody reads).
async fn flood(
    addr: std::net::SocketAddr,
    head: &[u8],
    piece: &[u8],
    max: usize,
) -> (Option<RawReply>, usize) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(head).await.unwrap();
    let writer = async move {
        let mut sent = 0usize;
        while sent < max {
            match tokio::time::timeout(Duration::from_secs(1), wr.write_all(piece)).await {
                Ok(Ok(())) => sent += piece.len(),
                _ => break,
            }
        }
        sent
    };
    let reader = async move { read_reply(&mut rd, Duration::from_secs(20)).await };
    let (sent, reply) = tokio::join!(writer, reader);
    (reply, sent)
}

/// One HTTP/1.1 chunked-encoding frame.
fn frame(data: &[u8]) -> Vec<u8> {
    let mut f = format!("{:x}\r\n", data.len()).into_bytes();
    f.extend_from_slice(data);
    f.extend_from_slice(b"\r\n");
    f
}

fn chunk_head(query: &str, extra: &str) -> String {
    format!("POST /upload?{query} HTTP/1.1\r\nHost: t\r\n{extra}\r\n")
}

// ---------------------------------------------------------------------------------------------
// 1. Oversize bodies, and bodies that are not the length they declare.

/// Bytes a flood may push before the server's refusal shows: socket buffers on both sides,
/// and the few megabytes the server reads to deliver its answer to a client still sending.
const SWALLOW: usize = 48 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn oversize_bodies_are_cut_off_early_whatever_their_framing() {
    let (dir, server, _client) = start(|c| c.limits.max_chunk_size = 1 << 20);
    let data_dir = dir.path().join("data");
    let up = Upload::new("big", data(10_000, 1), 10_000);
    let junk = vec![7u8; 64 * 1024];

    // By Content-Length: refused from the headers alone (413), the connection closed.
    let head = chunk_head(
        &up.query(1),
        "Content-Type: application/octet-stream\r\nContent-Length: 10000000000\r\n",
    );
    let (r, sent) = flood(server.addr, head.as_bytes(), &junk, 1 << 30).await;
    let r = r.expect("an answer");
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json["error"], "body_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(sent < SWALLOW, "the server swallowed {sent} bytes");

    // By chunked encoding there is no length to refuse: the body is cut at the first byte the
    // chunk cannot hold. That is a 400 (the chunk breaks the cutting rule, and 400 is final for
    // both libraries, where Resumable.js retries a 413 a hundred times).
    let head = chunk_head(
        &up.query(1),
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n",
    );
    let (r, sent) = flood(server.addr, head.as_bytes(), &frame(&junk), 1 << 30).await;
    let r = r.expect("an answer");
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (400, Some("bad_geometry")),
        "{r:?}"
    );
    assert!(sent < SWALLOW, "the server swallowed {sent} bytes");

    // The same inside a chunked multipart body's file part.
    let mut head = chunk_head(
        &up.query(1),
        "Content-Type: multipart/form-data; boundary=BOUND\r\nTransfer-Encoding: chunked\r\n",
    )
    .into_bytes();
    head.extend(frame(
        b"--BOUND\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n",
    ));
    let (r, sent) = flood(server.addr, &head, &frame(&junk), 1 << 30).await;
    let r = r.expect("an answer");
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (400, Some("bad_geometry")),
        "{r:?}"
    );
    assert!(sent < SWALLOW, "the server swallowed {sent} bytes");

    // A chunked multipart body whose fields before the file part pass --max-chunk-size plus the
    // framing allowance: the whole-stream limit answers 413.
    let mut head = chunk_head(
        &up.query(1),
        "Content-Type: multipart/form-data; boundary=BOUND\r\nTransfer-Encoding: chunked\r\n",
    )
    .into_bytes();
    head.extend(frame(b"--BOUND"));
    let field = format!(
        "\r\nContent-Disposition: form-data; name=\"pad\"\r\n\r\n{}\r\n--BOUND",
        "p".repeat(60_000)
    );
    let (r, sent) = flood(server.addr, &head, &frame(field.as_bytes()), 1 << 30).await;
    let r = r.expect("an answer");
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (413, Some("body_too_large")),
        "{r:?}"
    );
    assert!(sent < SWALLOW, "the server swallowed {sent} bytes");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held(&data_dir), nothing());
    // The server is fine afterwards.
    let c = Client::new(&server);
    let done = c.send(&up, 1, Via::Octet).await;
    assert_eq!(done.json["complete"], true, "{}", done.json);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_shorter_or_longer_than_they_declare_store_nothing() {
    let (dir, server, client) = start(|_| {});
    let data_dir = dir.path().join("data");
    let up = Upload::new("len", data(30_000, 2), 10_000); // 3 chunks of 10,000
    let c1 = up.chunk(1).to_vec();
    let octet = |len: usize| {
        chunk_head(
            &up.query(1),
            &format!("Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n"),
        )
    };
    // Content-Length against resumableCurrentChunkSize (10,000): refused before reading.
    for len in [9_000usize, 10_010, 0] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(octet(len).as_bytes()).await.unwrap();
        let r = read_reply(&mut s, Duration::from_secs(5))
            .await
            .expect("answered before any body byte");
        assert_eq!(r.status, 400, "Content-Length {len}: {r:?}");
        assert_eq!(r.json["error"], "bad_geometry");
    }
    // A body that ends before its Content-Length: the client half-closes after 5,000 bytes.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(octet(10_000).as_bytes()).await.unwrap();
    s.write_all(&c1[..5_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let r = read_reply(&mut s, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (400, Some("body_read_failed")),
        "{r:?}"
    );
    // Declared sizes the bytes do not match, with no Content-Length (chunked): cut off.
    for (declared, body) in [("10000", &c1[..9_999]), ("9999", &c1[..9_999])] {
        let q = up.query(1).replace(
            "resumableCurrentChunkSize=10000",
            &format!("resumableCurrentChunkSize={declared}"),
        );
        let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(body.to_vec())]);
        let r = client
            .http
            .post(format!("{}/upload?{q}", client.base))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        let reply = Client::reply(r).await;
        assert_error(&reply, 400, "bad_geometry", &format!("declared {declared}"));
    }
    assert_eq!(held(&data_dir), nothing());

    // A body longer than its Content-Length: the request is the declared bytes, and what
    // follows is read as the next request on the connection, which is not HTTP: hyper answers
    // that one with a bare 400 and closes. The chunk itself is stored, whole and right.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(octet(10_000).as_bytes()).await.unwrap();
    s.write_all(&c1).await.unwrap();
    s.write_all(b"these bytes are not HTTP\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["received"], 1);
    let next = read_reply(&mut s, Duration::from_secs(5)).await;
    assert!(next.as_ref().is_none_or(|n| n.status == 400), "{next:?}");
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    let rest = client.upload_in_order(&up, &[2, 3], Via::Octet).await;
    assert_eq!(client.download(&rest.file_id()).await, *up.data);
}

// ---------------------------------------------------------------------------------------------
// 2. Slow clients.

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_headers_are_cut_off_at_the_header_timeout() {
    let (_dir, server, client) = start(|c| c.net.header_timeout = Duration::from_secs(1));
    // Headers trickled a byte every 100 ms: progress does not extend the deadline.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let t0 = Instant::now();
    let head = b"GET /upload/status?resumableIdentifier=x HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut s, Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    let took = t0.elapsed();
    assert!(closed, "the trickle went on for {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // A connection that sends nothing at all is closed too.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let t0 = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    assert!(t0.elapsed() >= Duration::from_millis(900));
    // So is an idle keep-alive connection after a request: it holds no slot forever.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /upload/status?resumableIdentifier=x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, Duration::from_secs(2)).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    // Ordinary clients are unaffected.
    assert_eq!(client.status("x").await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_gets_408_and_leaves_nothing() {
    let (dir, server, client) = start(|c| c.net.body_timeout = Duration::from_secs(1));
    let data_dir = dir.path().join("data");
    let up = Upload::new("stall", data(20_000, 3), 10_000);
    let c1 = up.chunk(1).to_vec();
    let part = |body: &[u8]| {
        let mut v = b"--B\r\nContent-Disposition: form-data; name=\"resumableChunkNumber\"\r\n\r\n1\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s\"\r\n\r\n".to_vec();
        v.extend_from_slice(body);
        v.extend_from_slice(b"\r\n--B--\r\n");
        v
    };
    let whole = part(&c1);
    // (what, content type, declared length, bytes sent before the stall)
    let cases: Vec<(&str, &str, usize, Vec<u8>)> = vec![
        (
            "octet, mid-chunk",
            "application/octet-stream",
            c1.len(),
            c1[..4_000].to_vec(),
        ),
        (
            "octet, no byte",
            "application/octet-stream",
            c1.len(),
            vec![],
        ),
        (
            "multipart, in the fields",
            "multipart/form-data; boundary=B",
            whole.len(),
            whole[..20].to_vec(),
        ),
        (
            "multipart, in the file part",
            "multipart/form-data; boundary=B",
            whole.len(),
            whole[..5_000].to_vec(),
        ),
    ];
    for (what, ctype, len, sent) in cases {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let head = chunk_head(
            &up.query(1),
            &format!("Content-Type: {ctype}\r\nContent-Length: {len}\r\n"),
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&sent).await.unwrap();
        let t0 = Instant::now();
        let r = read_reply(&mut s, Duration::from_secs(10))
            .await
            .expect(what);
        let took = t0.elapsed();
        assert_eq!(r.status, 408, "{what}: {r:?}");
        assert_eq!(r.json["error"], "body_timeout", "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{what}: {took:?}"
        );
        assert!(
            closed_within(&mut s, Duration::from_secs(5)).await,
            "{what}"
        );
        // The partial spool file is gone as soon as the answer is out.
        assert_eq!(held(&data_dir), nothing(), "{what}");
    }
    // A slow body that keeps moving is not idle: 10 pieces 300 ms apart (3 s in all).
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head = chunk_head(
        &up.query(1),
        &format!(
            "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            c1.len()
        ),
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in c1.chunks(1_000) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(piece).await.unwrap();
    }
    let r = read_reply(&mut s, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let done = client.send(&up, 2, Via::Octet).await;
    assert_eq!(client.download(&done.file_id()).await, *up.data);
}

// ---------------------------------------------------------------------------------------------
// 3. The connection limit.

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_limit_a_client_waits_in_the_accept_queue() {
    let (_dir, server, _client) = start(|c| c.net.max_connections = 2);
    let req = b"GET /upload/status?resumableIdentifier=q HTTP/1.1\r\nHost: t\r\n\r\n";
    // Two keep-alive connections take both slots.
    let mut held_open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        assert_eq!(
            read_reply(&mut s, Duration::from_secs(2))
                .await
                .unwrap()
                .status,
            404
        );
        held_open.push(s);
    }
    // A third connects (the kernel accepts it) but is not served while both are held.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(req).await.unwrap();
    assert!(
        read_reply(&mut third, Duration::from_millis(800))
            .await
            .is_none(),
        "served past the limit"
    );
    // One slot frees: the waiting client is served, with nothing lost of its request.
    drop(held_open.pop());
    let r = read_reply(&mut third, Duration::from_secs(5))
        .await
        .expect("served once a slot freed");
    assert_eq!(r.status, 404);
    drop(third);
    drop(held_open);
    // And the server recovers fully: many connections in a row, then at once. (This client
    // closes each connection after its request: an idle keep-alive connection holds its slot
    // until the header timeout closes it.)
    let client = Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        base: server.url(""),
    };
    for _ in 0..20 {
        assert_eq!(client.status("q").await.status, 404);
    }
    let many = futures_util::future::join_all((0..10).map(|_| client.status("q"))).await;
    assert!(many.iter().all(|r| r.status == 404));
}

// ---------------------------------------------------------------------------------------------
// 4. Open uploads per principal.

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_past_its_open_uploads_gets_429_and_its_uploads_go_on() {
    let (dir, _server, client) = start(|c| c.limits.max_open_uploads = 3);
    let data_dir = dir.path().join("data");
    let ups: Vec<Upload> = (0..4)
        .map(|i| Upload::new(&format!("open-{i}"), data(20_000, i), 10_000))
        .collect();
    for up in &ups[..3] {
        assert_eq!(client.send(up, 1, Via::Octet).await.status, 200);
    }
    let before = held(&data_dir);
    for via in [Via::Octet, Via::MultipartForm] {
        let r = client.send(&ups[3], 1, via).await;
        assert_error(&r, 429, "too_many_uploads", "a fourth upload");
        assert_eq!(r.headers["retry-after"], "60");
    }
    assert_eq!(held(&data_dir), before, "the refused upload stored nothing");
    assert_eq!(client.status("open-3").await.status, 404);
    // A probe creates nothing, so it is never refused.
    assert_eq!(client.probe(&ups[3], 1).await.status, 204);
    // Chunks of the uploads already open go on; completing one frees a slot.
    let done = client.send(&ups[0], 2, Via::Octet).await;
    assert_eq!(done.json["complete"], true);
    assert_eq!(client.send(&ups[3], 1, Via::Octet).await.status, 200);
    assert_eq!(
        client.send(&ups[1], 2, Via::MultipartBoth).await.status,
        200
    );
    for up in [&ups[2], &ups[3]] {
        let r = client.send(up, 2, Via::Octet).await;
        assert_eq!(client.download(&r.file_id()).await, *up.data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_open_upload_limit_is_per_token_principal() {
    let (_dir, server, _client) = start(|c| {
        c.limits.max_open_uploads = 2;
        c.auth.require_auth = true;
        c.auth.secret.value = Some(SECRET.into());
    });
    let http = reqwest::Client::new();
    let send = |who: &str, up: &Upload| {
        http.post(format!("{}?{}", server.url("/upload"), up.query(1)))
            .bearer_auth(common::user(who, "acme"))
            .header("content-type", "application/octet-stream")
            .body(up.chunk(1).to_vec())
            .send()
    };
    let up = |i: u64| Upload::new(&format!("p-{i}"), data(20_000, i), 10_000);
    for i in 0..2 {
        assert_eq!(send("alice", &up(i)).await.unwrap().status(), 200);
    }
    let r = send("alice", &up(2)).await.unwrap();
    assert_eq!(r.status(), 429);
    // Another principal on the same address has its own allowance.
    for i in 0..2 {
        assert_eq!(send("bob", &up(i)).await.unwrap().status(), 200);
    }
    assert_eq!(send("bob", &up(2)).await.unwrap().status(), 429);

    // The Files API counts files created and not yet complete, per token principal.
    let api = format!(
        "{}/internal/services/files/v1/companies/acme/files",
        server.url("")
    );
    let create = |who: &str| {
        http.post(format!("{api}?filename=a.bin&total_size=10"))
            .bearer_auth(common::user(who, "acme"))
            .body("{}")
            .send()
    };
    for _ in 0..2 {
        assert_eq!(create("carol").await.unwrap().status(), 200);
    }
    let r = create("carol").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["error"], "too_many_uploads");
    assert_eq!(create("dave").await.unwrap().status(), 200);
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile strings, encodings, numbers, multipart shapes, duplicate keys, methods.

/// Sends chunk `n` of `up` with some parameters replaced (`None` removes one), as an octet body
/// (parameters in the query) or as Flow.js multipart (parameters in the form only).
async fn send_edited(
    client: &Client,
    up: &Upload,
    n: usize,
    edit: &[(&str, Option<&str>)],
    via: Via,
) -> Reply {
    let mut params = up.params(n);
    for (k, v) in edit {
        params.retain(|(pk, _)| pk != k);
        if let Some(v) = v {
            params.push((k.to_string(), v.to_string()));
        }
    }
    let url = format!("{}/upload", client.base);
    let req = if via == Via::Octet {
        let q = serde_urlencoded::to_string(&params).unwrap();
        client
            .http
            .post(format!("{url}?{q}"))
            .header("content-type", "application/octet-stream")
            .body(up.chunk(n).to_vec())
    } else {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in params {
            form = form.text(k, v);
        }
        let part = reqwest::multipart::Part::bytes(up.chunk(n).to_vec()).file_name("f");
        client.http.post(url).multipart(form.part("file", part))
    };
    let r = req.send().await.unwrap();
    Client::reply(r).await
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_strings_are_refused_or_kept_as_data_never_as_paths() {
    let (dir, server, client) = start(|_| {});
    let data_dir = dir.path().join("data");
    let long = |n: usize| "a".repeat(n);
    let fields = [
        ("resumableIdentifier", 1024),
        ("resumableFilename", 1024),
        ("resumableRelativePath", 4096),
        ("resumableType", 255),
    ];
    let mut case = 0;
    for (field, max) in fields {
        let bad = [
            "a\0b".to_string(),
            "a\nb".into(),
            "a\rb".into(),
            "\u{1b}[31mred".into(),
            "a\u{7f}b".into(),
            "a\u{85}b".into(),
            "tab\there".into(),
            long(max + 1),
        ];
        for value in &bad {
            for via in [Via::Octet, Via::MultipartForm] {
                case += 1;
                let up = Upload::new(&format!("h-{case}"), data(5_000, case), 10_000);
                let r = send_edited(&client, &up, 1, &[(field, Some(value))], via).await;
                let what = format!("{field}={:?} via {via:?}", &value[..value.len().min(12)]);
                assert_error(&r, 400, "invalid_parameter", &what);
                assert!(
                    r.json["message"].as_str().unwrap().contains(field),
                    "{what}"
                );
            }
        }
        // The longest accepted value is accepted.
        case += 1;
        let up = Upload::new(&format!("h-{case}"), data(5_000, case), 10_000);
        let r = send_edited(&client, &up, 1, &[(field, Some(&long(max)))], Via::Octet).await;
        assert_eq!(r.status, 200, "{field} of {max} bytes: {}", r.json);
    }
    let stored_before = held(&data_dir);
    assert_eq!(
        stored_before.chunks, 4,
        "only the four longest-value uploads stored"
    );

    // `..`, `/` and `\` are data: kept as sent, never a path.
    let mut up = Upload::new("../../../../tmp/evil/..", data(25_000, 9), 10_000);
    up.filename = "../../etc/pass\"wd; x=.html".into();
    let rel = [("resumableRelativePath", Some("/etc/../..\\x/y"))];
    for n in 1..=up.total_chunks() {
        let r = send_edited(&client, &up, n, &rel, Via::Octet).await;
        assert_eq!(r.status, 200, "{}", r.json);
    }
    let st = client.status(&up.identifier).await;
    assert_eq!(st.json["identifier"], up.identifier.as_str());
    assert_eq!(st.json["filename"], up.filename.as_str());
    let resp = client
        .http
        .get(format!(
            "{}/files/{}",
            client.base,
            st.json["file_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    let cd = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.bytes().await.unwrap(), *up.data);
    assert!(
        cd.starts_with("attachment; filename=\"pass_wd_ x=.html\"; filename*=UTF-8''"),
        "{cd}"
    );
    // Nothing but chunkd's own names in the spool, and nothing outside the data directory.
    for f in spool_files(&data_dir) {
        let rel = f.strip_prefix(data_dir.join("spool")).unwrap();
        let parts: Vec<_> = rel
            .iter()
            .map(|p| p.to_str().unwrap().to_string())
            .collect();
        assert_eq!(parts.len(), 2, "{rel:?}");
        assert!(
            parts[0].len() == 32 && parts[0].bytes().all(|b| b.is_ascii_hexdigit()),
            "{rel:?}"
        );
        assert_eq!(parts[1], "data", "{rel:?}");
    }
    let top: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, vec![std::ffi::OsString::from("data")]);

    // Ids in paths: never a path, never found by a trick.
    for path in [
        "/files/..%2Fspool",
        "/files/../index.sqlite",
        "/files/%00",
        "/files/%2e%2e",
        &format!("/files/{}", long(5000)),
        "/..%2Fdata%2Findex.sqlite",
        "/%2e%2e/Cargo.toml",
        "/.hidden",
        "/a%5C..%5C..%5Cetc",
    ] {
        // Over a raw socket: an HTTP client library would normalise the dots away.
        let r = raw_request(server.addr, "GET", path, "").await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (404, Some("not_found")),
            "{path}: {r:?}"
        );
    }
}

/// One request on a fresh connection, exactly as written (no normalisation of the path).
async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
) -> RawReply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    read_reply(&mut s, Duration::from_secs(10))
        .await
        .expect("an answer")
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_strings_in_the_files_api() {
    let (_dir, server, _client) = start(|c| c.auth.secret.value = Some(SECRET.into()));
    let http = reqwest::Client::new();
    let base = server.url("/internal/services/files/v1/companies");
    let call = |method: reqwest::Method, url: String, who: &str| {
        http.request(method, url)
            .bearer_auth(common::user(who, "acme"))
            .body("{}")
            .send()
    };
    let reply = |r: reqwest::Response| async move { Client::reply(r).await };
    use reqwest::Method;
    // Company and file ids in the path: control characters, invalid UTF-8, too long.
    let auth = format!("Authorization: Bearer {}\r\n", common::user("u", "acme"));
    for (path, status, code) in [
        ("/ac%00me/files", 400, "invalid_parameter"),
        ("/ac%0Ame/files", 400, "invalid_parameter"),
        ("/ac%FFme/files", 400, "invalid_parameter"),
        (
            &format!("/{}/files", "c".repeat(300)) as &str,
            400,
            "invalid_parameter",
        ),
        ("/..%2Facme/files", 404, "not_found"),
        ("/%2e%2e/files", 403, "forbidden"),
        ("/../files", 403, "forbidden"),
        ("/acme/files/%00", 400, "invalid_parameter"),
        ("/acme/files/a%2Fb", 404, "not_found"),
        ("/acme/files/..", 404, "not_found"),
        (
            &format!("/acme/files/{}", "f".repeat(300)) as &str,
            400,
            "invalid_parameter",
        ),
    ] {
        let method = if path.ends_with("/files") {
            "POST"
        } else {
            "GET"
        };
        let full = format!("/internal/services/files/v1/companies{path}");
        let r = raw_request(server.addr, method, &full, &auth).await;
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (status, Some(code)),
            "{path}: {r:?}"
        );
    }
    // Filename and type on creation.
    for q in [
        "filename=a%00b",
        "filename=a%0D%0Ab",
        &format!("filename={}", "n".repeat(1025)) as &str,
        "type=text%2Fplain%0A",
        &format!("type={}", "t".repeat(256)),
        "filename=%FF",
        "filename=%zz",
        "total_size=-1",
        "total_size=18446744073709551616",
        "total_chunks=1e3",
    ] {
        let r = reply(
            call(Method::POST, format!("{base}/acme/files?{q}"), "u")
                .await
                .unwrap(),
        )
        .await;
        assert_error(&r, 400, "invalid_parameter", q);
    }
    let r = reply(
        call(
            Method::POST,
            format!("{base}/acme/files?total_size=18446744073709551615"),
            "u",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_error(&r, 400, "file_too_large", "total_size 2^64-1");
    // A hostile name is kept as data, and its download is still a safe attachment.
    let r = reply(
        call(
            Method::POST,
            format!(
                "{base}/acme/files?filename=..%2F..%2Fx%22%3B.html&total_size=3&total_chunks=1"
            ),
            "u",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["resource"]["metadata"]["name"], "../../x\";.html");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_encodings_are_refused() {
    let (dir, server, client) = start(|_| {});
    let data_dir = dir.path().join("data");
    let up = Upload::new("enc", data(5_000, 4), 10_000);
    let q = up.query(1);
    for (extra, what) in [
        ("&x=%ff", "invalid UTF-8 once decoded"),
        ("&x=%C3%28", "a broken two-byte sequence"),
        ("&x=%ED%A0%80", "an encoded surrogate"),
        ("&x=%zz", "not hex"),
        ("&x=%4", "one hex digit"),
        ("&x=%", "a lone %"),
        ("&%ff=1", "in a key"),
    ] {
        for r in client.probe_and_post(&up, &format!("{q}{extra}")).await {
            assert_error(&r, 400, "invalid_parameter", what);
        }
    }
    // Raw bytes that are not UTF-8 (nor even legal in a URI) in the request line: hyper refuses
    // the request before chunkd sees it, with a bare 400.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /upload?resumableIdentifier=\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(r.status, 400);
    // A multipart text field that is not UTF-8.
    let mut body = b"--B\r\nContent-Disposition: form-data; name=\"flowFilename\"\r\n\r\n\xff\xfe\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n".to_vec();
    body.extend_from_slice(up.chunk(1));
    body.extend_from_slice(b"\r\n--B--\r\n");
    let r = client
        .http
        .post(format!("{}/upload?{q}", client.base))
        .header("content-type", "multipart/form-data; boundary=B")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "malformed_multipart"
    );
    assert_eq!(held(&data_dir), nothing());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_numbers_in_every_numeric_parameter() {
    let (dir, _server, client) = start(|_| {});
    let data_dir = dir.path().join("data");
    let numeric = [
        "resumableChunkNumber",
        "resumableChunkSize",
        "resumableCurrentChunkSize",
        "resumableTotalSize",
        "resumableTotalChunks",
    ];
    let mut case = 0u64;
    let mut fresh = || {
        case += 1;
        // 2 chunks: 10,000 and 15,000 bytes.
        Upload::new(&format!("num-{case}"), data(25_000, case), 10_000)
    };
    for field in numeric {
        for v in [
            "18446744073709551616",
            "99999999999999999999999999",
            "-1",
            "-0",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "0x10",
            "1e3",
            "",
            "\u{0661}",
            "1,000",
        ] {
            let up = fresh();
            let r = send_edited(&client, &up, 1, &[(field, Some(v))], Via::Octet).await;
            assert_error(&r, 400, "invalid_parameter", &format!("{field}={v:?}"));
        }
    }
    // Well-formed but absurd: zero, 10^12, 2^64-1.
    for (field, v, code) in [
        ("resumableChunkNumber", "0", "bad_geometry"),
        (
            "resumableChunkNumber",
            "18446744073709551615",
            "bad_geometry",
        ),
        ("resumableChunkNumber", "4294967296", "bad_geometry"),
        ("resumableChunkSize", "0", "bad_geometry"),
        ("resumableChunkSize", "18446744073709551615", "bad_geometry"),
        ("resumableCurrentChunkSize", "0", "bad_geometry"),
        (
            "resumableCurrentChunkSize",
            "18446744073709551615",
            "bad_geometry",
        ),
        ("resumableTotalSize", "0", "bad_geometry"),
        (
            "resumableTotalSize",
            "18446744073709551615",
            "file_too_large",
        ),
        ("resumableTotalChunks", "0", "bad_geometry"),
        ("resumableTotalChunks", "1000000000000", "bad_geometry"),
        (
            "resumableTotalChunks",
            "18446744073709551615",
            "bad_geometry",
        ),
    ] {
        for via in [Via::Octet, Via::MultipartForm] {
            let up = fresh();
            let r = send_edited(&client, &up, 1, &[(field, Some(v))], via).await;
            assert_error(&r, 400, code, &format!("{field}={v} via {via:?}"));
        }
    }
    // A Twake-style upload declaring 10^12 chunks of an 8-byte file.
    let up = fresh();
    let r = send_edited(
        &client,
        &up,
        1,
        &[
            ("resumableChunkSize", None),
            ("resumableCurrentChunkSize", None),
            ("resumableTotalChunks", Some("1000000000000")),
        ],
        Via::Octet,
    )
    .await;
    assert_error(&r, 400, "bad_geometry", "10^12 chunks without a chunk size");
    assert_eq!(held(&data_dir), nothing());
}

/// A multipart body by hand: `parts` are (headers, body) between `--B` delimiters.
fn multipart(parts: &[(&str, &[u8])], close: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for (head, body) in parts {
        v.extend_from_slice(b"--B\r\n");
        v.extend_from_slice(head.as_bytes());
        v.extend_from_slice(b"\r\n\r\n");
        v.extend_from_slice(body);
        v.extend_from_slice(b"\r\n");
    }
    if close {
        v.extend_from_slice(b"--B--\r\n");
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_multipart_bodies_store_nothing() {
    let (dir, server, client) = start(|_| {});
    let data_dir = dir.path().join("data");
    let up = Upload::new("mp", data(5_000, 5), 10_000);
    let c1 = up.chunk(1);
    let file = "Content-Disposition: form-data; name=\"file\"; filename=\"f\"";
    let field = |name: &str| format!("Content-Disposition: form-data; name=\"{name}\"");
    let big = "v".repeat(70_000);
    let long_name = field(&"n".repeat(100_000));
    let many: Vec<(String, &[u8])> = (0..70)
        .map(|i| (field(&format!("f{i}")), &b"1"[..]))
        .collect();
    let many: Vec<(&str, &[u8])> = many.iter().map(|(h, b)| (h.as_str(), *b)).collect();
    let mut truncated = multipart(&[(file, c1)], true);
    truncated.truncate(truncated.len() - 12);
    // (what, content type, body, error code)
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "two file parts",
            "multipart/form-data; boundary=B".into(),
            multipart(&[(file, c1), (file, c1)], true),
            400,
            "malformed_multipart",
        ),
        (
            "a field after the file part",
            "multipart/form-data; boundary=B".into(),
            multipart(&[(file, c1), (&field("x"), b"1")], true),
            400,
            "malformed_multipart",
        ),
        (
            "no file part",
            "multipart/form-data; boundary=B".into(),
            multipart(&[(&field("x"), b"1")], true),
            400,
            "malformed_multipart",
        ),
        (
            "a boundary the body does not use",
            "multipart/form-data; boundary=OTHER".into(),
            multipart(&[(file, c1)], true),
            400,
            "malformed_multipart",
        ),
        (
            "no boundary",
            "multipart/form-data".into(),
            multipart(&[(file, c1)], true),
            400,
            "malformed_multipart",
        ),
        (
            "an empty boundary",
            "multipart/form-data; boundary=".into(),
            multipart(&[(file, c1)], true),
            400,
            "malformed_multipart",
        ),
        (
            "a truncated body",
            "multipart/form-data; boundary=B".into(),
            truncated,
            400,
            "malformed_multipart",
        ),
        (
            "no closing delimiter",
            "multipart/form-data; boundary=B".into(),
            multipart(&[(file, c1)], false),
            400,
            "malformed_multipart",
        ),
        (
            "an empty body",
            "multipart/form-data; boundary=B".into(),
            vec![],
            400,
            "malformed_multipart",
        ),
        (
            "garbage",
            "multipart/form-data; boundary=B".into(),
            b"\x00\x01garbage\r\n\r\n".to_vec(),
            400,
            "malformed_multipart",
        ),
        (
            "a part with no headers",
            "multipart/form-data; boundary=B".into(),
            b"--B\r\n\r\nxx\r\n--B--\r\n".to_vec(),
            400,
            "malformed_multipart",
        ),
        (
            "a field over 64 KiB",
            "multipart/form-data; boundary=B".into(),
            multipart(&[(&field("x"), big.as_bytes()), (file, c1)], true),
            400,
            "malformed_multipart",
        ),
        (
            "a field name of 100 kB",
            "multipart/form-data; boundary=B".into(),
            multipart(&[(&long_name, b"1"), (file, c1)], true),
            400,
            "malformed_multipart",
        ),
        (
            "70 fields",
            "multipart/form-data; boundary=B".into(),
            multipart(&[many, vec![(file, c1)]].concat(), true),
            400,
            "malformed_multipart",
        ),
        (
            "a form-encoded body",
            "application/x-www-form-urlencoded".into(),
            b"a=b".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "multipart/mixed",
            "multipart/mixed; boundary=B".into(),
            multipart(&[(file, c1)], true),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, ctype, body, status, code) in cases {
        let r = client
            .http
            .post(format!("{}/upload?{}", client.base, up.query(1)))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        let r = Client::reply(r).await;
        assert_error(&r, status, code, what);
        assert_eq!(held(&data_dir), nothing(), "{what}");
    }
    // Part headers that never end: multer would buffer them whole, so chunkd stops feeding it
    // after a few megabytes of fields and headers.
    let mut head = chunk_head(
        &up.query(1),
        "Content-Type: multipart/form-data; boundary=B\r\nTransfer-Encoding: chunked\r\n",
    )
    .into_bytes();
    head.extend(frame(
        b"--B\r\nContent-Disposition: form-data; name=\"x\"\r\nX-Pad: ",
    ));
    let (r, sent) = flood(server.addr, &head, &frame(&[b'p'; 65536]), 1 << 30).await;
    let r = r.expect("an answer");
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (400, Some("malformed_multipart")),
        "{r:?}"
    );
    assert!(sent < SWALLOW, "the server took {sent} bytes of headers");
    assert_eq!(held(&data_dir), nothing());
    // The well-formed body goes through.
    let ok = multipart(&[(&field("resumableChunkNumber"), b"1"), (file, c1)], true);
    let r = client
        .http
        .post(format!("{}/upload?{}", client.base, up.query(1)))
        .header("content-type", "multipart/form-data; boundary=B")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_keys_with_different_values_are_refused() {
    let (dir, _server, client) = start(|_| {});
    let data_dir = dir.path().join("data");
    let up = Upload::new("dupkeys", data(5_000, 6), 10_000);
    let q = up.query(1);
    for (extra, field) in [
        ("&resumableChunkNumber=2", "resumableChunkNumber"),
        ("&resumableIdentifier=other", "resumableIdentifier"),
        ("&flowIdentifier=other", "resumableIdentifier"),
        ("&resumableTotalSize=5001", "resumableTotalSize"),
        ("&total_size=4999", "resumableTotalSize"),
        ("&resumableFilename=b.bin", "resumableFilename"),
        ("&resumableType=text%2Fhtml", "resumableType"),
    ] {
        for r in client.probe_and_post(&up, &format!("{q}{extra}")).await {
            assert_error(&r, 400, "invalid_parameter", extra);
            assert!(
                r.json["message"].as_str().unwrap().contains(field),
                "{extra}: {}",
                r.json
            );
        }
    }
    // Form and query disagreeing (Resumable.js sends both).
    let r = send_edited(&client, &up, 1, &[], Via::MultipartForm).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let up2 = Upload::new("dupkeys-2", data(5_000, 7), 10_000);
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in up2.params(1) {
        form = form.text(k, v);
    }
    form = form
        .text("resumableChunkNumber", "1")
        .text("flowChunkNumber", "2");
    let part = reqwest::multipart::Part::bytes(up2.chunk(1).to_vec()).file_name("f");
    let r = client
        .http
        .post(format!("{}/upload?{}", client.base, up2.query(1)))
        .multipart(form.part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(held(&data_dir).chunks, 1);
    // The same value twice is not a conflict.
    let up3 = Upload::new("dupkeys-3", data(5_000, 8), 10_000);
    let r = client
        .http
        .post(format!(
            "{}/upload?{}&resumableChunkNumber=1&flowIdentifier=dupkeys-3",
            client.base,
            up3.query(1)
        ))
        .header("content-type", "application/octet-stream")
        .body(up3.chunk(1).to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_answers_other_methods_with_405_and_allow() {
    let (_dir, server, _client) = start(|c| c.auth.secret.value = Some(SECRET.into()));
    let api = "/internal/services/files/v1/companies/acme/files";
    let paths: Vec<(String, &str)> = vec![
        ("/upload".into(), "GET, HEAD, POST, PUT, OPTIONS"),
        ("/upload/status".into(), "GET, HEAD, OPTIONS"),
        ("/files/abc".into(), "GET, HEAD, OPTIONS"),
        (api.into(), "POST, OPTIONS"),
        (
            format!("{api}/abc"),
            "GET, HEAD, POST, PUT, DELETE, OPTIONS",
        ),
        (format!("{api}/abc/download"), "GET, HEAD, OPTIONS"),
        (format!("{api}/abc/thumbnails/0"), "GET, HEAD, OPTIONS"),
        ("/".into(), "GET, HEAD, OPTIONS"),
        ("/index.html".into(), "GET, HEAD, OPTIONS"),
        ("/no/such/page".into(), "GET, HEAD, OPTIONS"),
    ];
    let all = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "TRACE", "FOO",
    ];
    for (path, allow) in &paths {
        let allowed: Vec<&str> = allow.split(", ").collect();
        for m in all {
            let r = raw_request(server.addr, m, path, "Content-Length: 0\r\n").await;
            if allowed.contains(&m) {
                assert_ne!(r.status, 405, "{m} {path}");
            } else {
                assert_eq!(r.status, 405, "{m} {path}: {r:?}");
                assert_eq!(r.header("allow"), Some(*allow), "{m} {path}");
                if m != "HEAD" {
                    assert_eq!(r.json["error"], "method_not_allowed", "{m} {path}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_gets_408_on_the_files_api_too() {
    let (dir, server, _client) = start(|c| {
        c.net.body_timeout = Duration::from_secs(1);
        c.auth.secret.value = Some(SECRET.into());
    });
    let data_dir = dir.path().join("data");
    let api = "/internal/services/files/v1/companies/acme/files";
    let auth = format!("Authorization: Bearer {}\r\n", common::user("u", "acme"));
    let classic = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\nsome bytes";
    // (what, content type, declared length, bytes sent before the stall)
    let cases: Vec<(&str, &str, usize, &[u8])> = vec![
        (
            "the creation call's JSON body",
            "application/json",
            100,
            b"{",
        ),
        (
            "a single-request upload",
            "multipart/form-data; boundary=B",
            100_000,
            classic,
        ),
    ];
    for (what, ctype, len, sent) in cases {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST {api} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: {ctype}\r\nContent-Length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(sent).await.unwrap();
        let r = read_reply(&mut s, Duration::from_secs(10))
            .await
            .expect(what);
        assert_eq!(
            (r.status, r.json["error"].as_str()),
            (408, Some("body_timeout")),
            "{what}: {r:?}"
        );
        assert_eq!(held(&data_dir), nothing(), "{what}");
    }
}
