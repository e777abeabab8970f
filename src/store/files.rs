//! The index's file lifecycle beyond one upload: files created before their bytes (Files API),
//! overwrites, metadata, deletion, thumbnails, and the lists the startup checks need.
//!
//! A file's bytes are the `content` upload; an upload in progress is `pending` until it
//! completes. A user's first upload and an application's overwrite are both pending uploads; the
//! commit that completes one swaps `content` in the same transaction
//! ([`Index::commit_chunk`](crate::store::Index::commit_chunk)), so the old content is served whole until
//! that instant and an abandoned overwrite never touches it.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::UploadRow;
use super::index::{
    ChunkRow, FileRow, Index, UPLOAD_COLS, check_open, now_ms, opt_i64, upload_from_row,
};
use super::spool::{DATA_FILE, chunk_name, thumb_name};
use crate::error::{Error, Result};
use crate::geometry::Shape;
use crate::protocol::ChunkParams;

/// A file to create.
#[derive(Debug, Clone, Default)]
pub struct NewFile {
    pub id: String,
    pub scope: String,
    pub name: String,
    pub mime: String,
    pub user_id: Option<String>,
    pub application_id: Option<String>,
    pub declared_size: Option<u64>,
    pub declared_chunks: Option<u64>,
    /// Whom the file counts against while it has no content (see `access::owner`).
    pub owner: String,
}

/// Preview state of a complete upload.
pub const THUMBS_WAITING: &str = "waiting";
pub const THUMBS_DONE: &str = "done";
pub const THUMBS_ERROR: &str = "error";

/// A stored thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbRow {
    pub idx: u32,
    pub id: String,
    pub width: u32,
    pub height: u32,
    pub len: u64,
    pub nonce: u64,
    pub hash: u64,
}

/// Everything the Files API's resource says about a file.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub id: String,
    pub scope: String,
    pub name: String,
    pub mime: String,
    pub user_id: Option<String>,
    pub application_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Size and chunk count of the content once complete, else of the upload in progress, else
    /// as declared at creation.
    pub size: Option<u64>,
    pub chunks: Option<u64>,
    /// The complete content's upload id, if any.
    pub content: Option<String>,
    /// The content's preview state; `waiting` until the content exists.
    pub thumbs: String,
    pub thumbnails: Vec<ThumbRow>,
}

/// A thumbnail from the row's columns `at..at + 7`, in [`THUMB_COLS`] order.
fn thumb_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<ThumbRow> {
    Ok(ThumbRow {
        idx: r.get(at)?,
        id: r.get(at + 1)?,
        width: r.get(at + 2)?,
        height: r.get(at + 3)?,
        len: r.get::<_, i64>(at + 4)? as u64,
        nonce: r.get::<_, i64>(at + 5)? as u64,
        hash: r.get::<_, i64>(at + 6)? as u64,
    })
}

const THUMB_COLS: &str = "t.idx, t.id, t.width, t.height, t.len, t.nonce, t.hash";

/// Sealed bytes of one upload's chunks and thumbnails (or of all, with `NULL`), as recorded.
const SEALED_BYTES: &str = "SELECT \
    (SELECT COALESCE(SUM((len / 16 + 1) * 16), 0) FROM chunks WHERE ?1 IS NULL OR upload_id = ?1) + \
    (SELECT COALESCE(SUM((len / 16 + 1) * 16), 0) FROM thumbnails WHERE ?1 IS NULL OR upload_id = ?1)";

/// The spool bytes an upload holds; `None` for the whole spool.
pub(super) fn sealed_bytes(c: &Connection, upload_id: Option<&str>) -> rusqlite::Result<u64> {
    c.query_row(SEALED_BYTES, [upload_id], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

/// Uploads whose rows are gone: their spool directories are for the caller to remove.
#[derive(Debug, Default)]
pub struct Removed {
    pub uploads: Vec<String>,
    /// The spool bytes they held.
    pub bytes: u64,
}

/// The uploads scope of a file's own uploads (Files API): their identifier is their id.
fn file_upload_scope(file_id: &str) -> String {
    format!("file:{file_id}")
}

/// Inserts a file's row, with no content yet.
fn insert_file(c: &Connection, f: &NewFile, now: i64) -> Result<()> {
    c.execute(
        "INSERT INTO files(id, scope, name, relative_path, mime, created_at, updated_at, \
         user_id, application_id, declared_size, declared_chunks, owner) \
         VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            f.id,
            f.scope,
            f.name,
            f.mime,
            now,
            f.user_id,
            f.application_id,
            opt_i64(f.declared_size),
            opt_i64(f.declared_chunks),
            f.owner
        ],
    )?;
    Ok(())
}

impl Index {
    /// Creates a file with no bytes yet (the Files API's first call). It counts against its
    /// owner, who may have at most `max_open` files without content (0: no limit).
    pub fn create_file(&self, f: &NewFile, max_open: u64) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_open(&tx, &f.owner, max_open)?;
        insert_file(&tx, f, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// The upload a chunk for file `file_id` goes to: the one in progress, or a new one. A
    /// complete file gets a new upload only if `may_overwrite` (an application); otherwise the
    /// write is refused. `new_upload` gives a new upload's id and wrapped keys.
    pub fn upload_for_file(
        &self,
        scope: &str,
        file_id: &str,
        may_overwrite: bool,
        req: &ChunkParams,
        new_upload: impl FnOnce() -> (String, Vec<u8>),
    ) -> Result<(UploadRow, Shape)> {
        let select = format!(
            "SELECT {UPLOAD_COLS}, f.content IS NOT NULL FROM files f \
             JOIN uploads u ON u.id = f.pending WHERE f.id = ?1 AND f.scope = ?2"
        );
        let with_content = |r: &rusqlite::Row<'_>| Ok((upload_from_row(r)?, r.get::<_, bool>(13)?));
        // Once a file is complete, only an application writes into it, even into an overwrite
        // already in progress.
        let check = |(row, complete): (UploadRow, bool)| {
            if complete && !may_overwrite {
                return Err(Error::Forbidden(
                    "this file is complete: only an application may overwrite it".into(),
                ));
            }
            let shape = row.shape.merge(&req.declared)?;
            Ok((row, shape))
        };
        // Fast path, read only: the upload in progress.
        if let Some(found) = self
            .conn()
            .query_row(&select, params![file_id, scope], with_content)
            .optional()?
        {
            return check(found);
        }
        let (upload_id, wrapped) = new_upload();
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (pending, content, declared_size): (Option<String>, Option<String>, Option<i64>) = tx
            .query_row(
                "SELECT pending, content, declared_size FROM files WHERE id = ?1 AND scope = ?2",
                params![file_id, scope],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or(Error::NotFound("file"))?;
        if pending.is_none() {
            if content.is_some() && !may_overwrite {
                return Err(Error::Forbidden(
                    "this file is complete: only an application may overwrite it".into(),
                ));
            }
            let d = req.declared;
            if content.is_none()
                && let Some(size) = declared_size
                && size as u64 != d.total_size
            {
                return Err(Error::IdentityConflict(format!(
                    "the file was created with total_size {size}, but this chunk declares {}",
                    d.total_size
                )));
            }
            let shape = Shape::new(d.total_size).merge(&d)?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO uploads(id, file_id, scope, identifier, total_size, chunk_size, \
                 total_chunks, keys, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?1, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![
                    upload_id,
                    file_id,
                    file_upload_scope(file_id),
                    shape.total_size as i64,
                    opt_i64(shape.chunk_size),
                    opt_i64(shape.total_chunks),
                    wrapped,
                    now
                ],
            )?;
            // A file created without a name or type takes them from its first chunk.
            tx.execute(
                "UPDATE files SET pending = ?2, updated_at = ?3, \
                 name = CASE WHEN name = '' THEN ?4 ELSE name END, \
                 relative_path = CASE WHEN relative_path = '' THEN ?4 ELSE relative_path END, \
                 mime = CASE WHEN mime = '' THEN ?5 ELSE mime END WHERE id = ?1",
                params![file_id, upload_id, now, req.filename, req.mime],
            )?;
        }
        let found = tx.query_row(&select, params![file_id, scope], with_content)?;
        tx.commit()?;
        // The file may have taken its name from this chunk.
        self.active.forget(|r| r.file_id == file_id);
        check(found)
    }

    /// Records a file whose bytes are already in the spool (a single-request upload), complete,
    /// in one transaction.
    pub fn insert_complete(
        &self,
        f: &NewFile,
        upload_id: &str,
        wrapped: &[u8],
        shape: Shape,
        chunks: &[ChunkRow],
    ) -> Result<()> {
        let now = now_ms();
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_file(&tx, f, now)?;
        tx.execute(
            "INSERT INTO uploads(id, file_id, scope, identifier, total_size, chunk_size, \
             total_chunks, keys, received, created_at, updated_at, completed_at) \
             VALUES (?1, ?2, ?3, ?1, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9)",
            params![
                upload_id,
                f.id,
                file_upload_scope(&f.id),
                shape.total_size as i64,
                opt_i64(shape.chunk_size),
                opt_i64(shape.total_chunks),
                wrapped,
                chunks.len() as i64,
                now
            ],
        )?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO chunks(upload_id, number, len, nonce, hash, pos) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for ch in chunks {
                st.execute(params![
                    upload_id,
                    ch.number as i64,
                    ch.len as i64,
                    ch.nonce as i64,
                    ch.hash as i64,
                    opt_i64(ch.pos)
                ])?;
            }
        }
        tx.execute(
            "UPDATE files SET content = ?2 WHERE id = ?1",
            params![f.id, upload_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A file's metadata, complete or not, if it is visible in `scope`.
    pub fn file_meta(&self, scope: &str, file_id: &str) -> Result<Option<FileMeta>> {
        let c = self.conn();
        let meta = c
            .query_row(
                "SELECT f.id, f.scope, f.name, f.mime, f.user_id, f.application_id, \
                 f.created_at, f.updated_at, f.declared_size, f.declared_chunks, f.content, \
                 COALESCE(cu.total_size, pu.total_size), \
                 COALESCE(cu.total_chunks, pu.total_chunks), cu.thumbs \
                 FROM files f LEFT JOIN uploads cu ON cu.id = f.content \
                 LEFT JOIN uploads pu ON pu.id = f.pending \
                 WHERE f.id = ?1 AND f.scope = ?2",
                params![file_id, scope],
                |r| {
                    let declared_size: Option<i64> = r.get(8)?;
                    let declared_chunks: Option<i64> = r.get(9)?;
                    let size: Option<i64> = r.get(11)?;
                    let chunks: Option<i64> = r.get(12)?;
                    let thumbs: Option<String> = r.get(13)?;
                    Ok(FileMeta {
                        id: r.get(0)?,
                        scope: r.get(1)?,
                        name: r.get(2)?,
                        mime: r.get(3)?,
                        user_id: r.get(4)?,
                        application_id: r.get(5)?,
                        created_at: r.get(6)?,
                        updated_at: r.get(7)?,
                        size: size.or(declared_size).map(|v| v as u64),
                        chunks: chunks.or(declared_chunks).map(|v| v as u64),
                        content: r.get(10)?,
                        thumbs: thumbs.unwrap_or_else(|| THUMBS_WAITING.to_string()),
                        thumbnails: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut meta) = meta else {
            return Ok(None);
        };
        if let Some(content) = &meta.content {
            let mut st = c.prepare_cached(&format!(
                "SELECT {THUMB_COLS} FROM thumbnails t WHERE upload_id = ?1 ORDER BY idx"
            ))?;
            meta.thumbnails = st
                .query_map([content], |r| thumb_at(r, 0))?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(Some(meta))
    }

    /// Deletes a file and all its uploads, chunks and thumbnails, or returns `None` if there is
    /// no such file. If chunkd stops before the caller removes the bytes, the startup sweep does
    /// ([`Index::spool_names`]).
    pub fn delete_file(&self, scope: &str, file_id: &str) -> Result<Option<Removed>> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let uploads: Vec<String> = {
            let mut st = tx.prepare_cached("SELECT id FROM uploads WHERE file_id = ?1")?;
            st.query_map([file_id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut bytes = 0;
        for u in &uploads {
            bytes += sealed_bytes(&tx, Some(u))?;
        }
        let gone = tx.execute(
            "DELETE FROM files WHERE id = ?1 AND scope = ?2",
            params![file_id, scope],
        )?;
        if gone == 0 {
            return Ok(None);
        }
        tx.commit()?;
        self.active.forget(|r| r.file_id == file_id);
        Ok(Some(Removed { uploads, bytes }))
    }

    /// Removes incomplete uploads not updated since `cutoff` (epoch ms), and files that never
    /// got bytes: a file whose only upload expired, or a Files API file created and never
    /// written. An expired overwrite leaves its file's content alone.
    pub fn expire(&self, cutoff: i64) -> Result<Removed> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let expired: Vec<(String, String)> = {
            let mut st = tx.prepare(
                "SELECT id, file_id FROM uploads WHERE completed_at IS NULL AND updated_at < ?1",
            )?;
            st.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut removed = Removed::default();
        for (upload, file) in expired {
            removed.bytes += sealed_bytes(&tx, Some(&upload))?;
            tx.execute("DELETE FROM uploads WHERE id = ?1", [&upload])?;
            tx.execute(
                "UPDATE files SET pending = NULL WHERE id = ?1 AND pending = ?2",
                params![file, upload],
            )?;
            removed.uploads.push(upload);
        }
        tx.execute(
            "DELETE FROM files WHERE content IS NULL AND pending IS NULL AND updated_at < ?1 \
             AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.file_id = files.id)",
            [cutoff],
        )?;
        tx.commit()?;
        self.active.forget(|r| removed.uploads.contains(&r.id));
        Ok(removed)
    }

    /// The sealed bytes the index records in the spool.
    pub fn spool_bytes(&self) -> Result<u64> {
        Ok(sealed_bytes(&self.conn(), None)?)
    }

    /// The ids of every incomplete upload.
    pub fn incomplete_uploads(&self) -> Result<Vec<String>> {
        let c = self.conn();
        let mut st = c.prepare("SELECT id FROM uploads WHERE completed_at IS NULL")?;
        let ids = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    /// Every committed chunk of an incomplete upload, with its upload's id: at start, chunkd checks
    /// their bytes are still there.
    pub fn incomplete_chunks(&self) -> Result<Vec<(String, ChunkRow)>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT c.upload_id, c.number, c.len, c.nonce, c.hash, c.pos FROM chunks c \
             JOIN uploads u ON u.id = c.upload_id WHERE u.completed_at IS NULL",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    ChunkRow {
                        number: r.get::<_, i64>(1)? as u64,
                        len: r.get::<_, i64>(2)? as u64,
                        nonce: r.get::<_, i64>(3)? as u64,
                        hash: r.get::<_, i64>(4)? as u64,
                        pos: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Forgets chunks of incomplete uploads whose bytes are gone; their clients send them again.
    pub fn forget_chunks(&self, chunks: &[(String, u64)]) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (upload, number) in chunks {
            let n = tx.execute(
                "DELETE FROM chunks WHERE upload_id = ?1 AND number = ?2 AND upload_id IN \
                 (SELECT id FROM uploads WHERE completed_at IS NULL)",
                params![upload, *number as i64],
            )?;
            if n > 0 {
                tx.execute(
                    "UPDATE uploads SET received = received - 1 WHERE id = ?1",
                    [upload],
                )?;
            }
        }
        tx.commit()?;
        self.active.clear();
        Ok(())
    }

    /// Every upload id, with the spool file names it owns (its data file, its thumbnails and any
    /// chunks stored in files of their own before data files existed): all the spool may hold ([`Spool::sweep_orphans`](super::Spool::sweep_orphans)).
    pub fn spool_names(&self) -> Result<HashMap<String, HashSet<String>>> {
        let c = self.conn();
        let mut owned: HashMap<String, HashSet<String>> = HashMap::new();
        let mut st = c.prepare("SELECT id FROM uploads")?;
        for id in st.query_map([], |r| r.get::<_, String>(0))? {
            owned.insert(id?, HashSet::from([DATA_FILE.to_string()]));
        }
        let mut st = c.prepare(
            "SELECT upload_id, number, nonce, 0 FROM chunks WHERE pos IS NULL \
             UNION ALL SELECT upload_id, idx, nonce, 1 FROM thumbnails",
        )?;
        let rows = st.query_map([], |r| {
            let (n, nonce) = (r.get::<_, i64>(1)?, r.get::<_, i64>(2)? as u64);
            let name = if r.get::<_, bool>(3)? {
                thumb_name(n as u32, nonce)
            } else {
                chunk_name(n as u64, nonce)
            };
            Ok((r.get::<_, String>(0)?, name))
        })?;
        for row in rows {
            let (upload, name) = row?;
            owned.entry(upload).or_default().insert(name);
        }
        Ok(owned)
    }

    /// Every stored thumbnail, with its upload's id (for `chunkd verify`).
    pub fn all_thumbnails(&self) -> Result<Vec<(String, ThumbRow)>> {
        let c = self.conn();
        let mut st = c.prepare(&format!(
            "SELECT t.upload_id, {THUMB_COLS} FROM thumbnails t ORDER BY t.upload_id, t.idx"
        ))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, thumb_at(r, 1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Complete uploads whose previews were never made (new, or interrupted by a stop).
    pub fn thumbs_waiting(&self) -> Result<Vec<String>> {
        let c = self.conn();
        let mut st = c.prepare(
            "SELECT id FROM uploads WHERE completed_at IS NOT NULL AND thumbs = 'waiting'",
        )?;
        let ids = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    /// A complete upload as a file to read (for previews), if it still exists.
    pub fn content(&self, upload_id: &str) -> Result<Option<FileRow>> {
        let scope_and_id: Option<(String, String)> = self
            .conn()
            .query_row(
                "SELECT f.scope, f.id FROM uploads u JOIN files f ON f.id = u.file_id \
                 WHERE u.id = ?1 AND u.completed_at IS NOT NULL",
                [upload_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((scope, file_id)) = scope_and_id else {
            return Ok(None);
        };
        Ok(self
            .file(&scope, &file_id)?
            .filter(|f| f.upload_id == upload_id))
    }

    /// The preview state of an upload; `None` if it is gone.
    pub fn thumbs_status(&self, upload_id: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT thumbs FROM uploads WHERE id = ?1",
                [upload_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records the outcome of an upload's previews. Returns false if the upload is gone (deleted
    /// or replaced meanwhile); the caller then removes what it wrote.
    pub fn set_thumbs(
        &self,
        upload_id: &str,
        status: &str,
        thumb: Option<&ThumbRow>,
    ) -> Result<bool> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE uploads SET thumbs = ?2 WHERE id = ?1",
            params![upload_id, status],
        )?;
        if n == 0 {
            return Ok(false);
        }
        if let Some(t) = thumb {
            tx.execute(
                "INSERT OR REPLACE INTO thumbnails(upload_id, idx, id, width, height, len, nonce, \
                 hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    upload_id,
                    t.idx,
                    t.id,
                    t.width,
                    t.height,
                    t.len as i64,
                    t.nonce as i64,
                    t.hash as i64
                ],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Thumbnail `idx` of a file's current content, with that content's upload id and keys.
    pub fn thumbnail(
        &self,
        scope: &str,
        file_id: &str,
        idx: u32,
    ) -> Result<Option<(String, Vec<u8>, ThumbRow)>> {
        let c = self.conn();
        let sql = format!(
            "SELECT u.id, u.keys, {THUMB_COLS} FROM files f JOIN uploads u ON u.id = f.content \
             JOIN thumbnails t ON t.upload_id = u.id \
             WHERE f.id = ?1 AND f.scope = ?2 AND t.idx = ?3"
        );
        Ok(c.query_row(&sql, params![file_id, scope, idx], |r| {
            Ok((r.get(0)?, r.get(1)?, thumb_at(r, 2)?))
        })
        .optional()?)
    }
}
