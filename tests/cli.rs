//! The `chunkd` binary as an operator meets it: one line on start, a 0600 key file, clear
//! refusals, `--help`, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

fn chunkd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chunkd"))
}

#[test]
fn starts_with_one_line_creates_a_private_key_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = chunkd()
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("chunkd listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    let port: u16 = addr.parse().expect("the real port");
    assert_ne!(port, 0);
    // The port is really served.
    let resp = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(resp.is_ok());
    let key = data.join("chunkd.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 96);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "SIGTERM is a clean exit");
    // Nothing else went to stdout.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "");
}

#[test]
fn refuses_bad_key_files_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, "00".repeat(48)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = || {
        chunkd()
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--key-file")
            .arg(&key)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key, "0011").unwrap();
    let out = run();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("96 hex digits"));
}

#[test]
fn every_flag_is_explained_and_has_an_env_var() {
    let out = chunkd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--listen", "CHUNKD_LISTEN"),
        ("--data", "CHUNKD_DATA"),
        ("--key-file", "CHUNKD_KEY_FILE"),
        ("--upload-path", "CHUNKD_UPLOAD_PATH"),
        ("--max-file-size", "CHUNKD_MAX_FILE_SIZE"),
        ("--max-chunk-size", "CHUNKD_MAX_CHUNK_SIZE"),
        ("--durability", "CHUNKD_DURABILITY"),
        ("--cors-origin", "CHUNKD_CORS_ORIGINS"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing from --help"
        );
    }
    // Flags are read from the environment too.
    let out = chunkd()
        .arg("--help")
        .env("CHUNKD_UPLOAD_PATH", "nope")
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = chunkd().env("CHUNKD_UPLOAD_PATH", "nope").output().unwrap();
    assert!(
        !out.status.success(),
        "a bad upload path from the environment is refused"
    );
}
