//! Downloads over real TCP from a real server with a real SQLite index: exact bytes, headers,
//! HEAD, single ranges (fixed and random), conditional requests, `Content-Disposition` for
//! hostile names, 404s, corrupt and missing chunk files, and the empty file.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use reqwest::header::HeaderMap;
use serde_json::json;

/// Not a multiple of 16, larger than one 16 KiB segment: chunk boundaries fall mid-segment.
const CHUNK: usize = 100_003;
/// Four chunks (floor mode): 3 × 100,003 and a last one of 150,008 bytes, which spans two of
/// the server's 128 KiB read batches.
const LEN: usize = 450_017;
const SEG: usize = 16 * 1024;

fn hdr<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

/// The upload id and completion time (epoch ms) of a file, from the index.
fn index_row(data: &Path, file_id: &str) -> (String, i64) {
    let db = rusqlite::Connection::open(data.join("index.sqlite")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.query_row(
        "SELECT u.id, u.completed_at FROM files f JOIN uploads u ON u.id = f.content WHERE f.id = ?1",
        [file_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// The standard 4-chunk file of these tests.
fn big_upload(identifier: &str) -> Upload {
    let mut up = Upload::new(identifier, data(LEN, 7), CHUNK);
    up.mime = "text/plain".into();
    assert_eq!(up.total_chunks(), 4);
    assert_eq!(up.chunk(4).len(), 150_008);
    up
}

async fn get_with(client: &Client, file_id: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client.http.get(format!("{}/files/{file_id}", client.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_and_head_of_a_multi_chunk_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let up = big_upload("big");
    let id = client.upload_all(&up).await;
    let (upload_id, completed_at) = index_row(dir.path(), &id);
    assert_eq!(upload_id.len(), 32);
    // The ETag is the upload id, which is also the spool directory's name: one data file.
    let dirs: Vec<PathBuf> = spool_files(dir.path())
        .iter()
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect();
    assert_eq!(dirs.len(), 1);
    assert!(
        dirs.iter()
            .all(|d| d.file_name().unwrap() == upload_id.as_str())
    );
    let etag = format!("\"{upload_id}\"");
    let last_modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs((completed_at / 1000) as u64),
    );

    let check_headers = |h: &HeaderMap| {
        assert_eq!(hdr(h, "content-length"), LEN.to_string());
        assert_eq!(hdr(h, "content-type"), "text/plain");
        assert_eq!(hdr(h, "etag"), etag);
        assert_eq!(hdr(h, "last-modified"), last_modified);
        assert_eq!(hdr(h, "accept-ranges"), "bytes");
        assert_eq!(hdr(h, "cache-control"), "private, no-cache");
        assert_eq!(hdr(h, "x-content-type-options"), "nosniff");
        assert_eq!(hdr(h, "content-security-policy"), "sandbox");
        assert_eq!(
            hdr(h, "content-disposition"),
            "attachment; filename=\"big.bin\"; filename*=UTF-8''big.bin"
        );
        assert!(h.get("content-range").is_none());
    };

    let resp = get_with(&client, &id, &[]).await;
    assert_eq!(resp.status().as_u16(), 200);
    check_headers(resp.headers());
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), LEN);
    assert!(
        body[..] == up.data[..],
        "downloaded bytes differ from the upload"
    );
    // The harness helper agrees.
    assert!(client.download(&id).await == *up.data);

    let resp = client
        .http
        .head(format!("{}/files/{id}", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    check_headers(resp.headers());
    assert!(resp.bytes().await.unwrap().is_empty());

    // A HEAD with a Range answers like the GET would, without a body.
    let resp = client
        .http
        .head(format!("{}/files/{id}", client.base))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(
        hdr(resp.headers(), "content-range"),
        format!("bytes 10-19/{LEN}")
    );
    assert_eq!(hdr(resp.headers(), "content-length"), "10");
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn content_type_comes_from_resumable_type_or_is_octet_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let cases = [
        ("image/png", "image/png"),
        ("Text/PLAIN", "text/plain"),
        (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        ("", "application/octet-stream"),
        ("text/html; charset=utf-8", "application/octet-stream"),
        ("text/html\"><script>", "application/octet-stream"),
        ("text", "application/octet-stream"),
        ("text/", "application/octet-stream"),
        ("/html", "application/octet-stream"),
        ("text/html/x", "application/octet-stream"),
        ("text/ht ml", "application/octet-stream"),
        ("tëxt/html", "application/octet-stream"),
    ];
    for (i, (mime, expected)) in cases.iter().enumerate() {
        let mut up = Upload::new(&format!("type-{i}"), data(1000, i as u64), 1000);
        up.mime = mime.to_string();
        let id = client.upload_all(&up).await;
        let resp = get_with(&client, &id, &[]).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            hdr(resp.headers(), "content-type"),
            *expected,
            "resumableType {mime:?}"
        );
        assert!(resp.bytes().await.unwrap()[..] == up.data[..]);
    }
}

/// Fetches `range` and checks a 206 with exactly `Content-Range: bytes a-b/LEN` and its bytes.
async fn check_range(client: &Client, id: &str, original: &[u8], range: &str, a: usize, b: usize) {
    let resp = get_with(client, id, &[("range", range)]).await;
    assert_eq!(resp.status().as_u16(), 206, "{range}");
    let h = resp.headers().clone();
    assert_eq!(
        hdr(&h, "content-range"),
        format!("bytes {a}-{b}/{}", original.len()),
        "{range}"
    );
    assert_eq!(
        hdr(&h, "content-length"),
        (b + 1 - a).to_string(),
        "{range}"
    );
    assert_eq!(hdr(&h, "accept-ranges"), "bytes");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), b + 1 - a, "{range}");
    assert!(body[..] == original[a..=b], "{range}: bytes differ");
}

/// A fixed-seed xorshift generator, so that a failing range can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn single_ranges_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let up = big_upload("ranges");
    let id = client.upload_all(&up).await;
    let d = &up.data[..];
    let (c1, c2, c3) = (CHUNK, 2 * CHUNK, 3 * CHUNK);

    check_range(&client, &id, d, "bytes=0-0", 0, 0).await;
    check_range(&client, &id, d, "bytes=0-15", 0, 15).await;
    // Segment boundary inside chunk 1.
    check_range(&client, &id, d, "bytes=16380-16390", 16380, 16390).await;
    check_range(&client, &id, d, &format!("bytes={SEG}-{SEG}"), SEG, SEG).await;
    // Chunk boundary 1|2, mid-segment.
    check_range(
        &client,
        &id,
        d,
        &format!("bytes={}-{}", c1 - 5, c1 + 5),
        c1 - 5,
        c1 + 5,
    )
    .await;
    // A segment boundary of chunk 1 and the chunk boundary in one range.
    check_range(
        &client,
        &id,
        d,
        &format!("bytes=16380-{}", c1 + 20),
        16380,
        c1 + 20,
    )
    .await;
    // A segment boundary inside chunk 2 (its own segments start at the chunk start).
    let s2 = c1 + SEG;
    check_range(
        &client,
        &id,
        d,
        &format!("bytes={}-{}", s2 - 3, s2 + 3),
        s2 - 3,
        s2 + 3,
    )
    .await;
    // Across all chunk boundaries.
    check_range(&client, &id, d, &format!("bytes=1-{}", LEN - 2), 1, LEN - 2).await;
    // Last chunk: its second read batch (128 KiB into it).
    let batch = c3 + 8 * SEG;
    check_range(
        &client,
        &id,
        d,
        &format!("bytes={}-{}", batch - 7, batch + 7),
        batch - 7,
        batch + 7,
    )
    .await;
    // Open-ended and suffix.
    check_range(&client, &id, d, &format!("bytes={c2}-"), c2, LEN - 1).await;
    check_range(
        &client,
        &id,
        d,
        &format!("bytes={}-", LEN - 1),
        LEN - 1,
        LEN - 1,
    )
    .await;
    check_range(&client, &id, d, "bytes=-5", LEN - 5, LEN - 1).await;
    check_range(&client, &id, d, "bytes=-1", LEN - 1, LEN - 1).await;
    check_range(
        &client,
        &id,
        d,
        &format!("bytes=-{}", LEN + 1000),
        0,
        LEN - 1,
    )
    .await;
    // A last position past the end clamps.
    check_range(
        &client,
        &id,
        d,
        &format!("bytes={}-{}", LEN - 10, LEN + 10_000),
        LEN - 10,
        LEN - 1,
    )
    .await;
    check_range(
        &client,
        &id,
        d,
        "bytes=100-99999999999999999999999",
        100,
        LEN - 1,
    )
    .await;

    // 200 random ranges against the original, in every syntax.
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for i in 0..200 {
        let a = rng.below(LEN);
        let span = if i % 2 == 0 {
            1 + rng.below(40_000)
        } else {
            1 + rng.below(LEN)
        };
        let b = (a + span - 1).min(LEN - 1);
        match i % 10 {
            0 => check_range(&client, &id, d, &format!("bytes={a}-"), a, LEN - 1).await,
            1 => {
                let n = 1 + rng.below(LEN);
                check_range(&client, &id, d, &format!("bytes=-{n}"), LEN - n, LEN - 1).await
            }
            2 => {
                check_range(
                    &client,
                    &id,
                    d,
                    &format!("bytes={a}-{}", a + span + LEN),
                    a,
                    LEN - 1,
                )
                .await
            }
            _ => check_range(&client, &id, d, &format!("bytes={a}-{b}"), a, b).await,
        }
    }

    // Unsatisfiable: 416, Content-Range bytes */LEN, JSON error.
    for range in [
        format!("bytes={LEN}-"),
        format!("bytes={}-{}", LEN + 5, LEN + 9),
        "bytes=-0".into(),
    ] {
        let resp = get_with(&client, &id, &[("range", &range)]).await;
        assert_eq!(resp.status().as_u16(), 416, "{range}");
        assert_eq!(
            hdr(resp.headers(), "content-range"),
            format!("bytes */{LEN}")
        );
        assert_eq!(hdr(resp.headers(), "content-type"), "application/json");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "range_not_satisfiable", "message": format!("range not satisfiable: the file has {LEN} bytes")})
        );
    }

    // Ranges chunkd does not serve are ignored (RFC 9110): the whole file, 200.
    for range in [
        "bytes=0-1,5-6",
        "bytes=5-2",
        "items=0-1",
        "bytes=a-b",
        "bytes=-",
    ] {
        let resp = get_with(&client, &id, &[("range", range)]).await;
        assert_eq!(resp.status().as_u16(), 200, "{range}");
        assert!(resp.headers().get("content-range").is_none());
        assert_eq!(hdr(resp.headers(), "content-length"), LEN.to_string());
        assert!(resp.bytes().await.unwrap()[..] == d[..], "{range}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let up = big_upload("cond");
    let id = client.upload_all(&up).await;
    let first = get_with(&client, &id, &[]).await;
    let etag = hdr(first.headers(), "etag").to_string();
    let modified = hdr(first.headers(), "last-modified").to_string();
    assert!(first.bytes().await.unwrap()[..] == up.data[..]);
    let (upload_id, _) = index_row(dir.path(), &id);
    assert_eq!(etag, format!("\"{upload_id}\""));

    // If-None-Match: any matching form gives a bodyless 304 that still names the validators.
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"nope\", {etag}"),
        "*".into(),
    ] {
        let resp = get_with(&client, &id, &[("if-none-match", &inm)]).await;
        assert_eq!(resp.status().as_u16(), 304, "{inm}");
        assert_eq!(hdr(resp.headers(), "etag"), etag);
        assert_eq!(hdr(resp.headers(), "last-modified"), modified);
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    let resp = get_with(&client, &id, &[("if-none-match", "\"0123\"")]).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.bytes().await.unwrap()[..] == up.data[..]);

    // If-Range with the current ETag or date: the range applies.
    for validator in [etag.clone(), modified.clone()] {
        let resp = get_with(
            &client,
            &id,
            &[("range", "bytes=100-199"), ("if-range", &validator)],
        )
        .await;
        assert_eq!(resp.status().as_u16(), 206, "{validator}");
        assert_eq!(
            hdr(resp.headers(), "content-range"),
            format!("bytes 100-199/{LEN}")
        );
        assert!(resp.bytes().await.unwrap()[..] == up.data[100..200]);
    }
    // If-Range with another ETag, a weak one, or another date: the whole file, 200.
    for validator in [
        "\"ffffffffffffffffffffffffffffffff\"".to_string(),
        format!("W/{etag}"),
        "Thu, 01 Jan 1970 00:00:00 GMT".to_string(),
    ] {
        let resp = get_with(
            &client,
            &id,
            &[("range", "bytes=100-199"), ("if-range", &validator)],
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200, "{validator}");
        assert!(resp.headers().get("content-range").is_none());
        assert_eq!(hdr(resp.headers(), "content-length"), LEN.to_string());
        assert!(resp.bytes().await.unwrap()[..] == up.data[..]);
    }
}

/// The last path component of a name as the server picks it (`/` and `\` both separate), or
/// `download` for a name that ends in a separator, `.` or `..`.
fn last_component(name: &str) -> &str {
    let base = name.rsplit(['/', '\\']).next().unwrap();
    if base.is_empty() || base == "." || base == ".." {
        "download"
    } else {
        base
    }
}

/// Splits a Content-Disposition header into (quoted fallback, RFC 8187 value), checking its shape.
fn parse_disposition(cd: &str) -> (&str, &str) {
    let rest = cd
        .strip_prefix("attachment; filename=\"")
        .unwrap_or_else(|| panic!("{cd}"));
    let (fallback, rest) = rest.split_once('"').unwrap_or_else(|| panic!("{cd}"));
    let ext = rest
        .strip_prefix("; filename*=UTF-8''")
        .unwrap_or_else(|| panic!("{cd}"));
    (fallback, ext)
}

#[tokio::test(flavor = "multi_thread")]
async fn content_disposition_survives_hostile_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    // (name, the exact quoted fallback)
    let cases: &[(&str, &str)] = &[
        ("résumé \"x\";.pdf", "r_sum_ _x__.pdf"),
        ("plain name.txt", "plain name.txt"),
        ("a\"b;c.txt", "a_b_c.txt"),
        (
            "\"; filename=evil.html; x=\".txt",
            "__ filename=evil.html_ x=_.txt",
        ),
        ("../../etc/passwd", "passwd"),
        ("dir\\sub\\evil\".html", "evil_.html"),
        ("back\\slash", "slash"),
        ("x/..", "download"),
        ("trailing/", "download"),
        ("..", "download"),
        (".", "download"),
        ("100%25 real.txt", "100_25 real.txt"),
        ("it's.txt", "it's.txt"),
        ("日本語 ファイル.txt", "___ ____.txt"),
        ("\u{202e}fdp.exe", "_fdp.exe"),
        ("=?utf-8?q?x?=", "=?utf-8?q?x?="),
    ];
    for (i, (name, fallback_expected)) in cases.iter().enumerate() {
        let mut up = Upload::new(&format!("cd-{i}"), data(700, i as u64), 1000);
        up.filename = name.to_string();
        let id = client.upload_all(&up).await;
        let resp = get_with(&client, &id, &[]).await;
        assert_eq!(resp.status().as_u16(), 200, "{name:?}");
        let raw = resp
            .headers()
            .get("content-disposition")
            .unwrap()
            .as_bytes()
            .to_vec();
        assert!(
            raw.iter().all(|&b| (0x20..0x7f).contains(&b)),
            "{name:?}: non-ASCII or control bytes"
        );
        let cd = std::str::from_utf8(&raw).unwrap();
        let (fallback, ext) = parse_disposition(cd);
        assert_eq!(fallback, *fallback_expected, "{name:?} gave {cd}");
        assert!(!fallback.contains(['"', ';', '\\']), "{name:?} gave {cd}");
        assert!(
            ext.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~%".contains(&b)),
            "{name:?}: filename* holds a character outside attr-char: {ext}"
        );
        let decoded = percent_encoding::percent_decode_str(ext)
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, last_component(name), "{name:?} gave {cd}");
        assert_eq!(
            fallback.chars().count(),
            last_component(name).chars().count()
        );
        assert!(resp.bytes().await.unwrap()[..] == up.data[..]);
    }
    // The full header of the example in the brief.
    let mut up = Upload::new("cd-exact", data(10, 1), 1000);
    up.filename = "résumé \"x\";.pdf".into();
    let id = client.upload_all(&up).await;
    let resp = get_with(&client, &id, &[]).await;
    assert_eq!(
        hdr(resp.headers(), "content-disposition"),
        "attachment; filename=\"r_sum_ _x__.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22%3B.pdf"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_names_are_refused_at_upload() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    for (i, name) in [
        "a\r\nb.txt",
        "a\nb.txt",
        "a\rb.txt",
        "a\0b.txt",
        "a\tb.txt",
        "\u{1b}[31m.txt",
        "a\u{7f}.txt",
    ]
    .iter()
    .enumerate()
    {
        let mut up = Upload::new(&format!("ctl-{i}"), data(100, 1), 1000);
        up.filename = name.to_string();
        for via in [Via::Octet, Via::MultipartForm] {
            let r = client.send(&up, 1, via).await;
            assert_eq!(r.status, 400, "{name:?} via {via:?}");
            if via == Via::Octet {
                assert_eq!(
                    r.json,
                    json!({"error": "invalid_parameter",
                           "message": "invalid parameter `resumableFilename`: contains control characters"}),
                    "{name:?}"
                );
            } else {
                // The harness also puts the name in the file part's own headers, where a CR or LF
                // breaks the multipart framing before the field is even read.
                let code = r.json["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name:?}: {:?}", r.json));
                assert!(
                    ["invalid_parameter", "malformed_multipart"].contains(&code),
                    "{name:?}: {:?}",
                    r.json
                );
            }
        }
        // Nothing was created under that identifier.
        let s = client.status(&up.identifier).await;
        assert_eq!(s.status, 404);
        assert_eq!(s.json["error"], json!("not_found"));
    }
    assert!(spool_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_incomplete_files_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let not_found = json!({"error": "not_found", "message": "file not found"});
    for id in [
        "00000000000000000000000000000000",
        "nope",
        "%2e%2e%2fetc",
        "a%00b",
    ] {
        let r = client.get(&format!("/files/{id}")).await;
        assert_eq!(r.status, 404, "{id}");
        assert_eq!(r.json, not_found, "{id}");
    }
    // An upload with 1 chunk of 3 received: its file id (in every chunk reply) is not served yet.
    let up = Upload::new("incomplete", data(3000, 3), 1000);
    let r = client.send(&up, 1, Via::Octet).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["complete"], json!(false));
    assert!(r.json.get("download_url").is_none());
    let file_id = r.json["file_id"].as_str().unwrap().to_string();
    assert_eq!(file_id.len(), 32);
    let r = client.get(&format!("/files/{file_id}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json, not_found);
    let head = client
        .http
        .head(format!("{}/files/{file_id}", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 404);
    // Chunk 3 too: still one missing.
    let r = client.send(&up, 3, Via::Octet).await;
    assert_eq!(r.json["file_id"], json!(file_id));
    assert_eq!(client.get(&format!("/files/{file_id}")).await.status, 404);
    // The last one completes it and the same id is served.
    let r = client.send(&up, 2, Via::Octet).await;
    assert_eq!(r.json["file_id"], json!(file_id));
    assert_eq!(r.json["complete"], json!(true));
    assert!(client.download(&file_id).await == *up.data);
}

/// Where chunk `n` of the only upload holding one is: its data file, and its region's start.
fn chunk_region(data: &Path, n: usize) -> (PathBuf, usize) {
    let db = rusqlite::Connection::open(data.join("index.sqlite")).unwrap();
    let mut st = db
        .prepare("SELECT upload_id, pos FROM chunks WHERE number = ?1")
        .unwrap();
    let rows: Vec<(String, i64)> = st
        .query_map([n as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (upload, pos) = &rows[0];
    (data.join("spool").join(upload).join("data"), *pos as usize)
}

/// GETs a file (or a range of it) and returns its body only if it arrived whole. The server
/// aborts the connection when a chunk fails its checks; depending on how far the reply had got
/// by then, the client sees no reply at all or a reply (`status`, with the full length in its
/// headers) whose body breaks off. Both are `None`.
async fn fetch_unless_aborted(
    client: &Client,
    file_id: &str,
    range: Option<&str>,
    status: u16,
) -> Option<Vec<u8>> {
    let mut req = client.http.get(format!("{}/files/{file_id}", client.base));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => {
            assert!(e.is_request(), "not an aborted connection: {e:?}");
            return None;
        }
    };
    assert_eq!(resp.status().as_u16(), status);
    if range.is_none() {
        assert_eq!(hdr(resp.headers(), "content-length"), LEN.to_string());
    }
    resp.bytes().await.ok().map(|b| b.to_vec())
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_never_yields_a_complete_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let up = big_upload("corrupt");
    let id = client.upload_all(&up).await;
    assert!(client.download(&id).await == *up.data);

    let last_sealed = 150_008 - 150_008 % 16 + 16;
    // (chunk, offset in its file): mid chunk 2; the first read batch of the two-batch chunk 4
    // (sent before that chunk's hash is checked); the last byte of chunk 4 (its padding).
    for (n, offset) in [(2, 5_000), (1, 0), (4, 1_000), (4, last_sealed - 1)] {
        let (path, pos) = chunk_region(dir.path(), n);
        flip(&path, pos + offset);
        // Sizes are intact, so the reply starts as a 200 and the body shows the damage.
        if let Some(body) = fetch_unless_aborted(&client, &id, None, 200).await {
            panic!(
                "chunk {n} offset {offset}: a corrupt file came back as a complete body of {} bytes \
                 (equal to the original: {})",
                body.len(),
                body[..] == up.data[..]
            );
        }
        // A range of the damaged chunk fails too, whether or not it covers the damaged byte:
        // the whole chunk is checked before the range's last piece is sent.
        let chunk_start = (n - 1) * 100_003;
        // The plaintext position nearest the damage (the padding lies past the plaintext).
        let near = offset.min(if n == 4 { 150_008 } else { 100_003 } - 100);
        for (a, b) in [
            (
                chunk_start + near.saturating_sub(5),
                chunk_start + near + 95,
            ),
            (chunk_start + 60_000, chunk_start + 60_010),
        ] {
            let range = format!("bytes={a}-{b}");
            assert!(
                fetch_unless_aborted(&client, &id, Some(&range), 206)
                    .await
                    .is_none(),
                "chunk {n} offset {offset}: range {range} of a damaged chunk came back whole"
            );
        }
        // Flipping the byte back restores the file: the failure was the flipped byte.
        flip(&path, pos + offset);
        let range = format!("bytes={}-{}", chunk_start + 60_000, chunk_start + 60_010);
        let resp = get_with(&client, &id, &[("range", range.as_str())]).await;
        assert_eq!(resp.status().as_u16(), 206);
        assert!(
            resp.bytes().await.unwrap()[..] == up.data[chunk_start + 60_000..=chunk_start + 60_010]
        );
        assert!(
            client.download(&id).await == *up.data,
            "chunk {n} offset {offset}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_truncated_chunk_file_is_a_500_before_any_header() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let up = big_upload("missing");
    let id = client.upload_all(&up).await;
    let internal = json!({"error": "corrupt", "message": "internal error"});

    // Cut one byte short of chunk 3's end: the size check refuses it.
    let (path, pos) = chunk_region(dir.path(), 3);
    let saved = std::fs::read(&path).unwrap();
    let end = pos + 100_003 - 100_003 % 16 + 16;
    std::fs::write(&path, &saved[..end - 1]).unwrap();
    let r = client.get(&format!("/files/{id}")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json, internal);
    assert!(r.headers.get("content-disposition").is_none());
    assert!(r.headers.get("etag").is_none());

    // Deleted.
    std::fs::remove_file(&path).unwrap();
    for range in [None, Some("bytes=0-0")] {
        let mut req = client.http.get(format!("{}/files/{id}", client.base));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 500);
        assert_eq!(hdr(resp.headers(), "content-type"), "application/json");
        assert!(resp.headers().get("content-disposition").is_none());
        assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), internal);
    }
    let head = client
        .http
        .head(format!("{}/files/{id}", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 500);

    // Put back, the file is whole again.
    std::fs::write(&path, &saved).unwrap();
    assert!(client.download(&id).await == *up.data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_byte_file_uploads_and_downloads_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    for (i, via) in [Via::MultipartForm, Via::Octet].into_iter().enumerate() {
        // Flow.js sends one 0-byte chunk for an empty file.
        let mut up = Upload::new(&format!("0-empty-{i}"), Vec::new(), 1 << 20);
        up.dialect = Dialect::Flow;
        up.filename = "empty.txt".into();
        assert_eq!(up.total_chunks(), 1);
        let r = client.send(&up, 1, via).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        assert_eq!(r.json["complete"], json!(true));
        assert_eq!(r.json["completed_now"], json!(true));
        assert_eq!(r.json["total_chunks"], json!(1));
        let id = r.json["file_id"].as_str().unwrap().to_string();

        let resp = get_with(&client, &id, &[]).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(hdr(resp.headers(), "content-length"), "0");
        assert_eq!(
            hdr(resp.headers(), "content-type"),
            "application/octet-stream"
        );
        assert!(resp.bytes().await.unwrap().is_empty());
        let head = client
            .http
            .head(format!("{}/files/{id}", client.base))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status().as_u16(), 200);
        assert_eq!(hdr(head.headers(), "content-length"), "0");
        // No byte of an empty file can be selected.
        for range in ["bytes=0-", "bytes=0-0", "bytes=-5"] {
            let resp = get_with(&client, &id, &[("range", range)]).await;
            assert_eq!(resp.status().as_u16(), 416, "{range}");
            assert_eq!(hdr(resp.headers(), "content-range"), "bytes */0");
        }
    }
    // Each empty chunk is stored as one block of padding, in its upload's data file.
    let files = data_files(dir.path());
    assert_eq!(files.len(), 2);
    for (upload, size) in files {
        assert_eq!(size, 16, "{upload}");
    }
}

/// `GET /files/{id}/thumbnails/{index}`: the status call lists an image's thumbnail once made;
/// it is a PNG of the listed size, cached by its ETag; other indexes, unknown or incomplete
/// files and files that are not images get 404.
#[tokio::test(flavor = "multi_thread")]
async fn thumbnails_of_chunk_endpoint_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);

    let bytes = png(1200, 600);
    let third = bytes.len() / 3;
    let mut image = Upload::new("photo", bytes, third);
    image.filename = "photo.png".into();
    image.mime = "image/png".into();
    assert_eq!(image.total_chunks(), 3);
    let id = client.upload_all(&image).await;
    let st = client.status_previewed("photo").await.json;
    assert_eq!(st["thumbnails_status"], "done", "{st}");
    let thumbs = st["thumbnails"].as_array().unwrap();
    assert_eq!(thumbs.len(), 1, "{st}");
    let t = &thumbs[0];
    assert_eq!(t["index"], 0);
    assert_eq!(t["type"], "image/png");
    let url = format!("/files/{id}/thumbnails/0");
    assert_eq!(t["url"], url.as_str());

    let resp = client.http.get(server.url(&url)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(hdr(resp.headers(), "content-type"), "image/png");
    let etag = hdr(resp.headers(), "etag").to_string();
    assert_eq!(etag, format!("\"{}\"", t["id"].as_str().unwrap()));
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, t["size"].as_u64().unwrap());
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!(decoded.width() as u64, t["width"].as_u64().unwrap());
    assert_eq!(decoded.height() as u64, t["height"].as_u64().unwrap());
    assert!(decoded.width() < 1200 && decoded.width() == 2 * decoded.height());

    let again = client
        .http
        .get(server.url(&url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    let head = client.http.head(server.url(&url)).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(
        hdr(head.headers(), "content-length"),
        bytes.len().to_string()
    );

    // Not an image: previews are done, with none to list.
    let mut text = Upload::new("notes", data(5000, 3), 4096);
    text.mime = "text/plain".into();
    let text_id = client.upload_all(&text).await;
    let st = client.status_previewed("notes").await.json;
    assert_eq!(st["thumbnails_status"], "done", "{st}");
    assert_eq!(st["thumbnails"], json!([]));

    // An upload in progress has no preview state yet.
    let partial = Upload::new("partial", data(30_000, 4), 10_000);
    let r = client.send(&partial, 1, Via::Octet).await;
    let partial_id = r.file_id();
    let st = client.status("partial").await.json;
    assert!(st.get("thumbnails_status").is_none(), "{st}");
    assert_eq!(st["thumbnails"], json!([]));

    for path in [
        format!("/files/{id}/thumbnails/1"),
        format!("/files/{id}/thumbnails/x"),
        format!("/files/{text_id}/thumbnails/0"),
        format!("/files/{partial_id}/thumbnails/0"),
        "/files/0123456789abcdef0123456789abcdef/thumbnails/0".to_string(),
        format!("/files/{id}/thumbnails/0/more"),
        format!("/files/{id}/thumbnails"),
    ] {
        let r = client.get(&path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json["error"], "not_found", "{path}");
    }
    let post = client.http.post(server.url(&url)).send().await.unwrap();
    assert_eq!(post.status().as_u16(), 405);
    assert_eq!(hdr(post.headers(), "allow"), "GET, HEAD, OPTIONS");
}
