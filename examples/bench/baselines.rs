//! Reference figures that need no server: chunkd's own cipher in memory, `openssl speed` and
//! `dd ... conv=fdatasync`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aes::Aes256;
use aes::cipher::{BlockModeEncrypt, KeyIvInit};
use chunkd::crypto::{self, FileCipher, FileKeys, GlobalKey, SEGMENT};

/// Plaintext sealed per call, as the upload path does (16 segments, 256 KiB: `BATCH` in
/// `src/upload.rs`).
const BATCH: usize = 16 * SEGMENT;
/// Buffer cycled through, so the figure is the cache-warm cipher cost, as on the server.
const BUFFER: usize = 1 << 20;

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`), if known.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bytes per second of `f`, run on `buf` in `piece`-sized calls until `time` has passed.
///
/// The time is the thread's own CPU time when the kernel tells it, so that other processes
/// competing for the cores (this machine is shared) do not count: the figure is per core.
fn rate(time: Duration, buf: &mut [u8], piece: usize, mut f: impl FnMut(u32, &mut [u8])) -> f64 {
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    let mut bytes = 0u64;
    let mut seg = 0u32;
    while start.elapsed() < time {
        for p in buf.chunks_mut(piece) {
            f(seg, p);
            seg = seg.wrapping_add((piece / SEGMENT).max(1) as u32);
            bytes += p.len() as u64;
        }
    }
    let secs = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => start.elapsed().as_secs_f64(),
    };
    bytes as f64 / secs
}

fn file_cipher() -> FileCipher {
    let mut raw = [0u8; 48];
    crypto::random_bytes(&mut raw);
    FileCipher::new(&GlobalKey::from_bytes(&raw), &FileKeys::generate())
}

/// Two-layer sealing through `chunkd::crypto`, one thread.
pub fn seal_rate(time: Duration) -> f64 {
    sealing(time, BUFFER, BATCH)
}

/// Bytes sealed per call by [`seal_small_rate`]: a small file, or the last batch of a chunk
/// that is not a whole number of batches (six whole segments and 1,696 bytes).
pub const SMALL: usize = 100_000;

/// Two-layer sealing through `chunkd::crypto`, one thread, [`SMALL`] bytes per call.
pub fn seal_small_rate(time: Duration) -> f64 {
    sealing(time, SMALL * 10, SMALL)
}

/// Two-layer sealing through `chunkd::crypto`, one thread, in `piece`-sized calls over a
/// buffer of `len` bytes.
fn sealing(time: Duration, len: usize, piece: usize) -> f64 {
    let fc = file_cipher();
    let mut buf = vec![7u8; len];
    rate(time, &mut buf, piece, |seg, p| {
        fc.seal_segments(1, 1, seg, std::hint::black_box(p))
    })
}

/// Two-layer sealing through `chunkd::crypto` on `threads` threads at once: the sum.
pub fn seal_rate_threads(time: Duration, threads: usize) -> f64 {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| seal_rate(time))).collect();
        hs.into_iter().map(|h| h.join().expect("no panic")).sum()
    })
}

/// Two-layer opening (decryption) through `chunkd::crypto`, one thread.
pub fn open_rate(time: Duration) -> f64 {
    let fc = file_cipher();
    let mut buf = vec![7u8; BUFFER];
    rate(time, &mut buf, BATCH, |seg, p| {
        fc.open_segments(1, 1, seg, std::hint::black_box(p))
    })
}

/// One serial CBC chain, one layer, through the `cbc` crate: the shape openssl measures.
pub fn cbc_one_chain_rate(time: Duration) -> f64 {
    let key = [1u8; 32];
    let iv = [2u8; 16];
    let mut buf = vec![7u8; BUFFER];
    rate(time, &mut buf, BUFFER, |_, p| {
        let (blocks, _) = aes::Block::slice_as_chunks_mut(p);
        cbc::Encryptor::<Aes256>::new(&key.into(), &iv.into()).encrypt_blocks(blocks);
        std::hint::black_box(p);
    })
}

/// `openssl speed -evp aes-256-cbc` on 16 KiB buffers (chunkd's segment size), in bytes per
/// second; `None` if openssl is missing or its output is not understood.
pub fn openssl_speed(seconds: u32, decrypt: bool) -> Option<f64> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "speed",
        "-evp",
        "aes-256-cbc",
        "-bytes",
        "16384",
        "-seconds",
    ])
    .arg(seconds.to_string());
    if decrypt {
        cmd.arg("-decrypt");
    }
    let out = cmd.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // e.g. "AES-256-CBC    1003061.25k": thousands of bytes per second.
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with("aes-256-cbc"))?;
    let v = line.split_whitespace().last()?;
    Some(v.trim_end_matches('k').parse::<f64>().ok()? * 1000.0)
}

/// `dd if=/dev/zero of=<dir>/dd.bin bs=1M count=<mib> conv=fdatasync`, timed as a whole, in
/// bytes per second. The file is removed afterwards.
pub fn dd_fdatasync(dir: &Path, mib: u64) -> Option<f64> {
    let path = dir.join("dd.bin");
    let start = Instant::now();
    let st = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=1M", &format!("count={mib}"), "conv=fdatasync"])
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    st.success().then(|| (mib << 20) as f64 / secs)
}
