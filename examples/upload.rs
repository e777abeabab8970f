//! A command-line client for the Resumable.js chunk protocol.
//!
//! chunkd is written for browsers, but a file is often on a server, in a script or too large
//! for a browser tab. This example uploads from the shell, and shows in one file everything a
//! client must do: cut the file the way Resumable.js does, resume with one status call, send the
//! missing chunks a few at a time, retry passing faults (503 and its kin, network errors) and
//! stop on final ones (4xx).
//!
//! ```text
//! cargo run --release --example upload -- --server http://127.0.0.1:8080 FILE \
//!     [--chunk-size 1MiB] [--concurrency 3] [--octet] [--identifier ID] [--upload-path /upload]
//! ```
//!
//! Run it again after an interruption: chunks the server already holds are skipped. Only the
//! download URL goes to stdout (so `url=$(cargo run ... )` works); everything else goes to stderr.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::fmt::Display;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::{StreamExt, stream};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, StatusCode, header};
use serde_json::Value;

/// Retries after the first attempt, for a passing fault.
const RETRIES: u32 = 5;
/// Longest wait a server's `Retry-After` may impose, so that a bad header cannot hang us.
const MAX_RETRY_AFTER: u64 = 60;
/// Longest wait between retries when the server gives no `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Bytes handed to the connection at a time: the progress bar moves by this much.
const PIECE: usize = 64 * 1024;
/// The type sent for every file: guessing better would need a MIME table, and chunkd only
/// stores it.
const MIME: &str = "application/octet-stream";

/// Upload a file to chunkd (or any Resumable.js server), resuming where an earlier run stopped.
#[derive(Parser, Debug)]
#[command(name = "upload")]
struct Args {
    /// Base URL of the server (http only: this client is built without TLS).
    #[arg(long, env = "CHUNKD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,

    /// The file to upload.
    file: PathBuf,

    /// Chunk size, such as 1MiB, 512KiB, 5MB or 1048576. A resumed upload must use the same.
    #[arg(long, default_value = "1MiB", value_parser = chunkd::config::parse_size)]
    chunk_size: u64,

    /// Chunks in flight at once; memory use is about this times the chunk size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,

    /// Send each chunk as a raw application/octet-stream body, parameters in the query only,
    /// instead of multipart as Resumable.js does.
    #[arg(long)]
    octet: bool,

    /// Upload identifier. Default, as Resumable.js: `<size>-<file name without characters
    /// outside [0-9a-zA-Z_-]>`, so that a second run finds the first one's chunks.
    #[arg(long)]
    identifier: Option<String>,

    /// Path of the chunk endpoint on the server; its status call is `<path>/status`.
    #[arg(long, default_value = "/upload")]
    upload_path: String,
}

/// A fatal error, already worded for the user.
type Fatal = String;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(url) => {
            println!("{url}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upload: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<String, Fatal> {
    let server = args.server.trim_end_matches('/').to_string();
    let parsed = reqwest::Url::parse(&server).map_err(|e| format!("--server {server}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!(
            "--server {server}: only http:// is supported (no TLS in this build)"
        ));
    }
    if !args.upload_path.starts_with('/') {
        return Err(format!(
            "--upload-path {}: must start with /",
            args.upload_path
        ));
    }
    let file = File::open(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", args.file.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", args.file.display()));
    }
    let filename = args
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{}: no file name", args.file.display()))?;
    let cut = Cut::new(meta.len(), args.chunk_size);
    let identifier = match args.identifier {
        Some(id) if id.is_empty() => return Err("--identifier must not be empty".into()),
        Some(id) => id,
        None => default_identifier(cut.size, &filename),
    };

    // Hidden until the status call has told us where the bar starts; notes go around it.
    let pb = ProgressBar::with_draw_target(Some(cut.size), ProgressDrawTarget::hidden());
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Duration::from_secs(30))
        // A redirected POST would lose its body; a redirect here is a misconfiguration to show.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", chain(&e)))?;
    let up = Arc::new(Uploader {
        http,
        endpoint: format!("{server}{}", args.upload_path),
        server,
        file: Arc::new(file),
        path: args.file.clone(),
        cut,
        identifier,
        filename,
        octet: args.octet,
        pb: pb.clone(),
    });

    eprintln!(
        "{}: {} in {} chunk(s) of {}, identifier {}",
        up.filename,
        HumanBytes(cut.size),
        cut.total,
        HumanBytes(cut.chunk),
        up.identifier
    );
    let status = up.status().await?;
    let have: BTreeSet<u64> = match &status {
        Some(s) => {
            up.check_same_upload(s)?;
            s.received
                .iter()
                .copied()
                .filter(|n| (1..=cut.total).contains(n))
                .collect()
        }
        None => BTreeSet::new(),
    };
    let missing: Vec<u64> = (1..=cut.total).filter(|n| !have.contains(n)).collect();
    let already: u64 = have.iter().map(|&n| cut.len(n)).sum();
    if !have.is_empty() {
        eprintln!(
            "skipped {} of {} chunks: the server already has them ({})",
            have.len(),
            cut.total,
            HumanBytes(already)
        );
    }
    if missing.is_empty()
        && let Some(url) = status.as_ref().and_then(|s| s.download_url.clone())
    {
        eprintln!("already complete on the server");
        return Ok(up.absolute(&url));
    }

    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    // Start at the bytes already on the server without counting them as speed: jump while
    // hidden, forget the jump, then show the bar.
    pb.set_position(already);
    pb.tick();
    pb.reset_eta();
    pb.set_draw_target(ProgressDrawTarget::stderr());
    pb.enable_steady_tick(Duration::from_millis(200));

    let started = Instant::now();
    let to_send = missing.len();
    let mut replies = stream::iter(missing)
        .map(|n| up.clone().send_chunk(n))
        .buffer_unordered(args.concurrency.into());
    let mut download_url = None;
    while let Some(reply) = replies.next().await {
        match reply {
            Ok(json) => {
                if json["complete"] == Value::Bool(true)
                    && let Some(url) = json["download_url"].as_str()
                {
                    download_url = Some(url.to_string());
                }
            }
            Err(e) => {
                close_bar(&pb);
                return Err(e);
            }
        }
    }
    close_bar(&pb);
    let sent = cut.size - already;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sent {to_send} chunk(s), {} in {:.1}s ({}/s)",
        HumanBytes(sent),
        secs,
        HumanBytes((sent as f64 / secs.max(0.001)) as u64)
    );

    let url = match download_url {
        Some(url) => url,
        // Every chunk is stored but no reply said so (another client finished it, say): ask once.
        None => match up.status().await? {
            Some(Status {
                complete: true,
                download_url: Some(url),
                ..
            }) => url,
            Some(s) => {
                let gone: Vec<u64> = (1..=cut.total)
                    .filter(|n| !s.received.contains(n))
                    .collect();
                return Err(format!(
                    "every chunk was accepted but the server says the upload is not complete \
                     (missing chunks: {gone:?}); run again to resend them"
                ));
            }
            None => return Err("every chunk was accepted but the server has no such upload".into()),
        },
    };
    Ok(up.absolute(&url))
}

/// The Resumable.js cutting rule with `forceChunkSize: false`: the last chunk takes the rest, so
/// it holds between one and two chunk sizes (or the whole file if it is smaller than a chunk).
#[derive(Debug, Clone, Copy)]
struct Cut {
    size: u64,
    chunk: u64,
    total: u64,
}

impl Cut {
    fn new(size: u64, chunk: u64) -> Cut {
        Cut {
            size,
            chunk,
            total: (size / chunk).max(1),
        }
    }

    /// Byte range `[start, end)` of chunk `n` (1-based).
    fn range(&self, n: u64) -> (u64, u64) {
        let start = (n - 1) * self.chunk;
        let end = if n == self.total {
            self.size
        } else {
            n * self.chunk
        };
        (start, end)
    }

    fn len(&self, n: u64) -> u64 {
        let (start, end) = self.range(n);
        end - start
    }
}

/// Resumable.js's default identifier, so that this client and a browser resume each other.
fn default_identifier(size: u64, filename: &str) -> String {
    let clean: String = filename
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    format!("{size}-{clean}")
}

/// What `GET {upload-path}/status` says about an upload.
#[derive(Debug)]
struct Status {
    total_size: Option<u64>,
    chunk_size: Option<u64>,
    total_chunks: Option<u64>,
    received: Vec<u64>,
    complete: bool,
    download_url: Option<String>,
}

struct Uploader {
    http: reqwest::Client,
    server: String,
    endpoint: String,
    file: Arc<File>,
    path: PathBuf,
    cut: Cut,
    identifier: String,
    filename: String,
    octet: bool,
    pb: ProgressBar,
}

impl Uploader {
    /// One call instead of one probe per chunk: `None` if the server has never seen the upload.
    async fn status(&self) -> Result<Option<Status>, Fatal> {
        let url = format!("{}/status", self.endpoint);
        let query = [("resumableIdentifier", self.identifier.as_str())];
        let (status, json) = self
            .send_retrying("status", || self.http.get(&url).query(&query))
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status != StatusCode::OK {
            return Err(format!("status: {}", server_says(status, &json)));
        }
        let number = |k: &str| json[k].as_u64();
        Ok(Some(Status {
            total_size: number("total_size"),
            chunk_size: number("chunk_size"),
            total_chunks: number("total_chunks"),
            received: json["received"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
            complete: json["complete"] == Value::Bool(true),
            download_url: json["download_url"].as_str().map(str::to_string),
        }))
    }

    /// The status's chunk numbers mean something only for the same cut of the same size: refuse
    /// to skip chunks on the word of another upload.
    fn check_same_upload(&self, s: &Status) -> Result<(), Fatal> {
        let cut = self.cut;
        let id = &self.identifier;
        if let Some(size) = s.total_size.filter(|&t| t != cut.size) {
            return Err(format!(
                "the server holds another file under identifier {id} ({size} bytes, not {}); \
                 pass another --identifier",
                cut.size
            ));
        }
        if let Some(cs) = s.chunk_size.filter(|&c| c != cut.chunk) {
            return Err(format!(
                "the upload under identifier {id} was started with chunks of {cs} bytes; \
                 resume it with --chunk-size {cs}, or pass another --identifier"
            ));
        }
        if let Some(t) = s.total_chunks.filter(|&t| t != cut.total) {
            return Err(format!(
                "the upload under identifier {id} has {t} chunks, not {}; pass another \
                 --identifier",
                cut.total
            ));
        }
        Ok(())
    }

    /// Reads chunk `n` and sends it, retrying passing faults; returns the server's JSON reply.
    async fn send_chunk(self: Arc<Self>, n: u64) -> Result<Value, Fatal> {
        let (start, end) = self.cut.range(n);
        let data = self.read(start, end).await?;
        let len = data.len() as u64;
        let params = self.params(n, len);
        // Bytes of the current attempt already shown on the bar, taken back if it fails.
        let shown = Arc::new(AtomicU64::new(0));
        let what = format!("chunk {n}");
        let (status, json) = self
            .send_retrying(&what, || {
                self.pb.dec(shown.swap(0, Ordering::Relaxed));
                let body = counted_body(data.clone(), self.pb.clone(), shown.clone());
                let req = self.http.post(&self.endpoint).query(&params);
                if self.octet {
                    req.header(header::CONTENT_TYPE, MIME)
                        .header(header::CONTENT_LENGTH, len)
                        .body(body)
                } else {
                    let mut form = Form::new();
                    for (k, v) in &params {
                        form = form.text(*k, v.clone());
                    }
                    let part = Part::stream_with_length(body, len)
                        .file_name(self.filename.clone())
                        .mime_str(MIME)
                        .expect("a valid MIME type");
                    req.multipart(form.part("file", part))
                }
            })
            .await?;
        if !status.is_success() {
            return Err(format!("{what}: {}", server_says(status, &json)));
        }
        self.pb
            .inc(len.saturating_sub(shown.load(Ordering::Relaxed)));
        Ok(json)
    }

    /// A positioned read, so that only the chunks in flight are in memory.
    async fn read(&self, start: u64, end: u64) -> Result<Bytes, Fatal> {
        let file = self.file.clone();
        let len = usize::try_from(end - start).map_err(|_| "chunk too large for memory")?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, start)
                .map(|()| Bytes::from(buf))
        })
        .await
        .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        read.map_err(|e| {
            format!(
                "{}: cannot read bytes {start}..{end} (did the file change?): {e}",
                self.path.display()
            )
        })
    }

    /// Every parameter Resumable.js sends with a chunk.
    fn params(&self, n: u64, len: u64) -> Vec<(&'static str, String)> {
        vec![
            ("resumableChunkNumber", n.to_string()),
            ("resumableChunkSize", self.cut.chunk.to_string()),
            ("resumableCurrentChunkSize", len.to_string()),
            ("resumableTotalSize", self.cut.size.to_string()),
            ("resumableType", MIME.to_string()),
            ("resumableIdentifier", self.identifier.clone()),
            ("resumableFilename", self.filename.clone()),
            ("resumableRelativePath", self.filename.clone()),
            ("resumableTotalChunks", self.cut.total.to_string()),
        ]
    }

    /// Sends the request `build` makes until the answer is not a passing fault (502, 503, 504 or
    /// a network error), at most `RETRIES` times more. Any other status is the caller's to judge.
    async fn send_retrying(
        &self,
        what: &str,
        mut build: impl FnMut() -> RequestBuilder,
    ) -> Result<(StatusCode, Value), Fatal> {
        let mut retries = 0;
        loop {
            let (reason, retry_after) = match build().send().await {
                Err(e) if e.is_builder() => return Err(format!("{what}: {}", chain(&e))),
                // The URL, query and all, would drown the cause.
                Err(e) => (chain(&e.without_url()), None),
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    match resp.bytes().await {
                        Err(e) => (chain(&e.without_url()), None),
                        Ok(body) => {
                            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            if !matches!(status.as_u16(), 502..=504) {
                                return Ok((status, json));
                            }
                            (server_says(status, &json), retry_after)
                        }
                    }
                }
            };
            if retries == RETRIES {
                return Err(format!(
                    "{what}: {reason} (gave up after {RETRIES} retries)"
                ));
            }
            retries += 1;
            let wait = match retry_after {
                Some(s) => Duration::from_secs(s.min(MAX_RETRY_AFTER)),
                None => (Duration::from_millis(500) * 2u32.pow(retries - 1)).min(MAX_BACKOFF),
            };
            note(
                &self.pb,
                format!(
                    "{what}: {reason}; retry {retries} of {RETRIES} in {:.1}s",
                    wait.as_secs_f64()
                ),
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// The server's `download_url` is a path; the user needs a URL.
    fn absolute(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}{url}", self.server)
        }
    }
}

/// The chunk as a stream of pieces that advance the bar as the connection takes them, so that
/// large chunks show progress too; `shown` counts them for a retry to take back.
fn counted_body(data: Bytes, pb: ProgressBar, shown: Arc<AtomicU64>) -> reqwest::Body {
    let pieces = (0..data.len())
        .step_by(PIECE)
        .map(move |i| data.slice(i..(i + PIECE).min(data.len())));
    reqwest::Body::wrap_stream(stream::iter(pieces).map(move |piece| {
        pb.inc(piece.len() as u64);
        shown.fetch_add(piece.len() as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(piece)
    }))
}

/// The server's explanation of a status: its JSON `message` if it sent one.
fn server_says(status: StatusCode, json: &Value) -> String {
    match json["message"].as_str() {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

/// An error with its causes: reqwest's own message alone rarely says what went wrong.
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Stops the bar where it is, so that what follows starts on a line of its own.
fn close_bar(pb: &ProgressBar) {
    pb.disable_steady_tick();
    // A stopped bar's speed is position over elapsed time, skipped bytes included: drop it.
    pb.set_style(
        ProgressStyle::with_template("  [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.abandon();
    if !pb.is_hidden() {
        // The bar leaves the cursor at its end.
        eprintln!();
    }
}

/// A line on stderr that does not tear the progress bar.
fn note(pb: &ProgressBar, msg: impl Display) {
    pb.suspend(|| eprintln!("{msg}"));
}
