//! An upload survives a restart of chunkd: committed chunks are still present, the rest resumes.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn uploads_resume_after_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let up = Upload::new("restart", data(210_000, 11), 20_000);
    let t = up.total_chunks();
    let first_half: Vec<usize> = (1..=t).filter(|n| n % 2 == 0).collect();

    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    let r = client
        .upload_in_order(&up, &first_half, Via::MultipartBoth)
        .await;
    let id = r.file_id();
    server.stop();

    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    for n in 1..=t {
        let p = client.probe(&up, n).await;
        assert_eq!(
            p.status,
            if n % 2 == 0 { 200 } else { 204 },
            "probe {n} after restart"
        );
    }
    let st = client.status("restart").await;
    let received: Vec<u64> = serde_json::from_value(st.json["received"].clone()).unwrap();
    assert_eq!(
        received,
        first_half.iter().map(|&n| n as u64).collect::<Vec<_>>()
    );
    // The client sends only what is missing.
    let rest: Vec<usize> = (1..=t).filter(|n| n % 2 == 1).collect();
    let last = client.upload_in_order(&up, &rest, Via::Octet).await;
    assert_eq!(last.json["complete"], true);
    assert_eq!(last.json["file_id"], id.as_str());
    server.stop();

    // And the complete file is served after another restart.
    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    assert_eq!(client.download(&id).await, *up.data);
}

/// Turns every chunk of `data`'s data files into a file of its own with a row without `pos`:
/// the layout of chunkd before data files (`spool/<upload>/<n>.<nonce>`).
fn to_layout_without_data_files(data: &std::path::Path) -> usize {
    let db = rusqlite::Connection::open(data.join("index.sqlite")).unwrap();
    let rows: Vec<(String, i64, i64, i64, i64)> = db
        .prepare("SELECT upload_id, number, nonce, len, pos FROM chunks")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (upload, n, nonce, len, pos) in &rows {
        let dir = data.join("spool").join(upload);
        let file = std::fs::read(dir.join("data")).unwrap();
        let sealed = (len / 16 + 1) * 16;
        let region = &file[*pos as usize..(*pos + sealed) as usize];
        std::fs::write(dir.join(format!("{n}.{:016x}", *nonce as u64)), region).unwrap();
    }
    db.execute("UPDATE chunks SET pos = NULL", []).unwrap();
    for (upload, ..) in &rows {
        let _ = std::fs::remove_file(data.join("spool").join(upload).join("data"));
    }
    rows.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_stored_in_files_of_their_own_are_still_served_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let done = Upload::new("old-done", data(90_000, 21), 20_000);
    let half = Upload::new("old-half", data(90_000, 22), 20_000);
    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    let id = client.upload_all(&done).await;
    client.upload_in_order(&half, &[1, 3], Via::Octet).await;
    server.stop();
    assert_eq!(to_layout_without_data_files(&data_dir), 4 + 2);

    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    // The old chunks are neither swept nor forgotten at start: they are served as they are...
    assert_eq!(client.download(&id).await, *done.data);
    let range = client
        .http
        .get(format!("{}/files/{id}", client.base))
        .header("range", "bytes=39990-40010")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status().as_u16(), 206);
    assert!(range.bytes().await.unwrap()[..] == done.data[39_990..=40_010]);
    // ...and an upload half done in the old layout finishes in the new one.
    assert_eq!(client.probe(&half, 3).await.status, 200);
    let last = client.upload_in_order(&half, &[2, 4], Via::Octet).await;
    assert_eq!(last.json["complete"], true);
    assert_eq!(client.download(&last.file_id()).await, *half.data);
    server.stop();
    let a = common::binary::audit(&data_dir);
    assert!(a.clean(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_whose_bytes_never_reached_the_disk_is_asked_for_again() {
    // What a power loss in fast mode can leave: a region of the right size with no bytes in it
    // (its blocks were allocated, its data never written back), shown by a punched hole.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let up = Upload::new("power-loss", data(80_000, 31), 20_000);
    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    client.upload_in_order(&up, &[1, 2, 3], Via::Octet).await;
    server.stop();
    let db = rusqlite::Connection::open(data_dir.join("index.sqlite")).unwrap();
    let (upload, pos): (String, i64) = db
        .query_row(
            "SELECT upload_id, pos FROM chunks WHERE number = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let path = data_dir.join("spool").join(&upload).join("data");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let size = file.metadata().unwrap().len();
    use rustix::fs::{FallocateFlags, fallocate};
    let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    fallocate(&file, punch, pos as u64, 8192).unwrap();
    assert_eq!(
        file.metadata().unwrap().len(),
        size,
        "the size alone tells nothing"
    );

    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    assert_eq!(client.probe(&up, 1).await.status, 200);
    assert_eq!(
        client.probe(&up, 2).await.status,
        204,
        "chunk 2 is asked for again"
    );
    assert_eq!(client.probe(&up, 3).await.status, 200);
    let last = client.upload_in_order(&up, &[2, 4], Via::Octet).await;
    assert_eq!(last.json["complete"], true);
    assert_eq!(client.download(&last.file_id()).await, *up.data);
}
