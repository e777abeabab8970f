//! Concurrency stress, in bounded loops over real TCP: the same chunk from two clients, the final
//! chunks of many files at once, a delete racing an upload, and two files under one identifier.
//! (tests/chunks.rs has the single-file cases.)

mod common;

use chunkd::Config;
use common::SECRET;
use common::binary::audit;
use common::*;
use futures_util::future::join_all;
use serde_json::Value;

const API: &str = ACME_FILES;

fn server() -> (tempfile::TempDir, TestServer, Client) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path().join("data"));
    config.auth.secret.value = Some(SECRET.into());
    let server = TestServer::start_with(config);
    let client = Client::new(&server);
    (dir, server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_chunk_from_two_clients_at_once() {
    let (dir, _server, client) = server();
    let data_dir = dir.path().join("data");
    for trial in 0..25u64 {
        // Same bytes: both 200, stored once.
        let up = Upload::new(&format!("same-{trial}"), data(60_000, trial), 20_000);
        let (a, b) = tokio::join!(
            client.send(&up, 2, Via::Octet),
            client.send(&up, 2, Via::MultipartBoth)
        );
        assert_eq!((a.status, b.status), (200, 200), "{} / {}", a.json, b.json);
        let st = client.status(&up.identifier).await;
        assert_eq!(st.json["received"], serde_json::json!([2]));

        // Different bytes: one wins, the other is a 400 chunk_conflict, and the stored bytes are
        // the winner's.
        let mut other = up.chunk(1).to_vec();
        other[trial as usize % 20_000] ^= 0x5a;
        let (a, b) = tokio::join!(
            client.send(&up, 1, Via::Octet),
            client.send_bytes(&up, 1, Via::Octet, other.clone())
        );
        let mut expect = up.data.to_vec();
        match (a.status, b.status) {
            (200, 400) => assert_eq!(b.json["error"], "chunk_conflict", "{}", b.json),
            (400, 200) => {
                assert_eq!(a.json["error"], "chunk_conflict", "{}", a.json);
                expect[..20_000].copy_from_slice(&other);
            }
            s => panic!("trial {trial}: {s:?}: {} / {}", a.json, b.json),
        }
        let done = client.send(&up, 3, Via::Octet).await;
        assert_eq!(done.json["completed_now"], true, "{}", done.json);
        assert_eq!(client.download(&done.file_id()).await, expect);
    }
    // One data file per upload, holding its committed chunks only (the audit's litter check):
    // the losers left nothing behind.
    assert_eq!(spool_files(&data_dir).len(), 25);
    let a = audit(&data_dir);
    assert!(a.clean(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_final_chunks_of_many_files_land_at_once() {
    let (dir, _server, client) = server();
    for round in 0..4u64 {
        let ups: Vec<Upload> = (0..12u64)
            .map(|i| {
                let cs = 4_096 + 1_000 * i as usize;
                Upload::new(
                    &format!("final-{round}-{i}"),
                    data(cs * 3 + i as usize * 7, round * 100 + i),
                    cs,
                )
            })
            .collect();
        // Every chunk but the last of each file first, then all the last ones at once.
        join_all(ups.iter().map(|up| {
            let (client, up) = (client.clone(), up.clone());
            async move {
                let rest: Vec<usize> = (1..up.total_chunks()).collect();
                client.upload_in_order(&up, &rest, Via::Octet).await;
            }
        }))
        .await;
        // Each last chunk twice, from two clients, all 24 at the same instant.
        let finals = join_all(ups.iter().flat_map(|up| {
            let t = up.total_chunks();
            [Via::Octet, Via::MultipartForm].map(|via| {
                let (client, up) = (client.clone(), up.clone());
                async move { (up.identifier.clone(), client.send(&up, t, via).await) }
            })
        }))
        .await;
        for up in &ups {
            let replies: Vec<&Reply> = finals
                .iter()
                .filter(|(id, _)| *id == up.identifier)
                .map(|(_, r)| r)
                .collect();
            for r in &replies {
                assert_eq!(r.status, 200, "{}", r.json);
                assert_eq!(r.json["complete"], true);
            }
            let now = replies
                .iter()
                .filter(|r| r.json["completed_now"] == true)
                .count();
            assert_eq!(now, 1, "{}: exactly one reply completes it", up.identifier);
            assert_eq!(client.download(&replies[0].file_id()).await, *up.data);
        }
    }
    let a = audit(&dir.path().join("data"));
    assert!(a.clean(), "{a:?}");
}

/// A Files API chunk: multipart, the parameters in the query and the form.
async fn api_chunk(client: &Client, token: &str, id: &str, up: &Upload, n: usize) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in up.params(n) {
        form = form.text(k, v);
    }
    let part = reqwest::multipart::Part::bytes(up.chunk(n).to_vec()).file_name("blob");
    let resp = client
        .http
        .post(format!("{}{API}/{id}?{}", client.base, up.query(n)))
        .bearer_auth(token)
        .multipart(form.part("file", part))
        .send()
        .await
        .unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_an_upload_leaves_no_bytes_and_no_file() {
    let (dir, _server, client) = server();
    let data_dir = dir.path().join("data");
    let token = common::user("alice", "acme");
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for trial in 0..30u64 {
        let up = Upload::new(&format!("del-{trial}"), data(100_000, trial), 20_000);
        let create = client.create_file(&token, "filename=del.bin").await;
        assert_eq!(create.status, 200);
        let id = create.json["resource"]["id"].as_str().unwrap().to_string();
        let (s, json) = api_chunk(&client, &token, &id, &up, 1).await;
        assert_eq!(s, 200, "{json}");
        // The rest of the chunks and the delete, all at once; the delete is started after a
        // few hundred microseconds more each trial, to sweep it over the chunks' lives.
        let chunks = join_all((2..=up.total_chunks()).map(|n| {
            let (client, up, id, token) = (client.clone(), up.clone(), id.clone(), token.clone());
            async move { api_chunk(&client, &token, &id, &up, n).await }
        }));
        let delete = async {
            tokio::time::sleep(std::time::Duration::from_micros(trial * 300)).await;
            client
                .http
                .delete(format!("{}{API}/{id}", client.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        let (replies, deleted) = tokio::join!(chunks, delete);
        assert_eq!(deleted, 200);
        for (s, json) in replies {
            // Stored before the delete, or refused after it: never a 500.
            assert!(s == 200 || s == 404, "trial {trial}: {s} {json}");
            *outcomes.entry(s.to_string()).or_default() += 1;
        }
        // No resurrection: the file stays gone, and a late chunk is refused.
        let meta = client
            .http
            .get(format!("{}{API}/{id}", client.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(meta.status(), 404);
        let (s, _) = api_chunk(&client, &token, &id, &up, 2).await;
        assert_eq!(s, 404);
        let a = audit(&data_dir);
        assert!(a.clean(), "trial {trial}: {a:?}");
        assert!(spool_files(&data_dir).is_empty());
    }
    eprintln!("chunk replies racing the delete: {outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_files_under_one_identifier_at_once() {
    let (dir, _server, client) = server();
    for trial in 0..20u64 {
        let ident = format!("shared-{trial}");
        let a = Upload::new(&ident, data(50_000, trial), 10_000);
        let mut b = Upload::new(&ident, data(64_000, trial + 1000), 16_000);
        b.filename = "other.bin".into();
        let sends = [&a, &b].into_iter().flat_map(|up| {
            (1..=up.total_chunks()).map(|n| {
                let (client, up) = (client.clone(), up.clone());
                async move { (up.filename.clone(), client.send(&up, n, Via::Octet).await) }
            })
        });
        let replies = join_all(sends).await;
        let ok = |name: &str| {
            replies
                .iter()
                .filter(|(f, r)| f == name && r.status == 200)
                .count()
        };
        let (won, lost) = if ok(&a.filename) > 0 {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert_eq!(ok(&won.filename), won.total_chunks(), "trial {trial}");
        for (f, r) in &replies {
            if *f == lost.filename {
                assert_eq!(r.status, 400, "trial {trial}: {}", r.json);
                assert_eq!(r.json["error"], "identifier_conflict");
            }
        }
        let st = client.status(&ident).await;
        assert_eq!(st.json["complete"], true);
        assert_eq!(st.json["filename"], won.filename.as_str());
        let id = st.json["file_id"].as_str().unwrap();
        assert_eq!(client.download(id).await, *won.data, "trial {trial}");
    }
    let a = audit(&dir.path().join("data"));
    assert!(a.clean(), "{a:?}");
}
