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
