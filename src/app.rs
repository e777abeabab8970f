//! The shared state of a running server, opened once at start.

use std::io;
use std::sync::Arc;

use crate::config::Config;
use crate::crypto::{FileCipher, GlobalKey};
use crate::error::{Error, Result};
use crate::router::Cors;
use crate::store::{Index, Spool};

/// Everything a request handler may need.
pub struct App {
    pub config: Config,
    pub index: Index,
    pub spool: Spool,
    pub key: GlobalKey,
    pub cors: Cors,
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
        let cors = Cors::new(&config.net.cors_origins);
        Ok(Arc::new(App {
            config,
            index,
            spool,
            key,
            cors,
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

    /// The cipher of a file, from its wrapped keys.
    pub fn file_cipher(&self, wrapped: &[u8]) -> Result<FileCipher> {
        let keys = self
            .key
            .unwrap(wrapped)
            .ok_or_else(|| Error::Corrupt("wrapped keys of the wrong length".into()))?;
        Ok(FileCipher::new(&self.key, &keys))
    }
}
