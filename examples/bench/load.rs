//! The load itself: uploads over the Resumable.js protocol (octet or multipart) and over tus
//! (for the peer), downloads, SHA-256 verification and GET probes, with K connections in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::client::{BodyMode, Conn};

/// Offset between two files' data in the shared pool: each file (and so each chunk of every
/// file) holds different bytes, so a chunk stored in the wrong place fails the final SHA-256.
const FILE_OFFSET: usize = 4099;

/// N files of S bytes cut in chunks of C, as Resumable.js cuts them.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub files: usize,
    pub size: u64,
    pub chunk: u64,
}

impl Plan {
    /// Chunks per file: `max(floor(S/C), 1)`, the last one holding the rest.
    pub fn total_chunks(&self) -> u64 {
        (self.size / self.chunk).max(1)
    }

    /// Bytes of chunk `n` (1-based).
    pub fn chunk_len(&self, n: u64) -> u64 {
        let t = self.total_chunks();
        if n < t {
            self.chunk
        } else {
            self.size - (t - 1) * self.chunk
        }
    }

    pub fn bytes(&self) -> u64 {
        self.files as u64 * self.size
    }

    /// Pool bytes the plan needs.
    pub fn pool_len(&self) -> usize {
        self.size as usize + self.files.saturating_sub(1) * FILE_OFFSET
    }

    /// File `f`'s bytes in the pool.
    pub fn file_range(&self, f: usize) -> std::ops::Range<usize> {
        let start = f * FILE_OFFSET;
        start..start + self.size as usize
    }
}

/// Pseudo-random bytes (xorshift64*), generated once and shared by every upload.
pub fn make_pool(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; len];
    let mut x = seed | 1;
    for c in v.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        c.copy_from_slice(&r[..c.len()]);
    }
    Bytes::from(v)
}

/// How chunks are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// A raw body, parameters in the query string.
    Octet,
    /// `multipart/form-data`, parameters as form fields before the file part (as Flow.js does).
    Multipart,
}

/// What one upload phase measured.
#[derive(Debug, Default)]
pub struct Upload {
    pub bytes: u64,
    pub secs: f64,
    /// Every chunk request's latency, in milliseconds, sorted.
    pub latencies: Vec<f64>,
    /// The latency of the chunk whose reply said `completed_now`, per file (chunkd only).
    pub completions: Vec<f64>,
    /// The `download_url` of every completed file, in file order (chunkd only).
    pub urls: Vec<String>,
}

impl Upload {
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }

    pub fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Job {
    file: usize,
    number: u64,
}

/// Uploads every file of `plan` from `pool` with `in_flight` connections; chunks are taken in
/// file order, as a page uploading several files does. `chunkd` says the server is chunkd, whose
/// replies are checked and mined for completions.
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    addr: SocketAddr,
    plan: Plan,
    pool: Bytes,
    in_flight: usize,
    wire: Wire,
    tag: &str,
    chunkd: bool,
    deadline: Duration,
) -> Result<Upload, String> {
    let t = plan.total_chunks();
    let jobs: Arc<Vec<Job>> = Arc::new(
        (0..plan.files)
            .flat_map(|file| (1..=t).map(move |number| Job { file, number }))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight.max(1) {
        let (jobs, next, pool, tag) = (jobs.clone(), next.clone(), pool.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut lat = Vec::new();
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else {
                    break;
                };
                let (head, body) = chunk_request(&plan, &pool, job, wire, &tag);
                let t0 = Instant::now();
                let resp = conn
                    .request(&head, &body, BodyMode::Keep)
                    .await
                    .map_err(|e| format!("chunk {} of file {}: {e}", job.number, job.file))?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                lat.push(ms);
                if resp.status != 200 {
                    return Err(format!(
                        "chunk {} of file {}: status {}: {}",
                        job.number,
                        job.file,
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    ));
                }
                if chunkd {
                    let v: serde_json::Value = serde_json::from_slice(&resp.body)
                        .map_err(|e| format!("reply is not JSON: {e}"))?;
                    if v["completed_now"] == serde_json::Value::Bool(true) {
                        let url = v["download_url"].as_str().unwrap_or_default().to_string();
                        done.push((job.file, ms, url));
                    }
                }
            }
            Ok::<_, String>((lat, done))
        }));
    }
    let mut out = Upload {
        bytes: plan.bytes(),
        ..Upload::default()
    };
    let mut done = Vec::new();
    for (lat, d) in join_workers(tasks, deadline, "upload").await? {
        out.latencies.extend(lat);
        done.extend(d);
    }
    out.secs = start.elapsed().as_secs_f64();
    out.latencies.sort_by(f64::total_cmp);
    if chunkd {
        if done.len() != plan.files {
            return Err(format!(
                "{} of {} files reported completed_now",
                done.len(),
                plan.files
            ));
        }
        done.sort_by_key(|d| d.0);
        out.completions = done.iter().map(|d| d.1).collect();
        out.urls = done.into_iter().map(|d| d.2).collect();
    }
    Ok(out)
}

fn chunk_request(
    plan: &Plan,
    pool: &Bytes,
    job: &Job,
    wire: Wire,
    tag: &str,
) -> (String, Vec<Bytes>) {
    let len = plan.chunk_len(job.number);
    let offset = plan.file_range(job.file).start + ((job.number - 1) * plan.chunk) as usize;
    let data = pool.slice(offset..offset + len as usize);
    let name = format!("{tag}-{}.bin", job.file);
    let id = format!("{}-{tag}-{}_bin", plan.size, job.file);
    let fields = [
        ("resumableChunkNumber", job.number.to_string()),
        ("resumableChunkSize", plan.chunk.to_string()),
        ("resumableCurrentChunkSize", len.to_string()),
        ("resumableTotalSize", plan.size.to_string()),
        ("resumableType", "application/octet-stream".to_string()),
        ("resumableIdentifier", id),
        ("resumableFilename", name.clone()),
        ("resumableRelativePath", name),
        ("resumableTotalChunks", plan.total_chunks().to_string()),
    ];
    match wire {
        Wire::Octet => {
            let query: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{k}={}", v.replace('/', "%2F")))
                .collect();
            let head = format!(
                "POST /upload?{} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\n",
                query.join("&")
            );
            (head, vec![data])
        }
        Wire::Multipart => {
            const BOUNDARY: &str = "----chunkdbench7MA4YWxkTrZu0gW";
            let mut pre = String::new();
            for (k, v) in &fields {
                pre.push_str(&format!(
                    "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                ));
            }
            pre.push_str(&format!(
                "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"blob\"\r\n\
                 content-type: application/octet-stream\r\n\r\n"
            ));
            let post = format!("\r\n--{BOUNDARY}--\r\n");
            let head = format!(
                "POST /upload HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: multipart/form-data; boundary={BOUNDARY}\r\n"
            );
            (head, vec![Bytes::from(pre), data, Bytes::from(post)])
        }
    }
}

/// Uploads every file of `plan` to a tus server (`POST {path}` creates, `PATCH` appends), the
/// same bytes in the same chunks as [`upload`]. tus appends in order, so the `in_flight`
/// connections each take a whole file at a time, one chunk after another. Every `PATCH` must
/// answer 204 with the new `Upload-Offset`. Returns the figures and each file's upload path.
pub async fn tus_upload(
    addr: SocketAddr,
    path: &str,
    plan: Plan,
    pool: Bytes,
    in_flight: usize,
    deadline: Duration,
) -> Result<(Upload, Vec<String>), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight.max(1) {
        let (next, pool, path) = (next.clone(), pool.clone(), path.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let (mut lat, mut files) = (Vec::new(), Vec::new());
            loop {
                let file = next.fetch_add(1, Ordering::Relaxed);
                if file >= plan.files {
                    break;
                }
                let head = format!(
                    "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ntus-resumable: 1.0.0\r\nupload-length: {}\r\n",
                    plan.size
                );
                let r = conn
                    .request(&head, &[], BodyMode::Keep)
                    .await
                    .map_err(|e| format!("creating file {file}: {e}"))?;
                let at = match (r.status, r.location.as_deref()) {
                    (201, Some(l)) => match l.split_once("://") {
                        // An absolute URL: keep its path.
                        Some((_, rest)) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
                        None => l.to_string(),
                    },
                    _ => return Err(format!("creating file {file}: status {}", r.status)),
                };
                let base = plan.file_range(file).start;
                for number in 1..=plan.total_chunks() {
                    let offset = (number - 1) * plan.chunk;
                    let len = plan.chunk_len(number);
                    let data = pool.slice(base + offset as usize..base + (offset + len) as usize);
                    let head = format!(
                        "PATCH {at} HTTP/1.1\r\nhost: 127.0.0.1\r\ntus-resumable: 1.0.0\r\nupload-offset: {offset}\r\ncontent-type: application/offset+octet-stream\r\n"
                    );
                    let t0 = Instant::now();
                    let r = conn
                        .request(&head, &[data], BodyMode::Keep)
                        .await
                        .map_err(|e| format!("chunk {number} of file {file}: {e}"))?;
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    if r.status != 204 || r.upload_offset != Some(offset + len) {
                        return Err(format!(
                            "chunk {number} of file {file}: status {}, upload-offset {:?}: {}",
                            r.status,
                            r.upload_offset,
                            String::from_utf8_lossy(&r.body)
                        ));
                    }
                }
                files.push((file, at));
            }
            Ok::<_, String>((lat, files))
        }));
    }
    let joined = join_workers(tasks, deadline, "upload").await?;
    let mut out = Upload {
        bytes: plan.bytes(),
        ..Upload::default()
    };
    let mut files = Vec::new();
    for (lat, f) in joined {
        out.latencies.extend(lat);
        files.extend(f);
    }
    out.secs = start.elapsed().as_secs_f64();
    out.latencies.sort_by(f64::total_cmp);
    files.sort();
    Ok((out, files.into_iter().map(|f| f.1).collect()))
}

/// GETs every path with `in_flight` connections. With `expect`, each body's SHA-256 must equal
/// the matching digest (verification); without, bodies are only counted (throughput).
/// Returns (bytes, seconds).
pub async fn download(
    addr: SocketAddr,
    paths: Vec<String>,
    expect: Option<Vec<[u8; 32]>>,
    in_flight: usize,
    deadline: Duration,
) -> Result<(u64, f64), String> {
    let paths = Arc::new(paths);
    let expect = Arc::new(expect);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight.max(1).min(paths.len()) {
        let (paths, expect, next) = (paths.clone(), expect.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = paths.get(i) else {
                    break;
                };
                let head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
                let mut h = Sha256::new();
                let mode = match &*expect {
                    Some(_) => BodyMode::Hash(&mut h),
                    None => BodyMode::Discard,
                };
                let resp = conn
                    .request(&head, &[], mode)
                    .await
                    .map_err(|e| format!("GET {path}: {e}"))?;
                if resp.status != 200 {
                    return Err(format!("GET {path}: status {}", resp.status));
                }
                bytes += resp.len;
                if let Some(digests) = &*expect
                    && h.finalize()[..] != digests[i][..]
                {
                    return Err(format!("GET {path}: the SHA-256 differs from the upload's"));
                }
            }
            Ok::<_, String>(bytes)
        }));
    }
    let bytes = join_workers(tasks, deadline, "download")
        .await?
        .into_iter()
        .sum();
    Ok((bytes, start.elapsed().as_secs_f64()))
}

/// Waits for every worker task of a phase, `deadline` for them all; a worker's error (or
/// panic) is the phase's.
async fn join_workers<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, String>>>,
    deadline: Duration,
    phase: &str,
) -> Result<Vec<T>, String> {
    let joined = tokio::time::timeout(deadline, futures_util::future::join_all(tasks))
        .await
        .map_err(|_| format!("the {phase} did not finish within {deadline:?}"))?;
    joined
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string())?)
        .collect()
}

/// One GET, for set-up checks; returns the status.
pub async fn get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    Conn::new(addr)
        .request(&head, &[], BodyMode::Keep)
        .await
        .map(|r| r.status)
        .map_err(|e| format!("GET {path}: {e}"))
}

/// Requests per second of keep-alive GETs of `path`, from `conns` connections for `secs`.
pub async fn probe_rate(
    addr: SocketAddr,
    path: &str,
    conns: usize,
    secs: f64,
) -> Result<f64, String> {
    let head: Arc<str> = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n").into();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns.max(1) {
        let head = head.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut n = 0u64;
            while Instant::now() < end {
                let r = conn
                    .request(&head, &[], BodyMode::Discard)
                    .await
                    .map_err(|e| e.to_string())?;
                if !(200..300).contains(&r.status) {
                    return Err(format!("probe status {}", r.status));
                }
                n += 1;
            }
            Ok::<_, String>(n)
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.map_err(|e| e.to_string())??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Requests per second from `wrk` (one thread), or `None` if wrk is missing or fails.
pub fn wrk_rate(addr: SocketAddr, path: &str, conns: usize, secs: f64) -> Option<f64> {
    let out = std::process::Command::new("wrk")
        .args(["-t1", &format!("-c{}", conns.max(1))])
        .arg(format!("-d{}s", secs.ceil().max(1.0) as u64))
        .arg(format!("http://{addr}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        eprintln!("wrk: non-2xx answers for {path}:\n{text}");
        return None;
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}
