//! Thumbnails of complete uploads: made in the background after completion, stored encrypted
//! like everything else, read back verified.
//!
//! Making one decodes an image ([`crate::thumbs`]), which costs CPU and memory: jobs take a slot
//! of a small pool (half the cores) so that previews never starve chunk uploads, and sources
//! larger than [`MAX_SOURCE`] are not decoded at all. An upload's state goes from `waiting` to
//! `done` (with or without a thumbnail: a file that is not an image has none) or `error`, and
//! never claims `done` for a preview that failed. A stop mid-job leaves `waiting`, and the job
//! is queued again on the next start ([`resume`]).

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use twox_hash::XxHash3_64;

use crate::app::App;
use crate::crypto::{self, FileCipher};
use crate::download;
use crate::error::{Error, Result};
use crate::store::files::{THUMBS_DONE, THUMBS_ERROR, THUMBS_WAITING};
use crate::store::{Spool, ThumbRow};
use crate::thumbs;
use crate::upload::new_id;

/// Largest file decoded for a preview. Decoding needs the whole file in memory.
pub const MAX_SOURCE: u64 = 64 << 20;

/// The preview pool, and a signal for those waiting on a result (`thumbnail_sync=1`).
pub struct Previews {
    slots: Semaphore,
    done: watch::Sender<u64>,
}

impl Previews {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Previews {
            slots: Semaphore::new((cores / 2).max(1)),
            done: watch::Sender::new(0),
        }
    }
}

impl Default for Previews {
    fn default() -> Self {
        Self::new()
    }
}

/// A thumbnail as replies list it: the Files API's resources and the chunk endpoint's status.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub index: u32,
    pub id: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub width: u32,
    pub height: u32,
    /// Where it is served, with whatever the caller needs to open it from an `<img src>`.
    pub url: String,
}

impl Listed {
    pub fn new(t: &ThumbRow, url: String) -> Self {
        Listed {
            index: t.idx,
            id: t.id.clone(),
            size: t.len,
            kind: "image/png",
            width: t.width,
            height: t.height,
            url,
        }
    }
}

/// The tweak's chunk field for thumbnail `idx`: far above any real chunk number, so a
/// thumbnail's IVs are separate from its file's chunks even before the random nonce.
fn thumb_tag(idx: u32) -> u32 {
    u32::MAX - idx
}

/// Makes the previews of a complete upload in the background.
pub fn queue(app: &Arc<App>, upload_id: String) {
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let Ok(_slot) = app.previews.slots.acquire().await else {
            return;
        };
        let id = upload_id.clone();
        if let Err(e) = app.blocking(move |app| make(app, &id)).await {
            tracing::warn!(%upload_id, error = %e, "preview job failed; it runs again on restart");
        }
        app.previews.done.send_modify(|n| *n += 1);
    });
}

/// Queues every complete upload still waiting for its previews (at start).
pub fn resume(app: &Arc<App>) -> Result<()> {
    for id in app.index.thumbs_waiting()? {
        queue(app, id);
    }
    Ok(())
}

/// Waits until the upload's previews are no longer `waiting`, or `timeout` passes.
pub async fn wait(app: &Arc<App>, upload_id: &str, timeout: Duration) {
    let mut done = app.previews.done.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let id = upload_id.to_string();
        match app.blocking(move |app| app.index.thumbs_status(&id)).await {
            Ok(Some(s)) if s == THUMBS_WAITING => {}
            _ => return,
        }
        if tokio::time::timeout_at(deadline, done.changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One job: read the content, make thumbnail 0, store it sealed, record the outcome.
fn make(app: &App, upload_id: &str) -> Result<()> {
    // Deleted or replaced since it completed: nothing to do.
    let Some(file) = app.index.content(upload_id)? else {
        return Ok(());
    };
    if !thumbs::is_thumbnailable(&file.mime, &file.name) {
        app.index.set_thumbs(upload_id, THUMBS_DONE, None)?;
        return Ok(());
    }
    if file.shape.total_size > MAX_SOURCE {
        tracing::info!(%upload_id, size = file.shape.total_size, "too large to preview");
        app.index.set_thumbs(upload_id, THUMBS_ERROR, None)?;
        return Ok(());
    }
    let source = download::read_all(app, &file)?;
    let thumb = match thumbs::make_thumbnail(Cursor::new(source), Default::default()) {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(%upload_id, error = %e, "no preview");
            app.index.set_thumbs(upload_id, THUMBS_ERROR, None)?;
            return Ok(());
        }
    };
    let idx = 0;
    let cipher = app.file_cipher(&file.wrapped_keys)?;
    let nonce = crypto::random_u64();
    let mut sealed = thumb.png.clone();
    crypto::pad(&mut sealed);
    cipher.seal_segments(nonce, thumb_tag(idx), 0, &mut sealed);
    let path = app.spool.thumb_path(upload_id, idx, nonce)?;
    app.spool.write_blob(upload_id, &path, &sealed)?;
    let row = ThumbRow {
        idx,
        id: new_id(),
        width: thumb.width,
        height: thumb.height,
        len: thumb.png.len() as u64,
        nonce,
        hash: XxHash3_64::oneshot(&thumb.png),
    };
    if app.index.set_thumbs(upload_id, THUMBS_DONE, Some(&row))? {
        app.usage.add(sealed.len() as u64);
    } else {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Thumbnail `idx` of a file: its id and PNG bytes, decrypted and verified.
pub fn read(app: &App, scope: &str, file_id: &str, idx: u32) -> Result<Option<(String, Vec<u8>)>> {
    let Some((upload_id, wrapped, row)) = app.index.thumbnail(scope, file_id, idx)? else {
        return Ok(None);
    };
    let png = open_thumb(&app.spool, &app.file_cipher(&wrapped)?, &upload_id, &row)?;
    Ok(Some((row.id, png)))
}

/// Reads a stored thumbnail and checks its length, padding and hash (also for `chunkd verify`).
pub fn open_thumb(
    spool: &Spool,
    cipher: &FileCipher,
    upload_id: &str,
    row: &ThumbRow,
) -> Result<Vec<u8>> {
    let path = spool.thumb_path(upload_id, row.idx, row.nonce)?;
    let corrupt = |what: &str| Error::Corrupt(format!("{}: {what}", path.display()));
    let mut buf = std::fs::read(&path).map_err(|e| corrupt(&e.to_string()))?;
    if buf.len() as u64 != crypto::sealed_len(row.len) {
        return Err(corrupt("wrong length"));
    }
    cipher.open_segments(row.nonce, thumb_tag(row.idx), 0, &mut buf);
    download::check_padding(&buf, row.len).map_err(|_| corrupt("bad padding"))?;
    buf.truncate(row.len as usize);
    if XxHash3_64::oneshot(&buf) != row.hash {
        return Err(corrupt("fails its hash"));
    }
    Ok(buf)
}
