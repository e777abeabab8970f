//! The SQLite index: the single source of truth for uploads, chunks and files.
//!
//! A chunk exists only once its row is committed here, and its row is written only after its
//! bytes are where the durability setting demands. The row that completes an upload commits in
//! the same transaction as the completion, on the one writer connection, so exactly one request
//! ever completes a file. Every method blocks: call it from `spawn_blocking`. The one exception
//! is [`Index::try_commit_chunk`], which never waits for the connection and, with
//! [`Durability::Fast`], syncs nothing.

use std::cell::Cell;
use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::active::Active;
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::geometry::{Declared, Shape};
use crate::protocol::ChunkParams;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- What users see: a file id, its name and type, and which complete upload holds its bytes.
-- The scope says who may see it: "" (anonymous), a principal's scope (--require-auth), or
-- "company:<id>" (Files API).
CREATE TABLE IF NOT EXISTS files (
    id            TEXT PRIMARY KEY,
    scope         TEXT NOT NULL,
    name          TEXT NOT NULL,
    relative_path TEXT NOT NULL,
    mime          TEXT NOT NULL,
    content       TEXT,             -- uploads.id of the complete content; NULL until complete
    created_at    INTEGER NOT NULL, -- epoch milliseconds
    updated_at    INTEGER NOT NULL
);

-- One upload of a file's content: geometry, keys, progress.
CREATE TABLE IF NOT EXISTS uploads (
    id           TEXT PRIMARY KEY,
    file_id      TEXT NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    scope        TEXT NOT NULL,
    identifier   TEXT NOT NULL,
    total_size   INTEGER NOT NULL,
    chunk_size   INTEGER,           -- NULL until declared or learnt
    total_chunks INTEGER,           -- NULL until the cutting mode is known
    keys         BLOB NOT NULL,     -- per-file key and IV, wrapped under the global key
    received     INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    completed_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS uploads_identity ON uploads(scope, identifier);
CREATE INDEX IF NOT EXISTS uploads_file ON uploads(file_id);

-- Committed chunks. Their sealed bytes are in spool/<upload_id>/data from byte `pos` on (a
-- column added later: see ADDED_COLUMNS); rows without `pos` are from before the data file, with
-- their bytes in spool/<upload_id>/<number>.<nonce as 16 hex digits>.
CREATE TABLE IF NOT EXISTS chunks (
    upload_id TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    number    INTEGER NOT NULL,
    len       INTEGER NOT NULL,     -- plaintext bytes
    nonce     INTEGER NOT NULL,     -- 64-bit write nonce (stored as its signed twin)
    hash      INTEGER NOT NULL,     -- xxh3-64 of the plaintext (signed twin)
    PRIMARY KEY (upload_id, number)
) WITHOUT ROWID;

-- Previews of a complete upload's content. Bytes in spool/<upload_id>/t<idx>.<nonce>.
CREATE TABLE IF NOT EXISTS thumbnails (
    upload_id TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL,
    id        TEXT NOT NULL,
    width     INTEGER NOT NULL,
    height    INTEGER NOT NULL,
    len       INTEGER NOT NULL,     -- PNG bytes
    nonce     INTEGER NOT NULL,
    hash      INTEGER NOT NULL,
    PRIMARY KEY (upload_id, idx)
) WITHOUT ROWID;
"#;

/// Columns added after format 1's first release: (table, column, definition). Added to an older
/// index on open, so a data directory keeps working across upgrades.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // Files API: who created the file, and what its creation request declared.
    ("files", "user_id", "TEXT"),
    ("files", "application_id", "TEXT"),
    ("files", "declared_size", "INTEGER"),
    ("files", "declared_chunks", "INTEGER"),
    // uploads.id of the upload in progress (the first one, or an application's overwrite).
    ("files", "pending", "TEXT"),
    // Preview state of a complete upload: 'waiting', 'done' or 'error'.
    ("uploads", "thumbs", "TEXT NOT NULL DEFAULT 'waiting'"),
    // Whom the file counts against for --max-open-uploads while it has no content
    // (access::owner); NULL in rows made before the limit existed.
    ("files", "owner", "TEXT"),
    // Where a chunk's sealed bytes start in its upload's data file; NULL in rows made when every
    // chunk had a file of its own (still read from there).
    ("chunks", "pos", "INTEGER"),
];

/// Indexes on added columns, created once the columns exist. Only files without content are
/// indexed by owner: the count [`check_open`] makes never reads a complete file.
const ADDED_INDEXES: &str =
    "CREATE INDEX IF NOT EXISTS files_open_owner ON files(owner) WHERE content IS NULL;";

/// The current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An upload as the index knows it.
#[derive(Debug, Clone)]
pub struct UploadRow {
    pub id: String,
    pub file_id: String,
    pub identifier: String,
    pub filename: String,
    pub relative_path: String,
    pub mime: String,
    pub shape: Shape,
    pub wrapped_keys: Vec<u8>,
    pub received: u64,
    pub created_at: i64,
    pub completed_at: Option<i64>,
}

/// A committed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRow {
    pub number: u64,
    pub len: u64,
    pub nonce: u64,
    pub hash: u64,
    /// Where its sealed bytes start in the upload's data file; `None`: in a file of its own,
    /// as chunks were stored before data files ([`crate::store::Spool`]).
    pub pos: Option<u64>,
}

/// What committing a chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// The chunk is now stored; `completed` is true for the one commit that completed the file.
    /// `replaced` is the upload whose content this completion replaced (an overwrite): its rows
    /// are gone, and its spool directory is for the caller to remove.
    Stored {
        received: u64,
        total: Option<u64>,
        completed: bool,
        replaced: Option<String>,
        /// Sealed bytes the replaced content held.
        freed: u64,
    },
    /// The chunk was already stored (by a concurrent or earlier request) with these bytes.
    AlreadyStored {
        received: u64,
        total: Option<u64>,
        complete: bool,
    },
}

/// A complete file ready to be served.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: String,
    pub upload_id: String,
    pub name: String,
    pub mime: String,
    pub shape: Shape,
    pub wrapped_keys: Vec<u8>,
    pub completed_at: i64,
    pub chunks: Vec<ChunkRow>,
}

/// The index: one connection behind a mutex (SQLite has one writer at a time anyway).
pub struct Index {
    conn: Mutex<Connection>,
    /// Incomplete uploads in memory, written only under `conn`'s lock ([`Active`]).
    pub(super) active: Active,
    /// A commit on a runtime thread left a checkpoint for [`Index::checkpoint`]
    /// ([`Index::take_checkpoint_due`]).
    checkpoint_due: AtomicBool,
}

/// Frames in the write-ahead log after which a commit checkpoints it into the database: SQLite's
/// own default (`wal_autocheckpoint`), which [`after_wal_commit`] takes over.
const CHECKPOINT_FRAMES: c_int = 1000;

thread_local! {
    /// `Some` while this thread commits in [`Index::try_commit_chunk`], on a runtime thread: a
    /// checkpoint the commit would run is left to a blocking thread, and `Some(true)` says one
    /// is due. A checkpoint syncs the log and the database file in both durabilities, and a
    /// sync can wait for the disk for as long as it likes.
    static DEFER_CHECKPOINT: Cell<Option<bool>> = const { Cell::new(None) };
}

/// The connection's WAL hook, in place of SQLite's automatic checkpoint. It does what that does
/// (a passive checkpoint once the log holds [`CHECKPOINT_FRAMES`]; its failure fails no commit,
/// which is already done), except during [`Index::try_commit_chunk`].
fn after_wal_commit(wal: &rusqlite::hooks::Wal, frames: c_int) -> rusqlite::Result<()> {
    if frames < CHECKPOINT_FRAMES {
        return Ok(());
    }
    if DEFER_CHECKPOINT.get().is_some() {
        DEFER_CHECKPOINT.set(Some(true));
        return Ok(());
    }
    if let Err(e) = wal.checkpoint() {
        tracing::debug!(error = %e, "the index's log was not checkpointed");
    }
    Ok(())
}

/// An upload as a request for one of its chunks finds it: its row, its shape merged with what
/// the request declares, and the requested chunk if it is committed.
pub type Lookup = (Arc<UploadRow>, Shape, Option<ChunkRow>);

pub(super) const UPLOAD_COLS: &str = "u.id, u.file_id, u.identifier, f.name, f.relative_path, f.mime, \
    u.total_size, u.chunk_size, u.total_chunks, u.keys, u.received, u.created_at, u.completed_at";

pub(super) fn upload_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadRow> {
    Ok(UploadRow {
        id: r.get(0)?,
        file_id: r.get(1)?,
        identifier: r.get(2)?,
        filename: r.get(3)?,
        relative_path: r.get(4)?,
        mime: r.get(5)?,
        shape: Shape {
            total_size: r.get::<_, i64>(6)? as u64,
            chunk_size: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            total_chunks: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        },
        wrapped_keys: r.get(9)?,
        received: r.get::<_, i64>(10)? as u64,
        created_at: r.get(11)?,
        completed_at: r.get(12)?,
    })
}

pub(super) fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| x as i64)
}

impl Index {
    /// Opens (or creates) the index at `path`, in WAL mode, synchronous as `durability` says.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.wal_hook(Some(after_wal_commit));
        let sync = match durability {
            Durability::Safe => "FULL",
            Durability::Fast => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        for (table, column, def) in ADDED_COLUMNS {
            let present: bool = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
                ))?
                .exists([column])?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))?;
            }
        }
        conn.execute_batch(ADDED_INDEXES)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', '1')",
            [],
        )?;
        Ok(Index {
            conn: Mutex::new(conn),
            active: Active::default(),
            checkpoint_due: AtomicBool::new(false),
        })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back), so a
        // poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the connection, as a long statement on another thread would.
    #[cfg(test)]
    pub(crate) fn hold_for_test(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn()
    }

    /// Records the global key's check value on first use, and refuses a different key later:
    /// files encrypted under one key cannot be read under another.
    pub fn check_key(&self, check: &str) -> Result<bool> {
        let c = self.conn();
        c.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('key_check', ?1)",
            [check],
        )?;
        let stored: String =
            c.query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                r.get(0)
            })?;
        Ok(stored == check)
    }

    /// One trivial read, for `/readyz`: the index file is there and SQLite answers.
    pub fn ping(&self) -> Result<()> {
        self.conn().query_row(
            "SELECT value FROM meta WHERE key = 'format'",
            [],
            |_| Ok(()),
        )?;
        Ok(())
    }

    /// The upload under `identifier` in `scope`, if any.
    pub fn find(&self, scope: &str, identifier: &str) -> Result<Option<UploadRow>> {
        find_in(&self.conn(), scope, identifier)
    }

    /// The upload a chunk request names and its chunk, from memory if the upload is active and
    /// was looked up before; `None` if memory does not know it (ask [`Index::find_chunk`]).
    /// Never blocks: a probe or a chunk of an active upload needs no SQLite and no thread.
    pub fn cached(&self, scope: &str, req: &ChunkParams) -> Result<Option<Lookup>> {
        let Some((row, chunk)) = self.active.get(scope, &req.identifier, req.declared.number)
        else {
            return Ok(None);
        };
        let shape = check_same_file(&row, req)?;
        Ok(Some((row, shape, chunk)))
    }

    /// The upload a chunk request names and its chunk, if the upload exists. An incomplete
    /// upload read from SQLite is cached with all its chunks, for [`Index::cached`].
    pub fn find_chunk(&self, scope: &str, req: &ChunkParams) -> Result<Option<Lookup>> {
        let c = self.conn();
        // Another request may have cached it while this one waited for the lock.
        if let Some(hit) = self.cached(scope, req)? {
            return Ok(Some(hit));
        }
        let Some(row) = find_in(&c, scope, &req.identifier)? else {
            return Ok(None);
        };
        let row = Arc::new(row);
        let number = req.declared.number;
        let chunk = if row.completed_at.is_some() {
            chunk_in(&c, &row.id, number)?
        } else {
            let all = chunks_of(&c, &row.id)?;
            let chunk = all.iter().find(|ch| ch.number == number).copied();
            self.active.insert(scope, Arc::clone(&row), all);
            chunk
        };
        let shape = check_same_file(&row, req)?;
        Ok(Some((row, shape, chunk)))
    }

    /// The upload under the request's identifier, created if absent, with its shape merged with
    /// what the request declares. An existing upload must be the same file: same name and a
    /// geometry the request agrees with. `new_upload` gives a new upload's ids (upload, file) and
    /// wrapped keys; it is called only when one is created. A new upload counts against `owner`,
    /// who may have at most `max_open` files without content (0: no limit).
    pub fn find_or_create(
        &self,
        scope: &str,
        req: &ChunkParams,
        (owner, max_open): (&str, u64),
        new_upload: impl FnOnce() -> (String, String, Vec<u8>),
    ) -> Result<Lookup> {
        if let Some(found) = self.find_chunk(scope, req)? {
            return Ok(found);
        }
        let shape = Shape::new(req.declared.total_size).merge(&req.declared)?;
        let now = now_ms();
        let (upload_id, file_id, wrapped_keys) = new_upload();
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another request may have created it since the lookup above.
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM uploads WHERE scope = ?1 AND identifier = ?2",
                params![scope, req.identifier],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !exists {
            check_open(&tx, owner, max_open)?;
            tx.execute(
                "INSERT INTO files(id, scope, name, relative_path, mime, created_at, updated_at, \
                 owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                params![
                    file_id,
                    scope,
                    req.filename,
                    req.relative_path,
                    req.mime,
                    now,
                    owner
                ],
            )?;
            tx.execute(
                "INSERT INTO uploads(id, file_id, scope, identifier, total_size, chunk_size, \
                 total_chunks, keys, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                params![
                    upload_id,
                    file_id,
                    scope,
                    req.identifier,
                    shape.total_size as i64,
                    opt_i64(shape.chunk_size),
                    opt_i64(shape.total_chunks),
                    wrapped_keys,
                    now
                ],
            )?;
        }
        tx.commit()?;
        drop(c);
        self.find_chunk(scope, req)?
            .ok_or(Error::NotFound("upload"))
    }

    /// True while an upload's row exists (a delete or an expiry removes it).
    pub fn upload_exists(&self, upload_id: &str) -> Result<bool> {
        let c = self.conn();
        Ok(c.prepare_cached("SELECT 1 FROM uploads WHERE id = ?1")?
            .exists([upload_id])?)
    }

    /// Where an upload stands now: chunks committed, total chunks if known, and whether it is
    /// complete.
    pub fn progress(&self, upload_id: &str) -> Result<Option<(u64, Option<u64>, bool)>> {
        let c = self.conn();
        Ok(c.query_row(
            "SELECT received, total_chunks, completed_at IS NOT NULL FROM uploads WHERE id = ?1",
            [upload_id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                    r.get(2)?,
                ))
            },
        )
        .optional()?)
    }

    /// The committed chunk `number` of an upload, if any.
    pub fn chunk(&self, upload_id: &str, number: u64) -> Result<Option<ChunkRow>> {
        chunk_in(&self.conn(), upload_id, number)
    }

    /// The numbers of every committed chunk of an upload, in order.
    pub fn received(&self, upload_id: &str) -> Result<Vec<u64>> {
        let c = self.conn();
        let mut st =
            c.prepare_cached("SELECT number FROM chunks WHERE upload_id = ?1 ORDER BY number")?;
        let rows = st.query_map([upload_id], |r| r.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|n| n as u64))
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Commits chunk `number` (whose bytes are already durable): re-checks its geometry against
    /// the upload as it is now, records it, and completes the upload if it was the last one
    /// missing, all in one transaction.
    pub fn commit_chunk(
        &self,
        upload_id: &str,
        declared: &Declared,
        chunk: ChunkRow,
    ) -> Result<Commit> {
        self.commit_chunk_on(&mut self.conn(), upload_id, declared, chunk)
    }

    /// [`Index::commit_chunk`] for a runtime thread, which must not wait: `None`, with nothing
    /// done, while another thread holds the connection. It syncs nothing with
    /// [`Durability::Fast`] (a commit in WAL mode with `synchronous = NORMAL` writes the log to
    /// the page cache), and a checkpoint it makes due is not run here, but left to
    /// [`Index::checkpoint`] on a blocking thread: see [`Index::take_checkpoint_due`]. With
    /// [`Durability::Safe`] every commit syncs: use [`Index::commit_chunk`].
    pub fn try_commit_chunk(
        &self,
        upload_id: &str,
        declared: &Declared,
        chunk: ChunkRow,
    ) -> Option<Result<Commit>> {
        let mut c = match self.conn.try_lock() {
            Ok(c) => c,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        DEFER_CHECKPOINT.set(Some(false));
        let done = self.commit_chunk_on(&mut c, upload_id, declared, chunk);
        if DEFER_CHECKPOINT.take() == Some(true) {
            self.checkpoint_due.store(true, Ordering::Relaxed);
        }
        Some(done)
    }

    /// Whether a commit left a checkpoint due since the last call: the caller runs
    /// [`Index::checkpoint`] on a blocking thread.
    pub fn take_checkpoint_due(&self) -> bool {
        self.checkpoint_due.swap(false, Ordering::Relaxed)
    }

    /// Checkpoints the write-ahead log into the database (passively, as SQLite's automatic
    /// checkpoint does), so that the log does not grow without end while commits leave it.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn commit_chunk_on(
        &self,
        c: &mut Connection,
        upload_id: &str,
        declared: &Declared,
        chunk: ChunkRow,
    ) -> Result<Commit> {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        #[allow(clippy::type_complexity)]
        let (size, cs, t, received, completed, file_id, scope, identifier): (
            i64,
            Option<i64>,
            Option<i64>,
            i64,
            Option<i64>,
            String,
            String,
            String,
        ) = tx
            .prepare_cached(
                "SELECT total_size, chunk_size, total_chunks, received, completed_at, file_id, \
                 scope, identifier FROM uploads WHERE id = ?1",
            )?
            .query_row([upload_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .optional()?
            .ok_or(Error::NotFound("upload"))?;
        let shape = Shape {
            total_size: size as u64,
            chunk_size: cs.map(|v| v as u64),
            total_chunks: t.map(|v| v as u64),
        };
        let existing = chunk_in(&tx, upload_id, chunk.number)?;
        if let Some(e) = existing {
            if e.len != chunk.len || e.hash != chunk.hash {
                return Err(Error::ChunkDiffers(chunk.number));
            }
            return Ok(Commit::AlreadyStored {
                received: received as u64,
                total: shape.total_chunks,
                complete: completed.is_some(),
            });
        }
        let shape = shape.merge(declared)?.settle(chunk.number, chunk.len)?;
        let received = received as u64 + 1;
        let now = now_ms();
        tx.prepare_cached(
            "INSERT INTO chunks(upload_id, number, len, nonce, hash, pos) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            upload_id,
            chunk.number as i64,
            chunk.len as i64,
            chunk.nonce as i64,
            chunk.hash as i64,
            opt_i64(chunk.pos)
        ])?;
        let completed = shape.total_chunks == Some(received);
        tx.prepare_cached(
            "UPDATE uploads SET chunk_size = ?2, total_chunks = ?3, received = ?4, updated_at = ?5, \
             completed_at = CASE WHEN ?6 THEN ?5 ELSE completed_at END WHERE id = ?1",
        )?
        .execute(params![
                upload_id,
                opt_i64(shape.chunk_size),
                opt_i64(shape.total_chunks),
                received as i64,
                now,
                completed
            ],
        )?;
        let mut replaced = None;
        let mut freed = 0;
        if completed {
            // The new content replaces the old in this same commit: a reader sees one or the
            // other, whole.
            let old: Option<String> =
                tx.query_row("SELECT content FROM files WHERE id = ?1", [&file_id], |r| {
                    r.get(0)
                })?;
            tx.execute(
                "UPDATE files SET content = ?2, updated_at = ?3, \
                 pending = CASE WHEN pending = ?2 THEN NULL ELSE pending END WHERE id = ?1",
                params![file_id, upload_id, now],
            )?;
            if let Some(old) = old.filter(|o| o != upload_id) {
                freed = super::files::sealed_bytes(&tx, Some(&old))?;
                tx.execute("DELETE FROM uploads WHERE id = ?1", [&old])?;
                replaced = Some(old);
            }
        }
        tx.commit()?;
        // Still under the lock: memory follows the index in the order of its commits.
        self.active.committed(
            &scope,
            &identifier,
            upload_id,
            chunk,
            received,
            shape,
            completed,
        );
        if let Some(old) = &replaced {
            self.active.forget(|r| &r.id == old);
        }
        Ok(Commit::Stored {
            received,
            total: shape.total_chunks,
            completed,
            replaced,
            freed,
        })
    }

    /// A complete file visible in `scope`, with its chunk map.
    pub fn file(&self, scope: &str, file_id: &str) -> Result<Option<FileRow>> {
        let c = self.conn();
        let head = c
            .query_row(
                "SELECT f.id, u.id, f.name, f.mime, u.total_size, u.chunk_size, u.total_chunks, \
                 u.keys, u.completed_at FROM files f JOIN uploads u ON u.id = f.content \
                 WHERE f.id = ?1 AND f.scope = ?2 AND u.completed_at IS NOT NULL",
                params![file_id, scope],
                |r| {
                    Ok(FileRow {
                        id: r.get(0)?,
                        upload_id: r.get(1)?,
                        name: r.get(2)?,
                        mime: r.get(3)?,
                        shape: Shape {
                            total_size: r.get::<_, i64>(4)? as u64,
                            chunk_size: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                            total_chunks: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                        },
                        wrapped_keys: r.get(7)?,
                        completed_at: r.get(8)?,
                        chunks: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut file) = head else {
            return Ok(None);
        };
        file.chunks = chunks_of(&c, &file.upload_id)?;
        Ok(Some(file))
    }

    /// Every committed chunk of an upload, in order.
    pub fn chunks(&self, upload_id: &str) -> Result<Vec<ChunkRow>> {
        Ok(chunks_of(&self.conn(), upload_id)?)
    }

    /// Every upload, complete or not (for `chunkd verify`).
    pub fn all_uploads(&self) -> Result<Vec<UploadRow>> {
        let c = self.conn();
        let mut st = c.prepare(&format!(
            "SELECT {UPLOAD_COLS} FROM uploads u JOIN files f ON f.id = u.file_id ORDER BY u.id"
        ))?;
        let rows = st
            .query_map([], upload_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

fn chunks_of(c: &Connection, upload_id: &str) -> rusqlite::Result<Vec<ChunkRow>> {
    let mut st = c.prepare_cached(
        "SELECT number, len, nonce, hash, pos FROM chunks WHERE upload_id = ?1 ORDER BY number",
    )?;
    st.query_map([upload_id], chunk_from_row)?.collect()
}

fn find_in(c: &Connection, scope: &str, identifier: &str) -> Result<Option<UploadRow>> {
    let sql = format!(
        "SELECT {UPLOAD_COLS} FROM uploads u JOIN files f ON f.id = u.file_id \
         WHERE u.scope = ?1 AND u.identifier = ?2"
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(params![scope, identifier], upload_from_row)
        .optional()?)
}

fn chunk_in(c: &Connection, upload_id: &str, number: u64) -> Result<Option<ChunkRow>> {
    Ok(c.prepare_cached(
        "SELECT number, len, nonce, hash, pos FROM chunks WHERE upload_id = ?1 AND number = ?2",
    )?
    .query_row(params![upload_id, number as i64], chunk_from_row)
    .optional()?)
}

fn chunk_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChunkRow> {
    Ok(ChunkRow {
        number: r.get::<_, i64>(0)? as u64,
        len: r.get::<_, i64>(1)? as u64,
        nonce: r.get::<_, i64>(2)? as u64,
        hash: r.get::<_, i64>(3)? as u64,
        pos: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
    })
}

/// Refuses a new file to an owner who has `max` files without content already (0: no limit).
/// Called only when a file is created, inside the creating transaction, so two creations cannot
/// both take the last slot; the count reads at most `max` entries of a partial index.
pub(super) fn check_open(tx: &Connection, owner: &str, max: u64) -> Result<()> {
    if max == 0 {
        return Ok(());
    }
    let open: i64 = tx.query_row(
        "SELECT COUNT(*) FROM (SELECT 1 FROM files WHERE owner = ?1 AND content IS NULL LIMIT ?2)",
        params![owner, max.min(i64::MAX as u64) as i64],
        |r| r.get(0),
    )?;
    if open as u64 >= max {
        return Err(Error::TooManyUploads(max));
    }
    Ok(())
}

/// Checks that a request names the same file as the upload already under its identifier.
pub fn check_same_file(row: &UploadRow, req: &ChunkParams) -> Result<Shape> {
    if row.filename != req.filename {
        return Err(Error::IdentityConflict(format!(
            "this identifier is in use by another file (`{}`)",
            row.filename
        )));
    }
    row.shape.merge(&req.declared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Params;

    /// Chunk `n` of a file of `total` bytes in chunks of 10, under `identifier`.
    fn chunk_of(identifier: &str, total: u64, n: u64) -> ChunkParams {
        Params::from_query(Some(&format!(
            "resumableChunkNumber={n}&resumableChunkSize=10&resumableTotalSize={total}&\
             resumableIdentifier={identifier}&resumableFilename=f.bin&resumableRelativePath=f.bin"
        )))
        .unwrap()
        .chunk(None)
        .unwrap()
    }

    fn req(n: u64) -> ChunkParams {
        chunk_of("id", 30, n)
    }

    fn row(n: u64) -> ChunkRow {
        ChunkRow {
            number: n,
            len: 10,
            nonce: n,
            hash: n,
            pos: Some(n * 16),
        }
    }

    fn ids() -> (String, String, Vec<u8>) {
        ("a".repeat(32), "b".repeat(32), vec![0; 64])
    }

    /// What memory answers is what SQLite holds, through commits, completion, restart and
    /// deletion.
    #[test]
    fn memory_follows_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let index = Index::open(&path, Durability::Fast).unwrap();
        assert!(index.cached("", &req(1)).unwrap().is_none());
        let (up, _, none) = index.find_or_create("", &req(1), ("test", 0), ids).unwrap();
        assert!(none.is_none());
        // Created, hence cached, with no chunk.
        let (_, _, c) = index.cached("", &req(1)).unwrap().expect("cached");
        assert_eq!(c, None);
        index
            .commit_chunk(&up.id, &req(2).declared, row(2))
            .unwrap();
        let (r, _, c) = index.cached("", &req(2)).unwrap().expect("cached");
        assert_eq!((c, r.received), (Some(row(2)), 1));
        assert_eq!(index.cached("", &req(1)).unwrap().unwrap().2, None);
        // Another scope does not see it.
        assert!(index.cached("someone", &req(2)).unwrap().is_none());
        // A different file under the identifier is refused from memory too.
        let mut other = req(2);
        other.filename = "g.bin".into();
        assert!(index.cached("", &other).is_err());
        // A second index on the same file (a restart) loads the same state from SQLite.
        drop(index);
        let index = Index::open(&path, Durability::Fast).unwrap();
        assert!(index.cached("", &req(2)).unwrap().is_none());
        let (_, _, c) = index.find_chunk("", &req(2)).unwrap().unwrap();
        assert_eq!(c, Some(row(2)));
        assert_eq!(index.cached("", &req(2)).unwrap().unwrap().2, Some(row(2)));
        // Completion takes the upload out of memory; SQLite still answers.
        index
            .commit_chunk(&up.id, &req(1).declared, row(1))
            .unwrap();
        index
            .commit_chunk(&up.id, &req(3).declared, row(3))
            .unwrap();
        assert!(index.cached("", &req(3)).unwrap().is_none());
        let (r, _, c) = index.find_chunk("", &req(3)).unwrap().unwrap();
        assert!(r.completed_at.is_some());
        assert_eq!(c, Some(row(3)));
        assert!(index.cached("", &req(3)).unwrap().is_none());
        // Deletion takes an active upload out of memory.
        let mut second = req(1);
        second.identifier = "id2".into();
        let (up2, _, _) = index
            .find_or_create("", &second, ("test", 0), || {
                ("c".repeat(32), "d".repeat(32), vec![0; 64])
            })
            .unwrap();
        index
            .commit_chunk(&up2.id, &second.declared, row(1))
            .unwrap();
        assert!(index.cached("", &second).unwrap().is_some());
        index
            .delete_file("", &up2.file_id)
            .unwrap()
            .expect("deleted");
        assert!(index.cached("", &second).unwrap().is_none());
        assert!(index.find_chunk("", &second).unwrap().is_none());
        // So does expiry.
        let (up3, _, _) = index
            .find_or_create("", &second, ("test", 0), || {
                ("e".repeat(32), "f".repeat(32), vec![0; 64])
            })
            .unwrap();
        index
            .commit_chunk(&up3.id, &second.declared, row(1))
            .unwrap();
        assert!(index.cached("", &second).unwrap().is_some());
        let removed = index.expire(now_ms() + 1).unwrap();
        assert_eq!(removed.uploads, vec![up3.id.clone()]);
        assert!(index.cached("", &second).unwrap().is_none());
    }

    /// Chunk `n` of a file of 10,000 chunks.
    fn many(n: u64) -> ChunkParams {
        chunk_of("many", 100_000, n)
    }

    /// Frames in the index's write-ahead log since it last restarted. It checkpoints them, so
    /// call it once, at the end.
    fn log_frames(index: &Index) -> i64 {
        index
            .conn()
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    /// A commit that may not wait (on a runtime thread) never checkpoints, since a checkpoint
    /// syncs: it says that one is due, and [`Index::checkpoint`] runs it. A commit on a
    /// blocking thread, on the same thread afterwards, checkpoints as SQLite would by itself.
    #[test]
    fn commits_that_may_not_wait_leave_checkpoints_due() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let index = Index::open(&dir.path().join(name), Durability::Fast).unwrap();
            let (up, _, _) = index
                .find_or_create("", &many(1), ("test", 0), ids)
                .unwrap();
            (index, up.id.clone())
        };
        let (index, id) = open("inline.sqlite");
        // Commits until one leaves a checkpoint due, then as many again.
        let mut n = 0;
        while !index.take_checkpoint_due() {
            n += 1;
            assert!(n < 5000, "no checkpoint fell due");
            let done = index.try_commit_chunk(&id, &many(n).declared, row(n));
            assert!(matches!(done, Some(Ok(Commit::Stored { .. }))));
        }
        assert!(!index.take_checkpoint_due(), "taken");
        for k in n + 1..=2 * n {
            index
                .try_commit_chunk(&id, &many(k).declared, row(k))
                .unwrap()
                .unwrap();
        }
        assert!(index.take_checkpoint_due());
        let inline = log_frames(&index);
        assert!(
            inline > i64::from(CHECKPOINT_FRAMES) * 3 / 2,
            "nothing was checkpointed: {inline} frames after {} commits",
            2 * n
        );
        let (index2, id2) = open("blocking.sqlite");
        for k in 1..=2 * n {
            index2
                .commit_chunk(&id2, &many(k).declared, row(k))
                .unwrap();
        }
        assert!(!index2.take_checkpoint_due());
        let blocking = log_frames(&index2);
        assert!(
            blocking < i64::from(CHECKPOINT_FRAMES) + 50,
            "blocking commits checkpoint by themselves: {blocking} frames"
        );
        // The due checkpoint, run: the log starts again.
        for k in 2 * n + 1..=3 * n {
            index
                .try_commit_chunk(&id, &many(k).declared, row(k))
                .unwrap()
                .unwrap();
        }
        index.checkpoint().unwrap();
        index
            .try_commit_chunk(&id, &many(3 * n + 1).declared, row(3 * n + 1))
            .unwrap()
            .unwrap();
        let after = log_frames(&index);
        assert!(after < 50, "{after} frames after the checkpoint");
    }

    /// A commit that may not wait does nothing while another thread holds the connection.
    #[test]
    fn a_commit_that_may_not_wait_does_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.sqlite"), Durability::Fast).unwrap();
        let (up, _, _) = index.find_or_create("", &req(1), ("test", 0), ids).unwrap();
        let held = index.conn();
        assert!(
            index
                .try_commit_chunk(&up.id, &req(1).declared, row(1))
                .is_none()
        );
        drop(held);
        assert!(index.chunk(&up.id, 1).unwrap().is_none(), "nothing done");
        let done = index.try_commit_chunk(&up.id, &req(1).declared, row(1));
        assert!(matches!(done, Some(Ok(Commit::Stored { received: 1, .. }))));
    }
}
