//! Serving a complete file: streaming decryption in bounded memory, a single `Range`,
//! conditional requests, and a `Content-Disposition` no filename can break.
//!
//! The body is produced on a blocking thread, one batch of segments at a time, into a channel
//! of a few batches. Every chunk a response touches is checked whole against its recorded length
//! and hash, for ranges too; the last piece of a chunk is sent only after the check passes, and
//! a failed check (or read) ends the stream with an error, which aborts the connection. So a
//! client never receives a corrupt file, or a corrupt range, that looks complete.

use std::hash::Hasher as _;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode, header};
use twox_hash::XxHash3_64;

use crate::access;
use crate::app::App;
use crate::body::{self, Body, BoxError, RequestBody};
use crate::crypto::{self, BLOCK, FileCipher, SEGMENT};
use crate::error::{Error, Result};
use crate::previews;
use crate::protocol::Params;
use crate::store::{ChunkRow, FileRow, Spool};
use crate::upload;

/// Bytes decrypted at a time (whole segments): the upload path's batch, so downloads take their
/// buffers from the same pool ([`upload::take_buffer`]), which took nine tenths of a download's
/// page faults away. The CPU it saved came only with each batch starting on a cache line
/// (BENCHMARKS.md, round 5).
const BATCH: usize = upload::BATCH;
/// Batches buffered between the reader thread and the socket (512 KiB).
const IN_FLIGHT: usize = 2;

/// `GET` or `HEAD /files/{id}`: anonymous, or with `--require-auth` the caller's own files,
/// with a token or a signed link.
pub async fn download(
    app: &Arc<App>,
    req: Request<RequestBody>,
    file_id: String,
) -> Result<Response<Body>> {
    let scope = readable_scope(app, &req, &file_id)?;
    serve_file(app, req, scope, file_id).await
}

/// `GET` or `HEAD /files/{id}/thumbnails/{index}`: the same rules as the download.
pub async fn thumbnail(
    app: &Arc<App>,
    req: Request<RequestBody>,
    file_id: String,
    idx: u32,
) -> Result<Response<Body>> {
    let scope = readable_scope(app, &req, &file_id)?;
    serve_thumbnail(app, req, scope, file_id, idx).await
}

/// The scope a `/files/{id}…` request reads in: the anonymous one, or with `--require-auth` the
/// caller's (a token in the header or `?token=`), or the one a signed link names.
fn readable_scope(app: &App, req: &Request<RequestBody>, file_id: &str) -> Result<String> {
    if !app.config.auth.require_auth {
        return Ok(access::ANONYMOUS.to_string());
    }
    let query = Params::from_query(req.uri().query())?;
    if query.get(&["sig"])?.is_none() {
        return access::core_scope(app, req.headers(), Some(&query));
    }
    // A signed link names its scope: the signature was made for (scope, file) only.
    let scope = query.get(&["scope"])?.unwrap_or_default().to_string();
    access::signed(app, &query, &scope, file_id)?;
    Ok(scope)
}

/// Serves the complete file `file_id` of `scope`, or 404.
pub async fn serve_file(
    app: &Arc<App>,
    req: Request<RequestBody>,
    scope: String,
    file_id: String,
) -> Result<Response<Body>> {
    let file = app
        .blocking(move |app| {
            let file = app
                .index
                .file(&scope, &file_id)?
                .ok_or(Error::NotFound("file"))?;
            check_spool(app, &file)?;
            Ok(file)
        })
        .await?;
    serve(app, &req, file)
}

/// Serves thumbnail `idx` of the file `file_id` of `scope`, decrypted and verified, or 404.
pub async fn serve_thumbnail(
    app: &Arc<App>,
    req: Request<RequestBody>,
    scope: String,
    file_id: String,
    idx: u32,
) -> Result<Response<Body>> {
    let (id, png) = app
        .blocking(move |app| previews::read(app, &scope, &file_id, idx))
        .await?
        .ok_or(Error::NotFound("thumbnail"))?;
    // Immutable bytes under their own id, so the ETag is that id.
    let etag = format!("\"{id}\"");
    let builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "private, max-age=3600")
        .header("x-content-type-options", "nosniff");
    let h = req.headers();
    if h.get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag))
    {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(body::empty())
            .map_err(|e| Error::Internal(e.to_string()));
    }
    let head = req.method() == Method::HEAD;
    builder
        .header(header::CONTENT_TYPE, "image/png")
        .header(header::CONTENT_LENGTH, png.len())
        .body(if head { body::empty() } else { body::full(png) })
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Checks before any header is sent that every chunk's bytes are there, by size and
/// allocation.
fn check_spool(app: &App, file: &FileRow) -> Result<()> {
    match app
        .spool
        .missing_chunks(&file.upload_id, &file.chunks)
        .pop()
    {
        Some((_, why)) => Err(Error::Corrupt(why)),
        None => Ok(()),
    }
}

/// Builds the response for a complete file: headers, conditionals, range, streamed body.
pub fn serve(app: &Arc<App>, req: &Request<RequestBody>, file: FileRow) -> Result<Response<Body>> {
    let len = file.shape.total_size;
    let etag = format!("\"{}\"", file.upload_id);
    let modified = UNIX_EPOCH + Duration::from_secs((file.completed_at / 1000).max(0) as u64);
    let last_modified = httpdate::fmt_http_date(modified);
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok());

    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, no-cache");

    if let Some(inm) = text(header::IF_NONE_MATCH)
        && etag_matches(inm, &etag)
    {
        return Ok(builder
            .status(StatusCode::NOT_MODIFIED)
            .body(body::empty())
            .expect("valid"));
    }

    let range_applies = match text(header::IF_RANGE) {
        None => true,
        Some(v) if v.starts_with('"') => v == etag,
        Some(v) => httpdate::parse_http_date(v).is_ok_and(|t| t == modified),
    };
    let range = match text(header::RANGE) {
        Some(r) if range_applies => parse_range(r, len),
        _ => RangeSpec::Full,
    };
    let (status, start, end) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Partial(a, b) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        RangeSpec::Unsatisfiable => return Err(Error::RangeNotSatisfiable(len)),
    };
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    let builder = builder
        .status(status)
        .header(header::CONTENT_TYPE, safe_content_type(&file.mime))
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::CONTENT_DISPOSITION, content_disposition(&file.name))
        .header("x-content-type-options", "nosniff")
        .header("content-security-policy", "sandbox");
    let body = if req.method() == Method::HEAD || start == end {
        body::empty()
    } else {
        stream_plaintext(app, file, start, end)
    };
    builder
        .body(body)
        .map_err(|e| Error::Internal(e.to_string()))
}

fn etag_matches(header_value: &str, etag: &str) -> bool {
    header_value
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// The outcome of a `Range` header against a file of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable range: serve the whole file (also for syntax chunkd does not serve, such as
    /// several ranges, which RFC 9110 lets a server ignore).
    Full,
    /// Bytes `a..=b`.
    Partial(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=` range (RFC 9110 §14.1.2).
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeSpec::Full,
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if len == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Partial(len - n.min(len), len - 1),
        },
        (first, last) => {
            let Some(first) = num(first) else {
                return RangeSpec::Full;
            };
            let last = if last.is_empty() {
                u64::MAX
            } else {
                match num(last) {
                    Some(l) if l >= first => l,
                    // A last position before the first, or one that overflows, is invalid
                    // syntax... unless it is huge, which just means "to the end".
                    None if last.bytes().all(|c| c.is_ascii_digit()) => u64::MAX,
                    _ => return RangeSpec::Full,
                }
            };
            if first >= len {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Partial(first, last.min(len - 1))
            }
        }
    }
}

/// The type to serve: the client's, if it is a plain `type/subtype`; else octet-stream.
pub fn safe_content_type(mime: &str) -> String {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match mime.split_once('/') {
        Some((t, s)) if token(t) && token(s) => mime.to_ascii_lowercase(),
        _ => "application/octet-stream".to_string(),
    }
}

/// `attachment` with an ASCII fallback name and the exact name in RFC 8187 `filename*`. Quotes,
/// backslashes, semicolons, slashes and control characters cannot reach the quoted fallback.
pub fn content_disposition(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let base = if base.is_empty() || base == "." || base == ".." {
        "download"
    } else {
        base
    };
    let fallback: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !"\"\\;%".contains(c) || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let exact = percent_encoding::utf8_percent_encode(base, ATTR);
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}")
}

/// Streams plaintext bytes `start..end` of a file from a blocking reader thread.
fn stream_plaintext(app: &Arc<App>, file: FileRow, start: u64, end: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(IN_FLIGHT);
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || {
        let send = |bytes: Bytes| tx.blocking_send(Ok(bytes)).is_ok();
        if let Err(e) = read_range(&app, &file, start, end, send) {
            tracing::error!(file_id = %file.id, error = %e, "download aborted");
            let _ = tx.blocking_send(Err(Box::new(e)));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    StreamBody::new(stream).boxed()
}

/// Reads a whole complete file into memory, verified, for a caller that needs it at once (the
/// preview maker, which bounds the size first).
pub fn read_all(app: &App, file: &FileRow) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(file.shape.total_size as usize);
    read_range(app, file, 0, file.shape.total_size, |b: Bytes| {
        out.extend_from_slice(&b);
        true
    })?;
    Ok(out)
}

/// Decrypts and hands bytes `start..end` to `send`, chunk by chunk. Stops quietly when `send`
/// returns false (the client left).
///
/// Every chunk the range touches is read and hashed whole, even for a one-byte range (see
/// [`read_chunk`]). The price is decrypting whole chunks for a small range (fast: CBC
/// decryption runs in parallel); memory stays at one batch.
fn read_range(
    app: &App,
    file: &FileRow,
    start: u64,
    end: u64,
    mut send: impl FnMut(Bytes) -> bool,
) -> Result<()> {
    let cipher = app.file_cipher(&file.wrapped_keys)?;
    let cs = file.shape.chunk_size.unwrap_or(file.shape.total_size);
    for c in &file.chunks {
        let base = (c.number - 1) * cs;
        let (a, b) = (start.max(base), end.min(base + c.len));
        if a >= b {
            continue;
        }
        if !read_chunk(
            &app.spool,
            &cipher,
            &file.upload_id,
            c,
            a - base,
            b - base,
            &mut send,
        )? {
            return Ok(());
        }
    }
    Ok(())
}

/// Decrypts chunk `c` of upload `upload_id` whole, checks its length, padding and hash, and
/// hands its plaintext bytes `a..b` (offsets in the chunk) to `send`. Returns false if `send`
/// did (the reader left). Downloads, previews and `chunkd verify` all read chunks through this.
///
/// The last piece sent from the chunk is held back until the chunk has passed its checks: a
/// range of a damaged chunk fails like a full read does.
pub fn read_chunk(
    spool: &Spool,
    cipher: &FileCipher,
    upload_id: &str,
    c: &ChunkRow,
    a: u64,
    b: u64,
    send: &mut impl FnMut(Bytes) -> bool,
) -> Result<bool> {
    let sealed = crypto::sealed_len(c.len);
    let corrupt =
        |what: String| Error::Corrupt(format!("chunk {} of upload {upload_id}: {what}", c.number));
    let (mut f, start) = spool
        .open_chunk(upload_id, c)
        .map_err(|e| corrupt(e.to_string()))?;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| corrupt(e.to_string()))?;
    let mut hasher = XxHash3_64::new();
    let mut held: Option<Bytes> = None;
    let mut pos = 0u64;
    while pos < sealed {
        let n = (BATCH as u64).min(sealed - pos) as usize;
        // Each batch is read into a pooled buffer of its own, decrypted in place and sent as a
        // slice of it: no copy between the disk and the socket. The buffer goes back to the pool
        // when the socket has sent it, or here when it is not sent.
        let mut lent = Lent(upload::take_buffer());
        let buf = &mut lent.0;
        // The batch starts on a cache line: see `upload::BATCH_ALIGN`.
        let skip = upload::batch_start(buf);
        // `read_to_end` through `Take` grows its reads from 8 KiB, doubling: six `read`s per
        // 256 KiB batch. One `read` into a zeroed batch measured costlier (the zeroing), so the
        // batch stays uninitialized until the kernel fills it (BENCHMARKS.md, round 5).
        (&mut f)
            .take(n as u64)
            .read_to_end(buf)
            .map_err(|e| corrupt(e.to_string()))?;
        let data = &mut buf[skip..];
        if data.len() != n {
            return Err(corrupt(format!("ends {} bytes early", n - data.len())));
        }
        cipher.open_segments(
            c.nonce,
            c.number as u32,
            (pos / SEGMENT as u64) as u32,
            data,
        );
        let plain_end = (pos + n as u64).min(c.len);
        hasher.write(&data[..(plain_end - pos) as usize]);
        if pos + n as u64 == sealed {
            check_padding(data, c.len - pos).map_err(|_| corrupt("bad padding".into()))?;
        }
        let (from, to) = (a.max(pos), b.min(plain_end));
        if to > from {
            let at = |x: u64| skip + (x - pos) as usize;
            let piece = Bytes::from_owner(lent).slice(at(from)..at(to));
            if let Some(prev) = held.replace(piece)
                && !send(prev)
            {
                return Ok(false);
            }
        }
        pos += n as u64;
    }
    // A chunk in a file of its own: bytes past the recorded length are damage too. (In a data
    // file, other regions follow.)
    let mut extra = [0u8; 1];
    if c.pos.is_none() && f.read(&mut extra).map_err(|e| corrupt(e.to_string()))? != 0 {
        return Err(corrupt("longer than recorded".into()));
    }
    if hasher.finish() != c.hash {
        return Err(corrupt("fails its hash".into()));
    }
    Ok(held.is_none_or(send))
}

/// A batch buffer lent by the pool, given back when its last piece is dropped (sent, or the
/// response dropped), or when the batch is not sent at all.
struct Lent(Vec<u8>);

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        upload::give_buffer(std::mem::take(&mut self.0));
    }
}

/// Checks the PKCS#7 padding after the chunk's last plaintext byte (`plain` bytes into `buf`).
pub fn check_padding(buf: &[u8], plain: u64) -> Result<()> {
    let p = buf.len() as u64 - plain;
    let ok =
        (1..=BLOCK as u64).contains(&p) && buf[plain as usize..].iter().all(|&x| x as u64 == p);
    if ok {
        Ok(())
    } else {
        Err(Error::Corrupt("bad padding".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    /// Reads and checks chunk `c`'s bytes `a..b`, keeping the pieces as sent.
    fn pieces(spool: &Spool, cipher: &FileCipher, c: &ChunkRow, a: u64, b: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let sent = read_chunk(spool, cipher, ID, c, a, b, &mut |p: Bytes| {
            out.push(p);
            true
        });
        assert!(sent.unwrap(), "the reader never refused a piece");
        out
    }

    /// The chunk hash is xxh3-64, as the index of every earlier version stored it: twox-hash's
    /// (AVX2 where the CPU has it, detected at run time) against xxhash-rust's, which computed
    /// it before, for lengths through each of xxh3's code paths, fed whole and in pieces.
    #[test]
    fn chunk_hash_is_the_xxh3_the_index_stored_before() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 1025, 65_536, 262_160, 300_000,
        ] {
            let want = xxhash_rust::xxh3::xxh3_64(&data[..len]);
            assert_eq!(XxHash3_64::oneshot(&data[..len]), want, "{len} bytes");
            for piece in [1, 63, 64, 1000, 16_384] {
                let mut h = XxHash3_64::new();
                for p in data[..len].chunks(piece) {
                    h.write(p);
                }
                assert_eq!(h.finish(), want, "{len} bytes in pieces of {piece}");
            }
        }
    }

    #[test]
    fn chunks_are_read_in_batches_that_start_on_a_cache_line() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool"), crate::config::Durability::Fast).unwrap();
        let raw: [u8; 48] = std::array::from_fn(|i| (i * 29 + 3) as u8);
        let cipher = FileCipher::new(
            &crypto::GlobalKey::from_bytes(&raw),
            &crypto::FileKeys::generate(),
        );
        // Two full batches and a short third.
        let len = 2 * BATCH as u64 + 4099;
        let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut sealed = plain.clone();
        crypto::pad(&mut sealed);
        cipher.seal_segments(7, 1, 0, &mut sealed);
        let region = spool.reserve(ID, sealed.len() as u64).unwrap();
        region.file.write_all_at(&sealed, region.pos).unwrap();
        let c = ChunkRow {
            number: 1,
            len,
            nonce: 7,
            hash: XxHash3_64::oneshot(&plain),
            pos: Some(region.pos),
        };
        // Whole, every piece is a whole batch, and starts on a cache line.
        let whole = pieces(&spool, &cipher, &c, 0, len);
        assert_eq!(whole.len(), 3);
        for p in &whole {
            assert_eq!(
                p.as_ptr() as usize % upload::BATCH_ALIGN,
                0,
                "a batch off its line"
            );
        }
        assert_eq!(whole.concat(), plain);
        // A range from the middle of the first batch into the third skips nothing.
        let (a, b) = (BATCH as u64 - 5, 2 * BATCH as u64 + 10);
        assert_eq!(
            pieces(&spool, &cipher, &c, a, b).concat(),
            &plain[a as usize..b as usize]
        );
        // A range inside the second batch alone, so the other two are read, checked, not sent.
        let (a, b) = (BATCH as u64 + 1, BATCH as u64 + 100);
        let inner = pieces(&spool, &cipher, &c, a, b);
        assert_eq!(inner.len(), 1);
        assert_eq!(inner[0], &plain[a as usize..b as usize]);
        // A damaged byte in the third batch fails the range in the second too.
        region
            .file
            .write_all_at(
                &[sealed[2 * BATCH + 9] ^ 1],
                region.pos + 2 * BATCH as u64 + 9,
            )
            .unwrap();
        let err = read_chunk(&spool, &cipher, ID, &c, a, b, &mut |_| true).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    }

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-0", 10), Partial(0, 0));
        assert_eq!(parse_range("bytes=2-", 10), Partial(2, 9));
        assert_eq!(parse_range("bytes=-3", 10), Partial(7, 9));
        assert_eq!(parse_range("bytes=-30", 10), Partial(0, 9));
        assert_eq!(parse_range("bytes=5-100", 10), Partial(5, 9));
        assert_eq!(
            parse_range("bytes=5-99999999999999999999999", 10),
            Partial(5, 9)
        );
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 10), Full);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Full);
        assert_eq!(parse_range("items=0-1", 10), Full);
        assert_eq!(parse_range("bytes=a-b", 10), Full);
        assert_eq!(parse_range("bytes=-", 10), Full);
    }

    #[test]
    fn dispositions_cannot_break_out() {
        let cd = content_disposition("a\"; filename=evil.html; x=\"\r\n.txt");
        assert!(!cd.contains('\r') && !cd.contains('\n'));
        let fallback = cd
            .split("filename=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(!fallback.contains(';'));
        assert!(cd.ends_with(".txt"));
        assert_eq!(
            content_disposition("résumé 1.pdf"),
            "attachment; filename=\"r_sum_ 1.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.pdf"
        );
        assert!(content_disposition("../../etc/passwd").contains("filename=\"passwd\""));
        assert!(content_disposition("..").contains("filename=\"download\""));
    }

    #[test]
    fn content_types() {
        assert_eq!(safe_content_type("image/png"), "image/png");
        assert_eq!(safe_content_type(""), "application/octet-stream");
        assert_eq!(
            safe_content_type("text/html\r\nx: y"),
            "application/octet-stream"
        );
        assert_eq!(
            safe_content_type("text/html; charset=utf-8"),
            "application/octet-stream"
        );
    }
}
