//! What an operator sees, over real TCP: `/healthz`, `/readyz` failing for real when the spool
//! is not writable, `/metrics` figures equal to what was really sent, request ids, logs free of
//! tokens, and the expiry sweeper removing an abandoned upload and nothing else.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chunkd::Config;
use chunkd::store::Index;
use common::*;

/// The samples of a Prometheus text scrape: `name{labels}` to value.
fn scrape_text(text: &str) -> HashMap<String, f64> {
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

async fn scrape(client: &Client) -> HashMap<String, f64> {
    let resp = client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    scrape_text(&resp.text().await.unwrap())
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);

    let h = client.get("/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json["status"], "ok");
    let id = h.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 12);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = client.get("/healthz").await;
    assert_ne!(again.headers["x-request-id"], id.as_str(), "ids differ");
    assert_eq!(client.get("/readyz").await.status, 200);

    // The spool replaced by a plain file: nothing can be stored, and readiness says so.
    let spool = dir.path().join("spool");
    let moved = dir.path().join("spool.moved");
    std::fs::rename(&spool, &moved).unwrap();
    std::fs::write(&spool, b"not a directory").unwrap();
    let r = client.get("/readyz").await;
    assert_eq!(r.status, 503, "{:?}", r.json);
    assert_eq!(r.json["error"], "not_ready");
    assert!(
        r.json["message"].as_str().unwrap().contains("spool"),
        "{:?}",
        r.json
    );
    assert!(r.headers.contains_key("retry-after"));
    // Alive all the same.
    assert_eq!(client.get("/healthz").await.status, 200);

    std::fs::remove_file(&spool).unwrap();
    std::fs::rename(&moved, &spool).unwrap();
    assert_eq!(client.get("/readyz").await.status, 200);
    // The probe leaves nothing behind.
    assert!(spool_files(dir.path()).is_empty());

    // Only GET and HEAD.
    let post = client
        .http
        .post(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_routes_need_no_token_even_with_require_auth() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.auth.require_auth = true;
    let server = TestServer::start_with(config);
    let client = Client::new(&server);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = client.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    // While the chunk endpoint does need one.
    assert_eq!(client.status("x").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_really_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let before = scrape(&client).await;
    assert_eq!(get(&before, "chunkd_received_chunks_total"), 0.0);
    assert_eq!(get(&before, "chunkd_spool_bytes"), 0.0);
    // The scrape itself is in flight while it is encoded.
    assert_eq!(get(&before, "chunkd_requests_in_flight"), 1.0);

    // Chunks of 100 000 and 150 000 bytes (the last chunk takes the rest).
    let up = Upload::new("metrics", data(250_000, 1), 100_000);
    assert_eq!(up.total_chunks(), 2);
    let id = client.upload_all(&up).await;
    // A chunk sent again stores nothing and counts nothing.
    assert_eq!(client.send(&up, 1, Via::Octet).await.status, 200);
    // And one incomplete upload.
    let half = Upload::new("half", data(300_000, 2), 100_000);
    assert_eq!(client.send(&half, 2, Via::MultipartBoth).await.status, 200);
    // Errors: a chunk with no parameters (400), twice, and an unknown file (404).
    for _ in 0..2 {
        let bad = client
            .http
            .post(server.url("/upload"))
            .header("content-type", "application/octet-stream")
            .body(vec![0u8; 10])
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status().as_u16(), 400);
    }
    assert_eq!(client.get("/files/nope").await.status, 404);
    assert_eq!(client.download(&id).await, *up.data);

    let after = scrape(&client).await;
    assert_eq!(get(&after, "chunkd_received_chunks_total"), 3.0);
    assert_eq!(
        get(&after, "chunkd_received_bytes_total"),
        (250_000 + 100_000) as f64
    );
    assert_eq!(get(&after, "chunkd_uploads_started_total"), 2.0);
    assert_eq!(get(&after, "chunkd_uploads_completed_total"), 1.0);
    assert_eq!(get(&after, "chunkd_chunk_seconds_count"), 3.0);
    assert!(get(&after, "chunkd_chunk_seconds_sum") > 0.0);
    assert_eq!(get(&after, "chunkd_chunk_seconds_bucket{le=\"+Inf\"}"), 3.0);
    // 200s: the first scrape, 2 chunks, the chunk sent again, the half upload's chunk, the
    // download. Not this scrape: it is counted once it has left.
    assert_eq!(get(&after, "chunkd_responses_total{status=\"200\"}"), 6.0);
    assert_eq!(get(&after, "chunkd_responses_total{status=\"400\"}"), 2.0);
    assert_eq!(get(&after, "chunkd_responses_total{status=\"404\"}"), 1.0);
    assert_eq!(get(&after, "chunkd_requests_in_flight"), 1.0);
    // Sealed sizes: each chunk padded to the next whole 16 bytes, plus one block.
    let sealed = |n: u64| n - n % 16 + 16;
    assert_eq!(
        get(&after, "chunkd_spool_bytes"),
        (sealed(100_000) + sealed(150_000) + sealed(100_000)) as f64
    );
    assert_eq!(get(&after, "chunkd_uploads_expired_total"), 0.0);
    // Exported (its value depends on the disk: a slow write on a busy machine counts).
    assert!(after.contains_key("chunkd_writes_held_back_total"));
}

/// Reads the first stdout line of a started chunkd: its address.
fn listening(child: &mut std::process::Child) -> String {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim_end()
        .strip_prefix("chunkd listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_never_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chunkd"))
        .args(["--listen", "127.0.0.1:0", "--require-auth", "--data"])
        .arg(dir.path())
        .env("CHUNKD_LOG", "chunkd=debug")
        .env(
            "CHUNKD_JWT_SECRET",
            "a test secret that is long enough for HS256 use",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = listening(&mut child);
    let http = reqwest::Client::new();
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2VjcmV0LXNpZ25hdHVyZQ";
    let r = http
        .get(format!(
            "{base}/upload/status?resumableIdentifier=x&token={token}"
        ))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let r = http
        .get(format!("{base}/files/abc?sig=SIGNATURE-SECRET&scope=s"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    // One line per response, with the id, method and path, and the status.
    let line = log
        .lines()
        .find(|l| l.contains(&id) && l.contains("response"))
        .unwrap_or_else(|| panic!("no response line for {id} in:\n{log}"));
    assert!(
        line.contains("GET") && line.contains("/upload/status"),
        "{line}"
    );
    assert!(line.contains("status=401"), "{line}");
    for secret in [
        token,
        "c2VjcmV0LXNpZ25hdHVyZQ",
        "SIGNATURE-SECRET",
        "Bearer",
        "resumableIdentifier",
    ] {
        assert!(!log.contains(secret), "`{secret}` was logged:\n{log}");
    }
    let key = std::fs::read_to_string(dir.path().join("chunkd.key")).unwrap();
    assert!(!log.contains(key.trim()));
}

/// How many upload directories the spool holds.
fn spool_dirs(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("spool")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_abandoned_uploads_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.limits.expire_after = Duration::from_secs(4);
    config.limits.sweep_interval = Some(Duration::from_secs(1));
    let server = TestServer::start_with(config);
    let client = Client::new(&server);

    let done = Upload::new("done", data(250_000, 3), 100_000);
    let file_id = client.upload_all(&done).await;
    let abandoned = Upload::new("abandoned", data(300_000, 4), 100_000);
    assert_eq!(client.send(&abandoned, 1, Via::Octet).await.status, 200);
    assert_eq!(client.send(&abandoned, 3, Via::Octet).await.status, 200);
    let active = Upload::new("active", data(300_000, 5), 100_000);
    assert_eq!(client.send(&active, 1, Via::Octet).await.status, 200);
    assert_eq!(spool_dirs(dir.path()), 3);
    let started = Instant::now();
    // Touched again 3 s later: it expires 4 s after that, well after the abandoned one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(client.send(&active, 2, Via::Octet).await.status, 200);

    loop {
        let st = client.status("abandoned").await;
        if st.status == 404 {
            break;
        }
        assert_eq!(st.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the abandoned upload was never swept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The rows went first; the bytes follow in the same sweep.
    let deadline = Instant::now() + Duration::from_secs(5);
    while spool_dirs(dir.path()) != 2 {
        assert!(Instant::now() < deadline, "the spool directory stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let index = Index::open(
        &dir.path().join("index.sqlite"),
        chunkd::config::Durability::Safe,
    )
    .unwrap();
    assert!(index.find("", "abandoned").unwrap().is_none());
    assert_eq!(index.all_uploads().unwrap().len(), 2);

    // The complete file, however old, and the upload touched recently are whole.
    let st = client.status("active").await;
    assert_eq!(st.status, 200, "{:?}", st.json);
    assert_eq!(st.json["received"], serde_json::json!([1, 2]));
    assert_eq!(client.download(&file_id).await, *done.data);
    let m = scrape(&client).await;
    assert_eq!(get(&m, "chunkd_uploads_expired_total"), 1.0);
    // Its spool bytes are counted out.
    let sealed = |n: u64| n - n % 16 + 16;
    assert_eq!(
        get(&m, "chunkd_spool_bytes"),
        (sealed(100_000) + sealed(150_000) + 2 * sealed(100_000)) as f64
    );
    // The active upload can still finish.
    assert_eq!(
        client.upload_in_order(&active, &[3], Via::Octet).await.json["complete"],
        true
    );
    assert_eq!(
        client
            .download(&client.status("active").await.file_id())
            .await,
        *active.data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_overwrite_leaves_the_content_whole() {
    const API: &str = ACME_FILES;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.auth.secret.value = Some(SECRET.into());
    config.limits.expire_after = Duration::from_secs(1);
    config.limits.sweep_interval = Some(Duration::from_secs(1));
    let server = TestServer::start_with(config);
    let http = reqwest::Client::new();
    let v1 = data(200_000, 7);
    let part = reqwest::multipart::Part::bytes(v1.clone()).file_name("f.bin");
    let resp = http
        .post(server.url(API))
        .bearer_auth(user("alice", "acme"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["resource"]["id"].as_str().unwrap().to_string();
    // An application starts an overwrite, chunk 1 of 3, and leaves.
    let v2 = data(300_000, 8);
    let q = serde_urlencoded::to_string([
        ("resumableChunkNumber", "1"),
        ("resumableChunkSize", "100000"),
        ("resumableCurrentChunkSize", "100000"),
        ("resumableTotalSize", "300000"),
        ("resumableIdentifier", "over"),
        ("resumableFilename", "f.bin"),
        ("resumableTotalChunks", "3"),
    ])
    .unwrap();
    let resp = http
        .post(server.url(&format!("{API}/{id}?{q}")))
        .bearer_auth(application("bot", "acme"))
        .header("content-type", "application/octet-stream")
        .body(v2[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(spool_dirs(dir.path()), 2);

    let deadline = Instant::now() + Duration::from_secs(15);
    while spool_dirs(dir.path()) != 1 {
        assert!(Instant::now() < deadline, "the overwrite was never swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = http
        .get(server.url(&format!("{API}/{id}/download")))
        .bearer_auth(user("alice", "acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), v1);
    let m = scrape(&Client::new(&server)).await;
    assert_eq!(get(&m, "chunkd_uploads_expired_total"), 1.0);
    // The single-request upload counts too, and only the current content stays in the spool.
    assert_eq!(get(&m, "chunkd_received_chunks_total"), 2.0);
    assert_eq!(get(&m, "chunkd_received_bytes_total"), 300_000.0);
    assert_eq!(get(&m, "chunkd_uploads_completed_total"), 1.0);
    assert_eq!(get(&m, "chunkd_spool_bytes"), (200_000 + 16) as f64);
}
