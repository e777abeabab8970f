//! The flow of one chunk, and the probe and status calls beside it.
//!
//! 1. Read the parameters: the query, then (multipart) the form fields before the file part.
//! 2. [`Params::chunk`] turns any dialect into one [`ChunkParams`].
//! 3. Find or create the upload in the index; the request must describe the same file.
//! 4. Stream the body through the cipher into a fresh region of the upload's data file
//!    ([`ChunkWriter`]; the first batch written reserves the region with
//!    [`Spool::reserve`](crate::store::Spool::reserve)), never holding more than two batches of
//!    it, and stop at the first byte too many. Batches are sealed and written on the runtime's
//!    thread while the disk keeps up, on blocking threads otherwise ([`WriteGate`]).
//! 5. Seal and write the last batch ([`Written::seal_rest`]), make the region durable, then
//!    commit its row: [`Index::commit_chunk`](crate::store::Index::commit_chunk) re-checks the
//!    geometry and completes the upload if this was the last chunk missing, in the same
//!    transaction. All in one blocking task ([`land`]), since each step may sync; in fast mode,
//!    where none does, on the runtime's thread while [`WriteGate`] is open ([`land_here`]).
//! 6. Answer with JSON that lets the client find the file ([`ChunkReply`]).

use std::hash::Hasher as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode, header};
use serde::Serialize;
use twox_hash::XxHash3_64;

use crate::access;
use crate::app::App;
use crate::body::{Body, RequestBody, json_response, status_only};
use crate::config::Durability;
use crate::crypto::{self, FileCipher, FileKeys, SEGMENT};
use crate::error::{Error, Result};
use crate::geometry::{Declared, Expect};
use crate::metrics::Metrics;
use crate::previews;
use crate::protocol::{ChunkParams, Params};
use crate::store::{ChunkRow, Commit, Region, Removed, UploadRow, release_region};

/// Plaintext bytes sealed and written at a time: a whole number of segments, small enough that
/// memory per request stays flat (two batches), large enough that the hand-off of a batch to
/// a blocking thread (two wake-ups, which profiles showed costing more than the hashing), where
/// [`WriteGate`] asks for one, is paid rarely: 256 KiB, four per 1 MiB chunk.
pub(crate) const BATCH: usize = 16 * SEGMENT;
/// Largest text field accepted in a multipart body.
const MAX_FIELD: usize = 64 * 1024;
/// Most text fields before the file part.
const MAX_FIELDS: usize = 64;
/// Multipart framing allowed on top of the largest chunk.
const MULTIPART_SLACK: u64 = 1 << 20;
/// Longest field name accepted in a multipart body.
const MAX_FIELD_NAME: usize = 1024;
/// Most bytes read before the file part, and after it: the fields, the part headers and the
/// delimiters. multer buffers a part's headers whole until their end, so without this bound a
/// body that never ends its headers would be held in memory up to the whole-stream limit.
const MAX_PRELUDE: u64 = (MAX_FIELDS * (MAX_FIELD + MAX_FIELD_NAME)) as u64 + (1 << 20);

/// The bytes multer may still pull from the body, changed as the reading moves from the fields
/// (bounded) to the file part (the whole-stream limit only) to the end (bounded again).
#[derive(Clone, Default)]
struct Budget(Arc<std::sync::Mutex<(u64, u64)>>);

/// The marker error of a spent [`Budget`].
#[derive(Debug, thiserror::Error)]
#[error("more than {0} bytes of form fields and part headers")]
struct PreludeTooLarge(u64);

impl Budget {
    fn pulled(&self, n: usize) -> std::result::Result<(), PreludeTooLarge> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += n as u64;
        if g.0 > g.1 {
            return Err(PreludeTooLarge(MAX_PRELUDE));
        }
        Ok(())
    }

    /// Allows `more` bytes beyond those pulled so far (`None`: no bound of its own).
    fn allow(&self, more: Option<u64>) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = more.map_or(u64::MAX, |m| g.0.saturating_add(m));
    }
}

/// What every probe and chunk response says, so that any of them lets a client find the file.
#[derive(Debug, Serialize)]
pub struct ChunkReply {
    pub identifier: String,
    pub file_id: String,
    pub chunk: u64,
    /// How many chunks are committed.
    pub received: u64,
    /// The number of chunks, once known (unknown only while the cutting mode is open).
    pub total_chunks: Option<u64>,
    pub complete: bool,
    /// True only in the response of the one request whose commit completed the file.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub completed_now: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
}

/// Where a complete file is served. With `--require-auth` the link carries a signature, so
/// that it works from an `<a href>`.
pub fn download_url(app: &App, scope: &str, file_id: &str) -> String {
    link(app, scope, file_id, format!("/files/{file_id}"))
}

/// Where thumbnail `idx` of a complete file is served, signed like [`download_url`] for an
/// `<img src>`.
pub fn thumbnail_url(app: &App, scope: &str, file_id: &str, idx: u32) -> String {
    link(
        app,
        scope,
        file_id,
        format!("/files/{file_id}/thumbnails/{idx}"),
    )
}

/// `path` about `file_id`, with `?scope=…&sig=…` when `--require-auth` makes it private.
fn link(app: &App, scope: &str, file_id: &str, path: String) -> String {
    if !app.config.auth.require_auth {
        return path;
    }
    let scope_q = percent_encoding::utf8_percent_encode(scope, percent_encoding::NON_ALPHANUMERIC);
    format!(
        "{path}?scope={scope_q}&{}",
        access::signed_query(app, scope, file_id)
    )
}

fn reply(
    app: &App,
    scope: &str,
    row: &UploadRow,
    chunk: u64,
    received: u64,
    total: Option<u64>,
    complete: bool,
) -> ChunkReply {
    ChunkReply {
        identifier: row.identifier.clone(),
        file_id: row.file_id.clone(),
        chunk,
        received,
        total_chunks: total,
        complete,
        completed_now: false,
        download_url: complete.then(|| download_url(app, scope, &row.file_id)),
    }
}

/// `GET {upload-path}`: 200 with the chunk reply if chunk n is committed, 204 if not. Never 404:
/// Flow.js aborts the whole upload on one.
pub async fn probe(app: &Arc<App>, req: Request<RequestBody>) -> Result<Response<Body>> {
    let params = Params::from_query(req.uri().query())?;
    let scope = access::core_scope(app, req.headers(), None)?;
    let chunk = params.chunk(None)?;
    let n = chunk.declared.number;
    // An active upload is answered from memory; anything else from SQLite. Either way a
    // different file under the same identifier is refused, not told its chunks exist.
    let found = match app.index.cached(&scope, &chunk)? {
        Some(hit) => Some(hit),
        None => {
            let s = scope.clone();
            app.blocking(move |app| app.index.find_chunk(&s, &chunk))
                .await?
        }
    };
    Ok(match found {
        Some((row, _, Some(_))) => {
            let complete = row.completed_at.is_some();
            let body = reply(
                app,
                &scope,
                &row,
                n,
                row.received,
                row.shape.total_chunks,
                complete,
            );
            json_response(StatusCode::OK, &body)
        }
        _ => status_only(StatusCode::NO_CONTENT),
    })
}

/// The state of one upload, for a client that resumes with one call instead of N probes.
#[derive(Debug, Serialize)]
struct StatusReply {
    identifier: String,
    file_id: String,
    filename: String,
    total_size: u64,
    chunk_size: Option<u64>,
    total_chunks: Option<u64>,
    /// The committed chunk numbers, in order.
    received: Vec<u64>,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    download_url: Option<String>,
    /// Once complete: `waiting` while the previews are being made, then `done` (with or without
    /// thumbnails: a file that is not an image has none) or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    thumbnails_status: Option<String>,
    thumbnails: Vec<previews::Listed>,
}

/// `GET {upload-path}/status?resumableIdentifier=X`.
pub async fn status(app: &Arc<App>, req: Request<RequestBody>) -> Result<Response<Body>> {
    let id = Params::from_query(req.uri().query())?.identifier()?;
    let scope = access::core_scope(app, req.headers(), None)?;
    let reply = app
        .blocking(move |app| {
            let row = app
                .index
                .find(&scope, &id)?
                .ok_or(Error::NotFound("upload"))?;
            let received = app.index.received(&row.id)?;
            let complete = row.completed_at.is_some();
            let meta = if complete {
                app.index.file_meta(&scope, &row.file_id)?
            } else {
                None
            };
            let thumbnails = meta.as_ref().map_or_else(Vec::new, |m| {
                let url = |idx| thumbnail_url(app, &scope, &row.file_id, idx);
                m.thumbnails
                    .iter()
                    .map(|t| previews::Listed::new(t, url(t.idx)))
                    .collect()
            });
            Ok(StatusReply {
                download_url: complete.then(|| download_url(app, &scope, &row.file_id)),
                thumbnails_status: meta.map(|m| m.thumbs),
                thumbnails,
                identifier: row.identifier,
                file_id: row.file_id,
                filename: row.filename,
                total_size: row.shape.total_size,
                chunk_size: row.shape.chunk_size,
                total_chunks: row.shape.total_chunks,
                received,
                complete,
            })
        })
        .await?;
    Ok(json_response(StatusCode::OK, &reply))
}

/// `POST {upload-path}` (or `PUT`): stores one chunk, multipart or raw. `peer` is the client's
/// address, whom an anonymous upload counts against.
pub async fn post_chunk(
    app: &Arc<App>,
    peer: IpAddr,
    req: Request<RequestBody>,
) -> Result<Response<Body>> {
    let scope = access::core_scope(app, req.headers(), None)?;
    let owner = access::owner(&scope, peer);
    let (parts, body) = req.into_parts();
    let mut params = Params::from_query(parts.uri.query())?;
    let mut source = ChunkBody::open_checked(app, &parts.headers, body, &mut params).await?;
    let result = match params.chunk(None) {
        Ok(chunk) => {
            let target = Target::Identifier {
                scope: scope.clone(),
                owner,
            };
            store_chunk(app, target, chunk, &mut source).await
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        source.discard().await;
    }
    let stored = result?;
    let body = ChunkReply {
        completed_now: stored.completed_now,
        ..reply(
            app,
            &scope,
            &stored.row,
            stored.number,
            stored.received,
            stored.total,
            stored.complete,
        )
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Where a chunk goes.
pub enum Target {
    /// The upload under the request's identifier in this scope, created by its first chunk
    /// (the chunk endpoint); a new one counts against `owner` ([`access::owner`]).
    Identifier { scope: String, owner: String },
    /// The upload in progress of a file created beforehand (Files API). A complete file takes
    /// a new upload, an overwrite, only if `may_overwrite`.
    File {
        scope: String,
        file_id: String,
        may_overwrite: bool,
    },
}

/// A chunk stored (or found already stored), and where its upload stands.
pub struct Stored {
    pub row: Arc<UploadRow>,
    pub number: u64,
    pub received: u64,
    pub total: Option<u64>,
    pub complete: bool,
    /// True only for the one request whose commit completed the upload.
    pub completed_now: bool,
}

/// Steps 3 to 5 of the flow, shared by every route that receives a chunk.
pub async fn store_chunk(
    app: &Arc<App>,
    target: Target,
    chunk: ChunkParams,
    source: &mut ChunkBody,
) -> Result<Stored> {
    let limits = &app.config.limits;
    let d = chunk.declared;
    if d.total_size > limits.max_file_size {
        return Err(Error::FileTooLarge {
            size: d.total_size,
            limit: limits.max_file_size,
        });
    }
    if d.number > u32::MAX as u64 {
        return Err(Error::Geometry("more than 4,294,967,295 chunks".into()));
    }
    // The next chunk of an active upload finds it in memory, with no thread hop.
    let cached = match &target {
        Target::Identifier { scope, .. } => app.index.cached(scope, &chunk)?,
        Target::File { .. } => None,
    };
    let (row, shape, existing) = match cached {
        Some(hit) => hit,
        None => {
            let req = chunk.clone();
            app.blocking(move |app| {
                let keys = || app.key.wrap(&FileKeys::generate());
                match target {
                    Target::Identifier { scope, owner } => {
                        let quota = (owner.as_str(), app.config.limits.max_open_uploads);
                        app.index
                            .find_or_create(&scope, &req, quota, || (new_id(), new_id(), keys()))
                    }
                    Target::File {
                        scope,
                        file_id,
                        may_overwrite,
                    } => {
                        let (row, shape) = app.index.upload_for_file(
                            &scope,
                            &file_id,
                            may_overwrite,
                            &req,
                            || (new_id(), keys()),
                        )?;
                        let existing = app.index.chunk(&row.id, req.declared.number)?;
                        Ok((Arc::new(row), shape, existing))
                    }
                }
            })
            .await?
        }
    };
    let expect = shape.expect(d.number);
    if expect.max() > limits.max_chunk_size {
        return Err(Error::Geometry(format!(
            "chunk {} may hold {} bytes, more than this server accepts per chunk ({} bytes)",
            d.number,
            expect.max(),
            limits.max_chunk_size
        )));
    }
    let max = match (expect, d.current_size) {
        (Expect::AtMost(_), Some(cur)) => cur,
        _ => expect.max(),
    };
    // A raw body's length is known from its Content-Length: a wrong one is refused before a
    // byte is read or a spool region reserved.
    if let Some(len) = source.known_len() {
        if len > max {
            return Err(Error::Geometry(format!(
                "chunk {} may hold {max} bytes, but the body has {len}",
                d.number
            )));
        }
        if let Some(cur) = d.current_size
            && cur != len
        {
            return Err(Error::Geometry(format!(
                "chunk {} declared {cur} bytes, but the body has {len}",
                d.number
            )));
        }
    }

    if let Some(stored) = existing {
        // Sent again: check it is the same bytes, store nothing.
        let (len, hash) = source.drain_hashed(max, d.number).await?;
        if len != stored.len || hash != stored.hash {
            return Err(Error::ChunkDiffers(d.number));
        }
        // Read again: `row` may predate the commit that stored this chunk (and perhaps
        // completed the file) while this request was looking it up.
        let id = row.id.clone();
        let (received, total, complete) = app
            .blocking(move |app| app.index.progress(&id)?.ok_or(Error::NotFound("upload")))
            .await?;
        return Ok(Stored {
            number: d.number,
            received,
            total,
            complete,
            completed_now: false,
            row,
        });
    }

    let started = Instant::now();
    // Held until the commit has counted the bytes in, or the chunk failed.
    let _reserved = app.usage.reserve(crypto::sealed_len(max))?;
    let cipher = Arc::new(app.file_cipher(&row.wrapped_keys)?);
    let number = d.number;
    let (written, _) = write_chunk(app, &row.id, cipher, number, source, max, false).await?;
    let len = written.len;
    if let Some(cur) = d.current_size
        && cur != len
    {
        return Err(Error::Geometry(format!(
            "chunk {number} declared {cur} bytes but {len} arrived"
        )));
    }
    let upload_id = row.id.clone();
    let commit = if app.config.storage.durability == Durability::Fast && app.write_gate.is_open() {
        land_here(app, written, upload_id, d).await?
    } else {
        // The chunk's last batch and its region's guard move into the blocking task: the file
        // and its row are decided together there, even if the client hangs up and this
        // request's future is dropped meanwhile.
        app.blocking(move |app| land(app, written, &upload_id, &d))
            .await?
    };
    let m = &app.metrics;
    let (received, total, complete, completed_now) = match commit {
        Commit::Stored {
            received,
            total,
            completed,
            ..
        } => {
            m.chunks_received.inc();
            m.bytes_received.inc_by(len);
            m.chunk_seconds.observe(started.elapsed().as_secs_f64());
            if received == 1 {
                m.uploads_started.inc();
            }
            (received, total, completed, completed)
        }
        Commit::AlreadyStored {
            received,
            total,
            complete,
        } => (received, total, complete, false),
    };
    if completed_now {
        m.uploads_completed.inc();
        tracing::info!(file_id = %row.file_id, size = row.shape.total_size, "upload complete");
        previews::queue(app, row.id.clone());
    }
    Ok(Stored {
        row,
        number,
        received,
        total,
        complete,
        completed_now,
    })
}

/// Seals and writes a chunk's last batch, makes its region durable and commits its row, on a
/// blocking thread: each of the three may sync.
fn land(app: &App, written: Written, upload_id: &str, d: &Declared) -> Result<Commit> {
    let len = written.len;
    let done = written.seal_rest().map_err(Error::from).and_then(|sealed| {
        app.spool.finish_region(&sealed.file)?;
        let commit = app.index.commit_chunk(upload_id, d, sealed.row)?;
        Ok((commit, sealed.guard))
    });
    settle(app, upload_id, len, done)
}

/// [`land`] on the runtime's thread, for [`Durability::Fast`] while [`WriteGate`] is open: a
/// chunk then costs no hand-off to a blocking thread at all (the one per chunk left cost 4-8%
/// of a fast upload's server CPU in alternating sets, BENCHMARKS.md round 9). The last batch
/// goes to the page cache like the others, the region needs no sync, and the row commits here
/// if the index is free ([`Index::try_commit_chunk`](crate::store::Index::try_commit_chunk)
/// syncs nothing, and leaves the checkpoints, which sync, to a blocking thread). The commit is
/// timed like a write: the log goes through the same page cache. Whatever may wait goes to a
/// blocking thread: the commit if the index is busy, a failure (its check reads the index), a
/// completion (it trims the data file, and an overwrite removes the old content's), and a chunk
/// another request stored first (its region is given back).
async fn land_here(
    app: &Arc<App>,
    written: Written,
    upload_id: String,
    d: Declared,
) -> Result<Commit> {
    let len = written.len;
    let sealed = match written.seal_rest() {
        Ok(sealed) => sealed,
        Err(e) => {
            let e = Error::from(e);
            return app
                .blocking(move |app| settle(app, &upload_id, len, Err(e)))
                .await;
        }
    };
    let started = Instant::now();
    let tried = app.index.try_commit_chunk(&upload_id, &d, sealed.row);
    app.write_gate.written(started, &app.metrics);
    if app.index.take_checkpoint_due() {
        let app = Arc::clone(app);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = app.index.checkpoint() {
                tracing::warn!(error = %e, "could not checkpoint the index's log");
            }
        });
    }
    let (guard, row) = (sealed.guard, sealed.row);
    match tried {
        // Stored, not completing: settling keeps the region and counts its bytes, nothing more.
        Some(Ok(
            commit @ Commit::Stored {
                completed: false, ..
            },
        )) => settle(app, &upload_id, len, Ok((commit, guard))),
        // Anything else settles on a blocking thread, after the commit if the index was busy.
        tried => {
            app.blocking(move |app| {
                let done = tried.unwrap_or_else(|| app.index.commit_chunk(&upload_id, &d, row));
                settle(app, &upload_id, len, done.map(|c| (c, guard)))
            })
            .await
        }
    }
}

/// What follows a chunk's commit, or its failure (the region's guard has gone then, and given
/// the region back). It blocks only for a failure or a completion.
fn settle(
    app: &App,
    upload_id: &str,
    len: u64,
    done: Result<(Commit, LitterGuard)>,
) -> Result<Commit> {
    let (commit, mut guard) = match done {
        Ok(done) => done,
        Err(e) => {
            // A delete committed meanwhile: it removed the directory, or this write made it
            // again after the removal. The chunk is for a file that is gone.
            if !app.index.upload_exists(upload_id)? {
                app.spool.remove_upload(upload_id)?;
                return Err(Error::NotFound("upload"));
            }
            return Err(e);
        }
    };
    if let Commit::Stored {
        replaced,
        freed,
        completed,
        ..
    } = &commit
    {
        guard.keep();
        if *completed {
            app.spool.written_out(upload_id);
            // Best effort: the upload is complete whatever this does.
            let trimmed = app
                .index
                .chunks(upload_id)
                .and_then(|chunks| Ok(app.spool.trim(upload_id, &chunks)?));
            if let Err(e) = trimmed {
                tracing::warn!(upload_id = %upload_id, error = %e, "could not give back the bytes of uncommitted writes");
            }
        }
        app.usage.add(crypto::sealed_len(len));
        if let Some(old) = replaced {
            // The replaced content's rows are gone; its bytes follow.
            app.release(&Removed {
                uploads: vec![old.clone()],
                bytes: *freed,
            })?;
        }
    }
    Ok(commit)
}

/// A chunk streamed through the cipher, all of it but its last batch sealed and written. The
/// last batch is left to [`Written::seal_rest`], for whoever commits the chunk (a blocking task
/// where committing may sync, [`land`]; the runtime's thread in fast mode, [`land_here`]): a
/// chunk written to a blocking thread costs one hand-off for both (each hand-off wakes a
/// thread; a profile showed those wake-ups costing more CPU than hashing the bytes).
pub struct Written {
    sealing: Sealing,
    rest: Vec<u8>,
    /// The chunk's plaintext length.
    pub len: u64,
}

/// A chunk whose sealed bytes are all in its region, not yet durable nor committed.
pub struct Sealed {
    /// The upload's data file.
    pub file: Arc<std::fs::File>,
    pub row: ChunkRow,
    /// Frees the region unless its row commits.
    pub guard: LitterGuard,
}

impl Written {
    /// Seals and writes the last batch, with its padding. It blocks: call it on a blocking
    /// thread. On an error the region is given back.
    pub fn seal_rest(self) -> std::io::Result<Sealed> {
        let Written {
            mut sealing,
            mut rest,
            len,
        } = self;
        let done = sealing.write(&mut rest, true);
        give_buffer(rest);
        done?;
        let placed = sealing.region.expect("the last write reserved the region");
        Ok(Sealed {
            file: placed.file,
            row: ChunkRow {
                number: sealing.number,
                len,
                nonce: sealing.nonce,
                hash: sealing.hasher.finish(),
                pos: Some(placed.start),
            },
            guard: placed.guard,
        })
    }
}

/// Streams at most `max` bytes of `source` through the cipher into a fresh region of upload
/// `upload_id`'s data file, as chunk `number`. More bytes than `max` are an error, unless
/// `split`: then the chunk ends at `max` bytes, the rest stays in `source` for the next chunk,
/// and the returned flag says whether there is a rest. That lets one stream be cut into several
/// chunks.
pub async fn write_chunk(
    app: &Arc<App>,
    upload_id: &str,
    cipher: Arc<FileCipher>,
    number: u64,
    source: &mut ChunkBody,
    max: u64,
    split: bool,
) -> Result<(Written, bool)> {
    // A raw body's length is exact; otherwise the region is as large as the chunk may be.
    let most = source.known_len().map_or(max, |len| len.min(max));
    let mut writer = ChunkWriter::new(app, upload_id, crypto::sealed_len(most), cipher, number);
    let mut len = 0u64;
    let mut more = false;
    while let Some(mut data) = source.next().await? {
        if len == max && split {
            source.stash = Some(data);
            more = true;
            break;
        }
        if len + data.len() as u64 > max {
            if !split {
                return Err(Error::Geometry(format!(
                    "chunk {number} holds more bytes than its geometry allows ({max})"
                )));
            }
            let rest = data.split_off((max - len) as usize);
            source.stash = Some(rest);
            more = true;
        }
        len += data.len() as u64;
        writer.push(data).await?;
        if more {
            break;
        }
    }
    if !more {
        source.finish().await?;
    }
    let (sealing, rest) = writer.finish().await?;
    Ok((Written { sealing, rest, len }, more))
}

/// A fresh id for a file or an upload: 128 random bits as 32 hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    crypto::random_bytes(&mut b);
    uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .simple()
        .to_string()
}

/// Frees the region of a chunk that never got its index row, however the request ends (an
/// error, a client that went away, a cancelled task, another write of the chunk committing
/// first).
pub struct LitterGuard(Option<(Arc<std::fs::File>, u64, u64)>);

impl LitterGuard {
    fn new(region: &Region) -> Self {
        LitterGuard(Some((Arc::clone(&region.file), region.pos, region.len)))
    }

    pub fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for LitterGuard {
    fn drop(&mut self) {
        if let Some((file, pos, len)) = self.0.take() {
            release_region(&file, pos, len);
        }
    }
}

/// The bytes of one chunk, from a raw body or from the file part of a multipart body.
pub struct ChunkBody {
    source: Source,
    /// Bytes read but not yet consumed: the start of the next chunk when one stream is cut
    /// into several ([`write_chunk`] with `split`).
    stash: Option<Bytes>,
    /// The file part's own filename and type, if it gave them.
    pub part_name: Option<String>,
    pub part_type: Option<String>,
}

// One lives per request, in its task: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Source {
    Raw(RequestBody),
    Part {
        multipart: multer::Multipart<'static>,
        field: Option<multer::Field<'static>>,
        budget: Budget,
    },
}

fn multipart_error(e: multer::Error) -> Error {
    match e {
        multer::Error::StreamSizeExceeded { limit }
        | multer::Error::FieldSizeExceeded { limit, .. } => Error::BodyTooLarge(limit),
        multer::Error::StreamReadFailed(e) => match e.downcast_ref::<PreludeTooLarge>() {
            Some(p) => Error::Multipart(p.to_string()),
            None => Error::from_boxed_body(&*e),
        },
        other => Error::Multipart(other.to_string()),
    }
}

impl From<Source> for ChunkBody {
    fn from(source: Source) -> Self {
        ChunkBody {
            source,
            stash: None,
            part_name: None,
            part_type: None,
        }
    }
}

/// True if the request's body is a multipart form.
pub fn is_multipart(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("multipart/form-data"))
}

impl ChunkBody {
    /// [`ChunkBody::open`] for one chunk: a `Content-Length` larger than any legal chunk is
    /// refused before reading.
    pub async fn open_checked(
        app: &App,
        headers: &hyper::HeaderMap,
        body: RequestBody,
        params: &mut Params<'_>,
    ) -> Result<ChunkBody> {
        let limit = app.config.limits.max_chunk_size;
        let content_length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|n| n > limit + MULTIPART_SLACK) {
            return Err(Error::BodyTooLarge(limit));
        }
        ChunkBody::open(headers, body, limit, params).await
    }

    /// Chooses by `Content-Type`: `multipart/form-data` is read up to the file part, collecting
    /// the fields before it into `params`; any other body but a form is the raw chunk (Flow.js
    /// sends octet chunks with the file's own type).
    pub async fn open(
        headers: &hyper::HeaderMap,
        body: RequestBody,
        limit: u64,
        params: &mut Params<'_>,
    ) -> Result<ChunkBody> {
        let ctype = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ctype
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "multipart/form-data" {
            let boundary = multer::parse_boundary(ctype)
                .map_err(|_| Error::Multipart("no boundary in the Content-Type".into()))?;
            let constraints = multer::Constraints::new()
                .size_limit(multer::SizeLimit::new().whole_stream(limit + MULTIPART_SLACK));
            let budget = Budget::default();
            budget.allow(Some(MAX_PRELUDE));
            let counted = {
                let budget = budget.clone();
                futures_util::StreamExt::map(body.into_data_stream(), move |r| {
                    let data = r.map_err(crate::body::BoxError::from)?;
                    budget.pulled(data.len())?;
                    Ok::<_, crate::body::BoxError>(data)
                })
            };
            let mut multipart = multer::Multipart::with_constraints(counted, boundary, constraints);
            let field = loop {
                let field = multipart
                    .next_field()
                    .await
                    .map_err(multipart_error)?
                    .ok_or_else(|| Error::Multipart("no file part".into()))?;
                if field.file_name().is_some() || field.name() == Some("file") {
                    break field;
                }
                let name = field.name().unwrap_or("").to_string();
                if name.len() > MAX_FIELD_NAME {
                    return Err(Error::Multipart(format!(
                        "a field name is longer than {MAX_FIELD_NAME} bytes"
                    )));
                }
                let value = read_text_field(field).await?;
                params.form.push((name, value));
                if params.form.len() > MAX_FIELDS {
                    return Err(Error::Multipart(format!("more than {MAX_FIELDS} fields")));
                }
            };
            // The file part's bytes are bounded by the geometry and the whole-stream limit.
            budget.allow(None);
            let part_name = field.file_name().map(str::to_string);
            let part_type = field.content_type().map(|m| m.essence_str().to_string());
            Ok(ChunkBody {
                part_name,
                part_type,
                ..ChunkBody::from(Source::Part {
                    multipart,
                    field: Some(field),
                    budget,
                })
            })
        } else if essence.starts_with("multipart/")
            || essence == "application/x-www-form-urlencoded"
        {
            Err(Error::UnsupportedMediaType(essence))
        } else {
            Ok(ChunkBody::from(Source::Raw(body)))
        }
    }

    /// The exact length of a raw body that declared one (`Content-Length`).
    pub fn known_len(&self) -> Option<u64> {
        use hyper::body::Body as _;
        match (&self.source, &self.stash) {
            (Source::Raw(body), None) => body.size_hint().exact(),
            _ => None,
        }
    }

    /// The next piece of the chunk's bytes.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        if let Some(b) = self.stash.take() {
            return Ok(Some(b));
        }
        match &mut self.source {
            Source::Raw(body) => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            return Ok(Some(data));
                        }
                    }
                }
            },
            Source::Part { field, .. } => match field {
                None => Ok(None),
                Some(f) => match f.chunk().await.map_err(multipart_error)? {
                    Some(b) => Ok(Some(b)),
                    None => {
                        *field = None;
                        Ok(None)
                    }
                },
            },
        }
    }

    /// After the chunk's bytes: a multipart body must end with the file part.
    pub async fn finish(&mut self) -> Result<()> {
        if let Source::Part {
            multipart,
            field,
            budget,
        } = &mut self.source
        {
            debug_assert!(field.is_none());
            // The closing delimiter, or the headers of a part that has no business there.
            budget.allow(Some(MAX_FIELD as u64));
            if multipart
                .next_field()
                .await
                .map_err(multipart_error)?
                .is_some()
            {
                return Err(Error::Multipart("a part follows the file part".into()));
            }
        }
        Ok(())
    }

    /// After an error, reads (and drops) what is left of a modest body, for a little while, so
    /// that a client still sending reads the JSON error instead of a broken pipe. A large or slow
    /// rest is not worth it: the connection is closed instead.
    pub async fn discard(&mut self) {
        const MAX: u64 = 8 << 20;
        let drain = async {
            let mut seen = 0u64;
            while let Ok(Some(b)) = self.next().await {
                seen += b.len() as u64;
                if seen > MAX {
                    return;
                }
            }
            if let Source::Part { multipart, .. } = &mut self.source {
                while let Ok(Some(mut f)) = multipart.next_field().await {
                    while let Ok(Some(b)) = f.chunk().await {
                        seen += b.len() as u64;
                        if seen > MAX {
                            return;
                        }
                    }
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
    }

    /// Reads the whole chunk without storing it: its length (at most `max`) and hash.
    async fn drain_hashed(&mut self, max: u64, number: u64) -> Result<(u64, u64)> {
        let mut h = XxHash3_64::new();
        let mut len = 0u64;
        while let Some(b) = self.next().await? {
            len += b.len() as u64;
            if len > max {
                return Err(Error::Geometry(format!(
                    "chunk {number} holds more bytes than its geometry allows ({max})"
                )));
            }
            h.write(&b);
        }
        self.finish().await?;
        Ok((len, h.finish()))
    }
}

async fn read_text_field(mut field: multer::Field<'static>) -> Result<String> {
    let mut buf = Vec::new();
    while let Some(b) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + b.len() > MAX_FIELD {
            return Err(Error::Multipart(format!(
                "a form field is larger than {MAX_FIELD} bytes"
            )));
        }
        buf.extend_from_slice(&b);
    }
    String::from_utf8(buf).map_err(|_| Error::Multipart("a form field is not UTF-8".into()))
}

/// The sealing state of one chunk, moved to a blocking thread for each batch.
struct Sealing {
    app: Arc<App>,
    upload_id: String,
    /// The size of the chunk's region: its largest sealed size.
    room: u64,
    /// The region, reserved by the first write, on its blocking thread: that costs no hand-off
    /// of its own, and a chunk smaller than a batch reserves, writes and commits in one.
    region: Option<Placed>,
    cipher: Arc<FileCipher>,
    nonce: u64,
    number: u64,
    next_segment: u32,
    hasher: XxHash3_64,
}

/// A chunk's region, and where in it the next batch goes.
struct Placed {
    file: Arc<std::fs::File>,
    start: u64,
    next: u64,
    end: u64,
    guard: LitterGuard,
}

impl Sealing {
    /// Whether the next batch may be written on the runtime's thread: while [`WriteGate`] is
    /// open, once the data file exists (reserving a region in it allocates, and creates or syncs
    /// nothing).
    fn inline_ok(&self) -> bool {
        (self.region.is_some() || self.app.spool.has_regions(&self.upload_id))
            && self.app.write_gate.is_open()
    }

    /// Seals `buf`'s batch (padded if `last`) and writes it after the previous one, reserving
    /// the region first if it is the chunk's first. The time it takes is reported to the
    /// [`WriteGate`].
    fn write(&mut self, buf: &mut Vec<u8>, last: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let started = Instant::now();
        let placed = match &mut self.region {
            Some(placed) => placed,
            None => {
                let region = self.app.spool.reserve(&self.upload_id, self.room)?;
                let guard = LitterGuard::new(&region);
                self.region.insert(Placed {
                    start: region.pos,
                    next: region.pos,
                    end: region.pos + region.len,
                    file: region.file,
                    guard,
                })
            }
        };
        let skip = batch_start(buf);
        self.hasher.write(&buf[skip..]);
        if last {
            crypto::pad(buf);
        }
        let batch = &mut buf[skip..];
        self.cipher
            .seal_segments(self.nonce, self.number as u32, self.next_segment, batch);
        self.next_segment += (batch.len() / SEGMENT) as u32;
        placed.file.write_all_at(batch, placed.next)?;
        self.app.write_gate.written(started, &self.app.metrics);
        placed.next += batch.len() as u64;
        if last && placed.next < placed.end {
            // A chunk shorter than its largest size: the rest of its region was allocated
            // with it, and is given back.
            release_region(&placed.file, placed.next, placed.end - placed.next);
        }
        Ok(())
    }
}

type Pending = tokio::task::JoinHandle<std::io::Result<(Sealing, Vec<u8>)>>;

/// Batch buffers kept for the next chunks, and for downloads, which decrypt in batches of the
/// same size ([`crate::download`]). A fresh 256 KiB buffer per batch costs a page
/// fault on every first touch of its pages and gives them back to the kernel when freed (perf:
/// about 5% of the server's CPU in those faults and `madvise`, under the copy into the batch).
/// At most [`POOL_MAX`] are kept, so idle memory stays bounded whatever the peak was.
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Batches the pool keeps (8 MiB): enough for the two of each of 8 chunks in flight, or for
/// three downloads, each with up to six batches between its disk reads and its socket.
const POOL_MAX: usize = 32;

/// Where a batch starts in its buffer, uploads' and downloads' alike: on a cache line. On this
/// machine's AMD CPU the kernel's copy (`rep movsb`) between a page-aligned page-cache page and
/// a buffer runs at a fraction of its speed when the two are 8 or 16 bytes out of step, and
/// batches are read and written at page-aligned file offsets (regions are aligned).
/// * Downloads: large buffers from `mmap` start 16 bytes into a page (the allocator's header).
///   `read` of 256 KiB from a cached file measured 2.4 GB/s into such a buffer, 12 GB/s at
///   offsets 0, 32, 64 or 2048 (BENCHMARKS.md, round 5).
/// * Uploads: a buffer from the heap may start anywhere. `pwrite` of 256 KiB to a page-aligned
///   offset measured 1.7 GB/s from a source 16 bytes before a page boundary, 7.2-8.1 GB/s from
///   sources 0, 16, 32, 48, 64, 2048, 4032 or 4064 bytes into a page; one upload run whose
///   buffers landed badly spent half its CPU in that copy (BENCHMARKS.md, round 7).
pub(crate) const BATCH_ALIGN: usize = 64;

/// The size of the pool's buffers: one batch, its padding block and its alignment.
const BUFFER: usize = BATCH + crypto::BLOCK + BATCH_ALIGN;

/// Where the batch in `buf` starts (see [`BATCH_ALIGN`]): the bytes before it are not part of
/// it. Always a whole number of blocks, so that padding the buffer pads the batch: with an
/// allocator that returned an address off a 16-byte boundary, the batch would start off its
/// cache line (and copy slower), never with the wrong padding.
pub(crate) fn batch_start(buf: &[u8]) -> usize {
    let skip = buf.as_ptr().align_offset(BATCH_ALIGN);
    skip - skip % crypto::BLOCK
}

/// `buf`, emptied, with its batch starting on a cache line: the batch is `buf[batch_start..]`.
fn empty_batch(mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    let skip = batch_start(&buf);
    buf.resize(skip, 0);
    buf
}

/// An empty batch in a buffer of [`BUFFER`] bytes' room, from the pool if it has one: it starts
/// at [`batch_start`], on a cache line.
pub(crate) fn take_buffer() -> Vec<u8> {
    let reused = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    empty_batch(reused.unwrap_or_else(|| Vec::with_capacity(BUFFER)))
}

/// Gives `buf` back to the pool, if it is one of its size and the pool has room.
pub(crate) fn give_buffer(mut buf: Vec<u8>) {
    if buf.capacity() < BUFFER {
        return;
    }
    buf.clear();
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(buf);
    }
}

/// Whether a chunk's batches may be sealed and written on the runtime's own thread, rather than
/// handed to a blocking thread.
///
/// The hand-off cost 18% of a fast upload's server CPU (1.52, 1.52, 1.36 against 1.24, 1.24,
/// 1.24 CPU-s/GiB in alternating sets, BENCHMARKS.md, round 8): two wake-ups per batch, and
/// probably the batch's cache lines moving to another core and back (the split was not
/// measured). Sealing and writing a batch to the page cache should take about 0.1 ms, by the
/// in-memory rates of round 7. But the kernel's dirty-page throttling pauses a writer for up to
/// 200 ms at a time (its `MAX_PAUSE`; not measured here) when dirty pages outrun the disk, and a
/// runtime thread held there stalls every connection it serves. So a write that takes longer
/// than [`SLOW_WRITE`], on any thread, closes the gate for [`HOLD_BACK`]: meanwhile every batch
/// goes to a blocking thread, as all did before, and the slow writes there keep it closed.
/// Whatever the gate, the first batch of an upload's first chunk (it creates the data file) is
/// written on a blocking thread. In fast mode the gate also decides where a chunk's last batch
/// and its commit go ([`land_here`]), and the commit is timed like a write.
pub struct WriteGate {
    epoch: Instant,
    /// Nanoseconds after `epoch` until which the gate is closed.
    closed_until: AtomicU64,
}

/// Sealing and writing one batch (with its region's reservation, for a chunk's first) taking
/// longer than this was held back by the kernel. It should take about 0.1 ms (see
/// [`WriteGate`]); a runtime thread waiting for the CPU on a busy machine, which the wall clock
/// counts too, may wait a few. It was not reached in the three fast upload runs of round 8
/// whose server log was kept.
pub const SLOW_WRITE: Duration = Duration::from_millis(10);
/// How long one slow write keeps the gate closed.
pub const HOLD_BACK: Duration = Duration::from_secs(10);

impl WriteGate {
    pub fn new() -> Self {
        WriteGate {
            epoch: Instant::now(),
            closed_until: AtomicU64::new(0),
        }
    }

    fn at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Whether batches may be written on the runtime's thread now.
    pub fn is_open(&self) -> bool {
        self.is_open_at(Instant::now())
    }

    fn is_open_at(&self, now: Instant) -> bool {
        self.at(now) >= self.closed_until.load(Ordering::Relaxed)
    }

    /// Records a batch's write that began at `started` and has just ended: a slow one closes
    /// the gate, and each closing is counted in `metrics` and logged once.
    fn written(&self, started: Instant, metrics: &Metrics) {
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        if self.record(took, now) {
            metrics.writes_held_back.inc();
            tracing::warn!(
                ms = took.as_millis() as u64,
                "a chunk write was held back by the kernel (the disk is behind): chunk writes \
                 go to blocking threads for the next {} s",
                HOLD_BACK.as_secs()
            );
        }
    }

    /// Records a batch's write that took `took`, up to `now`: a slow one closes the gate.
    /// Returns whether it closed an open gate, so that each closing is reported once.
    fn record(&self, took: Duration, now: Instant) -> bool {
        if took < SLOW_WRITE {
            return false;
        }
        let was_open = self.is_open_at(now);
        self.closed_until
            .fetch_max(self.at(now + HOLD_BACK), Ordering::Relaxed);
        was_open
    }
}

impl Default for WriteGate {
    fn default() -> Self {
        Self::new()
    }
}

/// Streams plaintext into a chunk's region through the cipher, one batch at a time: sealed and
/// written where [`WriteGate`] says, never holding more than two batches.
pub struct ChunkWriter {
    idle: Option<Sealing>,
    pending: Option<Pending>,
    buf: Vec<u8>,
    spare: Option<Vec<u8>>,
}

impl ChunkWriter {
    fn new(
        app: &Arc<App>,
        upload_id: &str,
        room: u64,
        cipher: Arc<FileCipher>,
        number: u64,
    ) -> Self {
        let sealing = Sealing {
            app: Arc::clone(app),
            upload_id: upload_id.to_string(),
            room,
            region: None,
            cipher,
            nonce: crypto::random_u64(),
            number,
            next_segment: 0,
            hasher: XxHash3_64::new(),
        };
        ChunkWriter {
            idle: Some(sealing),
            pending: None,
            buf: take_buffer(),
            spare: None,
        }
    }

    async fn push(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let end = batch_start(&self.buf) + BATCH;
            if self.buf.len() == end {
                self.flush().await?;
                continue;
            }
            let take = (end - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data.advance(take);
        }
        Ok(())
    }

    async fn settle(&mut self) -> Result<Sealing> {
        match self.pending.take() {
            Some(h) => {
                let (sealing, spare) = h.await??;
                self.spare = Some(spare);
                Ok(sealing)
            }
            None => Ok(self.idle.take().expect("the writer holds its state")),
        }
    }

    /// Seals and writes the full batch: here, on the runtime's thread, where
    /// [`Sealing::inline_ok`]; otherwise on a blocking thread, while the next batch is read.
    async fn flush(&mut self) -> Result<()> {
        let mut sealing = self.settle().await?;
        let next = self.spare.take().map_or_else(take_buffer, empty_batch);
        let mut buf = std::mem::replace(&mut self.buf, next);
        if sealing.inline_ok() {
            sealing.write(&mut buf, false)?;
            self.idle = Some(sealing);
            self.spare = Some(buf);
            return Ok(());
        }
        self.pending = Some(tokio::task::spawn_blocking(move || {
            sealing.write(&mut buf, false)?;
            Ok((sealing, buf))
        }));
        Ok(())
    }

    /// Waits for the batch in flight, and returns the state with the last batch, unsealed.
    async fn finish(mut self) -> Result<(Sealing, Vec<u8>)> {
        let sealing = self.settle().await?;
        Ok((sealing, std::mem::take(&mut self.buf)))
    }
}

impl Drop for ChunkWriter {
    /// Hands the batches back to the pool (a batch still on a blocking thread is freed there).
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.buf));
        if let Some(spare) = self.spare.take() {
            give_buffer(spare);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_write_closes_the_gate_for_a_while() {
        let gate = WriteGate::new();
        let t = Instant::now();
        assert!(gate.is_open_at(t));
        assert!(!gate.record(SLOW_WRITE - Duration::from_micros(1), t));
        assert!(gate.is_open_at(t), "a write under the limit leaves it open");
        assert!(gate.record(SLOW_WRITE, t), "the first slow write closes it");
        assert!(!gate.is_open_at(t));
        assert!(!gate.is_open_at(t + HOLD_BACK - Duration::from_millis(1)));
        assert!(gate.is_open_at(t + HOLD_BACK));
        // A slow write while it is closed keeps it closed longer, and is not reported again.
        let later = t + HOLD_BACK / 2;
        assert!(!gate.record(5 * SLOW_WRITE, later));
        assert!(!gate.is_open_at(t + HOLD_BACK));
        assert!(gate.is_open_at(later + HOLD_BACK));
        // A write recorded before a later one closed the gate does not shorten the wait.
        assert!(!gate.record(SLOW_WRITE, t));
        assert!(!gate.is_open_at(t + HOLD_BACK));
    }

    /// Chunks of several batches, pushed in pieces that do not line up with them, read back
    /// whole with the gate open (batches written on the runtime's thread, but for the one that
    /// creates the data file) and closed (on blocking threads).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_store_the_same_bytes_on_either_side_of_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::open(crate::Config::for_data_dir(dir.path())).unwrap();
        let cipher = Arc::new(
            app.file_cipher(&app.key.wrap(&FileKeys::generate()))
                .unwrap(),
        );
        let len = 3 * BATCH + 1000;
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        for closed in [false, true] {
            if closed {
                app.write_gate.record(SLOW_WRITE, Instant::now());
            }
            let id = new_id();
            for number in [1, 2] {
                let room = crypto::sealed_len(len as u64);
                let mut writer = ChunkWriter::new(&app, &id, room, Arc::clone(&cipher), number);
                // Where a batch went: a blocking thread leaves it pending. That is the first
                // batch of the first chunk, else only where the gate was closed (by this test,
                // or by a write the kernel held back, which the metric counts).
                let on_blocking = |w: &ChunkWriter| w.pending.is_some();
                let held = || closed || app.metrics.writes_held_back.get() > 0;
                writer
                    .push(Bytes::copy_from_slice(&plain[..BATCH + 1]))
                    .await
                    .unwrap();
                assert_eq!(
                    on_blocking(&writer),
                    number == 1 || held(),
                    "first, {closed}"
                );
                for piece in plain[BATCH + 1..].chunks(100_000) {
                    writer.push(Bytes::copy_from_slice(piece)).await.unwrap();
                }
                assert_eq!(
                    on_blocking(&writer),
                    held(),
                    "third batch, closed: {closed}"
                );
                let (sealing, rest) = writer.finish().await.unwrap();
                let written = Written {
                    sealing,
                    rest,
                    len: len as u64,
                };
                let sealed = tokio::task::spawn_blocking(move || written.seal_rest())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(sealed.row.hash, XxHash3_64::oneshot(&plain));
                let mut got = Vec::new();
                let sent = crate::download::read_chunk(
                    &app.spool,
                    &cipher,
                    &id,
                    &sealed.row,
                    0,
                    len as u64,
                    &mut |p: Bytes| {
                        got.extend_from_slice(&p);
                        true
                    },
                );
                assert!(sent.unwrap());
                assert!(
                    got == plain,
                    "chunk {number}, closed: {closed}: bytes differ"
                );
            }
        }
    }

    /// In fast mode a chunk lands on the runtime's thread: with the one blocking thread taken,
    /// a chunk in the middle of an upload still stores and commits. With the index busy, the
    /// commit waits for it on a blocking thread; the completing chunk settles there too.
    #[test]
    fn chunks_land_on_the_runtime_thread_in_fast_mode() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::Config::for_data_dir(dir.path());
        config.storage.durability = Durability::Fast;
        let app = App::open(config).unwrap();
        let size = 2 * BATCH + 100;
        let plain: Vec<u8> = (0..4 * size).map(|i| (i * 7 % 251) as u8).collect();
        let req = |n: usize| {
            Params::from_query(Some(&format!(
                "resumableChunkNumber={n}&resumableChunkSize={size}&resumableTotalSize={}&\
                 resumableIdentifier=id&resumableFilename=f.bin",
                4 * size
            )))
            .unwrap()
            .chunk(None)
            .unwrap()
        };
        let (up, _, _) = app
            .index
            .find_or_create("", &req(1), ("test", 0), || {
                (new_id(), new_id(), app.key.wrap(&FileKeys::generate()))
            })
            .unwrap();
        let cipher = Arc::new(app.file_cipher(&up.wrapped_keys).unwrap());
        let write = |n: usize| {
            let (app, cipher, id) = (&app, Arc::clone(&cipher), up.id.clone());
            let bytes = Bytes::copy_from_slice(&plain[(n - 1) * size..n * size]);
            async move {
                let room = crypto::sealed_len(size as u64);
                let mut writer = ChunkWriter::new(app, &id, room, cipher, n as u64);
                writer.push(bytes).await.unwrap();
                let (sealing, rest) = writer.finish().await.unwrap();
                let written = Written {
                    sealing,
                    rest,
                    len: size as u64,
                };
                land_here(app, written, id, req(n).declared).await
            }
        };
        let stored = |c: Result<Commit>| match c.unwrap() {
            Commit::Stored {
                received,
                completed,
                ..
            } => (received, completed),
            other => panic!("{other:?}"),
        };
        rt.block_on(async {
            // The first chunk creates the data file, on the blocking thread.
            assert_eq!(stored(write(1).await), (1, false));
            let (free, taken) = std::sync::mpsc::channel::<()>();
            let sleeper = tokio::task::spawn_blocking(move || taken.recv());
            let mut second = std::pin::pin!(write(2));
            let early = tokio::time::timeout(Duration::from_secs(20), &mut second).await;
            free.send(()).unwrap();
            let second = match early {
                Ok(done) => done,
                // Only if the kernel held a write back, and the gate sent batches to blocking
                // threads.
                Err(_) => {
                    let held = app.metrics.writes_held_back.get();
                    assert!(held > 0, "the second chunk waited for a blocking thread");
                    second.await
                }
            };
            sleeper.await.unwrap().unwrap();
            assert_eq!(stored(second), (2, false));
            // The index busy for a while: the commit waits for it on the blocking thread.
            let (locked, is_locked) = std::sync::mpsc::channel();
            let holder = {
                let app = Arc::clone(&app);
                std::thread::spawn(move || {
                    let held = app.index.hold_for_test();
                    locked.send(()).unwrap();
                    std::thread::sleep(Duration::from_secs(1));
                    drop(held);
                })
            };
            is_locked.recv().unwrap();
            assert_eq!(stored(write(3).await), (3, false));
            holder.join().unwrap();
            assert_eq!(stored(write(4).await), (4, true));
        });
        let mut got = Vec::new();
        for row in app.index.chunks(&up.id).unwrap() {
            let sent = crate::download::read_chunk(
                &app.spool,
                &cipher,
                &up.id,
                &row,
                0,
                row.len,
                &mut |p: Bytes| {
                    got.extend_from_slice(&p);
                    true
                },
            );
            assert!(sent.unwrap());
        }
        assert!(got == plain, "the file's bytes differ");
    }

    /// Every batch starts on a cache line and has room for a whole batch and its padding,
    /// whatever address its buffer has: slices at each offset of one buffer stand for the
    /// addresses an allocator may return (an `mmap` 16 bytes into a page, a heap chunk anywhere
    /// on 16 bytes). Off a 16-byte boundary the batch cannot be aligned, but still starts on a
    /// whole block, so padding the buffer pads the batch.
    #[test]
    fn batches_start_on_a_cache_line_with_room_for_a_batch() {
        let big = vec![0u8; 4096];
        let base = big.as_ptr().align_offset(BATCH_ALIGN);
        for off in 0..BATCH_ALIGN {
            let at = &big[base + off..];
            let skip = batch_start(at);
            assert_eq!(skip % crypto::BLOCK, 0, "padding the buffer pads the batch");
            assert!(skip + BATCH + crypto::BLOCK <= BUFFER, "room for a batch");
            if off % crypto::BLOCK == 0 {
                assert_eq!(
                    (at.as_ptr() as usize + skip) % BATCH_ALIGN,
                    0,
                    "offset {off}"
                );
            }
        }
        // A buffer from the pool holds only the bytes before its batch, and filling and padding
        // the batch does not move it.
        let mut buf = take_buffer();
        let skip = batch_start(&buf);
        assert_eq!(
            buf.len(),
            skip,
            "the bytes before the batch are all it holds"
        );
        assert_eq!((buf.as_ptr() as usize + skip) % BATCH_ALIGN, 0);
        let before = buf.as_ptr();
        buf.resize(skip + BATCH, 7);
        crypto::pad(&mut buf);
        assert_eq!(buf.as_ptr(), before);
        assert_eq!(batch_start(&buf), skip);
        assert_eq!(
            buf.len() - skip,
            BATCH + crypto::BLOCK,
            "a whole padding block"
        );
        give_buffer(buf);
    }
}
