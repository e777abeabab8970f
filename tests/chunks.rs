//! The chunk endpoint over real TCP: dialects, bodies, order, duplicates, exactly-once
//! completion, identity, probes and status, and every geometry error.

mod common;

use common::*;
use futures_util::future::join_all;
use serde_json::Value;

fn server() -> (tempfile::TempDir, TestServer, Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    let client = Client::new(&server);
    (dir, server, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_upload_in_every_dialect_and_body() {
    let (_dir, _server, client) = server();
    let cases = [
        (Dialect::Resumable, Via::MultipartBoth),
        (Dialect::Resumable, Via::Octet),
        (Dialect::Flow, Via::MultipartForm),
        (Dialect::Flow, Via::Octet),
    ];
    for (i, (dialect, via)) in cases.into_iter().enumerate() {
        let mut up = Upload::new(&format!("ooo-{i}"), data(100_000 + i * 7, i as u64), 16_000);
        up.dialect = dialect;
        let t = up.total_chunks();
        assert_eq!(t, 6);
        let order = [3, 1, 6, 2, 5, 4];
        let mut id = None;
        for (k, &n) in order.iter().enumerate() {
            let r = client.send(&up, n, via).await;
            assert_eq!(r.status, 200, "{dialect:?} {via:?} chunk {n}: {}", r.json);
            assert_eq!(r.json["identifier"], up.identifier.as_str());
            assert_eq!(r.json["chunk"], n);
            assert_eq!(r.json["received"], k + 1);
            assert_eq!(r.json["total_chunks"], t);
            assert_eq!(r.json["complete"], k + 1 == t);
            // The file id is known from the first chunk on and never changes.
            let this = r.file_id();
            assert_eq!(id.get_or_insert(this.clone()), &this);
        }
        let got = client.download(&id.unwrap()).await;
        assert!(
            got == *up.data,
            "{dialect:?} {via:?}: downloaded bytes differ"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_final_chunk_may_arrive_first_in_both_cutting_modes() {
    let (_dir, _server, client) = server();
    for force in [false, true] {
        // 50,000 bytes in chunks of 16,384: floor gives 3 chunks (last 17,232), ceil gives 4.
        let mut up = Upload::new(&format!("last-first-{force}"), data(50_000, 9), 16_384);
        up.force_chunk_size = force;
        let t = up.total_chunks();
        assert_eq!(t, if force { 4 } else { 3 });
        let mut order: Vec<usize> = (1..=t).rev().collect();
        order.swap(1, 2);
        let last = client
            .upload_in_order(&up, &order, Via::MultipartBoth)
            .await;
        assert_eq!(last.json["complete"], true);
        assert_eq!(last.json["completed_now"], true);
        assert_eq!(client.download(&last.file_id()).await, *up.data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chunk_size_is_learnt_from_the_final_chunk_with_twake_names() {
    let (_dir, server, client) = server();
    // Twake names carry no chunk size: 2 chunks of a 30,001-byte file cut at 15,000 (floor).
    let body = data(30_001, 4);
    let q = |n: usize, rest: &str| {
        format!(
            "{}?resumableIdentifier=twake-1&chunk_number={n}&total_chunks=2&total_size=30001&filename=t.bin&type=image%2Fpng{rest}",
            server.url("/upload")
        )
    };
    let post = |n: usize, bytes: Vec<u8>| {
        client
            .http
            .post(q(n, ""))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
    };
    // A last chunk of 20,001 bytes would need chunks of 10,000, which make 3 chunks, not 2.
    let r = post(2, body[10_000..].to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post(2, body[15_000..].to_vec()).await.unwrap();
    assert_eq!(r.status(), 200);
    // Chunk 1 must now hold exactly 15,000 bytes.
    let r = post(1, body[..14_999].to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r: Value = post(1, body[..15_000].to_vec())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["complete"], true);
    let st = client.status("twake-1").await;
    assert_eq!(st.json["chunk_size"], 15_000);
    assert_eq!(client.download(r["file_id"].as_str().unwrap()).await, body);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_final_chunks_complete_the_file_exactly_once() {
    let (_dir, _server, client) = server();
    for trial in 0..40 {
        let up = Upload::new(
            &format!("race-{trial}"),
            data(40_000 + trial, trial as u64),
            8_000,
        );
        let t = up.total_chunks();
        // All chunks at the same instant, on separate connections.
        let replies = join_all((1..=t).map(|n| {
            let (client, up) = (client.clone(), up.clone());
            async move { client.send(&up, n, Via::Octet).await }
        }))
        .await;
        let mut completions = 0;
        for r in &replies {
            assert_eq!(r.status, 200, "{}", r.json);
            if r.json["completed_now"] == true {
                completions += 1;
            }
        }
        assert_eq!(
            completions, 1,
            "trial {trial}: exactly one request completes the file"
        );
        let id = replies[0].file_id();
        assert_eq!(client.download(&id).await, *up.data);
        let st = client.status(&up.identifier).await;
        assert_eq!(st.json["received"].as_array().unwrap().len(), t);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_sent_again_is_idempotent_and_other_bytes_are_refused() {
    let (dir, _server, client) = server();
    let up = Upload::new("dup", data(30_000, 5), 10_000);
    assert_eq!(client.send(&up, 2, Via::Octet).await.status, 200);
    let again = client.send(&up, 2, Via::MultipartBoth).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["received"], 1);
    // The same chunk from two clients at once.
    let (a, b) = tokio::join!(
        client.send(&up, 1, Via::Octet),
        client.send(&up, 1, Via::Octet)
    );
    assert_eq!((a.status, b.status), (200, 200));
    // Other bytes under the same chunk number: another file, refused.
    let mut other = up.chunk(2).to_vec();
    other[17] ^= 1;
    let r = client.send_bytes(&up, 2, Via::Octet, other).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"], "chunk_conflict");
    let done = client.send(&up, 3, Via::Octet).await;
    assert_eq!(done.json["complete"], true);
    assert_eq!(client.download(&done.file_id()).await, *up.data);
    // A duplicate after completion is still a 200 that finds the file.
    let late = client.send(&up, 1, Via::Octet).await;
    assert_eq!(
        (late.status, late.json["complete"].clone()),
        (200, Value::Bool(true))
    );
    assert!(
        late.json["download_url"]
            .as_str()
            .unwrap()
            .ends_with(&done.file_id())
    );
    // One data file, holding the three chunks and nothing else: losers of races left nothing
    // behind.
    let a = common::binary::audit(&dir.path().join("data"));
    assert!(a.clean(), "{a:?}");
    assert_eq!(spool_files(&dir.path().join("data")).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identifier_in_use_by_another_file_is_refused() {
    let (_dir, _server, client) = server();
    let up = Upload::new("same-id", data(20_000, 1), 10_000);
    assert_eq!(client.send(&up, 1, Via::Octet).await.status, 200);
    let mut bigger = Upload::new("same-id", data(20_001, 2), 10_000);
    let mut renamed = up.clone();
    renamed.filename = "other.bin".into();
    let mut rechunked = Upload::new("same-id", data(20_000, 1), 5_000);
    rechunked.filename = up.filename.clone();
    bigger.filename = up.filename.clone();
    for other in [&bigger, &renamed, &rechunked] {
        for r in [
            client.send(other, 2, Via::Octet).await,
            client.probe(other, 1).await,
        ] {
            assert_eq!(r.status, 400, "{}", r.json);
            assert_eq!(r.json["error"], "identifier_conflict");
        }
    }
    // The original is untouched and completes.
    let done = client.send(&up, 2, Via::Octet).await;
    assert_eq!(done.json["complete"], true);
    assert_eq!(client.download(&done.file_id()).await, *up.data);
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_and_status() {
    let (_dir, _server, client) = server();
    let up = Upload::new("probe", data(35_000, 3), 10_000);
    // Unknown upload: 204, never 404.
    let r = client.probe(&up, 1).await;
    assert_eq!(r.status, 204);
    assert_eq!(client.status("probe").await.status, 404);
    client.send(&up, 2, Via::Octet).await;
    assert_eq!(client.probe(&up, 1).await.status, 204);
    let present = client.probe(&up, 2).await;
    assert_eq!(present.status, 200);
    assert_eq!(present.json["chunk"], 2);
    assert!(present.json["file_id"].is_string());
    let st = client.status("probe").await;
    assert_eq!(st.status, 200);
    assert_eq!(st.json["received"], serde_json::json!([2]));
    assert_eq!(st.json["total_size"], 35_000);
    assert_eq!(st.json["chunk_size"], 10_000);
    assert_eq!(st.json["total_chunks"], 3);
    assert_eq!(st.json["complete"], false);
    assert!(st.json.get("download_url").is_none());
    client.upload_in_order(&up, &[3, 1], Via::Octet).await;
    let st = client.status("probe").await;
    assert_eq!(st.json["received"], serde_json::json!([1, 2, 3]));
    assert_eq!(st.json["complete"], true);
    let url = st.json["download_url"].as_str().unwrap();
    assert_eq!(client.get(url).await.status, 200);
    // The Flow name works for status too.
    let flow = client.get("/upload/status?flowIdentifier=probe").await;
    assert_eq!(flow.json["file_id"], st.json["file_id"]);
    // A probe with broken parameters is a 400 with a reason, not a 404.
    let r = client
        .get("/upload?resumableChunkNumber=x&resumableIdentifier=probe")
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("resumableChunkNumber")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fluctuating_total_from_resumable_1_1_0_is_accepted() {
    let (_dir, server, client) = server();
    let up = Upload::new("fluct", data(50_000, 8), 10_000);
    // Early requests declare fewer chunks than the file has (the library was still building
    // its list): the server must take the count from the geometry.
    for (n, declared) in [(1usize, 1usize), (2, 3), (3, 3), (4, 5), (5, 5)] {
        let q = up.query(n).replace(
            "resumableTotalChunks=5",
            &format!("resumableTotalChunks={declared}"),
        );
        let r = client
            .http
            .post(format!("{}?{q}", server.url("/upload")))
            .header("content-type", "application/octet-stream")
            .body(up.chunk(n).to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "chunk {n} declared total {declared}");
    }
    let st = client.status("fluct").await;
    assert_eq!(st.json["complete"], true);
    assert_eq!(
        client.download(st.json["file_id"].as_str().unwrap()).await,
        *up.data
    );
}

/// Sends a request built from `up`'s chunk `n` with some parameters replaced.
async fn post_with(
    client: &Client,
    up: &Upload,
    n: usize,
    edit: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut params = up.params(n);
    for (k, v) in edit {
        params.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            params.push((k.to_string(), v.to_string()));
        }
    }
    let q = serde_urlencoded::to_string(&params).unwrap();
    let r = client
        .http
        .post(format!("{}/upload?{q}", client.base))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let json = r.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        json,
        headers,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_geometry_error_is_a_400_and_stores_nothing() {
    let (dir, _server, client) = server();
    let up = Upload::new("geo", data(25_000, 6), 10_000); // 2 chunks: 10,000 and 15,000
    let c1 = up.chunk(1).to_vec();
    let c2 = up.chunk(2).to_vec();
    /// What is wrong, the parameters to replace, the chunk number, the body, the error code.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, usize, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "declared size not the cut",
            vec![("resumableCurrentChunkSize", "9999")],
            1,
            c1[..9999].to_vec(),
            "bad_geometry",
        ),
        (
            "body shorter than declared",
            vec![],
            1,
            c1[..9_000].to_vec(),
            "bad_geometry",
        ),
        (
            "body longer than declared",
            vec![],
            1,
            [c1.clone(), vec![0; 10]].concat(),
            "bad_geometry",
        ),
        (
            "last chunk cut short",
            vec![("resumableCurrentChunkSize", "")],
            2,
            c2[..10_000].to_vec(),
            "bad_geometry",
        ),
        (
            "chunk number zero",
            vec![("resumableChunkNumber", "0")],
            1,
            c1.clone(),
            "bad_geometry",
        ),
        (
            "chunk past the end",
            vec![("resumableChunkNumber", "3")],
            1,
            c1.clone(),
            "bad_geometry",
        ),
        (
            "count no cut makes",
            vec![("resumableTotalChunks", "7")],
            1,
            c1.clone(),
            "bad_geometry",
        ),
        (
            "zero chunk size",
            vec![("resumableChunkSize", "0")],
            1,
            c1.clone(),
            "bad_geometry",
        ),
        (
            "zero total chunks",
            vec![("resumableTotalChunks", "0")],
            1,
            c1.clone(),
            "bad_geometry",
        ),
        (
            "negative number",
            vec![("resumableChunkNumber", "-1")],
            1,
            c1.clone(),
            "invalid_parameter",
        ),
        (
            "overflowing size",
            vec![("resumableTotalSize", "99999999999999999999999")],
            1,
            c1.clone(),
            "invalid_parameter",
        ),
        (
            "absurd chunk count",
            vec![("resumableTotalChunks", "1000000000000")],
            1,
            c1.clone(),
            "bad_geometry",
        ),
        (
            "file over the limit",
            vec![
                ("resumableTotalSize", "100000000000000"),
                ("resumableTotalChunks", ""),
            ],
            1,
            c1.clone(),
            "file_too_large",
        ),
        (
            "missing number",
            vec![("resumableChunkNumber", "")],
            1,
            c1.clone(),
            "missing_parameter",
        ),
        (
            "missing identifier",
            vec![("resumableIdentifier", "")],
            1,
            c1.clone(),
            "missing_parameter",
        ),
        (
            "missing total size",
            vec![("resumableTotalSize", "")],
            1,
            c1.clone(),
            "missing_parameter",
        ),
    ];
    for (what, edit, n, body, code) in cases {
        let r = post_with(&client, &up, n, &edit, body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.json);
        assert_eq!(r.json["error"], code, "{what}: {}", r.json);
        assert!(!r.json["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        spool_bytes(&dir.path().join("data")),
        0,
        "nothing was stored"
    );
    let st = client.status("geo").await;
    if st.status == 200 {
        assert_eq!(
            st.json["received"],
            serde_json::json!([]),
            "nothing was marked"
        );
    }
    // The real chunks are still welcome afterwards.
    let done = client.upload_in_order(&up, &[2, 1], Via::Octet).await;
    assert_eq!(client.download(&done.file_id()).await, *up.data);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_that_are_not_chunks_are_refused_precisely() {
    let (_dir, server, client) = server();
    let up = Upload::new("bodies", data(5_000, 2), 10_000);
    let url = format!("{}?{}", server.url("/upload"), up.query(1));
    // A form-encoded body is not a chunk: 415.
    let r = client
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Multipart without a file part, and with a part after the file: 400.
    let form = reqwest::multipart::Form::new().text("resumableChunkNumber", "1");
    let r = client.http.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "malformed_multipart"
    );
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(up.chunk(1).to_vec()).file_name("x"),
        )
        .text("late", "field");
    let r = client.http.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A multipart content type without a boundary.
    let r = client
        .http
        .post(&url)
        .header("content-type", "multipart/form-data")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A body larger than any legal chunk, refused by its Content-Length before it is read.
    let r = client
        .http
        .post(&url)
        .header("content-type", "application/octet-stream")
        .header("content-length", (1u64 << 40).to_string())
        .body(vec![0u8; 10])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // Conflicting values for one parameter in form and query.
    let mut form = reqwest::multipart::Form::new().text("resumableChunkNumber", "2");
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(up.chunk(1).to_vec()).file_name("x"),
    );
    let r = client.http.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // None of that stored anything; the real chunk still goes through.
    let r = client.send(&up, 1, Via::MultipartBoth).await;
    assert_eq!(
        (r.status, r.json["complete"].clone()),
        (200, Value::Bool(true))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_routes_and_cors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = chunkd::Config::for_data_dir(dir.path().join("data"));
    config.net.cors_origins = vec!["https://app.example".into()];
    let server = TestServer::start_with(config);
    let http = reqwest::Client::new();
    let r = http.delete(server.url("/upload")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers()["allow"].to_str().unwrap().contains("POST"));
    let r = http
        .get(server.url("/nowhere/at/all"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let r = http.get(server.url("/files/0123")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // A preflight from the listed origin, as a browser sends it before an octet chunk.
    let pre = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            server.url("/upload?resumableChunkNumber=1"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
    };
    let r = pre("https://app.example").await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert!(
        r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        r.headers()["access-control-allow-headers"],
        "content-type, authorization"
    );
    assert!(r.headers().contains_key("access-control-max-age"));
    // Another origin gets no permission.
    let r = pre("https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = http
        .get(server.url("/upload/status?resumableIdentifier=x"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = http
        .get(server.url("/upload/status?resumableIdentifier=x"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("Retry-After")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_never_leaves_a_committed_chunk_without_its_bytes() {
    use tokio::io::AsyncWriteExt;
    let (_dir, server, client) = server();
    // Send a whole one-chunk upload, then close the socket at once, without reading the reply:
    // the request is dropped while its chunk commits. Whatever the index then says must be true.
    let body = data(1000, 77);
    for i in 0..200 {
        let q = format!(
            "resumableChunkNumber=1&resumableChunkSize=1000&resumableCurrentChunkSize=1000&resumableTotalSize=1000&resumableIdentifier=hangup-{i}&resumableFilename=x.bin&resumableTotalChunks=1"
        );
        let head = format!(
            "POST /upload?{q} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
        );
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        // Hang up at moments spread over the request's life, to hit the commit window.
        tokio::time::sleep(std::time::Duration::from_micros((i % 40) * 100)).await;
        drop(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut complete = 0;
    for i in 0..200 {
        let st = client.status(&format!("hangup-{i}")).await;
        if st.status == 200 && st.json["complete"] == true {
            complete += 1;
            let got = client.download(st.json["file_id"].as_str().unwrap()).await;
            assert_eq!(
                got, body,
                "upload hangup-{i} is complete but its bytes are not served"
            );
        }
    }
    assert!(
        complete > 0,
        "some of the uploads committed before the hang-up was seen"
    );
}
