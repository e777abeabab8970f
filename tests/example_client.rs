//! Runs the `upload` example, as a user would, against a real chunkd: the example is the
//! documentation of the client side of the protocol, so it must keep working.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// 3 MiB and a bit: twelve chunks of 256 KiB, the last one long (the default cutting rule).
const SIZE: usize = 3 * 1024 * 1024 + 12_345;
const CHUNK: usize = 256 * 1024;
const CHUNKS: usize = SIZE / CHUNK;
/// Longest a run of the example may take before the test calls it hung.
const DEADLINE: Duration = Duration::from_secs(120);

/// The example's binary, built by the cargo running this test: `cargo test --test
/// example_client` builds no examples, and a binary left from an earlier build would test old
/// code. It sits next to this test's own binary, in `target/[<triple>/]<profile>/examples`.
fn example() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>");
        let bin = profile_dir.join("examples").join("upload");
        if let Ok(cargo) = std::env::var("CARGO") {
            let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
            let mut cmd = Command::new(cargo);
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["build", "--quiet", "--example", "upload", "--target-dir"])
                .arg(target_dir);
            match profile_dir.file_name().unwrap().to_str().unwrap() {
                "debug" => {}
                "release" => {
                    cmd.arg("--release");
                }
                other => {
                    cmd.args(["--profile", other]);
                }
            }
            if let Some(triple_dir) = profile_dir.parent().filter(|d| *d != target_dir) {
                cmd.arg("--target").arg(triple_dir.file_name().unwrap());
            }
            let out = cmd.output().expect("cargo runs");
            assert!(
                out.status.success(),
                "building the upload example failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --example upload`",
            bin.display()
        );
        bin
    })
}

/// Runs the example to the end (or to [`DEADLINE`]) and returns what it printed.
fn upload(args: &[&str]) -> Output {
    let mut child = Command::new(example())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let start = Instant::now();
    // Its output is a few lines, far below a pipe's buffer: polling cannot deadlock.
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the example hung; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Checks a successful run and returns the file id from the URL it printed on stdout.
fn file_id(out: &Output, server: &TestServer) -> String {
    assert!(
        out.status.success(),
        "the example failed: {:?}\n{}",
        out.status,
        stderr(out)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let url = stdout
        .lines()
        .last()
        .expect("a download URL on stdout")
        .trim();
    let id = url
        .strip_prefix(&server.url("/files/"))
        .unwrap_or_else(|| panic!("`{url}` is not a download URL of {}", server.url("")));
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{url}"
    );
    id.to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn uploads_a_file_then_skips_every_chunk_on_a_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    let client = Client::new(&server);
    let rt = runtime();
    let bytes = data(SIZE, 7);
    let path = dir.path().join("sample data.bin");
    std::fs::write(&path, &bytes).unwrap();
    let url = server.url("");
    let args = [
        path.to_str().unwrap(),
        "--server",
        &url,
        "--chunk-size",
        "256KiB",
        "--concurrency",
        "3",
    ];

    let first = upload(&args);
    let id = file_id(&first, &server);
    assert_eq!(rt.block_on(client.download(&id)), bytes);
    // Resumable.js's default identifier, and its cutting rule.
    let status = rt.block_on(client.status(&format!("{SIZE}-sampledatabin")));
    assert_eq!(status.status, 200, "{:?}", status.json);
    assert_eq!(status.json["total_chunks"], CHUNKS);
    assert_eq!(status.json["chunk_size"], CHUNK);

    let second = upload(&args);
    assert_eq!(file_id(&second, &server), id);
    let err = stderr(&second);
    assert!(
        err.contains(&format!("skipped {CHUNKS} of {CHUNKS} chunks")),
        "{err}"
    );
}

#[test]
fn resumes_an_upload_another_client_started() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    let client = Client::new(&server);
    let rt = runtime();
    let bytes = data(SIZE, 8);
    let path = dir.path().join("resumed.bin");
    std::fs::write(&path, &bytes).unwrap();
    // A browser sent chunks 2 and 12 (the long last one) before going away.
    let mut up = Upload::new(&format!("{SIZE}-resumedbin"), bytes.clone(), CHUNK);
    up.filename = "resumed.bin".into();
    for n in [2, CHUNKS] {
        let r = rt.block_on(client.send(&up, n, Via::MultipartBoth));
        assert_eq!(r.status, 200, "{:?}", r.json);
    }

    let url = server.url("");
    let out = upload(&[
        path.to_str().unwrap(),
        "--server",
        &url,
        "--chunk-size",
        "256KiB",
        "--octet",
    ]);
    let id = file_id(&out, &server);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("skipped 2 of {CHUNKS} chunks")),
        "{err}"
    );
    // A fresh client: the first one's pooled connection sat idle while the example was built
    // and ran, and the server closes idle connections after its header timeout.
    let client = Client::new(&server);
    assert_eq!(rt.block_on(client.download(&id)), bytes);
}

#[test]
fn a_refused_chunk_is_fatal_and_the_server_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    // chunkd refuses control characters in a file name: a 400 that no retry can fix.
    let path = dir.path().join("tab\there.bin");
    std::fs::write(&path, b"some bytes").unwrap();
    let url = server.url("");
    let out = upload(&[path.to_str().unwrap(), "--server", &url]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(
        err.contains("400") && err.contains("contains control characters"),
        "{err}"
    );
    assert!(!err.contains("retry"), "a 4xx must not be retried: {err}");
}
