//! Active uploads in memory: what a probe, or the next chunk of an upload, asks the index most
//! often, answered without SQLite.
//!
//! Every entry is a copy of what the index holds for one incomplete upload: its row and its
//! committed chunks. Entries are written only by [`super::Index`] while it holds its connection
//! lock, after the SQLite write they mirror has committed, so they change in the same order as
//! the index itself. A reader without the lock sees an entry as it was after some commit: it
//! may miss a chunk committed a moment ago (a probe then answers 204 and the client sends the
//! chunk again, which is harmless), but it never holds a chunk the index does not have.
//!
//! An upload enters on its first lookup (or creation) and leaves on completion, so memory
//! follows the uploads in progress; one its client abandoned stays until expiry removes it. Writes that remove rows (deletion, expiry, the start-up
//! check of lost chunks) or rename a file drop the entries they touch; the next lookup reloads
//! them from SQLite.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;

use super::index::{ChunkRow, UploadRow};

/// One incomplete upload, as the index last committed it.
struct Entry {
    /// Shared with the lookups that found it: a probe costs a reference count, not a copy of
    /// six strings. A commit that changes it copies it if a lookup still holds it.
    row: Arc<UploadRow>,
    chunks: HashMap<u64, ChunkRow>,
}

/// The cache of active uploads, by (scope, identifier).
#[derive(Default)]
pub(super) struct Active {
    map: DashMap<String, Entry>,
}

/// The map key of (scope, identifier): the scope's length first, so that no two pairs collide.
fn key(scope: &str, identifier: &str) -> String {
    // Built by hand: through `format!` it cost about 1,150 instructions per probe, by hand about
    // 650 (callgrind).
    let len = scope.len().to_string();
    let mut k = String::with_capacity(len.len() + 1 + scope.len() + identifier.len());
    k.push_str(&len);
    k.push(':');
    k.push_str(scope);
    k.push_str(identifier);
    k
}

impl Active {
    /// The upload under (scope, identifier) and its committed chunk `number`, if the upload is
    /// cached. Takes no index lock.
    pub(super) fn get(
        &self,
        scope: &str,
        identifier: &str,
        number: u64,
    ) -> Option<(Arc<UploadRow>, Option<ChunkRow>)> {
        let e = self.map.get(&key(scope, identifier))?;
        Some((Arc::clone(&e.row), e.chunks.get(&number).copied()))
    }

    /// Caches an incomplete upload read from the index (call with the index lock held).
    pub(super) fn insert(&self, scope: &str, row: Arc<UploadRow>, chunks: Vec<ChunkRow>) {
        if row.completed_at.is_some() {
            return;
        }
        let chunks = chunks.into_iter().map(|c| (c.number, c)).collect();
        self.map
            .insert(key(scope, &row.identifier), Entry { row, chunks });
    }

    /// Mirrors a committed chunk (call with the index lock held, after the commit). A completed
    /// upload leaves the cache.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn committed(
        &self,
        scope: &str,
        identifier: &str,
        upload_id: &str,
        chunk: ChunkRow,
        received: u64,
        shape: crate::geometry::Shape,
        completed: bool,
    ) {
        let k = key(scope, identifier);
        if completed {
            self.map.remove(&k);
            return;
        }
        if let Some(mut e) = self.map.get_mut(&k)
            && e.row.id == upload_id
        {
            e.chunks.insert(chunk.number, chunk);
            let row = Arc::make_mut(&mut e.row);
            row.received = received;
            row.shape = shape;
        }
    }

    /// Drops every upload for which `gone` is true (call with the index lock held).
    pub(super) fn forget(&self, gone: impl Fn(&UploadRow) -> bool) {
        self.map.retain(|_, e| !gone(&e.row));
    }

    /// Drops everything (call with the index lock held).
    pub(super) fn clear(&self) {
        self.map.clear();
    }
}
