//! `chunkd verify` on real data directories written by a real server: clean, a damaged complete
//! file (reported, never changed), a lost chunk and an orphan directory (repaired, after which
//! the upload finishes), a wrong key and a live server (refused).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chunkd::config::Durability;
use chunkd::store::Index;
use common::*;

fn verify(data: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chunkd"))
        .arg("verify")
        .arg("--data")
        .arg(data)
        .args(extra)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Where chunk `n` of the upload under `identifier` (anonymous scope) is: its upload's data
/// file, and its region's start.
fn chunk_region(data: &Path, identifier: &str, n: u64) -> (PathBuf, usize) {
    let index = Index::open(&data.join("index.sqlite"), Durability::Safe).unwrap();
    let row = index.find("", identifier).unwrap().expect("the upload");
    let c = index.chunk(&row.id, n).unwrap().expect("the chunk");
    let path = data.join("spool").join(&row.id).join("data");
    (path, c.pos.expect("a chunk in a data file") as usize)
}

/// A data directory with one complete file and one upload missing its chunk 2.
async fn populate(data: &Path) -> (Upload, Upload, String) {
    let server = TestServer::start(data);
    let client = Client::new(&server);
    let done = Upload::new("done", data_bytes(250_000, 1), 100_000);
    let id = client.upload_all(&done).await;
    let half = Upload::new("half", data_bytes(400_000, 2), 100_000);
    client.upload_in_order(&half, &[1, 3, 4], Via::Octet).await;
    server.stop();
    (done, half, id)
}

fn data_bytes(len: usize, seed: u64) -> Vec<u8> {
    common::data(len, seed)
}

fn exit(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_directory_passes() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let o = verify(dir.path(), &[]);
    assert_eq!(
        exit(&o),
        0,
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "only the summary: {out}");
    assert!(
        out.contains("1 complete files, 2 uploads, 5 chunks, 0 thumbnails checked; 0 problems"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_complete_file_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, file_id) = populate(dir.path()).await;
    let (path, pos) = chunk_region(dir.path(), "done", 2);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[pos + 70_000] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    for repair in [false, true] {
        let o = verify(dir.path(), if repair { &["--repair"] } else { &[] });
        assert_eq!(exit(&o), 1, "{}", stdout(&o));
        let out = stdout(&o);
        let problems: Vec<&str> = out.lines().filter(|l| !l.starts_with("chunkd")).collect();
        assert_eq!(problems.len(), 1, "{out}");
        assert!(
            problems[0].starts_with(&format!("damaged complete file {file_id}")),
            "{out}"
        );
        assert!(problems[0].contains("fails its hash"), "{out}");
        assert!(!problems[0].contains("repaired"), "{out}");
        assert!(out.contains("1 problems, 0 repaired, 1 remaining"), "{out}");
        // Never changed, not even by --repair.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    // A data file cut short inside the chunk is caught the same way.
    std::fs::write(&path, &bytes[..pos + 1000]).unwrap();
    let o = verify(dir.path(), &[]);
    assert_eq!(exit(&o), 1);
    assert!(stdout(&o).contains("ends"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_chunks_and_orphans_are_repaired_and_the_upload_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (done, half, file_id) = populate(dir.path()).await;
    // Chunk 3 of the incomplete upload is lost, chunk 4 damaged; a directory no row owns, and
    // a stray file in the upload's own directory.
    // (Lost: its region reads as zeros, as after a write the disk never made.)
    let (path, lost) = chunk_region(dir.path(), "half", 3);
    let (_, damaged) = chunk_region(dir.path(), "half", 4);
    let mut b = std::fs::read(&path).unwrap();
    b[lost..lost + 100_016].fill(0);
    b[damaged + 5] ^= 0x80;
    std::fs::write(&path, &b).unwrap();
    let orphan = dir
        .path()
        .join("spool")
        .join("0123456789abcdef0123456789abcdef");
    std::fs::create_dir(&orphan).unwrap();
    std::fs::write(orphan.join("1.0000000000000001"), [0u8; 32]).unwrap();
    let stray = path.with_file_name("2.00000000000000ff");
    std::fs::write(&stray, [0u8; 48]).unwrap();

    let o = verify(dir.path(), &[]);
    assert_eq!(exit(&o), 1);
    let out = stdout(&o);
    assert!(out.contains("chunk 3 of incomplete upload"), "{out}");
    assert!(out.contains("chunk 4 of incomplete upload"), "{out}");
    assert!(out.contains("spool directory no upload owns"), "{out}");
    assert!(out.contains("spool file no row owns"), "{out}");
    assert!(out.contains("4 problems, 0 repaired, 4 remaining"), "{out}");
    // Without --repair nothing changed.
    assert!(orphan.exists() && stray.exists());
    assert_eq!(std::fs::read(&path).unwrap(), b);

    let o = verify(dir.path(), &["--repair"]);
    assert_eq!(exit(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("4 problems, 4 repaired, 0 remaining"));
    assert!(!orphan.exists() && !stray.exists());
    let o = verify(dir.path(), &[]);
    assert_eq!(exit(&o), 0, "{}", stdout(&o));

    // The client learns what to send again, and the upload completes.
    let server = TestServer::start(dir.path());
    let client = Client::new(&server);
    let st = client.status("half").await;
    assert_eq!(st.json["received"], serde_json::json!([1]), "{:?}", st.json);
    let last = client.upload_in_order(&half, &[2, 3, 4], Via::Octet).await;
    assert_eq!(last.json["complete"], true);
    assert_eq!(client.download(&last.file_id()).await, *half.data);
    assert_eq!(client.download(&file_id).await, *done.data);
    server.stop();
    assert_eq!(exit(&verify(dir.path(), &[])), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_wrong_key_a_live_server_and_a_missing_index() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let other = dir.path().join("other.key");
    std::fs::write(&other, "ab".repeat(48)).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = verify(dir.path(), &["--key-file", other.to_str().unwrap()]);
    assert_eq!(exit(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is not the key this data directory was created with"),
        "{err}"
    );
    assert!(stdout(&o).is_empty());

    let server = TestServer::start(dir.path());
    let o = verify(dir.path(), &["--repair"]);
    assert_eq!(exit(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("another chunkd is using"));
    server.stop();
    assert_eq!(exit(&verify(dir.path(), &[])), 0);

    let empty = tempfile::tempdir().unwrap();
    let o = verify(empty.path(), &[]);
    assert_eq!(exit(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no index"));
    // And it created nothing there.
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_are_decrypted_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = chunkd::Config::for_data_dir(dir.path());
    config.auth.secret.value = Some(SECRET.into());
    let server = TestServer::start_with(config);
    let token = user("bob", "acme");
    let part = reqwest::multipart::Part::bytes(png(300, 200))
        .file_name("p.png")
        .mime_str("image/png")
        .unwrap();
    let resp = reqwest::Client::new()
        .post(server.url("/internal/services/files/v1/companies/acme/files?thumbnail_sync=1"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["resource"]["metadata"]["thumbnails_status"], "done");
    server.stop();

    let o = verify(dir.path(), &[]);
    assert_eq!(exit(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("1 thumbnails checked"),
        "{}",
        stdout(&o)
    );

    let thumb = spool_files(dir.path())
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("t0."))
        .expect("the thumbnail's file");
    let mut b = std::fs::read(&thumb).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x01;
    std::fs::write(&thumb, &b).unwrap();
    let o = verify(dir.path(), &["--repair"]);
    assert_eq!(exit(&o), 1, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("damaged thumbnail 0 of upload"),
        "{}",
        stdout(&o)
    );
    assert_eq!(std::fs::read(&thumb).unwrap(), b, "reported, not changed");
}
