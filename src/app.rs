//! The shared state of a running server, opened once at start.

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
use crate::store::{Index, Removed, Spool};

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
        // overwrite), or by a single-request upload that never committed.
        let known = index
            .upload_ids()
            .map_err(|e| io::Error::other(format!("cannot read the index: {e}")))?;
        let metrics = Metrics::new();
        let swept = spool.sweep_orphans(&known)?;
        let lost = forget_lost_chunks(&index, &spool)
            .map_err(|e| io::Error::other(format!("cannot check the spool: {e}")))?;
        metrics.orphans_removed.inc_by((swept + lost) as u64);
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
        let keys = self
            .key
            .unwrap(wrapped)
            .ok_or_else(|| Error::Corrupt("wrapped keys of the wrong length".into()))?;
        Ok(FileCipher::new(&self.key, &keys))
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

/// At start: chunks of incomplete uploads whose file is missing or of the wrong size (a disk
/// fault, a hand-edited spool) are forgotten, so that their clients send them again instead of
/// the upload completing with a hole. Complete files are left to `chunkd verify`. Returns how
/// many were forgotten.
fn forget_lost_chunks(index: &Index, spool: &Spool) -> Result<usize> {
    let mut lost = Vec::new();
    for (upload, c) in index.incomplete_chunks()? {
        let path = spool.chunk_path(&upload, c.number, c.nonce)?;
        let ok = std::fs::metadata(&path)
            .is_ok_and(|m| m.len() == crate::crypto::sealed_len(c.len));
        if !ok {
            tracing::warn!(upload_id = %upload, chunk = c.number, "chunk bytes missing; it will be asked for again");
            lost.push((upload, c.number));
        }
    }
    index.forget_chunks(&lost)?;
    Ok(lost.len())
}
