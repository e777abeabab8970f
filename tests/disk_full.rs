//! A full spool: the quota flag, and a real ENOSPC from a tiny tmpfs mounted on the spool. Either
//! way a chunk that does not fit gets 503 with Retry-After and a JSON body (Resumable.js retries
//! it; a 500 would end the upload), nothing of it is stored, the index stays consistent, and the
//! upload finishes once space is freed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use chunkd::Config;
use common::SECRET;
use common::binary::audit;
use common::*;
use serde_json::Value;

const API: &str = ACME_FILES;

fn config(data: &Path, quota: Option<u64>) -> Config {
    let mut c = Config::for_data_dir(data);
    c.auth.secret.value = Some(SECRET.into());
    c.limits.max_spool_bytes = quota;
    c
}

/// A whole file through the Files API: created, then sent as one chunk; returns its id.
async fn api_file(client: &Client, token: &str, bytes: Vec<u8>) -> String {
    let r = client.create_file(token, "filename=big.bin").await;
    assert_eq!(r.status, 200);
    let id = r.json["resource"]["id"].as_str().unwrap().to_string();
    let up = Upload::new("big", bytes.clone(), bytes.len());
    assert_eq!(api_octet(client, token, &id, &up, 1).await.status, 200);
    id
}

/// Chunk `n` of `up` to the Files API file `id`, as a raw body.
async fn api_octet(client: &Client, token: &str, id: &str, up: &Upload, n: usize) -> Reply {
    let resp = client
        .http
        .post(format!("{}{API}/{id}?{}", client.base, up.query(n)))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(up.chunk(n).to_vec())
        .send()
        .await
        .unwrap();
    Client::reply(resp).await
}

/// The single-request upload.
async fn api_classic(client: &Client, token: &str, bytes: Vec<u8>) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(bytes).file_name("classic.bin");
    client
        .http
        .post(format!("{}{API}", client.base))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
}

async fn api_delete(client: &Client, token: &str, id: &str) {
    let r = client
        .http
        .delete(format!("{}{API}/{id}", client.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The refusal a full spool gives: 503, Retry-After, a JSON error; the chunk is not stored.
async fn assert_full(client: &Client, up: &Upload, n: usize, data: &Path) {
    let before = spool_bytes(data);
    let r = client.send(up, n, Via::MultipartBoth).await;
    assert_eq!(r.status, 503, "{}", r.json);
    assert_eq!(r.json["error"], "disk_full");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(client.probe(up, n).await.status, 204);
    assert_eq!(spool_bytes(data), before, "nothing of it is stored");
    let a = audit(data);
    assert!(a.clean(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_spool_quota_is_a_503_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let token = common::user("alice", "acme");
    let server = TestServer::start_with(config(&data_dir, Some(350_000)));
    let client = Client::new(&server);
    let big = api_file(&client, &token, data(200_000, 1)).await;
    let up = Upload::new("quota", data(200_000, 2), 100_000);
    assert_eq!(client.send(&up, 1, Via::Octet).await.status, 200);
    assert_full(&client, &up, 2, &data_dir).await;
    // Deleting a file frees its share of the quota at once.
    api_delete(&client, &token, &big).await;
    let done = client.send(&up, 2, Via::Octet).await;
    assert_eq!(done.json["completed_now"], true, "{}", done.json);
    assert_eq!(client.download(&done.file_id()).await, *up.data);

    // Full again; a restart with a larger quota lets the upload finish.
    let up = Upload::new("quota-2", data(200_000, 3), 100_000);
    assert_eq!(client.send(&up, 1, Via::Octet).await.status, 200);
    assert_full(&client, &up, 2, &data_dir).await;
    server.stop();
    let server = TestServer::start_with(config(&data_dir, Some(350_000)));
    let client = Client::new(&server);
    assert_full(&client, &up, 2, &data_dir).await;
    server.stop();
    let server = TestServer::start_with(config(&data_dir, Some(1_000_000)));
    let client = Client::new(&server);
    let done = client.send(&up, 2, Via::Octet).await;
    assert_eq!(done.json["completed_now"], true, "{}", done.json);
    assert_eq!(client.download(&done.file_id()).await, *up.data);
}

/// A single-request upload counts in the quota like a chunked one (it used not to, until a
/// restart recounted the spool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_request_upload_counts_in_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let token = common::user("alice", "acme");
    // Room for one 8 MiB piece of a single-request upload (what it reserves while writing) and
    // a little more; not for 200 kB more plus an 8.4 MB chunk.
    let quota = (8 << 20) + 16 + 150_000;
    let server = TestServer::start_with(config(&data_dir, Some(quota)));
    let client = Client::new(&server);
    let r = api_classic(&client, &token, data(200_000, 6)).await;
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let up = Upload::new("after-classic", data(8_400_000, 7), 8_400_000);
    assert_full(&client, &up, 1, &data_dir).await;
    api_delete(&client, &token, &id).await;
    let done = client.send(&up, 1, Via::Octet).await;
    assert_eq!(done.json["completed_now"], true, "{}", done.json);
}

/// Unmounts on drop, even when the test fails.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Mount(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_enospc_is_a_503_and_the_upload_finishes_after_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // The spool alone on a 1 MiB filesystem; the index stays on the real disk.
    let _mount = match Mount::tmpfs(&data_dir.join("spool"), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!(
                "SKIPPED: no real ENOSPC test, a tmpfs cannot be mounted here ({why}); \
                 the quota test covers the same path"
            );
            return;
        }
    };
    let token = common::user("alice", "acme");
    let server = TestServer::start_with(config(&data_dir, None));
    let client = Client::new(&server);
    let big = api_file(&client, &token, data(600_000, 4)).await;
    let up = Upload::new("enospc", data(600_000, 5), 300_000);
    assert_eq!(client.send(&up, 1, Via::Octet).await.status, 200);
    // No quota: the filesystem itself refuses the write half-way through the chunk.
    assert_full(&client, &up, 2, &data_dir).await;
    let st = client.status("enospc").await;
    assert_eq!(st.json["received"], serde_json::json!([1]));
    api_delete(&client, &token, &big).await;
    let done = client.send(&up, 2, Via::Octet).await;
    assert_eq!(done.json["completed_now"], true, "{}", done.json);
    assert_eq!(client.download(&done.file_id()).await, *up.data);
    drop(server);
}

/// The whole data directory, index included, on a 1 MiB filesystem filled with small Files API
/// uploads: whatever runs out first (a chunk file, the index's WAL), every answer is a 200 or a
/// 503, what was acknowledged stays whole, and once the filesystem is grown the refused chunk
/// goes in and deletes work. (While the index itself has no room, a delete is refused with 503
/// too: it needs to write to the index.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_under_the_index_too_is_a_503_never_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let _mount = match Mount::tmpfs(&data_dir, "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED: a tmpfs cannot be mounted here ({why})");
            return;
        }
    };
    let token = common::user("alice", "acme");
    let server = TestServer::start_with(config(&data_dir, None));
    let client = Client::new(&server);
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut refused: Option<(String, Vec<u8>)> = None;
    let mut full = 0;
    for i in 0..1000u64 {
        let bytes = data(3_000, i);
        let create = client
            .create_file(&token, &format!("filename=f{i}.bin"))
            .await;
        let (s, json) = (create.status, create.json);
        let id = match s {
            200 => json["resource"]["id"].as_str().unwrap().to_string(),
            503 => {
                assert_eq!(json["error"], "disk_full", "{json}");
                full += 1;
                if full == 5 {
                    break;
                }
                continue;
            }
            _ => panic!("create {i}: {s} {json}"),
        };
        let up = Upload::new("small", bytes.clone(), 3_000);
        let r = api_octet(&client, &token, &id, &up, 1).await;
        let (retry, json) = (r.headers.contains_key("retry-after"), r.json);
        match r.status {
            200 => stored.push((id, bytes)),
            503 => {
                assert!(retry, "{json}");
                assert_eq!(json["error"], "disk_full", "{json}");
                refused.get_or_insert((id, bytes));
                full += 1;
                if full == 5 {
                    break;
                }
            }
            _ => panic!("chunk {i}: {s} {json}"),
        }
    }
    assert!(full > 0, "the filesystem never filled");
    eprintln!(
        "{} files stored before the filesystem was full",
        stored.len()
    );
    for (id, bytes) in stored.iter().step_by(7) {
        let r = client
            .http
            .get(format!("{}{API}/{id}/download", client.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
    // The operator grows the filesystem; the refused chunk goes in, deletes work.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=8m"])
        .arg(&data_dir)
        .status()
        .unwrap();
    assert!(grown.success());
    if let Some((id, bytes)) = refused {
        let up = Upload::new("small", bytes, 3_000);
        assert_eq!(api_octet(&client, &token, &id, &up, 1).await.status, 200);
    }
    for (id, _) in stored.iter().take(10) {
        api_delete(&client, &token, id).await;
    }
    assert!(
        !api_file(&client, &token, data(3_000, 9999))
            .await
            .is_empty()
    );
    drop(server);
    let a = audit(&data_dir);
    assert!(a.clean(), "{a:?}");
}
