//! The shared state of a running server, opened once at start.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::auth::JwtKey;
use crate::config::{Config, JwtSecret};
use crate::crypto::{FileCipher, GlobalKey};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, SpoolUsage};
use crate::previews::Previews;
use crate::router::Cors;
use crate::store::{ChunkRow, Index, Removed, Spool};

/// Everything a request handler may need.
pub struct App {
    pub config: Config,
    pub index: Index,
    pub spool: Spool,
    pub key: GlobalKey,
    pub cors: Cors,
    /// Verifies bearer tokens and signs links.
    pub jwt: JwtKey,
    pub previews: Previews,
    pub metrics: Metrics,
    /// The spool's committed size and the quota.
    pub usage: SpoolUsage,
    /// Whether chunk writes may run on the runtime's threads (the disk keeps up).
    pub write_gate: crate::upload::WriteGate,
    /// Held while the server runs: see [`lock_data_dir`].
    _lock: std::fs::File,
}

impl App {
    /// Opens the data directory: key file, index and spool. Errors are sentences for an
    /// operator, such as a key file with open permissions or a key that does not match the index.
    pub fn open(config: Config) -> io::Result<Arc<App>> {
        let data = &config.storage.data;
        std::fs::create_dir_all(data).map_err(|e| {
            io::Error::other(format!(
                "cannot create data directory {}: {e}",
                data.display()
            ))
        })?;
        let lock = lock_data_dir(data)?;
        let key = GlobalKey::load_or_create(&config.storage.key_path())?;
        let index = Index::open(&data.join("index.sqlite"), config.storage.durability)
            .map_err(|e| io::Error::other(format!("cannot open the index: {e}")))?;
        if !index
            .check_key(key.check_value())
            .map_err(|e| io::Error::other(format!("cannot read the index: {e}")))?
        {
            return Err(io::Error::other(format!(
                "the key file {} is not the key this data directory was created with; \
                 its files cannot be decrypted with it",
                config.storage.key_path().display()
            )));
        }
        let spool = Spool::open(data.join("spool"), config.storage.durability)?;
        // Bytes left by a stop between a commit and the removal after it (a delete, an
        // overwrite), by a single-request upload that never committed, or by a thumbnail whose
        // row never committed. (Chunk writes a stop cut off are trimmed below.)
        let owned = index
            .spool_names()
            .map_err(|e| io::Error::other(format!("cannot read the index: {e}")))?;
        let metrics = Metrics::new();
        let swept = spool.sweep_orphans(&owned)?;
        let lost = forget_lost_chunks(&index, &spool)
            .map_err(|e| io::Error::other(format!("cannot check the spool: {e}")))?;
        metrics.orphans_removed.inc_by((swept + lost) as u64);
        if swept + lost > 0 {
            tracing::warn!(
                spool_dirs_removed = swept,
                chunks_forgotten = lost,
                "start-up check: removed spool bytes no row owns, and forgot chunks whose bytes \
                 were lost"
            );
        }
        let committed = index
            .spool_bytes()
            .map_err(|e| io::Error::other(format!("cannot read the index: {e}")))?;
        let usage = SpoolUsage::new(committed, config.limits.max_spool_bytes);
        let jwt = load_jwt(&config.auth.secret, data)?;
        let cors = Cors::new(&config.net.cors_origins);
        Ok(Arc::new(App {
            config,
            index,
            spool,
            key,
            cors,
            jwt,
            previews: Previews::new(),
            metrics,
            usage,
            write_gate: crate::upload::WriteGate::new(),
            _lock: lock,
        }))
    }

    /// Runs blocking work (SQLite, file I/O, fsync) off the async threads.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&App) -> Result<T> + Send + 'static,
    {
        let app = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&app)).await?
    }

    /// Removes the bytes of uploads whose rows are gone, and counts them out of the spool.
    pub fn release(&self, removed: &Removed) -> Result<()> {
        self.usage.remove(removed.bytes);
        for u in &removed.uploads {
            self.spool.remove_upload(u)?;
        }
        Ok(())
    }

    /// The cipher of a file, from its wrapped keys.
    pub fn file_cipher(&self, wrapped: &[u8]) -> Result<FileCipher> {
        self.key
            .file_cipher(wrapped)
            .ok_or_else(|| Error::Corrupt("wrapped keys of the wrong length".into()))
    }
}

/// Takes the data directory's lock file, `<data>/chunkd.lock` (an advisory `flock`), or fails
/// if another process holds it: two servers on one spool would remove each other's chunks as
/// orphans, and `chunkd verify --repair` must not run under a live server. The kernel releases
/// the lock when the process ends, however it ends.
pub fn lock_data_dir(data: &Path) -> io::Result<std::fs::File> {
    let path = data.join("chunkd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io::Error::other(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::other(format!(
            "another chunkd is using the data directory {} (it holds {})",
            data.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io::Error::other(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// The token secret: `CHUNKD_JWT_SECRET`, or the secret file. The default file,
/// `<data>/jwt.secret`, is created with a random secret when absent, like the key file, so
/// that `chunkd token` and the server agree with no setup.
pub fn load_jwt(secret: &JwtSecret, data: &Path) -> io::Result<JwtKey> {
    if secret.value.is_some() {
        return JwtKey::from_env_or_file(secret.value.clone(), None);
    }
    let path = secret.path(data);
    if secret.file.is_none() && !path.exists() {
        std::fs::create_dir_all(data)?;
        crate::auth::create_secret_file(&path)?;
    }
    JwtKey::from_env_or_file(None, Some(&path))
}

/// At start: chunks of incomplete uploads whose bytes are missing or cut short (a disk
/// fault, a hand-edited spool) are forgotten, so that their clients send them again instead of
/// the upload completing with a hole; then the litter of writes a stop cut off is given back
/// ([`Spool::trim`]). Complete files are left to `chunkd verify`. Returns how many chunks were
/// forgotten.
fn forget_lost_chunks(index: &Index, spool: &Spool) -> Result<usize> {
    let mut lost = Vec::new();
    let mut kept: HashMap<String, Vec<ChunkRow>> = index
        .incomplete_uploads()?
        .into_iter()
        .map(|id| (id, Vec::new()))
        .collect();
    for (upload, c) in index.incomplete_chunks()? {
        kept.entry(upload).or_default().push(c);
    }
    for (upload, chunks) in &mut kept {
        let mut missing = std::collections::HashSet::new();
        for (number, why) in spool.missing_chunks(upload, chunks) {
            tracing::warn!(upload_id = %upload, chunk = number, %why, "chunk bytes missing; it will be asked for again");
            lost.push((upload.clone(), number));
            missing.insert(number);
        }
        chunks.retain(|c| !missing.contains(&c.number));
    }
    index.forget_chunks(&lost)?;
    for (upload, chunks) in &kept {
        match spool.trim(upload, chunks) {
            Ok(0) => {}
            Ok(freed) => {
                tracing::info!(upload_id = %upload, bytes = freed, "gave back the bytes of chunk writes a stop cut off")
            }
            Err(e) => {
                tracing::warn!(upload_id = %upload, error = %e, "could not give back the bytes of chunk writes a stop cut off")
            }
        }
    }
    Ok(lost.len())
}
