//! What is on disk: the format doc in src/crypto.rs is enough to decrypt the spool with the
//! `openssl` command line; no plaintext is anywhere under the data directory; client strings
//! never become paths; and a wrong or world-readable key file is refused.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chunkd::crypto::hex;
use common::*;
use serde_json::json;

const SEG: usize = 16 * 1024;

fn unhex(s: &str) -> Vec<u8> {
    assert!(
        s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "not hex: {s:?}"
    );
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Runs `openssl args...` with `input` on stdin and returns its stdout, asserting success.
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl command runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `openssl <first> | openssl <second>` with `input` on the first one's stdin.
fn openssl_pipe(first: &[&str], second: &[&str], input: &[u8]) -> Vec<u8> {
    let mut a = Command::new("openssl")
        .args(first)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = Command::new("openssl")
        .args(second)
        .stdin(Stdio::from(a.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = a.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out_b = b.wait_with_output().unwrap();
    let out_a = a.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out_a.status.success(),
        "openssl {first:?}: {}",
        String::from_utf8_lossy(&out_a.stderr)
    );
    assert!(
        out_b.status.success(),
        "openssl {second:?}: {}",
        String::from_utf8_lossy(&out_b.stderr)
    );
    out_b.stdout
}

/// One AES-256 block encryption by `openssl enc -aes-256-ecb -nopad`.
fn ecb(key: &[u8], block: &[u8]) -> Vec<u8> {
    assert_eq!(block.len(), 16);
    let out = openssl(&["enc", "-aes-256-ecb", "-nopad", "-K", &hex(key)], block);
    assert_eq!(out.len(), 16);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_decrypts_the_spool_from_the_format_doc_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    let files = [
        // Chunks of 5,000 and 7,345 bytes: one segment each.
        Upload::new("small", data(12_345, 1), 5_000),
        // Chunks of 40,003 and 59,997 bytes: 3 and 4 segments, the last ones short.
        Upload::new("large", data(100_000, 2), 40_003),
        // Chunks of exactly one segment: the padding is a segment of its own (16 bytes).
        Upload::new("exact", data(3 * SEG, 3), SEG),
    ];
    for up in &files {
        let id = client.upload_all(up).await;
        assert!(client.download(&id).await == *up.data);
    }
    drop(client);
    server.stop();

    // The global key file: 96 hex digits, Kg then IVg.
    let key_text = std::fs::read_to_string(data_dir.join("chunkd.key")).unwrap();
    let key_hex = key_text.trim_end_matches('\n');
    assert_eq!(key_hex.len(), 96);
    let raw = unhex(key_hex);
    let (kg, ivg) = (&raw[..32], &raw[32..]);

    let db = rusqlite::Connection::open(data_dir.join("index.sqlite")).unwrap();
    let mut expected_files = HashSet::new();
    for up in &files {
        let (upload_id, blob): (String, Vec<u8>) = db
            .query_row(
                "SELECT id, keys FROM uploads WHERE identifier = ?1",
                [&up.identifier],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        // W = wIV || AES-256-CBC(Kg, wIV, Kf || IVf), no padding.
        assert_eq!(blob.len(), 64);
        let unwrapped = openssl(
            &[
                "enc",
                "-d",
                "-aes-256-cbc",
                "-nopad",
                "-K",
                &hex(kg),
                "-iv",
                &hex(&blob[..16]),
            ],
            &blob[16..],
        );
        assert_eq!(unwrapped.len(), 48);
        let (kf, ivf) = (&unwrapped[..32], &unwrapped[32..]);

        let mut st = db
            .prepare(
                "SELECT number, len, nonce, pos FROM chunks WHERE upload_id = ?1 ORDER BY number",
            )
            .unwrap();
        let chunks: Vec<(u64, u64, u64, u64)> = st
            .query_map([&upload_id], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(chunks.len(), up.total_chunks());

        let mut whole = Vec::new();
        // spool/<upload_id>/data; chunk n's L - L % 16 + 16 sealed bytes from its `pos`.
        let path = data_dir.join("spool").join(&upload_id).join("data");
        let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        expected_files.insert(path);
        for (n, len, nonce, pos) in chunks {
            let plain = up.chunk(n as usize);
            assert_eq!(len as usize, plain.len());
            let sealed = &file[pos as usize..(pos + len - len % 16 + 16) as usize];
            let segments = sealed.len().div_ceil(SEG);
            for (s, seg) in sealed.chunks(SEG).enumerate() {
                // T = nonce (8 BE) || n (4 BE) || s (4 BE)
                let mut t = nonce.to_be_bytes().to_vec();
                t.extend_from_slice(&(n as u32).to_be_bytes());
                t.extend_from_slice(&(s as u32).to_be_bytes());
                let inner_iv = ecb(kf, &xor(ivf, &t));
                let outer_iv = ecb(kg, &xor(&xor(ivg, ivf), &t));
                let last = s + 1 == segments;
                let outer = [
                    "enc",
                    "-d",
                    "-aes-256-cbc",
                    "-nopad",
                    "-K",
                    &hex(kg),
                    "-iv",
                    &hex(&outer_iv),
                ];
                let kf_hex = hex(kf);
                let iv_hex = hex(&inner_iv);
                let mut inner = vec!["enc", "-d", "-aes-256-cbc", "-K", &kf_hex, "-iv", &iv_hex];
                if !last {
                    // Only the chunk's last segment carries the inner padding.
                    inner.insert(3, "-nopad");
                }
                let out = openssl_pipe(&outer, &inner, seg);
                let from = s * SEG;
                let to = if last { plain.len() } else { from + SEG };
                assert_eq!(
                    out.len(),
                    to - from,
                    "{} chunk {n} segment {s}",
                    up.identifier
                );
                assert!(
                    out == plain[from..to],
                    "{} chunk {n} segment {s} differs",
                    up.identifier
                );
                whole.extend_from_slice(&out);
            }
        }
        assert!(
            whole == *up.data,
            "{}: the decrypted file differs",
            up.identifier
        );
    }
    // And those are all the spool files: nothing the doc does not describe.
    let actual: HashSet<PathBuf> = spool_files(&data_dir).into_iter().collect();
    assert_eq!(actual, expected_files);
}

/// Test data made of a recognisable ASCII marker between random runs.
const MARKER: &[u8] = b"<<CHUNKD-PLAINTEXT-MARKER: if you can read this at rest, it leaked>>";

fn marked_data(len: usize) -> Vec<u8> {
    let noise = data(len, 99);
    let mut out = Vec::with_capacity(len + MARKER.len());
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(MARKER);
        let run = 1 + (noise[i % len] as usize) % 200;
        out.extend_from_slice(&noise[i..(i + run).min(len)]);
        i = (i + run) % len;
    }
    out.truncate(len);
    out
}

/// Every file under `data` that holds the marker or a 32-byte window of `plain` (windows taken
/// at multiples of 97).
fn leaks(data: &Path, plain: &[u8]) -> Vec<String> {
    let windows: HashSet<&[u8]> = (0..=plain.len() - 32)
        .step_by(97)
        .map(|i| &plain[i..i + 32])
        .collect();
    let mut found = Vec::new();
    for f in files_under(data) {
        let bytes = match std::fs::read(&f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // a -shm just removed
            Err(e) => panic!("{}: {e}", f.display()),
        };
        if bytes.windows(MARKER.len()).any(|w| w == MARKER) {
            found.push(format!("{}: the marker", f.display()));
        }
        if let Some(at) = bytes.windows(32).position(|w| windows.contains(w)) {
            found.push(format!("{}: plaintext at offset {at}", f.display()));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn no_plaintext_anywhere_under_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let plain = marked_data(300_000);
    assert!(plain.windows(MARKER.len()).filter(|w| *w == MARKER).count() > 1_000);
    // The scanner finds what it looks for.
    let probe = tempfile::tempdir().unwrap();
    std::fs::write(probe.path().join("x"), &plain[150_000..150_100]).unwrap();
    assert!(!leaks(probe.path(), &plain).is_empty());

    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    let up = Upload::new("at-rest", plain.clone(), 70_001);
    assert_eq!(up.total_chunks(), 4);
    let id = client.upload_all(&up).await;
    assert!(client.download(&id).await == plain);
    // While the server runs (the WAL is live) ...
    assert_eq!(leaks(&data_dir, &plain), Vec::<String>::new());
    drop(client);
    server.stop();
    // ... and once it has stopped.
    let all = files_under(&data_dir);
    assert!(all.len() >= 3, "{all:?}"); // key, index, the data file of 4 chunks
    assert_eq!(spool_files(&data_dir).len(), 1);
    assert_eq!(leaks(&data_dir, &plain), Vec::<String>::new());
}

/// Every path under `data`, relative, with whether it is a directory. Symlinks are refused.
fn tree(data: &Path) -> Vec<(Vec<String>, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![data.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            assert!(!meta.file_type().is_symlink(), "a symlink: {}", p.display());
            let rel: Vec<String> = p
                .strip_prefix(data)
                .unwrap()
                .components()
                .map(|c| c.as_os_str().to_str().expect("UTF-8 name").to_string())
                .collect();
            if meta.is_dir() {
                stack.push(p);
            }
            out.push((rel, meta.is_dir()));
        }
    }
    out.sort();
    out
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks that every path under `data` is one chunkd itself names; returns the number of
/// upload directories and data files.
fn check_layout(data: &Path) -> (usize, usize) {
    let (mut dirs, mut files) = (0, 0);
    for (rel, is_dir) in tree(data) {
        let parts: Vec<&str> = rel.iter().map(String::as_str).collect();
        let ok = match parts.as_slice() {
            ["chunkd.key" | "jwt.secret" | "chunkd.lock"] => !is_dir,
            ["index.sqlite" | "index.sqlite-wal" | "index.sqlite-shm" | "index.sqlite-journal"] => {
                !is_dir
            }
            ["spool"] => is_dir,
            ["spool", u] => {
                dirs += 1;
                is_dir && is_hex(u, 32)
            }
            ["spool", u, "data"] => {
                files += 1;
                !is_dir && is_hex(u, 32)
            }
            _ => false,
        };
        assert!(
            ok,
            "unexpected path under the data dir: {rel:?} (dir: {is_dir})"
        );
    }
    (dirs, files)
}

/// Sends chunk `n` of `up` with `relative_path` as its relative path (raw body).
async fn send_with_path(client: &Client, up: &Upload, n: usize, relative_path: &str) -> Reply {
    let params: Vec<(String, String)> = up
        .params(n)
        .into_iter()
        .map(|(k, v)| {
            if k.ends_with("RelativePath") {
                (k, relative_path.to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    let query = serde_urlencoded::to_string(&params).unwrap();
    let resp = client
        .http
        .post(format!("{}/upload?{query}", client.base))
        .header("content-type", "application/octet-stream")
        .body(up.chunk(n).to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        json,
        headers,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_strings_never_become_paths() {
    let outer = tempfile::tempdir().unwrap();
    let data_dir = outer.path().join("data");
    let targets = ["/tmp/evil", "/tmp/b", "/tmp/x", "/b"];
    let existed: Vec<bool> = targets.iter().map(|t| Path::new(t).exists()).collect();

    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    let long_id = "i".repeat(1000);
    let long_name = format!("{}.bin", "n".repeat(1020)); // 1024 bytes: the longest accepted
    let long_path = format!("{}x", "../".repeat(1300)); // 3901 bytes
    let cases: Vec<(String, String, String)> = [
        (
            "../../../../tmp/evil",
            "../../../../tmp/evil",
            "../../../../tmp/evil",
        ),
        ("/etc/passwd", "/etc/passwd", "/etc/passwd"),
        ("..\\..\\x", "..\\..\\x", "..\\..\\..\\..\\tmp\\x"),
        ("a/../../b", "a/../../b", "../../../../../../b"),
        (long_id.as_str(), long_name.as_str(), long_path.as_str()),
        ("日本語/../../ファイル", "résumé/../../x.pdf", "ü/../../ö"),
        (".", ".", "."),
        ("..", "..", ".."),
        ("spool", "index.sqlite", "chunkd.key"),
        ("spool/../chunkd.key", "../chunkd.key", "../../chunkd.key"),
        ("~/x", "$HOME/x", "`touch /tmp/evil`"),
        ("%2e%2e%2f%2e%2e%2f", "%2e%2e%2fx", "%2e%2e/%2e%2e"),
        ("nul", "CON", "COM1"),
        ("*", "?", "a\"b;c'd"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    for (i, (identifier, filename, relative_path)) in cases.iter().enumerate() {
        let mut up = Upload::new(identifier, data(2_500, i as u64), 1_000);
        up.filename = filename.clone();
        let mut last = None;
        for n in 1..=up.total_chunks() {
            let r = send_with_path(&client, &up, n, relative_path).await;
            assert_eq!(r.status, 200, "{identifier:?} chunk {n}: {:?}", r.json);
            last = Some(r);
        }
        let last = last.unwrap();
        assert_eq!(last.json["complete"], json!(true));
        assert_eq!(last.json["identifier"], json!(identifier));
        let id = last.json["file_id"].as_str().unwrap();
        assert!(client.download(id).await == *up.data, "{identifier:?}");
        // Kept as data, exactly as sent.
        let s = client.status(identifier).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.json["identifier"], json!(identifier));
        assert_eq!(s.json["filename"], json!(filename));
    }
    let db = rusqlite::Connection::open(data_dir.join("index.sqlite")).unwrap();
    for (identifier, filename, relative_path) in &cases {
        let (f, rp): (String, String) = db
            .query_row(
                "SELECT f.name, f.relative_path FROM uploads u JOIN files f ON f.id = u.file_id \
                 WHERE u.identifier = ?1",
                [identifier],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((&f, &rp), (filename, relative_path));
    }
    drop(db);

    assert_eq!(check_layout(&data_dir), (cases.len(), cases.len()));
    drop(client);
    server.stop();
    assert_eq!(check_layout(&data_dir), (cases.len(), cases.len()));
    // Nothing appeared beside the data directory, nor where the strings point.
    let beside: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("data")]);
    for (t, before) in targets.iter().zip(existed) {
        assert_eq!(Path::new(t).exists(), before, "{t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_and_long_names_are_refused_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    let before = tree(&data_dir);
    let count = || -> i64 {
        let db = rusqlite::Connection::open(data_dir.join("index.sqlite")).unwrap();
        db.query_row(
            "SELECT (SELECT count(*) FROM uploads) + (SELECT count(*) FROM files)",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count(), 0);

    // Identifiers with NUL, LF, ESC (sent as %00, %0A, %1B), CR, TAB, DEL.
    for bad in [
        "a\0b", "a\nb", "a\u{1b}b", "\r", "a\tb", "a\u{7f}", "\u{85}",
    ] {
        let mut up = Upload::new(bad, data(100, 1), 1000);
        up.filename = "x.bin".into();
        assert!(up.query(1).contains(
            &format!("%{:02X}", bad.bytes().find(|b| b.is_ascii_control() || *b >= 0x80).unwrap())
        ));
        for via in [Via::Octet, Via::MultipartForm, Via::MultipartBoth] {
            let r = client.send(&up, 1, via).await;
            assert_eq!(r.status, 400, "{bad:?} via {via:?}");
            assert_eq!(
                r.json,
                json!({"error": "invalid_parameter",
                       "message": "invalid parameter `resumableIdentifier`: contains control characters"}),
                "{bad:?} via {via:?}"
            );
        }
        let p = client.probe(&up, 1).await;
        assert_eq!(p.status, 400);
        assert_eq!(p.json["error"], json!("invalid_parameter"));
    }

    // Over the limits by one byte (1024 for identifiers and names, 4096 for relative paths);
    // counted in bytes, so 513 two-byte characters are too many.
    let over: Vec<(String, String, Option<String>, &str)> = vec![
        (
            "i".repeat(1025),
            "x.bin".into(),
            None,
            "resumableIdentifier",
        ),
        (
            "long-name".into(),
            "n".repeat(1025),
            None,
            "resumableFilename",
        ),
        (
            "long-name-2".into(),
            "é".repeat(513),
            None,
            "resumableFilename",
        ),
        (
            "long-path".into(),
            "x.bin".into(),
            Some("p".repeat(4097)),
            "resumableRelativePath",
        ),
    ];
    for (identifier, filename, relative_path, param) in &over {
        let mut up = Upload::new(identifier, data(100, 1), 1000);
        up.filename = filename.clone();
        let r = match relative_path {
            Some(rp) => send_with_path(&client, &up, 1, rp).await,
            None => client.send(&up, 1, Via::Octet).await,
        };
        assert_eq!(r.status, 400, "{param}");
        let limit = if *param == "resumableRelativePath" {
            4096
        } else {
            1024
        };
        assert_eq!(
            r.json,
            json!({"error": "invalid_parameter",
                   "message": format!("invalid parameter `{param}`: longer than {limit} bytes")})
        );
    }

    // Nothing was created: the same paths, no row.
    assert_eq!(tree(&data_dir), before);
    assert_eq!(count(), 0);
    assert!(spool_files(&data_dir).is_empty());

    // The limits themselves are accepted.
    let mut up = Upload::new(&"i".repeat(1024), data(100, 2), 1000);
    up.filename = "é".repeat(512);
    let r = send_with_path(&client, &up, 1, &"p".repeat(4096)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(client.download(r.json["file_id"].as_str().unwrap()).await == *up.data);
    assert_eq!(count(), 2);
}

fn open_error(data: &Path) -> String {
    match chunkd::App::open(chunkd::Config::for_data_dir(data)) {
        Ok(_) => panic!("chunkd opened {}", data.display()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_different_key_or_an_open_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let key_path = data_dir.join("chunkd.key");
    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    let up = Upload::new("keyed", data(5_000, 4), 2_000);
    let id = client.upload_all(&up).await;
    drop(client);
    server.stop();
    let original = std::fs::read(&key_path).unwrap();
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Another valid key, mode 0600.
    let other = format!("{}\n", hex(&data(48, 12345)));
    assert_ne!(other.as_bytes(), &original[..]);
    std::fs::write(&key_path, &other).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let msg = open_error(&data_dir);
    assert!(msg.contains("key"), "{msg}");
    assert!(
        msg.contains("is not the key this data directory was created with"),
        "{msg}"
    );
    assert!(msg.contains(&key_path.display().to_string()), "{msg}");
    // The refusal changed nothing: the index still expects the original key.
    assert_eq!(open_error(&data_dir), msg);

    // The right key, readable by others.
    std::fs::write(&key_path, &original).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).unwrap();
        let msg = open_error(&data_dir);
        assert!(msg.contains("chmod 600"), "{mode:o}: {msg}");
        assert!(msg.contains(&format!("mode {mode:04o}")), "{mode:o}: {msg}");
    }

    // Put right, everything is readable again.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = TestServer::start(&data_dir);
    let client = Client::new(&server);
    assert!(client.download(&id).await == *up.data);
}
